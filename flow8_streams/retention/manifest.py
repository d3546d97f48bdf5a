"""The manifest beside a retention archive: what the archive must hold, so that a reader can tell
a whole archive from one altered, cut or padded since it was written.

``X.jsonl.gz`` has ``X.manifest.json``: the archive's sha256 and size, its counts, the time range
of its plays, each play's chain head (last seq and hash) and the signed checkpoints it carries.
The archiver checks the archive against it before anything is deleted; ``flow8 audit verify
--archive`` checks it again, and any difference is a ``manifest`` finding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.verify import Finding
from flow8_streams.errors import InvalidInput

FORMAT, VERSION = "flow8-archive-manifest", 1
MANIFEST = "manifest"  # the finding's kind: the archive differs from its manifest
MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # a manifest larger than this is refused, not parsed
ARCHIVE_SUFFIX = ".jsonl.gz"
ABSENT = "absent"  # a head's ``log``: the play's events are not in the archive


def manifest_path(archive: Path) -> Path:
    """``X.jsonl.gz`` -> ``X.manifest.json`` (beside it)."""
    name = archive.name.removesuffix(ARCHIVE_SUFFIX).removesuffix(".jsonl")
    return archive.with_name(name + ".manifest.json")


def sha256_file(path: Path) -> tuple[str, int]:
    """The file's sha256 (hex) and size, read a bounded chunk at a time."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True, slots=True)
class Head:
    """One play as archived: its chain's head, and where the events in the archive came from
    (``log``: "archived", the store's own log; "kafka", the streams runtime's events topic), or
    that they are not in it ("absent": neither the store nor the run's log had them; the head is
    then the projection's)."""

    last_seq: int
    head_hash: str | None
    events: int
    status: str
    started_at: str | None
    ended_at: str | None
    log: str = "archived"

    def as_json(self) -> dict[str, Any]:
        return {
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "events": self.events,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "log": self.log,
        }


def build(
    *,
    company: str,
    archive: Path,
    heads: Mapping[str, Head],
    checkpoints: Iterable[cp.SignedCheckpoint],
    older_than: str,
    source: str,
    created_at: str,
) -> dict[str, Any]:
    sha256, size = sha256_file(archive)
    starts = [h.started_at for h in heads.values() if h.started_at]
    ends = [h.ended_at for h in heads.values() if h.ended_at]
    archived = [h for h in heads.values() if h.log != ABSENT]
    return {
        "format": FORMAT,
        "version": VERSION,
        "company_id": company,
        "archive": archive.name,
        "sha256": sha256,
        "bytes": size,
        "created_at": created_at,
        "source": source,
        "ended_before": older_than,
        "plays": len(archived),
        "events": sum(h.events for h in archived),
        "time_range": {"first_started_at": min(starts, default=None), "last_ended_at": max(ends, default=None)},
        "heads": {play_id: head.as_json() for play_id, head in sorted(heads.items())},
        "checkpoints": [_checkpoint_ref(c) for c in checkpoints],
    }


def _checkpoint_ref(c: cp.SignedCheckpoint) -> dict[str, Any]:
    return {
        "number": c.body.get("number"),
        "at": c.body.get("at"),
        "key_id": c.body.get("key_id"),
        "signature": c.signature,
    }


def write(path: Path, manifest: Mapping[str, Any]) -> None:
    """Written beside ``path`` and renamed onto it: whole or absent."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path) -> dict[str, Any]:
    """A manifest, bounded and checked for shape (``InvalidInput`` naming what is wrong)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"manifest {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"manifest {path}: over {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"manifest {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("heads"), dict):
        raise InvalidInput(f"manifest {path} is not a flow8 archive manifest")
    return doc


@dataclass(slots=True)
class Seen:
    """What a reader found in an archive, to hold against its manifest."""

    heads: dict[str, tuple[int, str | None, int]]  # play_id -> (last_seq, head_hash, events)
    checkpoints: list[cp.SignedCheckpoint]


def check(manifest: Mapping[str, Any], archive: Path, seen: Seen) -> list[Finding]:
    """Every way ``archive`` (as ``seen`` read it) differs from ``manifest``."""
    where = archive.name
    found: list[Finding] = []

    def differs(detail: str, seq: int | None = None) -> None:
        found.append(Finding(MANIFEST, f"{where}: {detail}", seq))

    sha256, size = sha256_file(archive)
    if manifest.get("archive") != archive.name:
        differs(f"the manifest is of {manifest.get('archive')!r}")
    if manifest.get("sha256") != sha256 or manifest.get("bytes") != size:
        differs(f"its sha256 is {sha256[:16]}… ({size} bytes), the manifest says {str(manifest.get('sha256'))[:16]}…")
    listed = {p: h for p, h in manifest["heads"].items() if isinstance(h, dict) and h.get("log") != ABSENT}
    for play_id, head in sorted(listed.items()):
        held = seen.heads.get(play_id)
        if held is None:
            differs(f"play {play_id} is listed by the manifest but absent from the archive")
        elif (held[0], held[1], held[2]) != (head.get("last_seq"), head.get("head_hash"), head.get("events")):
            differs(
                f"play {play_id} ends at seq {held[0]} ({held[2]} events), the manifest says seq "
                f"{head.get('last_seq')} ({head.get('events')} events) with another head",
                held[0],
            )
    for play_id in sorted(set(seen.heads) - set(listed)):
        differs(f"play {play_id} is in the archive but not in its manifest")
    if manifest.get("plays") != len(seen.heads) or manifest.get("events") != sum(h[2] for h in seen.heads.values()):
        differs(
            f"it holds {len(seen.heads)} plays and {sum(h[2] for h in seen.heads.values())} events, the manifest says "
            f"{manifest.get('plays')} and {manifest.get('events')}"
        )
    refs = manifest.get("checkpoints")
    listed_signatures = (
        sorted(str(r.get("signature")) for r in refs if isinstance(r, dict)) if isinstance(refs, list) else None
    )
    if listed_signatures != sorted(c.signature for c in seen.checkpoints):
        differs("its signed checkpoints are not those its manifest lists")
    return found
