"""The rules the Kafka overrides keep, as pure functions (tested without a broker)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

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
