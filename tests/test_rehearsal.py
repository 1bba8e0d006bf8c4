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
    ("partial-rollback", {"all_vouchers": True, "grant_link": "redemption_id"}),  # the linked schema's link
])
def test_rehearsal_runs_on_a_copy_and_leaves_the_source_unchanged(linked_incident_db, target_env, tmp_path, procedure,
                                                                  inner, pg_server):
    target_env(linked_incident_db)
    before = checksums(linked_incident_db)
    params = {"rehearse": procedure, "rehearse_parameters": inner}
    review = run_procedure("rehearsal", params, incident="R", evidence_root=tmp_path, progress_bar=False)
    assert review.exit_code == 0, review.error
    done = run_procedure("rehearsal", {**params, "mode": "execute", "approved_plan": review.plan_id}, incident="R",
                         evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    c = done.counts
    assert c["verification_passed"] is True and c["live_unchanged"] is True and c["copy_kept"] is False
    assert checksums(linked_incident_db) == before  # byte for byte: every table of the source
    with sa.create_engine(pg_server.admin_url, poolclass=sa.pool.NullPool).connect() as a:
        assert a.execute(sa.text("select 1 from pg_database where datname = :d"), {"d": c["copy"]}).first() is None
    nb = (done.run_dir / "rehearsal.ipynb").read_text()
    assert "copy rows after" in nb


def test_keep_copy_and_bad_inner_parameters(linked_incident_db, target_env, pg_server):
    target_env(linked_incident_db)
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


def _copies(pg_server) -> set[str]:
    with sa.create_engine(pg_server.admin_url, poolclass=sa.pool.NullPool).connect() as a:
        return {r[0] for r in a.execute(sa.text("select datname from pg_database where datname like 'rb_rehearsal_%'"))}


def _review(params):
    run = Run("rehearsal", params)
    plan = run.review()
    run.engine.dispose()  # the review's pooled session would count as "someone connected"
    return plan


def test_template_copy_when_the_target_is_idle(linked_incident_db, target_env, pg_server):
    target_env(linked_incident_db)
    params = {"rehearse": "token-reversal", "rehearse_parameters": INNER}
    plan = _review(params)
    assert plan.summary["copy by"].startswith("CREATE DATABASE")
    before = _copies(pg_server)
    result = Run("rehearsal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert result is not None and result.counts["copied_by"] == "template"
    assert result.counts["live_unchanged"] and result.counts["verification_passed"]
    assert _copies(pg_server) == before


def test_dump_copy_when_others_are_connected_and_a_failed_copy_is_dropped(linked_incident_db, target_env, pg_server,
                                                                          monkeypatch):
    from runbook_lib import pgtools

    target_env(linked_incident_db)
    params = {"rehearse": "token-reversal", "rehearse_parameters": INNER}
    plan = _review(params)
    before = _copies(pg_server)
    app = sa.create_engine(linked_incident_db, poolclass=sa.pool.NullPool)
    with app.connect() as other:  # the application: TEMPLATE is impossible, pg_dump | pg_restore is used
        other.exec_driver_sql("select 1")
        result = Run("rehearsal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
        assert result is not None and result.counts["copied_by"] == "pg_dump | pg_restore"
        assert _copies(pg_server) == before
        real = pgtools.run_tool

        def failing_restore(tool, url, args, **kw):
            if tool.name == "pg_restore":
                raise RuntimeError("pg_restore failed (simulated)")
            return real(tool, url, args, **kw)

        monkeypatch.setattr(pgtools, "run_tool", failing_restore)
        with pytest.raises(RuntimeError, match="simulated"):
            Run("rehearsal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    app.dispose()
    assert _copies(pg_server) == before  # the half-made copy is not left behind


def test_a_template_copy_is_dropped_when_the_run_fails_before_apply(linked_incident_db, target_env, pg_server, monkeypatch):
    from runbook_lib.procedures import rehearsal

    target_env(linked_incident_db)
    params = {"rehearse": "token-reversal", "rehearse_parameters": INNER}
    plan = _review(params)
    before = _copies(pg_server)

    def refuse(*a, **k):
        raise RuntimeError("lock failed (simulated)")

    monkeypatch.setattr(rehearsal.Rehearsal, "lock", refuse)
    with pytest.raises(RuntimeError, match="simulated"):
        Run("rehearsal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert _copies(pg_server) == before


def test_the_live_transaction_is_read_only(linked_incident_db, target_env, pg_server, monkeypatch):
    """A rehearsal does not write the target (``writes = False``): the driver makes its transaction READ ONLY, so
    even a write by mistake in apply fails, and the copy made for it is dropped."""
    from runbook_lib.procedures import rehearsal

    target_env(linked_incident_db)
    params = {"rehearse": "token-reversal", "rehearse_parameters": INNER}
    plan = _review(params)
    before = _copies(pg_server)

    def write_by_mistake(self, conn, *args):
        conn.exec_driver_sql('update "Voucher" set "currentUses" = "currentUses"')

    monkeypatch.setattr(rehearsal.Rehearsal, "apply", write_by_mistake)
    with pytest.raises(Exception, match="read-only"):
        Run("rehearsal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert _copies(pg_server) == before


def test_rehearse_restore_with_a_backup_of_the_live_database(linked_incident_db, target_env, tmp_path):
    from test_backup import corrupt, take_backup

    target_env(linked_incident_db)
    take_backup(tmp_path, "RR")
    corrupt(linked_incident_db)
    before = checksums(linked_incident_db)
    params = {"rehearse": "restore", "rehearse_parameters": {"backup": "latest"}}
    review = run_procedure("rehearsal", params, incident="RR", evidence_root=tmp_path, progress_bar=False)
    assert review.exit_code == 0, review.error
    done = run_procedure("rehearsal", {**params, "mode": "execute", "approved_plan": review.plan_id}, incident="RR",
                         evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    assert done.counts["verification_passed"] is True and done.counts["live_unchanged"] is True
    assert checksums(linked_incident_db) == before  # the live database stays corrupted: only the copy was restored
