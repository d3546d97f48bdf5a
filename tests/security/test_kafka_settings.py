"""Kafka's login settings: read from the environment or the settings file, never from a flag;
a half-given login is refused at start (exit 2, the settings named); the password is in no
message, no repr and no command's options."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flow8_streams.errors import InvalidInput
from flow8_streams.settings import load_settings

FLOW8 = shutil.which("flow8", path=str(Path(sys.executable).parent)) or "flow8"
LOGIN_VARS = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*LOGIN_VARS, "KAFKA_SSL_CAFILE", "FLOW8_CONFIG"):
        monkeypatch.delenv(var, raising=False)


def run_flow8(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "FLOW8_"))}
    return subprocess.run(
        [FLOW8, *args], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_login_from_the_settings_file_reaches_every_client_and_no_repr_shows_it(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(16)
    config = tmp_path / "flow8.yaml"
    config.write_text(
        "kafka_security_protocol: SASL_PLAINTEXT\n"
        "kafka_sasl_mechanism: SCRAM-SHA-512\n"
        "kafka_sasl_username: flow8\n"
        f"kafka_sasl_password: {password}\n"
    )
    settings = load_settings(config)
    options = settings.kafka_client_options()
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("flow8", password)
    assert password not in repr(settings) and password not in str(settings)
    assert password not in settings.model_dump_json()

    from flow8_streams.runtimes.streams.kafka.faust_app import kafka_credentials

    credentials = kafka_credentials(settings)
    assert credentials is not None and credentials.password == password
    assert password not in repr(credentials)


def test_plaintext_by_default_and_sasl_ssl_verifies_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)  # the default, not the test run's broker
    assert load_settings().kafka_client_options() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "flow8")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "x" * 12)
    context = load_settings().kafka_client_options()["ssl_context"]
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "flow8"}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "{password}"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_USERNAME": "flow8", "KAFKA_SASL_PASSWORD": "{password}"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL_PLEASE"}, "kafka_security_protocol"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_a_wrong_or_half_given_login_is_refused_at_start(tmp_path: Path, env: dict[str, str], named: str) -> None:
    password = f"pw-{secrets.token_urlsafe(12)}"
    env = {key: value.replace("{password}", password) for key, value in env.items()}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with pytest.raises(InvalidInput) as refused:
            load_settings()
    assert named in str(refused.value) and password not in str(refused.value)

    done = run_flow8(["worker", "--no-channels"], env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and password not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_no_command_takes_a_kafka_credential_as_a_flag() -> None:
    import typer.main

    from flow8_streams.cli import app

    command = typer.main.get_command(app)
    flags: list[str] = []

    def walk(cmd: object) -> None:
        for param in getattr(cmd, "params", []):
            flags.extend(getattr(param, "opts", []))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(command)
    assert flags, "no options found: the walk is wrong"
    assert not [f for f in flags if any(word in f.lower() for word in ("password", "sasl", "secret"))], flags
