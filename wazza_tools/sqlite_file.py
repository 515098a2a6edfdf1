"""Which file a SQLite store URL opens, said by the tools that read or change the store."""

from __future__ import annotations

import sys


def say_sqlite_file(url: str) -> None:
    """One line on stderr naming the file a SQLite URL with a relative path opens: it is taken
    from the folder the command runs in, which the person typing may not have in mind (an
    absolute path names itself). Raises StoreError for a URL that names no usable path
    (consumers/store/sqlite.py `sqlite_path`)."""
    if not url.startswith("sqlite:"):
        return
    from consumers.store.sqlite import sqlite_path

    path = sqlite_path(url)
    if not path.is_absolute():
        print(f"wazza-hooks: store {url}: the file {path.absolute()}", file=sys.stderr)
