"""The schema, as numbered migrations applied at start (the same tables on both databases)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PerDialect:
    """A statement that SQLite and PostgreSQL spell differently."""

    sqlite: str
    """SQLite's spelling."""
    postgresql: str
    """PostgreSQL's spelling."""


Statement = str | PerDialect
"""One statement of a migration: the same on both databases, or spelt per dialect."""


def spelt(statement: Statement, dialect: str) -> str:
    """`statement` as `dialect` (`sqlite` or `postgresql`) takes it."""
    if isinstance(statement, str):
        return statement
    return statement.sqlite if dialect == "sqlite" else statement.postgresql


# The readable event id of an `event_history` row (consumers/store/keys.py: the key in hex unless
# a name is kept beside it), per dialect.
_ID_SQLITE = "COALESCE(event_name, lower(hex(event_key)))"
_ID_POSTGRESQL = "COALESCE(event_name, encode(event_key, 'hex'))"
# Migration 5 carries `job_events` over: an id that is 64 lowercase hex digits becomes its 32
# bytes, any other is hashed (keys.event_key; SQLite's is that Python function, registered by
# the store as wazza_event_key) and kept as its name.
_HEX_ID_POSTGRESQL = "event_id ~ '^[0-9a-f]{64}$'"
_HISTORY_COLUMNS = (
    "job_id, service, event_key, event_name, event_type, event_time_ms, applied_ms, kept_ms, "
    "outcome, topic, kafka_partition, kafka_offset"
)
_CARRIED = (
    "h.event_type, h.event_time_ms, h.applied_ms, COALESCE(p.processed_ms, h.applied_ms), "
    "h.outcome, h.topic, h.kafka_partition, h.kafka_offset "
    "FROM job_events h LEFT JOIN processed_events p "
    "ON p.service = h.service AND p.event_id = h.event_id"
)
_HISTORY_TABLE = """CREATE TABLE IF NOT EXISTS event_history (
            job_id TEXT NOT NULL,
            service TEXT NOT NULL,
            event_key {key} NOT NULL,
            event_name TEXT,
            event_type TEXT NOT NULL,
            event_time_ms BIGINT NOT NULL,
            applied_ms BIGINT NOT NULL,
            kept_ms BIGINT NOT NULL,
            outcome TEXT NOT NULL,
            topic TEXT NOT NULL,
            kafka_partition INTEGER NOT NULL,
            kafka_offset BIGINT NOT NULL,
            PRIMARY KEY (job_id, service, event_key)
        ){suffix}"""

