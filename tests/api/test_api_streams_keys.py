"""API keys on the streams backend: an instance keeps the keys it read from MongoDB for
``http.key_cache_seconds`` (a request then costs no key read), a key revoked through the
instance is refused there at once, and one revoked elsewhere (the CLI) within that time."""

from __future__ import annotations

import re
import time

import pytest

from tests.conformance.streams_harness import WorkerGroup
from tests.flow8_cli import run

from .server import make_key, serving, streams_env

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

CACHE_SECONDS = 1.0


def hits(metrics: str) -> float:
    found = re.search(r'^flow8_cache_hits_total\{cache="api_keys"\} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_keys_are_kept_briefly_and_a_revocation_holds(
    group: WorkerGroup, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cwd = tmp_path_factory.mktemp("serve-keys")
    env = {**streams_env(group), "FLOW8_HTTP__KEY_CACHE_SECONDS": str(CACHE_SECONDS)}
    admin = make_key("--mongodb", company="acme", role="admin", cwd=cwd, env=env)
    member = make_key("--mongodb", company="acme", cwd=cwd, env=env)
    other = make_key("--mongodb", company="acme", cwd=cwd, env=env)
    with serving("--streams", cwd=cwd, env=env) as server:
        with server.client(member) as client, server.client() as anonymous:
            before = hits(anonymous.get("/metrics").text)
            assert [client.get("/v1/plays").status_code for _ in range(3)] == [200, 200, 200]
            assert hits(anonymous.get("/metrics").text) >= before + 2  # one read, then kept
        # revoked through this instance: refused here at once, though it was kept
        with server.client(admin) as boss:
            assert boss.post(f"/v1/keys/{member.split('_')[1]}/revoke").status_code == 200
        with server.client(member) as client:
            assert client.get("/v1/plays").status_code == 401
        # revoked by the CLI, which this instance does not hear of: refused once the kept copy expires
        with server.client(other) as client:
            assert client.get("/v1/plays").status_code == 200
            gone = run("keys", "revoke", other.split("_")[1], "--mongodb", cwd=cwd, env=env)
            assert gone.code == 0, gone.err
            deadline = time.monotonic() + CACHE_SECONDS + 10
            while (status := client.get("/v1/plays").status_code) == 200 and time.monotonic() < deadline:
                time.sleep(0.1)  # a server's cache expiry has no event a client can await
            assert status == 401
