"""An incident's index and summary: ``index.html`` / ``INDEX.md`` (``write_index``), the chain head to record in
the ticket (``chain_head``) and the terminal summary of ``runbook evidence show`` (``show_incident``).

The pages themselves are rendered by the ``report`` package; this module decides what goes into them and where.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import EvidenceError
from ..redact import redact_text
from .folders import MANIFEST, is_live, run_dirs
from .manifest import chain_tail
from .verify import verify_incident


def load_manifests(incident_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    out: list[tuple[Path, dict[str, Any] | None]] = []
    for d in run_dirs(incident_dir):
        try:
            out.append((d, json.loads((d / MANIFEST).read_text())))
        except (OSError, json.JSONDecodeError):
            out.append((d, None))
    return out


def write_index(incident_dir: Path) -> None:
    """``index.html`` and ``INDEX.md``: the chain head, the net change, and the timeline of every run with links."""
    from .. import report

    manifests = load_manifests(incident_dir)
    rows = [report.run_row(d, m, live=not m and is_live(d)) for d, m in manifests]
    net = report.net_change(m for _, m in manifests)
    head = chain_head(incident_dir)
    md = report.incident_markdown(incident_dir.name, incident_dir, rows, net, head)
    (incident_dir / "INDEX.md").write_text(redact_text(md), encoding="utf-8")
    page = report.incident_html(incident_dir.name, incident_dir, rows, net, head)
    (incident_dir / "index.html").write_text(redact_text(page), encoding="utf-8")


def chain_head(incident_dir: Path) -> str | None:
    """SHA-256 of the newest manifest: paste it into the incident ticket to anchor the whole chain."""
    _, digest, _ = chain_tail(incident_dir, incident_dir / "__none__")
    return digest


def show_incident(incident_dir: Path) -> str:
    """A terminal summary of an incident: one line per run, the net change, then the chain head and its integrity."""
    from .. import report

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
