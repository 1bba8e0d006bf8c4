"""Benchmark: does a token reversal's time grow with the affected rows, on a table of fixed size?

    .venv/bin/python benchmarks/bench_scaling.py --base phases_base_10000000 [--hours 12,24,48]

On one base database (``--base``, e.g. ``bench_cli_phases.py``'s ``phases_base_<rows>``, or generated with
``--users``/``--ledger-rows``), for incident windows of growing length from the incident's start (the generated
grants are spread evenly over its 48 hours: 12 h select a quarter of them), each on a fresh
``CREATE DATABASE … TEMPLATE`` copy: the raw aggregated SQL (``common.RAW_TEMPLATE``), then the runbook's review
and execute through the library (``Run.review`` / ``Run.execute``) on a copy of their own.

Reports, per window, the affected rows and users and the seconds (``--repeat`` runs of every window, interleaved:
the median, and the runs' spread), then a straight line fitted to each step's median seconds against the affected
rows (seconds = fixed + per-row × rows, least squares) with its R²: a line that fits (R² near 1) with a small fixed
part is growth linear in the affected rows. Not a test: nothing is asserted.
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
    ap.add_argument("--repeat", type=int, default=1, help="runs of every window, interleaved (median reported)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.md"))
    args = ap.parse_args()
    hours = [int(h) for h in args.hours.split(",")]

    cluster = Cluster()
    base = args.base or "scaling_base"
    data = counted(cluster, base) if args.base else generate(cluster, base, args.users, args.ledger_rows)
    print(f"machine: {machine()}; data: {data.ledger_rows:,} ledger rows, {data.users:,} users", flush=True)
    rows = median_rows([measure(cluster, base, hours, prefix="scaling") for _ in range(args.repeat)])
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


STEPS = ("raw", "review", "execute")


def median_rows(runs: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Per window, each step's median over the runs and its spread (``<step>_min``/``<step>_max``, ``runs``)."""
    out = []
    for per_window in zip(*runs, strict=True):
        row = dict(per_window[0])
        for key in STEPS:
            values = [r[key] for r in per_window]
            row.update({key: statistics.median(values), f"{key}_min": min(values), f"{key}_max": max(values)})
        row["runs"] = len(per_window)
        out.append(row)
    return out


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
    runs = int(max((r.get("runs", 1) for r in rows), default=1))
    lines = [
        "# Scaling: a token reversal's time against the affected rows, on a table of fixed size",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- PostgreSQL: {cluster.describe()}; {cluster.settings()}",
        f"- data: {ledger:,} ledger rows, {users:,} users (database {base}); windows from {SINCE}"
        + (f"; {layout}" if layout else ""),
        f"- each step {_times(runs)}on its own fresh analysed copy of the data; the library's review and execute on "
        "the same copy" + ("; the windows' runs interleaved, the median shown, the runs' range in brackets"
                           if runs > 1 else ""),
        "",
        "| window | affected rows | users | raw SQL s | library review s | library execute s | execute × raw |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['hours']:.0f} h | {r['rows']:,.0f} | {r['users']:,.0f} | {_cell(r, 'raw')} | "
                     f"{_cell(r, 'review')} | {_cell(r, 'execute')} | {r['execute'] / r['raw']:.2f} |")
    lines += ["", "Fitted line (seconds = fixed + per-row × affected rows" + (", the medians" if runs > 1 else "")
              + "):", ""]
    lines += [f"- {name}: {fit(xs, [r[key] for r in rows])}"
              for name, key in (("raw SQL", "raw"), ("library review", "review"), ("library execute", "execute"))]
    return "\n".join(lines) + "\n"


def _times(runs: int) -> str:
    return "once, " if runs == 1 else f"{runs} times, each "


def _cell(row: dict[str, float], key: str) -> str:
    if row.get("runs", 1) == 1:
        return f"{row[key]:.2f}"
    return f"{row[key]:.2f} [{row[key + '_min']:.2f}–{row[key + '_max']:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
