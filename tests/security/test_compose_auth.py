"""compose/: Kafka takes SASL/SCRAM logins only, MongoDB runs with auth (a root user, the
workers' user, the replica set's key file), and every credential comes from compose/.env
(git-ignored; compose/.env.example lists them), never from the files in git.

No docker engine here: the files are read and checked against what the images do with them
(the apache/kafka image turns ``KAFKA_*`` variables into server properties, the mongo image
creates ``MONGO_INITDB_ROOT_*`` and runs /docker-entrypoint-initdb.d on a first start).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from flow8_streams.settings import load_settings
from tests.compose.test_compose import (
    COMPOSE_DIR,
    ROOT,
    _argv,
    _dotenv,
    _env,
    _interpolate,
    _isolate_env,
    _published,
    _services,
    _workers,
)

COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
REQUIRED = re.compile(r"^\$\{(FLOW8_[A-Z0-9_]+):\?[^}]+\}$")  # ${VAR:?message}: compose refuses to start without it
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _raw(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as written in the file (``${...}`` not interpolated)."""
    return {str(k): str(v) for k, v in (service.get("environment") or {}).items()}


def _kafka_property_env(name: str) -> str:
    """The apache/kafka image's variable for a server property: . -> _, _ -> __, - -> ___."""
    return "KAFKA_" + name.replace("_", "__").replace("-", "___").replace(".", "_").upper()


