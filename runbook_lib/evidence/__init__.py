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

The package, by concern (each module says what it holds):

* ``folders``  — run folders: numbering, the incident lock, live runs, interrupted runs, Parquet files
* ``export``   — a review's exports: ``COPY (query) TO STDOUT`` in the review's transaction, streamed to Parquet
* ``render``   — a run's HTML report page and the redaction of its text files
* ``manifest`` — manifest.json, file hashes, the hash chain, ``finalize_run``
* ``verify``   — checking a run or an incident: hashes, chain links, signatures, approvals
* ``index``    — ``index.html`` / ``INDEX.md``, the chain head, the terminal summary

The public names are re-exported here, so ``evidence.NAME`` keeps working for callers.
"""

from __future__ import annotations

from .folders import INDEX_FILES, MANIFEST, is_live, new_run_dir, release_run, run_dirs, write_frame
from .index import chain_head, load_manifests, show_incident, write_index
from .manifest import (
    KEY_PACKAGES,
    MANIFEST_SIG,
    RUN_UNLISTED_ALLOWED,
    SELF_DIGEST,
    code_version,
    finalize_run,
    manifest_digest,
    package_versions,
    sha256_file,
)
from .render import redact_files, render_html
from .verify import Verification, verify_incident, verify_path, verify_run

__all__ = [
    "INDEX_FILES", "KEY_PACKAGES", "MANIFEST", "MANIFEST_SIG", "RUN_UNLISTED_ALLOWED", "SELF_DIGEST", "Verification",
    "chain_head", "code_version", "finalize_run", "is_live", "load_manifests", "manifest_digest", "new_run_dir",
    "package_versions", "redact_files", "release_run", "render_html", "run_dirs", "sha256_file", "show_incident",
    "verify_incident", "verify_path", "verify_run", "write_frame", "write_index",
]
