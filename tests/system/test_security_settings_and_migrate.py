"""Refusals at start (weak webhook secrets, Kafka security settings), the PostgreSQL pool size,
and `wazza-hooks migrate` with consumers told not to migrate on start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from consumers.settings import ConsumerSettings
from consumers.store import open_store
from consumers.store.migrations import KNOWN, MigrationsPending
from consumers.store.schema import MIGRATIONS, VERSION_TABLE
from ingest.settings import IngestSettings
from tests.support.commands import hooks
from tests.support.env import SECRET, subprocess_env
from wazza_hooks.config import ConfigError
from wazza_hooks.kafka_client import KafkaSecurity


@pytest.mark.parametrize("weak", ["change-me", "ChangeMe", "Secret", "password", "test", "short"])
def test_weak_webhook_secrets_are_refused_without_showing_them(weak: str) -> None:
    with pytest.raises(ConfigError, match="WAZZA_WEBHOOK_SECRETS") as caught:
        IngestSettings.from_env({"WAZZA_WEBHOOK_SECRETS": f"{SECRET},{weak}"})
    assert weak not in str(caught.value)


def test_the_tests_secret_is_accepted() -> None:
    assert len(IngestSettings.from_env({"WAZZA_WEBHOOK_SECRETS": SECRET}).wazza_secrets) == 1


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nope.pem"}, "KAFKA_SSL_CAFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
            "KAFKA_SASL_USERNAME",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": "alice",
            },
            "KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "a",
                "KAFKA_SASL_PASSWORD": "b",
            },
            "KAFKA_SASL_MECHANISM",
        ),
    ],
)
def test_kafka_security_is_validated_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        KafkaSecurity.from_env(env)
    with pytest.raises(ConfigError, match=named):
        ConsumerSettings.from_env(env)


def test_the_sasl_password_is_never_shown() -> None:
    security = KafkaSecurity.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "scram-sha-256",
            "KAFKA_SASL_USERNAME": "alice",
            "KAFKA_SASL_PASSWORD": "hunter2-hunter2",
        }
    )
    assert "hunter2" not in repr(security)
    assert "hunter2" not in security.describe()
    options = security.client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_password"] == "hunter2-hunter2"


@pytest.mark.parametrize(
    ("value", "ok"), [("1", True), ("100", True), ("0", False), ("101", False)]
)
def test_the_pool_size_is_bounded(value: str, ok: bool) -> None:
    env = {"WAZZA_PG_POOL_SIZE": value}
    if ok:
        assert ConsumerSettings.from_env(env).pg_pool_size == int(value)
    else:
        with pytest.raises(ConfigError, match="WAZZA_PG_POOL_SIZE"):
            ConsumerSettings.from_env(env)


async def test_the_postgres_pool_has_the_size_asked(postgres_dsn: str) -> None:
    store = await open_store(postgres_dsn, pool_size=7)
    try:
        assert store._pool.get_max_size() == 7  # type: ignore[attr-defined]
    finally:
        await store.close()


def _set_version(db: Path, version: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM schema_version WHERE version > ?", (version,))
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


async def test_migrate_shows_applies_and_refuses_a_newer_store(tmp_path: Path) -> None:
    db = tmp_path / "wazza.db"
    url = f"sqlite:///{db}"
    env = subprocess_env(DATABASE_URL=url)

    shown = await hooks("migrate", "--show", env=env)
    assert shown.code == 0, shown
    assert f"schema version 0; this code knows {KNOWN}" in shown.out
    assert "  1  pending  CREATE TABLE IF NOT EXISTS jobs (" in shown.out
    assert not db.exists()  # --show changes nothing

    done = await hooks("migrate", env=env)
    assert done.code == 0, done
    assert f"schema version {KNOWN}" in done.out
    assert (await hooks("migrate", "--show", env=env)).out.count("applied ") == KNOWN
    assert "up to date" in (await hooks("migrate", "--database-url", url)).out

    _set_version(db, KNOWN + 1)
    refused = await hooks("migrate", env=env)
    assert refused.code == 1, refused
    assert "newer than this code" in refused.err
    assert "downgrade" in refused.err


async def test_a_consumer_told_not_to_migrate_refuses_pending_migrations(tmp_path: Path) -> None:
    db = tmp_path / "wazza.db"
    url = f"sqlite:///{db}"
    with sqlite3.connect(db) as conn:  # a store left at version 2 by an older release
        conn.execute(VERSION_TABLE)
        for statement in [*MIGRATIONS[0], *MIGRATIONS[1]]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
    with pytest.raises(MigrationsPending, match="wazza-hooks migrate"):
        await open_store(url, migrate=False)

    result = await hooks_consumer(url)
    assert result[0] == 1, result
    pending = ", ".join(str(n) for n in range(3, KNOWN + 1))
    assert f"migrations {pending} are pending" in result[1]
    assert "WAZZA_MIGRATE_ON_START" in result[1]

    assert (await hooks("migrate", env=subprocess_env(DATABASE_URL=url))).code == 0
    store = await open_store(url, migrate=False)  # now current: opens
    await store.close()


async def hooks_consumer(url: str) -> tuple[int, str]:
    """`wazza-consumer completion` with WAZZA_MIGRATE_ON_START=false: its exit code and stderr."""
    import asyncio

    from tests.support.env import BIN

    proc = await asyncio.create_subprocess_exec(
        str(BIN / "wazza-consumer"), "completion", "--metrics-port", "0",
        env=subprocess_env(DATABASE_URL=url, WAZZA_MIGRATE_ON_START="false",
                           KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, err.decode()
