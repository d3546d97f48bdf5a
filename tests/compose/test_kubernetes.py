"""The Kubernetes manifests in deploy/kubernetes/, as the seed deploys flow8: a StatefulSet of workers
whose channel port ranges follow their ordinals, a headless Service for the channels, ``flow8 serve``
behind a Service and an Ingress, settings from a ConfigMap and credentials from a Secret.

No cluster is needed: each object is validated against the Kubernetes API's schemas (bundled by
kubernetes-validate, strict: an unknown field fails), and the containers' environment is built as
the kubelet builds it (ConfigMap, Secret from secrets.env.example, the downward API, ``$(VAR)``) and
read by ``flow8_streams.settings``, as the compose tests do for compose's workers. Volumes are laid
out as the kubelet lays them out (a Secret's files with its mode, group-readable under an fsGroup)
and the initContainers' commands run on them, so the keys the workers and the API load are files
with the modes they would have in a pod.
"""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flow8_streams.audit.checkpoints import PRIVATE_NAME, PUBLIC_NAME, key_id, load_private_key, load_public_key
from flow8_streams.channels.tokens import parse_key, settings_key
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
# set only when secrets.env has them (secretKeyRef optional: true), and which workloads read them: the
# channel token key is the workers' alone (they mint and check completion tokens)
OPTIONAL_SECRETS = {
    "FLOW8_CHANNEL_TOKEN_KEY": ("flow8-worker",),
    "FLOW8_CACHE__REDIS__PASSWORD": ("flow8-worker", "flow8-serve"),
    "FLOW8_CACHE__REDIS__SIGNING_KEY": ("flow8-worker", "flow8-serve"),
}
# the Secrets kustomize makes from the files `flow8 audit keygen --out keys` writes
AUDIT_SECRETS = {"flow8-audit-key": [f"keys/{PRIVATE_NAME}"], "flow8-audit-public-key": [f"keys/{PUBLIC_NAME}"]}
UID = 10001  # the image's flow8 user
# what the kubelet ORs into the mode of a read-only volume's files (Secret, ConfigMap) under an fsGroup
FSGROUP_READ_ONLY_BITS = 0o440
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


def _generated_files(secret: str) -> list[str]:
    """The files kustomize makes the Secret ``secret`` of (its secretGenerator's ``files``)."""
    (generator,) = [g for g in _kustomization()["secretGenerator"] if g["name"] == secret]
    files: list[str] = generator["files"]
    return files


def _lay_out_volumes(workload: dict[str, Any], root: Path, keys: Path | None) -> dict[str, Path]:
    """Each volume of the pod as the kubelet makes it, a directory under ``root`` by volume name: a
    ConfigMap's keys as files, a generated Secret's files (from ``keys``) with its ``defaultMode`` and,
    under an ``fsGroup``, group-readable as the kubelet makes them, an emptyDir empty."""
    spec = workload["spec"]["template"]["spec"]
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    out: dict[str, Path] = {}
    for volume in spec.get("volumes", []):
        where = root / "volumes" / volume["name"]
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        if "configMap" in volume:
            for key, text in _configmap_data(volume["configMap"]["name"]).items():
                (where / key).write_text(text)
        elif "secret" in volume:
            assert keys is not None, f"volume {volume['name']}: the test's keys are needed"
            mode = volume["secret"].get("defaultMode", 0o644)
            if fs_group is not None:
                mode |= FSGROUP_READ_ONLY_BITS
            for name in _generated_files(volume["secret"]["secretName"]):
                file = where / Path(name).name
                file.write_bytes((keys / Path(name).name).read_bytes())
                file.chmod(mode)
        elif "emptyDir" in volume:
            pass
        else:
            raise AssertionError(f"volume {volume['name']}: a kind this test does not lay out")
        out[volume["name"]] = where
    return out


