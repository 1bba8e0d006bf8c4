"""Presentation helpers: what an analyst reads in the notebook and its HTML copy."""

from __future__ import annotations

import pandas as pd

from runbook_lib import display


def test_timestamps_print_to_the_millisecond_whether_or_not_they_have_any():
    df = pd.DataFrame({"createdAt": pd.to_datetime(["2025-12-01 00:02:59", "2025-12-01 00:02:59.007", None], format="ISO8601"),
                       "amount": [1200, -5, 3]})
    html = display.style_table(df, highlight_negative=["amount"]).to_html()
    assert "2025-12-01 00:02:59.000" in html and "2025-12-01 00:02:59.007" in html
    assert "00:02:59.007000" not in html and "NaT" not in html
    assert "1,200" in html  # thousands separators
    aware = pd.DataFrame({"at": pd.to_datetime(["2025-12-01 10:00:00+00:00"])})
    assert "2025-12-01 10:00:00.000+00:00" in display.style_table(aware).to_html()


# --------------------------------------------------------------------------- frames as the driver returns them
import datetime as dt  # noqa: E402
from decimal import Decimal  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")


@pytest.fixture
def shown(monkeypatch):
    """What the display functions hand to IPython's display (HTML text, figures), in order."""
    out: list = []
    monkeypatch.setattr(display, "_display", out.append)
    monkeypatch.setattr(display, "_inline", lambda: True)
    monkeypatch.setattr(display, "_init_itables", lambda: False)
    return out


def _text(objs) -> str:
    parts = []
    for o in objs:
        if hasattr(o, "to_html"):
            parts.append(o.to_html())
        elif hasattr(o, "data"):
            parts.append(str(o.data))
        else:
            parts.append(str(o))
    return "\n".join(parts)


def by_day(days: int, start=dt.date(2025, 1, 1)) -> pd.DataFrame:
    """Like token reversal's by-day frame: ``::date`` days and ``sum(bigint)`` (numeric -> Decimal) tokens."""
    return pd.DataFrame([{"day": start + dt.timedelta(days=i), "rows": i % 7 + 1, "tokens": Decimal(100 * (i % 13 + 1))}
                         for i in range(days)])


def test_decimal_and_int_object_columns_become_numbers():
    df = pd.DataFrame({"tokens": [Decimal("1200"), Decimal("-5"), None], "share": [Decimal("0.5"), Decimal("NaN"), 2],
                       "day": [dt.date(2025, 12, 1), None, dt.date(2025, 12, 3)], "code": ["A", "B", None]})
    assert df["tokens"].dtype == object
    out = display.normalize(df)
    assert str(out["tokens"].dtype) == "Int64" and out["tokens"].tolist()[:2] == [1200, -5] and out["tokens"].isna()[2]
    assert out["share"].dtype == "float64" and out["share"].isna()[1] and out["share"][2] == 2.0
    assert out["day"].tolist()[0] == dt.date(2025, 12, 1)  # dates stay dates in tables ...
    assert pd.api.types.is_datetime64_any_dtype(display.normalize(df, dates_as_datetime=True)["day"])  # ... not plots
    assert out["code"].tolist()[:2] == ["A", "B"]
    big = display.normalize(pd.DataFrame({"n": [Decimal(2) ** 70, Decimal(1)]}))
    assert big["n"].dtype == "float64"  # beyond int64: float, not a crash


def test_table_of_decimals_dates_and_missing_values_renders(shown):
    df = pd.DataFrame({"userId": ["u1", "u2", "u3"], "reversed": [Decimal("1200"), Decimal("-30"), None],
                       "day": [dt.date(2025, 12, 1), None, dt.date(2025, 12, 3)],
                       "ratio": [Decimal("0.25"), float("nan"), Decimal("1234.5")]})
    html = display.style_table(df, highlight_negative=["reversed"]).to_html()
    assert "1,200" in html and "1,234.50" in html and "2025-12-01" in html
    assert "background-color:#ffebee" in html.replace(": ", ":")  # -30 highlighted
    assert "nan" not in html.lower().replace("nan;", "") and "<NA>" not in html
    assert ">None<" not in html
    display.show_table(df, "Affected users")
    assert "Affected users (3 rows)" in _text(shown)