def _listeners(text: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in text.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_kafka_takes_only_scram_logins_from_outside_its_container() -> None:
    env = _env(_services()["kafka"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    mechanisms = env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert "SCRAM-SHA-256" in mechanisms
    listeners = _listeners(env["KAFKA_LISTENERS"])
    sasl = []
    for name, (host, port) in listeners.items():
        if protocols[name].startswith("SASL_"):
            sasl.append(name)
            for mechanism in mechanisms:
                prop = f"listener.name.{name.lower()}.{mechanism.lower()}.sasl.jaas.config"
                jaas = env.get(_kafka_property_env(prop))
                assert jaas and "ScramLoginModule required" in jaas, f"{name} has no JAAS entry for {mechanism}"
        else:
            assert host in LOOPBACK, f"listener {name} ({protocols[name]}) on {host or 'every interface'}:{port}"
    assert sasl, "no SASL listener"
    for name, (host, _) in _listeners(env["KAFKA_ADVERTISED_LISTENERS"]).items():
        assert protocols[name].startswith("SASL_") or host in LOOPBACK, f"{name} is advertised without a login"
    # the workers' listener is a SASL one
    for worker in _workers().values():
        host, _, port = _env(worker)["KAFKA_BOOTSTRAP_SERVERS"].partition(":")
        advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        (name,) = [n for n, address in advertised.items() if address == (host, int(port))]
        assert protocols[name] == _env(worker)["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"


def test_kafka_healthcheck_creates_the_workers_scram_user_from_the_environment() -> None:
    kafka = _services()["kafka"]
    check = " ".join(_argv(kafka["healthcheck"]["test"]))
    assert "kafka-configs.sh" in check and "--entity-type users" in check
    assert '--entity-name "$$FLOW8_KAFKA_USERNAME"' in check
    assert "SCRAM-SHA-256=[iterations=8192,password=$$FLOW8_KAFKA_PASSWORD]" in check
    assert "127.0.0.1:9095" in check, "the user is made through the loopback listener (no login there)"
    raw = _raw(kafka)
    for var in ("FLOW8_KAFKA_USERNAME", "FLOW8_KAFKA_PASSWORD"):
        match = REQUIRED.match(raw[var])
        assert match is not None and match.group(1) == var, raw[var]
    kafka_env = _env(kafka)
    for worker in _workers().values():
        env = _env(worker)
        assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
        assert env["KAFKA_SASL_USERNAME"] == kafka_env["FLOW8_KAFKA_USERNAME"]
        assert env["KAFKA_SASL_PASSWORD"] == kafka_env["FLOW8_KAFKA_PASSWORD"]


@pytest.mark.parametrize("name", ["flow8-1", "flow8-2", "flow8-3"])
def test_workers_credentials_come_from_the_environment_and_validate(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    worker = _services()[name]
    raw = _raw(worker)
    assert REQUIRED.match(raw["KAFKA_SASL_PASSWORD"]), raw["KAFKA_SASL_PASSWORD"]
    userinfo = re.match(r"^mongodb://(\$\{[^}]+\}):(\$\{[^}]+\})@", raw["MONGODB_URI"])
    assert userinfo is not None, f"MONGODB_URI {raw['MONGODB_URI']!r} has no user and password from .env"
    assert all(REQUIRED.match(part) for part in userinfo.groups()), userinfo.groups()
    with pytest.raises(AssertionError, match="required"):
        _env(worker, variables={})  # without compose/.env compose refuses to start

    example = _dotenv()
    env = _env(worker)
    _isolate_env(monkeypatch, env)
    settings = load_settings()
    assert settings.kafka_security_protocol == "SASL_PLAINTEXT"
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == example["FLOW8_KAFKA_PASSWORD"]
    uri = urlsplit(settings.mongodb_uri)
    assert (unquote(uri.username or ""), unquote(uri.password or "")) == (
        example["FLOW8_MONGO_USERNAME"],
        example["FLOW8_MONGO_PASSWORD"],
    )
    assert parse_qs(uri.query)["authSource"] == ["admin"], "the workers' user lives in admin"


def test_mongo_runs_with_auth_a_key_file_and_the_workers_user() -> None:
    mongo = _services()["mongo"]
    command = _argv(mongo["command"])
    key_file = command[command.index("--keyFile") + 1]
    mounts = {str(v).split(":")[1]: COMPOSE_DIR / str(v).split(":")[0] for v in mongo["volumes"] if ":/" in str(v)}
    entrypoint = _argv(mongo["entrypoint"])
    script = mounts[entrypoint[0]]
    text = script.read_text()
    assert f"key={key_file}" in text and "chmod 400" in text and "exec docker-entrypoint.sh" in text
    assert key_file.startswith("/data/db/"), "the key file lives in the data volume"
    assert script.stat().st_mode & 0o111, f"{script} must be executable"

    raw = _raw(mongo)
    users = ("MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD", "FLOW8_MONGO_USERNAME", "FLOW8_MONGO_PASSWORD")
    for var in users:
        assert REQUIRED.match(raw[var]), f"mongo {var}={raw[var]!r} must come from compose/.env"
    init = [path for target, path in mounts.items() if target.startswith("/docker-entrypoint-initdb.d/")]
    assert len(init) == 1
    js = init[0].read_text()
    assert "createUser" in js and "readWrite" in js and "process.env.FLOW8_MONGO_PASSWORD" in js
    database = _env(mongo)["FLOW8_MONGO_DATABASE"]
    for worker in _workers().values():
        assert _env(worker)["MONGODB_DATABASE"] == database, "the user may write the workers' database"
        uri = urlsplit(_env(worker)["MONGODB_URI"])
        assert uri.username == _env(mongo)["FLOW8_MONGO_USERNAME"]

    check = " ".join(_argv(mongo["healthcheck"]["test"]))
    assert "db.auth(process.env.MONGO_INITDB_ROOT_USERNAME, process.env.MONGO_INITDB_ROOT_PASSWORD)" in check
    assert " -p " not in check and "--password" not in check, "no password on the healthcheck's command line"


def test_no_password_is_in_the_files_in_git_and_env_is_ignored() -> None:
    example = _dotenv()
    secrets = [value for key, value in example.items() if "PASSWORD" in key]
    assert secrets
    for path in [COMPOSE_FILE, *COMPOSE_DIR.glob("mongo/*"), COMPOSE_DIR / "Dockerfile"]:
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, f"{path} holds a password of .env.example"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "compose/.env"], cwd=ROOT, capture_output=True, check=False
    ).returncode
    assert ignored == 0, "git must ignore compose/.env"
    dockerignore = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert "compose/.env" in dockerignore, "compose/.env stays out of the image's build context"


def test_kafka_and_mongo_are_published_on_the_host_loopback_only() -> None:
    for name in ("kafka", "mongo"):
        for entry in _services()[name].get("ports") or []:
            parts = str(entry).split(":")
            assert len(parts) == 3 and parts[0] in LOOPBACK, f"{name} publishes {entry} beyond the host's loopback"
        assert _published(_services()[name]), name


def test_interpolation_of_the_example_resolves_every_variable() -> None:
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used <= _dotenv().keys(), f"compose/.env.example lacks {sorted(used - _dotenv().keys())}"
    assert "${" not in _interpolate(text, _dotenv()).replace("$${", "")
    assert Path(COMPOSE_DIR / ".env.example").read_text().count("change-me") == len(
        [k for k in _dotenv() if "PASSWORD" in k]
    ), "every example password is a placeholder to replace"
