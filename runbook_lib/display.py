"""How notebooks show things: a ten-second summary box, bounded sortable tables, and a few plots.

Tables go through itables in offline mode (its JavaScript is embedded in the notebook, so the executed
notebook and its nbconvert HTML copy stay sortable and searchable without a network). Numbers are
right-aligned with thousands separators; negative balances and failed checks are highlighted. Every table
is bounded: a caption says when rows were left out, and the full set lives in the evidence files. The plots
are in :mod:`.plots` (re-exported here: notebooks call ``show.plot_totals``); the output hooks they and the
tables use (``_display``, ``_inline``, ``_nothing``) stay here.

Frames come straight from the database driver, so every function first normalizes them (:func:`normalize`):
PostgreSQL's ``sum(bigint)`` is ``numeric`` and arrives as ``decimal.Decimal`` in an object column, a
``::date`` as ``datetime.date`` objects; those become ``Int64``/``float64`` and datetime columns before any
sorting, plotting or formatting. An empty frame (no rows, or not the columns asked for) is said in words.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from .plots import (  # noqa: F401 - re-exported: notebooks call show.plot_totals, tests display.MAX_BARS
    MAX_BARS,
    Plot,
    fill_buckets,
    plot_before_after,
    plot_totals,
    plot_user_timeline,
)

DEFAULT_MAX_ROWS = 50
_NEGATIVE = "background-color:#ffebee;color:#b71c1c;font-weight:bold"
_FAILED = "background-color:#ffebee;color:#b71c1c;font-weight:bold"
_PENDING = "background-color:#fff8e1;color:#8d6e00"
_itables_ready = False


def _display(obj: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - outside IPython
        print(obj)
        return
    display(obj)


def _html(text: str) -> Any:
    try:
        from IPython.display import HTML
    except ImportError:  # pragma: no cover
        return text
    return HTML(text)


def _nothing(title: str, what: str = "nothing to show") -> None:
    _display(_html(f"<p><b>{html.escape(title)}</b>: {html.escape(what)}.</p>"))


def setup() -> bool:
    """Load itables offline into the page: call it at the start of every notebook run (its first code cell).

    It always emits the offline init output, even when this kernel has done so before: after a page reload,
    or a "run all" on the same kernel, the previous init output is gone from the page, and tables would show
    "Loading ITables..." forever. The library is embedded once per run, not once per table, so the executed
    notebook stays small. False when itables is unavailable (plain HTML tables then).
    """
    global _itables_ready
    try:
        import itables

        itables.init_notebook_mode(connected=False)
    except Exception:  # noqa: BLE001 - presentation only: fall back to the plain table
        return False
    _itables_ready = True
    return True


def _init_itables() -> bool:
    """For a table shown before any :func:`setup` in this kernel (a notebook that does not call it)."""
    return True if _itables_ready else setup()


def is_missing(v: Any) -> bool:
    """None, NaN, NaT, pd.NA or Decimal('NaN')."""
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, Decimal):
        return v.is_nan()
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, Decimal, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _is_integral(v: Any) -> bool:
    if isinstance(v, (int, np.integer)):
        return True
    if isinstance(v, Decimal):
        return v.is_finite() and v == v.to_integral_value()
    return bool(math.isfinite(v) and float(v).is_integer())


def _numeric_series(s: pd.Series) -> pd.Series:
    """Numbers of any Python/NumPy/Decimal type -> Int64 when all whole (and within int64), else float64."""
    values = [None if is_missing(v) else v for v in s]
    present = [v for v in values if v is not None]
    if all(_is_integral(v) for v in present):
        try:
            return pd.Series(pd.array([None if v is None else int(v) for v in values], dtype="Int64"),
                             index=s.index, name=s.name)
        except (OverflowError, TypeError, ValueError):
            pass  # beyond int64 (a numeric sum can be): floats then
    return pd.Series([math.nan if v is None else float(v) for v in values], index=s.index, name=s.name,
                     dtype="float64")


def _datetime_series(s: pd.Series) -> pd.Series:
    aware = any(isinstance(v, dt.datetime) and v.tzinfo is not None for v in s if not is_missing(v))
    try:
        return pd.to_datetime(s, utc=aware)
    except (TypeError, ValueError, OverflowError):
        return s


def normalize(df: pd.DataFrame, dates_as_datetime: bool = False) -> pd.DataFrame:
    """A copy whose object columns of numbers are Int64/float64 and of datetimes datetime64.

    ``datetime.date`` columns stay dates (they print as ``2025-12-01``) unless ``dates_as_datetime``, for plots.
    Columns of anything else (text, mixed values, all missing) are left as they are.
    """
    out = df.copy()
    for i in range(len(out.columns)):
        s = out.iloc[:, i]
        if s.dtype != object:
            continue
        present = [v for v in s if not is_missing(v)]
        if not present:
            continue
        if all(_is_number(v) for v in present):
            new = _numeric_series(s)
        elif all(isinstance(v, dt.datetime) for v in present):
            new = _datetime_series(s)
        elif dates_as_datetime and all(isinstance(v, dt.date) for v in present):
            new = pd.to_datetime(pd.Series([None if is_missing(v) else v for v in s], index=s.index, dtype=object))
        else:
            continue
        out.isetitem(i, new.array)
    return out


def fmt_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)) or v is None:
        return str(v)
    if is_missing(v):
        return "—"
    if _is_number(v):
        if _is_integral(v):
            return f"{int(v):,}"
        return f"{float(v):,.2f}"
    return str(v)


def summary_html(title: str, rows: Iterable[tuple[Any, Any]], warnings: Iterable[str] = (), *,
                 note: str | None = None, accent: str | None = None) -> str:
    """A box of (label, figure) rows with the warnings below: the plan's summary and the run's summary alike.
    ``accent``: a coloured left border (the run's status); ``note``: one bold line under the figures."""
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:2em'>{html.escape(str(k))}</th>"
        f"<td style='text-align:right;font-family:monospace'>{html.escape(fmt_value(v))}</td></tr>" for k, v in rows)
    if note:
        body += f"<tr><td colspan=2><b>{html.escape(note)}</b></td></tr>"
    if not body:
        body = "<tr><td colspan=2>nothing to show</td></tr>"
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    border = f"border-left:6px solid {accent}" if accent else "border:1px solid #90a4ae;border-radius:4px"
    return (f"<div style='{border};padding:0.5em 1em;margin:0.5em 0'><b>{html.escape(title)}</b><table>{body}</table>"
            + (f"<div style='color:#b71c1c'><b>Warnings</b><ul>{warn}</ul></div>" if warn else "") + "</div>")


