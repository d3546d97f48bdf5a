"""Verdicts on play histories: the hash chain, the terminal event, the projection, the anchors.

``verify(history, anchors)`` works on the events' JSON documents as the store holds them (the
hash covers those bytes, ``schemas/hashing.md``), so it needs no model of a newer event type to
check a chain; the documents are parsed into events only to fold them against a projection.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from flow8_streams.domain.canonical import NotCanonical
from flow8_streams.domain.events import (
    GENESIS_HASH,
    TERMINAL_EVENT_TYPES,
    UnknownHashVersion,
    chain_hash,
    event_adapter,
)
from flow8_streams.domain.state import PlayState
from flow8_streams.errors import EngineError

# what a finding names: where a history stops being the one that was written
ALTERED = "altered"  # an event's content no longer matches its hash
REORDERED = "reordered"  # an event stands where another seq belongs
MISSING = "missing"  # a seq is absent from the middle of the history (or the whole play is)
DUPLICATED = "duplicated"  # a seq appears twice
AFTER_TERMINAL = "after_terminal"  # events after the play's terminal event
CUT_TAIL = "cut_tail"  # a finished (or anchored) play whose log stops short
REWRITTEN = "rewritten"  # the chain differs from a signed anchor: recomputed after an edit
PROJECTION = "projection"  # the projection differs from the fold of the events
INVALID = "invalid"  # the events chain but cannot be read or folded into a play
UNKNOWN_HASH_VERSION = "unknown_hash_version"
UNANCHORED = "unanchored"  # events after the last signed checkpoint naming the play
CHECKPOINT_FORGED = "checkpoint_forged"  # a checkpoint whose signature or link does not verify


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    detail: str
    seq: int | None = None
    field: str | None = None
    partition: int | None = None  # where a bad record of a Kafka topic is
    offset: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "seq": self.seq, "detail": self.detail}
        if self.field is not None:
            out["field"] = self.field
        if self.partition is not None:
            out["partition"], out["offset"] = self.partition, self.offset
        return out


@dataclass(frozen=True, slots=True)
class Anchor:
    """A head of a play's chain signed outside the store."""

    last_seq: int
    head_hash: str
    source: str  # what vouches for it: "checkpoint 7 of acme (2026-11-30T02:00:01Z)"


@dataclass(slots=True)
class PlayHistory:
    """One play as a source holds it: its events' documents in the store's order, and its
    projection when the source keeps one."""

    play_id: str
    company_id: str
    documents: list[dict[str, Any]]
    projection: PlayState | None = None
    has_projection: bool = False  # the source keeps projections (an archive does not)
    problems: list[Finding] = field(default_factory=list)  # rows the source could not decode


@dataclass(slots=True)
class Verdict:
    play_id: str
    company_id: str
    flow_id: str | None
    status: str
    events: int
    last_seq: int
    head_hash: str | None
    anchored: bool | None  # None: no public key given
    findings: list[Finding]
    unanchored: bool = False

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "play_id": self.play_id,
            "company_id": self.company_id,
            "flow_id": self.flow_id,
            "status": self.status,
            "events": self.events,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "anchored": self.anchored,
            "unanchored": self.unanchored,
            "verdict": "ok" if self.ok else "findings",
            "findings": [f.as_json() for f in self.findings],
        }


def _status_of(last_type: str | None) -> str:
    return {"PlayCompleted": "succeeded", "PlayFailed": "failed", "PlayCancelled": "cancelled"}.get(
        last_type or "", "running"
    )


def _sequence_finding(docs: Sequence[Mapping[str, Any]], i: int, seq: Any) -> Finding:
    """What is wrong at position ``i`` (where seq ``i + 1`` belongs) holding ``seq``."""
    expected = i + 1
    if type(seq) is not int:
        return Finding(ALTERED, f"the event at position {expected} has no valid seq ({seq!r})", expected)
    if i > 0 and seq == docs[i - 1].get("seq"):
        return Finding(DUPLICATED, f"seq {seq} appears twice", seq)
    later = {s for d in docs[i + 1 :] if type(s := d.get("seq")) is int}
    if seq > expected and expected not in later:
        return Finding(MISSING, f"seq {expected} is missing: seq {seq} follows seq {expected - 1}", expected)
    return Finding(REORDERED, f"seq {seq} stands where seq {expected} belongs", expected)


