"""Signed checkpoints: chain heads signed with an Ed25519 key the store never holds.

A writer (the embedded runtime) notes the head of each play it writes events for; every so
often it writes, per company, one checkpoint naming the heads noted since the last one, signed,
into the db's ``audit_checkpoints`` table and as a line of ``DB.checkpoints.jsonl``. The format
is ``schemas/hashing.md``'s.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flow8_streams.audit.verify import CHECKPOINT_FORGED, Anchor, Finding
from flow8_streams.domain.canonical import NotCanonical, jcs
from flow8_streams.domain.state import PlayState
from flow8_streams.errors import InvalidInput, StoreUnavailable

PRIVATE_NAME, PUBLIC_NAME = "audit-signing.key", "audit-signing.pub"
FORMAT, VERSION = "flow8-checkpoint", 1
MAX_KEY_FILE_BYTES = 4096  # a PEM Ed25519 key is under 200 bytes
MAX_CHECKPOINT_LINE_BYTES = 64 * 1024 * 1024

TABLE = """CREATE TABLE IF NOT EXISTS audit_checkpoints (
    company_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    at TEXT NOT NULL,
    body BLOB NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (company_id, number)
)"""


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of sha256 over the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(out: Path) -> tuple[Path, Path, str]:
    """Write a new key pair into ``out``: the private key (PKCS#8 PEM, mode 0600, made with
    O_EXCL so an existing key is never replaced) and the public key. Returns both paths and the
    key id."""
    private_path, public_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise InvalidInput(f"{path} already exists: flow8 audit keygen never replaces a key; choose another --out")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key()
    public_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path, key_id(public)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {path} is not a file")
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise InvalidInput(f"{what} {path} is {info.st_size} bytes: not a PEM Ed25519 key")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``: a PEM Ed25519 private key readable by its owner only."""
    what = "the audit signing key (FLOW8_AUDIT_SIGNING_KEY)"
    data = _read_key_file(path, what)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InvalidInput(f"{what} {path} is readable by others (mode {mode:04o}): chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{what} {path} is not an unencrypted PEM private key (make one: flow8 audit keygen)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{what} {path} is not an Ed25519 key (make one: flow8 audit keygen)")
    return key


def load_public_key(path: Path, what: str = "--public-key") -> Ed25519PublicKey:
    data = _read_key_file(path, what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"{what} {path} is not a PEM public key (flow8 audit keygen writes {PUBLIC_NAME})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{what} {path} is not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def jsonl_path(db: Path) -> Path:
    return db.with_name(db.name + ".checkpoints.jsonl")


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    body: dict[str, Any]
    signature: str  # base64 of the 64-byte Ed25519 signature over jcs(body)

    def line(self) -> bytes:
        return orjson.dumps({"checkpoint": self.body, "signature": self.signature}) + b"\n"


def body_hash(body: dict[str, Any]) -> str:
    """What the next checkpoint of the company names as ``previous``."""
    return hashlib.sha256(jcs(body)).hexdigest()


class Signer:
    """Signs checkpoints with the writer's key: ``schemas/hashing.md``'s format, each linked to the
    company's checkpoint before it by ``number`` and ``previous``."""

    def __init__(self, key: Ed25519PrivateKey, writer: str) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())
        self.writer = writer

    def sign(
        self, company: str, heads: list[dict[str, Any]], now: datetime, before: dict[str, Any] | None
    ) -> SignedCheckpoint:
        """The checkpoint after ``before`` (the company's last one's body, None for its first)."""
        body = {
            "format": FORMAT,
            "version": VERSION,
            "company_id": company,
            "number": 1 if before is None else int(before["number"]) + 1,
            "at": now.isoformat().replace("+00:00", "Z"),
            "writer": self.writer,
            "key_id": self.key_id,
            "previous": None if before is None else body_hash(before),
            "heads": heads,
        }
        return SignedCheckpoint(body, base64.b64encode(self._key.sign(jcs(body))).decode())


