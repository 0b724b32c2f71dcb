"""``python -m service.migrate``: bring the database schema to the latest revision, once.

What a deploy runs before the API starts (the Helm chart's pre-install/pre-upgrade hook Job),
with ``OPENFT_MIGRATE_ON_START=false`` on the API. It migrates under the same PostgreSQL
advisory lock as the API's own start-up migration, so two hooks, or a hook and a replica,
take turns and the second finds nothing to do. Exit 0 with what it did; exit 1 with one line
(no traceback, the password masked) when the database cannot be reached or refuses.
"""

from __future__ import annotations

import sys

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from service.db import make_engine, migrate
from service.settings import Settings


def masked(url: str) -> str:
    """The URL as it may be printed: the password replaced by ``***``.

    >>> masked("postgresql+psycopg2://openft:s3cret@db:5432/openft")
    'postgresql+psycopg2://openft:***@db:5432/openft'
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparseable database URL)"


def _reason(error: BaseException, url: str) -> str:
    """The first line of what the driver said, with the password removed should it echo it."""
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    line = lines[0] if lines else type(cause).__name__
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    return line.replace(str(password), "***") if password else line


def main() -> int:
    url = Settings().resolved_database_url
    try:
        done = migrate(make_engine(url))
    except (SQLAlchemyError, OSError, ImportError) as e:  # ImportError: no such driver
        print(f"openft migrate: cannot migrate {masked(url)}: {_reason(e, url)}",
              file=sys.stderr, flush=True)
        return 1
    print(f"openft migrate: {done.describe()} on {masked(url)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
