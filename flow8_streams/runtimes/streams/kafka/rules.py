"""The rules the Kafka overrides keep, as pure functions (tested without a broker)."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from enum import Enum
from typing import TypeVar

T = TypeVar("T")  # a topic partition
R = TypeVar("R")  # a record

# TxnOffsetCommit error codes that say this member's generation is over (KIP-447): the
# offsets were read by a consumer that no longer owns their partitions.
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
REBALANCE_IN_PROGRESS = 27
FENCED_INSTANCE_ID = 82
GROUP_FENCING = frozenset({ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID})
# ... and those that say another producer took the transactional id
INVALID_PRODUCER_EPOCH = 47
PRODUCER_FENCED = 90
PRODUCER_FENCING = frozenset({INVALID_PRODUCER_EPOCH, PRODUCER_FENCED})


class Refusal(Enum):
    GROUP_FENCED = "group_fenced"  # abort the transaction, drop the lost partitions' state, rejoin
    PRODUCER_FENCED = "producer_fenced"  # the producer is dead: a new one must be made


def offset_commit_refusal(errors: Iterable[tuple[str, Iterable[tuple[int, int]]]]) -> Refusal | None:
    """What a TxnOffsetCommit response's ``(topic, [(partition, error code)])`` says about
    fencing: the producer's fencing first (nothing of it may go on), then the group's; None
    when neither (other errors are aiokafka's to retry or raise)."""
    codes = {code for _, partitions in errors for _, code in partitions}
    if codes & PRODUCER_FENCING:
        return Refusal.PRODUCER_FENCED
    if codes & GROUP_FENCING:
        return Refusal.GROUP_FENCED
    return None


def in_generation(generation_id: int, member_id: str) -> bool:
    """Whether a consumer's group metadata names a generation. aiokafka resets it to -1 and
    "" when it leaves or loses the group; the coordinator accepts transactional offsets
    without a generation and member id from anyone (for v0 clients): they must not be sent."""
    return generation_id >= 0 and bool(member_id)


# ------------------------------------------------------------------ the consumer's rules

COMMIT_SHARE = 0.25  # of a worker's time at most spent committing, under load


def commit_wait(interval: float, linger: float, took: float) -> float:
    """How long a commit waits after the first record done since the last one: ``linger``,
    grown under load to three times the last commit's duration (``COMMIT_SHARE`` of the
    time at most goes to committing), never past ``interval``."""
    return min(interval, max(linger, took * (1 / COMMIT_SHARE - 1)))


def hold_back(acked: list[int], in_flight: list[int]) -> tuple[list[int], list[int]]:
    """``acked`` split into the offsets faust may commit through and those held back: an
    acked offset above the lowest offset still in flight waits until that one is acked
    (a commit past it would lose it to a crash)."""
    if not in_flight or not acked:
        return acked, []
    lowest = min(in_flight)
    return [o for o in acked if o < lowest], sorted(o for o in acked if o > lowest)


def gap_before(offset_from: int, offset_to: int) -> tuple[int, int] | None:
    """The offsets that count as acked when the record at ``offset_to`` follows a hole from
    ``offset_from`` (transaction markers, aborted records): the hole, never that record."""
    if offset_from < offset_to:
        return offset_from, offset_to - 1
    return None


def unless_sought(epochs: Mapping[T, int], tp: T, epoch: int, batch: Iterable[R]) -> Iterator[R]:
    """The records of a batch fetched at ``epoch`` of ``tp``, until ``tp`` is sought again:
    what follows a seek is read again from the new position."""
    for record in batch:
        if epochs.get(tp, 0) != epoch:
            return
        yield record


def never_committed(committed: Mapping[T, int | None], is_changelog: Callable[[T], bool]) -> list[T]:
    """Input partitions without a committed offset: they are read from their beginning."""
    return [tp for tp, offset in committed.items() if not offset and not is_changelog(tp)]


def reseeks(
    resumed: Iterable[T],
    paused: Container[T],
    read_offset: Mapping[T, int | None],
    is_changelog: Callable[[T], bool],
) -> list[tuple[T, int]]:
    """Where each resumed input partition is read again from: its last record delivered
    (faust dropped what was fetched while it was paused)."""
    found = []
    for tp in resumed:
        offset = read_offset.get(tp)
        if tp in paused and offset is not None and not is_changelog(tp):
            found.append((tp, offset))
    return found


def of_this_generation(read_in: int | None, current: int) -> bool:
    """Whether a record read in generation ``read_in`` (None: not known, taken as current)
    is still this member's to act on and to ack. After a rebalance every assigned partition
    is read again from its committed offset (faust seeks there once its tables recover), so
    a record read in an earlier generation comes again: what was decided from it is not
    published, and its ack does not count (an ack of it would let a commit step over the
    records before it, read again but not yet done)."""
    return read_in is None or read_in == current


def ack_counts(taken: bool, read_in: int | None, current: int) -> bool:
    """Whether an ack lets commits pass its record: only for a record a stream took to work on
    (faust acks one it skips too: read while the flow was stopped, or in an earlier
    generation, never processed) and read in this generation (``of_this_generation``)."""
    return taken and of_this_generation(read_in, current)
