"""Prisma's migration state, as ``prisma migrate status`` / ``migrate resolve`` see it, read from the database.

Every migration gets one status, from ``_prisma_migrations`` (the newest row per name) and, when given,
the app's ``prisma/migrations`` folder:

* ``applied``        finished, not rolled back, checksum equal to the file's (or no folder to compare with)
* ``failed``         started, never finished, not rolled back: blocks ``prisma migrate deploy`` (P3009)
* ``rolled back``    marked rolled back (``migrate resolve --rolled-back``): deploy will apply it again
* ``pending``        in the folder, not in the table: the next deploy applies it
* ``modified``       applied, but the file's checksum differs (the file was edited after it was applied)
* ``missing locally`` in the table, not in the folder (someone deleted it, or the folder is another branch)

For a failed migration, :func:`statement_effects` splits its ``migration.sql`` into statements (sqlparse)
and checks each DDL statement against the catalog, so the operator sees which steps took effect.
"""

# ruff: noqa: S608  - the table name is quoted by quote_ident; values are bind parameters

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .history import history_table, prisma_checksum_matches
from .migrate import checksum

NEXT_ACTION = {
    "applied": "nothing to do",
    "failed": "find which steps took effect (below), then resolve: --rolled-back (after undoing them) or "
              "--applied (after completing them by hand)",
    "rolled back": "fix the migration file if needed; the next `prisma migrate deploy` applies it again",
    "pending": "`prisma migrate deploy` applies it (once no migration is failed)",
    "modified": "restore the file as it was applied (git), or create a new migration for the change; never edit "
                "applied migrations",
    "missing locally": "restore the folder from version control; deploy ignores it but `migrate dev` reports drift",
}


@dataclass
class MigrationStatus:
    name: str
    status: str
    started_at: Any = None
    finished_at: Any = None
    rolled_back_at: Any = None
    applied_steps_count: int | None = None
    logs: str | None = None
    checksum_db: str | None = None
    checksum_file: str | None = None
    rows: int = 0

    def as_row(self) -> dict[str, Any]:
        return {"migration": self.name, "status": self.status, "started_at": self.started_at,
                "finished_at": self.finished_at, "rolled_back_at": self.rolled_back_at,
                "applied_steps": self.applied_steps_count, "rows": self.rows,
                "checksum matches": None if self.checksum_file is None or self.checksum_db is None
                else self.checksum_db == self.checksum_file or self.status != "modified",
                "next action": NEXT_ACTION[self.status], "logs": (self.logs or "")[:500]}


def folder_migrations(folder: Path | None) -> dict[str, bytes]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: (p / "migration.sql").read_bytes() for p in sorted(folder.iterdir())
            if p.is_dir() and (p / "migration.sql").is_file()}


def migration_statuses(conn: Connection, db_schema: str = "public", folder: Path | None = None
                       ) -> list[MigrationStatus]:
    """One status per migration name, in name order (Prisma applies migrations in that order)."""
    table = history_table(conn, db_schema)
    latest: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    if table is not None:
        for r in conn.execute(sa.text(
                f"select migration_name, checksum, started_at, finished_at, rolled_back_at, applied_steps_count, "
                f"logs from {table} order by started_at, finished_at nulls last")).mappings():
            latest[r["migration_name"]] = dict(r)
            counts[r["migration_name"]] = counts.get(r["migration_name"], 0) + 1
    files = folder_migrations(folder)
    out: list[MigrationStatus] = []
    for name in sorted(set(latest) | set(files)):
        row: dict[str, Any] | None = latest.get(name)
        file_sum = checksum(files[name]) if name in files else None
        if row is None:
            out.append(MigrationStatus(name, "pending", checksum_file=file_sum))
            continue
        if row["rolled_back_at"] is not None:
            status = "rolled back"
        elif row["finished_at"] is None:
            status = "failed"
        elif folder is not None and name not in files:
            status = "missing locally"
        elif name in files and not prisma_checksum_matches(files[name].decode("utf-8"), row["checksum"]):
            status = "modified"
        else:
            status = "applied"
        out.append(MigrationStatus(name, status, row["started_at"], row["finished_at"], row["rolled_back_at"],
                                   row["applied_steps_count"], row["logs"], row["checksum"], file_sum,
                                   counts[name]))
    return out


