"""What the MongoDB adapter's collection families share: collection names, indexes, JSON
values in BSON, errors (FerretDB's limits: see the package's docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo import ASCENDING, DESCENDING, IndexModel

from flow8_streams.errors import InvalidInput
from flow8_streams.redact import redact_uri

Doc = dict[str, Any]

PLAYS, EVENTS, KV, KV_VERSIONS, FLOWS, MODULES = "plays", "events", "kv", "kv_versions", "flows", "modules"
PLAYS_LIVE = "plays_live"  # the plays in flight, as versions (see stores.mongo.plays)
PLAY_IDS = "play_ids"  # a client's own play id -> the company that claimed it (see MongoPlays.claim)
API_KEYS = "api_keys"  # HTTP API keys by id, each as its SHA-256 only (see stores.mongo.keys)

INDEXES: dict[str, list[IndexModel]] = {
    FLOWS: [
        IndexModel([("company_id", ASCENDING), ("created_at", DESCENDING)], name="company_created"),
        IndexModel(
            [("company_id", ASCENDING), ("name", ASCENDING), ("version", DESCENDING)],
            name="company_name_version",
            unique=True,
        ),
    ],
    PLAYS: [
        IndexModel([("flow_id", ASCENDING), ("created_at", DESCENDING)], name="flow_created"),
        IndexModel(
            [("company_id", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING)],
            name="company_status_created",
        ),
        IndexModel([("company_id", ASCENDING), ("created_at", DESCENDING)], name="company_created"),
        # the shard key's: shardCollection("flow8.plays", {company_id: 1, created_at: 1}); retention's range
        IndexModel([("company_id", ASCENDING), ("created_at", ASCENDING)], name="company_created_shard"),
    ],
    PLAYS_LIVE: [
        IndexModel([("play_id", ASCENDING), ("seq", DESCENDING)], name="play_seq"),
        IndexModel([("company_id", ASCENDING), ("status", ASCENDING)], name="company_status"),
    ],
    EVENTS: [IndexModel([("play_id", ASCENDING), ("seq", ASCENDING)], name="play_seq")],
    KV_VERSIONS: [
        IndexModel([("op", ASCENDING)], name="op", unique=True),
        IndexModel([("company_id", ASCENDING), ("kv", ASCENDING), ("version", ASCENDING)], name="company_kv_version"),
    ],
    MODULES: [IndexModel([("company_id", ASCENDING), ("name", ASCENDING)], name="company_name")],
    API_KEYS: [IndexModel([("company_id", ASCENDING), ("created_at", ASCENDING)], name="company_created")],
}

_INT64 = (-(2**63), 2**63 - 1)


def _now() -> datetime:
    return datetime.now(UTC)


def _hosts(uri: str) -> str:
    """The host list of a MongoDB URI, without scheme, credentials, path or options."""
    rest = redact_uri(uri).split("://", 1)[-1].rsplit("@", 1)[-1]
    return rest.split("/", 1)[0].split("?", 1)[0] or "?"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------ JSON values in BSON


def _json_value(value: Any, what: str) -> Any:
    """``value`` as JSON sees it (what the SQLite adapter stores and reads back)."""
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError as exc:  # orjson.JSONEncodeError
        raise InvalidInput(f"{what}: the value is not JSON: {exc}") from exc


def _bson_safe(value: Any) -> bool:
    """True when MongoDB and FerretDB store ``value`` (JSON-shaped) as it is."""
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and "." not in k and not k.startswith("$") and "\x00" not in k and _bson_safe(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return all(_bson_safe(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return True
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    return False


def _pack(name: str, value: Any) -> Doc:
    """``{name: value}``, or the value as JSON bytes in ``name_json`` when BSON cannot hold it."""
    if _bson_safe(value):
        return {name: value, f"{name}_json": None}
    return {name: None, f"{name}_json": orjson.dumps(value)}


def _unpack(doc: Mapping[str, Any], name: str) -> Any:
    raw = doc.get(f"{name}_json")
    return orjson.loads(raw) if raw is not None else doc.get(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
