"""Shared helpers: table checksums of a whole database, clones, and the subprocess that runs an execute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from runbook_lib import backups

WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
NO_BACKUP = "reliability test on a scratch clone: no backup needed"
#: the writing procedures and the parameters their trials use
PROCEDURES: dict[str, dict[str, Any]] = {
    "token-reversal/compensate": {"procedure": "token-reversal", "params": {**WINDOW}},
    "token-reversal/delete": {"procedure": "token-reversal",
                              "params": {**WINDOW, "ledger_mode": "delete"}},
    "partial-rollback": {"procedure": "partial-rollback", "params": {"all_vouchers": True}},
    "full-rollback": {"procedure": "full-rollback", "params": {"ledger_policy": "reverse", "prisma_side": False}},
}

WORKER = """
import json, sys
from runbook_lib.run import Run
proc, params = sys.argv[1], json.loads(sys.argv[2])
plan = Run(proc, params).review()
Run(proc, {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
print("DONE", flush=True)
"""


def db_state(url: str) -> dict[str, Any]:
    """The whole content: per table a count and checksum of its rows, timestamp columns reduced to set / not set
    (a runbook writes now() into createdAt/updatedAt, so two clean runs differ there and nowhere else), and the
    enum types."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            state: dict[str, Any] = {}
            for t in backups.all_tables(c, "public"):
                cols = [(r[0], r[1].startswith("timestamp")) for r in c.execute(sa.text(
                    "select column_name, data_type from information_schema.columns where table_schema = 'public' "
                    "and table_name = :t order by ordinal_position"), {"t": t})]
                # a timestamp column counts only as set or not (e.g. _prisma_migrations.rolled_back_at)
                expr = "row(" + ", ".join(f'x."{col}" is null' if ts else f'x."{col}"' for col, ts in cols) + ")::text"
                state[t] = tuple(c.execute(sa.text(
                    f"select count(*), md5(coalesce(string_agg(h, '' order by h), '')) from "
                    f'(select md5({expr}) as h from "{t}" x) s')).one())
            state["__types__"] = sorted(r[0] for r in c.exec_driver_sql(
                "select typname from pg_type t join pg_namespace n on n.oid = t.typnamespace "
                "where n.nspname = 'public' and t.typtype = 'e'"))
        return state
    finally:
        eng.dispose()


def needs_backup(procedure: str) -> bool:
    """Destructive procedures take backup_override_reason (the trials run on scratch clones); others refuse it."""
    from runbook_lib import procedures

    return "backup_override_reason" in procedures.get(procedure).Params.model_fields


def start_worker(url: str, procedure: str, params: dict[str, Any], env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, **env_extra}
    extra = {"backup_override_reason": NO_BACKUP} if needs_backup(procedure) else {}
    return subprocess.Popen([sys.executable, "-c", WORKER, procedure, json.dumps({**params, **extra})], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


#: a Prisma migration that failed after its first statement (for migration-recovery trials)
FAILED_MIGRATION = "20250101000000_add_campaigns"
FAILED_SQL = 'CREATE TABLE "Campaign" ("id" TEXT NOT NULL);\n\nCREATE TABLE "CampaignStat" ("id" TEXT NOT NULL);\n'
UNDO_SQL = 'DROP TABLE IF EXISTS "CampaignStat";\nDROP TABLE "Campaign";\n'


def fail_a_migration(url: str, migrations: Path, folder: Path) -> dict[str, Any]:
    """Leave the database as Prisma does when a migration fails half-way; the recovery parameters that undo it."""
    import shutil
    import uuid

    from runbook_lib.prisma.migrate import checksum

    shutil.copytree(migrations, folder)
    (folder / FAILED_MIGRATION).mkdir()
    (folder / FAILED_MIGRATION / "migration.sql").write_text(FAILED_SQL)
    undo = folder.parent / "undo.sql"
    undo.write_text(UNDO_SQL)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.execute(sa.text('insert into "_prisma_migrations" (id, checksum, migration_name, logs, started_at, '
                          "applied_steps_count) values (:id, :c, :n, 'failed', now(), 0)"),
                  {"id": str(uuid.uuid4()), "c": checksum(FAILED_SQL), "n": FAILED_MIGRATION})
        c.exec_driver_sql('CREATE TABLE "Campaign" ("id" TEXT NOT NULL)')
    eng.dispose()
    return {"migrations_dir": str(folder), "action": "rolled_back", "compensating_sql": str(undo)}


def wait_for(path: Path, proc: subprocess.Popen[str] | None = None, timeout: float = 120) -> str | None:
    """The marker's content once the fault point is reached; None if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            return None
        time.sleep(0.05)
    raise TimeoutError(f"fault point not reached within {timeout}s")


def terminate_runbook_sessions(admin_url: str, database: str) -> int:
    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            return len(c.execute(sa.text(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = :d and "
                "application_name like 'runbook:%'"), {"d": database}).all())
    finally:
        eng.dispose()
