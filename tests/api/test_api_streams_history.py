"""A play's events, audit verdict and timeline on ``flow8 serve --streams``, read off the real events
topic written by a real streams worker: the same JSON as ``flow8 serve --db`` gives for the same flow,
alike from two instances, another company's play a 404, forged records named in the verdict, the
audit cache's hits and misses on /metrics (on both backends: a verdict held while its play ran is not
served once it ended), and a read past its bounds refused naming the setting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conformance.streams_harness import WorkerGroup, metric, parse_metrics

from .conftest import HELLO, SLOW, Api, new_id
from .server import Server, Two, serving, streams_env

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]
NAP = {"flowlets": [{"name": "nap", "module_ref": "sleep", "input": {"seconds": 2}}]}


def finished(client: httpx.Client, flow: str, play_id: str) -> dict[str, Any]:
    accepted = client.post("/v1/plays", json={"flow": flow, "input": {"n": 1}, "play_id": play_id})
    assert accepted.status_code in (200, 202), accepted.text
    done = client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 60})
    assert done.status_code == 200, done.text
    body: dict[str, Any] = done.json()
    return body


def running(client: httpx.Client, flow: str) -> str:
    """A play of ``flow`` (SLOW: a 30 s nap) once the projection shows it running: its first
    events are committed on the events topic by then."""
    play_id: str = client.post("/v1/plays", json={"flow": flow}).json()["play_id"]
    shown = client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 3})
    assert shown.status_code == 408 and shown.json()["play"]["status"] == "running", shown.text
    return play_id


def shape(events: list[dict[str, Any]]) -> list[tuple[str, list[str], list[str]]]:
    """What two runs of one flow share: each event's type, its fields and its payload's fields."""
    return [(e["type"], sorted(e), sorted(e["payload"])) for e in events]


def samples(server: Server) -> dict[Any, float]:
    with server.client() as client:
        return parse_metrics(client.get("/metrics").text)


def test_events_audit_and_timeline_equal_the_embedded_backends(api: Api, two: Two) -> None:
    name, play_id = new_id("flow"), new_id()
    with api.server.client(api.acme) as embedded:
        embedded.put(f"/v1/flows/{name}", json=HELLO)
        finished(embedded, name, play_id)
        local_events = embedded.get(f"/v1/plays/{play_id}/events").json()
        local_audit = embedded.get(f"/v1/plays/{play_id}/audit").json()
    with two.a.client(two.acme) as a, two.b.client(two.acme) as b:
        a.put(f"/v1/flows/{name}", json=HELLO)
        assert finished(a, name, play_id)["status"] == "succeeded"
        read_before = samples(two.a)
        events = [a.get(f"/v1/plays/{play_id}/events"), b.get(f"/v1/plays/{play_id}/events")]
        audits = [a.get(f"/v1/plays/{play_id}/audit"), b.get(f"/v1/plays/{play_id}/audit")]
        timelines = [a.get(f"/v1/plays/{play_id}/timeline"), b.get(f"/v1/plays/{play_id}/timeline")]
        later = b.get(f"/v1/plays/{play_id}/events", params={"after_seq": 3}).json()["items"]
        read_after = samples(two.a)

    assert [r.status_code for r in events + audits + timelines] == [200] * 6, [r.text for r in events + audits]
    assert events[0].json() == events[1].json()  # whichever instance is asked
    assert audits[0].json() == audits[1].json()
    assert timelines[0].text == timelines[1].text and timelines[0].headers["content-type"] == "image/svg+xml"
    items = events[0].json()["items"]
    assert [e["seq"] for e in items] == list(range(1, len(items) + 1))
    assert shape(items) == shape(local_events["items"])  # the same events, fields and payloads as embedded
    assert later == items[3:]
    # read once on A (the audit and timeline take the finished play's history from its cache), where
    # it was written: the company's partition of the producers' default partitioner
    reads = {
        where: metric(read_after, "flow8_http_history_reads_total", partitions=where)
        - metric(read_before, "flow8_http_history_reads_total", partitions=where)
        for where in ("company", "any")
    }
    assert reads == {"company": 1, "any": 0}
    assert metric(read_after, "flow8_cache_hits_total", cache="history") >= 2

    verdict = audits[0].json()
    assert verdict["head_hash"] == items[-1]["hash"] and verdict["last_seq"] == len(items)
    different = {"play_id", "head_hash"}  # all else is the same JSON on both backends
    assert {k: v for k, v in verdict.items() if k not in different} == {
        k: v for k, v in local_audit.items() if k not in different
    }
    assert verdict["verdict"] == "ok" and verdict["status"] == "succeeded" and verdict["findings"] == []


def test_a_play_started_on_another_partition_is_found_on_every_partition(group: WorkerGroup, two: Two) -> None:
    """An upstream producer with its own partitioner sends a company's StartPlay to a partition
    that is not the company's: the worker writes the play's events there, and the API still
    finds its whole history, by reading every partition (counted as such)."""
    from aiokafka.partitioner import DefaultPartitioner

    from flow8_streams.domain.messages import StartPlay
    from flow8_streams.runtimes.streams import codec

    name, play_id = new_id("flow"), new_id()
    settings = group.settings
    every = list(range(settings.topics.partitions))
    elsewhere = (DefaultPartitioner()(b"acme", every, every) + 1) % len(every)
    with two.a.client(two.acme) as a:
        a.put(f"/v1/flows/{name}", json=HELLO)
        command = StartPlay(company_id="acme", flow=name, flow_version=1, play_id=play_id, input={"n": 1})

        async def send() -> None:
            producer = AIOKafkaProducer(**settings.kafka_client_options())
            await producer.start()
            try:
                await producer.send_and_wait(
                    settings.topics.commands, codec.encode(command), key=b"acme", partition=elsewhere
                )
            finally:
                await producer.stop()

        asyncio.run(send())
        done = a.get(f"/v1/plays/{play_id}/wait", params={"timeout": 60})
        assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
        before = samples(two.a)
        events = a.get(f"/v1/plays/{play_id}/events")
        verdict = a.get(f"/v1/plays/{play_id}/audit").json()
        after = samples(two.a)
    items = events.json()["items"]
    assert events.status_code == 200 and [e["seq"] for e in items] == list(range(1, len(items) + 1))
    assert items[-1]["type"] == "PlayCompleted"
    assert verdict["verdict"] == "ok" and verdict["last_seq"] == len(items)
    reads = {
        where: metric(after, "flow8_http_history_reads_total", partitions=where)
        - metric(before, "flow8_http_history_reads_total", partitions=where)
        for where in ("company", "any")
    }
    assert reads == {"company": 0, "any": 1}


def test_another_companys_play_is_a_404(two: Two) -> None:
    name, play_id = new_id("flow"), new_id()
    with two.a.client(two.acme) as acme, two.b.client(two.globex) as globex:
        acme.put(f"/v1/flows/{name}", json=HELLO)
        finished(acme, name, play_id)
        for path in ("events", "audit", "timeline"):
            refused = globex.get(f"/v1/plays/{play_id}/{path}")
            assert refused.status_code == 404 and play_id in refused.json()["detail"], path
            assert acme.get(f"/v1/plays/{play_id}/{path}").status_code == 200, path


async def produce(group: WorkerGroup, company: str, *records: bytes) -> None:
    """``records`` on the events topic as anyone with write access could: keyed by the company."""
    producer = AIOKafkaProducer(**group.settings.kafka_client_options())
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(group.settings.topics.events, record, key=company.encode())
    finally:
        await producer.stop()


def test_forged_and_undecodable_records_of_a_play_are_findings(group: WorkerGroup, two: Two) -> None:
    name = new_id("slow")
    with two.a.client(two.acme) as a, two.b.client(two.acme) as b:
        a.put(f"/v1/flows/{name}", json=SLOW)
        twice, gap, garbled = running(a, name), running(a, name), running(a, name)
        first = {p: a.get(f"/v1/plays/{p}/events").json()["items"] for p in (twice, gap, garbled)}
        altered = {**first[twice][-1], "at": "2020-01-01T00:00:00Z"}  # its hash no longer covers it
        skipped = {**first[gap][-1], "seq": first[gap][-1]["seq"] + 3}  # seqs missing before it
        asyncio.run(
            produce(
                group,
                "acme",
                orjson.dumps(altered),
                orjson.dumps(skipped),
                b'{"play_id": "' + garbled.encode() + b'", not json',
            )
        )
        verdicts = {p: b.get(f"/v1/plays/{p}/audit").json() for p in (twice, gap, garbled)}
        assert a.get(f"/v1/plays/{twice}/audit").json() == verdicts[twice]
        for play_id in (twice, gap, garbled):
            assert b.post(f"/v1/plays/{play_id}/cancel").status_code == 202

    kinds = {p: [(f["kind"], f["seq"]) for f in v["findings"]] for p, v in verdicts.items()}
    assert kinds[twice] == [("duplicated", altered["seq"])]
    assert kinds[gap] == [("missing", skipped["seq"] - 2)]
    assert [k for k, _ in kinds[garbled]] == ["undecodable"]
    assert "partition" in verdicts[garbled]["findings"][0]
    assert all(v["verdict"] == "findings" and v["status"] == "running" for v in verdicts.values())


@pytest.mark.parametrize("backend", ["embedded", "streams"])
def test_verdicts_are_cached_but_not_past_their_plays_end(backend: str, api: Api, two: Two) -> None:
    server, key = (api.server, api.acme) if backend == "embedded" else (two.a, two.acme)
    name = new_id("nap")
    with server.client(key) as client:
        client.put(f"/v1/flows/{name}", json=NAP)
        play_id = client.post("/v1/plays", json={"flow": name}).json()["play_id"]
        assert client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 1}).status_code == 408
        before = samples(server)
        while_running = [client.get(f"/v1/plays/{play_id}/audit").json() for _ in range(2)]
        assert client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 60}).status_code == 200
        once_ended = [client.get(f"/v1/plays/{play_id}/audit").json() for _ in range(2)]
        after = samples(server)
    assert while_running[0] == while_running[1] and while_running[0]["status"] == "running"
    assert once_ended[0] == once_ended[1] and once_ended[0]["status"] == "succeeded"  # not the verdict held
    assert once_ended[0]["verdict"] == "ok" and once_ended[0]["events"] > while_running[0]["events"]
    moved = {
        kind: metric(after, f"flow8_cache_{kind}_total", cache="audit")
        - metric(before, f"flow8_cache_{kind}_total", cache="audit")
        for kind in ("hits", "misses")
    }
    assert moved == {"hits": 2, "misses": 2}


@pytest.mark.parametrize(
    ("setting", "value", "status"),
    [("FLOW8_HTTP__HISTORY_MAX_RECORDS", "2", 503), ("FLOW8_HTTP__HISTORY_MAX_SECONDS", "0.001", 504)],
)
def test_a_read_past_its_bound_is_refused_naming_the_setting(
    group: WorkerGroup, two: Two, tmp_path: Path, setting: str, value: str, status: int
) -> None:
    name, play_id = new_id("flow"), new_id()
    with two.a.client(two.acme) as a:
        a.put(f"/v1/flows/{name}", json=HELLO)
        finished(a, name, play_id)
    env = {**streams_env(group), setting: value}
    with serving("--streams", cwd=tmp_path, env=env) as bounded, bounded.client(two.acme) as client:
        for path in ("events", "audit", "timeline"):
            refused = client.get(f"/v1/plays/{play_id}/{path}")
            assert refused.status_code == status, refused.text
            assert setting.removeprefix("FLOW8_").replace("__", ".").lower() in refused.json()["detail"]
    log = bounded.output()  # once it stopped: a read cut by its bound left no consumer open
    assert "Traceback" not in log and "Unclosed" not in log
