"""``flow8 serve --streams`` answers from ``flow8.play-results``: black-box, against a real worker,
Kafka and FerretDB.

Instance ``topic`` reads a MongoDB database the worker never projects into (its own keys and
flow catalog, an empty projection), so whatever it answers about a play came off the topic.
Instance ``mongo`` shares the worker's database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pymongo
import pytest

from tests.conformance.streams_harness import WorkerGroup

from .conftest import HELLO, SLOW, new_id
from .server import Server, make_key, serving, streams_env

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]
PER_KEY, TOTAL = 2, 3  # the waits instance ``topic`` holds for one key, and in all


@dataclass
class Instances:
    topic: Server  # its projection empty: answers from the results topic only
    mongo: Server  # the worker's database
    keys: dict[tuple[str, str], str]  # (instance, company) -> key
    env: dict[str, str]
    cwd: Path


@pytest.fixture(scope="module")
def two(group: WorkerGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instances]:
    cwd = tmp_path_factory.mktemp("serve-results")
    env = streams_env(group)
    bare = {**env, "MONGODB_DATABASE": f"{group.name}x", "FLOW8_HTTP__MAX_WAITS_PER_KEY": str(PER_KEY),
            "FLOW8_HTTP__MAX_WAITS": str(TOTAL)}  # fmt: skip
    keys = {
        (where, company): make_key("--mongodb", company=company, cwd=cwd, env=e)
        for where, e in (("topic", bare), ("mongo", env))
        for company in ("acme", "globex")
    }
    with serving("--streams", cwd=cwd, env=bare) as topic, serving("--streams", cwd=cwd, env=env) as mongo:
        yield Instances(topic, mongo, keys, env, cwd)


def put_flow(two: Instances, flow: dict[str, object]) -> str:
    """The same flow, version 1, in both catalogs (the worker reads its own)."""
    name = new_id("flow")
    for where in ("topic", "mongo"):
        with getattr(two, where).client(two.keys[where, "acme"]) as client:
            assert client.put(f"/v1/flows/{name}", json=flow).json() == {"name": name, "version": 1}
    return name


def test_a_wait_answers_from_the_results_topic_without_the_projection(two: Instances) -> None:
    name, play_id = put_flow(two, HELLO), new_id()
    with two.topic.client(two.keys["topic", "acme"]) as acme, two.mongo.client(two.keys["mongo", "acme"]) as other:
        assert acme.post("/v1/plays", json={"flow": name, "input": {"n": 7}, "play_id": play_id}).status_code == 202
        done = acme.get(f"/v1/plays/{play_id}/wait", params={"timeout": 30})
        assert done.status_code == 200, done.text
        play = done.json()
        assert play["status"] == "succeeded" and play["input"] == {"n": 7} and play["play_id"] == play_id
        assert set(play["flowlets"]) == {"a", "b"} and play["flowlets"]["b"]["status"] == "succeeded"
        assert play["seq"] > 0 and play["started_at"] < play["ended_at"]
        assert acme.get(f"/v1/plays/{play_id}").json() == play
        assert [p["play_id"] for p in acme.get("/v1/plays", params={"flow": name}).json()["items"]] == [play_id]
        assert acme.get("/v1/plays", params={"flow": name, "status": "running"}).json()["items"] == []
        cancel = acme.post(f"/v1/plays/{play_id}/cancel")
        assert cancel.status_code == 409 and "succeeded" in cancel.text
        again = acme.post("/v1/plays", json={"flow": name, "input": {"n": 8}, "play_id": play_id})
        assert again.status_code == 200 and again.json() == play  # the same play, from the result
        # the other instance, on the worker's projection, shows the same play
        assert other.get(f"/v1/plays/{play_id}/wait", params={"timeout": 30}).json() == play
        assert other.get(f"/v1/plays/{play_id}").json() == play
    with two.topic.client() as anonymous:
        metrics = anonymous.get("/metrics").text
    assert 'flow8_cache_hits_total{cache="play_results"}' in metrics
    with pymongo.MongoClient(two.env["MONGODB_URI"]) as client:  # what that instance reads holds no play
        bare = client[two.env["MONGODB_DATABASE"] + "x"]
        assert bare["plays"].count_documents({}) == bare["plays_live"].count_documents({}) == 0


def test_a_play_that_ended_before_the_instance_started_comes_from_the_projection(two: Instances) -> None:
    name, play_id = put_flow(two, HELLO), new_id()
    with two.mongo.client(two.keys["mongo", "acme"]) as acme:
        acme.post("/v1/plays", json={"flow": name, "input": {"n": 1}, "play_id": play_id})
        from_topic = acme.get(f"/v1/plays/{play_id}/wait", params={"timeout": 30}).json()
    with serving("--streams", cwd=two.cwd, env=two.env) as late, late.client(two.keys["mongo", "acme"]) as acme:
        # its reader started at the topic's end, past this result: the projection answers, alike
        assert acme.get(f"/v1/plays/{play_id}/wait", params={"timeout": 30}).json() == from_topic
        assert acme.get(f"/v1/plays/{play_id}").json() == from_topic


def test_another_companys_result_is_a_404(two: Instances) -> None:
    name, play_id = put_flow(two, HELLO), new_id()
    with two.topic.client(two.keys["topic", "acme"]) as acme, two.topic.client(two.keys["topic", "globex"]) as globex:
        acme.post("/v1/plays", json={"flow": name, "play_id": play_id})
        assert acme.get(f"/v1/plays/{play_id}/wait", params={"timeout": 30}).status_code == 200  # held now
        assert globex.get(f"/v1/plays/{play_id}").status_code == 404
        assert globex.get(f"/v1/plays/{play_id}/wait", params={"timeout": 1}).status_code == 404
        assert globex.post(f"/v1/plays/{play_id}/cancel").status_code == 404
        assert play_id not in globex.get("/v1/plays").text
        taken = globex.post("/v1/plays", json={"flow": name, "play_id": play_id})
        assert taken.status_code == 409 and taken.json()["detail"][0]["loc"] == ["body", "play_id"]


async def held(server: Server, count: int) -> None:
    """Until ``server``'s flow8_http_waits reads ``count`` (a poll: the gauge changes with no event outside)."""
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=server.url) as client:
        while f"flow8_http_waits {count:.1f}" not in (await client.get("/metrics")).text:
            assert time.monotonic() < deadline, f"never {count} waits held"
            await asyncio.sleep(0.05)


