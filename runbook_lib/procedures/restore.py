"""Restore (the guide's "If Data Corruption Detected: Restore from backup"), from a `backup` run's archive.

Where the guide is vague or wrong: it says "restore from backup" with no way to see what a restore would
change, and its backup step took no backup. Here the review compares every table of the chosen backup with
the live database (row counts, content checksums, a bounded sample of rows that differ, are missing or are
extra); the execute replaces the chosen tables in **one transaction**, in foreign-key order, then proves the
restored content equals the checksums recorded when the backup was taken. A backup of another database is
refused unless forced. ``into_database`` restores into a new database instead, for investigation.
"""

# ruff: noqa: S608  - identifiers are quoted with quote_ident; values are bind parameters

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator
from sqlalchemy.engine import Connection

from .. import backups, db, pgtools
from ..errors import InvariantError, ParameterError, PolicyAbort
from ..names import NameMap
from ..params import DestructiveParams, identifiers, name_list
from . import register
from .base import VOUCHER_MODELS, ApplyResult, Check, Plan, Procedure, Steps, VerifyResult, plan_hash

NAME = "restore"


class Params(DestructiveParams):
    procedure: ClassVar[str] = NAME

    backup: str = Field("latest", description='the backup: its run folder name in this incident, a path to it, or "latest"')
    restore_tables: list[str] = Field([], description="tables to restore (empty: every table with data in the backup)")
    into_database: str | None = Field(None, description="restore into this new database on the same server instead of the live one")
    force_other_database: bool = Field(False, description="accept a backup taken from a different database (fingerprint differs)")

    @field_validator("restore_tables", mode="before")
    @classmethod
    def _tables(cls, v: Any) -> list[str]:
        return identifiers(name_list(v, limit=500), "table names")

    @field_validator("into_database")
    @classmethod
    def _dbname(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", v):
            raise ValueError(f"{v!r} is not a plain database name (letters, digits, _)")
        return v


class RestoreDetails(TypedDict):
    """What restore's plan hands to apply/check: the backup chosen and the tables it restores."""

    folder: Path  # the backup's run folder
    meta: dict[str, Any]  # the backup's metadata file as loaded (JSON: heterogeneous values, per-table checksums)
    tables: list[str]  # the tables restored (restore_tables, or every table with data in the backup)
    schema: str  # the schema the backup was taken from


def _backup(params: Params) -> tuple[Path, dict[str, Any]]:
    incident = Path(params.evidence_dir).parent if params.evidence_dir else None
    if incident is None and not Path(params.backup).is_dir():
        raise ParameterError("parameter 'backup': give the path of a backup run folder (no incident folder here)",
                             "backup")
    return backups.load_backup(params.backup, incident)


def _dumped_by(meta: dict[str, Any]) -> int:
    """The major version of the pg_dump that wrote the backup: the pg_restore must be at least as new."""
    return pgtools.dump_major((meta.get("pg_dump") or {}).get("version"))


def _chosen(params: Params, meta: dict[str, Any]) -> list[str]:
    available = list(meta["tables"])
    if not params.restore_tables:
        return available
    unknown = [t for t in params.restore_tables if t not in available]
    if unknown:
        raise ParameterError(f"parameter 'restore_tables': {unknown} not in the backup (it has {available})",
                             "restore_tables")
    return list(params.restore_tables)


def guarded_tables(params: Params) -> list[str]:
    """The tables this execute overwrites: the backup guard wants a recent backup of exactly these."""
    return _chosen(params, _backup(params)[1])


def restoring(params: Params) -> dict[str, Any] | None:
    """The backup this execute restores: the backup guard wants one of the current state taken after it."""
    if params.into_database:
        return None
    folder, meta = _backup(params)
    return {"folder": str(folder), "created_at": meta["created_at"]}


def _require_referencing_tables(conn: Connection, schema: str, chosen: list[str]) -> None:
    """Restoring a table in place empties it first; a table referencing it by foreign key must be restored too
    (otherwise TRUNCATE fails, or its rows would point nowhere)."""
    edges = conn.execute(sa.text(
        "select c.relname as child, p.relname as parent from pg_constraint k "
        "join pg_class c on c.oid = k.conrelid join pg_class p on p.oid = k.confrelid "
        "join pg_namespace n on n.oid = p.relnamespace "
        "where k.contype = 'f' and n.nspname = :s and p.relname = any(:t) and c.oid <> p.oid "
        "order by 1, 2"), {"s": schema, "t": chosen}).all()
    missing = sorted({f"{child} (references {parent})" for child, parent in edges if child not in chosen})
    if missing:
        raise ParameterError(
            f"parameter 'restore_tables': also restore {', '.join(missing)}: a table is emptied before it is "
            "restored, and the tables referencing it would be left pointing nowhere", "restore_tables")


def admin_url(conn: Connection) -> str:
    return conn.engine.url.set(database="postgres").render_as_string(hide_password=False)


def db_url(conn: Connection, database: str) -> str:
    return conn.engine.url.set(database=database).render_as_string(hide_password=False)


def _create_database(conn: Connection, name: str, schema: str = "public") -> None:
    """A new, empty database for the archive (whose DDL creates ``schema`` itself)."""
    db.run_autocommit(admin_url(conn), f"CREATE DATABASE {db.quote_ident(name)}")
    db.run_autocommit(db_url(conn, name), f"DROP SCHEMA IF EXISTS {db.quote_ident(schema)}")


def _drop_database(conn: Connection, name: str) -> None:
    db.run_autocommit(admin_url(conn), f"DROP DATABASE IF EXISTS {db.quote_ident(name)} WITH (FORCE)")


def _database_exists(conn: Connection, name: str) -> bool:
    return conn.execute(sa.text("select 1 from pg_database where datname = :d"), {"d": name}).first() is not None


def _pk(conn: Connection, schema: str, table: str) -> list[str]:
    return [r[0] for r in conn.execute(sa.text(
        "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) "
        "where i.indrelid = to_regclass(:t) and i.indisprimary order by array_position(i.indkey, a.attnum)"),
        {"t": backups.qualified(schema, table)})]


def _row_hashes(conn: Connection, schema: str, table: str, pk: list[str]) -> pd.DataFrame:
    key = " || '|' || ".join(f"t.{db.quote_ident(c)}::text" for c in pk) if pk else "md5(t::text)"
    return pd.read_sql(sa.text(f"select {key} as key, md5(t::text) as hash from {backups.qualified(schema, table)} t"),
                       conn)


def _diff_samples(live: Connection, scratch: Connection, schema: str, table: str, k: int) -> pd.DataFrame:
    pk = _pk(live, schema, table)
    a = _row_hashes(live, schema, table, pk).set_index("key")["hash"]
    b = _row_hashes(scratch, schema, table, pk).set_index("key")["hash"]
    missing = b.index.difference(a.index)
    extra = a.index.difference(b.index)
    common = a.index.intersection(b.index)
    changed = common[(a.loc[common] != b.loc[common]).to_numpy()]
    rows = ([{"table": table, "key": x, "difference": "missing live (in the backup)"} for x in list(missing)[:k]]
            + [{"table": table, "key": x, "difference": "extra live (not in the backup)"} for x in list(extra)[:k]]
            + [{"table": table, "key": x, "difference": "changed since the backup"} for x in list(changed)[:k]])
    df = pd.DataFrame(rows, columns=["table", "key", "difference"])
    df.attrs["counts"] = {"missing": len(missing), "extra": len(extra), "changed": len(changed)}
    return df


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan[RestoreDetails]:
    folder, meta = _backup(params)
    info = db.server_info(conn)
    warnings: list[str] = []
    if meta["fingerprint"] != info.fingerprint:
        if not params.force_other_database:
            raise PolicyAbort(f"backup {folder.name} was taken from database {meta['database']!r} (fingerprint "
                              f"{meta['fingerprint']}), not this one ({info.database}, {info.fingerprint}); pass "
                              "force_other_database=true if that is intended")
        warnings.append(f"the backup comes from another database ({meta['database']}): forced")
    chosen = _chosen(params, meta)
    schema = meta.get("schema", names.db_schema)
    if not params.into_database:
        _require_referencing_tables(conn, schema, chosen)
    rows = []
    live: dict[str, Any] = {}
    for t in chosen:
        exists = conn.execute(sa.text("select to_regclass(:q)"), {"q": backups.qualified(schema, t)}).scalar()
        live[t] = backups.table_checksum(conn, schema, t) if exists else None
        b = meta["tables"][t]
        rows.append({"table": t, "rows in backup": b["rows"], "rows live": live[t]["rows"] if live[t] else None,
                     "same content": bool(live[t] and live[t]["md5"] == b["md5"])})
    target = params.into_database
    differing = [r["table"] for r in rows if not r["same content"]]
    frames: dict[str, pd.DataFrame] = {"tables": pd.DataFrame(rows)}
    if target:
        if _database_exists(conn, target):
            raise PolicyAbort(f"database {target!r} exists already; restore into another database only creates a new "
                              "one (choose another into_database)")
        nothing = False
    else:
        nothing = not differing
        missing = [t for t in chosen if live[t] is None]
        if missing:
            raise PolicyAbort(f"tables {missing} do not exist live; restore them into another database first "
                              "(into_database) or re-create the schema")
    if detail and differing and not target:
        frames["differences"] = _sample_differences(conn, folder / meta["archive"], schema, differing,
                                                    params.sample_rows, _dumped_by(meta))
        counts = frames["differences"].attrs.get("counts", {})
        for r in rows:
            r.update(counts.get(r["table"], {}))
        frames["tables"] = pd.DataFrame(rows)
    summary: dict[str, Any] = {"backup": folder.name, "backup taken": meta["created_at"],
                               "tables": len(chosen), "tables that differ": len(differing),
                               "restore into": target or f"{info.database} (live)", "nothing_to_do": nothing}
    digest = {"archive": meta["archive_sha256"], "tables": chosen, "live": live, "into": target}
    return Plan(NAME, plan_hash(NAME, digest), summary, frames, warnings,
                details=RestoreDetails(folder=folder, meta=meta, tables=chosen, schema=schema))


def _sample_differences(conn: Connection, archive: Path, schema: str, tables_: list[str], k: int,
                        dumped_by: int = 0) -> pd.DataFrame:
    """Restore the archive into a scratch database, compare row by row, drop it."""
    scratch = f"rb_restore_{uuid.uuid4().hex[:10]}"
    _create_database(conn, scratch, schema)
    try:
        backups.restore_archive(db_url(conn, scratch), archive, pgtools.server_major(conn), dumped_by=dumped_by)
        eng = db.create_engine(db_url(conn, scratch), poolclass=sa.pool.NullPool)
        try:
            with eng.connect() as sc:
                parts = [_diff_samples(conn, sc, schema, t, k) for t in tables_]
        finally:
            eng.dispose()
    finally:
        _drop_database(conn, scratch)
    out = pd.concat(parts, ignore_index=True)
    out.attrs["counts"] = {t: p.attrs["counts"] for t, p in zip(tables_, parts, strict=True)}
    return out


def lock(conn: Connection, params: Params, names: NameMap) -> None:
    if params.into_database:
        return
    folder, meta = _backup(params)
    chosen = _chosen(params, meta)
    schema = meta.get("schema", names.db_schema)
    conn.exec_driver_sql("LOCK TABLE " + ", ".join(backups.qualified(schema, t) for t in chosen)
                         + " IN ACCESS EXCLUSIVE MODE")


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan[RestoreDetails]) -> ApplyResult:
    meta, schema, chosen = plan.details["meta"], plan.details["schema"], plan.details["tables"]
    archive = plan.details["folder"] / meta["archive"]
    major, dumped_by = pgtools.server_major(conn), _dumped_by(meta)
    if params.into_database:
        _create_database(conn, params.into_database, schema)
        try:
            backups.restore_archive(db_url(conn, params.into_database), archive, major, dumped_by=dumped_by)
        except Exception:
            _drop_database(conn, params.into_database)
            raise
        skipped = backups.restore_post_data(db_url(conn, params.into_database), archive, major, dumped_by)
        return ApplyResult(True, {"restored_into": params.into_database, "tables": len(meta["tables"]),
                                  "constraints_not_restored": skipped},
                           [f"restored {archive.name} into the new database {params.into_database}"
                            + (f" ({skipped} constraints/indexes need rows outside the backup and were left out)"
                               if skipped else "")])
    scratch = f"rb_restore_{uuid.uuid4().hex[:10]}"
    _create_database(conn, scratch, schema)
    try:
        backups.restore_archive(db_url(conn, scratch), archive, major, dumped_by=dumped_by)
        eng = db.create_engine(db_url(conn, scratch), poolclass=sa.pool.NullPool)
        try:
            with eng.connect() as sc:
                counts = backups.copy_tables(sc, conn, schema, chosen)
        finally:
            eng.dispose()
    finally:
        _drop_database(conn, scratch)
    return ApplyResult(True, {"rows_restored": counts, "tables": len(chosen)},
                       [f"restored {len(chosen)} tables from {plan.details['folder'].name} in one transaction"])


