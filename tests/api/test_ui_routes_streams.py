"""The UI's /v1 routes on ``flow8 serve --streams`` (real Kafka + FerretDB; no worker needed: flows
and KV are read and written in MongoDB): flows by name, a flow's DAG, KV keys by prefix, each
within its company, and the same answers from two instances."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from flow8_streams.settings import Settings

from .conftest import HELLO
from .server import Two, clean_env, make_key, serving

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    settings = Settings()  # $KAFKA_BOOTSTRAP_SERVERS and $MONGODB_URI of the services
    name = f"ui{uuid.uuid4().hex[:10]}"
    cwd = tmp_path_factory.mktemp("ui-streams")
    env = clean_env(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        MONGODB_URI=settings.mongodb_uri,
        MONGODB_DATABASE=name,
        FLOW8_TOPICS__PREFIX=name,
    )
    acme = make_key("--mongodb", company="acme", cwd=cwd, env=env)
    globex = make_key("--mongodb", company="globex", cwd=cwd, env=env)
    with serving("--streams", cwd=cwd, env=env) as a, serving("--streams", cwd=cwd, env=env) as b:
        yield Two(a, b, acme, globex)


def test_flows_dags_and_kv_keys_alike_from_either_instance_within_the_company(two: Two) -> None:
    flows = sorted(f"f{uuid.uuid4().hex[:8]}" for _ in range(3))
    with two.a.client(two.acme) as a, two.b.client(two.acme) as b:
        for name in flows:
            assert a.put(f"/v1/flows/{name}", json=HELLO).status_code == 201
        assert a.put(f"/v1/flows/{flows[1]}", json={**HELLO, "description": "v2"}).status_code == 201
        for key in ("k/2", "k/1", "other"):
            assert b.put(f"/v1/kv/{key}", json={"value": key}).status_code == 200

        versions = {flows[0]: [1], flows[1]: [1, 2], flows[2]: [1]}
        expected = {"items": [{"name": n, "versions": v} for n, v in versions.items()], "next_cursor": None}
        assert a.get("/v1/flows").json() == b.get("/v1/flows").json() == expected
        page = b.get("/v1/flows", params={"limit": 2}).json()
        assert page["next_cursor"] == flows[1]
        assert [f["name"] for f in a.get("/v1/flows", params={"cursor": flows[1]}).json()["items"]] == [flows[2]]

        for version, expected in ((1, "1"), (None, "2")):
            params = {"version": version} if version else {}
            dags = [c.get(f"/v1/flows/{flows[1]}/dag", params=params) for c in (a, b)]
            assert [r.status_code for r in dags] == [200, 200] and dags[0].text == dags[1].text
            assert ET.fromstring(dags[0].text).get("data-version") == expected

        keys = [a.get("/v1/kv", params={"prefix": "k/"}).json(), b.get("/v1/kv", params={"prefix": "k/"}).json()]
        assert keys[0] == keys[1] == {"items": [{"key": "k/1"}, {"key": "k/2"}], "next_cursor": None}
        assert a.get("/v1/kv", params={"limit": 2}).json() == {
            "items": [{"key": "k/1"}, {"key": "k/2"}],
            "next_cursor": "k/2",
        }
    with two.b.client(two.globex) as globex:
        assert globex.get("/v1/flows").json() == {"items": [], "next_cursor": None}
        assert globex.get(f"/v1/flows/{flows[0]}/dag").status_code == 404
        assert globex.get("/v1/kv").json() == {"items": [], "next_cursor": None}
