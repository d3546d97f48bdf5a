"""Settings, read once when a program starts (never at import).

Precedence: flags (passed as keyword arguments) > environment > YAML file
(``--config`` or ``FLOW8_CONFIG``) > defaults. Environment names are the seed's:
``KAFKA_BOOTSTRAP_SERVERS``, ``MONGODB_URI``, ``SERVER_PORT``, ``CHANNEL_PORT_RANGE``,
``CHANNEL_POOL_SIZE`` (and ``CHANNEL_POOL_WARM``; or, with ``FLOW8_CHANNEL_RANGES_FILE``, the range of this
instance's replica in the seed's ``ranges.yaml``: see ``channel_range_of``); nested values use ``FLOW8_`` and ``__``
(``FLOW8_CACHE__FLOWS__TTL_SECONDS``). Kafka's security: ``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD`` (environment or
file only: no command-line flag sets a credential) and ``KAFKA_SSL_CAFILE``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from flow8_streams.domain.bounded import load_yaml
from flow8_streams.domain.limits import Limits
from flow8_streams.domain.messages import ID_PATTERN
from flow8_streams.errors import InvalidInput

PORT_RANGE = re.compile(r"^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$")
ORDINAL = re.compile(r"-(\d{1,6})$")  # a StatefulSet pod's name ends in its ordinal: flow8-worker-2
RANGES_FILE_MAX_BYTES = 64 * 1024


def _port_range(value: object, what: str) -> range:
    match = PORT_RANGE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{what} {value!r} is not a range like 7701-7799")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{what} {value!r}: ports must satisfy 1 <= low <= high <= 65535")
    return range(low, high + 1)


def read_channel_ranges(path: Path, limits: Limits | None = None) -> dict[int, range]:
    """The seed's ``ranges.yaml`` (a Kubernetes ConfigMap's key, mounted as a file): a list of
    ``{replica: N, range: "LOW-HIGH"}``, one entry per replica, no two ranges sharing a port."""
    what = f"FLOW8_CHANNEL_RANGES_FILE {path}"
    try:
        with path.open("rb") as file:
            raw = file.read(RANGES_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{what}: {exc.strerror or exc}") from None
    try:
        document = load_yaml(raw, limits or Limits(), what, RANGES_FILE_MAX_BYTES)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(document, list) or not document:
        raise ValueError(f"{what}: expected a list of {{replica: N, range: LOW-HIGH}}")
    ranges: dict[int, range] = {}
    for entry in document:
        if not isinstance(entry, dict) or set(entry) != {"replica", "range"}:
            raise ValueError(f"{what}: each entry is {{replica: N, range: LOW-HIGH}}, not {entry!r}")
        replica = entry["replica"]
        if isinstance(replica, bool) or not isinstance(replica, int) or replica < 0:
            raise ValueError(f"{what}: replica {replica!r} is not a whole number, 0 or more")
        if replica in ranges:
            raise ValueError(f"{what}: replica {replica} is listed twice")
        ports = _port_range(entry["range"], f"{what}: replica {replica}'s range")
        for other, taken in ranges.items():
            if ports.start < taken.stop and taken.start < ports.stop:
                raise ValueError(f"{what}: the ranges of replicas {other} and {replica} share ports")
        ranges[replica] = ports
    return ranges


def replica_of_host(host_name: str) -> int:
    """The ordinal a StatefulSet gives a pod, which ends its name (its host name): ``flow8-worker-2`` -> 2."""
    match = ORDINAL.search(host_name)
    if match is None:
        raise ValueError(
            f"FLOW8_REPLICA is not set and the host name {host_name!r} does not end in -N "
            "(a StatefulSet pod's ordinal): set FLOW8_REPLICA"
        )
    return int(match.group(1))


def channel_range_of(ranges: dict[int, range], replica: int, path: Path) -> str:
    """CHANNEL_PORT_RANGE of ``replica``, from the ranges of ``read_channel_ranges``."""
    if replica not in ranges:
        listed = ", ".join(str(r) for r in sorted(ranges))
        raise ValueError(
            f"replica {replica} has no channel port range in FLOW8_CHANNEL_RANGES_FILE {path} (it lists replicas "
            f"{listed}): add one that overlaps no other before scaling past them"
        )
    ports = ranges[replica]
    return f"{ports.start}-{ports.stop - 1}"


class FlowCache(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the settings file is an error, never ignored

    ttl_seconds: float = Field(default=300, gt=0)
    max_entries: int = Field(default=10_000, gt=0)


class ModuleCache(BaseModel):
    """The seed's ``cache.modules`` block, accepted so its settings file loads: modules here are Python
    code each instance loads (``--modules``, the ``flow8.modules`` entry points), not documents read
    from a database, so there is nothing to cache."""

    model_config = ConfigDict(extra="forbid")  # a typo in the settings file is an error, never ignored

    ttl_seconds: float = Field(default=3600, gt=0)
    max_entries: int = Field(default=1000, gt=0)


class AuditCache(BaseModel):
    """Answers of audit filter queries (``flow8_streams.audit.cache``), refreshed in the background while asked."""

    model_config = ConfigDict(extra="forbid")

    ttl_seconds: float = Field(default=180, gt=0)
    max_entries: int = Field(default=1000, gt=0)


class RedisCache(BaseModel):
    """The shared cache's server (``cache.backend: redis``): a second tier behind each instance's own caches.

    The cache is not critical: when Redis is down, slow or refuses the password, reads go to the
    database. The timeouts are short so a dead Redis costs milliseconds per read, and after a
    failure Redis is left alone for ``retry_seconds`` (so then it costs nothing).
    """

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0, le=15)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=512)
    ttl_seconds: int = Field(default=300, gt=0, le=86_400, description="How long a shared entry lives in Redis.")
    local_ttl_seconds: float = Field(
        default=5,
        gt=0,
        le=3600,
        description="How long an instance keeps an entry itself, in front of Redis (short: a new latest "
        "version stored elsewhere shows within it).",
    )
    latest_ttl_seconds: int = Field(
        default=30,
        gt=0,
        le=86_400,
        description="The TTL in Redis of 'the latest version of a flow' entries (a version itself never changes).",
    )
    timeout_ms: int = Field(default=50, ge=1, le=10_000, description="Connect and per-call timeout.")
    retry_seconds: float = Field(default=2, gt=0, le=300, description="After a Redis error, how long to go without it.")
    signing_key: SecretStr | None = Field(
        default=None,
        min_length=32,
        max_length=512,
        description="A secret the instances share and Redis never sees: each value is stored with an "
        "HMAC-SHA256 of it and its key, and one whose tag does not match is ignored, so whoever can write "
        "to Redis cannot make an instance run a flow definition of their own. Without it, Redis is trusted.",
    )


class Caches(BaseModel):
    """The caches (the seed's ``cache:`` block): each instance's own, plus Redis when ``backend: redis``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "redis"] = "memory"
    redis: RedisCache = RedisCache()
    flows: FlowCache = FlowCache()
    modules: ModuleCache = ModuleCache()
    audit: AuditCache = AuditCache()