@pytest.mark.parametrize("frame", [None, pd.DataFrame(), pd.DataFrame(columns=["day", "tokens"]),
                                   pd.DataFrame(index=range(3))])
def test_empty_frames_say_so(shown, frame):
    display.show_table(frame, "Users going below zero")
    display.plot_totals(frame, "Tokens by day", x="day", y="tokens")
    display.plot_before_after(frame, "before", "after", "Balances")
    text = _text(shown)
    assert "Users going below zero</b>: none, nothing to show." in text
    assert "Tokens by day</b>: nothing to plot." in text and "Balances</b>: no affected users" in text
    assert not any(isinstance(o, display.Plot) for o in shown)


def test_only_some_columns_or_only_missing_values_say_nothing_to_plot(shown):
    display.plot_totals(pd.DataFrame({"day": [dt.date(2025, 1, 1)]}), "Tokens by day", x="day", y="tokens")
    display.plot_totals(pd.DataFrame({"day": [dt.date(2025, 1, 1)], "tokens": [None]}), "Only NULLs", x="day",
                        y="tokens")
    display.plot_before_after(pd.DataFrame({"state": ["before"], "users": [1]}), "before", "after", "Hist")
    text = _text(shown)
    assert "Tokens by day</b>: nothing to plot." in text and "Only NULLs</b>: nothing to plot." in text
    assert "Hist</b>: no affected users" in text


@pytest.mark.parametrize("days", [1, 30, 31, 366])
def test_by_day_of_any_length_plots_in_date_order(shown, days):
    """The window longer than 30 days crashed with "TypeError: Column 'tokens' has dtype object, cannot use method
    'nlargest' with this dtype"; now a long window is a line over time, a short one a bar per day."""
    display.plot_totals(by_day(days), "Tokens to reverse by day", x="day", y="tokens")
    figs = [o for o in shown if isinstance(o, display.Plot)]
    assert len(figs) == 1
    ax = figs[0].figure.axes[0]
    if days > display.MAX_BARS:
        line = ax.get_lines()[0]
        assert len(line.get_xdata()) == days  # every day kept, none dropped by a top-N
        assert len(ax.get_xticks()) <= 14  # thinned ticks
        assert f"{days:,} days" in ax.get_title()
    else:
        assert len(ax.patches) == days
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == "2025-01-01" and len(labels) <= display.MAX_BARS


def test_by_day_from_datetimes_with_a_zone_and_a_null_day(shown):
    df = pd.DataFrame({"day": [dt.datetime(2025, 1, 2, tzinfo=dt.UTC), None, dt.datetime(2025, 1, 1, tzinfo=dt.UTC)],
                       "tokens": [Decimal(5), Decimal(6), None]})
    display.plot_totals(df, "By day", x="day", y="tokens")
    ax = next(o for o in shown if isinstance(o, display.Plot)).figure.axes[0]
    assert len(ax.patches) == 1  # rows with a missing day or total are left out, not a crash


def test_many_categories_keep_the_largest(shown):
    df = pd.DataFrame({"voucher": [f"V{i:03d}" for i in range(80)], "tokens": [Decimal(i) for i in range(80)]})
    display.plot_totals(df, "By voucher", x="voucher", y="tokens")
    ax = next(o for o in shown if isinstance(o, display.Plot)).figure.axes[0]
    assert len(ax.patches) == display.MAX_BARS and "largest 30 of 80" in ax.get_title()
    assert ax.get_xticklabels()[0].get_text() == "V079"


