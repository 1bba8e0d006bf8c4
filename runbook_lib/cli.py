"""``runbook``: a thin command line in papermill's style. Each command is one library call."""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
import traceback
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ParameterError, RunbookError, UnknownProcedureError
from .redact import redact_text

if typing.TYPE_CHECKING:
    from .procedures.base import Procedure

DEFAULT_EVIDENCE_DIR = "incidents"
#: parameters the CLI sets from its own options: the execute command never repeats them as -p pairs
_FROM_OPTIONS = ("mode", "approved_plan", "confirm_target")


def procedure_module(name: str) -> Procedure:
    """The procedure's module, or a ParameterError naming the closest known procedure ("did you mean")."""
    from . import procedures

    try:
        return procedures.get(name)
    except UnknownProcedureError:
        known = procedures.available()
        key = name.strip().replace("_", "-").lower()
        containing = [k for k in known if key and key in k]  # "reversal" -> token-reversal, not rehearsal
        close = containing if len(containing) == 1 else difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ParameterError(f"unknown procedure {name!r}; {hint}known procedures: {', '.join(known)}",
                             "procedure") from None


def _type_name(annotation: Any) -> str:
    """A parameter's type as a user types it: text, int, bool, list, map, or the choices of a Literal."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    origin = typing.get_origin(annotation) or annotation
    names = {str: "text", int: "int", float: "number", bool: "bool", list: "list", dict: "map"}
    return names.get(origin, getattr(origin, "__name__", str(origin)))


def _yaml_value(value: Any) -> str:
    """A default written as it is given with -p or in a -f file (YAML): null, true, [a, b], {}."""
    import yaml

    if isinstance(value, str):
        return value if value else '""'
    return str(yaml.safe_dump(value, default_flow_style=True, width=10_000)).removesuffix("\n").removesuffix(
        "\n...").strip()


def notebook_defaults(mod: Procedure) -> dict[str, Any]:
    """The values of the notebook's parameters cell (what JupyterLab runs with), as papermill reads them."""
    import ast

    import papermill as pm

    from .runner import notebooks_dir

    path = notebooks_dir() / mod.NOTEBOOK
    if not path.is_file():
        return {}
    out: dict[str, Any] = {}
    for pname, info in pm.inspect_notebook(str(path)).items():
        try:
            out[pname] = ast.literal_eval(str(info["default"]))
        except (ValueError, SyntaxError):
            continue
    return out


def parameter_rows(mod: Procedure) -> list[tuple[str, str, str, str]]:
    """(name, type, "default X" or "required", description) of every parameter of a procedure: its own first, then the common ones.

    The descriptions are the ``Field(description=...)`` of the procedure's ``Params`` model: one source for
    ``runbook run PROC --help`` and ``runbook list --parameters`` (tests/test_cli_help.py keeps the notebooks'
    parameters cells and ``parameters/*.yaml`` naming the same parameters).
    """
    from .params import DestructiveParams

    common = set(DestructiveParams.model_fields)
    fields = mod.Params.model_fields
    in_notebook = notebook_defaults(mod)
    order = [n for n in fields if n not in common] + [n for n in fields if n in common]
    rows = []
    for name in order:
        f = fields[name]
        desc = f.description or ""
        required = desc.lower().startswith("required:")
        if required:
            desc = desc.split(":", 1)[1].strip()
        value = f.get_default(call_default_factory=True)
        default = "required" if required else f"default {_yaml_value(value)}"
        if name in in_notebook and in_notebook[name] != value:
            # the parameters cell carries a runnable example for JupyterLab (the demo incident's window)
            default += f" (the notebook's example: {_yaml_value(in_notebook[name])})"
        rows.append((name, _type_name(f.annotation), default, desc))
    return rows


def procedure_help(name: str) -> str:
    """The parameters section of ``runbook run PROC --help``."""
    mod = procedure_module(name)
    rows = parameter_rows(mod)
    width = max(len(r[0]) for r in rows)
    lines = [f"parameters of {mod.NAME} ({mod.TITLE}): -p NAME VALUE or a -f FILE "
             f"(parameters/{mod.NAME}.yaml is a commented example)"]
    for pname, tname, default, desc in rows:
        lines.append(f"  {pname:<{width}}  {tname}, {default}")
        lines.append(f"  {'':<{width}}    {desc}")
    return "\n".join(lines)