def summary_box(title: str, summary: Mapping[str, Any], warnings: Iterable[str] = ()) -> None:
    """The headline figures of a step in a box: read in ten seconds, details below it."""
    rows = [(k, v) for k, v in (summary or {}).items() if k != "nothing_to_do"]
    note = "Nothing to do: the change is already applied." if (summary or {}).get("nothing_to_do") else None
    _display(_html(summary_html(title, rows, warnings, note=note)))


def run_summary_rows(name: str, state: Mapping[str, Any], server: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """The run's ten-second summary: what was found, what would change, what was changed, how it ended."""
    s = state
    rows: list[tuple[str, Any]] = [("procedure", name), ("mode", s.get("mode")), ("status", s.get("status"))]
    if server:
        rows.append(("database", f"{server['database']} (PostgreSQL {server['server_version']})"))
    if s.get("plan_id"):
        rows.append(("plan id", s["plan_id"]))
    rows += [(k, v) for k, v in (s.get("summary") or {}).items() if k != "nothing_to_do"]
    if s.get("mode") == "execute" and "committed" in s:
        rows.append(("changed", "yes, committed" if s["committed"] else "nothing (already applied)"))
        rows += [(f"done: {k}", v) for k, v in (s.get("counts") or {}).items()]
    if "verification_passed" in s:
        pending = len(s.get("verification_pending") or [])
        if not s["verification_passed"]:
            failed = [c["name"] for c in s.get("verification") or [] if not c["passed"] and not c.get("pending")]
            rows.append(("verification", "CHECKS FAILED: " + ", ".join(failed)))
        else:
            rows.append(("verification", "all checks passed" if not pending else
                         f"no check failed; {pending} pending (apply after execute)"))
    if s.get("error"):
        rb = s.get("rolled_back") or {}
        rows.append(("error", s["error"]["message"]))
        if rb:
            rows.append(("rolled back", f"{rb.get('rolled_back')} — {rb.get('how')}"))
    return rows


def run_summary_html(name: str, state: Mapping[str, Any], server: Mapping[str, Any] | None) -> str:
    accent = {"succeeded": "#2e7d32", "running": "#1565c0"}.get(str(state.get("status")), "#c62828")
    return summary_html(f"Summary — {name}", run_summary_rows(name, state, server), state.get("warnings") or [],
                        accent=accent)


# ------------------------------------------------------------------------------------------ tables
def _timestamp(v: object) -> str:
    return v.isoformat(sep=" ", timespec="milliseconds") if isinstance(v, pd.Timestamp) and not pd.isna(v) else ""


def _float(v: object) -> str:
    return "" if is_missing(v) else f"{float(v):,.2f}"  # type: ignore[arg-type]


def _negative(v: object) -> str:
    return _NEGATIVE if _is_number(v) and not is_missing(v) and v < 0 else ""  # type: ignore[operator]


def style_table(df: pd.DataFrame, highlight_negative: Iterable[str] = ()) -> Any:
    """A pandas Styler: thousands separators, numbers right-aligned, timestamps to the millisecond, negatives and
    failures highlighted. Object columns of Decimals/ints are converted to numbers first."""
    df = normalize(df)
    styler = df.style.hide(axis="index").format(None, na_rep="")  # NULL is an empty cell, not None/NaN/<NA>
    numeric: list[Any] = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    if numeric:
        ints = [c for c in numeric if pd.api.types.is_integer_dtype(df[c])]
        floats = [c for c in numeric if pd.api.types.is_float_dtype(df[c])]
        if ints:
            styler = styler.format("{:,}", subset=ints, na_rep="")
        if floats:
            styler = styler.format(_float, subset=floats)
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
    stamps: list[Any] = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
    if stamps:  # one width for every timestamp: milliseconds always (Prisma's timestamp(3)), the zone when known
        styler = styler.format(_timestamp, subset=stamps)
    neg: list[Any] = [c for c in highlight_negative if c in df.columns]
    if neg:
        styler = styler.map(_negative, subset=neg)
    if "status" in df.columns and "passed" in df.columns:  # a checks table: FAILED / pending / passed
        styler = styler.map(lambda v: _FAILED if v == "FAILED" else _PENDING if str(v).startswith("pending") else "",
                            subset=["status"])
        styler = styler.map(lambda v: _FAILED if v is False else "", subset=["passed"])
    elif "passed" in df.columns:
        styler = styler.map(lambda v: _FAILED if v is False or v is pd.NA else "", subset=["passed"])
    return styler


def bounded(df: pd.DataFrame | None, max_rows: int | None = None) -> tuple[pd.DataFrame, int]:
    """The first ``max_rows`` rows (default 50) and the total row count."""
    if df is None:
        return pd.DataFrame(), 0
    limit = max_rows or DEFAULT_MAX_ROWS
    return df.head(limit), len(df)


def show_table(df: pd.DataFrame | None, caption: str, highlight_negative: Iterable[str] | None = None,
               max_rows: int | None = None) -> None:
    """A bounded, sortable, searchable table with a caption saying how many rows it shows."""
    shown, total = bounded(df, max_rows)
    if total == 0 or len(shown.columns) == 0:
        _nothing(caption, "none, nothing to show")
        return
    note = f"{total:,} rows" if len(shown) == total else f"first {len(shown):,} of {total:,} rows"
    full_caption = f"{caption} ({note})"
    styler = style_table(shown.reset_index(drop=True), highlight_negative or ())
    if _init_itables():
        import itables

        itables.show(styler.set_caption(full_caption), allow_html=True, classes="display compact",
                     pageLength=min(len(shown), 15), lengthMenu=[10, 15, 25, 50, 100])
    else:  # pragma: no cover - itables missing
        _display(styler.set_caption(full_caption))


def _inline() -> bool:
    """Whether an IPython kernel runs this (a plot is then displayed, not only drawn off-screen)."""
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:  # pragma: no cover
        return False


def show_checks(result: Any, caption: str = "Verification checks") -> None:
    """The verification table (failures highlighted), then each failed check's bounded sample."""
    show_table(result.table(), caption)
    for check in result.checks:
        if not check.passed and not getattr(check, "pending", False) and check.sample is not None \
                and not check.sample.empty:
            show_table(check.sample, f"Offending rows: {check.name}")


# ------------------------------------------------------------------------------------------ one user
def user_section(result: Any) -> None:
    """One user's section (a :class:`runbook_lib.inspect_user.UserInspection`): the figures in an element of class
    ``runbook-user-inspector``, the ledger rows around the window (affected rows marked, what the plan does to each)
    and a timeline of the running balance. Static output: it renders in the HTML evidence too."""
    figures = "".join(
        f"<tr><th style='text-align:left;padding-right:2em'>{html.escape(k)}</th>"
        f"<td style='text-align:right;font-family:monospace'>{html.escape(fmt_value(v))}</td></tr>"
        for k, v in result.figures().items()) if result.user_id is not None and result.status != "unknown" else ""
    title = f"Inspect one user: {result.user_id}" if result.user_id else "Inspect one user"
    _display(_html(
        f"<div class='runbook-user-inspector' data-user='{html.escape(result.user_id or '', quote=True)}' "
        f"data-status='{html.escape(result.status)}' style='border:1px solid #90a4ae;border-radius:4px;"
        f"padding:0.5em 1em;margin:0.5em 0'><b>{html.escape(title)}</b>"
        f"<p style='margin:0.3em 0'>{html.escape(result.note)}</p>"
        + (f"<table>{figures}</table>" if figures else "") + "</div>"))
    if result.user_id is None or result.status == "unknown":
        return
    show_table(result.rows, f"Ledger of {result.user_id} around the window (affected rows marked)",
               highlight_negative=["balanceAfter", "balance_after_plan"], max_rows=max(len(result.rows), 1))
    plot_user_timeline(result)


def user_inspector(run: Any, plan: Any, user_id: str | None = None) -> Any:
    """The review's "Inspect one user" section for ``user_id`` (default: the run's ``inspect_user`` parameter,
    else the user with the largest reversal). In JupyterLab (an interactive kernel with ipywidgets, not a CLI
    run) a dropdown "Affected user" below it lists the affected users and shows the chosen one's section.
    Returns the inspection shown (a :class:`runbook_lib.inspect_user.UserInspection`)."""
    from . import inspect_user as iu

    wanted = user_id if user_id is not None else getattr(run.params, "inspect_user", None)
    result = iu.for_run(run, plan, wanted)
    user_section(result)
    if iu.widgets_wanted(run) and not result.users.empty:
        _user_picker(run, plan, result)
    return result


def _user_picker(run: Any, plan: Any, shown: Any) -> None:
    """An ipywidgets Dropdown of the affected users; choosing one shows their section in an Output below it."""
    import ipywidgets as widgets

    from . import inspect_user as iu

    options = [(f"{r.user_id} — {r.tokens:,} tokens, {r.rows} rows", r.user_id) for r in shown.users.itertuples()]
    more = shown.users_total - len(options)
    picker = widgets.Dropdown(options=options, value=None, description="Affected user",
                              style={"description_width": "initial"}, layout=widgets.Layout(width="32em"))
    output = widgets.Output()
    hint = widgets.HTML(f"<small>{shown.users_total:,} affected users"
                        + (f" (the largest {len(options):,} listed)" if more > 0 else "")
                        + "; choose one to show their ledger below.</small>")

    def changed(change: dict[str, Any]) -> None:
        if change.get("new") is None:
            return
        output.clear_output(wait=True)
        with output:
            user_section(iu.for_run(run, plan, str(change["new"])))

    picker.observe(changed, names="value")
    _display(widgets.VBox([picker, hint, output]))
