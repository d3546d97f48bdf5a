"""The docker compose deployment in compose/: Kafka (KRaft), a MongoDB replica set, three workers, Prometheus.

No docker engine is needed: the files are parsed and checked against the code (the settings the
workers set must be ones ``flow8_streams.settings`` reads, and must validate). When the docker
compose plugin is installed, ``docker compose config`` validates the file as well.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from pydantic import AliasChoices, BaseModel, SecretStr
from pydantic.fields import FieldInfo

from flow8_streams.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
WORKERS = ("flow8-1", "flow8-2", "flow8-3")


# ---------------------------------------------------------------- helpers


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _dotenv(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(text: str, variables: dict[str, str]) -> str:
    """docker compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, from ``variables``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$$"  # left for the container's shell (compose makes it one $)
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = variables.get(name)
        if op and op.endswith("-") and not value:
            return arg
        if op and op.endswith("?") and not value:
            raise AssertionError(f"{name} is required ({arg}) but compose/.env.example does not set it")
        return value or ""

    return INTERPOLATION.sub(one, text)


def _env(service: dict[str, Any], variables: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment as str -> str (map or ``KEY=VALUE`` list syntax), ``${...}``
    taken from ``variables`` (default: compose/.env.example, what a user copies to .env)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        env = {k: v for k, v in pairs}
    else:
        env = {str(k): "" if v is None else str(v) for k, v in raw.items()}
    variables = _dotenv() if variables is None else variables
    return {k: _interpolate(v, variables) for k, v in env.items()}


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _is_worker(service: dict[str, Any]) -> bool:
    return (_argv(service.get("entrypoint")) + _argv(service.get("command")))[:2] == ["flow8", "worker"]


def _workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _services().items() if _is_worker(svc)}


