"""The HTTP API on the streams backend: two ``flow8 serve --streams`` instances over one real Kafka
+ FerretDB and a streams worker; whichever instance a request reaches, the answer is the same."""

from __future__ import annotations

import httpx
import pytest

from .conftest import HELLO, SLOW, new_id
from .server import Two

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]


def wait(client: httpx.Client, play_id: str) -> dict[str, object]:
    response = client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 60})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_two_instances_answer_alike(two: Two) -> None:
    name, play_id, key = new_id("flow"), new_id(), new_id("k")
    with two.a.client(two.acme) as a, two.b.client(two.acme) as b:
        assert a.put(f"/v1/flows/{name}", json=HELLO).json() == {"name": name, "version": 1}
        assert b.get(f"/v1/flows/{name}").json() == a.get(f"/v1/flows/{name}").json()
        assert b.get(f"/v1/flows/{name}/versions").json()["versions"] == [1]

        accepted = a.post("/v1/plays", json={"flow": name, "input": {"n": 3}, "play_id": play_id})
        assert accepted.status_code == 202, accepted.text
        assert accepted.headers["location"] == f"/v1/plays/{play_id}"
        done = wait(b, play_id)  # started through one instance, awaited through the other
        assert done["status"] == "succeeded" and done["input"] == {"n": 3}
        assert a.get(f"/v1/plays/{play_id}").json() == b.get(f"/v1/plays/{play_id}").json() == done
        # its events and verdict, read off the events topic, alike from both (test_api_streams_history)
        for path in (f"/v1/plays/{play_id}/events", f"/v1/plays/{play_id}/audit"):
            answers = [a.get(path), b.get(path)]
            assert [r.status_code for r in answers] == [200, 200] and answers[0].json() == answers[1].json()
        page = {"flow": name}
        assert a.get("/v1/plays", params=page).json() == b.get("/v1/plays", params=page).json()
        assert [p["play_id"] for p in a.get("/v1/plays", params=page).json()["items"]] == [play_id]

        again = b.post("/v1/plays", json={"flow": name, "input": {"other": 1}, "play_id": play_id})
        assert again.status_code == 200 and again.json() == done  # the same play, not a second one

        a.put(f"/v1/kv/{key}", json={"value": [1, 2]})
        assert b.get(f"/v1/kv/{key}").json() == {"key": key, "value": [1, 2], "version": 1}
        for server in (two.a, two.b):
            with server.client() as anonymous:
                assert anonymous.get("/readyz").json() == {"status": "ready", "backend": "streams"}


def test_a_play_cancelled_through_one_instance_ends_for_both(two: Two) -> None:
    name = new_id("slow")
    with two.a.client(two.acme) as a, two.b.client(two.acme) as b:
        a.put(f"/v1/flows/{name}", json=SLOW)
        play_id = a.post("/v1/plays", json={"flow": name}).json()["play_id"]
        # a wait shorter than the play's 30 s, long enough for the projection to show it
        running = b.get(f"/v1/plays/{play_id}/wait", params={"timeout": 5})
        assert running.status_code == 408 and running.json()["play"]["status"] == "running"
        assert b.post(f"/v1/plays/{play_id}/cancel").status_code == 202
        assert wait(a, play_id)["status"] == "cancelled"


def test_the_tenant_boundary_holds_on_either_instance(two: Two) -> None:
    name, play_id = new_id("flow"), new_id()
    with two.a.client(two.acme) as acme, two.b.client(two.globex) as globex:
        acme.put(f"/v1/flows/{name}", json=HELLO)
        acme.post("/v1/plays", json={"flow": name, "play_id": play_id})
        wait(acme, play_id)
        for path in (f"/v1/plays/{play_id}", f"/v1/plays/{play_id}/events", f"/v1/plays/{play_id}/audit",
                     f"/v1/flows/{name}", f"/v1/flows/{name}/versions"):  # fmt: skip
            assert globex.get(path).status_code == 404, path
        assert globex.post(f"/v1/plays/{play_id}/cancel").status_code == 404
        assert play_id not in globex.get("/v1/plays").text
        with two.b.client("f8k_" + "0" * 16 + "_" + two.acme.split("_", 2)[2]) as forged:
            assert forged.get("/v1/plays").status_code == 401
