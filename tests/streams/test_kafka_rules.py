"""The rules of ``runtimes/streams/kafka`` as pure functions: no broker."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest

from flow8_streams.runtimes.streams.kafka import rules
from flow8_streams.runtimes.streams.kafka.consumer import BEYOND, Flow8Consumer, Flow8ConsumerThread, ReadOffsets
from flow8_streams.runtimes.streams.kafka.producer import GroupMember
from flow8_streams.runtimes.streams.kafka.protocol import (
    GroupTxnOffsetCommitRequest,
    TxnOffsetCommitRequest_v3,
    TxnOffsetCommitResponse_v3,
)
from flow8_streams.runtimes.streams.kafka.rules import Refusal, in_generation, offset_commit_refusal
from flow8_streams.runtimes.streams.kafka.transactions import TRANSACTION_TIMEOUT_MS, transaction_timeout_ms


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


# ------------------------------------------------------------------ the consumer's rules


def test_acked_offsets_above_one_in_flight_are_held_back() -> None:
    """A slow task at offset 5 while 6-8 are acked: the commit stops before 5."""
    assert rules.hold_back([3, 4, 6, 7, 8], in_flight=[5, 9]) == ([3, 4], [6, 7, 8])
    assert rules.hold_back([3, 4], in_flight=[]) == ([3, 4], [])
    assert rules.hold_back([], in_flight=[5]) == ([], [])


def test_a_gap_ends_before_the_record_that_follows_it() -> None:
    """faust adds the record read after a hole to the hole: it is not done yet."""
    assert rules.gap_before(10, 12) == (10, 11)
    assert rules.gap_before(10, 11) == (10, 10)
    assert rules.gap_before(12, 12) is None


def test_records_fetched_before_a_seek_are_not_delivered_after_it() -> None:
    epochs = {"tp": 1}
    batch = iter([1, 2, 3, 4])
    delivered = []
    for record in rules.unless_sought(epochs, "tp", 1, batch):
        delivered.append(record)
        if record == 2:
            epochs["tp"] = 2  # a seek while the batch is iterated
    assert delivered == [1, 2]
    assert list(rules.unless_sought({}, "tp", 0, [1, 2])) == [1, 2]  # never sought: epoch 0


def test_inputs_never_committed_are_read_from_their_beginning_changelogs_are_not() -> None:
    committed = {"in-0": None, "in-1": 0, "in-2": 7, "changelog-0": None}
    assert rules.never_committed(committed, lambda tp: tp.startswith("changelog")) == ["in-0", "in-1"]


def test_a_resumed_partition_is_read_again_from_its_last_record_delivered() -> None:
    paused = {"in-0", "in-1", "changelog-0"}
    read = {"in-0": 41, "in-1": None, "changelog-0": 9, "in-2": 5}
    found = rules.reseeks(["in-0", "in-1", "changelog-0", "in-2"], paused, read, lambda tp: tp.startswith("changelog"))
    assert found == [("in-0", 41)]


@pytest.mark.parametrize(
    ("took", "wait"),
    [(0.0, 0.002), (0.01, 0.03), (1.0, 0.1)],  # idle: the linger; under load: 3x the last commit, capped
)
def test_the_commit_wait_grows_with_the_last_commit(took: float, wait: float) -> None:
    assert rules.commit_wait(0.1, 0.002, took) == pytest.approx(wait)


def test_a_transaction_lives_a_few_commit_intervals() -> None:
    assert transaction_timeout_ms(100) == TRANSACTION_TIMEOUT_MS
    assert transaction_timeout_ms(60_000) == 180_000


@pytest.mark.parametrize(
    ("read_in", "current", "acts"),
    [(7, 7, True), (None, 7, True), (6, 7, False), (0, 1, False)],
)
def test_only_a_record_of_the_current_generation_is_acted_on_and_acked(
    read_in: int | None, current: int, acts: bool
) -> None:
    assert rules.of_this_generation(read_in, current) is acts


@pytest.mark.parametrize(
    ("taken", "read_in", "counts"),
    [(True, 7, True), (True, None, True), (True, 6, False), (False, 7, False), (False, 6, False)],
)
def test_an_ack_counts_only_for_a_record_a_stream_took_in_this_generation(
    taken: bool, read_in: int | None, counts: bool
) -> None:
    """faust acks a record its stream skipped without processing it (read while the flow was
    stopped, or in an earlier generation): such an ack must not let a commit pass the record."""
    assert rules.ack_counts(taken, read_in, 7) is counts


def test_a_record_taken_before_a_seek_neither_delivers_nor_moves_the_read_offset_after_it() -> None:
    """faust's fetch loop checks a record against the read offset, hands it to the streams
    (awaiting) and then notes it as delivered; a seek back to the committed offset can come
    in between. The record then must not set the read offset past the records the seek was
    for (they were dropped as read once), nor make a hole that commits count as done."""
    thread = SimpleNamespace(epochs={"in": 1}, handed={}, sought_to={})
    thread.sought_since = partial(Flow8ConsumerThread.sought_since, thread)  # type: ignore[arg-type]
    offsets = ReadOffsets(lambda: thread, is_changelog=lambda tp: tp == "changelog")  # type: ignore[arg-type,return-value]
    taken = Flow8ConsumerThread._handing(thread, "in", 1, iter([SimpleNamespace(offset=120)]))  # type: ignore[arg-type]
    assert next(taken).offset == 120  # faust takes the record of epoch 1...
    assert offsets["in"] is None  # ...and checks it: not read yet, delivered
    Flow8ConsumerThread._bump(thread, ["in"], 90)  # type: ignore[arg-type]  # a seek back, on the consumer's thread
    offsets.seek("in", 90)
    offsets["in"] = 120  # faust notes the record it took before the seek as delivered
    assert dict(offsets) == {"in": 90}  # ignored: 90..119 are read again, not dropped
    assert offsets["in"] == BEYOND  # and a record of before the seek reads as below: dropped
    offsets["changelog"] = 5  # a table's changelog is left as faust has it
    assert offsets["changelog"] == 5
    fresh = Flow8ConsumerThread._handing(thread, "in", 2, iter([SimpleNamespace(offset=90)]))
    assert next(fresh).offset == 90
    assert offsets["in"] == 90  # a record fetched after the seek is checked as usual
    offsets["in"] = 90
    assert offsets["in"] == 90


def _handed(thread: Any, tp: str, epoch: int, offset: int) -> None:
    """faust takes the record at ``offset`` of ``tp``, fetched in ``epoch``."""
    next(Flow8ConsumerThread._handing(thread, tp, epoch, iter([SimpleNamespace(offset=offset)])))


def test_records_fetched_after_a_seek_are_checked_against_where_it_went_before_faust_knows() -> None:
    """A seek runs on the consumer's thread and faust learns where it went only once the whole
    seek is done (``perform_seek``). Records fetched from the new position in between were
    compared with the read offset of before, dropped as read, and the jump to the next one
    made a hole that commits passed. The thread notes each seek: that is the read offset
    from then on, until faust delivers a record of the new epoch."""
    thread = SimpleNamespace(epochs={}, handed={}, sought_to={})
    thread.sought_since = partial(Flow8ConsumerThread.sought_since, thread)  # type: ignore[arg-type]
    offsets = ReadOffsets(lambda: thread, is_changelog=lambda tp: False)  # type: ignore[arg-type,return-value]
    for offset in (100, 101, 102):  # delivered before the seek (after an assignment, faust resumes first)
        _handed(thread, "in", 0, offset)
        assert offsets["in"] in (None, offset - 1)
        offsets["in"] = offset
    Flow8ConsumerThread._bump(thread, ["in"], 100)  # type: ignore[arg-type]  # seek to the committed offset
    _handed(thread, "in", 1, 100)  # fetched from the new position, before faust's perform_seek returns
    assert offsets["in"] == 100  # not 102: 100 is delivered (again), not dropped
    assert offsets.get("in") == 100  # as the reseek rule reads it
    offsets["in"] = 100
    _handed(thread, "in", 1, 101)
    assert offsets["in"] == 100  # no hole before 101
    offsets["in"] = 101
    offsets.update({"in": 100})  # faust's perform_seek, done: the thread's note stands
    assert offsets["in"] == 101
    offsets.pop("in")  # revoked
    assert offsets.get("in") is None
    Flow8ConsumerThread._bump(thread, ["in"])  # type: ignore[arg-type]  # to its beginning: no offset known
    _handed(thread, "in", 2, 7)
    assert offsets["in"] is None  # the first record of the new epoch is taken as it comes


def test_an_ack_counted_past_consumer_ack_is_taken_back_when_it_does_not_count() -> None:
    """faust's compiled stream iterator acks inline and then tells the sensors: an ack of a
    record skipped unprocessed (never taken by a stream) or read in an earlier generation is
    taken back before anything can commit it; one that counts stays."""

    @dataclass(eq=False)
    class Message:
        tracked: bool
        generation_id: int

    skipped, done = Message(tracked=False, generation_id=7), Message(tracked=True, generation_id=7)
    consumer = SimpleNamespace(
        app=SimpleNamespace(consumer_generation_id=7),
        _acked={"in": [4, 5]},
        _acked_index={"in": {4, 5}},
        _n_acked=2,
        _unacked_messages={skipped, done},
    )
    consumer._counts = partial(Flow8Consumer._counts, consumer)  # type: ignore[arg-type]
    Flow8Consumer.take_back(consumer, "in", 5, skipped)  # type: ignore[arg-type]
    Flow8Consumer.take_back(consumer, "in", 4, done)  # type: ignore[arg-type]
    assert (consumer._acked, consumer._acked_index, consumer._n_acked) == ({"in": [4]}, {"in": {4}}, 1)
    assert consumer._unacked_messages == {done}