def _port_range(text: str) -> range:
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def _published(service: dict[str, Any]) -> list[tuple[range | None, range]]:
    """(host ports, container ports) of each published entry, short or long syntax."""
    out: list[tuple[range | None, range]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            out.append((_port_range(str(published)) if published else None, _port_range(str(entry["target"]))))
            continue
        parts = str(entry).split("/", 1)[0].rsplit(":", 2)
        container = _port_range(parts[-1])
        host = _port_range(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        out.append((host, container))
    return out


def _model_type(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def settings_env_names() -> dict[str, tuple[str, ...]]:
    """Every environment name ``Settings`` reads, mapped to the field path it sets.

    Derived from the model as pydantic-settings reads it: a field's validation aliases are read as
    they are, its name with ``env_prefix`` (when it has no alias, or the model populates by name),
    and the fields of a nested model as ``PREFIX`` + ``NAME`` + ``__`` + ``SUB`` (recursively).
    """
    config = Settings.model_config
    prefix = config.get("env_prefix") or ""
    delimiter = config.get("env_nested_delimiter")
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))

    def norm(name: str) -> str:
        return name if config.get("case_sensitive") else name.upper()

    names: dict[str, tuple[str, ...]] = {}

    def add_nested(env: str, model: type[BaseModel], path: tuple[str, ...]) -> None:
        if not delimiter:
            return
        for sub_name, sub_field in model.model_fields.items():
            sub_env = norm(f"{env}{delimiter}{sub_name}")
            names[sub_env] = (*path, sub_name)
            sub_model = _model_type(sub_field)
            if sub_model is not None:
                add_nested(sub_env, sub_model, (*path, sub_name))

    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        aliases: list[str] = []
        if isinstance(alias, AliasChoices):
            aliases = [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, str):
            aliases = [alias]
        for choice in aliases:
            names[norm(choice)] = (name,)
        if not aliases or by_name:
            env = norm(f"{prefix}{name}")
            names[env] = (name,)
            model = _model_type(field)
            if model is not None:
                add_nested(env, model, (name,))
    return names


def _value_at(settings: Settings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for part in path:
        value = getattr(value, part)
    return value


def _isolate_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Leave only ``env`` of everything Settings (or load_settings' FLOW8_CONFIG) could read."""
    read = set(settings_env_names())
    prefix = (Settings.model_config.get("env_prefix") or "").upper()
    for key in list(os.environ):
        if key.upper() in read or (prefix and key.upper().startswith(prefix)):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _channel_range(env: dict[str, str]) -> range:
    return _port_range(env["CHANNEL_PORT_RANGE"])


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


# ---------------------------------------------------------------- services


def test_services_are_kafka_mongo_prometheus_and_three_workers() -> None:
    services = _services()
    assert {"kafka", "mongo", "prometheus"} <= set(services)
    assert sorted(_workers()) == list(WORKERS)
    assert set(services) == {"kafka", "mongo", "prometheus", "grafana", *WORKERS}


def test_workers_share_one_extension_block() -> None:
    compose = _compose()
    shared = compose.get("x-flow8-worker")
    assert isinstance(shared, dict), "the workers' shared parts live in the x-flow8-worker extension field"
    shared_env = _env(shared)
    for name, worker in _workers().items():
        for key, value in shared.items():
            if key == "environment":
                assert shared_env.items() <= _env(worker).items(), name
            else:
                assert worker[key] == value, f"{name}.{key} differs from x-flow8-worker"


def test_workers_build_the_repo_image_and_wait_for_healthy_services() -> None:
    for name, worker in _workers().items():
        build = worker["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == ROOT, f"{name} builds from the repository root"
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE.resolve(), name
        depends = worker["depends_on"]
        for service in ("kafka", "mongo"):
            assert depends[service]["condition"] == "service_healthy", f"{name} must wait for {service}"


def test_every_worker_variable_is_one_the_code_reads() -> None:
    read = settings_env_names()
    # a sanity check of the derivation itself: the seed's names and a nested one
    for expected in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI", "CHANNEL_PORT_RANGE", "FLOW8_TOPICS__PARTITIONS"):
        assert expected in read
    for name, worker in _workers().items():
        unknown = sorted(k for k in _env(worker) if k.upper() not in read)
        assert not unknown, f"{name} sets {unknown}, which flow8_streams.settings does not read"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_environment_validates(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    env = _env(_services()[name])
    _isolate_env(monkeypatch, env)
    settings = load_settings(**{})
    read = settings_env_names()
    for key, value in env.items():
        loaded = _value_at(settings, read[key.upper()])
        if isinstance(loaded, SecretStr):
            loaded = loaded.get_secret_value()
        assert str(loaded) == value, f"{name}: {key}={value!r} was read as {loaded!r}"
    assert settings.server_port == int(env["SERVER_PORT"])
    assert settings.server_host == "0.0.0.0", "a worker in a container must listen on all interfaces"
    assert settings.channel_ports == _channel_range(env)
    assert settings.channel_pool_size is not None
    assert 1 <= settings.channel_pool_size <= len(settings.channel_ports)
    assert settings.worker_id == name
    assert settings.processing_guarantee == "exactly_once"


def test_worker_ids_are_distinct() -> None:
    ids = [_env(w)["WORKER_ID"] for w in _workers().values()]
    assert len(set(ids)) == len(ids) == 3


def test_channel_port_ranges_are_disjoint_and_not_published_on_the_host() -> None:
    workers = _workers()
    ranges = {name: _channel_range(_env(w)) for name, w in workers.items()}
    assert {name: (r.start, r.stop - 1) for name, r in ranges.items()} == {
        "flow8-1": (7701, 7799),
        "flow8-2": (7800, 7899),
        "flow8-3": (7900, 7999),
    }
    names = sorted(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(ranges[a]) & set(ranges[b]), f"{a} and {b} share channel ports"
    for name, worker in workers.items():
        for _, container in _published(worker):
            assert not set(container) & set(ranges[name]), f"{name} publishes channel ports {container} on the host"
        assert int(_env(worker)["SERVER_PORT"]) not in ranges[name]


def test_http_ports_published_on_distinct_host_ports() -> None:
    host_http: dict[str, int] = {}
    for name, worker in _workers().items():
        port = int(_env(worker)["SERVER_PORT"])
        http = [host for host, container in _published(worker) if container == range(port, port + 1)]
        assert len(http) == 1 and http[0] is not None and len(http[0]) == 1, f"{name} publishes :{port} once"
        host_http[name] = http[0].start
    assert host_http == {"flow8-1": 4454, "flow8-2": 4455, "flow8-3": 4456}


def test_no_two_services_publish_the_same_host_port() -> None:
    seen: dict[int, str] = {}
    for name, service in _services().items():
        for host, _container in _published(service):
            for port in host or ():
                assert port not in seen, f"host port {port}: {seen.get(port)} and {name}"
                seen[port] = name


# ---------------------------------------------------------------- kafka


def test_kafka_runs_kraft_with_single_node_transactions() -> None:
    kafka = _services()["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert tag and int(tag.split(".")[0]) >= 4, "Kafka 4.x (KRaft only)"
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    # one node: it is the only voter, on its own (loopback) controller listener
    assert re.match(rf"^{node_id}@(kafka|127\.0\.0\.1|localhost):\d+$", env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}://" in env["KAFKA_LISTENERS"]
    # exactly-once needs the transaction coordinator: its log must fit one broker
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert "healthcheck" in kafka


def test_workers_bootstrap_from_the_advertised_kafka_listener() -> None:
    env = _env(_services()["kafka"])
    advertised = {urlsplit(item).netloc for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert {item.split("://")[0] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")} <= listeners
    assert "kafka:9092" in advertised
    for name, worker in _workers().items():
        assert _env(worker)["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name


def test_topic_partitions_match_the_broker_default() -> None:
    partitions = _env(_services()["kafka"])["KAFKA_NUM_PARTITIONS"]
    assert partitions == "12"
    default = str(Settings.model_fields["topics"].get_default(call_default_factory=True).partitions)
    for name, worker in _workers().items():
        assert _env(worker).get("FLOW8_TOPICS__PARTITIONS", default) == partitions, name


# ---------------------------------------------------------------- mongo


def test_mongo_is_a_replica_set_the_workers_name() -> None:
    mongo = _services()["mongo"]
    assert mongo["image"].split(":")[0] == "mongo" and mongo["image"].split(":")[1].startswith("7")
    command = _argv(mongo["command"])
    assert "--bind_ip_all" in command
    replica_set = command[command.index("--replSet") + 1]
    assert replica_set == "rs0"
    healthcheck = " ".join(_argv(mongo["healthcheck"]["test"]))
    assert "rs.initiate(" in healthcheck and f"_id: '{replica_set}'" in healthcheck
    assert "host: 'mongo:27017'" in healthcheck
    assert any(str(v).endswith(":/data/db") for v in mongo["volumes"])
    for name, worker in _workers().items():
        uri = urlsplit(_env(worker)["MONGODB_URI"])
        assert uri.scheme == "mongodb" and uri.hostname == "mongo" and (uri.port or 27017) == 27017, name
        assert parse_qs(uri.query).get("replicaSet") == [replica_set], f"{name}'s MONGODB_URI names {replica_set}"


# ---------------------------------------------------------------- prometheus


def test_prometheus_scrapes_exactly_the_workers() -> None:
    prometheus = _services()["prometheus"]
    assert prometheus["image"].split(":")[0] == "prom/prometheus"
    mounts = [str(v).split(":") for v in prometheus["volumes"]]
    config_mounts = [m for m in mounts if m[1] == "/etc/prometheus/prometheus.yml"]
    assert len(config_mounts) == 1 and (COMPOSE_DIR / config_mounts[0][0]).resolve() == PROMETHEUS_FILE.resolve()
    assert (range(9090, 9091), range(9090, 9091)) in _published(prometheus)

    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            targets.update(static["targets"])
    expected = {f"{name}:{_env(w)['SERVER_PORT']}" for name, w in _workers().items()}
    assert targets == expected == {"flow8-1:4454", "flow8-2:4454", "flow8-3:4454"}


# ---------------------------------------------------------------- image


def test_dockerfile_installs_the_package_with_flow8_entrypoint() -> None:
    instructions = _dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in instructions:
        by_keyword.setdefault(keyword, []).append(rest)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    copied = " ".join(by_keyword["COPY"])
    for needed in ("pyproject.toml", "README.md", "flow8_streams/", "examples/"):
        assert needed in copied
    assert any(re.search(r"pip install (--\S+ )*\.(\s|$)", run) for run in by_keyword["RUN"])
    assert by_keyword["USER"] and by_keyword["USER"][-1] not in {"root", "0"}
    assert json.loads(by_keyword["ENTRYPOINT"][-1]) == ["flow8"]
    assert json.loads(by_keyword["CMD"][-1]) == ["worker"]
    exposed = [_port_range(p.split("/")[0]) for e in by_keyword["EXPOSE"] for p in e.split()]
    assert any(4454 in r for r in exposed)
    for worker in _workers().values():
        assert any(set(_channel_range(_env(worker))) <= set(r) for r in exposed)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "flow8" in pyproject["project"]["scripts"], "the image's entrypoint is the package's flow8 script"
    assert pyproject["project"]["readme"] == "README.md"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".services"} <= ignored


# ---------------------------------------------------------------- docker compose itself


def _compose_plugin() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False)
    return docker if probe.returncode == 0 else None


def test_docker_compose_config_accepts_the_file() -> None:
    docker = _compose_plugin()
    if docker is None:
        pytest.skip("the docker compose plugin is not installed (`docker compose version` fails)")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE.relative_to(ROOT)), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