def check(conn: Connection, params: Params, names: NameMap, plan: Plan[RestoreDetails], result: ApplyResult) -> None:
    if params.into_database:
        return
    meta, schema = plan.details["meta"], plan.details["schema"]
    bad = [t for t in plan.details["tables"]
           if backups.table_checksum(conn, schema, t) != {"rows": meta["tables"][t]["rows"],
                                                           "md5": meta["tables"][t]["md5"]}]
    if bad:
        raise InvariantError(f"after the restore {bad} differ from the backup's checksums; rolled back")


def verify(conn: Connection, params: Params, names: NameMap, plan: Plan[RestoreDetails] | None) -> VerifyResult:
    folder, meta = _backup(params)
    chosen = _chosen(params, meta)
    schema = meta.get("schema", names.db_schema)
    if params.mode != "execute":
        return VerifyResult(checks=[Check("review only: nothing restored", True, 0, folder.name)])
    if params.into_database:
        eng = db.create_engine(db_url(conn, params.into_database), poolclass=sa.pool.NullPool)
        try:
            with eng.connect() as other:
                got = {t: backups.table_checksum(other, schema, t) for t in chosen}
        finally:
            eng.dispose()
    else:
        got = {t: backups.table_checksum(conn, schema, t) for t in chosen}
    bad = [t for t in chosen if got[t]["md5"] != meta["tables"][t]["md5"]]
    where = params.into_database or "the live database"
    return VerifyResult(checks=[Check(f"restored tables in {where} equal the backup's checksums", not bad, len(bad),
                                      ", ".join(bad) or f"{len(chosen)} tables match")])


