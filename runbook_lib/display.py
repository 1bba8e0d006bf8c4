"""How notebooks show things: a ten-second summary box, bounded sortable tables, and a few plots.

Tables go through itables in offline mode (its JavaScript is embedded in the notebook, so the executed
notebook and its nbconvert HTML copy stay sortable and searchable without a network). Numbers are
right-aligned with thousands separators; negative balances and failed checks are highlighted. Every table
is bounded: a caption says when rows were left out, and the full set lives in the evidence files.

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

DEFAULT_MAX_ROWS = 50
#: a series with more points than this is drawn as a line with thinned date ticks, not one bar per point
MAX_BARS = 30
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


def summary_box(title: str, summary: Mapping[str, Any], warnings: Iterable[str] = ()) -> None:
    """The headline figures of a step in a box: read in ten seconds, details below it."""
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:2em'>{html.escape(str(k))}</th>"
        f"<td style='text-align:right;font-family:monospace'>{html.escape(fmt_value(v))}</td></tr>"
        for k, v in (summary or {}).items() if k != "nothing_to_do")
    if (summary or {}).get("nothing_to_do"):
        rows += "<tr><td colspan=2><b>Nothing to do: the change is already applied.</b></td></tr>"
    if not rows:
        rows = "<tr><td colspan=2>nothing to show</td></tr>"
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    _display(_html(
        "<div style='border:1px solid #90a4ae;border-radius:4px;padding:0.5em 1em;margin:0.5em 0'>"
        f"<b>{html.escape(title)}</b><table>{rows}</table>"
        + (f"<div style='color:#b71c1c'><b>Warnings</b><ul>{warn}</ul></div>" if warn else "") + "</div>"))


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


# ------------------------------------------------------------------------------------------ plots
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


def _thin_ticks(ax: Any, labels: list[str], max_labels: int = MAX_BARS) -> None:
    """One tick per bar up to ``max_labels``, then every k-th: labels never pile up."""
    step = max(1, math.ceil(len(labels) / max_labels))
    ticks = list(range(0, len(labels), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[i] for i in ticks], rotation=60, fontsize=7)


def fill_buckets(hist: pd.DataFrame) -> pd.DataFrame:
    """The histogram's long frame (state, bucket, from, users) with every bucket between the first and the last
    present, empty ones as 0 users, so bars are evenly spaced in balance. The missing buckets' lower bounds are
    interpolated between their neighbours (the database's buckets are of equal width)."""
    h = normalize(hist)
    h = h[h["bucket"].notna()]
    if h.empty:
        return h
    h = h.assign(bucket=h["bucket"].astype("int64"),
                 users=pd.to_numeric(h["users"], errors="coerce").fillna(0).astype("int64"))
    starts = h.groupby("bucket")["from"].min().astype("float64").dropna()
    every = np.arange(int(h["bucket"].min()), int(h["bucket"].max()) + 1)
    if len(starts) >= 2:
        froms = np.interp(every, starts.index.to_numpy(dtype="float64"), starts.to_numpy())
    else:
        froms = np.full(len(every), starts.iloc[0] if len(starts) else np.nan)
    frm = pd.Series(np.round(froms), index=every)
    frm.update(starts)
    states = list(dict.fromkeys(h["state"]))
    grid = pd.MultiIndex.from_product([states, every], names=["state", "bucket"])
    counts = h.groupby(["state", "bucket"])["users"].sum().reindex(grid, fill_value=0)
    out = counts.reset_index()
    out["from"] = out["bucket"].map(frm)
    return out[["state", "bucket", "from", "users"]]


def plot_before_after(hist: pd.DataFrame | None, before: str, after: str, title: str) -> None:
    """Side-by-side bars of a binned distribution (long format: state, bucket, from, users); buckets without
    users are drawn empty, so the axis stays linear in balance."""
    needed = {"state", "bucket", "from", "users"}
    if hist is None or hist.empty or not needed <= set(hist.columns):
        _nothing(title, "no affected users, nothing to plot")
        return
    filled = fill_buckets(hist)
    if filled.empty:
        _nothing(title, "no affected users, nothing to plot")
        return
    wide = filled.pivot_table(index="bucket", columns="state", values="users", aggfunc="sum", fill_value=0)
    starts = filled.groupby("bucket")["from"].first().reindex(wide.index)
    fig, ax = _figure(title)
    xs = np.arange(len(wide))
    width = 0.42
    for offset, state, color in ((-width / 2, before, "#90a4ae"), (width / 2, after, "#1565c0")):
        if state in wide.columns:
            ax.bar(xs + offset, wide[state].to_numpy(dtype="float64"), width=width, label=state, color=color)
    _thin_ticks(ax, [fmt_value(v) for v in starts])
    ax.set_xlabel("balance (bucket start, tokens)")
    ax.set_ylabel("users")
    if any(s in wide.columns for s in (before, after)):
        ax.legend()
    _show_figure(fig)


def plot_totals(df: pd.DataFrame | None, title: str, x: str, y: str, max_bars: int = MAX_BARS) -> None:
    """Totals by category or by date.

    Categories (vouchers…): a bar each, the ``max_bars`` largest when there are more (said in the title).
    Dates (days…): in date order; one bar per date up to ``max_bars``, beyond that a line with date ticks chosen
    by matplotlib, so a year of days stays readable.
    """
    if df is None or df.empty or x not in df.columns or y not in df.columns:
        _nothing(title, "nothing to plot")
        return
    data = normalize(df[[x, y]], dates_as_datetime=True)
    if not pd.api.types.is_numeric_dtype(data[y]) or pd.api.types.is_bool_dtype(data[y]):
        data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data[data[y].notna() & data[x].notna()]
    if data.empty:
        _nothing(title, "nothing to plot")
        return
    values = data[y].astype("float64")
    fig, ax = _figure(title)
    if pd.api.types.is_datetime64_any_dtype(data[x]):
        data = data.assign(**{y: values}).sort_values(x)
        xs = data[x]
        if xs.dt.tz is not None:
            xs = xs.dt.tz_convert("UTC").dt.tz_localize(None)
        if len(data) > max_bars:
            ax.plot(xs.to_numpy(), data[y].to_numpy(), color="#1565c0", linewidth=1.2,
                    marker="o" if len(data) <= 3 * max_bars else None, markersize=2.5)
            import matplotlib.dates as mdates

            locator = mdates.AutoDateLocator(maxticks=12)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            ax.set_title(f"{title} ({len(data):,} {x}s)")
        else:
            daily = bool(((xs - xs.dt.normalize()) == pd.Timedelta(0)).all())
            labels = [v.strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:%M") for v in xs]
            ax.bar(np.arange(len(data)), data[y].to_numpy(), color="#1565c0", width=0.8)
            _thin_ticks(ax, labels, max_bars)
    else:
        data = data.assign(**{y: values})
        total = len(data)
        if total > max_bars:
            data = data.nlargest(max_bars, y)
            ax.set_title(f"{title} (largest {max_bars} of {total:,})")
        labels = [str(v) for v in data[x]]
        ax.bar(np.arange(len(data)), data[y].to_numpy(), color="#1565c0", width=0.8)
        ax.set_xticks(np.arange(len(data)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(y)
    _show_figure(fig)


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


def plot_user_timeline(result: Any) -> None:
    """The running balance (``balanceAfter``) over time, the affected rows marked, the running balance with this
    plan's reversed rows taken out, and the balance after the plan at the right edge."""
    title = f"Balance of {result.user_id} over time"
    rows = normalize(result.rows, dates_as_datetime=True) if result.rows is not None else pd.DataFrame()
    if rows.empty or "balanceAfter" not in rows.columns or rows["balanceAfter"].isna().all():
        _nothing(title, "no running balance (balanceAfter) in the rows shown, nothing to plot")
        return
    xs = pd.to_datetime(rows["createdAt"])
    if getattr(xs.dt, "tz", None) is not None:
        xs = xs.dt.tz_convert("UTC").dt.tz_localize(None)
    before = pd.to_numeric(rows["balanceAfter"], errors="coerce").astype("float64")
    planned = pd.to_numeric(rows["balance_after_plan"], errors="coerce").astype("float64")
    affected = rows["affected"].astype(bool).to_numpy()
    fig, ax = _figure(title)
    ax.step(xs.to_numpy(), before.to_numpy(), where="post", color="#90a4ae", linewidth=1.4,
            label="balanceAfter (ledger)")
    if affected.any():
        ax.step(xs.to_numpy(), planned.to_numpy(), where="post", color="#1565c0", linewidth=1.2, linestyle="--",
                label="without the reversed rows")
        ax.scatter(xs.to_numpy()[affected], before.to_numpy()[affected], color="#c62828", zorder=3, s=18,
                   label="affected rows")
    if result.balance_after is not None:  # at the right edge: where the balance ends once the plan is applied
        span = xs.max() - xs.min()
        x_end = xs.max() + (span / 20 if span > pd.Timedelta(0) else pd.Timedelta(hours=1))
        ax.scatter([x_end], [result.balance_after], marker="D", color="#2e7d32", s=32, zorder=4,
                   label=f"balance after the plan: {fmt_value(result.balance_after)}")
    ax.axhline(0, color="#b71c1c", linewidth=0.6, alpha=0.5)
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_ylabel("tokens")
    ax.legend(fontsize=7, loc="best")
    _show_figure(fig)


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
