"""The Kubernetes manifests in deploy/kubernetes/, as the seed deploys flow8: a StatefulSet of workers
whose channel port ranges follow their ordinals, a headless Service for the channels, ``flow8 serve``
behind a Service and an Ingress, settings from a ConfigMap and credentials from a Secret.

No cluster is needed: each object is validated against the Kubernetes API's schemas (bundled by
kubernetes-validate, strict: an unknown field fails), and the containers' environment is built as
the kubelet builds it (ConfigMap, Secret from secrets.env.example, the downward API, ``$(VAR)``) and
read by ``flow8_streams.settings``, as the compose tests do for compose's workers.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flow8_streams.errors import InvalidInput
from flow8_streams.http.routes_ops import router as ops_router
from flow8_streams.runtimes.streams.web import WebPages
from flow8_streams.settings import Settings, load_settings, read_channel_ranges
from tests.compose.test_compose import (
    ROOT,
    _argv,
    _dockerfile_instructions,
    _dotenv,
    _isolate_env,
    _services,
    settings_env_names,
)

K8S = ROOT / "deploy" / "kubernetes"
SECRETS_EXAMPLE = K8S / "secrets.env.example"
SECRET_SETTINGS = ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "MONGODB_URI")
HELPER_VARS = ("POD_NAME", "POD_NAMESPACE")  # downward API values only used in $(...) of other variables
NAMESPACE = "flow8"
# the seed's ConfigMap of ranges: replica 0 -> 7701-7799, 1 -> 7800-7899, 2 -> 7900-7999, and on by 100s
SEED_RANGES = {0: range(7701, 7800), 1: range(7800, 7900), 2: range(7900, 8000)}
# the oldest Kubernetes that labels StatefulSet pods with their ordinal, and the newest with bundled schemas
VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())


# ---------------------------------------------------------------- helpers


def _kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _objects() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in _kustomization()["resources"]:
        out.extend(doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc is not None)
    return out


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"one {kind} {name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _workers() -> dict[str, Any]:
    return _one("StatefulSet", "flow8-worker")


def _serve() -> dict[str, Any]:
    return _one("Deployment", "flow8-serve")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _configmap_data(name: str) -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap", name)["data"]
    return data


VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)``: a variable defined before it, else left as written; ``$$`` is one ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return VAR_REF.sub(one, value)


def _field(path: str, pod: str, labels: dict[str, str]) -> str:
    if path == "metadata.name":
        return pod
    if path == "metadata.namespace":
        return NAMESPACE
    label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
    if label:
        return labels.get(label.group(1), "")  # a label the pod lacks is an empty value
    raise AssertionError(f"fieldRef {path}: not one this test knows")


def _pod_env(workload: dict[str, Any], pod: str, labels: dict[str, str], files: Path | None = None) -> dict[str, str]:
    """The container's environment as the kubelet gives it to ``pod`` (envFrom first, env over it, in order).
    With ``files``, each ConfigMap volume is written there and paths into its mount point follow it."""
    container = _container(workload)
    secrets = _dotenv(SECRETS_EXAMPLE)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"envFrom {source}: settings come from a ConfigMap"
        env.update(_configmap_data(source["configMapRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            env[item["name"]] = _field(ref["fieldRef"]["fieldPath"], pod, labels)
        elif "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == "flow8-secrets"
            env[item["name"]] = secrets[ref["secretKeyRef"]["key"]]
        else:
            raise AssertionError(f"{item['name']}: valueFrom {ref} is not one this test knows")
    if files is not None:
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            config_map = volumes[mount["name"]]["configMap"]["name"]
            where = files / mount["mountPath"].strip("/")
            where.mkdir(parents=True, exist_ok=True)
            for key, text in _configmap_data(config_map).items():
                (where / key).write_text(text)
            for name, value in env.items():
                if value.startswith(mount["mountPath"].rstrip("/") + "/"):
                    env[name] = str(where / value[len(mount["mountPath"].rstrip("/")) + 1 :])
    return env


def _pod_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workload: dict[str, Any], pod: str, labels: dict[str, str]
) -> Settings:
    env = _pod_env(workload, pod, labels, tmp_path)
    _isolate_env(monkeypatch, {k: v for k, v in env.items() if k not in HELPER_VARS})
    monkeypatch.setattr(socket, "gethostname", lambda: pod)  # a pod's host name is its name
    return load_settings()


def _cpu(value: str | int) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _bytes(value: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


# ---------------------------------------------------------------- the objects


def test_kustomization_applies_every_manifest_in_the_namespace() -> None:
    kustomization = _kustomization()
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    assert kustomization["namespace"] == NAMESPACE
    for obj in _objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in _objects())
    assert kinds == [
        ("ConfigMap", "flow8-channel-ranges"),
        ("ConfigMap", "flow8-settings"),
        ("Deployment", "flow8-serve"),
        ("Ingress", "flow8"),
        ("Namespace", "flow8"),
        ("PodDisruptionBudget", "flow8-serve"),
        ("PodDisruptionBudget", "flow8-worker"),
        ("Service", "flow8"),
        ("Service", "flow8-channels"),
        ("StatefulSet", "flow8-worker"),
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    for obj in _objects():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    version = VERSIONS[-1]
    misspelt = _workers()
    _container(misspelt)["livenesProbe"] = _container(misspelt).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, version, strict=True)
    wrong_type = _workers()
    wrong_type["spec"]["replicas"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, version, strict=True)


# ---------------------------------------------------------------- settings and secrets


def test_every_variable_is_one_the_code_reads() -> None:
    read = settings_env_names()
    for workload in (_workers(), _serve()):
        env = _pod_env(workload, "flow8-worker-0", {})
        unknown = sorted(k for k in env if k.upper() not in read and k not in HELPER_VARS)
        assert not unknown, f"{workload['metadata']['name']} sets {unknown}, which flow8_streams.settings does not read"
        names = [item["name"] for item in _container(workload).get("env", [])]
        for helper in HELPER_VARS:
            if helper in names:  # defined, then used in a $(...) after it
                later = _container(workload)["env"][names.index(helper) + 1 :]
                assert any(f"$({helper})" in item.get("value", "") for item in later), helper


def test_credentials_come_from_the_secret_never_a_configmap() -> None:
    for config_map in (o for o in _objects() if o["kind"] == "ConfigMap"):
        data = config_map["data"]
        assert not set(SECRET_SETTINGS) & set(data), config_map["metadata"]["name"]
        assert not any(re.search(r"://[^/\s]*@", value) for value in data.values()), "a URI with a login in it"
    assert not [o for o in _objects() if o["kind"] == "Secret"], "the Secret is generated from secrets.env"
    (generator,) = _kustomization()["secretGenerator"]
    assert generator == {"name": "flow8-secrets", "envs": ["secrets.env"]}
    assert set(_dotenv(SECRETS_EXAMPLE)) == set(SECRET_SETTINGS)
    for workload in (_workers(), _serve()):
        refs = {
            item["name"]: item["valueFrom"]["secretKeyRef"]
            for item in _container(workload)["env"]
            if "secretKeyRef" in item.get("valueFrom", {})
        }
        assert refs == {name: {"name": "flow8-secrets", "key": name} for name in SECRET_SETTINGS}
    for ignore in (".gitignore", ".dockerignore"):
        lines = {line.strip().lstrip("/") for line in (ROOT / ignore).read_text().splitlines()}
        assert "deploy/kubernetes/secrets.env" in lines, f"{ignore} must keep secrets.env out"


def test_the_containers_run_the_compose_image_as_its_workers_do() -> None:
    entrypoint = [rest for keyword, rest in _dockerfile_instructions() if keyword == "ENTRYPOINT"][-1]
    assert yaml.safe_load(entrypoint) == ["flow8"]
    (image,) = _kustomization()["images"]
    compose_worker = _services()["flow8-1"]
    for workload, command in ((_workers(), "worker"), (_serve(), "serve")):
        container = _container(workload)
        assert container["image"] == image["name"]
        assert "command" not in container, "the image's entrypoint (flow8) runs"
        assert container["args"][0] == command
    assert _container(_workers())["args"] == _argv(compose_worker["command"])
    assert _container(_serve())["args"][:2] == ["serve", "--streams"]
    for workload in (_workers(), _serve()):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert not pod.get("hostNetwork"), "the pod's own address: its host name is its name"
        assert "hostname" not in pod


# ---------------------------------------------------------------- workers: ordinals, ranges, DNS


def test_workers_are_a_statefulset_behind_a_headless_service(tmp_path: Path) -> None:
    workers = _workers()
    channels = _one("Service", workers["spec"]["serviceName"])
    assert channels["spec"]["clusterIP"] == "None"
    assert channels["spec"]["publishNotReadyAddresses"] is True
    labels = workers["spec"]["template"]["metadata"]["labels"]
    assert workers["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert channels["spec"]["selector"].items() <= labels.items()
    assert workers["spec"]["replicas"] == 3
    ranges = read_channel_ranges(_ranges_file(tmp_path))
    assert len(ranges) >= workers["spec"]["replicas"]


def _ranges_file(tmp: Path) -> Path:
    where = tmp / "ranges.yaml"
    where.write_text(_configmap_data("flow8-channel-ranges")["ranges.yaml"])
    return where


def test_the_ranges_configmap_is_the_seeds_and_goes_on_by_hundreds(tmp_path: Path) -> None:
    ranges = read_channel_ranges(_ranges_file(tmp_path))  # also refuses overlaps and duplicates
    assert sorted(ranges) == list(range(len(ranges)))
    for replica, ports in ranges.items():
        assert ports == SEED_RANGES.get(replica, range(7700 + 100 * replica, 7800 + 100 * replica)), replica


@pytest.mark.parametrize("replica", range(3))
@pytest.mark.parametrize("labelled", [True, False], ids=["pod-index-label", "host-name"])
def test_each_worker_pod_takes_the_range_of_its_ordinal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, replica: int, labelled: bool
) -> None:
    pod = f"flow8-worker-{replica}"
    labels = {"apps.kubernetes.io/pod-index": str(replica)} if labelled else {}
    settings = _pod_settings(monkeypatch, tmp_path, _workers(), pod, labels)
    assert settings.channel_ports == SEED_RANGES[replica]
    assert settings.channel_pool_size is not None and settings.channel_pool_size <= len(SEED_RANGES[replica])
    assert settings.server_port == 4454 and settings.server_port not in settings.channel_ports
    assert settings.server_host == "0.0.0.0"
    assert settings.worker_id == pod
    # what FlowletDispatched records and outside services dial: the pod's name under the headless Service
    assert settings.advertised_host == f"{pod}.flow8-channels.{NAMESPACE}.svc"
    secrets = _dotenv(SECRETS_EXAMPLE)
    assert settings.mongodb_uri == secrets["MONGODB_URI"]
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == secrets["KAFKA_SASL_PASSWORD"]


def test_every_listed_replica_starts_and_the_next_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    listed = read_channel_ranges(_ranges_file(tmp_path))
    seen: list[range] = []
    for replica in sorted(listed):
        settings = _pod_settings(monkeypatch, tmp_path, _workers(), f"flow8-worker-{replica}", {})
        assert settings.channel_ports == listed[replica]
        seen.append(settings.channel_ports)
    assert all(not set(a) & set(b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    with pytest.raises(InvalidInput, match=f"replica {len(listed)} has no channel port range"):
        _pod_settings(monkeypatch, tmp_path, _workers(), f"flow8-worker-{len(listed)}", {})


def test_the_serve_environment_validates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _pod_settings(monkeypatch, tmp_path, _serve(), "flow8-serve-7d9f-x2k4q", {})
    assert settings.server_port == 4454 and settings.server_host == "0.0.0.0"
    assert settings.mongodb_uri == _dotenv(SECRETS_EXAMPLE)["MONGODB_URI"]


# ---------------------------------------------------------------- ports, probes, resources


def _worker_paths() -> set[str]:
    pages: list[str] = []

    class App:  # what WebPages.register needs of faust's app: page(path)(handler)
        def page(self, path: str) -> Callable[[Any], Any]:
            pages.append(path)
            return lambda handler: handler

    WebPages(App(), None, "w", {}).register()  # type: ignore[arg-type]
    return set(pages)


@pytest.mark.parametrize("which", ["worker", "serve"])
def test_probes_ask_the_pages_the_process_serves_on_its_port(which: str) -> None:
    workload = _workers() if which == "worker" else _serve()
    served = _worker_paths() if which == "worker" else {getattr(r, "path", "") for r in ops_router.routes}
    assert {"/healthz", "/readyz", "/metrics"} <= served
    container = _container(workload)
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": int(_configmap_data("flow8-settings")["SERVER_PORT"])}
    assert port["containerPort"] == 4454
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "4454" and annotations["prometheus.io/path"] in served


@pytest.mark.parametrize("which", ["worker", "serve"])
def test_resources_request_the_seeds_baseline(which: str) -> None:
    resources = _container(_workers() if which == "worker" else _serve())["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert _cpu(requests["cpu"]) == 2 and _bytes(requests["memory"]) == 2 * 2**30
    assert _cpu(limits["cpu"]) >= 2 and _bytes(limits["memory"]) >= 2 * 2**30


def test_the_channel_pool_fits_the_memory_limit() -> None:
    """About 45 MB a channel (README): the pool at its size, beside the worker, stays under the limit."""
    size = int(_configmap_data("flow8-settings")["CHANNEL_POOL_SIZE"])
    limit = _bytes(_container(_workers())["resources"]["limits"]["memory"])
    assert size * 45 * 2**20 + 2**30 <= limit


def test_the_api_service_and_ingress_reach_flow8_serve() -> None:
    serve, service, ingress = _serve(), _one("Service", "flow8"), _one("Ingress", "flow8")
    labels = serve["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    worker_labels = _workers()["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= worker_labels.items(), "the API Service selects no worker"
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["port"] == 80
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": "flow8", "port": {"number": port["port"]}}


# ---------------------------------------------------------------- kustomize itself


def test_kubectl_kustomize_renders_the_secret_and_the_image(tmp_path: Path) -> None:
    """``kubectl apply -k`` as a user runs it (kubectl's own kustomize, offline): the Secret made from
    secrets.env is what every container's secretKeyRef names, and every rendered object validates."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: its kustomize renders deploy/kubernetes")
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    missing = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "secrets.env" in missing.stderr, "no secrets.env: kustomize refuses"
    shutil.copy(SECRETS_EXAMPLE, copy / "secrets.env")
    rendered = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("flow8-secrets-")  # a hash of its content: changes roll the pods
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert set(secret["data"]) == set(SECRET_SETTINGS)
    for obj in objects:
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
        if obj["kind"] in ("StatefulSet", "Deployment"):
            container = _container(obj)
            assert container["image"] == "flow8-streams:latest"
            names = {
                i["valueFrom"]["secretKeyRef"]["name"]
                for i in container["env"]
                if "secretKeyRef" in i.get("valueFrom", {})
            }
            assert names == {secret["metadata"]["name"]}
    assert len(objects) == len(_objects()) + 1


def test_a_drain_evicts_one_worker_at_a_time_and_keeps_an_api_instance() -> None:
    """Each worker that leaves rebalances the group (its partitions stall until taken over): a
    voluntary disruption takes one at a time; the API keeps one instance answering."""
    budgets = {o["metadata"]["name"]: o["spec"] for o in _objects() if o["kind"] == "PodDisruptionBudget"}
    pods = {
        o["metadata"]["name"]: (o["spec"]["replicas"], o["spec"]["template"]["metadata"]["labels"])
        for o in _objects()
        if o["kind"] in ("StatefulSet", "Deployment")
    }
    assert budgets["flow8-worker"]["maxUnavailable"] == 1
    assert budgets["flow8-serve"]["minAvailable"] == 1 < pods["flow8-serve"][0]  # a drain can still proceed
    for budget, workload in (("flow8-worker", "flow8-worker"), ("flow8-serve", "flow8-serve")):
        selector = budgets[budget]["selector"]["matchLabels"]
        assert selector.items() <= pods[workload][1].items(), (budget, selector)
        others = [name for name, (_, labels) in pods.items() if name != workload]
        assert all(not selector.items() <= pods[o][1].items() for o in others), f"{budget} also selects {others}"
