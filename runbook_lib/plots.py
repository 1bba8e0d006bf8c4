"""The notebooks' plots (matplotlib): totals by category or date, a distribution before and after, one user's
running balance. Bounded like the tables: a long series becomes a line with thinned date ticks, many
categories the largest few, and an empty frame is said in words. Re-exported by :mod:`.display`, which
notebooks call (``show.plot_totals``)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

#: a series with more points than this is drawn as a line with thinned date ticks, not one bar per point
MAX_BARS = 30
#: every plot's size (inches) and resolution; its margins in inches (left: the y tick labels, at most 7 characters
#: as matplotlib writes larger values with an offset, "1e6", and the axis label; right; top: the title; below the
#: x tick labels: the tick marks), and the room of the x axis label
SIZE, DPI = (8.0, 3.2), 90
MARGINS = (0.95, 0.2, 0.42, 0.12)
X_LABEL = 0.3
#: x tick labels are cut at this many characters (a long voucher code would take the plot's height)
MAX_LABEL = 16
#: the thinned ticks' labels (bar charts of buckets and days): rotated, small
THIN_ROTATION, THIN_FONT = 60.0, 7.0


def _show() -> ModuleType:
    """:mod:`.display`, looked up at each call: its output hooks (``_display``, ``_inline``, ``_nothing``) are the
    ones the notebook's IPython (and a test's stand-in, patched there) provides; ``normalize`` lives there too."""
    from . import display

    return display


class Plot:
    """A figure as the notebook shows it: drawn once, to PNG, when IPython displays it (``_repr_png_``).

    The figure is a bare :class:`matplotlib.figure.Figure`, not a pyplot one: no pyplot import (nor its inline
    backend's set-up) in the kernel, no global figure registry to close, and one draw per plot, its frame placed
    before it (:func:`_frame`) — pyplot's inline display drew each figure three times (``tight_layout``, then
    ``bbox_inches="tight"``'s measuring draw and the real one), a ``tight`` layout engine twice."""

    def __init__(self, figure: Any) -> None:
        self.figure = figure

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return buf.getvalue()

    def __repr__(self) -> str:
        return repr(self.figure)


#: matplotlib's modules, imported ahead of the first plot by :func:`preload` (the CLI's kernel starts it)
_PRELOADED = ("matplotlib.figure", "matplotlib.dates", "matplotlib.backends.backend_agg")
_preloading: threading.Thread | None = None


def preload() -> None:
    """Import matplotlib (~0.35 s) on a background thread, once; the first plot waits for it to finish.

    The CLI's kernel calls this at its start (:data:`runbook_lib.kernel.KERNEL_START`), after its own imports: the
    import then runs while the kernel waits for papermill's cells and for the review's queries (the GIL is free
    while a query runs), not in the first plot's cell. A plot never imports matplotlib while this thread does (it
    joins it first). A failure here is silent: the plot's own import fails again, visibly, in its cell.
    """
    global _preloading
    if _preloading is None:
        _preloading = threading.Thread(target=_import_matplotlib, name="runbook-matplotlib-preload", daemon=True)
        _preloading.start()


def _import_matplotlib() -> None:
    import importlib

    try:
        for module in _PRELOADED:
            importlib.import_module(module)
    except Exception:  # noqa: BLE001,S110 - a head start only: the plot imports it again and reports
        pass


def _figure(title: str) -> Any:
    if _preloading is not None:
        _preloading.join()
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI)
    ax = fig.subplots()
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _frame(fig: Any, ax: Any, labels: Sequence[str] = (), rotation: float = 0.0, fontsize: float = 10.0,
           rows: int = 1) -> None:
    """Place the axes in the figure with fixed margins (:data:`MARGINS`), the room below the x axis computed from
    its tick labels: ``labels`` (the longest, rotated by ``rotation`` degrees, at ``fontsize`` points) or ``rows``
    lines of unrotated ticks (dates), and the axis label if there is one.

    No layout engine: matplotlib's ``tight`` layout measures every text in a first pass over the figure before the
    pass that draws it, ~0.1 s of the ~0.3 s a plot costs. A label's width is estimated from its length (0.72 em a
    character, DejaVu Sans' capitals: its digits are 0.64 em, its lower case ~0.6); labels are cut at
    :data:`MAX_LABEL` characters (:func:`_label`), so the room is bounded, and the longest rotated label fits the
    left margin too."""
    width, height = SIZE
    left, right, top, below = MARGINS
    em = fontsize / 72
    longest = max((len(s) for s in labels), default=1)
    angle = math.radians(rotation)
    ticks = longest * 0.72 * em * math.sin(angle) + 1.2 * em * math.cos(angle) * rows
    bottom = below + ticks + (X_LABEL if ax.get_xlabel() else 0.0)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=min(bottom, height / 2) / height)


def _label(value: Any) -> str:
    """A tick label: cut at :data:`MAX_LABEL` characters (the tables and CSV files have it whole)."""
    text = str(value)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _show_figure(fig: Any) -> None:
    show = _show()
    if show._inline():
        show._display(Plot(fig))


