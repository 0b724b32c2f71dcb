"""A fresh database for a test or a bench: SQLite in a folder, or a PostgreSQL database on the
local server (trust auth), dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_database(prefix: str = "openft_test") -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database_for(kind: str, tmp_path, prefix: str = "openft_test") -> Iterator[str]:
    """A database URL of ``kind``: ``sqlite`` (a file under ``tmp_path``) or ``postgresql``
    (a fresh database named ``<prefix>_...``, dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'openft.db'}"
        return
    with fresh_database(prefix) as url:
        yield url
