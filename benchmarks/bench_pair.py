"""Paired A/B of the library's execute: two (or more) checkouts and the raw SQL, interleaved on the same data.

    BENCH_DATABASE_URL=… .venv/bin/python benchmarks/bench_pair.py --base phases_base_1000000 \\
        --code before=DIR --code after=DIR [--pairs 5] [--modes single,online] [--out FILE]

``make benchmark``'s medians move with the shared machine by more than a change of a tenth of a second; this
script measures such a change. Each pair times, in turn, the raw SQL (``common.RAW_SQL``) and every checkout's
``Run.execute`` of token reversal in each mode (``single``: one transaction; ``online``: ``execution=online`` with
the procedure's defaults, its review in an incident's evidence as an operator runs it), each on a fresh copy of
``--base`` analysed first (as ``make benchmark``'s copies). The checkouts' order rotates from pair to pair. A
checkout runs in a child process that imports ``runbook_lib`` from DIR (e.g. ``git archive`` of a revision); the
review before each execute is not timed. Reports the median and the range of each row and its ratio to the raw
SQL's median. Not a test: no thresholds anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import SINCE, UNTIL, Cluster, counted, machine, run_raw_sql

#: the checkout's child: review (not timed), then the timed execute; JSON after "RESULT "
CHILD = r'''
import json, sys, tempfile, time
from pathlib import Path
from runbook_lib.run import Run
params, mode = json.loads(sys.argv[1]), sys.argv[2]
extra = {}
if mode == "online":  # as an operator runs it: the review in the incident's evidence, where the execute finds it
    inc = Path(tempfile.mkdtemp(prefix="bench-pair-")) / "INC"
    extra = {"execution": "online", "evidence_dir": str(inc / "review")}
plan = Run("token-reversal", {**params, **extra}).review()
if mode == "online":
    extra["evidence_dir"] = str(inc / "execute")
run = Run("token-reversal", {**params, **extra, "mode": "execute", "approved_plan": plan.plan_id})
t = time.perf_counter(); run.execute(); took = time.perf_counter() - t
print("\nRESULT " + json.dumps({"execute": took}))
'''


def run_child(code: Path, url: str, mode: str) -> float:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"since": SINCE, "until": UNTIL}), mode],
                          env=env, capture_output=True, text=True, check=False, cwd=code)
    if proc.returncode:
        raise SystemExit(f"{code} ({mode}) failed: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.rsplit("RESULT ", 1)[1])["execute"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="an existing database of the benchmark's shape, copied per run")
    ap.add_argument("--code", action="append", required=True, help="LABEL=DIR: a checkout whose runbook_lib is timed")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--modes", default="single,online")
    ap.add_argument("--note", default="", help="what the checkouts are (e.g. their revisions), for the report")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    codes = [(label, Path(d).resolve()) for label, d in (c.split("=", 1) for c in args.code)]
    modes = [m for m in args.modes.split(",") if m]
    cluster = Cluster()
    data = counted(cluster, args.base)
    samples: dict[str, list[float]] = {"raw SQL execute": []}
    for i in range(args.pairs):
        samples["raw SQL execute"].append(run_raw_sql(cluster.fresh_copy("bench_pair", args.base)))
        for label, code in codes[i % len(codes):] + codes[:i % len(codes)]:
            for mode in modes:
                took = run_child(code, cluster.fresh_copy("bench_pair", args.base), mode)
                samples.setdefault(f"{label}: execute ({mode})", []).append(took)
                print(f"pair {i + 1}: {label} {mode} {took:.3f} s", flush=True)
    cluster.drop("bench_pair")
    raw = statistics.median(samples["raw SQL execute"])
    lines = [
        "# Paired library execute (token reversal)", "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- PostgreSQL: {cluster.describe()}; {cluster.settings()}",
        f"- data: {args.base}: {data.ledger_rows:,} ledger rows, {data.users:,} users, {data.affected_rows:,} "
        f"affected rows, {data.layout}; every run on a fresh analysed copy",
        "- code: " + ", ".join(label for label, _ in codes) + (f" ({args.note})" if args.note else ""),
        f"- {args.pairs} pairs, the checkouts' order rotating; median (min–max) seconds of `Run.execute` (the review "
        "before it not timed)", "",
        "| step | median s | min–max s | × raw SQL median |", "| --- | ---: | ---: | ---: |",
    ]
    for name, xs in samples.items():
        lines.append(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f}–{max(xs):.2f} | "
                     f"{statistics.median(xs) / raw:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