def _in_volumes(container: dict[str, Any], volumes: dict[str, Path]) -> Callable[[str], str]:
    """Maps a path inside ``container`` to where the test laid its volume out (other values unchanged)."""
    mounts = [(m["mountPath"].rstrip("/") + "/", volumes[m["name"]]) for m in container.get("volumeMounts", [])]

    def where(value: str) -> str:
        for mount_path, directory in mounts:
            if value.startswith(mount_path):
                return str(directory / value[len(mount_path) :])
        return value

    return where


def _run_init_containers(workload: dict[str, Any], volumes: dict[str, Path]) -> None:
    """Each initContainer's command, in order, on the laid-out volumes. Only commands of coreutils that
    this machine has too: the test runs them for real."""
    for init in workload["spec"]["template"]["spec"].get("initContainers", []):
        command = init["command"] + init.get("args", [])
        assert command[0] == "install", f"initContainer {init['name']}: {command[0]} is not one this test runs"
        where = _in_volumes(init, volumes)
        subprocess.run([where(arg) for arg in command], check=True, capture_output=True, timeout=30)


def _pod_env(
    workload: dict[str, Any],
    pod: str,
    labels: dict[str, str],
    files: Path | None = None,
    *,
    secrets: dict[str, str] | None = None,
    keys: Path | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet gives it to ``pod`` (envFrom first, env over it, in order),
    with ``secrets`` as flow8-secrets (secrets.env.example's by default). With ``files``, the pod's volumes
    are laid out there (its Secrets' files from ``keys``), its initContainers run, and paths into the
    container's mounts follow them."""
    container = _container(workload)
    secrets = _dotenv(SECRETS_EXAMPLE) if secrets is None else secrets
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
            key_ref = ref["secretKeyRef"]
            assert key_ref["name"] == "flow8-secrets"
            if key_ref["key"] in secrets:
                env[item["name"]] = secrets[key_ref["key"]]
            else:  # the kubelet leaves an optional one unset and starts no container missing another
                assert key_ref.get("optional") is True, f"{item['name']}: flow8-secrets has no {key_ref['key']}"
        else:
            raise AssertionError(f"{item['name']}: valueFrom {ref} is not one this test knows")
    if files is not None:
        volumes = _lay_out_volumes(workload, files, keys)
        _run_init_containers(workload, volumes)
        where = _in_volumes(container, volumes)
        env = {name: where(value) for name, value in env.items()}
    return env


def _pod_settings(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    workload: dict[str, Any],
    pod: str,
    labels: dict[str, str],
    keys: Path,
    secrets: dict[str, str] | None = None,
) -> Settings:
    env = _pod_env(workload, pod, labels, tmp_path, secrets=secrets, keys=keys)
    _isolate_env(monkeypatch, {k: v for k, v in env.items() if k not in HELPER_VARS})
    monkeypatch.setattr(socket, "gethostname", lambda: pod)  # a pod's host name is its name
    return load_settings()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``flow8 audit keygen --out keys`` writes, as the README's setup runs it."""
    out = tmp_path_factory.mktemp("k8s") / "keys"
    made = subprocess.run(
        [sys.executable, "-m", "flow8_streams.cli", "audit", "keygen", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return out


def _documented_key_command() -> list[str]:
    """The command secrets.env.example gives for making a key, run with this Python."""
    (line,) = [line for line in SECRETS_EXAMPLE.read_text().splitlines() if "python3 -c" in line]
    argv = shlex.split(line.lstrip("# "))
    assert argv[0] == "python3"
    return [sys.executable, *argv[1:]]


def _optional_secrets() -> dict[str, str]:
    """A value for each optional key of secrets.env, each key made by the documented command."""
    made = {}
    for name in OPTIONAL_SECRETS:
        run = subprocess.run(_documented_key_command(), capture_output=True, text=True, timeout=30, check=True)
        made[name] = run.stdout.strip()
    return made


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
    every_secret = _dotenv(SECRETS_EXAMPLE) | _optional_secrets()
    for workload in (_workers(), _serve()):
        env = _pod_env(workload, "flow8-worker-0", {}, secrets=every_secret)
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
    assert not [o for o in _objects() if o["kind"] == "Secret"], "the Secrets are generated from files"
    generators = _kustomization()["secretGenerator"]
    assert generators == [
        {"name": "flow8-secrets", "envs": ["secrets.env"]},
        *({"name": name, "files": files} for name, files in AUDIT_SECRETS.items()),
    ]
    assert set(_dotenv(SECRETS_EXAMPLE)) == set(SECRET_SETTINGS)
    for workload in (_workers(), _serve()):
        refs = {
            item["name"]: item["valueFrom"]["secretKeyRef"]
            for item in _container(workload)["env"]
            if "secretKeyRef" in item.get("valueFrom", {})
        }
        optional = [name for name, readers in OPTIONAL_SECRETS.items() if workload["metadata"]["name"] in readers]
        assert refs == {name: {"name": "flow8-secrets", "key": name} for name in SECRET_SETTINGS} | {
            name: {"name": "flow8-secrets", "key": name, "optional": True} for name in optional
        }


def test_the_optional_secrets_are_documented_and_unset_when_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Path
) -> None:
    """secrets.env.example names each optional key, commented out, with the command that makes one; a
    secrets.env without them leaves the settings unset: the workers use MongoDB's token key."""
    commented = {m.group(1) for m in re.finditer(r"^# ?([A-Z][A-Z0-9_]*)=$", SECRETS_EXAMPLE.read_text(), re.M)}
    assert commented == set(OPTIONAL_SECRETS)
    for workload in (_workers(), _serve()):
        settings = _pod_settings(monkeypatch, tmp_path, workload, "flow8-worker-0", {}, keys)
        assert settings.channel_token_key is None and settings_key(settings) is None
        assert settings.cache.redis.password is None and settings.cache.redis.signing_key is None


def test_the_optional_secrets_reach_the_settings_that_read_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Path
) -> None:
    given = _optional_secrets()
    secrets = _dotenv(SECRETS_EXAMPLE) | given
    worker = _pod_settings(monkeypatch, tmp_path, _workers(), "flow8-worker-0", {}, keys, secrets)
    token_key = settings_key(worker)  # the documented command makes a key the workers accept
    assert token_key is not None and token_key == parse_key(given["FLOW8_CHANNEL_TOKEN_KEY"], "key")
    serve = _pod_settings(monkeypatch, tmp_path, _serve(), "flow8-serve-7d9f-x2k4q", {}, keys, secrets)
    assert serve.channel_token_key is None, "the API mints no completion token: it is not given the key"
    for settings in (worker, serve):
        redis = settings.cache.redis
        assert redis.password is not None and redis.signing_key is not None
        assert redis.password.get_secret_value() == given["FLOW8_CACHE__REDIS__PASSWORD"]
        assert redis.signing_key.get_secret_value() == given["FLOW8_CACHE__REDIS__SIGNING_KEY"]


def test_no_secret_is_in_a_configmap(keys: Path) -> None:
    secret_names = {*SECRET_SETTINGS, *OPTIONAL_SECRETS, "FLOW8_AUDIT_SIGNING_KEY"}
    values = [v for k, v in _dotenv(SECRETS_EXAMPLE).items() if k != "KAFKA_SASL_USERNAME"]  # a name, "flow8"
    values += [line for line in (keys / PRIVATE_NAME).read_text().splitlines() if "-----" not in line]
    for config_map in (o for o in _objects() if o["kind"] == "ConfigMap"):
        data = config_map["data"]
        assert not {name.upper() for name in data} & secret_names, config_map["metadata"]["name"]
        for text in data.values():
            assert not re.search(r"://[^/\s]*@", text), "a URI with a login in it"
            assert "PRIVATE KEY" not in text
            assert not [v for v in values if v in text], config_map["metadata"]["name"]


def test_keys_and_secrets_env_stay_out_of_git_and_the_image() -> None:
    for ignore in (".gitignore", ".dockerignore"):
        lines = {line.strip().lstrip("/").rstrip("/") for line in (ROOT / ignore).read_text().splitlines()}
        assert "deploy/kubernetes/secrets.env" in lines, f"{ignore} must keep secrets.env out"
        assert "deploy/kubernetes/keys" in lines, f"{ignore} must keep deploy/kubernetes/keys/ out"
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        for path in ("deploy/kubernetes/secrets.env", f"deploy/kubernetes/keys/{PRIVATE_NAME}"):
            checked = subprocess.run([git, "-C", str(ROOT), "check-ignore", "-q", path], timeout=30)
            assert checked.returncode == 0, f"git does not ignore {path}"
        kept = subprocess.run([git, "-C", str(ROOT), "check-ignore", "-q", "deploy/kubernetes/secrets.env.example"])
        assert kept.returncode == 1, "the example is in the repository"


# ---------------------------------------------------------------- the audit keys


def _volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    assert len(found) == 1, f"one volume {name}"
    return found[0]


def _mount(container: dict[str, Any], volume: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in container.get("volumeMounts", []) if m["name"] == volume]
    assert len(found) == 1, f"{container['name']} mounts {volume} once"
    return found[0]


def test_an_init_container_copies_the_signing_key_0600_into_memory() -> None:
    """A Secret volume's files are root's: uid 10001 reads one only as the fsGroup, group-readable, and
    flow8 refuses such a key. The initContainer copies it, as uid 10001, to a 0600 file of its own in
    a tmpfs volume that the worker mounts read-only and FLOW8_AUDIT_SIGNING_KEY names."""
    workers = _workers()
    pod = workers["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID}
    (init,) = pod["initContainers"]
    assert init["image"] == _container(workers)["image"]
    assert "runAsUser" not in init.get("securityContext", {}), "the pod's user: the copy is uid 10001's"
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    secret_mount, copy_mount = _mount(init, "audit-key-secret"), _mount(init, "audit-key")
    assert secret_mount["readOnly"] is True and not copy_mount.get("readOnly")
    assert init["command"] == [
        "install",
        "-m",
        "0600",
        f"{secret_mount['mountPath']}/{PRIVATE_NAME}",
        f"{copy_mount['mountPath']}/{PRIVATE_NAME}",
    ]
    assert _volume(workers, "audit-key-secret")["secret"]["secretName"] == "flow8-audit-key"
    assert _volume(workers, "audit-key")["emptyDir"]["medium"] == "Memory"
    worker = _container(workers)
    assert [m["name"] for m in worker["volumeMounts"]].count("audit-key-secret") == 0, "the Secret: init only"
    mount = _mount(worker, "audit-key")
    assert mount["readOnly"] is True
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert env["FLOW8_AUDIT_SIGNING_KEY"] == f"{mount['mountPath']}/{PRIVATE_NAME}"


def test_the_worker_loads_the_signing_key_the_init_container_copied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Path
) -> None:
    settings = _pod_settings(monkeypatch, tmp_path, _workers(), "flow8-worker-0", {}, keys)
    assert settings.audit_signing_key is not None
    copied = settings.audit_signing_key
    assert copied.is_relative_to(tmp_path / "volumes" / "audit-key")
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600
    made = load_private_key(copied)  # the check the worker makes when it starts
    assert key_id(made.public_key()) == key_id(load_public_key(keys / PUBLIC_NAME))
    # the Secret's own file, as the kubelet gives it under the fsGroup, is what flow8 refuses
    in_secret = tmp_path / "volumes" / "audit-key-secret" / PRIVATE_NAME
    assert stat.S_IMODE(in_secret.stat().st_mode) == 0o440
    with pytest.raises(InvalidInput, match="readable by others"):
        load_private_key(in_secret)


def test_the_api_checks_verdicts_against_the_public_key_and_never_holds_the_private_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Path
) -> None:
    serve = _serve()
    settings = _pod_settings(monkeypatch, tmp_path, serve, "flow8-serve-7d9f-x2k4q", {}, keys)
    assert settings.audit_public_key is not None and settings.audit_signing_key is None
    public = load_public_key(settings.audit_public_key, "audit_public_key (FLOW8_AUDIT_PUBLIC_KEY)")
    assert key_id(public) == key_id(load_public_key(keys / PUBLIC_NAME))
    secrets = {v["secret"]["secretName"] for v in serve["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert secrets == {"flow8-audit-public-key"}
    assert all(PRIVATE_NAME not in f for f in _generated_files("flow8-audit-public-key"))


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
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Path, replica: int, labelled: bool
) -> None:
    pod = f"flow8-worker-{replica}"
    labels = {"apps.kubernetes.io/pod-index": str(replica)} if labelled else {}
    settings = _pod_settings(monkeypatch, tmp_path, _workers(), pod, labels, keys)
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


def test_every_listed_replica_starts_and_the_next_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Path
) -> None:
    listed = read_channel_ranges(_ranges_file(tmp_path))
    seen: list[range] = []
    for replica in sorted(listed):
        settings = _pod_settings(monkeypatch, tmp_path, _workers(), f"flow8-worker-{replica}", {}, keys)
        assert settings.channel_ports == listed[replica]
        seen.append(settings.channel_ports)
    assert all(not set(a) & set(b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    with pytest.raises(InvalidInput, match=f"replica {len(listed)} has no channel port range"):
        _pod_settings(monkeypatch, tmp_path, _workers(), f"flow8-worker-{len(listed)}", {}, keys)


def test_the_serve_environment_validates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Path) -> None:
    settings = _pod_settings(monkeypatch, tmp_path, _serve(), "flow8-serve-7d9f-x2k4q", {}, keys)
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


def _kustomize(kubectl: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)


def test_kubectl_kustomize_renders_the_secrets_and_the_image(tmp_path: Path, keys: Path) -> None:
    """``kubectl apply -k`` as a user runs it (kubectl's own kustomize, offline): the Secrets made from
    secrets.env and keys/ are what every secretKeyRef and Secret volume names, and every rendered object
    validates."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: its kustomize renders deploy/kubernetes")
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env", "keys"))
    missing = _kustomize(kubectl, copy)
    assert missing.returncode != 0 and "secrets.env" in missing.stderr, "no secrets.env: kustomize refuses"
    shutil.copy(SECRETS_EXAMPLE, copy / "secrets.env")
    no_keys = _kustomize(kubectl, copy)
    assert no_keys.returncode != 0 and PRIVATE_NAME in no_keys.stderr, "no keys/: kustomize refuses"
    shutil.copytree(keys, copy / "keys")
    rendered = _kustomize(kubectl, copy)
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc is not None]
    secrets = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in objects if o["kind"] == "Secret"}
    assert set(secrets) == {"flow8-secrets", *AUDIT_SECRETS}
    for name, secret in secrets.items():
        assert secret["metadata"]["name"] != name  # a hash of its content: changes roll the pods
        assert secret["metadata"]["namespace"] == NAMESPACE
    assert set(secrets["flow8-secrets"]["data"]) == set(SECRET_SETTINGS)  # the optional ones commented out
    for name, files in AUDIT_SECRETS.items():
        data = secrets[name]["data"]
        assert {key: base64.b64decode(value) for key, value in data.items()} == {
            Path(f).name: (keys / Path(f).name).read_bytes() for f in files
        }
    hashed = {name: secret["metadata"]["name"] for name, secret in secrets.items()}
    for obj in objects:
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
        if obj["kind"] == "ConfigMap":
            assert "PRIVATE KEY" not in str(obj["data"])
        if obj["kind"] in ("StatefulSet", "Deployment"):
            pod = obj["spec"]["template"]["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                assert container["image"] == "flow8-streams:latest"
            names = {
                i["valueFrom"]["secretKeyRef"]["name"]
                for i in _container(obj)["env"]
                if "secretKeyRef" in i.get("valueFrom", {})
            }
            assert names == {hashed["flow8-secrets"]}
            volumes = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
            expected = "flow8-audit-key" if obj["kind"] == "StatefulSet" else "flow8-audit-public-key"
            assert volumes == {hashed[expected]}
    assert len(objects) == len(_objects()) + 3


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