def verify(
    history: PlayHistory,
    anchors: Sequence[Anchor] = (),
    *,
    anchors_checked: bool = False,
    require_anchor: bool = False,
) -> Verdict:
    """The verdict on one play: the first break in its chain (by kind and seq), a cut tail, the
    projection's differing fields, and its anchors (``anchors_checked``: a public key was given,
    so a play no anchor covers to its end is ``unanchored``)."""
    docs = history.documents
    findings: list[Finding] = list(history.problems)
    hashes: list[str] = []  # hash of seq n at index n-1, as far as the chain holds
    previous = GENESIS_HASH
    chain_ok = not findings
    play_id, company_id = history.play_id, history.company_id
    after: str | None = None  # the type of the event before, when it is terminal
    for i, doc in enumerate(docs if chain_ok else ()):
        seq = doc.get("seq")
        if seq != i + 1:
            findings.append(_sequence_finding(docs, i, seq))
            chain_ok = False
            break
        if doc.get("play_id") != play_id or doc.get("company_id") != company_id:
            findings.append(
                Finding(ALTERED, f"seq {seq} names play {doc.get('play_id')!r} of {doc.get('company_id')!r}", seq)
            )
            chain_ok = False
            break
        version = doc.get("hash_version", 1)
        stored = doc.pop("hash", None)  # the document without its hash, put back below (not copied: speed)
        try:
            expected = chain_hash(version, previous, doc)
        except UnknownHashVersion as exc:
            findings.append(Finding(UNKNOWN_HASH_VERSION, f"seq {seq}: {exc}", seq))
            chain_ok = False
            break
        except (NotCanonical, TypeError, ValueError) as exc:
            findings.append(Finding(ALTERED, f"seq {seq} cannot be hashed: {exc}", seq))
            chain_ok = False
            break
        finally:
            if stored is not None:
                doc["hash"] = stored
        if stored != expected:
            findings.append(
                Finding(ALTERED, f"seq {seq} ({doc.get('type')}): its content does not match its hash", seq)
            )
            chain_ok = False
            break
        if after is not None:
            findings.append(Finding(AFTER_TERMINAL, f"seq {seq} follows the terminal event {after}", seq))
            chain_ok = False
            break
        kind = doc.get("type")
        after = kind if type(kind) is str and kind in TERMINAL_EVENT_TYPES else None
        hashes.append(expected)
        previous = expected
    last_type = docs[-1].get("type") if docs else None
    status = _status_of(last_type if isinstance(last_type, str) else None)
    projection = history.projection
    if chain_ok and not docs:
        findings.append(Finding(MISSING, "the play has no events", 1))
        chain_ok = False
    if chain_ok and projection is not None and projection.finished and status == "running":
        findings.append(
            Finding(
                CUT_TAIL,
                f"the projection says {projection.status.value} at seq {projection.seq} but the log ends at "
                f"seq {len(docs)} without a terminal event",
                len(docs) + 1,
            )
        )
    if chain_ok and history.has_projection:
        findings.extend(_projection_findings(history, docs))
    anchored: bool | None = None
    unanchored = False
    if anchors_checked:
        anchor_findings, anchored = _anchor_findings(anchors, hashes, chain_ok, len(docs))
        findings.extend(anchor_findings)
        if chain_ok and not anchored and not anchor_findings:
            unanchored = True
            if require_anchor:
                covered = max((a.last_seq for a in anchors), default=0)
                findings.append(
                    Finding(
                        UNANCHORED,
                        f"no signed checkpoint covers seq {covered + 1} to {len(docs)} (--require-anchor)",
                        covered + 1,
                    )
                )
    flow_id = docs[0].get("flow_id") if docs else (projection.flow.name if projection is not None else None)
    return Verdict(
        play_id=history.play_id,
        company_id=history.company_id,
        flow_id=flow_id if isinstance(flow_id, str) else None,
        status=status,
        events=len(docs),
        last_seq=len(hashes),
        head_hash=hashes[-1] if hashes else None,
        anchored=anchored,
        findings=findings,
        unanchored=unanchored,
    )


