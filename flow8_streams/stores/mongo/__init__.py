"""The MongoDB adapter of the four store ports, over pymongo's ``AsyncMongoClient``.

Collections (one database): ``plays`` and ``plays_live`` (the projection: finished plays,
and the plays in flight), ``play_ids`` (a client's own play
ids and the company that claimed each), ``events`` (an optional copy of the log), ``kv``,
``flows`` (versioned definitions) and ``modules`` (the catalog; only its index is made here).
``open()`` creates the indexes; reads work without it.

Nothing needs a multi-document transaction, so this runs on a sharded cluster and on
FerretDB alike. No write that must not go backwards is an update:

- plays: every projection write is an insert (``plays`` for a finished play, a new
  version in ``plays_live`` for one in flight; see ``stores.mongo.plays``); readers take a
  play's highest version, so a late or redelivered write never moves it back.
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
Only inserts (unique ``_id``/index) and deletes are atomic there. KV writes and play
projections are therefore inserts (correct between processes on both servers). And
FerretDB serves no query from an index (see ``stores.mongo.plays``): what must not grow
with a collection is an insert.

FerretDB also shaped these choices; each is valid MongoDB too:

- field names with a ``.`` or a leading ``$`` are refused, even nested: a JSON value
  with such a key (a KV value, a flowlet output) is stored as JSON bytes in ``<field>_json``.
- ``createIndexes`` with several indexes that exist already crashes the connection:
  ``open()`` creates them one by one.
- dates are BSON dates (milliseconds): ``created_at`` sorts ``plays.list``, so plays started
  within the same millisecond come in no particular order.
- a ``bulk_write`` whose op fails answers with a malformed reply (pymongo ``KeyError:
  'nModified'``) and stops at that op, ordered or not; an ``update`` command holds one
  SQLite connection per upsert that inserts until the whole command ends, out of a pool of
  100, and wedges the server past that: the projection makes neither (unordered
  ``insert_many`` only).
"""

from flow8_streams.stores.mongo.common import INDEXES, PLAY_IDS
from flow8_streams.stores.mongo.events import MongoEventLog
from flow8_streams.stores.mongo.flows import MongoFlows
from flow8_streams.stores.mongo.kv import KV_INCR_DEDUP_SECONDS, PRUNE_BATCH, PRUNE_EVERY, MongoKV, _kv_id
from flow8_streams.stores.mongo.plays import ApplyResult, Gap, MongoPlays
from flow8_streams.stores.mongo.store import MongoStore

__all__ = [
    "INDEXES",
    "KV_INCR_DEDUP_SECONDS",
    "PLAY_IDS",
    "PRUNE_BATCH",
    "PRUNE_EVERY",
    "ApplyResult",
    "Gap",
    "MongoEventLog",
    "MongoFlows",
    "MongoKV",
    "MongoPlays",
    "MongoStore",
    "_kv_id",
]
