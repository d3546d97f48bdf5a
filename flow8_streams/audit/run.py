"""An audit run: each play of a source against the signed anchors, and a summary; an export."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, cast

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.sources import ARCHIVE_FORMAT, ARCHIVE_VERSION, Filter
from flow8_streams.audit.verify import MISSING, Finding, PlayHistory, Summary, Verdict, verify


class Audit:
    """Verdicts play by play (``play``), then the run's summary (``finish``)."""

    def __init__(
        self,
        flt: Filter,
        checkpoints: Iterable[cp.SignedCheckpoint | Finding] = (),
        *,
        public_key: Ed25519PublicKey | None = None,
        require_anchor: bool = False,
    ) -> None:
        self.filter = flt
        self.require_anchor = require_anchor
        self.summary = Summary()
        self.anchors = cp.check(checkpoints, public_key, flt.company) if public_key is not None else None
        if self.anchors is not None:
            self.summary.checkpoints = self.anchors.checkpoints
            self.summary.extend(self.anchors.findings)
        self._seen: set[str] = set()

    def play(self, history: PlayHistory) -> Verdict:
        self._seen.add(history.play_id)
        anchors = self.anchors.heads.get(history.play_id, []) if self.anchors is not None else []
        verdict = verify(history, anchors, anchors_checked=self.anchors is not None, require_anchor=self.require_anchor)
        self.summary.add(verdict)
        return verdict

    def finish(self, problems: Iterable[Finding] = ()) -> Summary:
        """The summary, with what the source skipped and every anchored play the log lacks (when
        no filter but company and play could have left it out)."""
        self.summary.extend(problems)
        flt = self.filter
        if self.anchors is not None and flt.flow is None and flt.status is None and flt.since is None:
            for play_id, company in sorted(self.anchors.companies.items()):
                if play_id not in self._seen and flt.until is None and flt.play in (None, play_id):
                    self.summary.extend(
                        [Finding(MISSING, f"play {play_id} of {company} is named by a signed checkpoint but absent", 1)]
                    )
        return self.summary


class ArchiveWriter:
    """``company``'s events and checkpoints as gzipped JSONL (a header, the checkpoints, then each
    play's events together, ``add``ed one play at a time). Written beside ``out`` and renamed onto
    it when the ``with`` block ends without an error, so ``out`` is whole or untouched."""

    def __init__(
        self,
        out: Path,
        checkpoints: Iterable[cp.SignedCheckpoint | Finding],
        *,
        company: str,
        public_key: Ed25519PublicKey | None,
        header: Mapping[str, object] | None = None,
    ) -> None:
        self.out = out
        self.extra_header = dict(header or {})  # more header fields (a retention archive names its manifest)
        self.written: list[cp.SignedCheckpoint] = []  # the checkpoints written
        self.company = company
        self.public_key = public_key
        self.checkpoints = checkpoints
        self.plays = self.events = self.signed = 0
        self._tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        self._file: IO[bytes] | None = None

    def __enter__(self) -> ArchiveWriter:
        header = {
            "format": ARCHIVE_FORMAT,
            "version": ARCHIVE_VERSION,
            "company_id": self.company,
            "exported_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "public_key": cp.public_pem(self.public_key) if self.public_key is not None else None,
            "hashing": "schemas/hashing.md",
            **self.extra_header,
        }
        self._file = f = cast(IO[bytes], gzip.open(self._tmp, "wb", compresslevel=6))
        try:
            f.write(orjson.dumps({"header": header}) + b"\n")
            written: set[tuple[object, object, str]] = set()  # the db's and the JSONL file's copies are one
            for c in self.checkpoints:
                if isinstance(c, cp.SignedCheckpoint) and c.body.get("company_id") == self.company:
                    key = (c.body.get("company_id"), c.body.get("number"), c.signature)
                    if key not in written:
                        written.add(key)
                        f.write(c.line())
                        self.written.append(c)
                        self.signed += 1
        except BaseException:
            self._discard()
            raise
        return self

    def add(self, history: PlayHistory) -> None:
        assert self._file is not None, "add() inside the with block"
        self.plays += 1
        self._file.writelines(orjson.dumps({"event": doc}) + b"\n" for doc in history.documents)
        self.events += len(history.documents)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self._discard()
            return
        assert self._file is not None
        try:
            self._file.close()
            os.replace(self._tmp, self.out)
        finally:
            self._tmp.unlink(missing_ok=True)

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


def export(
    out: Path,
    histories: Iterable[PlayHistory],
    checkpoints: Iterable[cp.SignedCheckpoint | Finding],
    *,
    company: str,
    public_key: Ed25519PublicKey | None,
) -> tuple[int, int, int]:
    """``histories`` and ``checkpoints`` of ``company`` written by an ``ArchiveWriter`` to ``out``;
    returns (plays, events, checkpoints)."""
    with ArchiveWriter(out, checkpoints, company=company, public_key=public_key) as writer:
        for history in histories:
            writer.add(history)
    return writer.plays, writer.events, writer.signed