def _timeline() -> SimpleNamespace:
    """An inspected user as :func:`runbook_lib.inspect_user.inspect` returns it: ledger rows, some affected."""
    stamps = pd.date_range("2025-11-20", periods=40, freq="13h", tz="UTC")
    balance = [Decimal(1_000_000 + 25_000 * (i % 9) - 40_000 * (i % 4)) for i in range(40)]
    rows = pd.DataFrame({"createdAt": stamps, "balanceAfter": balance,
                         "balance_after_plan": [b - 50_000 for b in balance], "affected": [i % 5 == 0 for i in range(40)]})
    return SimpleNamespace(user_id="cm4x1y2z3000008l41b2c3d4e", rows=rows, balance_after=Decimal(-1_234_567))


PLOTS = {
    "long capital voucher codes": lambda: display.plot_totals(pd.DataFrame(
        {"voucher": [f"A-LONG-VOUCHER-CODE-{i:03d}-WWW" for i in range(40)],
         "tokens": [Decimal(9_000_000 - i) for i in range(40)]}), "By voucher", x="voucher", y="tokens"),
    "days with hours": lambda: display.plot_totals(pd.DataFrame(
        {"day": pd.date_range("2025-12-01 06:00", periods=20, freq="5h"), "tokens": range(20)}),
        "By hour", x="day", y="tokens"),
    "a year of days": lambda: display.plot_totals(by_day(366), "By day", x="day", y="tokens"),
    "negative and wide buckets": lambda: display.plot_before_after(hist(
        [(s, b, -9_999_999 + b * 333_333, b * 1000) for s in ("before", "after") for b in range(1, 61)]),
        "before", "after", "Balance distribution of affected users, before and after"),
    "one user's running balance": lambda: display.plot_user_timeline(_timeline()),
}


def _drawn_ticklabels(axis) -> list:
    """An axis' tick labels within its view (a locator's ticks beyond it are not drawn)."""
    low, high = sorted(axis.get_view_interval())
    return [t for v, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels(), strict=True) if low <= v <= high]


@pytest.mark.parametrize("kind", list(PLOTS))
def test_a_plot_is_drawn_once_to_png_with_every_text_inside(shown, monkeypatch, kind):
    """Notebooks show a :class:`display.Plot`: a bare matplotlib Figure (no pyplot) drawn once to PNG by IPython's
    display, its frame placed before that draw (no layout pass): every text (tick labels rotated or not, axis
    labels, title, legend, the axes' offset and date lines) stays inside the image; a long label is cut."""
    from matplotlib.figure import Figure

    from runbook_lib import plots

    draws = []
    real_draw = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda self, renderer: draws.append(1) or real_draw(self, renderer))
    PLOTS[kind]()
    (plot,) = [o for o in shown if isinstance(o, display.Plot)]
    png = plot._repr_png_()
    assert png.startswith(b"\x89PNG") and repr(plot).startswith("<Figure size 720x288")
    assert len(draws) == 1
    fig = plot.figure
    ax = fig.axes[0]
    texts = [*_drawn_ticklabels(ax.xaxis), *_drawn_ticklabels(ax.yaxis), ax.title, ax.xaxis.label, ax.yaxis.label,
             ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text()]
    legend = ax.get_legend()
    texts += legend.get_texts() if legend else []
    for text in (t for t in texts if t.get_visible() and t.get_text()):
        box = text.get_window_extent()
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text.get_text()
    assert all(len(t.get_text()) <= plots.MAX_LABEL for t in ax.get_xticklabels())
    if kind == "long capital voucher codes":
        assert ax.get_xticklabels()[0].get_text() == "A-LONG-VOUCHER-…"


