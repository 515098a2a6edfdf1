"""`wazza-hooks migrate`: apply the store's pending migrations as a step of its own.

For deployments that start consumers with WAZZA_MIGRATE_ON_START=false (a consumer then refuses
to start while migrations are pending): run this first, once, with the database owner's URL.
`--show` lists the migrations applied and pending without changing anything. A store migrated
by a newer release (its version past this code's) is refused: a downgrade is never attempted.
Exit codes: 0 done; 1 the store cannot be reached or is too new; 2 a bad argument.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys

from consumers.store import StoreError, open_store
from consumers.store.migrations import KNOWN, listing, refuse_newer, sqlite_version
from wazza_hooks.config import redact_url
from wazza_tools.options import add_database_url, database_url
from wazza_tools.sqlite_file import say_sqlite_file


def add_migrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `migrate` subcommand."""
    parser = sub.add_parser(
        "migrate",
        help="apply the store's pending migrations (or list them with --show)",
        description=(
            "Apply the consumers' store migrations that are pending. Run it before consumers "
            "started with WAZZA_MIGRATE_ON_START=false. A store migrated by a newer release is "
            "refused (exit 1): nothing is downgraded."
        ),
        epilog=(
            "examples:\n  wazza-hooks migrate --show\n"
            "  DATABASE_URL=postgresql://owner@db/wazza wazza-hooks migrate"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_database_url(parser)
    parser.add_argument(
        "--show", action="store_true", help="list applied and pending migrations; change nothing"
    )


def run_migrate(args: argparse.Namespace) -> int:
    """Run `wazza-hooks migrate`; returns the exit code."""
    url = database_url(args)
    shown = redact_url(url)
    try:
        return asyncio.run(_migrate(url, shown, args.show))
    except (StoreError, OSError, sqlite3.Error) as exc:
        message = str(exc) if shown in str(exc) else f"the store at {shown}: {exc}"
        print(f"wazza-hooks: {message}", file=sys.stderr)
        return 1


async def _migrate(url: str, shown: str, show: bool) -> int:
    say_sqlite_file(url)
    version = await store_version(url)
    if show:
        print(f"{shown}: schema version {version}; this code knows {KNOWN}")
        for migration in listing(version):
            state = "applied" if migration.applied else "pending"
            print(f"  {migration.number:>3}  {state:<8} {migration.summary}")
        if version > KNOWN:
            print(f"  the store has {version - KNOWN} migration(s) this code does not know")
        return 0
    refuse_newer(version, shown)
    if version == KNOWN:
        print(f"{shown}: up to date (schema version {version})")
        return 0
    store = await open_store(url)  # applies the pending migrations, under the store's lock
    await store.close()
    applied = ", ".join(str(n) for n in range(version + 1, KNOWN + 1))
    print(f"{shown}: applied migration(s) {applied}; schema version {KNOWN}")
    return 0


async def store_version(url: str) -> int:
    """The schema version the store at `url` records, changing nothing (0: none yet, or a SQLite
    file that does not exist)."""
    if url.startswith("sqlite:"):
        from consumers.store.sqlite import sqlite_path

        path = sqlite_path(url)
        if not path.is_file():
            return 0
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return sqlite_version(conn)
        finally:
            conn.close()
    if url.startswith(("postgresql:", "postgres:")):
        import asyncpg

        dsn = "postgresql:" + url.split(":", 1)[1] if url.startswith("postgres:") else url
        try:
            conn = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot reach PostgreSQL at {redact_url(url)}: {exc}") from exc
        try:
            if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
                return 0
            return int(await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0)
        finally:
            await conn.close()
    raise StoreError(f"DATABASE_URL must start with sqlite:/// or postgresql://, got {url[:20]!r}")


# As the consumers' store: a database that is down is reported after this long.
_CONNECT_TIMEOUT_SECONDS = 5.0