class _RunHelp(argparse.Action):
    """``runbook run [PROCEDURE] --help``: the options, then the procedure's parameters when one is named."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002 - argparse's name
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        name = getattr(namespace, "procedure", None)
        if name:
            try:
                text = procedure_help(name)
            except ParameterError as exc:
                parser.exit(2, f"error: {exc.one_line()}\n")
            parser.print_help()
            print()
            print(text)
        else:
            parser.print_help()
            print("\n'runbook run PROCEDURE --help' also lists the procedure's parameters")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="runbook", description="Voucher incident runbooks as Jupyter notebooks.")
    ap.add_argument("--raiseerr", action="store_true", help="show the full (redacted) traceback on errors")
    sub = ap.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list the procedures")
    ls.add_argument("--parameters", action="store_true", help="also list each procedure's parameters")

    run = sub.add_parser("run", help="run a procedure's notebook with papermill and archive the evidence",
                         add_help=False)
    run.add_argument("-h", "--help", action=_RunHelp, help="show this help and, after PROCEDURE, its parameters")
    run.add_argument("procedure")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter (YAML value; repeatable); wins over -f files")
    run.add_argument("-f", "--parameters-file", action="append", default=[], metavar="FILE",
                     help="YAML parameter file (repeatable, later files win)")
    run.add_argument("--incident", default="adhoc", help="incident id: evidence goes to EVIDENCE_DIR/INCIDENT/")
    run.add_argument("--evidence-dir", default=DEFAULT_EVIDENCE_DIR, help="evidence root (default: ./incidents)")
    run.add_argument("--execute", action="store_true", help="apply the change (default: review only)")
    run.add_argument("--approve", metavar="PLAN_ID", help="the plan id printed by the review run")
    run.add_argument("--confirm-target", metavar="DATABASE", help="name the database of a production target")
    run.add_argument("--operator", help="who runs this (default: the OS user); a review records it as reviewer")
    run.add_argument("--approver", metavar="NAME", help="who approved the plan of an execute (default: the operator)")
    run.add_argument("--four-eyes", action="store_true", default=None,
                     help="the approver must not be the reviewer (also RUNBOOK_FOUR_EYES=1; always on production)")
    run.add_argument("--sign-key", metavar="PATH", help="sign the approval and manifest with this SSH key "
                     "(ssh-keygen -Y sign; default: RUNBOOK_SIGNING_KEY)")
    run.add_argument("--signer", metavar="ID", help="the signer identity your allowed_signers file names "
                     "(default: RUNBOOK_SIGNER, else the operator)")
    run.add_argument("--no-progress", action="store_true", help="hide papermill's progress bar")
    run.add_argument("--log-output", action="store_true", help="stream the notebook's output to the terminal")

    ev = sub.add_parser("evidence", help="check or summarize an incident's evidence")
    ev_sub = ev.add_subparsers(dest="evidence_command", required=True)
    v = ev_sub.add_parser("verify", help="recompute every hash and the manifest chain (an incident folder), "
                                        "or one run folder's hashes against its manifest")
    v.add_argument("dir", help="an incident folder, or one of its run folders")
    v.add_argument("--allowed-signers", metavar="FILE", help="check every SSH signature against this "
                   "allowed_signers file (ssh-keygen -Y verify); an unsigned run is then a problem")
    s = ev_sub.add_parser("show", help="print an incident summary")
    s.add_argument("dir")

    demo = sub.add_parser("demo", help="embedded PostgreSQL + seeded incident + token reversal review/execute")
    demo.add_argument("--evidence-dir", default="incidents")

    lab = sub.add_parser("lab", help="JupyterLab on the notebooks, DATABASE_URL set to the embedded demo database")
    lab.add_argument("--port", type=int, help="JupyterLab's port (default: the first free one from 8888)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser (implied without a display)")
    lab.add_argument("--reset", action="store_true", help="recreate the demo database with a fresh incident")
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
            for pname, tname, default, desc in parameter_rows(mod):
                print(f"    {pname:24s} {tname}, {default} — {desc}")
    return 0


def execute_command(args: argparse.Namespace, procedure: str, plan_id: str) -> str:
    """The command that executes a reviewed plan: the review's own -f files and -p pairs, its incident and
    evidence root, then ``--execute --approve PLAN_ID``, shell-quoted, ready to paste."""
    cmd = ["runbook", "run", procedure]
    for f in args.parameters_file:
        cmd += ["-f", str(f)]
    for pname, value in args.parameter:
        if pname not in _FROM_OPTIONS:
            cmd += ["-p", pname, value]
    cmd += ["--incident", args.incident]
    if args.evidence_dir != DEFAULT_EVIDENCE_DIR:
        cmd += ["--evidence-dir", args.evidence_dir]
    if args.confirm_target:
        cmd += ["--confirm-target", args.confirm_target]
    cmd += ["--execute", "--approve", plan_id]
    return shlex.join(cmd)


def _figure(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "-" if value is None or value == "" else str(value)


def _label(key: str) -> str:
    """A figure's label for people: the procedures' summaries already use them; counts are snake_case keys."""
    return key.replace("_", " ")


def print_outcome(args: argparse.Namespace, procedure: str, outcome: Any) -> None:
    """What a run found and did, in the procedure's own order with its labels, then its warnings."""
    print(f"status:   {outcome.status}")
    if outcome.plan_id:
        print(f"plan id:  {outcome.plan_id}")
    summary = {k: v for k, v in (outcome.summary or {}).items() if k != "nothing_to_do"}
    counts = outcome.counts or {}
    rows = [(_label(k), _figure(v)) for k, v in summary.items()]
    done = [(_label(k), _figure(v)) for k, v in counts.items()]
    width = max((len(label) for label, _ in rows + done), default=0)
    if rows:
        print("summary:")
        for label, value in rows:
            print(f"  {label:<{width}}  {value}")
    if done:
        print("done:")
        for label, value in done:
            print(f"  {label:<{width}}  {value}")
    warnings = (outcome.manifest or {}).get("warnings") or []
    if warnings:
        print(f"warnings ({len(warnings)}):")
        for w in warnings:
            print(f"  ! {' '.join(str(w).split())}")
    print(f"evidence: {outcome.run_dir}")
    if outcome.exit_code:
        print(f"error: {outcome.error}", file=sys.stderr)
    elif outcome.mode == "review" and outcome.plan_id and not procedure_module(procedure).checks_are_the_result:
        if (outcome.summary or {}).get("nothing_to_do"):
            print("nothing to do: the change is already applied; no execute is needed")
        else:
            print("to execute this plan:")
            print(f"  {execute_command(args, procedure, outcome.plan_id)}")


