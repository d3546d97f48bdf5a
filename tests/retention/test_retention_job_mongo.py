"""The scheduled job as ``flow8 serve --streams`` runs it (``retaining`` with no db: MongoDB), on the
real MongoDB wire-protocol server: the first run archives and deletes the plays past
``retention.days``, counts it in the metrics, and leaves the younger ones; the job stops with the
block."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from flow8_streams.domain.events import Event
from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import decide, fold
from flow8_streams.http.serve import retaining
from flow8_streams.metrics import Metrics
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore
from tests.audit.conftest import DIAMOND
from tests.retention.test_archive_mongo import _uri

pytestmark = pytest.mark.mongo


def finished_play(play_id: str, company: str, start: datetime) -> tuple[list[Event], PlayState]:
    """A play of the diamond run to success from ``start``, a second a flowlet: its events and state."""
    events = decide(None, Start(play_id=play_id, company_id=company, flow=DIAMOND, input={}), start)
    state = fold(events)
    for i, name in enumerate(("fetch", "fee", "tax", "pay"), start=1):
        assert state is not None
        at = start + timedelta(seconds=i)
        result = FlowletResult(play_id=play_id, company_id=company, flowlet=name, attempt=1, ok=True,
                               output={}, started_at=at, ended_at=at)  # fmt: skip
        more = decide(state, result, at)
        events += more
        state = fold(more, state)
    assert state is not None and state.finished
    return events, state


async def _fill(uri: str, database: str) -> None:
    store = MongoStore(uri, database)
    try:
        await store.open()
        now = datetime.now(UTC)
        for play_id, start in (("old", now - timedelta(days=3)), ("young", now - timedelta(hours=1))):
            events, state = finished_play(play_id, "acme", start)
            await store.log.append(events)
            await store.plays.save([state])
    finally:
        await store.close()


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    uri, name = _uri(), f"retjob{uuid.uuid4().hex[:10]}"
    asyncio.run(_fill(uri, name))
    try:
        yield uri, name
    finally:
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        client.drop_database(name)
        client.close()


async def test_the_streams_side_job_archives_and_prunes_mongodb(database: tuple[str, str], tmp_path: Path) -> None:
    uri, name = database
    settings = Settings.model_validate(
        {"mongodb_uri": uri, "mongodb_database": name, "retention": {"days": 1, "archive": str(tmp_path)}}
    )
    metrics = Metrics()

    def runs(outcome: str) -> float:
        return metrics.registry.get_sample_value("flow8_retention_runs_total", {"outcome": outcome}) or 0.0

    async with retaining(settings, None, metrics):
        async with asyncio.timeout(60):
            while runs("ok") + runs("failed") < 1:  # the job's first run starts with the block
                await asyncio.sleep(0.05)  # a poll period: the run reports only through its counters
    assert runs("ok") == 1 and runs("failed") == 0
    assert metrics.registry.get_sample_value("flow8_pruned_plays_total") == 1
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        assert {d["_id"] for d in client[name].plays.find({}, {"_id": 1})} == {"young"}
        assert {d["play_id"] for d in client[name].events.find({}, {"play_id": 1})} == {"young"}
    finally:
        client.close()
    assert len(list((tmp_path / "acme").glob("*.manifest.json"))) == 1
