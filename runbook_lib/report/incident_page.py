"""The incident page: ``index.html`` and ``INDEX.md`` (chain head, net change, timeline of the runs with links
to each run's report page and notebook). ``evidence.index`` decides what goes into them and where."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .figures import (
    MISSING,
    _e,
    change_text,
    database_text,
    figures_text,
    fmt,
    key_figures,
    state_order,
    verification_text,
    when,
    who_text,
)

_INDEX_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#212121;margin:1.5em}
table{border-collapse:collapse;margin:0.4em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
td.num{text-align:right;font-family:ui-monospace,monospace}
.head{border-left:6px solid #1565c0;padding:0.5em 1em;background:#f5f9ff;margin:1em 0}
code{font-family:ui-monospace,monospace;word-break:break-all}
.nowrap{white-space:nowrap;word-break:normal}
tr.succeeded{background:#e8f5e9} tr.aborted{background:#fff8e1} tr.other{background:#ffebee}
.scroll{overflow-x:auto}
"""


# ------------------------------------------------------------------------------------------ incident page
def run_row(run_dir: Path, m: Mapping[str, Any] | None, live: bool = False) -> dict[str, Any]:
    """One run of the incident's timeline (strings, plus its key figures as (label, value) pairs)."""
    m = m or {}
    nb = str(m.get("notebook") or "")
    page = Path(nb).with_suffix(".html").name if nb else ""
    err = m.get("error") if isinstance(m.get("error"), Mapping) else {}
    figures = key_figures(m, state_order(run_dir))
    status = str(m.get("status") or ("running" if live else "NO MANIFEST"))
    return {
        "run": run_dir.name, "number": run_dir.name.split("_", 1)[0],
        "time": str(m.get("started_at") or ""), "started": when(m.get("started_at")) if m else MISSING,
        "finished": when(m.get("finished_at")) if m else MISSING,
        "procedure": str(m.get("procedure") or "?"), "mode": str(m.get("mode") or "?"), "status": status,
        "verification": verification_text(m) if m else MISSING, "change": (change_text(m) or "") if m else "",
        "database": database_text(m, short=True) if m else MISSING,
        "operator": str(m.get("operator") or ""), "reviewer": str(m.get("reviewer") or ""),
        "approver": str(m.get("approver") or ""), "review run": str(m.get("review_run") or ""),
        "who": who_text(m) if m else MISSING, "plan id": str(m.get("plan_id") or ""),
        "key figures": figures, "figures": figures_text(figures),
        "error": str((err or {}).get("message") or ""),
        "notebook": f"{run_dir.name}/{nb}" if nb and (run_dir / nb).is_file() else "",
        "html": f"{run_dir.name}/{page}" if page and (run_dir / page).is_file() else "",
    }


def _link(href: str, text: str) -> str:
    return f"<a href='{_e(href)}'>{_e(text)}</a>" if href else ""


