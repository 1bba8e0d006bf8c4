"""Evidence pages people read: a report page for every run, and the incident page (a timeline of its runs).

Rendering only. ``evidence.render_html`` and ``evidence.write_index`` (which decide where files go, and hash
and chain them) delegate here. By concern: :mod:`.figures` the labels, formatting, net change and verdict texts
both pages share; :mod:`.run_page` a run's page; :mod:`.incident_page` ``index.html`` and ``INDEX.md``. Every
public name is re-exported here (``report.fmt``, ``report.render_run_report``…).

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

from .figures import (
    COUNT_LABELS,
    MISSING,
    NET_FIGURES,
    change_text,
    checks,
    count_figures,
    database_text,
    figures_text,
    fmt,
    header_rows,
    key_figures,
    label,
    net_change,
    numbers_in_text,
    state_order,
    summary_figures,
    verdict,
    verification_text,
    when,
    who_text,
)
from .incident_page import incident_html, incident_markdown, run_row
from .run_page import HIDDEN_TAGS, header_html, offline, render_run_report, report_notebook, warm_up

__all__ = [
    "COUNT_LABELS", "HIDDEN_TAGS", "MISSING", "NET_FIGURES", "change_text", "checks", "count_figures",
    "database_text", "figures_text", "fmt", "header_html", "header_rows", "incident_html", "incident_markdown",
    "key_figures", "label", "net_change", "numbers_in_text", "offline", "render_run_report", "report_notebook",
    "run_row", "state_order", "summary_figures", "verdict", "verification_text", "warm_up", "when", "who_text",
]
