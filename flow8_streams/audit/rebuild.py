"""Rebuild: fold a log into a fresh projection through the ``PlayProjection.apply`` port, and
compare it with the live projection, play by play and field by field.

Only a history whose chain holds is folded (``verify`` without anchors): an altered or cut log
is reported, never made into a projection. Writes go in batches of events; ``apply`` is guarded
by ``seq``, so a second run over the same log writes nothing new and duplicates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flow8_streams.audit.replay import parse
from flow8_streams.audit.sources import MAX_PLAYS_LISTED, Filter
from flow8_streams.audit.verify import PROJECTION, Finding, PlayHistory, _differing_fields, verify
from flow8_streams.domain.events import Event
from flow8_streams.domain.state import PlayState
from flow8_streams.engine.projection import ApplyResult
from flow8_streams.stores.ports import PlayProjection

NOT_FOLDED = "not_folded"  # a history the rebuild left out: its chain does not hold, or it cannot be read


@dataclass(slots=True)
class RebuiltPlay:
    play_id: str
    company_id: str
    state: PlayState | None
    findings: list[Finding] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "play_id": self.play_id,
            "company_id": self.company_id,
            "status": self.state.status.value if self.state is not None else None,
            "seq": self.state.seq if self.state is not None else None,
            "verdict": "findings" if self.findings else "ok",
            "findings": [f.as_json() for f in self.findings],
        }


class Rebuild:
    """Histories in (``add``), batches out to ``target`` (``flush``), then ``compare``."""

    def __init__(self, target: PlayProjection, *, batch: int = 1000) -> None:
        self.target = target
        self.batch = batch
        self.plays = 0
        self.events = 0
        self.result = ApplyResult()
        self.findings: list[Finding] = []  # histories not folded, plays the target refused
        self.from_source = False  # the source keeps a projection: compare with it
        self._companies: dict[str, str] = {}  # play_id -> company of each play folded
        self._source_states: dict[str, PlayState | None] = {}
        self._pending: list[Event] = []
        self._held: set[str] | None = None  # the plays the target held before the first write

    async def add(self, history: PlayHistory) -> None:
        if history.has_projection:
            self.from_source = True
            self._source_states[history.play_id] = history.projection
        chain = verify(PlayHistory(history.play_id, history.company_id, history.documents, problems=history.problems))
        if chain.findings:
            first = chain.findings[0]
            self.findings.append(
                Finding(NOT_FOLDED, f"play {history.play_id}: {first.kind}: {first.detail}", first.seq)
            )
            return
        events = parse(history.documents)
        if isinstance(events, str):
            self.findings.append(Finding(NOT_FOLDED, f"play {history.play_id}: {events}"))
            return
        self._companies[history.play_id] = history.company_id
        self.plays += 1
        self.events += len(events)
        self._pending.extend(events)
        if len(self._pending) >= self.batch:
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        if self._held is None:  # one listing, so that apply need not look for each play on its own
            self._held = {s.play_id for s in await self.target.list(None, None, MAX_PLAYS_LISTED)}
        absent = {e.play_id for e in self._pending if e.play_id not in self._held}
        done = await self.target.apply(self._pending, absent=absent)
        self._pending = []
        self.result.applied += done.applied
        self.result.skipped += done.skipped
        self.result.plays += done.plays
        self.result.gaps += done.gaps
        self.result.rejected.update(done.rejected)
        for play_id, why in done.rejected.items():
            self.findings.append(Finding(NOT_FOLDED, f"play {play_id}: the projection refused it: {why}"))
        for gap in done.gaps:
            self.findings.append(
                Finding(NOT_FOLDED, f"play {gap.play_id}: seq {gap.expected_seq} is missing", gap.expected_seq)
            )

    async def compare(self, flt: Filter, live: PlayProjection | None) -> list[RebuiltPlay]:
        """Each play folded, as the target holds it, against the live projection: the source's own
        (``from_source``), else ``live``; with neither, no finding."""
        rebuilt = {s.play_id: s for s in await self.target.list(flt.company, None, MAX_PLAYS_LISTED)}
        against: dict[str, PlayState | None] | None = None
        if self.from_source:
            against = self._source_states
        elif live is not None:
            against = {s.play_id: s for s in await live.list(flt.company, None, MAX_PLAYS_LISTED)}
        plays: list[RebuiltPlay] = []
        for play_id, company in self._companies.items():
            play = RebuiltPlay(play_id, company, rebuilt.get(play_id))
            if play.state is None:
                play.findings.append(Finding(NOT_FOLDED, "the rebuilt projection has no row for this play"))
            elif against is not None:
                held = against.get(play_id)
                if held is None:
                    play.findings.append(
                        Finding(PROJECTION, "the live projection has no row for this play", field="(row)")
                    )
                else:
                    play.findings += [
                        Finding(PROJECTION, "the live projection differs from the rebuilt one", field=name)
                        for name in _differing_fields(play.state.model_dump(mode="json"), held.model_dump(mode="json"))
                    ]
            plays.append(play)
        return plays
