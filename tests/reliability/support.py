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
    """The whole content: per table a count and checksum of its rows without timestamp columns (a runbook
    writes now() into createdAt/updatedAt, so two clean runs differ there and nowhere else), and the enum types."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            state: dict[str, Any] = {}
            for t in backups.all_tables(c, "public"):
                cols = [r[0] for r in c.execute(sa.text(
                    "select column_name from information_schema.columns where table_schema = 'public' and "
                    "table_name = :t and data_type not like 'timestamp%' order by ordinal_position"), {"t": t})]
                expr = "row(" + ", ".join(f'x."{col}"' for col in cols) + ")::text"
                state[t] = tuple(c.execute(sa.text(
                    f"select count(*), md5(coalesce(string_agg(h, '' order by h), '')) from "
                    f'(select md5({expr}) as h from "{t}" x) s')).one())
            state["__types__"] = sorted(r[0] for r in c.exec_driver_sql(
                "select typname from pg_type t join pg_namespace n on n.oid = t.typnamespace "
                "where n.nspname = 'public' and t.typtype = 'e'"))
        return state
    finally:
        eng.dispose()


def start_worker(url: str, procedure: str, params: dict[str, Any], env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, **env_extra}
    return subprocess.Popen([sys.executable, "-c", WORKER, procedure, json.dumps({**params,
                             "backup_override_reason": NO_BACKUP})], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


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
