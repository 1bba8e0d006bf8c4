"""Run a procedure's notebook headlessly with papermill into a new evidence folder, then archive it.

``run_procedure`` is the one library call behind ``runbook run``: parameters are validated first (bad
input stops before anything runs or is written), the notebook is executed into
``<evidence_root>/<incident>/<NNN>_<time>_<procedure>_<mode>/``, and the folder is finalized (redacted,
hashed, chained, indexed) whatever the outcome. The exit status comes from the error the notebook met.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import db, procedures, run_state
from . import params as params_mod
from .errors import ApprovalError, EvidenceError, KernelDiedError, ParameterError
from .kernel import KERNEL_ARGUMENTS, KERNEL_LOG, Kernel, started
from .redact import redact_obj, redact_text

DEFAULT_EVIDENCE_ROOT = Path("incidents")


def notebooks_dir() -> Path:
    return Path(os.environ.get("RUNBOOK_NOTEBOOKS") or Path(__file__).resolve().parent.parent / "notebooks")


@dataclass
class RunOutcome:
    procedure: str
    mode: str
    status: str
    exit_code: int
    run_dir: Path
    plan_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def operator_name(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


def validate_parameters(procedure: str, values: dict[str, Any]) -> params_mod.CommonParams:
    """Validate before anything runs: unknown names, types, dates, consistency."""
    proc = procedures.get(procedure)
    return params_mod.validate(proc.Params, values)


def run_procedure(
    procedure: str,
    parameters: dict[str, Any],
    *,
    incident: str = "adhoc",
    evidence_root: str | Path = DEFAULT_EVIDENCE_ROOT,
    operator: str | None = None,
    progress_bar: bool = True,
    log_output: bool = False,
    approver: str | None = None,
    four_eyes: bool | None = None,
    sign_key: str | Path | None = None,
    signer: str | None = None,
    kernel: Kernel | None = None,
) -> RunOutcome:
    """Validate, run the notebook into a new run folder of the incident, archive it.

    ``kernel``: one the caller booted already (the CLI: :func:`runbook_lib.kernel.early`, which ends it if no run
    takes it); otherwise the run boots one once its folder exists.
    An execute is approved before papermill starts (``approvals.approve``): its plan id must come from a
    succeeded, unaltered review of the incident, and with four eyes (``four_eyes``, ``RUNBOOK_FOUR_EYES=1``,
    always on a target marked production) the approver (default: the operator) must not be its reviewer;
    otherwise the run is archived as aborted with exit 6 and nothing is changed. With ``sign_key`` (or
    ``RUNBOOK_SIGNING_KEY``) the approval and the manifest are signed with ``ssh-keygen -Y sign``.
    """
    from . import approvals
    from .evidence.folders import new_run_dir, release_run

    proc = procedures.get(procedure)
    if "evidence_dir" in parameters:
        raise ParameterError("parameter 'evidence_dir' is set by the runner (the new run folder): use --evidence-dir "
                             "for the evidence root", "evidence_dir")
    params = validate_parameters(proc.NAME, parameters)
    db.database_url()  # fail fast, before any folder is made, when the target is not configured
    who = operator_name(operator)
    signing = approvals.signing_from(sign_key, signer, who)
    if signing is not None:
        approvals.preflight(signing)  # a key that cannot sign is found before anything runs
    nb_in = notebooks_dir() / proc.NOTEBOOK
    if not nb_in.is_file():
        raise EvidenceError(f"notebook {nb_in} is missing from this installation")
    # held (flock on the folder) until archived: a concurrent run of the incident must not take it for dead
    run_dir = new_run_dir(Path(evidence_root), incident, proc.NAME, params.mode, hold=True)
    try:
        people: dict[str, Any] = {"reviewer": who} if params.mode == "review" else {}
        if params.mode == "execute":
            try:
                approval = approvals.approve(run_dir.parent, proc.NAME, params, approver=approver or who,
                                             operator=who, four_eyes_requested=four_eyes,
                                             signer=signing.signer if signing else None)
            except ApprovalError as exc:
                return _refused(run_dir, proc, params, incident=incident, operator=who, signing=signing,
                                approver=approver or who, exc=exc)
            approvals.write_approval(run_dir, approval, signing)
            people = {k: approval[k] for k in ("approver", "reviewer", "review_run", "four_eyes")}
            people["approval"] = approvals.APPROVAL
        return _run_in(run_dir, proc, nb_in, params, incident=incident, operator=who, progress_bar=progress_bar,
                       log_output=log_output, people=people, signing=signing, kernel=kernel)
    finally:
        release_run(run_dir)


def _sign_manifest(signing: Any) -> Any:
    """The ``finalize_run`` hook that signs ``manifest.json`` (None when unsigned)."""
    if signing is None:
        return None
    from . import approvals

    return lambda path: approvals.sign_file(signing, path)


def _refused(run_dir: Path, proc: Any, params: params_mod.CommonParams, *, incident: str, operator: str,
             signing: Any, approver: str, exc: ApprovalError) -> RunOutcome:
    """An execute whose approval was refused before papermill: archived as aborted, nothing changed."""
    from .evidence.folders import now as utc_now
    from .evidence.manifest import finalize_run

    now = utc_now()
    line = " ".join(str(exc.message).split())
    manifest = {
        "procedure": proc.NAME, "mode": params.mode, "status": "aborted", "plan_id": params.approved_plan,
        "incident": incident, "operator": operator, "approver": approver, "reviewer": None, "review_run": None,
        "parameters": redact_obj({**params.public_dict(), "evidence_dir": str(run_dir)}),
        "committed": False, "started_at": now, "finished_at": now, "notebook": None,
        "signer": signing.signer if signing else None,
        "error": {"message": line, "type": type(exc).__name__, "step": "approval", "exit_code": exc.exit_code},
    }
    final = finalize_run(run_dir, manifest, sign=_sign_manifest(signing))
    return RunOutcome(procedure=proc.NAME, mode=params.mode, status="aborted", exit_code=exc.exit_code,
                      run_dir=run_dir, plan_id=params.approved_plan, error=line, manifest=final)


def _run_in(run_dir: Path, proc: Any, nb_in: Path, params: params_mod.CommonParams, *, incident: str,
            operator: str, progress_bar: bool, log_output: bool, people: dict[str, Any],
            signing: Any, kernel: Kernel | None) -> RunOutcome:
    from .evidence.manifest import finalize_run
    from .evidence.render import render_html

    nb_out = run_dir / proc.NOTEBOOK
    injected = {**params.public_dict(), "evidence_dir": str(run_dir)}
    with started(run_dir, kernel) as kernel:  # booting while papermill is imported and prepares the notebook
        _import_papermill()
        warm = threading.Thread(target=_warm_report, name="runbook-report-warm-up", daemon=True)
        warm.start()  # the report's first-render costs, paid while the kernel works (a second core)
        papermill_error, kernel_died = _execute_notebook(nb_in, nb_out, run_dir, injected, kernel,
                                                         progress_bar=progress_bar, log_output=log_output)
        kernel.ask_to_end()  # it ends while the report renders
        warm.join()
        state = run_state.read(run_dir)
        status, exit_code, error_line, error = _outcome(state, papermill_error, kernel_died)
        manifest = {"procedure": proc.NAME, "mode": params.mode, "status": status, **run_state.manifest_fields(state),
                    "incident": incident, "operator": operator, **people,
                    "signer": signing.signer if signing else None, "parameters": redact_obj(injected),
                    "error": error, "notebook": nb_out.name}
        try:
            if nb_out.is_file():
                render_html(nb_out, manifest)
        except Exception as exc:  # noqa: BLE001 - the HTML copy is a convenience; its absence is recorded
            manifest["html_error"] = redact_text(str(exc))[:300]
    final = finalize_run(run_dir, manifest, sign=_sign_manifest(signing))
    return RunOutcome(procedure=proc.NAME, mode=params.mode, status=status, exit_code=exit_code, run_dir=run_dir,
                      plan_id=state.get("plan_id"), summary=state.get("summary") or {},
                      counts=state.get("counts") or {}, error=error_line, manifest=final)


def _warm_report() -> None:
    from .report import warm_up

    warm_up()


def _import_papermill() -> None:
    """Import papermill (and through it nbformat and jsonschema) without ``rfc3987_syntax``.

    jsonschema's format checkers import ``rfc3987_syntax`` when it is installed, for the "iri" formats; it builds
    a grammar at import (~0.8 s, the largest single cost of starting a run). Nothing here checks those formats
    (nbformat validates notebooks without format checkers), so during this first import the module is marked
    absent and jsonschema leaves the two IRI checkers out, as where the package is not installed. Later imports of
    ``rfc3987_syntax`` itself work as usual.
    """
    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        import papermill  # noqa: F401 - already paid for, or imported by someone else first
        return
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # "import" raises ImportError
    try:
        import papermill  # noqa: F401
    finally:
        if "rfc3987_syntax" in sys.modules and sys.modules["rfc3987_syntax"] is None:
            del sys.modules["rfc3987_syntax"]


def _outcome(state: run_state.RunState, papermill_error: str | None,
             kernel_died: bool) -> tuple[str, int, str | None, dict[str, Any] | None]:
    """The run's status, exit status, error line and the manifest's ``error`` (None when it succeeded), from the
    run state the notebook wrote and what papermill met; the error line is one line."""
    status = state.get("status", "failed")
    err = state.get("error") or {}
    exit_code = 0
    if papermill_error or status not in ("succeeded",):
        exit_code = int(err.get("exit_code") or (KernelDiedError.exit_code if kernel_died else 1))
        if status in ("running", "succeeded"):
            status = "failed"
    error_line = err.get("message") or (redact_text(papermill_error) if papermill_error else None)
    if exit_code and not error_line:
        error_line = "the notebook did not finish; see the executed notebook"
    if error_line:
        error_line = " ".join(str(error_line).split())  # one line, whatever the exception's text held
    error = {"message": error_line, "type": err.get("type") or ("KernelDiedError" if kernel_died else None),
             "step": err.get("step"), "exit_code": exit_code} if exit_code else None
    return status, exit_code, error_line, error


def _execute_notebook(nb_in: Path, nb_out: Path, run_dir: Path, injected: dict[str, Any], kernel: Kernel, *,
                      progress_bar: bool, log_output: bool) -> tuple[str | None, bool]:
    """Execute the notebook with papermill into ``nb_out`` on ``kernel`` (its process's own output: kernel.log).

    Returns the error papermill met (None: the notebook ran to its end) and whether the kernel died.
    """
    import papermill as pm

    from .papermill_engine import ENGINE

    papermill_error: str | None = None
    kernel_died = False
    with _papermill_logging(log_output), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # with ``km`` (the kernel ``kernel.started`` started) nbclient neither starts nor shuts down a kernel; the
            # class and the arguments serve only where that start failed (papermill starts one, and reports)
            pm.execute_notebook(
                str(nb_in), str(nb_out), parameters=injected, progress_bar=progress_bar, log_output=log_output,
                kernel_name="python3", cwd=str(Path.cwd()), report_mode=False, km=kernel.km,
                kernel_manager_class=kernel.manager_class, extra_arguments=KERNEL_ARGUMENTS, engine_name=ENGINE,
            )
        except pm.PapermillExecutionError as exc:
            papermill_error = f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # noqa: BLE001 - kernel death etc.: archived, then reported
            papermill_error = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "DeadKernelError":
                kernel.output.settle()  # what it wrote as it died, in kernel.log
                papermill_error = _kernel_died(run_dir, run_dir / KERNEL_LOG)
                kernel_died = True
    return papermill_error, kernel_died


@contextlib.contextmanager
def _papermill_logging(log_output: bool) -> Iterator[None]:
    """papermill's logging during the run, restored after it.

    Parameters were validated strictly before; papermill's own warnings about them would only be noise, and its
    error lines (e.g. "Kernel died while waiting for execute reply.") would break the one-line error contract on
    stderr: the failure is reported once, by the runner. With log_output the notebook's output streams to stdout.
    """
    pm_logger = logging.getLogger("papermill")
    old_level, old_propagate = pm_logger.level, pm_logger.propagate
    stream = _OutputStream() if log_output else None
    pm_logger.setLevel(logging.INFO if log_output else logging.CRITICAL)
    if stream is not None:
        pm_logger.addHandler(stream)
        pm_logger.propagate = False  # printed once, on stdout, not again by the root logger's fallback on stderr
    try:
        yield
    finally:
        pm_logger.setLevel(old_level)
        pm_logger.propagate = old_propagate
        if stream is not None:
            pm_logger.removeHandler(stream)


def _kernel_died(run_dir: Path, kernel_log: Path) -> str:
    steps = (run_state.read(run_dir).get("steps") or {}).items()
    running = [name for name, st in steps if isinstance(st, dict) and st.get("status") == "running"]
    during = f" during the {running[-1]} step" if running else ""
    said = f"; what the kernel process wrote is in {KERNEL_LOG}" if kernel_log.is_file() and \
        kernel_log.stat().st_size else ""
    return (f"DeadKernelError: the notebook's kernel died{during} (killed, or out of memory); an open database "
            f"transaction is rolled back by the server; the executed notebook is archived as failed{said}")


class _OutputStream(logging.Handler):
    """``--log-output``: the notebook's output lines (papermill logs them at INFO) on stdout, redacted."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact_text(self.format(record))
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - streaming is a convenience; the notebook keeps everything
            self.handleError(record)
