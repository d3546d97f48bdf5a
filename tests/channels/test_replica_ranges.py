"""A replica's channel port range from the seed's ``ranges.yaml`` (FLOW8_CHANNEL_RANGES_FILE):
how a StatefulSet's workers each get ports of their own (deploy/kubernetes/)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from flow8_streams.channels import ChannelPool
from flow8_streams.errors import InvalidInput
from flow8_streams.settings import load_settings, replica_of_host

SEED_RANGES = """\
- replica: 0
  range: "7701-7799"
- replica: 1
  range: "7800-7899"
- replica: 2
  range: "7900-7999"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("FLOW8_", "CHANNEL_", "SERVER_")):
            monkeypatch.delenv(name)


@pytest.fixture
def ranges_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ranges.yaml"
    path.write_text(SEED_RANGES)
    monkeypatch.setenv("FLOW8_CHANNEL_RANGES_FILE", str(path))
    return path


def _host_name(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: name)


@pytest.mark.parametrize(("replica", "expected"), [("0", "7701-7799"), ("1", "7800-7899"), ("2", "7900-7999")])
def test_flow8_replica_picks_its_range(
    ranges_file: Path, monkeypatch: pytest.MonkeyPatch, replica: str, expected: str
) -> None:
    _host_name(monkeypatch, "some-host-7")  # FLOW8_REPLICA wins over the host name
    monkeypatch.setenv("FLOW8_REPLICA", replica)
    settings = load_settings()
    assert settings.channel_port_range == expected
    assert settings.channel_pool_size == len(settings.channel_ports)  # the whole range, unless CHANNEL_POOL_SIZE


@pytest.mark.parametrize(("pod", "expected"), [("flow8-worker-0", 7701), ("flow8-worker-2", 7900)])
def test_the_host_name_of_a_statefulset_pod_picks_its_range(
    ranges_file: Path, monkeypatch: pytest.MonkeyPatch, pod: str, expected: int
) -> None:
    _host_name(monkeypatch, pod)
    monkeypatch.setenv("FLOW8_REPLICA", "")  # a pod-index label the cluster does not set: empty, the host name says
    monkeypatch.setenv("CHANNEL_POOL_SIZE", "4")
    pool = ChannelPool.from_settings(load_settings())
    assert [slot.port for slot in pool.slots] == list(range(expected, expected + 4))


def test_replica_of_host() -> None:
    assert replica_of_host("flow8-worker-12") == 12
    assert replica_of_host("web-0") == 0
    with pytest.raises(ValueError, match="does not end in -N"):
        replica_of_host("flow8-worker")


def test_a_host_name_without_an_ordinal_is_refused(ranges_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _host_name(monkeypatch, "laptop")
    with pytest.raises(InvalidInput, match=r"host name 'laptop' does not end in -N.*set FLOW8_REPLICA"):
        load_settings()


def test_a_replica_without_a_range_is_refused_naming_it(ranges_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _host_name(monkeypatch, "flow8-worker-3")  # scaled to 4 replicas, the file still lists 3
    with pytest.raises(InvalidInput) as caught:
        load_settings()
    assert "replica 3 has no channel port range" in str(caught.value)
    assert "lists replicas 0, 1, 2" in str(caught.value)


def test_the_range_file_and_channel_port_range_are_not_given_together(
    ranges_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOW8_REPLICA", "0")
    monkeypatch.setenv("CHANNEL_PORT_RANGE", "7701-7799")
    with pytest.raises(InvalidInput, match="CHANNEL_PORT_RANGE and FLOW8_CHANNEL_RANGES_FILE are both set"):
        load_settings()


def test_a_pool_larger_than_the_replicas_range_is_refused(ranges_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # replica 0 has 99 ports (7701-7799), the others 100: a shared CHANNEL_POOL_SIZE of 100 fits only them
    monkeypatch.setenv("CHANNEL_POOL_SIZE", "100")
    monkeypatch.setenv("FLOW8_REPLICA", "1")
    assert load_settings().channel_pool_size == 100
    monkeypatch.setenv("FLOW8_REPLICA", "0")
    with pytest.raises(InvalidInput, match=r"CHANNEL_POOL_SIZE 100 is larger than CHANNEL_PORT_RANGE 7701-7799"):
        load_settings()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('- replica: 0\n  range: "7701-7799"\n- replica: 1\n  range: "7799-7850"\n', "replicas 0 and 1 share ports"),
        ('- replica: 0\n  range: "7701-7799"\n- replica: 0\n  range: "7800-7899"\n', "replica 0 is listed twice"),
        ('- replica: 0\n  range: "7701"\n', "replica 0's range '7701' is not a range"),
        ('- replica: -1\n  range: "7701-7799"\n', "replica -1 is not a whole number"),
        ('- replica: 0\n  range: "7701-7799"\n  size: 4\n', "each entry is {replica: N, range: LOW-HIGH}"),
        ("replica: 0\n", "expected a list"),
        ("- [unclosed\n", "is not valid YAML"),
    ],
)
def test_a_bad_range_file_is_refused_naming_the_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, fragment: str
) -> None:
    path = tmp_path / "ranges.yaml"
    path.write_text(content)
    monkeypatch.setenv("FLOW8_CHANNEL_RANGES_FILE", str(path))
    monkeypatch.setenv("FLOW8_REPLICA", "0")
    with pytest.raises(InvalidInput) as caught:
        load_settings()
    assert fragment in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_range_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOW8_CHANNEL_RANGES_FILE", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("FLOW8_REPLICA", "0")
    with pytest.raises(InvalidInput, match=r"absent\.yaml: No such file"):
        load_settings()
