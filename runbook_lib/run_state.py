"""The run's state: what the driver (:class:`runbook_lib.run.Run`) records step by step in the run folder's
``run-state.json``, and what the runner (exit status, manifest), the evidence (an interrupted run) and the report
(the summary's order) read back. One file name, one set of keys, one reader and one writer.

The state is JSON on disk (a notebook kernel writes it, the runner's process reads it), so it is a ``TypedDict``:
typed for the code, plain for the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from .redact import redact_text

STATE_FILE = "run-state.json"


class StepState(TypedDict, total=False):
    status: str  # running | done | failed
    started_at: str
    finished_at: str


class ErrorState(TypedDict, total=False):
    step: str
    type: str
    message: str
    exit_code: int
    traceback: str


class RunState(TypedDict, total=False):
    procedure: str
    mode: str  # review | execute
    status: str  # running | succeeded | failed | aborted
    started_at: str  # ISO-8601, UTC
    finished_at: str
    steps: dict[str, StepState]  # parameters, review, execute, verify, after_commit
    parameters: dict[str, Any]  # validated, JSON-able, no secrets
    database: dict[str, Any]  # db.ServerInfo.as_dict(): database, server version, fingerprint
    names: dict[str, Any]  # the models/fields/enums the run used, with their tables/columns
    plan_id: str
    plan_id_at_execute: str  # recomputed under the locks
    summary: dict[str, Any]  # the plan's headline figures, in the procedure's order
    warnings: list[str]
    exports: dict[str, Any]  # name -> {file, rows}
    backup: dict[str, Any]  # the backup guard's finding (or override, or "not needed")
    transaction_id: int
    committed: bool
    #: online mode: the review's batches (number, user id range, users, rows, digest); an execute's add status,
    #: timing, transaction id and counts per batch
    batches: list[dict[str, Any]]
    counts: dict[str, Any]  # what apply did
    messages: list[str]
    rolled_back: dict[str, Any]  # after a failed execute: {checked, rolled_back, how}
    verification: list[dict[str, Any]]  # Check.as_dict() per check
    verification_passed: bool
    verification_pending: list[str]
    after_commit: dict[str, Any]  # the procedure's files written after COMMIT
    error: ErrorState
    #: the peak resident memory (MB, Linux's VmHWM) of the process that ran the run, as of this write: under the
    #: CLI the notebook's kernel, from the library its caller; absent where the system does not say
    peak_memory_mb: float


#: the state's keys a run's manifest carries unchanged (the runner adds who, where, status and the error line)
MANIFEST_KEYS = ("plan_id", "plan_id_at_execute", "summary", "counts", "warnings", "committed", "rolled_back",
                 "verification", "verification_passed", "exports", "database", "names", "backup", "after_commit",
                 "batches", "started_at", "finished_at", "peak_memory_mb")


def jsonable(v: Any) -> Any:
    """Numpy scalars, tuples, dates… as JSON values (what ``json.dumps`` writes without a ``default``)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def write(run_dir: Path, state: RunState) -> None:
    """Write the state atomically (readers never see half a file), redacted (no secret reaches the evidence)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    peak = peak_memory_mb()
    if peak is not None:
        state["peak_memory_mb"] = peak
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(redact_text(json.dumps(jsonable(state), indent=2)))
    tmp.replace(run_dir / STATE_FILE)


def peak_memory_mb() -> float | None:
    """This process's peak resident memory in MB (``VmHWM``: its own, unlike ``ru_maxrss``, which on Linux keeps
    the parent's memory at the fork that made it), or None where ``/proc`` does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return round(kb / 1024, 1)


def read(run_dir: Path | None) -> RunState:
    """The state a run left in ``run_dir``; empty when there is none (the kernel never started) or it is unreadable."""
    if run_dir is None:
        return {}
    try:
        data = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}  # type: ignore[return-value]


def manifest_fields(state: RunState) -> dict[str, Any]:
    """The part of a manifest that comes from the run's state as it is."""
    return {k: state.get(k) for k in MANIFEST_KEYS}


class FinishedRun(dict[str, Any]):
    """The run's recorded state, shown in a notebook as one line (not as the ~150-line dictionary it is)."""

    def __init__(self, state: Mapping[str, Any], *, evidence_dir: Path | None) -> None:
        super().__init__(state)
        self.evidence_dir = evidence_dir

    def __repr__(self) -> str:
        where = str(self.evidence_dir) if self.evidence_dir is not None else "none (runbook run records the evidence)"
        plan = f", plan id {self['plan_id']}" if self.get("plan_id") else ""
        return f"run {self.get('status')}: {self.get('procedure')} {self.get('mode')}{plan}; evidence: {where}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython's text/plain
        printer.text(repr(self))
