"""Benchmark: token reversal (review + execute) against hand-written aggregated SQL, same data, same run.

    .venv/bin/python benchmarks/bench_token_reversal.py [--users 200000] [--ledger-rows 1000000]

Starts the embedded PostgreSQL (or uses BENCH_DATABASE_URL, a maintenance-database URL whose user may
CREATE DATABASE), generates the data once with runbook_lib.seed.seed_bulk in the real application's shape
(demo/prisma, only the application's own indexes: the ledger's (userId, createdAt) and (sourceId)), clones it three times with
CREATE DATABASE … TEMPLATE, then times on identical copies:

* runbook review and execute through the CLI path (papermill notebook + evidence), as an operator runs it;
* runbook review and execute through the library (Run.review / Run.execute), the database work alone, and the
  execute in online mode (``execution=online``: batches of users, one transaction each, pauses between them);
* the equivalent raw SQL: one transaction, compensating rows + one aggregated balance update.

Reports machine, data size, times, ratios, peak memory (this process and its children: the papermill
kernel) and the evidence size, to stdout and benchmarks/results/token_reversal.md. Not a test: no
thresholds are asserted anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import RAW_SQL, ROOT, SINCE, UNTIL, Cluster, counted, generate, machine, run_raw_sql

__all__ = ["RAW_SQL", "SINCE", "UNTIL", "machine", "main"]  # RAW_SQL and the window live in common.py


def peak_mb() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def kernel_peaks(evidence: Path) -> dict[str, float]:
    """The largest peak memory of the CLI runs' kernels, review and execute apart (from their run-state.json)."""
    peaks: dict[str, float] = {}
    for state in evidence.rglob("run-state.json"):
        got = json.loads(state.read_text())
        if "peak_memory_mb" in got:
            mode = str(got.get("mode"))
            peaks[mode] = max(peaks.get(mode, 0.0), float(got["peak_memory_mb"]))
    return dict(sorted(peaks.items(), reverse=True))


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--ledger-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of raw SQL and library path (median reported)")
    ap.add_argument("--cli-repeat", type=int, default=3, help="runs of the CLI review + execute (median reported)")
    ap.add_argument("--base", metavar="DATABASE",
                    help="an existing database of the same shape to copy from (kept; not generated, --users and "
                         "--ledger-rows ignored): e.g. bench_cli_phases.py's phases_base_<rows>")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "token_reversal.md"))
    args = ap.parse_args()

    cluster = Cluster()

    print(f"machine: {machine()}", flush=True)
    base = args.base or "bench_base"
    data = counted(cluster, base) if args.base else generate(cluster, base, args.users, args.ledger_rows)
    n_ledger, n_users, n_aff, gen_s, info = data.ledger_rows, data.users, data.affected_rows, data.seconds, data.info
    generated = f"generated in {gen_s:.1f}s" if not args.base else f"the existing database {base}, not generated here"
    print(f"data: {n_ledger} ledger rows, {n_users} users, {n_aff} affected rows ({generated}) {info}", flush=True)

    results: dict[str, float] = {}
    online = {"execution": "online"}  # the procedure's defaults: batches of 5,000 users, 100ms between batches
    review_nb = "runbook review notebook's library work (review with its Parquet exports, then verify)"
    samples: dict[str, list[float]] = {"raw SQL execute": [], "runbook review (library)": [], review_nb: [],
                                       "runbook execute (library)": [],
                                       "runbook verify after the execute (library)": [],
                                       "runbook execute online (library, batches of 5,000 users, 100ms pauses)": []}
    from runbook_lib.run import Run

    params = {"since": SINCE, "until": UNTIL}

    def fresh_copy(name: str) -> str:
        return cluster.fresh_copy(name, base)

    res = None
    for i in range(args.repeat):  # alternate raw and runbook on fresh copies; the median is reported
        samples["raw SQL execute"].append(run_raw_sql(fresh_copy("bench_raw")))

        os.environ["DATABASE_URL"] = fresh_copy("bench_lib")
        t = time.perf_counter()
        plan = Run("token-reversal", params).review()
        samples["runbook review (library)"].append(time.perf_counter() - t)
        # what a review notebook runs through the library: the review writing its exports into a run folder, then
        # the verification (its checks pending until an execute); on the same copy, after the review above
        folder = Path(tempfile.mkdtemp(prefix="bench-review-"))
        t = time.perf_counter()
        nb_run = Run("token-reversal", {**params, "evidence_dir": str(folder / "review")})
        nb_run.review()
        nb_run.verify()
        samples[review_nb].append(time.perf_counter() - t)
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        run = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id})
        res = run.execute()
        samples["runbook execute (library)"].append(time.perf_counter() - t)
        assert res is not None and res.changed
        t = time.perf_counter()
        assert run.verify().passed
        samples["runbook verify after the execute (library)"].append(time.perf_counter() - t)

        # as an operator runs it: the review in the incident's evidence, where the execute finds its batches
        os.environ["DATABASE_URL"] = fresh_copy("bench_online")
        incident = Path(tempfile.mkdtemp(prefix="bench-online-")) / "INC"
        oplan = Run("token-reversal", {**params, **online, "evidence_dir": str(incident / "review")}).review()
        t = time.perf_counter()
        ores = Run("token-reversal", {**params, **online, "mode": "execute", "approved_plan": oplan.plan_id,
                                      "evidence_dir": str(incident / "execute")}).execute()
        samples["runbook execute online (library, batches of 5,000 users, 100ms pauses)"].append(
            time.perf_counter() - t)
        assert ores is not None and ores.counts["rows_reversed"] == res.counts["rows_reversed"]
        shutil.rmtree(incident.parent, ignore_errors=True)
        print(f"repeat {i + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items()),
              flush=True)
    assert res is not None
    for k, v in samples.items():
        results[k] = statistics.median(v)

    # CLI path (papermill + evidence), each repeat on its own copy and evidence folder
    from runbook_lib.runner import run_procedure

    cli: dict[str, list[float]] = {"runbook review (CLI: papermill + evidence)": [],
                                   "runbook execute (CLI: papermill + evidence)": []}
    ev = Path(tempfile.mkdtemp(prefix="bench-evidence-"))
    for i in range(args.cli_repeat):
        os.environ["DATABASE_URL"] = cluster.fresh_copy("bench_cli", base)
        root = ev / f"run{i + 1}"
        t = time.perf_counter()
        review = run_procedure("token-reversal", params, incident="bench", evidence_root=root, progress_bar=False)
        cli["runbook review (CLI: papermill + evidence)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        execute = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review.plan_id},
                                incident="bench", evidence_root=root, progress_bar=False)
        cli["runbook execute (CLI: papermill + evidence)"].append(time.perf_counter() - t)
        assert review.exit_code == 0 and execute.exit_code == 0, (review.error, execute.error)
        print(f"CLI repeat {i + 1}/{args.cli_repeat}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in cli.items()),
              flush=True)
    for k, v in cli.items():
        results[k] = statistics.median(v)
    # what each CLI run does in the library, for the "CLI - library" column: a review notebook runs the review
    # (writing its exports) and the verification; an execute notebook runs the review (its figures for the
    # evidence), the execute and the verification
    lib_of = {"runbook review (CLI: papermill + evidence)": results[review_nb],
              "runbook execute (CLI: papermill + evidence)": results["runbook review (library)"]
              + results["runbook execute (library)"] + results["runbook verify after the execute (library)"]}

    nb_sizes = {p.name: p.stat().st_size for p in (ev / "run1").rglob("*.ipynb")}
    ev_size = dir_size(ev / "run1")
    me, kids = peak_mb()
    kernels = kernel_peaks(ev)
    raw_t = results["raw SQL execute"]
    lines = [
        "# Token reversal benchmark",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- PostgreSQL: {cluster.describe()}; {cluster.settings()}",
        "- schema: the real application's shape (demo/prisma: no link column, reversals linked by source + "
        "sourceId), only the application's own indexes",
        f"- data: {n_ledger:,} ledger rows, {n_users:,} users; {n_aff:,} affected rows "
        f"({res.counts['users_affected']:,} users, {res.counts['tokens_reversed']:,} tokens); {generated}; "
        f"{data.layout}",
        "",
        f"Median of {args.repeat} runs for the raw SQL and library rows, of {args.cli_repeat} for the CLI rows "
        "(each on a fresh copy of the same data, analysed). 'CLI − library': the CLI run's seconds less what its notebook "
        "does in the library (a review: the review with its exports, then verify; an execute: review + execute + "
        "verify).",
        "",
        "| step | seconds | × raw SQL execute | CLI − library |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k, v in results.items():
        extra = f"+{v - lib_of[k]:.2f}" if k in lib_of else ""
        lines.append(f"| {k} | {v:.2f} | {v / raw_t:.2f} | {extra} |")
    lines += [
        "",
        "- peak memory: the notebooks' kernels (each run's own, run-state.json's peak_memory_mb) "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in kernels.items())
        + f"; the benchmark process (the library rows) {me:.0f} MB; its largest child {kids:.0f} MB (on Linux a "
        "child's ru_maxrss includes the parent's memory when it forked)",
        "- executed notebooks: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(nb_sizes.items())),
        f"- evidence folder (2 runs, incl. Parquet exports and HTML copies): {ev_size / 1e6:.1f} MB",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    shutil.rmtree(ev, ignore_errors=True)
    cluster.drop("bench_raw", "bench_lib", "bench_online", "bench_cli", *(() if args.base else (base,)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
