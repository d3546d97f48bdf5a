"""Kafka protocol structs aiokafka lacks.

``TxnOffsetCommit`` v3 (KIP-447) carries the consumer group's generation, member id and
group instance id with a transaction's offsets: the group coordinator refuses the offsets
of a member whose generation was superseded (``ILLEGAL_GENERATION``, ``UNKNOWN_MEMBER_ID``,
``FENCED_INSTANCE_ID``), so a zombie of an old generation cannot commit. aiokafka 0.14
sends v0, which the broker takes from anyone holding the transactional id. v3 is the
first flexible version (compact strings and arrays, tagged fields); Kafka 2.5 and later
serve it.
"""

from __future__ import annotations

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields

TXN_OFFSET_COMMIT = 28  # the API key
NO_LEADER_EPOCH = -1  # committed_leader_epoch when the consumer does not track one (aiokafka does not)


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]  # Kafka's names: <Api>Request_v<version>
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partitions", CompactArray(("partition_index", Int32), ("error_code", Int16), ("tags", TaggedFields))),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    FLEXIBLE_VERSION = True
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),  # nullable: None encodes as null
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class GroupTxnOffsetCommitRequest(Request[TxnOffsetCommitRequest_v3]):  # type: ignore[misc]  # aiokafka is untyped
    """A transaction's offsets with the group metadata of the consumer that read them.

    v3 only: a broker without it cannot fence by generation, and sending v0 instead
    would silently drop the guarantee (aiokafka then raises that it has no version)."""

    API_KEY = TXN_OFFSET_COMMIT

    def __init__(
        self,
        transactional_id: str,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        topics: list[tuple[str, list[tuple[int, int, str]]]],
    ) -> None:
        self._fields = (transactional_id, group_id, producer_id, producer_epoch, generation_id, member_id)
        self._group_instance_id = group_instance_id
        self._topics: list[tuple[str, list[tuple[int, int, str]]]] = topics

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]) -> TxnOffsetCommitRequest_v3:
        topics: list[tuple[str, list[tuple[int, int, int, str, dict[int, bytes]]], dict[int, bytes]]] = [
            (topic, [(partition, offset, NO_LEADER_EPOCH, metadata, {}) for partition, offset, metadata in parts], {})
            for topic, parts in self._topics
        ]
        return request_struct_class(*self._fields, self._group_instance_id, topics, {})