# ------------------------------------------------------------------------------------------ statements
_IDENT = r'(?:"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*))'


def _name(m: re.Match[str], i: int) -> str:
    quoted, bare = m.group(i), m.group(i + 1)
    return quoted.replace('""', '"') if quoted is not None else bare.lower()


def split_statements(script: str) -> list[str]:
    """The statements of a migration script, comments removed (sqlparse handles quotes, $$ bodies, comments)."""
    import sqlparse

    out = []
    for stmt in sqlparse.split(script):
        clean = sqlparse.format(stmt, strip_comments=True).strip().rstrip(";").strip()
        if clean:
            out.append(clean)
    return out


@dataclass
class StatementEffect:
    index: int
    statement: str
    kind: str
    object: str | None
    took_effect: bool | None  # None: cannot be told from the catalog (data changes, unknown DDL)
    how: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        took = {True: "yes", False: "no", None: "unknown"}[self.took_effect]
        return {"step": self.index, "kind": self.kind, "object": self.object, "took effect": took,
                "how we know": self.how, "statement": self.statement[:300]}


def _rel(conn: Connection, schema: str, name: str) -> bool:
    return conn.execute(sa.text("select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                                "where n.nspname = :s and c.relname = :r"), {"s": schema, "r": name}).first() is not None


def _type(conn: Connection, schema: str, name: str) -> bool:
    return conn.execute(sa.text("select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace "
                                "where n.nspname = :s and t.typname = :t"), {"s": schema, "t": name}).first() is not None


def _column(conn: Connection, schema: str, table: str, col: str) -> bool:
    return conn.execute(sa.text("select 1 from information_schema.columns where table_schema = :s and "
                                "table_name = :t and column_name = :c"), {"s": schema, "t": table, "c": col}
                        ).first() is not None


def _constraint(conn: Connection, schema: str, table: str, name: str) -> bool:
    return conn.execute(sa.text(
        "select 1 from pg_constraint k join pg_class c on c.oid = k.conrelid join pg_namespace n on "
        "n.oid = c.relnamespace where n.nspname = :s and c.relname = :t and k.conname = :k"),
        {"s": schema, "t": table, "k": name}).first() is not None


def _enum_value(conn: Connection, schema: str, typ: str, value: str) -> bool:
    return conn.execute(sa.text(
        "select 1 from pg_enum e join pg_type t on t.oid = e.enumtypid join pg_namespace n on n.oid = t.typnamespace "
        "where n.nspname = :s and t.typname = :t and e.enumlabel = :v"), {"s": schema, "t": typ, "v": value}
    ).first() is not None


_Q = rf"(?:{_IDENT}\.)?{_IDENT}"  # optionally schema-qualified: groups (schema q, schema b, name q, name b)
_RULES: list[tuple[str, str]] = [
    ("create type", rf"^create\s+type\s+{_Q}"),
    ("create table", rf"^create\s+(?:unlogged\s+)?table\s+(?:if\s+not\s+exists\s+)?{_Q}"),
    ("create index", rf"^create\s+(?:unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?{_Q}"),
    ("create view", rf"^create\s+(?:or\s+replace\s+)?(?:materialized\s+)?view\s+{_Q}"),
    ("add column", rf"^alter\s+table\s+(?:only\s+)?{_Q}\s+add\s+(?:column\s+)?(?!constraint\b){_IDENT}"),
    ("add constraint", rf"^alter\s+table\s+(?:only\s+)?{_Q}\s+add\s+constraint\s+{_IDENT}"),
    ("drop column", rf"^alter\s+table\s+(?:only\s+)?{_Q}\s+drop\s+column\s+(?:if\s+exists\s+)?{_IDENT}"),
    ("drop constraint", rf"^alter\s+table\s+(?:only\s+)?{_Q}\s+drop\s+constraint\s+(?:if\s+exists\s+)?{_IDENT}"),
    ("rename column", rf"^alter\s+table\s+(?:only\s+)?{_Q}\s+rename\s+column\s+{_IDENT}\s+to\s+{_IDENT}"),
    ("add enum value", rf"^alter\s+type\s+{_Q}\s+add\s+value\s+(?:if\s+not\s+exists\s+)?'((?:[^']|'')*)'"),
    ("drop table", rf"^drop\s+table\s+(?:if\s+exists\s+)?{_Q}"),
    ("drop type", rf"^drop\s+type\s+(?:if\s+exists\s+)?{_Q}"),
    ("drop index", rf"^drop\s+index\s+(?:concurrently\s+)?(?:if\s+exists\s+)?{_Q}"),
    ("drop view", rf"^drop\s+(?:materialized\s+)?view\s+(?:if\s+exists\s+)?{_Q}"),
]


def statement_effect(conn: Connection, index: int, stmt: str, db_schema: str = "public") -> StatementEffect:
    """Did this statement take effect? Decided from the catalog for the DDL Prisma generates."""
    for kind, rx in _RULES:
        m = re.match(rx, stmt, re.I | re.S)
        if not m:
            continue
        schema = _name(m, 1) if (m.group(1) or m.group(2)) else db_schema
        obj = _name(m, 3)
        if kind in ("create type", "drop type"):
            found = _type(conn, schema, obj)
        elif kind in ("create table", "create index", "create view", "drop table", "drop index", "drop view"):
            found = _rel(conn, schema, obj)
        elif kind in ("add column", "drop column"):
            col = _name(m, 5)
            found, obj = _column(conn, schema, obj, col), f"{obj}.{col}"
        elif kind in ("add constraint", "drop constraint"):
            con = _name(m, 5)
            found, obj = _constraint(conn, schema, obj, con), f"{obj}.{con}"
        elif kind == "rename column":
            new = _name(m, 7)
            found, obj = _column(conn, schema, obj, new), f"{obj}.{_name(m, 5)} -> {new}"
        else:  # add enum value
            value = m.group(5).replace("''", "'")
            found, obj = _enum_value(conn, schema, obj, value), f"{obj}.{value}"
        took = (not found) if kind.startswith("drop") else found
        how = f"{'absent' if not found else 'present'} in the catalog"
        return StatementEffect(index, stmt, kind, obj, took, how)
    return StatementEffect(index, stmt, stmt.split(None, 1)[0].lower() if stmt else "?", None, None,
                           "not a catalog object (data change or unrecognised DDL): check by hand")


def statement_effects(conn: Connection, script: str, db_schema: str = "public") -> list[StatementEffect]:
    return [statement_effect(conn, i, s, db_schema) for i, s in enumerate(split_statements(script), start=1)]


# ------------------------------------------------------------------------------------------ resolve
def mark_rolled_back(conn: Connection, db_schema: str, name: str) -> int:
    """``prisma migrate resolve --rolled-back NAME``: set ``rolled_back_at`` on its failed rows."""
    table = history_table(conn, db_schema)
    assert table is not None
    return conn.execute(sa.text(
        f"update {table} set rolled_back_at = now() where migration_name = :n and finished_at is null "
        "and rolled_back_at is null"), {"n": name}).rowcount


def mark_applied(conn: Connection, db_schema: str, name: str, script: bytes) -> dict[str, Any]:
    """``prisma migrate resolve --applied NAME``: failed rows marked rolled back, then a new finished row
    (``started_at`` = ``finished_at``, no steps applied by Prisma, the file's checksum, ``logs`` empty) — the
    row ``mark_migration_applied_impl`` of Prisma's SQL schema connector inserts."""
    table = history_table(conn, db_schema)
    assert table is not None
    rolled = mark_rolled_back(conn, db_schema, name)
    row = {"id": str(uuid.uuid4()), "checksum": checksum(script), "migration_name": name}
    conn.execute(sa.text(
        f"insert into {table} (id, checksum, migration_name, logs, rolled_back_at, started_at, finished_at, "
        "applied_steps_count) values (:id, :checksum, :migration_name, '', null, now(), now(), 0)"), row)
    return {**row, "failed_rows_marked_rolled_back": rolled}
