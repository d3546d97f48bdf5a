"""The MongoDB adapter of the four store ports, over pymongo's ``AsyncMongoClient``.

Collections (one database): ``plays`` (the projection), ``play_ids`` (a client's own play
ids and the company that claimed each), ``events`` (an optional copy of the log), ``kv``,
``flows`` (versioned definitions) and ``modules`` (the catalog; only its index is made here).
``open()`` creates the indexes; reads work without it.

Nothing needs a multi-document transaction, so this runs on a sharded cluster and on
FerretDB alike. Every write that must not go backwards is guarded inside a single
document:

- plays: ``seq`` guards each write, in two updates that work on MongoDB and FerretDB:
  ``{_id, company_id}`` ``$setOnInsert`` (upsert), then ``{_id, company_id, seq < n}``
  ``$set`` (no upsert). A redelivered or older state matches nothing.
- kv: every write inserts the key's next version (``kv_versions``, unique ``_id`` per
  version and unique op), so writers that collide lose an insert, not an update; an
  increment's op id is recorded with its version, so a redelivered op returns its first
  result and counts nothing, for ``kv_incr_dedup_seconds`` (see ``MongoKV``). FerretDB
  refuses TTL indexes (``expireAfterSeconds`` is not implemented), so old versions are
  deleted by the writers.

Every query carries ``company_id`` where the port has it. ``plays.get(None, id)`` and
``plays.list()`` without a company are the operator path (the CLI's ``plays show``/``list``).

FerretDB (1.24, SQLite backend) is NOT safe for concurrent writers of one document:
its updates (``update``, ``findAndModify``, even ``$inc``) read, modify and write back
without a transaction, so concurrent updates from several connections are lost (measured:
200 concurrent ``$inc`` -> 18; a ``seq``-guarded ``$set`` let seq 2 overwrite seq 7).
Only inserts (unique ``_id``/index) and deletes are atomic there. KV writes are therefore
inserts (correct between processes on both servers). Play projections serialize their
writes of one play batch in-process (asyncio locks), which makes one store correct on
FerretDB; between processes (two projectors during a hand-over) it holds on MongoDB only.
Concurrent first upserts of one ``_id`` fail with E11000 on FerretDB (MongoDB retries
them): such an upsert is tried once more.

FerretDB also shaped these choices; each is valid MongoDB too:

- field names with a ``.`` or a leading ``$`` are refused, even nested: a JSON value
  with such a key (a KV value, a flowlet output) is stored as JSON bytes in ``<field>_json``.
- ``createIndexes`` with several indexes that exist already crashes the connection:
  ``open()`` creates them one by one.
- dates are BSON dates (milliseconds): ``created_at`` sorts ``plays.list``, so plays started
  within the same millisecond come in no particular order.
- a ``bulk_write`` whose op fails answers with a malformed reply (pymongo ``KeyError:
  'nModified'``) and stops at that op, ordered or not: such a batch is redone play by play.
- an ``update`` command holds one SQLite connection per upsert that inserts until the whole
  command ends, out of a pool of 100: one bulk of 100 new plays, or two concurrent ones of
  60, wait for a connection forever and wedge the whole server (no command of any database
  answers again). Plays are written ``PLAYS_PER_BULK`` at a time.
"""

from flow8_streams.stores.mongo.common import INDEXES, PLAY_IDS
from flow8_streams.stores.mongo.events import MongoEventLog
from flow8_streams.stores.mongo.flows import MongoFlows
from flow8_streams.stores.mongo.kv import MongoKV, _kv_id
from flow8_streams.stores.mongo.plays import ApplyResult, Gap, MongoPlays
from flow8_streams.stores.mongo.store import MongoStore

__all__ = [
    "INDEXES",
    "PLAY_IDS",
    "ApplyResult",
    "Gap",
    "MongoEventLog",
    "MongoFlows",
    "MongoKV",
    "MongoPlays",
    "MongoStore",
    "_kv_id",
]