class Execution(BaseModel):
    """The seed's ``execution:`` block."""

    model_config = ConfigDict(extra="forbid")

    default_timeout_seconds: int = Field(default=300, gt=0, le=3600)
    max_timeout_seconds: int = Field(default=3600, gt=0, le=3600)
    channel_execution_timeout_seconds: int = Field(default=1800, gt=0)
    channel_heartbeat_timeout_seconds: float = Field(default=30, gt=0)
    channel_max_connections: int = Field(default=64, ge=1, le=10_000, description="Outside connections per channel.")
    channel_idle_timeout_seconds: float = Field(
        default=30, gt=0, le=3600, description="An outside connection without a whole line for this long is closed."
    )


class Http(BaseModel):
    """The seed's ``http:`` block: how ``flow8 serve`` answers."""

    model_config = ConfigDict(extra="forbid")  # a typo in the settings file is an error, never ignored

    compression: bool = Field(default=True, description="gzip a response when the client accepts it.")
    compression_level: int = Field(default=6, ge=1, le=9, description="1-9, higher = slower but smaller.")
    compression_min_bytes: int = Field(default=500, ge=0, description="Smaller responses are sent as they are.")
    max_wait_seconds: float = Field(
        default=60, gt=0, le=3600, description="The longest GET /v1/plays/{id}/wait?timeout= holds a request."
    )
    rate_limit_per_second: float | None = Field(
        default=None, gt=0, le=1_000_000, description="Requests one API key may make per second (unset: no limit)."
    )
    max_waits: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Waits (GET /v1/plays/{id}/wait) one instance holds at once (503 past it).",
    )
    max_waits_per_key: int = Field(
        default=1_000, ge=1, le=1_000_000, description="Of those, held for one API key (429 past it)."
    )
    results_max_entries: int = Field(
        default=10_000, ge=1, le=10_000_000, description="Finished plays from flow8.play-results kept by --streams."
    )
    results_ttl_seconds: float = Field(default=300, gt=0, le=86_400, description="How long one of them is kept.")
    key_cache_seconds: float = Field(
        default=5,
        ge=0,
        le=300,
        description="How long a --streams instance keeps an API key it read from MongoDB: a key revoked by the CLI "
        "or another instance still works there for up to this long (0: read the key on every request).",
    )
    history_max_records: int = Field(
        default=1_000_000,
        ge=1,
        le=1_000_000_000,
        description="--streams: records of the events topic one read of a play's history may go through (503 past it).",
    )
    history_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        le=64 * 1024**3,
        description="--streams: bytes of the events topic one read of a play's history may go through (503 past it).",
    )
    history_max_seconds: float = Field(
        default=15, gt=0, le=600, description="--streams: how long one read of a play's history may take (504 past it)."
    )
    history_consumers: int = Field(
        default=4, ge=1, le=256, description="--streams: Kafka consumers kept open to read histories, one read each."
    )
    history_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        le=64 * 1024**3,
        description="--streams: finished plays' histories kept in memory, by their events' JSON size (0: none).",
    )


