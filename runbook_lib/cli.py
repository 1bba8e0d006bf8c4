"""``runbook``: a thin command line in papermill's style. Each command is one library call."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from .errors import RunbookError
from .redact import redact_text


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="runbook", description="Voucher incident runbooks as Jupyter notebooks.")
    ap.add_argument("--raiseerr", action="store_true", help="show the full (redacted) traceback on errors")
    sub = ap.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list the procedures")
    ls.add_argument("--parameters", action="store_true", help="also list each procedure's parameters")

    run = sub.add_parser("run", help="run a procedure's notebook with papermill and archive the evidence")
    run.add_argument("procedure")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter (YAML value; repeatable); wins over -f files")
    run.add_argument("-f", "--parameters-file", action="append", default=[], metavar="FILE",
                     help="YAML parameter file (repeatable, later files win)")
    run.add_argument("--incident", default="adhoc", help="incident id: evidence goes to EVIDENCE_DIR/INCIDENT/")
    run.add_argument("--evidence-dir", default="incidents", help="evidence root (default: ./incidents)")
    run.add_argument("--execute", action="store_true", help="apply the change (default: review only)")
    run.add_argument("--approve", metavar="PLAN_ID", help="the plan id printed by the review run")
    run.add_argument("--confirm-target", metavar="DATABASE", help="name the database of a production target")
    run.add_argument("--operator", help="who runs this (default: the OS user)")
    run.add_argument("--no-progress", action="store_true", help="hide papermill's progress bar")
    run.add_argument("--log-output", action="store_true", help="stream the notebook's output to the terminal")

    ev = sub.add_parser("evidence", help="check or summarize an incident's evidence")
    ev_sub = ev.add_subparsers(dest="evidence_command", required=True)
    v = ev_sub.add_parser("verify", help="recompute every hash and the manifest chain")
    v.add_argument("dir")
    s = ev_sub.add_parser("show", help="print an incident summary")
    s.add_argument("dir")

    demo = sub.add_parser("demo", help="embedded PostgreSQL + seeded incident + token reversal review/execute")
    demo.add_argument("--evidence-dir", default="incidents")
    return ap


def build_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Merge in the documented order: -f files (in order) < -p pairs < --execute/--approve/--confirm-target."""
    from .params import merge_sources

    overrides: dict[str, Any] = {}
    if args.execute:
        overrides["mode"] = "execute"
    if args.approve:
        overrides["approved_plan"] = args.approve
    if args.confirm_target:
        overrides["confirm_target"] = args.confirm_target
    return merge_sources(args.parameters_file, [tuple(p) for p in args.parameter], overrides)


def _cmd_list(args: argparse.Namespace) -> int:
    from . import procedures

    for name in procedures.available():
        mod = procedures.get(name)
        print(f"{name:20s} {mod.TITLE}")
        if args.parameters:
            for fname, f in mod.Params.model_fields.items():
                print(f"    {fname:24s} default {f.default!r}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_procedure

    outcome = run_procedure(
        args.procedure, build_parameters(args), incident=args.incident, evidence_root=Path(args.evidence_dir),
        operator=args.operator, progress_bar=not args.no_progress, log_output=args.log_output,
    )
    print(f"status:   {outcome.status}")
    if outcome.plan_id:
        print(f"plan id:  {outcome.plan_id}")
    for k, v in (outcome.summary or {}).items():
        if k != "nothing_to_do":
            print(f"  {k}: {v}")
    for k, v in (outcome.counts or {}).items():
        print(f"  done: {k}: {v}")
    print(f"evidence: {outcome.run_dir}")
    if outcome.exit_code:
        print(f"error: {outcome.error}", file=sys.stderr)
    elif outcome.mode == "review" and outcome.plan_id and args.procedure not in ("verify",):
        print(f"to apply: runbook run {args.procedure} ... --execute --approve {outcome.plan_id}")
    return outcome.exit_code


def _cmd_evidence(args: argparse.Namespace) -> int:
    from . import evidence

    if args.evidence_command == "show":
        print(evidence.show_incident(Path(args.dir)))
        return 0
    problems = evidence.verify_incident(Path(args.dir))
    for p in problems:
        print(p)
    if problems:
        print(f"evidence NOT intact: {len(problems)} problems", file=sys.stderr)
        return 11
    print("evidence intact: every hash and the manifest chain check out")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(evidence_root=Path(args.evidence_dir))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        handler = {"list": _cmd_list, "run": _cmd_run, "evidence": _cmd_evidence, "demo": _cmd_demo}[args.command]
        return handler(args)
    except RunbookError as exc:
        if args.raiseerr:
            print(redact_text(traceback.format_exc()), file=sys.stderr)
        print(f"error: {redact_text(exc.one_line())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary: one line, redacted, exit 1
        if args.raiseerr:
            print(redact_text(traceback.format_exc()), file=sys.stderr)
        print(f"error: unexpected {type(exc).__name__}: {redact_text(' '.join(str(exc).split()))[:500]}"
              " (--raiseerr shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