def incident_html(incident: str, incident_dir: Path, rows: Sequence[Mapping[str, Any]],
                  net: Sequence[tuple[str, int | float, list[str]]], head: str | None) -> str:
    """``index.html``: chain head, net change, timeline of runs (oldest first), links; nothing remote."""
    cols = ["#", "started", "procedure", "mode", "status", "verification", "database change", "database", "who",
            "plan id", "key figures", "error", "files"]
    trs = []
    for r in rows:
        cls = r["status"] if r["status"] in ("succeeded", "aborted") else "other"
        figures = "<br>".join(f"{_e(k)}: {_e(fmt(v))}" for k, v in r["key figures"])
        links = " · ".join(x for x in (_link(r["html"], "report"), _link(r["notebook"], "notebook")) if x)
        cells = [f"<b title='{_e(r['run'])}'>{_e(r['number'])}</b>", f"<span class=nowrap>{_e(r['started'])}</span>",
                 _e(r["procedure"]), _e(r["mode"]), f"<b>{_e(r['status'])}</b>", _e(r["verification"]),
                 _e(r["change"]), _e(r["database"]), _e(r["who"]).replace(", ", "<br>"),
                 f"<code class=nowrap>{_e(r['plan id'])}</code>", f"<span class=nowrap>{figures}</span>",
                 _e(r["error"]), links]
        trs.append(f"<tr class='{cls}' id='run-{_e(r['number'])}'>" + "".join(f"<td>{c}</td>" for c in cells)
                   + "</tr>")
    head_html = (f"<p>Chain head (SHA-256 of the newest manifest, run {_e(rows[-1]['number'] if rows else '?')}): "
                 f"<code id='chain-head'>{_e(head)}</code></p><p><b>Record this in the ticket.</b> Without an anchor "
                 "outside the evidence, deleting the newest runs cannot be detected; with it, "
                 f"<code>runbook evidence verify {_e(incident_dir)}</code> proves the whole chain up to it.</p>"
                 if head else "<p>No archived run yet: no chain head.</p>")
    if net:
        net_rows = "".join(f"<tr><th>{_e(k)}</th><td class=num>{_e(fmt(v))}</td><td>{_e(', '.join(runs))}</td></tr>"
                           for k, v, runs in net)
        net_html = ("<h2>Net change of the incident</h2><p>Summed over its committed executes (runs that did not "
                    f"commit, reviews, rehearsals and backups change nothing).</p><table><tr><th>figure</th>"
                    f"<th>total</th><th>runs</th></tr>{net_rows}</table>")
    else:
        net_html = ("<h2>Net change of the incident</h2><p>None: no execute of this incident committed a change "
                    "to the database.</p>")
    head_row = "".join(f"<th>{_e(c)}</th>" for c in cols)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Incident {_e(incident)}</title>"
            f"<style>{_INDEX_CSS}</style></head><body><h1>Incident {_e(incident)}</h1>"
            f"<div class='head'>{head_html}</div>{net_html}"
            f"<h2>Timeline ({len(rows)} runs, oldest first)</h2>"
            f"<div class='scroll'><table><tr>{head_row}</tr>{''.join(trs)}</table></div>"
            f"<p>Each run's report page shows its header and the notebook's narrative, tables and plots; the executed "
            f"notebook holds the code. Verify with <code>runbook evidence verify {_e(incident_dir)}</code>.</p>"
            "</body></html>")


def incident_markdown(incident: str, incident_dir: Path, rows: Sequence[Mapping[str, Any]],
                      net: Sequence[tuple[str, int | float, list[str]]], head: str | None) -> str:
    """``INDEX.md``: the same as ``index.html``. Each timeline row starts with the run folder's name (``evidence``
    reads them back to name runs whose folders were deleted)."""
    def cell(value: Any) -> str:
        return " ".join(str(value).split()).replace("|", "\\|")

    md = [f"# Incident {incident}", ""]
    if head:
        md += [f"Chain head (SHA-256 of the newest manifest): `{head}`", "",
               "**Record this in the ticket**: without an anchor outside the evidence, deleting the newest runs "
               f"cannot be detected. Check the evidence with `runbook evidence verify {incident_dir}`.", ""]
    else:
        md += [f"No archived run yet. Check the evidence with `runbook evidence verify {incident_dir}`.", ""]
    md += ["## Net change of the incident", ""]
    if net:
        md += ["Summed over its committed executes.", "", "| figure | total | runs |", "|---|---:|---|"]
        md += [f"| {cell(k)} | {fmt(v)} | {', '.join(runs)} |" for k, v, runs in net]
    else:
        md += ["None: no execute of this incident committed a change to the database."]
    cols = ["run", "started", "procedure", "mode", "status", "verification", "database", "who", "plan id",
            "figures", "error"]
    md += ["", f"## Timeline ({len(rows)} runs, oldest first)", "",
           "| " + " | ".join([*cols, "report", "notebook"]) + " |", "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        cells = [cell(r[c]) for c in cols]
        report = f"[report]({r['html']})" if r["html"] else ""
        nb = f"[notebook]({r['notebook']})" if r["notebook"] else ""
        md.append("| " + " | ".join([*cells, report, nb]) + " |")
    return "\n".join(md) + "\n"
