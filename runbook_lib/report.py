"""Evidence pages people read: a report page for every run, and the incident page (a timeline of its runs).

Rendering only. ``evidence.render_html`` and ``evidence.write_index`` (which decide where files go, and hash
and chain them) delegate here.

* **Run report** (``<notebook>.html`` next to the executed notebook): a header built from the run's manifest —
  incident, procedure, mode, verdict (status and verification), who (operator, reviewer, approver, the review
  run), start and end, database name, server version and fingerprint, plan id, the figures in a fixed order with
  human labels and thousands separators, the verification checks (passed / FAILED / pending) — then the
  notebook's narrative, tables and plots. Code is hidden (nbconvert's ``exclude_input``); the parameters cells,
  the run's log lines (stdout), the live summary box (the header replaces it) and raw Python values (an
  ``execute_result`` that has only a ``text/plain`` form, e.g. the state dictionary ``run.finish()`` returns) are
  left out. The executed notebook, with its code, stays in the evidence unchanged.
* **Incident page** (``index.html`` and ``INDEX.md``): the chain head to record in the ticket, the net change of
  the incident (summed over its committed executes), and a timeline of its runs with links to each run's
  report page and notebook.

Nothing on these pages is loaded from the network: no require.js, MathJax, mermaid or widget scripts (the
template leaves them out), CSS inlined, plots embedded as data URIs, itables' offline bundle inlined, and any
remote ``src``/``href`` left in an output (itables' help links) is removed (:func:`offline`).
"""

from __future__ import annotations

import copy
import datetime as dt
import html
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .procedures.base import Procedure

MISSING = "—"

#: execute figures (a manifest's ``counts``) in display order, with their labels; other keys follow, sorted
COUNT_LABELS: dict[str, str] = {
    "tokens_reversed": "tokens reversed",
    "rows_reversed": "ledger rows reversed",
    "users_affected": "users affected",
    "ledger_rows_inserted": "reversing ledger rows inserted",
    "ledger_rows_deleted": "ledger rows deleted",
    "clamp_rows_inserted": "clamp adjustment rows inserted",
    "clamp_shortfall": "tokens not reversed (clamped at zero)",
    "balances_updated": "balances updated",
    "running_balances_corrected": "running balances corrected",
    "users_left_negative": "users left below zero",
    "redemptions_deleted": "redemptions deleted",
    "vouchers_updated": "vouchers updated",
    "vouchers_status_changed": "voucher statuses changed",
    "objects dropped": "database objects dropped",
    "migration_name": "migration",
    "migration_checksum": "migration checksum",
    "migration": "migration",
    "rows_marked_rolled_back": "migration rows marked rolled back",
    "steps_missing_marked_applied": "missing steps marked applied",
    "compensating_statements": "compensating statements run",
    "row_inserted": "migration row inserted",
    "override_reason": "override reason",
    "rows_restored": "rows restored",
    "tables": "tables",
    "archive": "archive",
    "archive_bytes": "archive size (bytes)",
    "pg_restore_list_entries": "archive entries (pg_restore --list)",
    "checksums": "table checksums",
    "copy": "rehearsal copy",
    "copy_kept": "copy kept",
    "copied_by": "copied by",
    "rehearsed_plan_id": "rehearsed plan id",
    "verification_passed": "verification on the copy passed",
    "checks_failed": "checks failed on the copy",
    "live_unchanged": "live database unchanged",
}

#: figures that add up over an incident's committed executes (the net change); "rows deleted from <table>" too
NET_FIGURES = ("tokens_reversed", "rows_reversed", "ledger_rows_inserted", "ledger_rows_deleted",
               "clamp_rows_inserted", "clamp_shortfall", "balances_updated", "running_balances_corrected",
               "redemptions_deleted", "vouchers_updated", "vouchers_status_changed", "objects dropped",
               "rows_restored", "rows_marked_rolled_back", "steps_missing_marked_applied", "compensating_statements")
#: notebook cell tags whose cells the report leaves out entirely
HIDDEN_TAGS = frozenset({"parameters", "injected-parameters", "remove-cell", "report-hide"})


def _procedure(m: Mapping[str, Any]) -> type[Procedure]:
    """The contract class of the run's procedure (a writing one, with defaults, for a name no longer known)."""
    from . import procedures
    from .errors import UnknownProcedureError

    try:
        return type(procedures.get(str(m.get("procedure") or "")))
    except UnknownProcedureError:
        return Procedure


