"""The schema, as numbered migrations applied at start (the same tables on both databases)."""

from __future__ import annotations

# Each migration is a list of statements; a store records the highest number applied.
# BIGINT and DOUBLE PRECISION read the same to SQLite (INTEGER and REAL affinity).
MIGRATIONS: list[list[str]] = [
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
]

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