@register
class Restore(Procedure):
    """Restore: in place (destructive, guarded by a backup of the tables it overwrites) or into another database."""

    NAME = NAME
    NOTEBOOK = "restore.ipynb"
    TITLE = "Compare a backup with the live tables; restore them in one transaction (or into another database)"
    GUIDE_SECTION = "If Data Corruption Detected: Restore from backup"
    Params = Params
    steps = Steps(plan=plan, lock=lock, apply=apply, check=check, verify=verify)
    tables = VOUCHER_MODELS
    destructive = True

    def is_destructive(self, params: Any) -> bool:
        return bool(params.into_database is None)  # restoring into a new database overwrites nothing

    def wants_shared_checks(self, params: Any) -> bool:
        """The shared checks look at the live database: meaningless when the restore went elsewhere."""
        return bool(params.into_database is None)

    def guarded_tables(self, params: Any) -> list[str]:
        return guarded_tables(params)

    def restoring(self, params: Any) -> dict[str, Any] | None:
        return restoring(params)

    def for_a_copy(self, conn: Connection, values: dict[str, Any], incident: Path | None) -> dict[str, Any]:
        """The backup named is one of the live database; the copy has its own fingerprint, so restore would refuse
        it as "from another database". It is resolved here (in the incident, as the real run would) and accepted on
        the copy only when it was taken from the live target itself."""
        folder, meta = backups.load_backup(str(values.get("backup", "latest")), incident)
        out = {**values, "backup": str(folder.resolve())}
        if meta.get("fingerprint") == db.server_info(conn).fingerprint:
            out["force_other_database"] = True
        return out
