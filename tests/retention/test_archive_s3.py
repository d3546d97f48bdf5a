"""``flow8 archive --to s3://bucket/prefix`` against a real S3-protocol server on loopback
(gofakes3, built from the Go module proxy by scripts/test into .services/bin; ``$FLOW8_GOFAKES3``
names another binary): the archive and its manifest uploaded and read back before anything is
deleted, verifiable once downloaded, no credential printed; an unreachable store deletes nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.conftest import Signed, flow8
from tests.retention.test_archive_sqlite import _plays

pytest_plugins = ["tests.audit.conftest"]
REPO = Path(__file__).resolve().parents[2]
SECRET = "s3-secret-never-printed-7f3a"


def _binary() -> Path:
    given = os.environ.get("FLOW8_GOFAKES3")
    found = Path(given) if given else REPO / ".services" / "bin" / "gofakes3"
    if not found.is_file():
        pytest.skip(f"no S3 server at {found}: scripts/test builds gofakes3 there with go (or set FLOW8_GOFAKES3)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[str]:
    binary, port = _binary(), _free_port()  # skips without a server: before a file is opened
    log = (tmp_path / "gofakes3.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-backend", "memory", "-host", f"127.0.0.1:{port}", "-initialbucket", "flow8-archive"],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # listening: a connect that succeeds (the server has no readiness signal)
            assert proc.poll() is None, (tmp_path / "gofakes3.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "gofakes3 did not listen within 30 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _env(endpoint: str) -> dict[str, str]:
    return {
        "FLOW8_RETENTION__S3__ENDPOINT_URL": endpoint,
        "FLOW8_RETENTION__S3__ACCESS_KEY_ID": "flow8",
        "FLOW8_RETENTION__S3__SECRET_ACCESS_KEY": SECRET,
    }


def test_archive_to_s3_then_verify_the_downloaded_copy(signed: Signed, s3_server: str) -> None:
    import boto3

    env = _env(s3_server)
    result = flow8("archive", "--db", signed.db, "--company", "acme", "--older-than", "0s",
                   "--to", "s3://flow8-archive/prod", "--prune", cwd=signed.dir, **env)  # fmt: skip
    assert result.code == 0, result
    assert "to s3://flow8-archive/prod/acme/acme-" in result.out and "deleted 2" in result.out, result
    assert SECRET not in result.out + result.err
    assert set(_plays(signed.db)) == {"p3"}

    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="flow8", aws_secret_access_key=SECRET,
                          region_name="us-east-1")  # fmt: skip
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="flow8-archive")["Contents"])
    assert len(keys) == 2 and keys[0].endswith(".jsonl.gz") and keys[1].endswith(".manifest.json"), keys
    local = signed.dir / "down"
    local.mkdir()
    for key in keys:
        client.download_file("flow8-archive", key, str(local / Path(key).name))
    archive = next(local.glob("*.jsonl.gz"))
    verify = signed.verify("--company", "acme", "--archive", archive)
    assert verify.code == 0, verify
    assert "continuous across 1 archive and live data" in verify.err


def test_an_unreachable_store_deletes_nothing(signed: Signed) -> None:
    env = _env(f"http://flow8:endpoint-password-9c1d@127.0.0.1:{_free_port()}")
    result = flow8("archive", "--db", signed.db, "--company", "acme", "--older-than", "0s",
                   "--to", "s3://flow8-archive/prod", "--prune", cwd=signed.dir, **env)  # fmt: skip
    assert result.code == 1, result
    assert "s3://flow8-archive/prod/acme/" in result.err and "Traceback" not in result.err
    assert SECRET not in result.out + result.err and "endpoint-password-9c1d" not in result.out + result.err
    assert set(_plays(signed.db)) == {"p1", "p2", "p3"}
