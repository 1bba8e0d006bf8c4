"""Rendering a run's files: its HTML report page (the page itself is the ``report`` package) and its secrets masked.

``render_html`` writes ``<notebook>.html`` next to the executed notebook; ``redact_files`` rewrites every text
file of a run folder with secrets masked before it is hashed (``manifest.write_manifest``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..redact import redact_text


def render_html(notebook: Path, manifest: dict[str, Any] | None = None) -> Path:
    """The run's report page next to its executed notebook (``<notebook>.html``), readable offline.

    A header from ``manifest`` (what the runner is about to archive: incident, verdict, who, database, plan id,
    figures, checks), then the notebook's narrative, tables and plots without its code (the ``report`` package). The
    executed notebook itself is left as it is.
    """
    from .. import report

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
