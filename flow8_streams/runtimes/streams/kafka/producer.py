"""One transactional producer whose offset commits carry the consumer group's metadata
(exactly-once v2, KIP-447).

aiokafka's producer commits a transaction's offsets with ``TxnOffsetCommit`` v0, which
names the group only: fencing a zombie then needs a transactional id per input partition
(the new owner's ``InitProducerId`` bumps the epoch). With the generation and member id
of the consumer that read the offsets (v3) the group coordinator refuses a member whose
generation is over, so one producer with one transactional id per worker is enough.

The metadata travels with the offsets through aiokafka's queue of pending offsets as
the group id itself (``GroupMember``, a ``str``): the request is built from the entry
it commits, whatever was queued before or after it.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import CoordinationType
from aiokafka.errors import GroupAuthorizationFailedError, IllegalOperation, KafkaError, ProducerFenced
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.producer.transaction_manager import TransactionManager

from flow8_streams.runtimes.streams.kafka.protocol import GroupTxnOffsetCommitRequest
from flow8_streams.runtimes.streams.kafka.rules import Refusal, in_generation, offset_commit_refusal


class GroupFenced(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The group coordinator refused a transaction's offsets: the member that read them
    is no longer in the group's generation. The transaction must be aborted, never
    committed; the worker drops what it holds for the partitions it lost and rejoins."""

    retriable = False


class GroupMember(str):
    """A consumer group id carrying the generation, member id and group instance id of the
    member that read the offsets committed with it."""

    generation_id: int
    member_id: str
    group_instance_id: str | None

    def __new__(cls, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None = None) -> Self:
        self = super().__new__(cls, group_id)
        self.generation_id = generation_id
        self.member_id = member_id
        self.group_instance_id = group_instance_id
        return self

    def __repr__(self) -> str:
        return f"GroupMember({str(self)!r}, generation={self.generation_id}, member={self.member_id!r})"


def group_member(consumer: AIOKafkaConsumer) -> GroupMember:
    """The group metadata of ``consumer`` now (its coordinator's, read on any thread).
    Raises ``GroupFenced`` when it has none: the broker would take offsets without a
    generation (TxnOffsetCommit v0's way) from anyone."""
    coordinator = consumer._coordinator
    if coordinator is None or not getattr(coordinator, "group_id", None):
        raise IllegalOperation("the consumer is not in a consumer group: its offsets cannot be fenced")
    member = GroupMember(
        coordinator.group_id, coordinator.generation, coordinator.member_id, coordinator._group_instance_id
    )
    if not in_generation(member.generation_id, member.member_id):
        raise GroupFenced(f"{member!r} is not a member of the group's generation (it is rejoining)")
    return member