def _thin_ticks(ax: Any, labels: list[str], max_labels: int = MAX_BARS) -> list[str]:
    """One tick per bar up to ``max_labels``, then every k-th: labels never pile up. Returns the labels shown."""
    step = max(1, math.ceil(len(labels) / max_labels))
    ticks = list(range(0, len(labels), step))
    shown = [_label(labels[i]) for i in ticks]
    ax.set_xticks(ticks)
    ax.set_xticklabels(shown, rotation=THIN_ROTATION, fontsize=THIN_FONT)
    return shown


def fill_buckets(hist: pd.DataFrame) -> pd.DataFrame:
    """The histogram's long frame (state, bucket, from, users) with every bucket between the first and the last
    present, empty ones as 0 users, so bars are evenly spaced in balance. The missing buckets' lower bounds are
    interpolated between their neighbours (the database's buckets are of equal width)."""
    h = _show().normalize(hist)
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
        _show()._nothing(title, "no affected users, nothing to plot")
        return
    filled = fill_buckets(hist)
    if filled.empty:
        _show()._nothing(title, "no affected users, nothing to plot")
        return
    wide = filled.pivot_table(index="bucket", columns="state", values="users", aggfunc="sum", fill_value=0)
    starts = filled.groupby("bucket")["from"].first().reindex(wide.index)
    fig, ax = _figure(title)
    xs = np.arange(len(wide))
    width = 0.42
    for offset, state, color in ((-width / 2, before, "#90a4ae"), (width / 2, after, "#1565c0")):
        if state in wide.columns:
            ax.bar(xs + offset, wide[state].to_numpy(dtype="float64"), width=width, label=state, color=color)
    shown = _thin_ticks(ax, [_show().fmt_value(v) for v in starts])
    ax.set_xlabel("balance (bucket start, tokens)")
    ax.set_ylabel("users")
    if any(s in wide.columns for s in (before, after)):
        ax.legend()
    _frame(fig, ax, shown, THIN_ROTATION, THIN_FONT)
    _show_figure(fig)


def plot_totals(df: pd.DataFrame | None, title: str, x: str, y: str, max_bars: int = MAX_BARS) -> None:
    """Totals by category or by date.

    Categories (vouchers…): a bar each, the ``max_bars`` largest when there are more (said in the title).
    Dates (days…): in date order; one bar per date up to ``max_bars``, beyond that a line with date ticks chosen
    by matplotlib, so a year of days stays readable.
    """
    if df is None or df.empty or x not in df.columns or y not in df.columns:
        _show()._nothing(title, "nothing to plot")
        return
    data = _show().normalize(df[[x, y]], dates_as_datetime=True)
    if not pd.api.types.is_numeric_dtype(data[y]) or pd.api.types.is_bool_dtype(data[y]):
        data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data[data[y].notna() & data[x].notna()]
    if data.empty:
        _show()._nothing(title, "nothing to plot")
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
            _frame(fig, ax, rows=2)  # the dates, and the offset line (year or month) under them
        else:
            daily = bool(((xs - xs.dt.normalize()) == pd.Timedelta(0)).all())
            labels = [v.strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:%M") for v in xs]
            ax.bar(np.arange(len(data)), data[y].to_numpy(), color="#1565c0", width=0.8)
            _frame(fig, ax, _thin_ticks(ax, labels, max_bars), THIN_ROTATION, THIN_FONT)
    else:
        data = data.assign(**{y: values})
        total = len(data)
        if total > max_bars:
            data = data.nlargest(max_bars, y)
            ax.set_title(f"{title} (largest {max_bars} of {total:,})")
        labels = [_label(v) for v in data[x]]
        ax.bar(np.arange(len(data)), data[y].to_numpy(), color="#1565c0", width=0.8)
        ax.set_xticks(np.arange(len(data)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        _frame(fig, ax, labels, 45, 8)
    ax.set_ylabel(y)
    _show_figure(fig)


def plot_user_timeline(result: Any) -> None:
    """The running balance (``balanceAfter``) over time, the affected rows marked, the running balance with this
    plan's reversed rows taken out, and the balance after the plan at the right edge."""
    title = f"Balance of {result.user_id} over time"
    rows = _show().normalize(result.rows, dates_as_datetime=True) if result.rows is not None else pd.DataFrame()
    if rows.empty or "balanceAfter" not in rows.columns or rows["balanceAfter"].isna().all():
        _show()._nothing(title, "no running balance (balanceAfter) in the rows shown, nothing to plot")
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
                   label=f"balance after the plan: {_show().fmt_value(result.balance_after)}")
    ax.axhline(0, color="#b71c1c", linewidth=0.6, alpha=0.5)
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_ylabel("tokens")
    ax.legend(fontsize=7, loc="best")
    _frame(fig, ax, rows=2)  # the dates, and the offset line under them
    _show_figure(fig)