# ------------------------------------------------------------------------------------------ figures
def fmt(value: Any) -> str:
    """A value for people: thousands separators (38,175), yes/no, "—" for nothing, mappings as ``k: v``."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) or MISSING
    return str(value)


_BARE_NUMBER = re.compile(r"(?<![\w.,:/#-])-?\d{4,}(?![\w:/-]|[.,]\d)")


def numbers_in_text(text: str) -> str:
    """Thousands separators for the whole numbers in a sentence (a procedure's warning), not in ids or dates."""
    return _BARE_NUMBER.sub(lambda m: f"{int(m.group(0)):,}", text)


def label(key: str) -> str:
    """A figure's label: the procedures' summaries already use words; counts are snake_case keys."""
    return COUNT_LABELS.get(key) or key.replace("_", " ")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def count_figures(counts: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """An execute's counts as (label, value), in the fixed order of ``COUNT_LABELS``, then the rest sorted."""
    counts = counts or {}
    known = [k for k in COUNT_LABELS if k in counts]
    rest = sorted(k for k in counts if k not in COUNT_LABELS)
    return [(label(k), counts[k]) for k in [*known, *rest]]


def summary_figures(summary: Mapping[str, Any] | None, order: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """A plan's summary as (label, value) in the procedure's own order (``order``, from run-state.json, when the
    mapping lost it: manifests are written with sorted keys), without the internal ``nothing_to_do`` flag."""
    summary = summary or {}
    keys = [k for k in order if k in summary] + [k for k in summary if k not in order]
    return [(label(k), summary[k]) for k in keys if k != "nothing_to_do"]


def state_order(run_dir: Path | None) -> list[str]:
    """The procedure's order of its summary figures, as its run wrote them to run-state.json."""
    from . import run_state

    summary = run_state.read(run_dir).get("summary")
    return list(summary) if isinstance(summary, dict) else []


def key_figures(m: Mapping[str, Any], order: Sequence[str] = (), limit: int = 4) -> list[tuple[str, Any]]:
    """The few figures that say what a run did (an execute's counts) or found (a review's plan), numbers only."""
    figures = count_figures(m.get("counts")) if m.get("counts") else summary_figures(m.get("summary"), order)
    return [(k, v) for k, v in figures if _is_number(v)][:limit]


def figures_text(figures: Iterable[tuple[str, Any]]) -> str:
    return "; ".join(f"{k}: {fmt(v)}" for k, v in figures)


def net_change(manifests: Iterable[Mapping[str, Any] | None]) -> list[tuple[str, int | float, list[str]]]:
    """The incident's net change: (label, total, runs) summed over the committed executes that changed the target.

    ``rows_restored`` (per table) counts as its total; ``rows deleted from <table>`` stays per table.
    """
    totals: dict[str, int | float] = {}
    runs: dict[str, list[str]] = {}
    for m in manifests:
        if not m or m.get("mode") != "execute" or m.get("committed") is not True \
                or not _procedure(m).writes:  # a copy, a dump, checks: not in the net change
            continue
        run = str(m.get("run") or "?")[:3]
        for key, value in (m.get("counts") or {}).items():
            if not (key in NET_FIGURES or key.startswith("rows deleted from ")):
                continue
            if isinstance(value, Mapping):
                value = sum(v for v in value.values() if _is_number(v))
            if not _is_number(value):
                continue
            totals[key] = totals.get(key, 0) + value
            if value:
                runs.setdefault(key, []).append(run)
    totals = {k: v for k, v in totals.items() if v}  # a figure no run changed says nothing about the change
    order = [k for k in NET_FIGURES if k in totals] + sorted(k for k in totals if k not in NET_FIGURES)
    return [(label(k), totals[k], runs[k]) for k in order]


# ------------------------------------------------------------------------------------------ verdict
def when(value: Any) -> str:
    """An ISO timestamp as ``2025-12-04 10:15:00 UTC``."""
    if not value:
        return MISSING
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if t.tzinfo is not None else "")


def checks(m: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """The manifest's verification checks by outcome: passed, failed, pending (applies after an execute)."""
    out: dict[str, list[Mapping[str, Any]]] = {"passed": [], "failed": [], "pending": []}
    for c in m.get("verification") or []:
        if not isinstance(c, Mapping):
            continue
        out["passed" if c.get("passed") else "pending" if c.get("pending") else "failed"].append(c)
    return out


def verification_text(m: Mapping[str, Any]) -> str:
    by = checks(m)
    if not any(by.values()):
        return "not run" if m.get("verification_passed") is None else \
            ("passed" if m.get("verification_passed") else "FAILED")
    if by["failed"]:
        return f"{len(by['failed'])} FAILED ({', '.join(str(c.get('name')) for c in by['failed'])}), " \
               f"{len(by['passed'])} passed" + (f", {len(by['pending'])} pending" if by["pending"] else "")
    text = f"all {len(by['passed'])} checks passed" if not by["pending"] else \
        f"{len(by['passed'])} passed, {len(by['pending'])} pending (apply after an execute)"
    return text


def change_text(m: Mapping[str, Any]) -> str | None:
    """What an execute did to the database: committed, nothing (already applied), or rolled back."""
    if m.get("mode") != "execute":
        return "nothing (a review is read-only)" if m.get("mode") == "review" else None
    if m.get("committed") is True:
        return "committed"
    if m.get("committed") is False and not m.get("error"):
        return "nothing (the change was already applied)"
    rb = m.get("rolled_back") or {}
    if rb.get("rolled_back") is True:
        return "nothing: rolled back" + (" (checked)" if rb.get("checked") else "")
    if m.get("error"):
        return "unknown: see the error and the executed notebook" if rb else "nothing committed (stopped before)"
    return None


def verdict(m: Mapping[str, Any]) -> str:
    status = str(m.get("status") or "unknown")
    err = m.get("error") or {}
    exit_code = err.get("exit_code") if isinstance(err, Mapping) else None
    head = status if not exit_code else f"{status} (exit {exit_code})"
    return f"{head} — verification: {verification_text(m)}"


def _db(m: Mapping[str, Any]) -> Mapping[str, Any]:
    d = m.get("database")
    return d if isinstance(d, Mapping) else {}


def database_text(m: Mapping[str, Any], short: bool = False) -> str:
    d = _db(m)
    if not d:
        return MISSING
    fp = str(d.get("fingerprint") or "")
    if short:
        return f"{d.get('database') or '?'} ({fp[:8] or '?'})"
    return f"{d.get('database') or '?'} · PostgreSQL {d.get('server_version') or '?'} · fingerprint {fp or '?'}"


def who_text(m: Mapping[str, Any]) -> str:
    parts = [f"operator {m.get('operator') or MISSING}"]
    for key in ("reviewer", "approver"):
        if m.get(key):
            parts.append(f"{key} {m[key]}")
    return ", ".join(parts)


def header_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The report header's facts, in order (figures and checks follow as their own tables)."""
    d = _db(m)
    err = m.get("error") if isinstance(m.get("error"), Mapping) else None
    rows = [
        ("incident", fmt(m.get("incident"))),
        ("procedure", fmt(m.get("procedure"))),
        ("mode", fmt(m.get("mode"))),
        ("verdict", verdict(m)),
        ("database change", change_text(m) or MISSING),
        ("operator", fmt(m.get("operator"))),
        ("reviewer", fmt(m.get("reviewer"))),
        ("approver", fmt(m.get("approver"))),
        ("review run", fmt(m.get("review_run"))),
        ("started", when(m.get("started_at"))),
        ("finished", when(m.get("finished_at"))),
        ("database", fmt(d.get("database"))),
        ("server version", f"PostgreSQL {d['server_version']}" if d.get("server_version") else MISSING),
        ("fingerprint", fmt(d.get("fingerprint"))),
        ("plan id", fmt(m.get("plan_id"))),
    ]
    if m.get("plan_id_at_execute") and m.get("plan_id_at_execute") != m.get("plan_id"):
        rows.append(("plan id under the locks", fmt(m["plan_id_at_execute"])))
    if m.get("signer"):
        rows.append(("signed by", fmt(m["signer"])))
    if err and err.get("message"):
        rows.append(("error", f"{err.get('message')}" + (f" (step {err['step']})" if err.get("step") else "")))
    rb = m.get("rolled_back")
    if isinstance(rb, Mapping) and rb:
        rows.append(("rolled back", f"{fmt(rb.get('rolled_back'))} — {rb.get('how') or ''}".strip(" —")))
    if m.get("run"):
        rows.append(("run", fmt(m["run"])))
    return rows


# ------------------------------------------------------------------------------------------ html pieces
_CSS = """
.rb-header{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:70em;margin:1em auto 2em auto;
  padding:0 1em;color:#212121}
.rb-header h1{font-size:1.5em;margin:0.3em 0}
.rb-header h2{font-size:1.15em;margin:1.2em 0 0.4em 0;border-bottom:1px solid #cfd8dc}
.rb-verdict{border-left:6px solid #c62828;padding:0.5em 1em;margin:0.6em 0;background:#fafafa}
.rb-verdict.rb-ok{border-left-color:#2e7d32}
.rb-header table{border-collapse:collapse;margin:0.3em 0}
.rb-header th,.rb-header td{border:1px solid #e0e0e0;padding:3px 10px;text-align:left;vertical-align:top}
.rb-header th{background:#f5f5f5;font-weight:600;white-space:nowrap}
.rb-header td.num{text-align:right;font-family:ui-monospace,monospace}
.rb-header .rb-failed{background:#ffebee;color:#b71c1c;font-weight:bold}
.rb-header .rb-pending{background:#fff8e1;color:#8d6e00}
.rb-header .rb-passed{color:#2e7d32}
.rb-header ul.rb-warnings{color:#b71c1c}
.rb-header .rb-note{color:#616161;font-size:0.9em}
.rb-notebook-title{font-family:system-ui,sans-serif;max-width:70em;margin:1em auto;padding:0 1em;color:#546e7a}
"""

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


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: Iterable[tuple[str, Any]], numbers: bool = False) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td{' class=num' if numbers and _is_number(v) else ''}>"
                   f"{_e(fmt(v) if numbers else v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>" if body else "<p>none</p>"


def header_html(m: Mapping[str, Any], order: Sequence[str] = (), notebook_name: str | None = None) -> str:
    """The report's header: facts, figures, warnings, verification (everything from the manifest)."""
    ok = m.get("status") == "succeeded" and not checks(m)["failed"]
    title = f"Incident {m.get('incident') or MISSING} · {m.get('procedure') or '?'} · {m.get('mode') or '?'}"
    parts = [f"<header class='rb-header' id='run-report'><h1>{_e(title)}</h1>",
             f"<div class='rb-verdict{' rb-ok' if ok else ''}'><b>Summary — {_e(m.get('procedure') or '?')}</b>: "
             f"{_e(verdict(m))}</div>",
             _table(header_rows(m))]
    done = count_figures(m.get("counts"))
    if done:
        parts.append("<h2>Changed by this run</h2>" + _table(done, numbers=True))
    plan = summary_figures(m.get("summary"), order)
    if plan:
        heading = "The plan (recomputed under the locks)" if m.get("mode") == "execute" else "The plan (what would change)"
        if _procedure(m).checks_are_the_result:
            heading = "Figures"
        parts.append(f"<h2>{_e(heading)}</h2>" + _table(plan, numbers=True))
        if (m.get("summary") or {}).get("nothing_to_do"):
            parts.append("<p><b>Nothing to do: the change is already applied.</b></p>")
    warnings = [numbers_in_text(str(w)) for w in m.get("warnings") or []]
    if warnings:
        parts.append(f"<h2>Warnings ({len(warnings)})</h2><ul class='rb-warnings'>"
                     + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    by = checks(m)
    parts.append(f"<h2>Verification: {_e(verification_text(m))}</h2>")
    rows = []
    for outcome, cls, shown in (("failed", "rb-failed", "FAILED"), ("pending", "rb-pending",
                                 "pending (applies after an execute)"), ("passed", "rb-passed", "passed")):
        for c in by[outcome]:
            rows.append(f"<tr><td>{_e(c.get('name'))}</td><td class='{cls}'>{_e(shown)}</td>"
                        f"<td class=num>{_e(fmt(c.get('count')))}</td><td>{_e(c.get('detail') or '')}</td></tr>")
    if rows:
        parts.append("<table><tr><th>check</th><th>outcome</th><th>rows</th><th>detail</th></tr>"
                     + "".join(rows) + "</table>")
    nb = notebook_name or m.get("notebook")
    where = (f"the executed notebook <a href='{_e(nb)}'>{_e(nb)}</a>" if nb else "the executed notebook")
    parts.append(f"<p class='rb-note'>This page leaves out the code, the parameters cells and the run's log: they "
                 f"are in {where}; the parameters and every file's SHA-256 are in "
                 f"<a href='manifest.json'>manifest.json</a> (once the run is archived). "
                 f"Check them with <code>runbook evidence verify</code> on this folder.</p></header>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------ run report
_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_css -%}<style type="text/css">{{ resources.report_css }}</style>{%- endblock html_head_css -%}
{%- block body_header -%}{{ super() }}
{{ resources.report_header }}
<div class="rb-notebook-title">The notebook: narrative, tables and plots</div>
{%- endblock body_header -%}
"""


def _is_summary_box(output: Mapping[str, Any]) -> bool:
    """The notebook's live summary box (``Run.show_summary``): the report's header replaces it."""
    data = output.get("data") or {}
    text = data.get("text/html") or ""
    text = "".join(text) if isinstance(text, list) else str(text)
    return text.lstrip().startswith("<div style='border-left:6px solid") and "<b>Summary — " in text[:400]


_SUMMARY_NOTE = ("<p class='rb-summary-note'><i>The summary of this run is the header at the top of this page "
                 "(the notebook's live summary box, built from the same run state).</i></p>")


def _keep(output: Mapping[str, Any]) -> bool:
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("name") != "stdout"  # the run's log lines (in the executed notebook); stderr stays
    if kind == "execute_result":
        return set(output.get("data") or {}) - {"text/plain"} != set()  # a raw Python value: left out
    return True  # display data (tables, plots); errors: a failed run shows where and why


def _report_output(output: Any) -> Any:
    """An output as the report shows it: the live summary box becomes a pointer to the header."""
    if _is_summary_box(output):
        import nbformat

        return nbformat.v4.new_output("display_data", data={"text/html": _SUMMARY_NOTE})
    return output


def report_notebook(nb: Any) -> Any:
    """A copy of the executed notebook as the report shows it: hidden cells and raw outputs left out."""
    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        tags = set(cell.get("metadata", {}).get("tags") or [])
        if cell.cell_type == "raw" or tags & HIDDEN_TAGS:
            continue
        if cell.cell_type == "code":
            cell.outputs = [_report_output(o) for o in cell.get("outputs", []) if _keep(o)]
            if not cell.outputs:
                continue
        cells.append(cell)
    out.cells = cells
    return out


_REMOTE = r"""(?:https?:)?//[^\s"'<>]+"""
_REMOTE_ELEMENT = re.compile(
    rf"""<script\b[^>]*\bsrc\s*=\s*["']?{_REMOTE}["']?[^>]*>\s*</script\s*>|<link\b[^>]*\bhref\s*=\s*["']?{_REMOTE}["']?[^>]*>""",
    re.I)
_REMOTE_ATTR = re.compile(rf"""(<[a-zA-Z][^<>]*?)\s(?:src|href|srcset|poster|data|action)\s*=\s*(["']?){_REMOTE}\2""",
                          re.I)
_REMOTE_CSS = re.compile(rf"""@import\s+(?:url\()?\s*["']?{_REMOTE}["']?\)?\s*;?|url\(\s*["']?{_REMOTE}["']?\s*\)""",
                         re.I)


_STYLE = re.compile(r"<style\b[^>]*>.*?</style\s*>", re.I | re.S)
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def offline(page: str) -> str:
    """Remove every reference that would make a browser fetch or open something from the network: remote scripts
    and stylesheets, remote ``src``/``href`` attributes (the text of a link stays), CSS imports of remote URLs."""
    page = _REMOTE_ELEMENT.sub("", page)
    page = _STYLE.sub(lambda s: _CSS_COMMENT.sub(lambda c: "" if "://" in c.group(0) else c.group(0), s.group(0)),
                      page)  # credits in stylesheet comments name URLs: not fetched, but no page should name one
    previous = None
    while previous != page:  # a tag may hold more than one remote attribute
        previous = page
        page = _REMOTE_ATTR.sub(r"\1", page)
    return _REMOTE_CSS.sub("", page)


def render_run_report(notebook: Path, manifest: Mapping[str, Any]) -> str:
    """The run's report page (HTML, offline) from its executed notebook and its manifest."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = report_notebook(nbformat.read(str(notebook), as_version=4))
    m = dict(manifest)
    m.setdefault("incident", notebook.parent.parent.name)
    m.setdefault("run", notebook.parent.name)
    nb.metadata["title"] = f"{m.get('incident') or ''} · {m.get('procedure') or notebook.stem} · " \
                           f"{m.get('mode') or ''} · {m.get('status') or ''}".strip(" ·")
    exporter = HTMLExporter(template_name="lab", template_file="runbook_report.html.j2",
                            extra_loaders=[jinja2.DictLoader({"runbook_report.html.j2": _TEMPLATE})],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    resources = {"report_header": header_html(m, state_order(notebook.parent), notebook.name), "report_css": _CSS}
    log = exporter.log  # nbconvert warns about plots without alt text: noise on the CLI's stderr, not a problem
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        body, _ = exporter.from_notebook_node(nb, resources=resources)
    finally:
        log.setLevel(level)
    return offline(body)


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
