"""`runbook demo` end to end: its own embedded server, a seeded incident, review then execute, evidence intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.notebook


def test_demo_runs_review_then_execute_and_prints_the_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["RUNBOOK_PGDATA"] = str(tmp_path / "pgdata")  # a server of its own, started and stopped by the demo
    exe = Path(sys.executable).parent / "runbook"
    r = subprocess.run([str(exe), "demo", "--evidence-dir", str(tmp_path / "incidents")], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    figures = dict(line.split(":", 1) for line in out.split("== summary ==")[1].splitlines() if ":" in line)
    figures = {k.strip(): v.strip() for k, v in figures.items()}
    assert int(figures["ledger rows reversed"]) > int(figures["users affected"]) > 0
    assert int(figures["users left negative"]) > 0 and figures["verification passed"] == "True"
    incident = Path(figures["evidence"])
    assert figures["reviewer / approver"].startswith("demo / demo (plan of 001_")  # the approval names people
    runs = sorted(p.name for p in incident.iterdir() if p.is_dir())
    assert [r[4:].split("_", 1)[1] for r in runs] == ["token-reversal_review", "token-reversal_execute"]
    check = subprocess.run([str(exe), "evidence", "verify", str(incident)], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
