"""Generate benchmark-scale voucher data (default 200k users, 1M ledger rows) into a new database.

    .venv/bin/python benchmarks/generate.py [--users 200000] [--ledger-rows 1000000] [--database bench_data]

Uses the embedded PostgreSQL (data in .runbook/pgdata-bench) unless BENCH_DATABASE_URL names a
maintenance-database URL whose user may CREATE DATABASE. The data is written set-based by
runbook_lib.seed.seed_bulk (generate_series; no Python loop over rows) after the demo app's Prisma
migrations, and is deterministic. Prints the database URL (password masked) and the row counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runbook_lib import embedded, seed  # noqa: E402
from runbook_lib.prisma.migrate import deploy  # noqa: E402
from runbook_lib.redact import redact_url  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--ledger-rows", type=int, default=1_000_000)
    ap.add_argument("--database", default="bench_data")
    args = ap.parse_args()
    admin_url = os.environ.get("BENCH_DATABASE_URL")
    if not admin_url:
        admin_url = embedded.url(embedded.start(ROOT / ".runbook" / "pgdata-bench"))
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        c.exec_driver_sql(f'CREATE DATABASE "{args.database}"')
    url = sa.engine.make_url(admin_url).set(database=args.database).render_as_string(hide_password=False)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    t = time.perf_counter()
    with eng.begin() as c:
        deploy(c, ROOT / "demo" / "prisma" / "migrations")
    seed.seed_bulk(eng, users=args.users, ledger_rows=args.ledger_rows)
    facts = seed.incident_facts(eng)
    print(f"generated in {time.perf_counter() - t:.1f}s: {facts}")
    print(f"database: {redact_url(url)}")
    eng.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