def test_preload_imports_matplotlib_once_ahead_of_the_first_plot(shown, monkeypatch):
    """The CLI's kernel calls ``plots.preload()`` at its start: one background thread imports matplotlib, a plot
    waits for it; a failing preload is silent (the plot's own import is the one that reports)."""
    from runbook_lib import plots

    monkeypatch.setattr(plots, "_preloading", None)
    monkeypatch.setattr(plots, "_PRELOADED", ("runbook_no_such_module", "matplotlib.figure"))
    plots.preload()
    first = plots._preloading
    plots.preload()
    assert first is not None and plots._preloading is first and first.name == "runbook-matplotlib-preload"
    display.plot_totals(pd.DataFrame({"voucher": ["A", "B"], "tokens": [1, 2]}), "t", x="voucher", y="tokens")
    assert not first.is_alive()  # the plot joined it
    assert [o for o in shown if isinstance(o, display.Plot)]


def hist(rows: list[tuple[str, int, int, int]]) -> pd.DataFrame:
    """token reversal's histogram frame: width_bucket numbers (numeric), bucket starts, users (bigint)."""
    return pd.DataFrame([{"state": s, "bucket": Decimal(b), "from": Decimal(f), "users": u} for s, b, f, u in rows],
                        columns=["state", "bucket", "from", "users"])


def test_histogram_shows_empty_buckets():
    """Buckets without users were dropped, so "-1,233" sat next to "-383"; they are now shown with 0 users."""
    h = hist([("before", 1, -1233, 4), ("before", 4, -383, 2), ("after", 1, -1233, 1), ("after", 5, -100, 7)])
    filled = display.fill_buckets(h)
    before = filled[filled["state"] == "before"]
    assert before["bucket"].tolist() == [1, 2, 3, 4, 5]
    assert before["users"].tolist() == [4, 0, 0, 2, 0]
    assert filled.groupby("bucket")["from"].first().tolist() == [-1233, -950, -666, -383, -100]


def test_histogram_plot_single_bucket_and_many(shown):
    display.plot_before_after(hist([("before", 1, 10, 3)]), "before", "after", "One user")
    many = hist([(s, b, b * 10, b % 3) for s in ("before", "after") for b in range(1, 301, 7)])
    display.plot_before_after(many, "before", "after", "Many buckets")
    figs = [o for o in shown if isinstance(o, display.Plot)]
    assert len(figs) == 2
    assert len(figs[0].figure.axes[0].patches) == 1
    assert len(figs[1].figure.axes[0].get_xticklabels()) <= display.MAX_BARS
    assert len(figs[1].figure.axes[0].patches) == 2 * 295  # every bucket 1..295 for both states, empty ones included


def test_summary_box_formats_decimals_and_missing(shown):
    display.summary_box("What would change", {"tokens": Decimal("6666640"), "share": Decimal("0.5"),
                                              "missing": float("nan"), "n": pd.NA})
    text = _text(shown)
    assert "6,666,640" in text and "0.50" in text and text.count("—") == 2
    display.summary_box("Empty", {})
    assert "nothing to show" in _text(shown)


# --------------------------------------------------------------------------- itables offline, at every run
def test_setup_emits_the_offline_init_at_every_call(monkeypatch):
    """A page reload or "run all" on the same kernel drops the previous init output: every setup re-emits it."""
    import IPython.display

    out: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: out.extend(objs))
    monkeypatch.setattr(display, "_itables_ready", False)
    for _ in range(2):
        out.clear()
        assert display.setup() is True
        html = "".join(getattr(o, "data", "") or "" for o in out)
        assert "injectModule" in html and len(html) > 100_000, "the library is embedded (offline), not fetched"
    out.clear()
    display._init_itables()  # a table after setup: no second copy of the library within the run
    assert out == []


def test_every_notebook_sets_up_the_display_before_its_first_table():
    import json
    from pathlib import Path

    for nb_path in sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
        sources = ["".join(c["source"]) for c in cells]
        assert "parameters" in cells[0]["metadata"].get("tags", []), nb_path.name
        assert "show.setup()" in sources[1], f"{nb_path.name}: the cell after the parameters calls show.setup()"
        assert all("show." not in line or "import" in line or "show.setup()" in line
                   for line in sources[1].split("show.setup()")[0].splitlines()), nb_path.name