class Heads:
    """The chain head of each play written since the last checkpoint, by company."""

    def __init__(self) -> None:
        self._heads: dict[str, tuple[str, int, str]] = {}  # play_id -> (company, last_seq, head_hash)

    def note(self, play_id: str, company: str, seq: int, head: str) -> None:
        known = self._heads.get(play_id)
        if known is None or seq > known[1]:
            self._heads[play_id] = (company, seq, head)

    def __len__(self) -> int:
        return len(self._heads)

    def by_company(self) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for play_id, (company, seq, head) in sorted(self._heads.items()):
            grouped.setdefault(company, []).append(
                {"play_id": play_id, "company_id": company, "last_seq": seq, "head_hash": head}
            )
        return grouped

    def forget(self, signed: dict[str, list[dict[str, Any]]]) -> None:
        """Drop the heads just signed, unless a later one was noted meanwhile."""
        for heads in signed.values():
            for h in heads:
                known = self._heads.get(h["play_id"])
                if known is not None and known[1] == h["last_seq"]:
                    del self._heads[h["play_id"]]


class Checkpointer:
    """Signs the chain heads a db's writer notes, per company, into the db and a JSONL file."""

    def __init__(self, db: Any, key: Ed25519PrivateKey, *, writer: str, jsonl: Path) -> None:
        self._db = db  # a sqlite3.Connection in autocommit mode (SqliteStore.db)
        self._signer = Signer(key, writer)
        self._jsonl = jsonl
        self._heads = Heads()
        self._db.execute(TABLE)

    def note(self, states: Iterable[PlayState]) -> None:
        for s in states:
            self._heads.note(s.play_id, s.company_id, s.seq, s.last_hash)

    @property
    def pending(self) -> int:
        return len(self._heads)

    def flush(self, now: datetime) -> list[SignedCheckpoint]:
        """One signed checkpoint per company with heads noted since the last flush
        (``StoreUnavailable`` if the db or the file cannot take it: the heads stay noted)."""
        if not self._heads:
            return []
        try:
            return self._flush(now)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"writing a signed checkpoint to {self._jsonl} and its db: {exc}") from exc

    def _flush(self, now: datetime) -> list[SignedCheckpoint]:
        grouped = self._heads.by_company()
        written: list[SignedCheckpoint] = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for company, heads in grouped.items():
                row = self._db.execute(
                    "SELECT body FROM audit_checkpoints WHERE company_id = ? ORDER BY number DESC LIMIT 1",
                    (company,),
                ).fetchone()
                signed = self._signer.sign(company, heads, now, None if row is None else orjson.loads(row[0]))
                body = signed.body
                self._db.execute(
                    "INSERT INTO audit_checkpoints (company_id, number, at, body, signature) VALUES (?,?,?,?,?)",
                    (company, body["number"], body["at"], orjson.dumps(body), signed.signature),
                )
                written.append(signed)
            fd = os.open(self._jsonl, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(b"".join(c.line() for c in written))
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._heads.forget(grouped)
        return written


# ---------------------------------------------------------------- reading and checking


def parse_line(line: bytes, where: str) -> SignedCheckpoint | Finding:
    """A checkpoint line of a JSONL file or an archive; a ``Finding`` if it is not one."""
    try:
        record = orjson.loads(line)
        body, signature = record["checkpoint"], record["signature"]
        if not isinstance(body, dict) or not isinstance(signature, str):
            raise TypeError("checkpoint must be an object and signature a string")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return Finding(CHECKPOINT_FORGED, f"{where}: not a checkpoint ({exc})")
    return SignedCheckpoint(body, signature)


def read_db(connection: Any) -> Iterator[SignedCheckpoint | Finding]:
    """The checkpoints of a db's ``audit_checkpoints`` table (none if it has no such table)."""
    try:
        rows = connection.execute("SELECT company_id, number, body, signature FROM audit_checkpoints ORDER BY rowid")
    except Exception as exc:  # sqlite3.OperationalError: no such table (never signed)
        if "no such table" in str(exc):
            return
        raise
    for company, number, body, signature in rows:
        where = f"checkpoint {number} of {company!r} in the db"
        if len(body) > MAX_CHECKPOINT_LINE_BYTES:
            yield Finding(CHECKPOINT_FORGED, f"{where}: {len(body)} bytes, not a checkpoint")
            continue
        try:
            checkpoint = orjson.loads(body)
        except orjson.JSONDecodeError:
            yield Finding(CHECKPOINT_FORGED, f"{where} is not JSON")
            continue
        if not isinstance(checkpoint, dict) or not isinstance(signature, str):
            yield Finding(CHECKPOINT_FORGED, f"{where} is not a signed checkpoint")
            continue
        yield SignedCheckpoint(checkpoint, signature)


def read_jsonl(path: Path) -> Iterator[SignedCheckpoint | Finding]:
    """The checkpoints of a JSONL file, each line read up to ``MAX_CHECKPOINT_LINE_BYTES``."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"checkpoints file {path} cannot be read: {exc.strerror}") from None
    with f:
        n = 0
        while line := f.readline(MAX_CHECKPOINT_LINE_BYTES + 1):
            n += 1
            if len(line) > MAX_CHECKPOINT_LINE_BYTES:
                yield Finding(CHECKPOINT_FORGED, f"{path}:{n}: a line over {MAX_CHECKPOINT_LINE_BYTES} bytes: skipped")
                while line and not line.endswith(b"\n"):
                    line = f.readline(MAX_CHECKPOINT_LINE_BYTES)
            elif line.strip():
                yield parse_line(line, f"{path}:{n}")


@dataclass(slots=True)
class Anchors:
    """What the checkpoints signed by one key say: heads per play, and what did not verify."""

    heads: dict[str, list[Anchor]]
    companies: dict[str, str]  # play_id -> company, for anchored plays the log may have lost
    findings: list[Finding]
    checkpoints: int


def check(checkpoints: Iterable[SignedCheckpoint | Finding], public: Ed25519PublicKey, company: str | None) -> Anchors:
    """Verify each checkpoint's signature and its link to the one before it (per company);
    collect the heads of ``company``'s plays (every company's with None)."""
    want = key_id(public)
    seen: dict[tuple[str, int], SignedCheckpoint] = {}
    findings: list[Finding] = []
    for item in checkpoints:
        if isinstance(item, Finding):
            findings.append(item)
            continue
        c = item.body
        who = f"checkpoint {c.get('number')!r} of {c.get('company_id')!r}"
        if company is not None and c.get("company_id") != company:
            continue
        try:
            public.verify(base64.b64decode(item.signature, validate=True), jcs(c))
        except (InvalidSignature, ValueError, NotCanonical):
            signer = c.get("key_id")
            hint = f" (it names key {signer}, yours is {want})" if signer != want else ""
            findings.append(Finding(CHECKPOINT_FORGED, f"{who}: its signature does not verify{hint}"))
            continue
        if c.get("format") != FORMAT or c.get("version") != VERSION:
            findings.append(
                Finding(CHECKPOINT_FORGED, f"{who}: unknown format {c.get('format')!r} {c.get('version')!r}")
            )
            continue
        seen.setdefault((str(c["company_id"]), int(c["number"])), item)
    heads: dict[str, list[Anchor]] = {}
    companies: dict[str, str] = {}
    previous: dict[str, tuple[int, str]] = {}
    for (owner, number), item in sorted(seen.items()):
        c = item.body
        before = previous.get(owner)
        if before is not None and (before[0] != number - 1 or c.get("previous") != before[1]):
            findings.append(
                Finding(CHECKPOINT_FORGED, f"checkpoint {number} of {owner!r} does not follow checkpoint {before[0]}")
            )
        previous[owner] = (number, body_hash(c))
        source = f"checkpoint {number} of {owner} ({c.get('at')})"
        for head in c.get("heads", []):
            play_id = head["play_id"]
            heads.setdefault(play_id, []).append(Anchor(int(head["last_seq"]), str(head["head_hash"]), source))
            companies[play_id] = owner
    return Anchors(heads, companies, findings, len(seen))
