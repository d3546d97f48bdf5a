"""compose's Grafana: a provisioned Prometheus data source and one provisioned dashboard whose
queries name only metrics the code exports.

No docker engine and no Grafana here: the provisioning files and the dashboard JSON are parsed,
their PromQL expressions' metric names are checked against what ``flow8_streams.metrics.Metrics``
registers, and compose's grafana service is checked to mount what the provisioning files point at.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from flow8_streams.metrics import Metrics
from tests.compose.test_compose import COMPOSE_DIR, _dotenv, _env, _published, _services

GRAFANA_DIR = COMPOSE_DIR / "grafana"
DATASOURCES_DIR = GRAFANA_DIR / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR = GRAFANA_DIR / "provisioning" / "dashboards"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
PROVISIONING = PurePosixPath("/etc/grafana/provisioning")
REQUIRED = re.compile(r"^\$\{(FLOW8_[A-Z0-9_]+):\?[^}]+\}$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# PromQL words that look like identifiers but name no metric
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "inf", "nan", "atan2",
}  # fmt: skip
# label lists: by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...)
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers
    ``{...}``, ranges ``[...]``, label lists and function calls are set aside."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = LABEL_LIST.sub(" ", text)
    return {name for name in IDENTIFIER.findall(text) if name.lower() not in PROMQL_WORDS}


def exported_names() -> set[str]:
    """Every series name ``Metrics`` exports, by the text format's rules for each type."""
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in suffixes, f"{family.name}: no rule for {family.type} metrics"
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def _yaml_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])


def _datasources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in _yaml_files(DATASOURCES_DIR):
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == 1, path
        out.extend(doc["datasources"])
    return out


def _providers() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in _yaml_files(DASHBOARD_PROVIDERS_DIR):
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == 1, path
        out.extend(doc["providers"])
    return out


