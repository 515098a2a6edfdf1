"""A consumer service's settings: read once from the environment, validated, frozen."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from wazza_hooks import contract
from wazza_hooks.config import ConfigError, Env, default_instance_id
from wazza_hooks.kafka_client import PLAINTEXT, KafkaSecurity

from .start_from import FROM_BEGINNING, StartFrom, parse_start_from

_HISTORY_RETENTION = "WAZZA_HISTORY_RETENTION_SECONDS"
# The history was the dedup keys' table before migration 5; deployments that set the former
# name keep their window.
_FORMER_HISTORY_RETENTION = "WAZZA_DEDUP_RETENTION_SECONDS"


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """Everything a consumer service is configured with."""

    database_url: str = "sqlite:///./var/wazza.db"
    """DATABASE_URL: sqlite:///path (default ./var/wazza.db) or postgresql://..."""
    bootstrap_servers: str = "localhost:9092"
    """KAFKA_BOOTSTRAP_SERVERS."""
    enable_idempotence: bool = True
    """KAFKA_ENABLE_IDEMPOTENCE: for the dead-letter producer; off for the local broker."""
    raw_topic: str = contract.RAW_TOPIC
    """WAZZA_RAW_TOPIC."""
    dlq_topic: str = contract.DLQ_TOPIC
    """WAZZA_DLQ_TOPIC."""
    batch_size: int = 500
    """WAZZA_CONSUMER_BATCH_SIZE: records per batch (one store transaction)."""
    history_retention_seconds: int = 7 * 24 * 3600
    """WAZZA_HISTORY_RETENTION_SECONDS (formerly WAZZA_DEDUP_RETENTION_SECONDS, still read
    when the new name is unset): how long the service's history rows, which are its dedup keys,
    are kept; must outlast the sender's whole retry span (5 attempts with exponential backoff)
    and any replay window."""
    group_prefix: str = "wazza-"
    """WAZZA_GROUP_PREFIX: the consumer group is this plus the service name."""
    instance_id: str = ""
    """WAZZA_INSTANCE_ID: host:pid by default."""
    max_body_bytes: int = 1024 * 1024
    """WAZZA_MAX_BODY_BYTES: the ingester's body limit (the same variable), so that the
    dead-letter producer takes every record the ingester accepted."""
    pg_pool_size: int = 4
    """WAZZA_PG_POOL_SIZE: connections to PostgreSQL per process (1..100). A service writes one
    batch at a time, so a few cover its batch, its health checks and the reconciler; raise it
    for a user's service that queries on its own."""
    migrate_on_start: bool = True
    """WAZZA_MIGRATE_ON_START: apply pending store migrations at start. false: a deployment
    that runs `wazza-hooks migrate` as its own step; the service then refuses to start (exit 1)
    while migrations are pending."""
    kafka_security: KafkaSecurity = PLAINTEXT
    """KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_*, KAFKA_SASL_*: how the consumer and the dead-letter
    producer reach the brokers (wazza_hooks/kafka_client.py)."""
    start_from: StartFrom = FROM_BEGINNING
    """WAZZA_START_FROM (or `--start-from`): beginning, now or an ISO-8601 time; where the
    service's first start reads from (consumers/start_from.py). Later starts continue from the
    stored offsets."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsumerSettings:
        """Read and validate; raises ConfigError naming the variable at fault."""
        env = Env(environ)
        url = env.text("DATABASE_URL", "sqlite:///./var/wazza.db")
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError("DATABASE_URL must start with sqlite:/// or postgresql://")
        return cls(
            database_url=url,
            bootstrap_servers=env.text("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            enable_idempotence=env.flag("KAFKA_ENABLE_IDEMPOTENCE", True),
            raw_topic=env.text("WAZZA_RAW_TOPIC", contract.RAW_TOPIC),
            dlq_topic=env.text("WAZZA_DLQ_TOPIC", contract.DLQ_TOPIC),
            batch_size=env.integer("WAZZA_CONSUMER_BATCH_SIZE", 500, minimum=1, maximum=50_000),
            history_retention_seconds=env.integer(
                _HISTORY_RETENTION
                if _HISTORY_RETENTION in (environ if environ is not None else os.environ)
                else _FORMER_HISTORY_RETENTION,
                7 * 24 * 3600,
                minimum=3600,
                maximum=365 * 86400,
            ),
            group_prefix=env.text("WAZZA_GROUP_PREFIX", "wazza-"),
            instance_id=env.text("WAZZA_INSTANCE_ID", default_instance_id()),
            max_body_bytes=env.integer(
                "WAZZA_MAX_BODY_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024
            ),
            pg_pool_size=env.integer("WAZZA_PG_POOL_SIZE", 4, minimum=1, maximum=100),
            migrate_on_start=env.flag("WAZZA_MIGRATE_ON_START", True),
            kafka_security=KafkaSecurity.from_env(environ),
            start_from=_start_from(env.text("WAZZA_START_FROM", "beginning")),
        )


def _start_from(text: str) -> StartFrom:
    try:
        return parse_start_from(text)
    except ValueError as exc:
        raise ConfigError(f"WAZZA_START_FROM: {exc}") from None