class GroupTxnOffsetCommitHandler(TxnOffsetCommitHandler):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's handler, sending v3 with the group metadata. A group fencing error makes
    the transaction abortable (``GroupFenced``); a producer fencing error is fatal."""

    def __init__(self, sender: Sender, offsets: Any, group: GroupMember) -> None:
        super().__init__(sender, offsets, group)
        self._group = group

    def create_request(self) -> GroupTxnOffsetCommitRequest:
        txn: TransactionManager = self._sender._txn_manager
        by_topic: collections.defaultdict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
        for tp, offset in sorted(self._offsets.items()):
            by_topic[tp.topic].append((tp.partition, offset.offset, offset.metadata))
        group = self._group
        return GroupTxnOffsetCommitRequest(
            transactional_id=txn.transactional_id,
            group_id=str(group),
            producer_id=txn.producer_id,
            producer_epoch=txn.producer_epoch,
            generation_id=group.generation_id,
            member_id=group.member_id,
            group_instance_id=group.group_instance_id,
            topics=list(by_topic.items()),
        )

    def handle_response(self, response: Any) -> float | None:
        errors = [(topic, [(p, code) for p, code, _ in partitions]) for topic, partitions, _ in response.topics]
        refusal = offset_commit_refusal(errors)
        if refusal is Refusal.PRODUCER_FENCED:
            raise ProducerFenced()
        if refusal is Refusal.GROUP_FENCED:
            codes = sorted({code for _, partitions in errors for _, code in partitions if code})
            refused = GroupFenced(f"the offsets of {self._group!r} were refused (error codes {codes})")
            abortable(self._sender._txn_manager, refused)
            return None
        result: float | None = super().handle_response(_AsV0(errors))
        return result


def abortable(txn: TransactionManager, exc: Exception) -> None:
    """Put the open transaction in the abortable state, failing its pending offsets with
    ``exc``, and keep what it wrote: aiokafka's ``error_transaction`` forgets the partitions
    and the group, its abort then sends no EndTxn, and the broker keeps the transaction
    open: the next commit of that producer committed the records of the refused one."""
    written, group = set(txn.txn_partitions), txn._txn_consumer_group
    txn.error_transaction(exc)
    txn.txn_partitions.update(written)
    if group is not None:
        txn.consumer_group_added(group)
    txn.wait_for_transaction_end().exception()  # the caller is told by its offsets' future


class _AsV0:
    """A v3 response's errors as aiokafka's v0 handler reads them."""

    def __init__(self, errors: list[tuple[str, list[tuple[int, int]]]]) -> None:
        self.errors = errors


class GroupSender(Sender):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's sender, committing a transaction's offsets with their group metadata."""

    async def _do_txn_offset_commit(self, offsets: Any, group_id: str) -> None:
        if not offsets:
            return
        if not isinstance(group_id, GroupMember):  # v0 would commit without fencing: refused
            abortable(self._txn_manager, IllegalOperation("offsets sent without their group's metadata"))
            return
        try:
            node_id = await self._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as exc:
            abortable(self._txn_manager, exc)
            return
        await GroupTxnOffsetCommitHandler(self, offsets, group_id).do(node_id)


class GroupProducer(AIOKafkaProducer):  # type: ignore[misc]  # aiokafka is untyped
    """A transactional ``AIOKafkaProducer`` whose offsets are fenced by the group's generation."""

    _sender: Any

    def __init__(self, **configs: Any) -> None:
        if not configs.get("transactional_id"):
            raise ValueError("GroupProducer is transactional: give it a transactional_id")
        super().__init__(**configs)
        sender = self._sender
        self._sender = GroupSender(
            self.client,
            acks=sender._acks,
            txn_manager=self._txn_manager,
            message_accumulator=self._message_accumulator,
            retry_backoff_ms=sender._retry_backoff * 1000,
            request_timeout_ms=sender._request_timeout_ms,
        )

    def transaction_open(self) -> bool:
        """Whether a transaction is open (records may be sent)."""
        return bool(self._txn_manager.is_in_transaction())

    def fenced(self) -> bool:
        """Whether the broker fenced this producer's epoch: its sender stopped on
        ``ProducerFenced`` and nothing it holds can be sent, committed or aborted again."""
        task = self._sender.sender_task
        if task is None or not task.done() or task.cancelled():
            return False
        return isinstance(task.exception(), ProducerFenced)

    async def stop_fenced(self) -> None:
        """Stop this fenced producer. aiokafka also failed its transaction's end with the fence,
        which no one awaits once the fence was seen: that is taken here, not logged by asyncio
        as an error never retrieved."""
        waiter = self._txn_manager.wait_for_transaction_end()
        if waiter is not None and waiter.done() and not waiter.cancelled():
            waiter.exception()
        with contextlib.suppress(KafkaError):
            await self.stop()

    async def send_offsets_to_transaction(self, offsets: Any, group_id: Any) -> None:
        """Add ``offsets`` to the open transaction, committed by ``group_id``'s member
        (a ``GroupMember``). Raises ``GroupFenced`` if the group refused them: then only
        ``abort_transaction`` is allowed."""
        if not isinstance(group_id, GroupMember):
            raise TypeError("the group of a transaction's offsets is a GroupMember (see group_member)")
        await super().send_offsets_to_transaction(offsets, group_id)
