"""One audit over live data and archives: the chain continuous across them.

Retention moves finished plays from the live store to archives, so a signed checkpoint may name
a play that only an archive holds, and a play archived before a crash stopped its deletion is in
both. ``Across`` reads the live source first, then each archive: the first copy of a play is
audited; a later copy must be identical where the two overlap (else a ``diverged`` finding naming
the first seq that differs), and is then not audited twice. Each archive is held against its
manifest when it has one (``retention.manifest``): a difference is a ``manifest`` finding.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.run import Audit
from flow8_streams.audit.sources import ArchiveSource, Filter
from flow8_streams.audit.verify import Finding, PlayHistory, Summary, Verdict, verify

DIVERGED = "diverged"  # two copies of a play (live and archived, or two archives) differ


def _digests(history: PlayHistory) -> bytes:
    """8 bytes of each event's sha256 (over its sorted-key JSON), one after the other."""
    return b"".join(
        hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).digest()[:8] for doc in history.documents
    )


@dataclass(slots=True)
class _Copy:
    where: str
    digests: bytes
    last_seq: int
    head_hash: str | None


@dataclass(slots=True)
class Copies:
    """The first copy of each play seen, to hold later copies against."""

    first: dict[str, _Copy] = field(default_factory=dict)
    identical: int = 0  # later copies identical to the first where they overlap

    def note(self, history: PlayHistory, where: str, verdict: Verdict) -> None:
        self.first[history.play_id] = _Copy(where, _digests(history), verdict.last_seq, verdict.head_hash)

    def compare(self, history: PlayHistory, where: str) -> Finding | None:
        """None when ``history`` is identical to the first copy where they overlap."""
        known = self.first[history.play_id]
        mine = _digests(history)
        overlap = min(len(mine), len(known.digests)) // 8
        for i in range(overlap):
            if mine[i * 8 : i * 8 + 8] != known.digests[i * 8 : i * 8 + 8]:
                return Finding(
                    DIVERGED,
                    f"play {history.play_id}: its copy in {where} differs from the one in {known.where} "
                    f"from seq {i + 1}",
                    i + 1,
                )
        self.identical += 1
        return None


@dataclass(slots=True)
class ArchiveRead:
    """One archive given to the audit: its source, and what it held (for its manifest)."""

    path: Path
    source: ArchiveSource
    checkpoints: list[cp.SignedCheckpoint | Finding]
    heads: dict[str, tuple[int, str | None, int]] = field(default_factory=dict)


class Across:
    """An audit of one live source (or none) and ``archives``, in that order."""

    def __init__(
        self,
        flt: Filter,
        archives: Sequence[Path],
        live_checkpoints: Iterable[cp.SignedCheckpoint | Finding] = (),
        *,
        live_label: str | None,
        public_key: Ed25519PublicKey | None = None,
        require_anchor: bool = False,
    ) -> None:
        self.filter = flt
        self.live_label = live_label
        self.archives = []
        for path in archives:
            source = ArchiveSource(path)
            self.archives.append(ArchiveRead(path, source, list(source.checkpoints())))
        signed = [*live_checkpoints, *(c for a in self.archives for c in a.checkpoints)]
        self.audit = Audit(flt, signed, public_key=public_key, require_anchor=require_anchor)
        self.copies = Copies()
        self.in_live = 0
        self.only_archived = 0
        self.problems: list[Finding] = []

    def _one(self, history: PlayHistory, where: str, on_verdict: Callable[[Verdict], None]) -> Verdict | None:
        if history.play_id in self.copies.first:
            diverged = self.copies.compare(history, where)
            if diverged is not None:
                self.problems.append(diverged)
            return None
        verdict = self.audit.play(history)
        self.copies.note(history, where, verdict)
        on_verdict(verdict)
        return verdict

    async def live(self, histories: AsyncIterator[PlayHistory], on_verdict: Callable[[Verdict], None]) -> None:
        async for history in histories:
            self.in_live += 1
            self._one(history, self.live_label or "live data", on_verdict)

    def archived(self, on_verdict: Callable[[Verdict], None]) -> None:
        from flow8_streams.retention import manifest as mf

        for read in self.archives:
            for history in read.source.histories(self.filter):
                known = history.play_id in self.copies.first
                verdict = self._one(history, read.path.name, on_verdict)
                if verdict is None:
                    verdict = verify(history)  # its head, for the manifest
                elif not known:
                    self.only_archived += 1
                read.heads[history.play_id] = (verdict.last_seq, verdict.head_hash, len(history.documents))
            self.problems.extend(read.source.problems)
            manifest_file = mf.manifest_path(read.path)
            named = read.source.header.get("retention")
            if manifest_file.is_file():
                signed = [c for c in read.checkpoints if isinstance(c, cp.SignedCheckpoint)]
                flt = self.filter
                whole = flt.play is None and flt.flow is None and flt.status is None and flt.since is None
                ours = flt.company in (None, read.source.header.get("company_id"))
                if whole and ours and flt.until is None:
                    self.problems.extend(mf.check(mf.read(manifest_file), read.path, mf.Seen(read.heads, signed)))
            elif isinstance(named, dict):
                self.problems.append(
                    Finding(mf.MANIFEST, f"{read.path.name}: its manifest {named.get('manifest')!r} is missing")
                )

    def finish(self, source_problems: Iterable[Finding] = ()) -> Summary:
        summary = self.audit.finish([*source_problems, *self.problems])
        if self.live_label is None and len(self.archives) == 1:
            return summary  # one archive alone: as before archives went with live data
        summary.sources = {
            "archives": len(self.archives),
            "live": self.live_label,
            "plays_live": self.in_live,
            "plays_only_archived": self.only_archived,
            "identical_copies": self.copies.identical,
        }
        return summary
