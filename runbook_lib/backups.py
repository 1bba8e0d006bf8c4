"""Backups in the incident's evidence: pg_dump archives with checksums computed in the database.

A backup run folder holds ``backup.dump`` (pg_dump custom format: the whole schema, and the data of the
chosen tables) and ``backup.json``: per table the row count and a content checksum, computed in the same
snapshot that pg_dump dumped (``pg_export_snapshot`` + ``pg_dump --snapshot``), the target's fingerprint,
the pg_dump version, and the archive's ``pg_restore --list`` check. Destructive procedures look for such a
backup in their incident (:func:`require_recent_backup`).
"""

# ruff: noqa: S608  - identifiers are quoted with quote_ident; values are bind parameters

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tempfile
from collections.abc import Iterable
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import pgtools
from .db import quote_ident
from .errors import BackupRequiredError, EvidenceError, NotFoundError

ARCHIVE = "backup.dump"
META = "backup.json"


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


# Settings that change how a row prints as text: fixed while a checksum is computed, so two databases (or
# sessions) with another TimeZone, DateStyle … still agree on identical content.
CANONICAL_TEXT_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
                           "extra_float_digits": "1", "bytea_output": "hex"}


def table_checksum(conn: Connection, schema: str, table: str) -> dict[str, Any]:
    """Row count and an order-independent content checksum of one table, computed in the database.

    The rows are printed with :data:`CANONICAL_TEXT_SETTINGS` (set for this statement's transaction, then put
    back), so the checksum depends on the content only, not on the session's or database's settings."""
    names = list(CANONICAL_TEXT_SETTINGS)
    old = conn.execute(sa.text("select " + ", ".join(f"current_setting(:n{i})" for i in range(len(names)))),
                       {f"n{i}": n for i, n in enumerate(names)}).one()
    _set_local(conn, CANONICAL_TEXT_SETTINGS)
    try:
        row = conn.execute(sa.text(
            f"select count(*), md5(coalesce(string_agg(h, '' order by h), '')) from "
            f"(select md5(t::text) as h from {qualified(schema, table)} t) s")).one()
    finally:
        _set_local(conn, dict(zip(names, old, strict=True)))
    return {"rows": int(row[0]), "md5": str(row[1])}


def _set_local(conn: Connection, settings: dict[str, str]) -> None:
    conn.execute(sa.text("select " + ", ".join(f"set_config(:k{i}, :v{i}, true)" for i in range(len(settings)))),
                 {**{f"k{i}": k for i, k in enumerate(settings)}, **{f"v{i}": v for i, v in enumerate(settings.values())}})


