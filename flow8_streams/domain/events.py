"""The events of a play: the source of truth every projection is folded from.

Each event has the same envelope (ids, ``seq`` 1..n per play, ``at``, ``type``,
``schema_version``, ``hash_version``) and a typed ``payload``. ``hash`` chains the events of one
play: sha256 over the previous event's hash and this event's canonical content (``chain_hash``;
``schemas/hashing.md`` defines both versions with a worked example). The chain shows an edit or
a reordering inside a history; only an anchor kept outside the store (a signed checkpoint, a
play result) shows a recomputed chain or a cut tail (``flow8_streams.audit``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from flow8_streams.domain.canonical import NotCanonical, jcs
from flow8_streams.domain.flow import FlowDefinition

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
HASH_VERSION = 2  # what new events are hashed with; 1 where an event's content is not I-JSON
HASH_VERSIONS = (1, 2)


class UnknownHashVersion(ValueError):
    """An event hashed by a version of flow8 this one does not know."""


def canonical_bytes(hash_version: int, document: dict[str, Any]) -> bytes:
    """The bytes the hash of an event covers, from its JSON document without ``hash``.

    v1: ``json.dumps`` with sorted keys, compact, UTF-8, without ``hash_version``.
    v2: RFC 8785 (JCS) of the document, ``hash_version`` included (``NotCanonical`` if the
    document is not I-JSON)."""
    if hash_version == 2:
        return jcs(document)
    if hash_version == 1:
        body = {k: v for k, v in document.items() if k != "hash_version"}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    raise UnknownHashVersion(f"hash_version {hash_version!r} is not one of {HASH_VERSIONS}")


def chain_hash(hash_version: int, previous_hash: str, document: dict[str, Any]) -> str:
    """An event's ``hash`` given its predecessor's (``GENESIS_HASH`` for seq 1).

    v1: sha256(ASCII hex of the previous hash || canonical bytes).
    v2: sha256(the previous hash's 32 bytes || canonical bytes)."""
    content = canonical_bytes(hash_version, document)
    prefix = bytes.fromhex(previous_hash) if hash_version == 2 else previous_hash.encode()
    return hashlib.sha256(prefix + content).hexdigest()


_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_EVENT_NS = uuid.UUID("8f1c5a6e-2b0d-4f7e-9a51-f10c8e5d0e08")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlayStartedPayload(_Payload):
    flow: FlowDefinition
    input: Any = None


class FlowletScheduledPayload(_Payload):
    flowlet: str
    attempt: int
    module_ref: str
    input: Any = None
    timeout_ms: int
    deadline: datetime
    defer_after_ms: int | None = None


class FlowletDispatchedPayload(_Payload):
    flowlet: str
    attempt: int
    channel: str


class FlowletCompletedPayload(_Payload):
    flowlet: str
    attempt: int
    output: Any = None
    started_at: datetime
    ended_at: datetime


class FlowletFailedPayload(_Payload):
    flowlet: str
    attempt: int
    error: str
    retryable: bool = True
    started_at: datetime | None = None
    ended_at: datetime | None = None


class FlowletRetryScheduledPayload(_Payload):
    flowlet: str
    attempt: int = Field(description="The attempt that will run next.")
    backoff_ms: int
    due_at: datetime


class FlowletTimedOutPayload(_Payload):
    flowlet: str
    attempt: int
    timeout_ms: int


class FlowletSkippedPayload(_Payload):
    flowlet: str
    reason: str


class FlowletCancelledPayload(_Payload):
    flowlet: str
    attempt: int
    reason: str


class PlayCompletedPayload(_Payload):
    output: dict[str, Any]


class PlayFailedPayload(_Payload):
    error: str
    flowlet: str | None = None


class PlayCancelledPayload(_Payload):
    reason: str


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    play_id: str
    company_id: str
    flow_id: str
    flow_version: int
    seq: int = Field(ge=1)
    at: datetime
    schema_version: int = SCHEMA_VERSION
    hash_version: int = Field(
        default=1, ge=1, description="How `hash` is computed: 1 (absent) or 2 (RFC 8785); see schemas/hashing.md."
    )
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    payload: Any

    def document(self) -> dict[str, Any]:
        """The event as JSON, without ``hash``: what its hash covers."""
        return self.model_dump(mode="json", exclude={"hash"})

    def canonical(self) -> bytes:
        """The bytes the hash covers (``canonical_bytes`` of ``document``)."""
        return canonical_bytes(self.hash_version, self.document())

    def expected_hash(self, previous_hash: str) -> str:
        return chain_hash(self.hash_version, previous_hash, self.document())

    @classmethod
    def seal(cls, previous_hash: str, **envelope: Any) -> Self:
        """A new event of ``envelope`` (every field but ``type``, ``hash_version`` and ``hash``)
        hashed after ``previous_hash``: with ``HASH_VERSION``, or v1 when its content is not
        I-JSON (an integer past ±(2**53 - 1) in an output).

        The hash covers ``document()``, put together here from the envelope (plain values but
        ``at`` and the payload) without a draft event to dump: the engine seals every event it
        emits, and this is a third of its time. A test holds the two equal on every golden
        event. The event is then validated, which pydantic does quicker than ``model_construct``."""
        document = {
            **envelope,
            "at": _DATETIME.dump_python(envelope["at"], mode="json"),
            "type": cls.model_fields["type"].default,
            "payload": envelope["payload"].model_dump(mode="json"),
        }
        version = HASH_VERSION
        try:
            digest = chain_hash(version, previous_hash, {**document, "hash_version": version})
        except NotCanonical:
            version = 1
            digest = chain_hash(version, previous_hash, {**document, "hash_version": version})
        return cls.model_validate({**envelope, "hash_version": version, "hash": digest})


class PlayStarted(_Event):
    type: Literal["PlayStarted"] = "PlayStarted"
    payload: PlayStartedPayload


class FlowletScheduled(_Event):
    type: Literal["FlowletScheduled"] = "FlowletScheduled"
    payload: FlowletScheduledPayload


class FlowletDispatched(_Event):
    type: Literal["FlowletDispatched"] = "FlowletDispatched"
    payload: FlowletDispatchedPayload


class FlowletCompleted(_Event):
    type: Literal["FlowletCompleted"] = "FlowletCompleted"
    payload: FlowletCompletedPayload


class FlowletFailed(_Event):
    type: Literal["FlowletFailed"] = "FlowletFailed"
    payload: FlowletFailedPayload


class FlowletRetryScheduled(_Event):
    type: Literal["FlowletRetryScheduled"] = "FlowletRetryScheduled"
    payload: FlowletRetryScheduledPayload


class FlowletTimedOut(_Event):
    type: Literal["FlowletTimedOut"] = "FlowletTimedOut"
    payload: FlowletTimedOutPayload


class FlowletSkipped(_Event):
    type: Literal["FlowletSkipped"] = "FlowletSkipped"
    payload: FlowletSkippedPayload


class FlowletCancelled(_Event):
    type: Literal["FlowletCancelled"] = "FlowletCancelled"
    payload: FlowletCancelledPayload


class PlayCompleted(_Event):
    type: Literal["PlayCompleted"] = "PlayCompleted"
    payload: PlayCompletedPayload


class PlayFailed(_Event):
    type: Literal["PlayFailed"] = "PlayFailed"
    payload: PlayFailedPayload


class PlayCancelled(_Event):
    type: Literal["PlayCancelled"] = "PlayCancelled"
    payload: PlayCancelledPayload


Event = Annotated[
    PlayStarted
    | FlowletScheduled
    | FlowletDispatched
    | FlowletCompleted
    | FlowletFailed
    | FlowletRetryScheduled
    | FlowletTimedOut
    | FlowletSkipped
    | FlowletCancelled
    | PlayCompleted
    | PlayFailed
    | PlayCancelled,
    Field(discriminator="type"),
]
EVENT_TYPES: dict[str, type[_Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        PlayStarted,
        FlowletScheduled,
        FlowletDispatched,
        FlowletCompleted,
        FlowletFailed,
        FlowletRetryScheduled,
        FlowletTimedOut,
        FlowletSkipped,
        FlowletCancelled,
        PlayCompleted,
        PlayFailed,
        PlayCancelled,
    )
}
TERMINAL_EVENT_TYPES = frozenset({"PlayCompleted", "PlayFailed", "PlayCancelled"})
event_adapter: TypeAdapter[Event] = TypeAdapter(Event)
events_adapter: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


_EVENT_NS_BYTES = _EVENT_NS.bytes  # uuid5 would compute them again for each id


def event_id_for(play_id: str, seq: int) -> str:
    """Deterministic event id, so that replaying a decision yields identical events: what
    ``uuid.uuid5(_EVENT_NS, f"{play_id}/{seq}")`` gives."""
    digest = hashlib.sha1(_EVENT_NS_BYTES + f"{play_id}/{seq}".encode(), usedforsecurity=False).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def verify_chain(events: list[Event]) -> list[str]:
    """Problems with one play's history: gaps in ``seq``, or hashes that do not chain."""
    problems: list[str] = []
    previous = GENESIS_HASH
    for expected_seq, event in enumerate(events, start=1):
        if event.seq != expected_seq:
            problems.append(f"seq {event.seq} found where {expected_seq} was expected (history cut or reordered)")
            break
        try:
            expected = event.expected_hash(previous)
        except UnknownHashVersion as exc:
            problems.append(f"seq {event.seq} ({event.type}): {exc}")
            break
        if event.hash != expected:
            problems.append(f"seq {event.seq} ({event.type}): hash does not match its content (history altered)")
            break
        previous = event.hash
    return problems
