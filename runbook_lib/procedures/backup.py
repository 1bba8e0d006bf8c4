"""Backup (the guide's Step 1): a pg_dump archive of the tables a procedure touches, in the incident's evidence.

Where the guide is wrong: its Step 1 is ``npx prisma db execute --file=backup.sql``. That command *runs* the
SQL in ``backup.sql`` against the database; it backs nothing up. This procedure runs ``pg_dump`` (custom
format, a version at least the server's), records per-table row counts and content checksums computed in the
database in the very snapshot pg_dump dumped, and checks the archive with ``pg_restore --list``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, NotRequired, TypedDict

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator
from sqlalchemy.engine import Connection

from .. import backups, db, pgtools
from .. import names as nmod
from ..errors import InvariantError, ParameterError
from ..names import NameMap
from ..params import CommonParams, name_list
from . import register
from .base import VOUCHER_MODELS, ApplyResult, Check, Plan, Procedure, Steps, VerifyResult, plan_hash

NAME = "backup"
DEFAULT_MODELS = list(VOUCHER_MODELS)


class Params(CommonParams):
    procedure: ClassVar[str] = NAME

    models: list[str] = Field(list(DEFAULT_MODELS), description="Prisma models (or table names) to back up; the whole schema's DDL is always included")

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> list[str]:
        return name_list(v, limit=500, allow_empty=False)




class BackupDetails(TypedDict):
    """What the backup's plan hands to apply/check: the tables to dump and the server they are on."""

    tables: list[str]  # real table names of ``params.models``
    info: db.ServerInfo  # the target (fingerprint and database name go into the backup's metadata)
    #: set by :func:`apply`: ``backups.take_backup``'s metadata (archive size, per-table rows and md5,
    #: ``pg_restore --list`` result): JSON of mixed values, hence ``Any``
    meta: NotRequired[dict[str, Any]]


def table_names(conn: Connection, params: Any, names: NameMap, models: list[str]) -> list[str]:
    """Real table names of the models (schema.prisma / reflection / maps); a missing one is an error."""
    nmod.require(conn, names, {m: [] for m in models})
    return [names.table_name(m) for m in models]


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan[BackupDetails]:
    tbls = table_names(conn, params, names, params.models)
    major = pgtools.server_major(conn)
    dump = pgtools.find_tool("pg_dump", major)
    info = db.server_info(conn)
    rows: list[dict[str, Any]] = []
    for t in tbls:
        r = conn.execute(sa.text(
            "select pg_total_relation_size(to_regclass(:q)), (select reltuples::bigint from pg_class where oid = "
            "to_regclass(:q))"), {"q": backups.qualified(names.db_schema, t)}).one()
        rows.append({"table": t, "estimated rows": max(int(r[1]), 0), "size (MB)": round(int(r[0]) / 1e6, 2)})
    summary = {"tables": len(tbls), "estimated rows": sum(int(r["estimated rows"]) for r in rows),
               "size on disk (MB)": round(sum(float(r["size (MB)"]) for r in rows), 2),
               "pg_dump": f"{dump.version} ({dump.path})", "server": info.server_version}
    return Plan(NAME, plan_hash(NAME, sorted(tbls), info.fingerprint, names.db_schema), summary,
                frames={"tables": pd.DataFrame(rows)}, details=BackupDetails(tables=tbls, info=info))




def apply(conn: Connection, params: Params, names: NameMap, plan: Plan[BackupDetails]) -> ApplyResult:
    if not params.evidence_dir:
        raise ParameterError("backup writes into the run's evidence folder: run it with `runbook run backup "
                             "--incident ID`, or set evidence_dir", "evidence_dir")
    out = Path(params.evidence_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = plan.details["info"]
    url = conn.engine.url.render_as_string(hide_password=False)
    meta = backups.take_backup(conn.engine, url, names.db_schema, plan.details["tables"], out, info.fingerprint,
                               info.database)
    counts: dict[str, Any] = {"archive": backups.ARCHIVE, "archive_bytes": meta["archive_bytes"],
                              "tables": {t: v["rows"] for t, v in meta["tables"].items()},
                              "checksums": {t: v["md5"] for t, v in meta["tables"].items()},
                              "pg_restore_list_entries": meta["pg_restore_list"]["entries"]}
    plan.details["meta"] = meta
    return ApplyResult(True, counts, [f"backup of {len(meta['tables'])} tables "
                                      f"({sum(v['rows'] for v in meta['tables'].values())} rows) in {out / 'backup.dump'}"])


def check(conn: Connection, params: Params, names: NameMap, plan: Plan[BackupDetails], result: ApplyResult) -> None:
    meta = plan.details.get("meta") or {}
    if sorted(meta.get("tables", {})) != sorted(plan.details["tables"]):
        raise InvariantError("the backup does not cover every table of the plan")


def verify(conn: Connection, params: Params, names: NameMap, plan: Plan[BackupDetails] | None) -> VerifyResult:
    if params.mode != "execute" or not params.evidence_dir:
        return VerifyResult(checks=[Check("review only: no backup taken", True, 0, "run with --execute to take it")])
    folder, meta = backups.load_backup(params.evidence_dir)  # re-reads the archive and checks its SHA-256
    checks = [Check("archive intact (SHA-256 as recorded)", True, meta["archive_bytes"], str(folder.name)),
              Check("pg_restore --list reads the archive", bool(meta["pg_restore_list"]["ok"]),
                    meta["pg_restore_list"]["entries"], "entries listed")]
    frame = pd.DataFrame([{"table": t, "rows": v["rows"], "md5": v["md5"]} for t, v in meta["tables"].items()])
    return VerifyResult(checks=checks, frames={"checksums": frame})


@register
class Backup(Procedure):
    """Backup: reads the target (the driver makes its transaction READ ONLY); the archive goes to the evidence."""

    NAME = NAME
    NOTEBOOK = "backup.ipynb"
    TITLE = "pg_dump archive of the voucher and token tables into the incident's evidence, with checksums"
    GUIDE_SECTION = "Rollback Procedure, Step 1: Backup Current State"
    Params = Params
    steps = Steps(plan=plan, apply=apply, check=check, verify=verify)
    tables = tuple(DEFAULT_MODELS)
    writes = False  # the database is only read; pg_dump takes its own ACCESS SHARE locks in its snapshot
    #: the shared checks would only judge the state it captures, often a damaged one (the backup before a
    #: restore); a failing check must not fail the backup
    shared_checks = False
