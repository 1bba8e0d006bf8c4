"""A run's report page (``<notebook>.html`` next to the executed notebook): the header built from the manifest,
then the notebook without its code, its parameters cells, its log lines or raw values; nothing remote
(:func:`offline`)."""

from __future__ import annotations

import copy
import functools
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .figures import (
    MISSING,
    _e,
    _is_number,
    _procedure,
    checks,
    count_figures,
    fmt,
    header_rows,
    numbers_in_text,
    state_order,
    summary_figures,
    verdict,
    verification_text,
)

#: notebook cell tags whose cells the report leaves out entirely
HIDDEN_TAGS = frozenset({"parameters", "injected-parameters", "remove-cell", "report-hide"})


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


@functools.lru_cache(maxsize=1)
def _exporter() -> Any:
    """The report's nbconvert exporter, built once per process: its templates are compiled on first use."""
    import jinja2
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file="runbook_report.html.j2",
                        extra_loaders=[jinja2.DictLoader({"runbook_report.html.j2": _TEMPLATE})],
                        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)


def _export(nb: Any, resources: dict[str, Any]) -> str:
    exporter = _exporter()
    log = exporter.log  # nbconvert warns about plots without alt text: noise on the CLI's stderr, not a problem
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        body, _ = exporter.from_notebook_node(nb, resources=resources)
    finally:
        log.setLevel(level)
    return str(body)


def render_run_report(notebook: Path, manifest: Mapping[str, Any]) -> str:
    """The run's report page (HTML, offline) from its executed notebook and its manifest."""
    import nbformat

    nb = report_notebook(nbformat.read(str(notebook), as_version=4))
    m = dict(manifest)
    m.setdefault("incident", notebook.parent.parent.name)
    m.setdefault("run", notebook.parent.name)
    nb.metadata["title"] = f"{m.get('incident') or ''} · {m.get('procedure') or notebook.stem} · " \
                           f"{m.get('mode') or ''} · {m.get('status') or ''}".strip(" ·")
    resources = {"report_header": header_html(m, state_order(notebook.parent), notebook.name), "report_css": _CSS}
    with _EXPORTING:
        body = _export(nb, resources)
    return offline(body)


#: one render at a time per process (the exporter is shared; :func:`warm_up` may be rendering in a thread)
_EXPORTING = threading.Lock()


def warm_up() -> None:
    """Render a small notebook of every kind of output a report shows, and throw the page away.

    A report's first render in a process pays once for nbconvert's import, its template compilation and the first
    use of its HTML parser, Markdown renderer and CSS selectors (~0.5 s); the runner calls this in a thread while
    the kernel runs the notebook, so the real page is rendered warm. Never raises (the real render reports).
    """
    try:
        import nbformat

        v4 = nbformat.v4
        outputs = [
            v4.new_output("display_data", data={"text/plain": "t", "text/html": "<div><table class='t'><tr><td>1 "
                                                "&amp; &nbsp;2</td></tr></table><script type='module'>0</script>"
                                                "<style>.t{color:red}</style></div>"}),
            v4.new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="}),
            v4.new_output("stream", name="stderr", text="warning\n"),
            v4.new_output("execute_result", data={"text/plain": "r", "text/html": "<p>r</p>"}, execution_count=1),
            v4.new_output("error", ename="E", evalue="v", traceback=["\x1b[0;31mE\x1b[0m: v"]),
        ]
        nb = v4.new_notebook(cells=[
            v4.new_markdown_cell("# Title\n\nSome *text*, `code` and [a link](x.html).\n\n- one\n- two\n\n"
                                 "| a | b |\n| --- | --- |\n| 1 | 2 |\n"),
            v4.new_code_cell("x", outputs=outputs)])
        nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
        m = {"procedure": "warm-up", "mode": "review", "status": "succeeded"}
        with _EXPORTING:
            offline(_export(nb, {"report_header": header_html(m), "report_css": _CSS}))
    except Exception:  # noqa: BLE001,S110 - a warm-up only
        pass
