"""Benchmark: does a token reversal's time grow with the affected rows, on a table of fixed size?

    .venv/bin/python benchmarks/bench_scaling.py --base phases_base_10000000 [--hours 12,24,48]

On one base database (``--base``, e.g. ``bench_cli_phases.py``'s ``phases_base_<rows>``, or generated with
``--users``/``--ledger-rows``), for incident windows of growing length from the incident's start (the generated
grants are spread evenly over its 48 hours: 12 h select a quarter of them), each on a fresh
``CREATE DATABASE … TEMPLATE`` copy: the raw aggregated SQL (``common.RAW_TEMPLATE``), then the runbook's review
and execute through the library (``Run.review`` / ``Run.execute``) on a copy of their own.

Reports, per window, the affected rows and users and the seconds, then a straight line fitted to each step's
seconds against the affected rows (seconds = fixed + per-row × rows, least squares) with its R²: a line that fits
(R² near 1) with a small fixed part is growth linear in the affected rows. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from common import ROOT, SINCE, Cluster, counted, generate, machine, run_raw_sql, window


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", metavar="DATABASE", help="an existing base database (kept); else one is generated")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--ledger-rows", type=int, default=1_000_000)
    ap.add_argument("--hours", default="12,24,48", help="window lengths from the incident's start, comma-separated")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.md"))
    args = ap.parse_args()
    hours = [int(h) for h in args.hours.split(",")]

    cluster = Cluster()
    base = args.base or "scaling_base"
    data = counted(cluster, base) if args.base else generate(cluster, base, args.users, args.ledger_rows)
    print(f"machine: {machine()}; data: {data.ledger_rows:,} ledger rows, {data.users:,} users", flush=True)
    rows = measure(cluster, base, hours, prefix="scaling")
    if not args.base:
        cluster.drop(base)

    report = render(rows, cluster, data.ledger_rows, data.users, base, data.layout)
    print(report)
    Path(args.out).write_text(report)
    return 0


def measure(cluster: Cluster, base: str, hours: list[int], prefix: str) -> list[dict[str, float]]:
    """Per window length: its affected rows and users, the raw SQL's, the library review's and execute's seconds
    (each step on a fresh copy of ``base`` named ``<prefix>_raw`` / ``<prefix>_lib``, dropped at the end)."""
    from runbook_lib.run import Run

    start = dt.datetime.fromisoformat(SINCE)
    rows: list[dict[str, float]] = []
    for h in hours:
        until = (start + dt.timedelta(hours=h)).isoformat().replace("+00:00", "Z")
        raw_sql, where = window(SINCE, until)
        url = cluster.fresh_copy(f"{prefix}_raw", base)
        raw = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with raw.connect() as c:
            affected = int(c.exec_driver_sql(f"select count(*) from token_transactions where {where}").scalar_one())
        raw.dispose()
        raw_s = run_raw_sql(url, raw_sql)

        lib_url = cluster.fresh_copy(f"{prefix}_lib", base)
        params = {"since": SINCE, "until": until}
        t = time.perf_counter()
        plan = Run("token-reversal", params, url=lib_url).review()
        review_s = time.perf_counter() - t
        t = time.perf_counter()
        result = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id},
                     url=lib_url).execute()
        execute_s = time.perf_counter() - t
        assert result is not None and result.changed, result
        rows.append({"hours": h, "rows": affected, "users": result.counts["users_affected"], "raw": raw_s,
                     "review": review_s, "execute": execute_s})
        print(f"{h} h: {affected:,} rows: raw {raw_s:.2f}s, review {review_s:.2f}s, execute {execute_s:.2f}s",
              flush=True)
    cluster.drop(f"{prefix}_raw", f"{prefix}_lib")
    return rows


def fit(xs: list[float], ys: list[float]) -> str:
    """``fixed s + per-row µs × rows (R² …)``: least squares; R² of one point or a flat line is not defined."""
    if len(xs) < 2:
        return "—"
    slope, intercept = statistics.linear_regression(xs, ys)
    r2 = statistics.correlation(xs, ys) ** 2 if len(set(ys)) > 1 else float("nan")
    return f"{intercept:+.2f} s + {slope * 1e6:.1f} µs × rows (R² {r2:.4f})"


def render(rows: list[dict[str, float]], cluster: Cluster, ledger: int, users: int, base: str,
           layout: str = "") -> str:
    xs = [r["rows"] for r in rows]
    lines = [
        "# Scaling: a token reversal's time against the affected rows, on a table of fixed size",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- PostgreSQL: {cluster.describe()}; {cluster.settings()}",
        f"- data: {ledger:,} ledger rows, {users:,} users (database {base}); windows from {SINCE}"
        + (f"; {layout}" if layout else ""),
        "- each step once, on its own fresh analysed copy of the data; the library's review and execute on the same "
        "copy",
        "",
        "| window | affected rows | users | raw SQL s | library review s | library execute s | execute × raw |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['hours']:.0f} h | {r['rows']:,.0f} | {r['users']:,.0f} | {r['raw']:.2f} | "
                     f"{r['review']:.2f} | {r['execute']:.2f} | {r['execute'] / r['raw']:.2f} |")
    lines += ["", "Fitted line (seconds = fixed + per-row × affected rows):", ""]
    lines += [f"- {name}: {fit(xs, [r[key] for r in rows])}"
              for name, key in (("raw SQL", "raw"), ("library review", "review"), ("library execute", "execute"))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
