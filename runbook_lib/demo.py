"""``runbook demo`` / ``make demo``: the main job on an embedded PostgreSQL started by the tool itself.

Starts (or reuses) the embedded server whose data lives in ``.runbook/pgdata``, creates the demo database
from the Prisma migrations in ``demo/prisma`` with a seeded incident, then runs token reversal through
papermill twice: review, then execute with the review's plan id. The server stops when the command ends.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import sqlalchemy as sa

from . import db, embedded
from .prisma.migrate import deploy
from .runner import run_procedure

DEMO_DB = "voucher_demo"
ROOT = Path(__file__).resolve().parent.parent
SINCE, UNTIL = "2025-12-01T00:00:00Z", "2025-12-03T00:00:00Z"


def prepare_database(server: object, reset: bool = False) -> str:
    from . import seed

    admin = db.create_engine(embedded.url(server), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        if reset:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{DEMO_DB}" WITH (FORCE)')
        exists = c.execute(sa.text("select 1 from pg_database where datname = :d"), {"d": DEMO_DB}).first()
        if not exists:
            c.exec_driver_sql(f'CREATE DATABASE "{DEMO_DB}"')
    admin.dispose()
    url = embedded.url(server, DEMO_DB)
    eng = db.create_engine(url, poolclass=sa.pool.NullPool)
    if not exists:
        print(f"creating the demo database {DEMO_DB}: Prisma migrations + a seeded voucher incident", flush=True)
        with eng.begin() as c:
            deploy(c, ROOT / "demo" / "prisma" / "migrations")
        facts = seed.seed_incident(eng)
        print(f"  seeded: {facts}", flush=True)
    eng.dispose()
    return url


def run_demo(evidence_root: Path = Path("incidents")) -> int:
    print("starting the embedded PostgreSQL (data in .runbook/pgdata, reused by later runs)", flush=True)
    server = embedded.start()
    # every demo starts from a freshly seeded incident (a rerun on a reversed database would find nothing)
    os.environ["DATABASE_URL"] = prepare_database(server, reset=True)
    incident = "demo-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    params = {"since": SINCE, "until": UNTIL, "negative_policy": "allow", "ledger_mode": "compensate"}
    print("\n== 1/2 review (read-only) ==", flush=True)
    review = run_procedure("token-reversal", params, incident=incident, evidence_root=evidence_root,
                           operator="demo")
    if review.exit_code:
        print(f"review failed: {review.error}")
        return review.exit_code
    print(f"plan id {review.plan_id}", flush=True)
    print("\n== 2/2 execute with the approved plan id ==", flush=True)
    execute = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review.plan_id},
                            incident=incident, evidence_root=evidence_root, operator="demo")
    if execute.exit_code:
        print(f"execute failed: {execute.error}")
        return execute.exit_code
    c = execute.counts
    print("\n== summary ==")
    print(f"evidence:               {review.run_dir.parent}")
    print(f"  review notebook:      {review.run_dir}")
    print(f"  execute notebook:     {execute.run_dir}")
    print(f"ledger rows reversed:   {c.get('rows_reversed')}")
    print(f"users affected:         {c.get('users_affected')}")
    print(f"tokens reversed:        {c.get('tokens_reversed')}")
    print(f"users left negative:    {c.get('users_left_negative')}")
    print(f"verification passed:    {execute.manifest.get('verification_passed')}")
    m = execute.manifest
    print(f"reviewer / approver:    {m.get('reviewer')} / {m.get('approver')} (plan of {m.get('review_run')})")
    print(f"check the evidence:     .venv/bin/runbook evidence verify {review.run_dir.parent}")
    return 0