async def test_waits_past_their_bounds_are_refused_and_the_held_ones_end_with_the_play(two: Instances) -> None:
    name = put_flow(two, SLOW)
    server = two.topic
    acme = httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {two.keys['topic', 'acme']}"})
    globex = httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {two.keys['topic', 'globex']}"})
    async with acme, globex:
        play_id = (await acme.post("/v1/plays", json={"flow": name})).json()["play_id"]
        path, forever = f"/v1/plays/{play_id}/wait", {"timeout": 60}
        waits = [asyncio.create_task(acme.get(path, params=forever, timeout=90)) for _ in range(PER_KEY)]
        await held(server, PER_KEY)
        over_key = await acme.get(path, params=forever)
        assert over_key.status_code == 429 and "http.max_waits_per_key" in over_key.text
        assert over_key.headers["retry-after"] == "1"
        other = asyncio.create_task(globex.get(f"/v1/plays/{new_id()}/wait", params={"timeout": 15}, timeout=30))
        await held(server, TOTAL)
        over_all = await globex.get(path, params=forever)
        assert over_all.status_code == 503 and "http.max_waits" in over_all.text
        with two.mongo.client(two.keys["mongo", "acme"]) as other_instance:  # whose projection has the play
            running = other_instance.get(path, params={"timeout": 5})  # once it is projected
            assert running.status_code == 408 and running.json()["play"]["status"] == "running"
            assert other_instance.post(f"/v1/plays/{play_id}/cancel").status_code == 202
        ended = await asyncio.gather(*waits)  # the cancelled play's result ends each wait
        assert [(r.status_code, r.json()["status"]) for r in ended] == [(200, "cancelled")] * PER_KEY
        await held(server, 1)
        assert (await acme.get(path, params={"timeout": 1})).json()["status"] == "cancelled"  # a slot again
        assert (await other).status_code == 404  # no such play, once its 15 s passed
    with server.client() as anonymous:
        assert 'flow8_http_refused_total{status="429"}' in anonymous.get("/metrics").text
