"""Reliability suite: collects the figures every test adds and prints them as one line at the end.

`make reliability` runs this folder (fast and slow parts) and ends with a line such as
``reliability: trials=60 faults_injected=60 partial_states=0 lost_updates=0 bad_inputs=52 refused=52``,
also written to ``.runbook/reliability-figures.txt`` for the README.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

FIGURES: Counter[str] = Counter()
ORDER = ["trials", "faults_injected", "partial_states", "lost_updates", "bad_inputs", "refused"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def figures() -> Counter[str]:
    return FIGURES


def figures_line() -> str:
    extra = [k for k in sorted(FIGURES) if k not in ORDER]
    return "reliability: " + " ".join(f"{k}={FIGURES.get(k, 0)}" for k in [*ORDER, *extra])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    line = figures_line()
    terminalreporter.write_line(line)
    out = ROOT / ".runbook" / "reliability-figures.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
