"""What the HTTP API needs of every store adapter: API keys, flow versions, and plays listed by
page (flow, time range, cursor). ``ApiStoreContract`` uses the ports only; an adapter joins by
subclassing it with a ``store`` fixture (``test_api_stores.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flow8_streams.stores.ports import ApiKey, PlayPage

from .contract import FLOW, T0, final, new_id, running


def key(company: str, *, at: datetime = T0, role: str = "member") -> ApiKey:
    return ApiKey(new_id("k"), company, role, new_id("digest").encode(), at)


class ApiStoreContract:
    @pytest.fixture
    async def store(self) -> AsyncIterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    @pytest.fixture
    def company(self) -> str:
        return new_id("co")

    # ------------------------------------------------------------ keys

    async def test_a_key_is_read_back_by_id_and_only_as_its_companys(self, store: Any, company: str) -> None:
        mine, theirs = key(company, role="admin"), key(new_id("other"))
        await store.keys.add(mine)
        await store.keys.add(theirs)
        got = await store.keys.get(mine.key_id)
        assert (got.key_id, got.company_id, got.role, got.digest, got.revoked_at) == (
            mine.key_id, company, "admin", mine.digest, None,
        )  # fmt: skip
        assert abs(got.created_at - mine.created_at) < timedelta(milliseconds=1)
        assert await store.keys.get(mine.key_id, company) == got
        assert await store.keys.get(theirs.key_id, company) is None
        assert await store.keys.get(new_id("k")) is None

    async def test_keys_are_listed_oldest_first_per_company(self, store: Any, company: str) -> None:
        later, earlier = key(company, at=T0 + timedelta(seconds=1)), key(company)
        other = key(new_id("other"))
        for k in (later, other, earlier):
            await store.keys.add(k)
        assert [k.key_id for k in await store.keys.list(company)] == [earlier.key_id, later.key_id]
        assert {k.key_id for k in await store.keys.list()} >= {earlier.key_id, later.key_id, other.key_id}

    async def test_revoking_keeps_the_first_date_and_stays_in_its_company(self, store: Any, company: str) -> None:
        k = key(company)
        await store.keys.add(k)
        assert await store.keys.revoke(k.key_id, T0, new_id("other")) is None
        assert (await store.keys.get(k.key_id)).revoked_at is None
        first = (T0 + timedelta(hours=1)).replace(microsecond=0)  # MongoDB keeps milliseconds
        revoked = await store.keys.revoke(k.key_id, first, company)
        assert revoked is not None and revoked.revoked_at == first
        again = await store.keys.revoke(k.key_id, first + timedelta(hours=1))
        assert again is not None and again.revoked_at == first
        assert await store.keys.revoke(new_id("k"), first) is None

    # ------------------------------------------------------------ flow versions

    async def test_flow_versions_ascending_per_company(self, store: Any, company: str) -> None:
        for version in (2, 1, 3):
            await store.flows.put(company, FLOW.model_copy(update={"version": version}))
        assert await store.flows.versions(company, FLOW.name) == [1, 2, 3]
        assert await store.flows.versions(new_id("other"), FLOW.name) == []
        assert await store.flows.versions(company, "nope") == []

    # ------------------------------------------------------------ plays by page

    async def _plays(self, store: Any, company: str) -> list[Any]:
        """Seven plays of ``company``, one running, two in the same microsecond; one of another company."""
        starts = [T0 + timedelta(seconds=s) for s in (0, 1, 2, 2, 3, 4)]
        states = [final(new_id("p"), company, start=at, ok=i % 2 == 0) for i, at in enumerate(starts)]
        states.append(running(new_id("p"), company, start=T0 + timedelta(seconds=5)))
        other_flow = final(new_id("p"), company, start=T0 + timedelta(milliseconds=2500))
        other_flow = other_flow.model_copy(update={"flow": FLOW.model_copy(update={"name": "other-flow"})})
        states.append(other_flow)
        await store.plays.save([*states, final(new_id("p"), new_id("other"), start=T0)])
        return sorted(states, key=lambda s: (s.started_at, s.play_id), reverse=True)

    async def test_pages_walk_every_play_once_newest_first(self, store: Any, company: str) -> None:
        expected = await self._plays(store, company)
        seen: list[str] = []
        after: tuple[datetime, str] | None = None
        while True:
            page = await store.plays.list(company, None, 3, PlayPage(after=after))
            seen += [s.play_id for s in page]
            if len(page) < 3:
                break
            after = (page[-1].started_at, page[-1].play_id)
        assert seen == [s.play_id for s in expected]

    async def test_a_page_narrows_by_flow_status_and_time(self, store: Any, company: str) -> None:
        expected = await self._plays(store, company)
        by_flow = await store.plays.list(company, None, 50, PlayPage(flow="other-flow"))
        assert [s.flow.name for s in by_flow] == ["other-flow"]
        since, until = T0 + timedelta(seconds=1), T0 + timedelta(seconds=3)
        ranged = await store.plays.list(company, None, 50, PlayPage(since=since, until=until))
        assert [s.play_id for s in ranged] == [s.play_id for s in expected if since <= s.started_at < until]
        assert len(ranged) == 4
        failed = await store.plays.list(company, "failed", 50, PlayPage(since=since))
        assert [s.play_id for s in failed] == [
            s.play_id for s in expected if s.status.value == "failed" and s.started_at >= since
        ]
        live = await store.plays.list(company, "running", 50, PlayPage(until=T0 + timedelta(seconds=5)))
        assert live == []
        live = await store.plays.list(company, "running", 50, PlayPage(since=T0.astimezone(UTC)))
        assert [s.status.value for s in live] == ["running"]
