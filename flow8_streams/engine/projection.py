"""The projection's pure part: fold a batch of events onto the stored plays.

Given a batch of events (any order, any redelivery, several plays) and what a store
holds of those plays (``Stored``: company, seq, state), ``project`` returns ONE new
state per play (the latest the batch reaches) and what it did (``ApplyResult``). The
rules, the same for every store:

- an event at or below the stored ``seq`` is a redelivery: skipped;
- the others are folded in ``seq`` order while they continue the stored play
  (``seq + 1``, ``+ 2``...); at the first missing ``seq`` the play stops and is
  reported in ``gaps`` (the run before the hole is still folded); a play the store
  does not hold must start at ``seq`` 1;
- events of one play naming two companies, or a play the store holds for another
  company, are rejected whole; so is a run the engine refuses to fold.

A store reads ``Stored`` for ``Batch.play_ids``, calls ``project`` and writes the states,
each guarded by its ``seq`` (so a late writer never moves a play back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from flow8_streams.domain.events import Event
from flow8_streams.domain.state import PlayState
from flow8_streams.engine.core import EngineError, fold


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of a play are missing: ``expected_seq`` up to ``got_seq - 1``."""

    play_id: str
    company_id: str
    expected_seq: int
    got_seq: int


@dataclass(slots=True)
class ApplyResult:
    """What applying a batch of events to a projection did."""

    applied: int = 0  # events folded into a written play
    skipped: int = 0  # events the projection had already (redelivered)
    plays: int = 0  # plays written
    gaps: list[Gap] = field(default_factory=list)  # plays waiting for missing events
    rejected: dict[str, str] = field(default_factory=dict)  # play_id -> why its events were not applied
    appended_at: list[datetime] = field(default_factory=list)  # ``at`` of each applied event (projection lag)


@dataclass(frozen=True, slots=True)
class Stored:
    """What a store holds of one play: its company, the ``seq`` it reached, and the state
    (None when the store keeps no state at that seq, e.g. a placeholder at seq 0)."""

    company_id: str
    seq: int
    state: PlayState | None


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch of events grouped by play: ``(play_id, seq)`` once, companies checked."""

    events: Mapping[str, Mapping[int, Event]]  # play_id -> seq -> event
    companies: Mapping[str, str]  # play_id -> company_id
    rejected: Mapping[str, str]  # play_id -> why (events naming two companies)
    skipped: int  # events repeated within the batch

    @property
    def play_ids(self) -> list[str]:
        return list(self.events)

    @classmethod
    def of(cls, events: Sequence[Event]) -> Batch:
        by_play: dict[str, dict[int, Event]] = {}
        companies: dict[str, str] = {}
        rejected: dict[str, str] = {}
        repeated = 0
        for e in events:
            if companies.setdefault(e.play_id, e.company_id) != e.company_id:
                rejected[e.play_id] = f"events of play {e.play_id!r} name two companies"
            seqs = by_play.setdefault(e.play_id, {})
            if e.seq in seqs:
                repeated += 1
            else:
                seqs[e.seq] = e
        for play_id in rejected:
            del by_play[play_id]
        return cls(by_play, companies, rejected, repeated)


@dataclass(frozen=True, slots=True)
class Projection:
    """``project``'s answer: the state to write per play, and the result so far."""

    states: dict[str, PlayState]  # play_id -> its latest state, to write guarded by seq
    applied: dict[str, list[Event]]  # play_id -> the events folded into that state
    skipped: int
    gaps: list[Gap]
    rejected: dict[str, str]

    def result(self, refused: Mapping[str, str] | None = None) -> ApplyResult:
        """The ``ApplyResult`` once written; ``refused``: plays the store would not write
        (play_id -> why), which count as rejected, not applied."""
        refused = refused or {}
        written = [p for p in self.states if p not in refused]
        return ApplyResult(
            applied=sum(len(self.applied[p]) for p in written),
            skipped=self.skipped,
            plays=len(written),
            gaps=list(self.gaps),
            rejected={**self.rejected, **refused},
            appended_at=[e.at for p in written for e in self.applied[p]],
        )


def project(batch: Batch, stored: Mapping[str, Stored]) -> Projection:
    """Fold ``batch`` onto ``stored`` (a play absent from it is new: seq 0, no state)."""
    states: dict[str, PlayState] = {}
    applied: dict[str, list[Event]] = {}
    gaps: list[Gap] = []
    rejected = dict(batch.rejected)
    skipped = batch.skipped
    for play_id, by_seq in batch.events.items():
        company = batch.companies[play_id]
        held = stored.get(play_id)
        if held is not None and held.company_id != company:
            rejected[play_id] = "the play id belongs to another company"
            continue
        seq = held.seq if held is not None else 0
        fresh = sorted(s for s in by_seq if s > seq)
        skipped += len(by_seq) - len(fresh)
        run: list[Event] = []
        for s in fresh:
            if s != seq + len(run) + 1:
                gaps.append(Gap(play_id, company, seq + len(run) + 1, s))
                break
            run.append(by_seq[s])
        if not run:
            continue
        base = held.state if held is not None and held.seq > 0 else None
        if base is None and seq > 0:
            rejected[play_id] = f"the stored play is at seq {seq} without its state"
            continue
        try:
            state = fold(run, base)
        except EngineError as exc:
            rejected[play_id] = str(exc)
            continue
        assert state is not None  # run is not empty
        states[play_id] = state
        applied[play_id] = run
    return Projection(states, applied, skipped, gaps, rejected)


def latest(states: Sequence[PlayState]) -> dict[str, PlayState]:
    """The highest-seq state of each play (what ``save`` writes of several)."""
    out: dict[str, PlayState] = {}
    for s in states:
        if s.play_id not in out or s.seq > out[s.play_id].seq:
            out[s.play_id] = s
    return out


__all__ = ["ApplyResult", "Batch", "Gap", "Projection", "Stored", "latest", "project"]
