"""Run folders: where a run's evidence goes, who is still writing it, and runs that died on the way.

``new_run_dir`` numbers and creates ``<root>/<incident>/NNN_<utc time>_<procedure>_<mode>/`` under the incident
lock (``incident_lock``), archiving earlier runs of the incident whose process died as ``failed`` first;
``is_live`` / ``release_run`` track the folders a process is still writing (an flock on the folder);
``run_dirs`` lists an incident's run folders in order; ``write_frame`` streams a DataFrame into a run's Parquet file
(``export_queries``, a review's query exports, is in ``export`` and re-exported here).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EvidenceError
from .export import export_queries, parquet_path  # noqa: F401  (export_queries: re-exported, ``run`` imports it here)

if TYPE_CHECKING:
    from ..run_state import RunState

MANIFEST = "manifest.json"
INDEX_FILES = ("index.html", "INDEX.md")
#: a run folder's name: ``NNN_<utc time>_<procedure>_<mode>``, its number first
RUN_DIR_NAME = re.compile(r"^(\d{3,})_")
_INCIDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# ------------------------------------------------------------------------------------------ folders and locks
def now() -> str:
    """The current UTC time, ISO 8601 to the second (what manifests record)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def incident_lock(incident_dir: Path) -> Iterator[None]:
    """Serialize run numbering and chaining between processes writing the same incident."""
    incident_dir.mkdir(parents=True, exist_ok=True)
    with (incident_dir / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_dirs(incident_dir: Path) -> list[Path]:
    """The incident's run folders in creation order (by their number)."""
    if not incident_dir.is_dir():
        return []
    found = [p for p in incident_dir.iterdir() if p.is_dir() and RUN_DIR_NAME.match(p.name)]
    return sorted(found, key=lambda p: (int(RUN_DIR_NAME.match(p.name).group(1)), p.name))  # type: ignore[union-attr]


#: run folders this process is still writing: an exclusive flock on the folder itself, held until
#: ``release_run``. The kernel drops it when the process dies, so a folder without a manifest whose lock
#: can be taken belongs to a dead run; one whose lock is held is a live run of another process.
_HELD: dict[Path, int] = {}


def _try_lock_dir(path: Path) -> int | None:
    """An exclusive, non-blocking flock on a directory; its fd, or None when another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_live(run_dir: Path) -> bool:
    """Is another process (or this one) still writing this run folder?"""
    if run_dir.resolve() in _HELD:
        return True
    fd = _try_lock_dir(run_dir)
    if fd is None:
        return True
    os.close(fd)
    return False


def release_run(run_dir: Path) -> None:
    """Drop this process's hold on a run folder (after its manifest is written, or on the way out)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


def new_run_dir(root: Path, incident: str, procedure: str, mode: str, *, hold: bool = False) -> Path:
    """Create ``root/incident/NNN_<utc time>_<procedure>_<mode>/``; never reuses or overwrites a folder.

    Earlier runs of the incident that never got a manifest and whose process is gone (killed) are archived
    first as ``failed``, so the chain stays complete and the evidence says what happened; runs still in
    progress in another process are left alone. With ``hold`` the new folder is marked live (see
    ``release_run``) before the incident lock is released, so no concurrent run can take it for dead.
    """
    if not _INCIDENT.match(incident):
        raise EvidenceError(f"incident id {incident!r} may hold only letters, digits, '.', '_' and '-'")
    incident_dir = root / incident
    with incident_lock(incident_dir):
        for d in run_dirs(incident_dir):
            if (d / MANIFEST).is_file() or d.resolve() in _HELD:
                continue
            fd = _try_lock_dir(d)
            if fd is None:
                continue  # a live run of another process: it archives itself
            try:
                _archive_interrupted(d)
            finally:
                os.close(fd)
        existing = [int(RUN_DIR_NAME.match(p.name).group(1)) for p in run_dirs(incident_dir)]  # type: ignore[union-attr]
        n = max(existing, default=0) + 1
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        while True:
            path = incident_dir / f"{n:03d}_{stamp}_{procedure}_{mode}"
            try:
                path.mkdir(parents=False, exist_ok=False)
            except FileExistsError:
                n += 1
                continue
            if hold:
                fd = _try_lock_dir(path)
                if fd is not None:
                    _HELD[path.resolve()] = fd
            return path


def _archive_interrupted(run_dir: Path) -> None:
    """A run folder without a manifest: its process died. Record it as failed (called under the lock)."""
    from .. import run_state

    state = run_state.read(run_dir)
    name = run_dir.name.split("_", 3)
    manifest = {
        "procedure": state.get("procedure") or (name[2] if len(name) > 2 else None),
        "mode": state.get("mode") or (name[3] if len(name) > 3 else None),
        "status": "failed",
        "plan_id": state.get("plan_id"),
        "parameters": state.get("parameters"),
        "database": state.get("database"),
        "started_at": state.get("started_at"),
        "finished_at": None,
        "committed": None,
        "rolled_back": {"checked": False, "rolled_back": None,
                        "how": "the process running this run died before it finished; PostgreSQL rolls back "
                               "the open transaction of a dead connection, so nothing of it was committed "
                               "unless run-state.json shows the execute step done"},
        "error": {"message": "interrupted: the process running this run was killed before it archived the run",
                  "type": "Interrupted", "step": _last_step(state), "exit_code": 1},
        "last_state": state.get("status"),
        "execute_step": (state.get("steps") or {}).get("execute"),
        "archived_by": "a later run of the same incident",
    }
    approval: Any = None
    with contextlib.suppress(Exception):  # an execute's approval, written before papermill started: who it was
        approval = json.loads((run_dir / "approval.json").read_text())
    if isinstance(approval, dict):
        manifest.update({k: approval.get(k) for k in ("operator", "approver", "reviewer", "review_run")})
    from .manifest import write_manifest  # here: manifest.py imports this module

    write_manifest(run_dir, manifest)


def _last_step(state: RunState) -> str | None:
    steps = state.get("steps") or {}
    return list(steps)[-1] if steps else None


# ------------------------------------------------------------------------------------------ files
def write_frame(run_dir: Path, name: str, chunks: Iterable[Any]) -> Path:
    """Stream DataFrame chunks into ``run_dir/<name>.parquet`` (one row group per chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = parquet_path(run_dir, name)
    writer: pq.ParquetWriter | None = None
    try:
        for frame in chunks:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            elif table.schema != writer.schema:
                table = table.cast(writer.schema)
            writer.write_table(table)
        if writer is None:  # no rows at all: still a file, so the evidence shows the empty set
            pq.write_table(pa.table({}), path)
    finally:
        if writer is not None:
            writer.close()
    return path