def _anchor_findings(
    anchors: Sequence[Anchor], hashes: Sequence[str], chain_ok: bool, length: int
) -> tuple[list[Finding], bool]:
    """Each anchor against the chain: the first one it contradicts, and whether the chain's
    head is anchored."""
    for anchor in sorted(anchors, key=lambda a: a.last_seq):
        if anchor.last_seq <= len(hashes):
            if hashes[anchor.last_seq - 1] != anchor.head_hash:
                return [
                    Finding(
                        REWRITTEN,
                        f"seq {anchor.last_seq} has hash {hashes[anchor.last_seq - 1][:16]}… but {anchor.source} "
                        f"signed {anchor.head_hash[:16]}…: the history up to it was rewritten",
                        anchor.last_seq,
                    )
                ], False
        elif chain_ok:  # the chain holds but stops before the anchored head
            return [
                Finding(
                    CUT_TAIL,
                    f"the log ends at seq {length} but {anchor.source} signed seq {anchor.last_seq}",
                    length + 1,
                )
            ], False
    head = max((a.last_seq for a in anchors), default=0)
    return [], chain_ok and head == length and length > 0


def _projection_findings(history: PlayHistory, docs: Sequence[dict[str, Any]]) -> list[Finding]:
    try:
        events = [event_adapter.validate_python(d) for d in docs]
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        return [Finding(INVALID, f"an event cannot be read: {problem['msg']} at {problem['loc']}")]
    from flow8_streams.engine import fold

    try:
        folded = fold(events)
    except EngineError as exc:
        return [Finding(INVALID, f"the events do not fold into a play: {exc}")]
    projected = history.projection
    if projected is None:
        return [Finding(PROJECTION, "the projection has no row for this play", field="(row)")]
    assert folded is not None
    return [
        Finding(PROJECTION, f"the projection's {name} differs from the fold of the events", field=name)
        for name in _differing_fields(folded.model_dump(mode="json"), projected.model_dump(mode="json"))
    ]


def _differing_fields(folded: Mapping[str, Any], projected: Mapping[str, Any], prefix: str = "") -> list[str]:
    names: list[str] = []
    for key in sorted(set(folded) | set(projected)):
        a, b = folded.get(key), projected.get(key)
        if a == b:
            continue
        if key == "flowlets" and isinstance(a, dict) and isinstance(b, dict) and not prefix:
            for name in sorted(set(a) | set(b)):
                fa, fb = a.get(name), b.get(name)
                if isinstance(fa, dict) and isinstance(fb, dict):
                    names.extend(_differing_fields(fa, fb, f"flowlets.{name}."))
                elif fa != fb:
                    names.append(f"flowlets.{name}")
            continue
        names.append(prefix + key)
    return names


@dataclass(slots=True)
class Summary:
    plays: int = 0
    events: int = 0
    ok: int = 0
    with_findings: int = 0
    unanchored: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    checkpoints: int = 0
    findings: list[Finding] = field(default_factory=list)  # not of one play: checkpoints, absent plays
    skipped: Counter[str] = field(default_factory=Counter)  # left out, not findings: why -> how many
    sources: dict[str, Any] | None = None  # an audit across archives and live data: what each held

    def add(self, verdict: Verdict) -> None:
        self.plays += 1
        self.events += verdict.events
        self.unanchored += verdict.unanchored
        if verdict.ok:
            self.ok += 1
        else:
            self.with_findings += 1
        self.by_kind.update(f.kind for f in verdict.findings)

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.findings.append(finding)
            self.by_kind[finding.kind] += 1

    @property
    def clean(self) -> bool:
        return self.with_findings == 0 and not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": True,
            "plays": self.plays,
            "events": self.events,
            "ok": self.ok,
            "with_findings": self.with_findings,
            "unanchored": self.unanchored,
            "checkpoints": self.checkpoints,
            "findings_by_kind": dict(sorted(self.by_kind.items())),
            "findings": [f.as_json() for f in self.findings],
            "skipped": dict(sorted(self.skipped.items())),
            "verdict": "ok" if self.clean else "findings",
            **({"sources": self.sources} if self.sources is not None else {}),
        }
