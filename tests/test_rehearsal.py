"""Rehearsal: the procedure runs on a scratch copy; the source stays byte-for-byte the same."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from runbook_lib import backups
from runbook_lib.errors import ParameterError
from runbook_lib.run import Run
from runbook_lib.runner import run_procedure

INNER = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}


def checksums(url: str) -> dict[str, object]:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        tables = backups.all_tables(c, "public")
        out = backups.table_checksums(c, "public", tables)
    eng.dispose()
    return out


@pytest.mark.parametrize("procedure,inner", [
    ("token-reversal", {**INNER, "ledger_mode": "delete"}),
    ("partial-rollback", {"all_vouchers": True}),
])
def test_rehearsal_runs_on_a_copy_and_leaves_the_source_unchanged(incident_db, target_env, tmp_path, procedure,
                                                                  inner, pg_server):
    target_env(incident_db)
    before = checksums(incident_db)
    params = {"rehearse": procedure, "rehearse_parameters": inner}
    review = run_procedure("rehearsal", params, incident="R", evidence_root=tmp_path, progress_bar=False)
    assert review.exit_code == 0, review.error
    done = run_procedure("rehearsal", {**params, "mode": "execute", "approved_plan": review.plan_id}, incident="R",
                         evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    c = done.counts
    assert c["verification_passed"] is True and c["live_unchanged"] is True and c["copy_kept"] is False
    assert checksums(incident_db) == before  # byte for byte: every table of the source
    with sa.create_engine(pg_server.admin_url, poolclass=sa.pool.NullPool).connect() as a:
        assert a.execute(sa.text("select 1 from pg_database where datname = :d"), {"d": c["copy"]}).first() is None
    nb = (done.run_dir / "rehearsal.ipynb").read_text()
    assert "copy rows after" in nb


def test_keep_copy_and_bad_inner_parameters(incident_db, target_env, pg_server):
    target_env(incident_db)
    with pytest.raises(ParameterError, match="since"):
        Run("rehearsal", {"rehearse": "token-reversal", "rehearse_parameters": {"since": "yesterday"}}).review()
    with pytest.raises(ParameterError, match="cannot be rehearsed"):
        Run("rehearsal", {"rehearse": "verify"})
    params = {"rehearse": "token-reversal", "rehearse_parameters": INNER, "keep_copy": True}
    plan = Run("rehearsal", params).review()
    result = Run("rehearsal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert result is not None and result.counts["copy_kept"]
    try:
        eng = sa.create_engine(pg_server.url(result.counts["copy"]), poolclass=sa.pool.NullPool)
        with eng.connect() as c:
            n = c.exec_driver_sql('select count(*) from "TokenTransaction" where "reversalOfId" is not null').scalar()
        eng.dispose()
        assert n and n > 0  # the copy holds the rehearsed change
    finally:
        pg_server.drop(result.counts["copy"])