# Each migration is a list of statements; a store records the highest number applied.
# BIGINT and DOUBLE PRECISION read the same to SQLite (INTEGER and REAL affinity).
MIGRATIONS: list[list[Statement]] = [
    [
        """CREATE TABLE IF NOT EXISTS jobs (
            job_id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            percent DOUBLE PRECISION,
            stage TEXT,
            eta_seconds DOUBLE PRECISION,
            output TEXT,
            error TEXT,
            metadata TEXT,
            progress_rank TEXT,
            terminal_rank TEXT,
            terminal_event_id TEXT,
            last_progress_ms BIGINT,
            finished_ms BIGINT,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, updated_ms)",
        """CREATE TABLE IF NOT EXISTS job_events (
            service TEXT NOT NULL,
            event_id TEXT NOT NULL,
            job_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            event_time_ms BIGINT NOT NULL,
            applied_ms BIGINT NOT NULL,
            outcome TEXT NOT NULL,
            topic TEXT NOT NULL,
            kafka_partition INTEGER NOT NULL,
            kafka_offset BIGINT NOT NULL,
            PRIMARY KEY (service, event_id)
        )""",
        "CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, event_time_ms)",
        """CREATE TABLE IF NOT EXISTS processed_events (
            service TEXT NOT NULL,
            event_id TEXT NOT NULL,
            processed_ms BIGINT NOT NULL,
            PRIMARY KEY (service, event_id)
        )""",
        "CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (processed_ms)",
        """CREATE TABLE IF NOT EXISTS consumer_offsets (
            service TEXT NOT NULL,
            topic TEXT NOT NULL,
            kafka_partition INTEGER NOT NULL,
            next_offset BIGINT NOT NULL,
            PRIMARY KEY (service, topic, kafka_partition)
        )""",
    ],
    # 2: dead letters sent back (`wazza-hooks dlq redrive`), one row a dead-letter record; the
    # event id tells a record apart from another at the same position of a recreated topic.
    [
        """CREATE TABLE IF NOT EXISTS dlq_redrives (
            dlq_topic TEXT NOT NULL,
            dlq_partition INTEGER NOT NULL,
            dlq_offset BIGINT NOT NULL,
            event_id TEXT NOT NULL,
            service TEXT NOT NULL,
            requested_ms BIGINT NOT NULL,
            published_ms BIGINT,
            raw_partition INTEGER,
            raw_offset BIGINT,
            PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset, event_id)
        )""",
    ],
    # 3: the id of the topic the stored offsets were taken from (Kafka's topic id), so that a
    # topic deleted and recreated is told from the one the offsets belong to
    # (consumers/log_identity.py). NULL: stored before this, or by a broker without topic ids.
    ["ALTER TABLE consumer_offsets ADD COLUMN topic_id TEXT"],
    # 4: dead letters the dead-letter topic refused (a record too large for it, say), kept here
    # so that one record can never stop a service; `wazza-hooks dlq list` shows them. The record
    # as base64 text, so that one schema serves both databases.
    [
        """CREATE TABLE IF NOT EXISTS dead_letters (
            service TEXT NOT NULL,
            topic TEXT NOT NULL,
            kafka_partition INTEGER NOT NULL,
            kafka_offset BIGINT NOT NULL,
            error_class TEXT NOT NULL,
            error_message TEXT NOT NULL,
            refusal TEXT NOT NULL,
            record_key TEXT,
            record_value TEXT NOT NULL,
            record_headers TEXT NOT NULL,
            kept_ms BIGINT NOT NULL,
            PRIMARY KEY (service, topic, kafka_partition, kafka_offset)
        )""",
    ],
    # 5: the history is the dedup: one `event_history` row per service and distinct event, its
    # outcome for people to read and its key for the service to drop a copy by, both written in
    # one row where `job_events` and `processed_events` took two (measured on SQLite: 22k rows/s
    # for the pair, against 64.6k for the keys alone). Keyed by job first, so a job's rows sit
    # together: a batch's events of one job share a page, and its history is one range. The
    # event id as 32 bytes (consumers/store/keys.py); WITHOUT ROWID on SQLite, where the row
    # lives in the key's own B-tree instead of a second one. `kept_ms`: until when (plus the
    # retention) the row is kept, the time it was taken, renewed by a redrive by another
    # service so that the copy still meets it. Every dedup key has its history row (they were
    # written and redriven together), so the rows carry every key over, with its time.
    # `job_events` and `processed_events` stay as read-only views for their readers.
    [
        PerDialect(
            _HISTORY_TABLE.format(key="BLOB", suffix=" WITHOUT ROWID"),
            _HISTORY_TABLE.format(key="BYTEA", suffix=""),
        ),
        PerDialect(
            f"INSERT INTO event_history ({_HISTORY_COLUMNS}) "
            "SELECT h.job_id, h.service, wazza_event_key(h.event_id), "
            "CASE WHEN length(h.event_id) = 64 AND NOT h.event_id GLOB '*[^0-9a-f]*' "
            f"THEN NULL ELSE h.event_id END, {_CARRIED}",
            f"INSERT INTO event_history ({_HISTORY_COLUMNS}) "
            f"SELECT h.job_id, h.service, CASE WHEN h.{_HEX_ID_POSTGRESQL} "
            "THEN decode(h.event_id, 'hex') "
            "ELSE sha256(convert_to('wazza-event-id:' || h.event_id, 'UTF8')) END, "
            f"CASE WHEN h.{_HEX_ID_POSTGRESQL} THEN NULL ELSE h.event_id END, {_CARRIED}",
        ),
        "DROP TABLE processed_events",
        "DROP TABLE job_events",
        # Pruning takes a service's oldest rows; a replay finds its first offsets since a time.
        "CREATE INDEX IF NOT EXISTS event_history_kept ON event_history (service, kept_ms)",
        PerDialect(
            f"CREATE VIEW job_events AS SELECT service, {_ID_SQLITE} AS event_id, "  # noqa: S608 - constants
            "job_id, event_type, event_time_ms, applied_ms, outcome, topic, kafka_partition, "
            "kafka_offset FROM event_history",
            f"CREATE VIEW job_events AS SELECT service, {_ID_POSTGRESQL} AS event_id, "  # noqa: S608 - constants
            "job_id, event_type, event_time_ms, applied_ms, outcome, topic, kafka_partition, "
            "kafka_offset FROM event_history",
        ),
        PerDialect(
            f"CREATE VIEW processed_events AS SELECT service, {_ID_SQLITE} AS event_id, "  # noqa: S608 - constants
            "kept_ms AS processed_ms FROM event_history",
            f"CREATE VIEW processed_events AS SELECT service, {_ID_POSTGRESQL} AS event_id, "  # noqa: S608 - constants
            "kept_ms AS processed_ms FROM event_history",
        ),
    ],
]

EVENT_ID_SQL = {"sqlite": _ID_SQLITE, "postgresql": _ID_POSTGRESQL}
"""The readable event id of an `event_history` row, per dialect."""

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
