"""The rules of ``runtimes/streams/kafka`` as pure functions: no broker."""

from __future__ import annotations

from io import BytesIO

import pytest

from flow8_streams.runtimes.streams.kafka.producer import GroupMember
from flow8_streams.runtimes.streams.kafka.protocol import (
    GroupTxnOffsetCommitRequest,
    TxnOffsetCommitRequest_v3,
    TxnOffsetCommitResponse_v3,
)
from flow8_streams.runtimes.streams.kafka.rules import Refusal, in_generation, offset_commit_refusal


@pytest.mark.parametrize(
    ("codes", "refusal"),
    [
        ([0, 0], None),
        ([0, 22], Refusal.GROUP_FENCED),  # ILLEGAL_GENERATION
        ([25], Refusal.GROUP_FENCED),  # UNKNOWN_MEMBER_ID
        ([82], Refusal.GROUP_FENCED),  # FENCED_INSTANCE_ID
        ([27], Refusal.GROUP_FENCED),  # REBALANCE_IN_PROGRESS
        ([90], Refusal.PRODUCER_FENCED),  # PRODUCER_FENCED
        ([22, 47], Refusal.PRODUCER_FENCED),  # INVALID_PRODUCER_EPOCH wins: the producer is dead
        ([14, 15], None),  # coordinator loading / not available: aiokafka retries
    ],
)
def test_offset_commit_refusal(codes: list[int], refusal: Refusal | None) -> None:
    errors = [("t", [(p, code) for p, code in enumerate(codes)])]
    assert offset_commit_refusal(errors) is refusal


def test_txn_offset_commit_v3_carries_the_group_metadata() -> None:
    """The request is v3 whatever newer the broker serves, and encodes generation, member
    id and a null group instance id in Kafka's flexible format (decoded back here)."""
    request = GroupTxnOffsetCommitRequest("tx", "g", 7, 2, 5, "m-1", None, [("in", [(3, 42, "")])])
    struct = request.prepare({28: (0, 6)})
    assert isinstance(struct, TxnOffsetCommitRequest_v3) and struct.FLEXIBLE_VERSION
    decoded = TxnOffsetCommitRequest_v3.SCHEMA.decode(BytesIO(struct.encode()))
    assert decoded == ("tx", "g", 7, 2, 5, "m-1", None, [("in", [(3, 42, -1, "", {})], {})], {})


def test_txn_offset_commit_v3_is_required() -> None:
    """A broker without v3 cannot fence by generation: no silent fallback to v0."""
    request = GroupTxnOffsetCommitRequest("tx", "g", 7, 2, 5, "m-1", None, [])
    with pytest.raises(NotImplementedError):
        request.prepare({28: (0, 2)})


def test_txn_offset_commit_v3_response_decodes() -> None:
    body = b"".join(
        [
            (0).to_bytes(4, "big"),  # throttle_time_ms
            bytes([2, 3]) + b"in",  # one topic, "in"
            bytes([2]) + (3).to_bytes(4, "big") + (22).to_bytes(2, "big") + bytes([0]),  # partition 3: 22
            bytes([0, 0]),  # topic's and response's tagged fields
        ]
    )
    response = TxnOffsetCommitResponse_v3.decode(BytesIO(body))
    assert response.topics == [("in", [(3, 22, {})], {})]


def test_group_member_is_its_group_id() -> None:
    member = GroupMember("flow8", 3, "m-1")
    assert member == "flow8" and str(member) == "flow8"
    assert (member.generation_id, member.member_id, member.group_instance_id) == (3, "m-1", None)


@pytest.mark.parametrize(
    ("generation", "member", "fenceable"),
    [(3, "m-1", True), (0, "m-1", True), (-1, "", False), (-1, "m-1", False), (2, "", False)],
)
def test_offsets_are_sent_only_with_a_generation(generation: int, member: str, fenceable: bool) -> None:
    assert in_generation(generation, member) is fenceable