def _cmd_run(args: argparse.Namespace) -> int:
    from . import kernel

    # the kernel boots first, on a second core, while this process imports the procedure (pandas, SQLAlchemy),
    # validates and imports papermill; bad input or a refused approval ends it at once
    with kernel.early() as booted:
        from .runner import run_procedure

        mod = procedure_module(args.procedure)
        outcome = run_procedure(
            mod.NAME, build_parameters(args), incident=args.incident, evidence_root=Path(args.evidence_dir),
            operator=args.operator, progress_bar=not args.no_progress, log_output=args.log_output,
            approver=args.approver, four_eyes=args.four_eyes, sign_key=args.sign_key, signer=args.signer,
            kernel=booted,
        )
    print_outcome(args, mod.NAME, outcome)
    return outcome.exit_code


def _cmd_evidence(args: argparse.Namespace) -> int:
    from . import evidence

    if args.evidence_command == "show":
        print(evidence.show_incident(Path(args.dir)))
        return 0
    allowed = None
    if args.allowed_signers:
        from .approvals import load_allowed_signers

        allowed = load_allowed_signers(args.allowed_signers)
    result = evidence.verify_path(Path(args.dir), allowed)  # EvidenceError (exit 11) for anything not evidence
    for p in result.problems:
        print(p)
    print_people(result.people)
    if result.problems:
        n = len(result.problems)
        print(f"evidence NOT intact: {n} problem{'' if n == 1 else 's'}", file=sys.stderr)
        return 11
    signed = ", every signature checks out against the allowed signers" if result.signatures_checked else ""
    if result.kind == "run":
        verb = "check out" if result.link and " and " in result.link else "checks out"
        link = f"; {result.link} {verb}" if result.link else ""
        print(f"run {result.path.name} intact: {result.files} files match its manifest{link}{signed}; the chain is "
              f"checked when you verify the incident folder {result.path.parent}")
        return 0
    print(f"evidence intact: {result.runs} runs, every hash and the manifest chain check out{signed}")
    return 0


def print_people(rows: list[dict[str, str]]) -> None:
    """Per run: what it was, its verdict, who reviewed, approved and ran it, and who signed it."""
    if rows:
        print("runs (who reviewed, approved, ran and signed):")
    for r in rows:
        line = f"{r['run']}: {r['procedure']} {r['mode']} {r['status']}; operator {r['operator']}"
        if r["mode"] == "review":
            line += f"; reviewer {r['reviewer']}"
        if r["mode"] == "execute":
            line += f"; reviewer {r['reviewer']}; approver {r['approver']}; review run {r['review_run']}"
        print(f"  {line}; signed: {r['signed']}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(evidence_root=Path(args.evidence_dir))


def _cmd_lab(args: argparse.Namespace) -> int:
    from .lab import run_lab

    return run_lab(port=args.port, no_browser=args.no_browser, reset=args.reset)


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # the ``runbook`` program itself (not a call from Python), about to exit
        _before_exit()
    return code


def _before_exit() -> None:
    """Let the interpreter exit without walking every object once more: its last garbage collections traverse all
    the modules a run imported (papermill, pandas, nbconvert…), ~0.4 s after the work is done. Frozen objects are
    skipped; files, atexit handlers and the exit status are unaffected (everything was written and closed)."""
    import gc

    sys.stdout.flush()
    sys.stderr.flush()
    gc.disable()
    gc.freeze()


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        handler = {"list": _cmd_list, "run": _cmd_run, "evidence": _cmd_evidence, "demo": _cmd_demo,
                   "lab": _cmd_lab}[args.command]
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
