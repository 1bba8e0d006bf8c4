"""Prisma's migration history for a change made by a runbook: the migration folder and ``_prisma_migrations``.

After the full rollback, Prisma must see the same history the database has, or the next
``prisma migrate deploy`` / ``migrate dev`` would try to recreate the dropped tables or report drift. So the
DDL that was run is written as ``prisma/migrations/<timestamp>_<name>/migration.sql`` next to the schema
file, and recorded as applied in ``_prisma_migrations`` with the checksum Prisma's schema engine computes:
SHA-256 of the script text, rendered as 64 zero-padded lowercase hex digits
(``schema-engine/connectors/schema-connector/src/checksum.rs`` in prisma/prisma-engines;
:func:`runbook_lib.prisma.migrate.checksum`). When Prisma compares, it also accepts the script with CRLF
and LF line endings swapped, and old rows without zero padding; :func:`prisma_checksum_matches` does the same.
"""

# ruff: noqa: S608  - the table name is quoted by quote_ident; values are bind parameters

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import quote_ident
from ..errors import EvidenceError, ParameterError
from .migrate import checksum

_NAME = re.compile(r"^[a-z0-9_]{1,200}$")
LOCK_FILE = 'provider = "postgresql"\n'


def migrations_dir(schema_path: str | Path) -> Path:
    """``prisma/migrations`` next to the schema file, as Prisma's CLI expects it."""
    return Path(schema_path).resolve().parent / "migrations"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ParameterError(f"parameter 'migration_name': {name!r} must be lower-case letters, digits and _ "
                             "(Prisma's folder naming), e.g. remove_vouchers", "migration_name")
    return name


def next_migration_name(folder: Path, name: str, now: dt.datetime | None = None) -> str:
    """``<UTC timestamp>_<name>``, later than every existing migration (Prisma applies them in name order)."""
    check_name(name)
    ts = int((now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y%m%d%H%M%S"))
    if folder.is_dir():
        existing = [int(p.name[:14]) for p in folder.iterdir() if p.is_dir() and re.match(r"^\d{14}_", p.name)]
        if existing and max(existing) >= ts:
            ts = max(existing) + 1
    return f"{ts}_{name}"


def render_sql(steps: list[tuple[str, str]], header: list[str] | None = None) -> str:
    """A migration script in Prisma's style: ``-- Comment`` then the statement, blank line between steps."""
    parts = [f"-- {line}".rstrip() for line in (header or [])]
    out = "\n".join(parts) + ("\n\n" if parts else "")
    out += "\n\n".join(f"-- {comment}\n{sql.rstrip().rstrip(';')};" for comment, sql in steps)
    return out + "\n"


def prisma_checksum_matches(script: str, recorded: str) -> bool:
    """Prisma's comparison: the script as is, with CRLF->LF, or LF->CRLF; unpadded hex for old rows."""
    for variant in (script, script.replace("\r\n", "\n"), script.replace("\n", "\r\n")):
        digest = hashlib.sha256(variant.encode()).digest()
        rendered = digest.hex() if len(recorded) == 64 else "".join(f"{b:x}" for b in digest)
        if rendered == recorded:
            return True
    return False


def history_table(conn: Connection, db_schema: str) -> str | None:
    """The quoted ``_prisma_migrations`` table when it exists (a database managed by ``prisma migrate``)."""
    name = f"{quote_ident(db_schema)}.{quote_ident('_prisma_migrations')}"
    return name if conn.execute(sa.text("select to_regclass(:t)"), {"t": name}).scalar() is not None else None


def record_applied(conn: Connection, db_schema: str, migration_name: str, script: str) -> dict[str, Any] | None:
    """Insert the row ``prisma migrate deploy`` would have written for ``script`` (in the caller's transaction).

    Returns None when the database has no ``_prisma_migrations`` table (not managed by prisma migrate).
    """
    table = history_table(conn, db_schema)
    if table is None:
        return None
    exists = conn.execute(sa.text(f"select 1 from {table} where migration_name = :n"), {"n": migration_name}).first()
    if exists:
        raise EvidenceError(f"_prisma_migrations already has a migration named {migration_name!r}; "
                            "choose another migration_name")
    row = {"id": str(uuid.uuid4()), "checksum": checksum(script), "migration_name": migration_name}
    conn.execute(sa.text(
        f"insert into {table} (id, checksum, migration_name, logs, rolled_back_at, started_at, finished_at, "
        "applied_steps_count) values (:id, :checksum, :migration_name, null, null, now(), clock_timestamp(), 1)"),
        row)
    return row


def write_migration(folder: Path, migration_name: str, script: str) -> Path:
    """Write ``<folder>/<migration_name>/migration.sql`` (never over an existing folder) and return its path."""
    new_root = not folder.exists()
    target = folder / migration_name
    if target.exists():
        raise EvidenceError(f"migration folder {target} already exists; nothing was written there")
    target.mkdir(parents=True)
    path = target / "migration.sql"
    path.write_bytes(script.encode("utf-8"))
    if new_root and not (folder / "migration_lock.toml").exists():
        (folder / "migration_lock.toml").write_text(
            "# Please do not edit this file manually\n# It should be added in your version-control system (e.g., Git)\n"
            + LOCK_FILE)
    if checksum(path.read_bytes()) != checksum(script):
        raise EvidenceError(f"{path} does not read back as written")
    return path


@dataclass
class HistoryEntry:
    migration_name: str
    in_database: bool
    in_folder: bool
    checksum_matches: bool | None
    finished: bool
    rolled_back: bool

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def compare(conn: Connection, db_schema: str, folder: Path) -> list[HistoryEntry]:
    """Prisma's view of the history: every migration in the folder or the table, and whether they agree."""
    table = history_table(conn, db_schema)
    rows: dict[str, tuple[str, bool, bool]] = {}
    if table is not None:
        for name, chk, finished, rolled in conn.execute(sa.text(
                f"select migration_name, checksum, finished_at is not null, rolled_back_at is not null from {table} "
                "order by started_at")):
            if not rolled or name not in rows:
                rows[name] = (chk, bool(finished), bool(rolled))
    files: dict[str, str] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_dir() and (p / "migration.sql").is_file():
                files[p.name] = (p / "migration.sql").read_bytes().decode("utf-8")
    out = []
    for name in sorted(set(rows) | set(files)):
        db_row = rows.get(name)
        matches = prisma_checksum_matches(files[name], db_row[0]) if db_row and name in files else None
        out.append(HistoryEntry(name, db_row is not None, name in files, matches,
                                bool(db_row and db_row[1]), bool(db_row and db_row[2])))
    return out


def agrees(entries: list[HistoryEntry]) -> bool:
    """True when every folder is applied with a matching checksum and every applied row has its folder."""
    return all(e.in_database and e.in_folder and e.checksum_matches and e.finished and not e.rolled_back
               for e in entries)
