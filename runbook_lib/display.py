"""How notebooks show things: a ten-second summary box, bounded sortable tables, and a few plots.

Tables go through itables in offline mode (its JavaScript is embedded in the notebook, so the executed
notebook and its nbconvert HTML copy stay sortable and searchable without a network). Numbers are
right-aligned with thousands separators; negative balances and failed checks are highlighted. Every table
is bounded: a caption says when rows were left out, and the full set lives in the evidence files.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

DEFAULT_MAX_ROWS = 50
_NEGATIVE = "background-color:#ffebee;color:#b71c1c;font-weight:bold"
_FAILED = "background-color:#ffebee;color:#b71c1c;font-weight:bold"
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


def _init_itables() -> bool:
    """Load itables offline once per kernel; False when it is unavailable (plain HTML tables then)."""
    global _itables_ready
    if _itables_ready:
        return True
    try:
        import itables

        itables.init_notebook_mode(connected=False)
    except Exception:  # noqa: BLE001 - presentation only: fall back to the plain table
        return False
    _itables_ready = True
    return True


def fmt_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)


def summary_box(title: str, summary: Mapping[str, Any], warnings: Iterable[str] = ()) -> None:
    """The headline figures of a step in a box: read in ten seconds, details below it."""
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:2em'>{html.escape(str(k))}</th>"
        f"<td style='text-align:right;font-family:monospace'>{html.escape(fmt_value(v))}</td></tr>"
        for k, v in summary.items() if k != "nothing_to_do")
    if summary.get("nothing_to_do"):
        rows += "<tr><td colspan=2><b>Nothing to do: the change is already applied.</b></td></tr>"
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    _display(_html(
        "<div style='border:1px solid #90a4ae;border-radius:4px;padding:0.5em 1em;margin:0.5em 0'>"
        f"<b>{html.escape(title)}</b><table>{rows}</table>"
        + (f"<div style='color:#b71c1c'><b>Warnings</b><ul>{warn}</ul></div>" if warn else "") + "</div>"))


def _timestamp(v: object) -> str:
    return v.isoformat(sep=" ", timespec="milliseconds") if isinstance(v, pd.Timestamp) and not pd.isna(v) else ""


def style_table(df: pd.DataFrame, highlight_negative: Iterable[str] = ()) -> Any:
    """A pandas Styler: thousands separators, numbers right-aligned, timestamps to the millisecond, negatives and
    failures highlighted."""
    styler = df.style.hide(axis="index")
    numeric: list[Any] = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    if numeric:
        styler = styler.format("{:,}", subset=[c for c in numeric if pd.api.types.is_integer_dtype(df[c])])
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
    stamps: list[Any] = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
    if stamps:  # one width for every timestamp: milliseconds always (Prisma's timestamp(3)), the zone when known
        styler = styler.format(_timestamp, subset=stamps)
    neg: list[Any] = [c for c in highlight_negative if c in df.columns]
    if neg:
        styler = styler.map(lambda v: _NEGATIVE if isinstance(v, (int, float)) and v < 0 else "", subset=neg)
    if "passed" in df.columns:
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
    if total == 0:
        _display(_html(f"<p><b>{html.escape(caption)}</b>: none.</p>"))
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


def _figure(title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg") if not _inline() else None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=90)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _inline() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:  # pragma: no cover
        return False


def _show_figure(fig: Any) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    if _inline():
        _display(fig)
    plt.close(fig)


def plot_before_after(hist: pd.DataFrame | None, before: str, after: str, title: str) -> None:
    """Side-by-side bars of a binned distribution (long format: state, bucket, from, users)."""
    if hist is None or hist.empty:
        _display(_html(f"<p><b>{html.escape(title)}</b>: no affected users, nothing to plot.</p>"))
        return
    wide = hist.pivot_table(index="from", columns="state", values="users", aggfunc="sum", fill_value=0).sort_index()
    fig, ax = _figure(title)
    xs = range(len(wide))
    width = 0.42
    for offset, state, color in ((-width / 2, before, "#90a4ae"), (width / 2, after, "#1565c0")):
        if state in wide.columns:
            ax.bar([x + offset for x in xs], wide[state], width=width, label=state, color=color)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{int(v):,}" for v in wide.index], rotation=60, fontsize=7)
    ax.set_xlabel("balance (bucket start, tokens)")
    ax.set_ylabel("users")
    ax.legend()
    _show_figure(fig)


def plot_totals(df: pd.DataFrame | None, title: str, x: str, y: str, max_bars: int = 30) -> None:
    """A bar per category (voucher, day…), largest first when categorical; bounded to ``max_bars``."""
    if df is None or df.empty or x not in df.columns or y not in df.columns:
        _display(_html(f"<p><b>{html.escape(title)}</b>: nothing to plot.</p>"))
        return
    data = df[[x, y]].copy()
    if not pd.api.types.is_datetime64_any_dtype(data[x]) and data[x].dtype == object and len(data) > max_bars:
        data = data.nlargest(max_bars, y)
    data = data.head(max_bars)
    fig, ax = _figure(title)
    ax.bar([str(v) for v in data[x]], pd.to_numeric(data[y]), color="#1565c0")
    ax.set_ylabel(y)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    _show_figure(fig)


def show_checks(result: Any, caption: str = "Verification checks") -> None:
    """The verification table (failures highlighted), then each failed check's bounded sample."""
    show_table(result.table(), caption)
    for check in result.checks:
        if not check.passed and check.sample is not None and not check.sample.empty:
            show_table(check.sample, f"Offending rows: {check.name}")
