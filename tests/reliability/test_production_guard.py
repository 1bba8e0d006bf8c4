"""A target marked production executes only with --confirm-target naming that database (CLI end to end)."""

from __future__ import annotations

import sqlalchemy as sa

from runbook_lib.cli import main

from .support import db_state

W = ["-p", "since", "2025-12-01T00:00:00Z", "-p", "until", "2025-12-03T00:00:00Z", "--no-progress"]


def test_production_guard_end_to_end(incident_db, monkeypatch, capfd, tmp_path, figures):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", incident_db)
    monkeypatch.setenv("RUNBOOK_TARGET_PRODUCTION", "1")
    assert main(["run", "token-reversal", *W, "--operator", "ann"]) == 0  # review is always allowed
    plan_id = next(line.split()[-1] for line in capfd.readouterr().out.splitlines() if line.startswith("plan id:"))
    before = db_state(incident_db)
    # a production target always wants four eyes: the reviewer cannot approve her own plan (exit 6)
    figures["bad_inputs"] += 1
    assert main(["run", "token-reversal", *W, "--execute", "--approve", plan_id, "--approver", "ann"]) == 6
    err = capfd.readouterr().err
    assert "four eyes (the target is marked production)" in err and len(err.strip().splitlines()) == 1
    assert db_state(incident_db) == before
    figures["refused"] += 1
    for extra in ([], ["--confirm-target", "some_other_db"]):
        figures["bad_inputs"] += 1
        assert main(["run", "token-reversal", *W, "--execute", "--approve", plan_id, *extra]) == 7
        err = capfd.readouterr().err
        assert "marked production" in err and len(err.strip().splitlines()) == 1
        assert db_state(incident_db) == before
        figures["refused"] += 1
    name = sa.engine.make_url(incident_db).database
    assert main(["run", "token-reversal", *W, "--execute", "--approve", plan_id, "--confirm-target", name]) == 0
    assert db_state(incident_db) != before
