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