def _dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def _mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Bind mounts of a service: container path -> host path (relative to compose/)."""
    out: dict[PurePosixPath, Path] = {}
    for volume in service.get("volumes") or []:
        source, _, rest = str(volume).partition(":")
        target = rest.split(":")[0]
        if source.startswith((".", "/")):
            out[PurePosixPath(target)] = (COMPOSE_DIR / source).resolve()
    return out


def _host_path(service: dict[str, Any], container_path: PurePosixPath) -> Path | None:
    for target, source in _mounts(service).items():
        if container_path == target or target in container_path.parents:
            return source / container_path.relative_to(target)
    return None


# ---------------------------------------------------------------- the dashboard's queries


def test_metric_names_reads_promql_as_intended() -> None:
    expr = 'sum by (status, le) (rate(flow8_x_bucket{cache="a{b}"}[$__rate_interval])) / ignoring(le) flow8_y offset 5m'
    assert metric_names(expr) == {"flow8_x_bucket", "flow8_y"}
    assert metric_names("histogram_quantile(0.95, sum(rate(flow8_z_bucket[5m])) by (le))") == {"flow8_z_bucket"}
    assert "flow8_plays_started_total" in exported_names()
    assert {"flow8_play_duration_seconds_bucket", "flow8_channels_busy"} <= exported_names()


def test_every_metric_the_dashboards_query_is_one_the_code_exports() -> None:
    dashboards = _dashboards()
    assert dashboards, f"no dashboard JSON in {DASHBOARDS_DIR}"
    exported = exported_names()
    for path, dashboard in dashboards.items():
        exprs = _exprs(dashboard)
        assert exprs, f"{path.name} has no query"
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{path.name}: {expr!r} reads no metric"
            unknown = sorted(names - exported)
            assert not unknown, f"{path.name}: {expr!r} reads {unknown}, which flow8_streams.metrics does not export"


def test_the_dashboard_shows_what_operators_watch() -> None:
    used = {name for d in _dashboards().values() for expr in _exprs(d) for name in metric_names(expr)}
    for needed in (
        "flow8_plays_finished_total",  # plays/s by status
        "flow8_play_duration_seconds_bucket",  # latency quantiles
        "flow8_consumer_lag_messages",
        "flow8_channels_busy",
        "flow8_channel_tasks_waiting",
        "flow8_cache_hits_total",  # flow cache hit rate: hits / (hits + misses)
        "flow8_cache_misses_total",
        "flow8_dlq_messages_total",
    ):
        assert needed in used, f"no panel reads {needed}"
    exprs = [e for d in _dashboards().values() for e in _exprs(d)]
    for quantile in ("0.5", "0.95"):
        assert any(
            re.search(rf"histogram_quantile\(\s*{re.escape(quantile)}\s*,", e)
            and "flow8_play_duration_seconds_bucket" in e
            for e in exprs
        ), f"no p{quantile} of the play duration"
    assert any("by (status)" in e and "flow8_plays_finished_total" in e for e in exprs)
    assert any("by (reason)" in e and "flow8_dlq_messages_total" in e for e in exprs)


# ---------------------------------------------------------------- provisioning and compose


def test_the_dashboards_query_the_provisioned_prometheus() -> None:
    sources = _datasources()
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1, sources
    source = prometheus[0]
    assert source.get("uid"), "the dashboards name the data source by uid"
    # it reaches compose's prometheus service on its port in the container
    assert source["url"] == "http://prometheus:9090" and "prometheus" in _services()
    assert source.get("access", "proxy") == "proxy", "Grafana's server queries Prometheus, not the browser"
    uids = {s["uid"] for s in sources}
    for path, dashboard in _dashboards().items():
        assert dashboard.get("uid") and dashboard.get("title"), path.name
        for panel in _panels(dashboard):
            for owner in [panel, *panel.get("targets", [])]:
                ds = owner.get("datasource")
                if ds is not None:
                    assert isinstance(ds, dict) and ds.get("uid") in uids, f"{path.name}: {panel.get('title')} -> {ds}"
            if panel.get("targets"):
                assert panel.get("datasource") or all(t.get("datasource") for t in panel["targets"]), panel["title"]


def test_compose_grafana_mounts_the_provisioning_and_the_dashboards() -> None:
    grafana = _services()["grafana"]
    assert str(grafana["image"]).split(":")[0] == "grafana/grafana"
    assert _host_path(grafana, PROVISIONING / "datasources") == DATASOURCES_DIR.resolve()
    assert _host_path(grafana, PROVISIONING / "dashboards") == DASHBOARD_PROVIDERS_DIR.resolve()
    providers = _providers()
    assert providers
    loaded: set[Path] = set()
    for provider in providers:
        assert provider.get("type", "file") == "file"
        folder = _host_path(grafana, PurePosixPath(provider["options"]["path"]))
        assert folder is not None, f"provider {provider['name']}: nothing is mounted at {provider['options']['path']}"
        loaded.update(p.resolve() for p in folder.glob("*.json"))
    assert set(_dashboards()) and {p.resolve() for p in _dashboards()} <= loaded, "a dashboard no provider loads"
    home = _env(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        home_file = _host_path(grafana, PurePosixPath(home))
        assert home_file is not None and home_file.is_file(), home
    assert any(str(v).split(":")[1] == "/var/lib/grafana" for v in grafana["volumes"]), "Grafana's state in a volume"
    assert "prometheus" in (grafana.get("depends_on") or [])


def test_grafana_admin_comes_from_env_and_it_is_published_on_loopback_only() -> None:
    grafana = _services()["grafana"]
    raw = {str(k): str(v) for k, v in grafana["environment"].items()}
    for key in ("GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD"):
        match = REQUIRED.match(raw[key])
        assert match is not None, f"grafana {key}={raw[key]!r} must come from compose/.env"
        assert match.group(1) in _dotenv(), f"compose/.env.example lacks {match.group(1)}"
    assert _dotenv()["FLOW8_GRAFANA_ADMIN_PASSWORD"].startswith("change-me")
    env = _env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    entries = grafana.get("ports") or []
    assert entries and _published(grafana)
    for entry in entries:
        parts = str(entry).split(":")
        assert len(parts) == 3 and parts[0] in LOOPBACK, f"grafana publishes {entry} beyond the host's loopback"
    secret = _dotenv()["FLOW8_GRAFANA_ADMIN_PASSWORD"]
    for path in GRAFANA_DIR.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(), f"{path} holds the example password"