class Topics(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the settings file is an error, never ignored

    prefix: str = Field(default="flow8", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=12, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1)
    transient_retention_ms: int | None = Field(
        default=None,
        ge=3_600_000,
        description="retention.ms of the topics a play passes through (commands, tasks, completions, play-results, "
        "dlq) when flow8 creates them; None: the broker's default.",
    )
    events_retention_ms: int | None = Field(
        default=None,
        ge=86_400_000,
        description="retention.ms of the events topic when flow8 creates it; None: kept forever (replay and audits "
        "read it). Set, audits of older plays need archives (flow8 audit export --kafka).",
    )

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    @property
    def commands(self) -> str:
        return self.name("commands")

    @property
    def tasks(self) -> str:
        return self.name("tasks")

    @property
    def completions(self) -> str:
        return self.name("completions")

    @property
    def events(self) -> str:
        return self.name("events")

    @property
    def play_results(self) -> str:
        return self.name("play-results")

    @property
    def dlq(self) -> str:
        return self.name("dlq")

    @property
    def checkpoints(self) -> str:
        """Signed checkpoints of the chain heads the workers wrote (with ``FLOW8_AUDIT_SIGNING_KEY``)."""
        return self.name("checkpoints")

    @property
    def all(self) -> tuple[str, ...]:
        return (self.commands, self.completions, self.tasks, self.events, self.play_results, self.dlq, self.checkpoints)

    @property
    def kept_forever(self) -> frozenset[str]:
        """What audits read: never deleted by retention (the events topic unless ``events_retention_ms``)."""
        return frozenset({self.checkpoints} | ({self.events} if self.events_retention_ms is None else set()))

    def retention_ms(self, topic: str) -> int | None:
        """The ``retention.ms`` a topic of the deployment is created with: -1 forever, None the broker's."""
        if topic in self.kept_forever:
            return -1
        if topic == self.events:
            return self.events_retention_ms
        return self.transient_retention_ms


DURATION = re.compile(r"^\s*(\d{1,7})\s*([dhms])\s*$")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(value: str, what: str) -> float:
    """``30d``, ``12h``, ``90m`` or ``45s`` in seconds; anything else is ``InvalidInput`` naming ``what``."""
    match = DURATION.match(value)
    if match is None:
        raise InvalidInput(f"{what} {value!r} is not a duration like 30d, 12h, 90m or 45s")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class RetentionS3(BaseModel):
    """Where an ``s3://`` archive goes: any S3-compatible store. Credentials are secrets: never printed."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = Field(default=None, max_length=2048, description="None: AWS itself.")
    region: str | None = Field(default=None, max_length=64)
    access_key_id: SecretStr | None = Field(default=None, max_length=256)
    secret_access_key: SecretStr | None = Field(default=None, max_length=1024)


class Retention(BaseModel):
    """How long finished plays and their events are kept, and where they go before they are deleted.

    Unset (``days`` None, no ``companies``), everything is kept forever. Only finished plays
    (succeeded, failed, cancelled) that ended longer ago than their company's days are archived and
    pruned; a running play is never touched."""

    model_config = ConfigDict(extra="forbid")

    days: int | None = Field(
        default=None, ge=1, le=36_500, description="Keep finished plays this many days (None: forever)."
    )
    companies: dict[str, int | None] = Field(
        default_factory=dict,
        max_length=100_000,
        description="Per company: its days, overriding `days` (null: that company's plays are kept forever).",
    )
    archive: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Where archives are written before plays are deleted: a directory, or s3://bucket/prefix.",
    )
    delete_without_archive: bool = Field(
        default=False, description="Prune without an archive destination: the deleted plays are gone for good."
    )
    interval_seconds: float = Field(
        default=3600, ge=1, le=7 * 86_400, description="How often flow8 serve archives and prunes."
    )
    batch_plays: int = Field(default=10_000, ge=1, le=1_000_000, description="Plays per archive file at most.")
    kafka_max_records: int = Field(
        default=10_000_000,
        ge=1,
        le=10_000_000_000,
        description="--streams: records of the events topic one batch's read may go through (the run stops past it).",
    )
    kafka_max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024,
        le=1024**4,
        description="--streams: bytes of the events topic one batch's read may go through (the run stops past it).",
    )
    prune_without_log: bool = Field(
        default=False,
        description="--streams: delete a finished play's projection whose events are not archived with it (Kafka no "
        "longer holds them, or the run did not read Kafka); it is archived by its head alone.",
    )
    s3: RetentionS3 = RetentionS3()

    @field_validator("companies")
    @classmethod
    def _check_companies(cls, value: dict[str, int | None]) -> dict[str, int | None]:
        for company, days in value.items():
            if re.fullmatch(ID_PATTERN, company) is None:
                raise ValueError(f"retention.companies: {company!r} is not a company id")
            if days is not None and not 1 <= days <= 36_500:
                raise ValueError(f"retention.companies.{company}: {days} days is not between 1 and 36500")
        return value

    @property
    def enabled(self) -> bool:
        return self.days is not None or any(d is not None for d in self.companies.values())

    def days_of(self, company: str) -> int | None:
        """The days ``company``'s finished plays are kept (None: forever)."""
        return self.companies.get(company, self.days)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOW8_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias=AliasChoices("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS")
    )
    mongodb_uri: str = Field(
        default="mongodb://127.0.0.1:27017", validation_alias=AliasChoices("mongodb_uri", "MONGODB_URI")
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        validation_alias=AliasChoices("kafka_security_protocol", "KAFKA_SECURITY_PROTOCOL"),
        description="How every Kafka client of flow8 connects: SASL_* log in with KAFKA_SASL_USERNAME/PASSWORD.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = Field(
        default="SCRAM-SHA-256", validation_alias=AliasChoices("kafka_sasl_mechanism", "KAFKA_SASL_MECHANISM")
    )
    kafka_sasl_username: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        validation_alias=AliasChoices("kafka_sasl_username", "KAFKA_SASL_USERNAME"),
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        validation_alias=AliasChoices("kafka_sasl_password", "KAFKA_SASL_PASSWORD"),
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("kafka_ssl_cafile", "KAFKA_SSL_CAFILE"),
        description="CA bundle to verify the brokers with under SASL_SSL (default: the system's).",
    )
    mongodb_database: str = Field(
        default="flow8", validation_alias=AliasChoices("mongodb_database", "MONGODB_DATABASE")
    )
    server_port: int = Field(default=4454, ge=0, le=65535, validation_alias=AliasChoices("server_port", "SERVER_PORT"))
    server_host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("server_host", "SERVER_HOST"))
    advertised_host: str = Field(
        default_factory=socket.gethostname,
        validation_alias=AliasChoices("advertised_host", "ADVERTISED_HOST"),
        description="How other workers reach this one's HTTP port (default: the host name).",
    )
    channel_port_range: str = Field(
        default="7701-7799", validation_alias=AliasChoices("channel_port_range", "CHANNEL_PORT_RANGE")
    )
    channel_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        validation_alias=AliasChoices("channel_pool_size", "CHANNEL_POOL_SIZE"),
        description="At most this many channels at once; the whole port range when unset (the seed's 7701-7799 "
        "holds 99 ports). They start when tasks wait for them: see channel_pool_warm.",
    )
    channel_pool_warm: int = Field(
        default=2,
        validation_alias=AliasChoices("channel_pool_warm", "CHANNEL_POOL_WARM"),
        description="Channels started with the pool (capped at CHANNEL_POOL_SIZE); the others start one by one "
        "when a task waits and no channel is idle.",
    )
    replica: int | None = Field(
        default=None,
        ge=0,
        le=999_999,
        description="This instance's ordinal, which picks its range in channel_ranges_file (FLOW8_REPLICA; unset "
        "or empty: the number that ends the host name, as a StatefulSet pod's flow8-worker-2 ends in 2).",
    )
    channel_ranges_file: Path | None = Field(
        default=None,
        description="The seed's ranges.yaml (FLOW8_CHANNEL_RANGES_FILE): a list of {replica: N, range: LOW-HIGH}; "
        "the instance's CHANNEL_PORT_RANGE is its replica's range (CHANNEL_PORT_RANGE itself is then not given).",
    )
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        pattern=r"^[A-Za-z0-9._-]+$",
        validation_alias=AliasChoices("worker_id", "WORKER_ID"),
        description="Names this instance (its data folder too); default host name and pid.",
    )
    group_id: str = Field(default="flow8", pattern=r"^[A-Za-z0-9._-]+$")
    data_dir: Path = Path(".flow8")
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    transactions: Literal["partition", "worker"] = Field(
        default="worker",
        description="Exactly-once: one transaction per worker whose commits the consumer group fences by "
        "generation (KIP-447), or one per input partition (faust's own, the default before 0.2; deprecated: it "
        "loses plays when the group rebalances under load).",
    )
    commit_interval_ms: int = Field(
        default=100,
        ge=10,
        le=60_000,
        description="The longest a worker waits between two commits of its transactions.",
    )
    commit_linger_ms: int = Field(
        default=2,
        ge=0,
        le=60_000,
        description="A commit starts this long after a record is done, to take the ones done with it "
        "(at most commit_interval_ms).",
    )
    session_timeout_ms: int = Field(
        default=6_000,  # the broker's least (group.min.session.timeout.ms): a dead worker's partitions move soonest
        ge=3_000,
        le=300_000,
        description="How long the group waits for a silent worker before its partitions go to the others "
        "(heartbeats run on the consumer's own thread, so a busy event loop does not trip it).",
    )
    store_timeout_ms: int = Field(
        default=30_000,
        ge=100,
        le=600_000,
        description="Bound on one MongoDB operation: past it the call fails (a flowlet retries it) instead of waiting.",
    )
    store_wait_seconds: float = Field(
        default=60,
        ge=0,
        le=3_600,
        description="How long a flowlet's KV call waits out a MongoDB outage (a try every 3 s) before its attempt "
        "fails and the flowlet's retry policy takes over. The projector and the orchestrator wait as long as the "
        "outage lasts (the worker stays up, /readyz 503).",
    )
    executor_concurrency: int = Field(default=64, ge=1, le=10_000)
    projector_batch: int = Field(default=500, ge=1, le=100_000)
    topics: Topics = Topics()
    cache: Caches = Caches()
    execution: Execution = Execution()
    http: Http = Http()
    limits: Limits = Limits()
    channel_token_key: SecretStr | None = Field(
        default=None,
        description="The key completion tokens are minted with (FLOW8_CHANNEL_TOKEN_KEY: 32+ random bytes, hex or "
        "base64url). Unset: one kept in the SQLite file (embedded) or MongoDB's meta collection (streams).",
    )
    channel_token_key_file: Path | None = Field(
        default=None, description="A file holding channel_token_key (readable by its owner only)."
    )
    kv_incr_dedup_seconds: float = Field(
        default=86_400,
        gt=0,
        le=366 * 86_400,
        description="How long a kv.incr operation id is remembered (a redelivered or retried op within it counts "
        "nothing); at least the longest redelivery: execution.max_timeout_seconds plus session_timeout_ms.",
    )
    kv_incr_dedup_window: int | None = Field(
        default=None, description="Deprecated and ignored: operation ids are kept by age (kv_incr_dedup_seconds)."
    )
    module_threads: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Threads that run plain (not async) modules; a thread stuck past its flowlet's timeout is "
        "replaced, up to as many again.",
    )
    retention: Retention = Retention()
    audit_signing_key: Path | None = Field(
        default=None,
        description="An Ed25519 private key (flow8 audit keygen; readable by its owner only): the embedded runtime "
        "and each streams worker sign checkpoints of the chain heads they write with it.",
    )
    audit_public_key: Path | None = Field(
        default=None,
        description="flow8 serve: check each verdict against the checkpoints this Ed25519 public key signed "
        "(audit-signing.pub): the db's on --db, the workers' flow8.checkpoints on --streams.",
    )
    audit_checkpoint_seconds: float = Field(
        default=60,
        gt=0,
        le=86_400,
        description="How often a signed checkpoint is written (and when the runtime closes).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines: text, or one JSON object per line (flow8 --log-format)."
    )

    @field_validator("channel_port_range")
    @classmethod
    def _check_range(cls, value: str) -> str:
        ports = _port_range(value, "CHANNEL_PORT_RANGE")
        return f"{ports.start}-{ports.stop - 1}"

    @field_validator("replica", mode="before")
    @classmethod
    def _blank_replica(cls, value: object) -> object:
        # an env var from a label the cluster does not set is empty: the host name then says
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("channel_pool_warm")
    @classmethod
    def _check_warm(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"CHANNEL_POOL_WARM {value} must be 0 or more")
        return value

    @model_validator(mode="after")
    def _kafka_login(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        given = [name for name, value in self._kafka_login_fields() if value is not None]
        if sasl and len(given) < 2:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL {self.kafka_security_protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD (from the environment or the settings file)"
            )
        if not sasl and given:
            raise ValueError(
                f"{' and '.join(given)} set but KAFKA_SECURITY_PROTOCOL is {self.kafka_security_protocol}: "
                "set it to SASL_PLAINTEXT or SASL_SSL to log in, or unset them"
            )
        if self.kafka_ssl_cafile is not None:
            if self.kafka_security_protocol != "SASL_SSL":
                raise ValueError("KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL is not SASL_SSL")
            if not self.kafka_ssl_cafile.is_file():
                raise ValueError(f"KAFKA_SSL_CAFILE {self.kafka_ssl_cafile}: no such file")
        return self

    def _kafka_login_fields(self) -> list[tuple[str, object]]:
        return [("KAFKA_SASL_USERNAME", self.kafka_sasl_username), ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password)]

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        if self.kafka_security_protocol != "SASL_SSL":
            return None
        cafile = str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile is not None else None
        return ssl.create_default_context(cafile=cafile)

    def kafka_client_options(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client of flow8 is made with: where, and how to log in."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None  # _kafka_login
            options |= {
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": self.kafka_sasl_password.get_secret_value(),
                "ssl_context": self.kafka_ssl_context(),
            }
        return options

    @model_validator(mode="after")
    def _range_of_replica(self) -> Settings:
        """With channel_ranges_file, CHANNEL_PORT_RANGE is the range of this replica (before _pool_fits checks it)."""
        if self.channel_ranges_file is None:
            return self
        if "channel_port_range" in self.model_fields_set:
            raise ValueError(
                "CHANNEL_PORT_RANGE and FLOW8_CHANNEL_RANGES_FILE are both set: give one (the file gives each "
                "replica its range)"
            )
        ranges = read_channel_ranges(self.channel_ranges_file, self.limits)
        replica = self.replica if self.replica is not None else replica_of_host(socket.gethostname())
        self.channel_port_range = channel_range_of(ranges, replica, self.channel_ranges_file)
        return self

    @model_validator(mode="after")
    def _pool_fits(self) -> Settings:
        size = len(self.channel_ports)
        if self.server_port in self.channel_ports:
            raise ValueError(
                f"SERVER_PORT {self.server_port} is inside CHANNEL_PORT_RANGE {self.channel_port_range}; "
                "give the HTTP server a port of its own"
            )
        if self.channel_pool_size is None:
            self.channel_pool_size = size
        elif self.channel_pool_size > size:
            raise ValueError(
                f"CHANNEL_POOL_SIZE {self.channel_pool_size} is larger than CHANNEL_PORT_RANGE "
                f"{self.channel_port_range} ({size} ports)"
            )
        return self

    @model_validator(mode="after")
    def _dedup_outlives_redelivery(self) -> Settings:
        longest = self.execution.max_timeout_seconds + self.session_timeout_ms / 1000
        if self.kv_incr_dedup_seconds < longest:
            raise ValueError(
                f"kv_incr_dedup_seconds {self.kv_incr_dedup_seconds:g} is shorter than the longest redelivery of a "
                f"task ({longest:g} s: execution.max_timeout_seconds plus session_timeout_ms); an increment could "
                "count twice"
            )
        if self.kv_incr_dedup_window is not None:
            logging.getLogger("flow8.settings").warning(
                "kv_incr_dedup_window is ignored: kv.incr operation ids are kept for kv_incr_dedup_seconds (%g s)",
                self.kv_incr_dedup_seconds,
            )
        return self

    @property
    def channel_ports(self) -> range:
        low, high = (int(p) for p in self.channel_port_range.split("-"))
        return range(low, high + 1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get("path")
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


_CONFIG_FILE: dict[str, Path | None] = {}


def load_settings(config: Path | None = None, **flags: Any) -> Settings:
    """Build settings from flags (None values are ignored), env, then the YAML file."""
    path = config or (Path(os.environ["FLOW8_CONFIG"]) if os.environ.get("FLOW8_CONFIG") else None)
    if path is not None and not path.is_file():
        raise InvalidInput(f"settings file {path}: no such file")
    _CONFIG_FILE["path"] = path
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: "
            + ("unknown setting" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, "))
            for e in exc.errors(include_url=False)
        )
        where = f" (settings file {path}, environment, flags)" if path is not None else ""
        raise InvalidInput(f"invalid settings{where}: {problems}") from None
    finally:
        _CONFIG_FILE.pop("path", None)
