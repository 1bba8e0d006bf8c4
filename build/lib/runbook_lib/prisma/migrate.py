"""Apply a Prisma migrations folder as ``prisma migrate deploy`` does, recording ``_prisma_migrations``.

Used to build the demo database and the test databases from ``demo/prisma/migrations``.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: the table Prisma's schema engine creates (PostgreSQL flavour)
PRISMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)
"""


def checksum(script: str | bytes) -> str:
    """The checksum Prisma stores for a migration: SHA-256 of the migration.sql bytes, lowercase hex."""
    data = script.encode() if isinstance(script, str) else script
    return hashlib.sha256(data).hexdigest()


def migration_dirs(migrations_dir: str | Path) -> list[Path]:
    root = Path(migrations_dir)
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "migration.sql").is_file())


def deploy(conn: Connection, migrations_dir: str | Path, upto: str | None = None) -> list[str]:
    """Apply every migration not yet recorded, in name order (stopping after ``upto``); return their names."""
    conn.exec_driver_sql(PRISMA_MIGRATIONS_DDL)
    done = {r[0] for r in conn.execute(sa.text(
        'select migration_name from "_prisma_migrations" where finished_at is not null and rolled_back_at is null'))}
    applied: list[str] = []
    for d in migration_dirs(migrations_dir):
        if d.name in done:
            continue
        raw = (d / "migration.sql").read_bytes()
        mid = str(uuid.uuid4())
        conn.execute(sa.text('insert into "_prisma_migrations" (id, checksum, migration_name, started_at) '
                             "values (:id, :c, :n, now())"), {"id": mid, "c": checksum(raw), "n": d.name})
        conn.exec_driver_sql(raw.decode())
        conn.execute(sa.text('update "_prisma_migrations" set finished_at = now(), applied_steps_count = 1 '
                             "where id = :id"), {"id": mid})
        applied.append(d.name)
        if upto and d.name == upto:
            break
    return applied
