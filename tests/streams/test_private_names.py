"""Every private faust/aiokafka name ``runtimes/streams/kafka/`` uses exists in the installed
(pinned) versions: an upgrade that renames one fails here, not in the fault test.

The folder's source is scanned for ``._name`` accesses; each is either defined by the
folder's own classes (``self._name = ...``) or listed in ``LIBRARY`` with where the
library defines it, which is checked against the installed code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.producer.transaction_manager import TransactionManager
from faust import App, Table
from faust.assignor import PartitionAssignor
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.consumer import ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as FaustAIOKafkaConsumer
from faust.transport.drivers.aiokafka import Producer as FaustAIOKafkaProducer
from faust.web.base import Web

import flow8_streams.runtimes.streams.kafka as kafka_folder
from flow8_streams.runtimes.streams.kafka import (
    consumer,
    faust_app,
    metadata,
    partition_txn,
    producer,
    protocol,
    transactions,
)

FOLDER = Path(kafka_folder.__file__).parent
ACCESS = re.compile(r"\.(_[A-Za-z]\w*)\b")
OWN = re.compile(r"self\.(_[A-Za-z]\w*)\s*(?::[^=\n]+)?=[^=]")
DEF = re.compile(r"def (_[A-Za-z]\w*)\(")  # a method of ours, or an override of the library's

# private name -> the library classes (any of them) that define it; an override (``def _name``)
# of a library method is listed too: renamed upstream, it would silently never be called
LIBRARY: dict[str, tuple[type, ...]] = {
    "_coordinator": (AIOKafkaConsumer,),
    "_group_instance_id": (GroupCoordinator,),
    "_txn_manager": (Sender, AIOKafkaProducer),
    "_txn_consumer_group": (TransactionManager,),
    "_offsets": (TxnOffsetCommitHandler,),
    "_sender": (AIOKafkaProducer, TxnOffsetCommitHandler),
    "_find_coordinator": (Sender,),
    "_do_txn_offset_commit": (Sender,),
    "_message_accumulator": (AIOKafkaProducer,),
    "_acks": (Sender,),
    "_retry_backoff": (Sender,),
    "_request_timeout_ms": (Sender,),
    "_thread": (ThreadDelegateConsumer,),
    "_ensure_consumer": (AIOKafkaConsumerThread,),
    "_client": (AIOKafkaConsumer,),
    "_bootstrap_servers": (AIOKafkaClient,),
    "_metadata_update": (AIOKafkaClient,),
    "_is_changelog_tp": (FaustConsumer,),
    "_acked": (FaustConsumer,),
    "_acked_index": (FaustConsumer,),
    "_unacked_messages": (FaustConsumer,),
    "_paused_partitions": (FaustConsumer,),
    "_read_offset": (FaustConsumer,),
    "_committed_offset": (FaustConsumer,),
    "_on_changelog_sent": (Table,),
    "_n_acked": (FaustConsumer,),
    "_gap": (FaustConsumer,),
    "_topic_groups": (PartitionAssignor,),
    "_transaction_producers": (FaustAIOKafkaProducer,),
    "_trn_locks": (FaustAIOKafkaProducer,),
    # overrides
    "_settings_extra": (FaustAIOKafkaProducer,),
    "_highwaters": (AIOKafkaConsumerThread,),
    "_fetch_records": (AIOKafkaConsumerThread,),
    "_new_consumer_thread": (FaustAIOKafkaConsumer,),
    "_commit_handler": (FaustConsumer,),
    "_new_offset": (FaustConsumer,),
    "_add_gap": (FaustConsumer,),
    "_seek": (ThreadDelegateConsumer,),
    "_enabled_blueprints": (Web,),
    "_new_transport": (App,),
    "_new_web": (App,),
}


def sources() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(FOLDER.glob("*.py"))}


def defines(cls: type, name: str) -> bool:
    """``cls`` (or a base) has ``name`` as an attribute, or sets it on its instances."""
    for klass in cls.__mro__:
        if klass is object:
            continue
        if name in vars(klass):
            return True
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"self\.{name}\s*(?::[^=\n]+)?=[^=]", source):
            return True
    return False


def test_every_private_name_used_is_listed_or_our_own() -> None:
    texts = sources()
    defined = {name for text in texts.values() for name in DEF.findall(text)}
    own = {name for text in texts.values() for name in OWN.findall(text)} | (defined - LIBRARY.keys())
    used = {name for text in texts.values() for name in ACCESS.findall(text) if not name.startswith("__")}
    unlisted = sorted(used - own - LIBRARY.keys())
    assert unlisted == [], f"private names used in {FOLDER} but not listed in LIBRARY: {unlisted}"
    assert used, "the scan found no private names at all: the pattern is broken"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_listed_private_name_exists_in_the_installed_library(name: str) -> None:
    owners = LIBRARY[name]
    assert any(defines(cls, name) for cls in owners), f"{name} is no longer defined by {owners}"


def test_listed_names_are_all_used() -> None:
    """A name no longer used leaves the list (or the list stops proving anything)."""
    text = "\n".join(sources().values())
    stale = sorted(name for name in LIBRARY if f".{name}" not in text and f"def {name}(" not in text)
    assert stale == []


def test_every_override_of_a_private_library_method_is_listed() -> None:
    """A private method of faust or aiokafka overridden here is listed: renamed upstream, the
    override would silently never be called again (the listed check then fails)."""
    overrides = set()
    for module in (consumer, faust_app, metadata, partition_txn, producer, protocol, transactions):
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for name in vars(cls):
                private = name.startswith("_") and not name.startswith("__") and name != "_abc_impl"
                if private and any(name in vars(base) for base in cls.__mro__[1:]):
                    overrides.add(name)
    assert overrides, "no override found: the scan is broken"
    assert sorted(overrides - LIBRARY.keys()) == []