def table_checksums(conn: Connection, schema: str, tables: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {t: table_checksum(conn, schema, t) for t in tables}


def all_tables(conn: Connection, schema: str) -> list[str]:
    return [r[0] for r in conn.execute(sa.text(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = :s "
        "and c.relkind in ('r', 'p') order by 1"), {"s": schema})]


def fk_order(conn: Connection, schema: str, tables: list[str]) -> list[str]:
    """``tables`` with referenced tables before the tables that reference them (self-references ignored)."""
    edges = conn.execute(sa.text(
        "select c.relname, p.relname from pg_constraint k join pg_class c on c.oid = k.conrelid "
        "join pg_class p on p.oid = k.confrelid join pg_namespace n on n.oid = c.relnamespace "
        "where k.contype = 'f' and n.nspname = :s"), {"s": schema}).all()
    ts: TopologicalSorter[str] = TopologicalSorter()
    for t in tables:
        ts.add(t, *{p for c, p in edges if c == t and p in tables and p != t})
    with contextlib.suppress(CycleError):  # get_ready still yields everything outside the cycle
        ts.prepare()
    out: list[str] = []
    while ts.is_active():  # level by level, each level sorted by name
        ready = sorted(ts.get_ready())
        out.extend(ready)
        ts.done(*ready)
    seen = set(out)  # a cycle: keep the given order for the rest
    return out + [t for t in dict.fromkeys(tables) if t not in seen]


def take_backup(engine: sa.engine.Engine, url: str, schema: str, tables: list[str], out_dir: Path,
                fingerprint: str, database: str) -> dict[str, Any]:
    """Dump the whole schema and the data of ``tables`` into ``out_dir``; record checksums of that snapshot."""
    archive = out_dir / ARCHIVE
    if archive.exists():
        raise EvidenceError(f"{archive} exists already; backups are never overwritten")
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            major = pgtools.server_major(conn)
            dump = pgtools.find_tool("pg_dump", major)
            restore = pgtools.find_tool("pg_restore", major, at_least=dump.major)
            snapshot = conn.execute(sa.text("select pg_export_snapshot()")).scalar_one()
            others = [t for t in all_tables(conn, schema) if t not in tables]
            args = ["--format=custom", f"--file={archive}", f"--snapshot={snapshot}", "--no-owner", "--no-acl",
                    f"--schema={quote_ident(schema)}"]
            args += [f"--exclude-table-data={quote_ident(schema)}.{quote_ident(t)}" for t in others]
            pgtools.run_tool(dump, url, args)
            sums = table_checksums(conn, schema, tables)  # the same snapshot pg_dump saw
    listing = pgtools.run_tool(restore, url, ["--list", str(archive)], database=False)
    data_entries = [t for t in tables if f"TABLE DATA {schema} {t} " in listing]
    if sorted(data_entries) != sorted(tables):
        raise EvidenceError(f"pg_restore --list does not show the data of {sorted(set(tables) - set(data_entries))}")
    meta = {
        "kind": "runbook-backup", "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "database": database, "fingerprint": fingerprint, "schema": schema, "tables": sums,
        "pg_dump": {"path": str(dump.path), "version": dump.version}, "archive": ARCHIVE,
        "archive_bytes": archive.stat().st_size, "archive_sha256": _sha256(archive),
        "pg_restore_list": {"ok": True, "entries": sum(1 for line in listing.splitlines()
                                                       if line and not line.startswith(";"))},
    }
    (out_dir / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _sha256(path: Path) -> str:
    from .evidence import sha256_file

    return sha256_file(path)


def find_backups(incident_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every backup of the incident, newest first (run folders holding a backup.json and its archive)."""
    out = []
    for meta in sorted(Path(incident_dir).glob(f"*/{META}")):
        try:
            data = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("kind") == "runbook-backup" and (meta.parent / data.get("archive", ARCHIVE)).is_file():
            out.append((meta.parent, data))
    return sorted(out, key=lambda x: x[1].get("created_at", ""), reverse=True)


def load_backup(path: str | Path, incident_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """A backup by folder path, or by run-folder name (or 'latest') inside the incident."""
    p = Path(path)
    if not (p / META).is_file() and incident_dir is not None:
        if str(path) == "latest":
            found = find_backups(incident_dir)
            if not found:
                raise NotFoundError(f"no backup in incident {incident_dir}")
            return found[0]
        p = incident_dir / str(path)
    if not (p / META).is_file():
        raise NotFoundError(f"{path}: not a backup folder (no {META}); give the run folder of a backup run")
    data = json.loads((p / META).read_text())
    archive = p / data.get("archive", ARCHIVE)
    if not archive.is_file():
        raise NotFoundError(f"{archive} is missing")
    if _sha256(archive) != data.get("archive_sha256"):
        raise EvidenceError(f"{archive} does not match the SHA-256 recorded when it was taken: it was altered")
    return p, data


def require_recent_backup(incident_dir: Path, tables: list[str], fingerprint: str, max_age: dt.timedelta,
                          override_reason: str | None, restoring: dict[str, Any] | None = None) -> dict[str, Any]:
    """The newest backup in the incident of this target covering ``tables`` and younger than ``max_age``.

    ``restoring`` (a restore's source backup: ``folder``, ``created_at``): the backup that protects the current
    state must be another one, taken after it — the archive being restored is not a backup of what it overwrites.
    """
    now = dt.datetime.now(dt.UTC)
    altered: list[str] = []
    source = Path(restoring["folder"]).resolve() if restoring else None
    for folder, meta in find_backups(incident_dir):
        if meta.get("fingerprint") != fingerprint or not set(tables) <= set(meta.get("tables", {})):
            continue
        if restoring and (folder.resolve() == source or meta.get("created_at", "") < restoring["created_at"]):
            continue
        age = now - dt.datetime.fromisoformat(meta["created_at"])
        if age <= max_age:
            # a backup that could not be restored protects nothing: its archive must be the one recorded
            if _sha256(folder / meta.get("archive", ARCHIVE)) != meta.get("archive_sha256"):
                altered.append(folder.name)
                continue
            return {"backup": folder.name, "created_at": meta["created_at"], "age_hours": round(age.total_seconds()
                    / 3600, 2), "tables": sorted(meta["tables"])}
    if override_reason:
        return {"backup": None, "override_reason": override_reason}
    why = (f" ({', '.join(altered)}: archive altered since it was taken, SHA-256 differs)" if altered else "")
    fix = (f"run `runbook run backup --incident {incident_dir.name} -p models \"[{', '.join(tables)}]\"` and then "
           f"with `--execute --approve PLAN_ID` first, or pass backup_override_reason (recorded)")
    if restoring:
        raise BackupRequiredError(
            f"restoring {Path(restoring['folder']).name} (taken {restoring['created_at']}) overwrites {', '.join(tables)}, "
            f"and incident {incident_dir.name} holds no backup of their current state taken after it (the backup "
            f"being restored does not count){why}: {fix}", tables=tables)
    raise BackupRequiredError(
        f"no backup of {', '.join(tables)} from this database younger than {max_age.total_seconds() / 3600:g} h in "
        f"incident {incident_dir.name}{why}: run `runbook run backup --incident {incident_dir.name} --execute "
        "--approve PLAN_ID` first, or pass backup_override_reason (recorded)", tables=tables)


def restore_archive(url: str, archive: Path, server_major: int, tables: list[str] | None = None,
                    data_only: bool = False, sections: tuple[str, ...] = ("pre-data", "data"),
                    dumped_by: int = 0) -> None:
    """pg_restore the archive into the (new, empty) database of ``url``, in one transaction.

    By default only the tables and their data (``pre-data``, ``data``): the backup holds the data of the
    chosen tables only, so foreign keys to tables outside it (``User``) cannot be re-created there.
    ``dumped_by``: the major version of the pg_dump that wrote it (an older pg_restore cannot read it).
    """
    args = ["--no-owner", "--no-acl"]
    args += [f"--section={s}" for s in sections]
    if data_only:
        args.append("--data-only")
    for t in tables or []:
        args.append(f"--table={t}")
    pgtools.pg_restore(url, archive, args, server_major, at_least=dumped_by)


def restore_post_data(url: str, archive: Path, server_major: int, dumped_by: int = 0) -> int:
    """Indexes, constraints and triggers, each on its own: those that need rows outside the backup fail.
    Returns how many could not be created (pg_restore reports them; they are listed in its output)."""
    try:
        return pgtools.pg_restore(url, archive, ["--no-owner", "--no-acl", "--section=post-data"], server_major,
                                  at_least=dumped_by, single_transaction=False)
    except Exception:  # noqa: BLE001 - a failure that is not "errors ignored on restore: N"
        return -1


def copy_tables(source: Connection, target: Connection, schema: str, tables: list[str]) -> dict[str, int]:
    """Replace ``tables`` in ``target`` (its caller's transaction) by their content in ``source``.

    TRUNCATE all of them at once, then COPY each in foreign-key order (parents first), spooled through a
    temporary file: set-based, bounded memory, and the caller's transaction makes it all-or-nothing.
    """
    ordered = fk_order(target, schema, tables)
    target.exec_driver_sql("TRUNCATE " + ", ".join(qualified(schema, t) for t in ordered))
    src_raw: Any = source.connection.dbapi_connection
    dst_raw: Any = target.connection.dbapi_connection
    assert src_raw is not None and dst_raw is not None
    counts: dict[str, int] = {}
    for t in ordered:
        with tempfile.SpooledTemporaryFile(max_size=64 << 20, mode="w+b") as buf:
            with src_raw.cursor() as cur:
                cur.copy_expert(f"COPY {qualified(schema, t)} TO STDOUT (FORMAT binary)", buf)
            buf.seek(0)
            with dst_raw.cursor() as cur:
                cur.copy_expert(f"COPY {qualified(schema, t)} FROM STDIN (FORMAT binary)", buf)
                counts[t] = cur.rowcount
    return counts
