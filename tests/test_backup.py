"""Backup on real PostgreSQL: checksums of the dumped snapshot, the backup guard of destructive procedures, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from runbook_lib import backups
from runbook_lib.errors import BackupRequiredError, ParameterError
from runbook_lib.run import Run
from runbook_lib.runner import run_procedure

TABLES = ["Voucher", "VoucherRedemption", "TokenTransaction", "UserTokenBalance"]
WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}


def sums(url: str) -> dict[str, dict[str, object]]:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        out = backups.table_checksums(c, "public", [*TABLES, "User", "_prisma_migrations"])
    eng.dispose()
    return out


def take_backup(tmp_path: Path, incident: str = "INC") -> Path:
    review = run_procedure("backup", {}, incident=incident, evidence_root=tmp_path, progress_bar=False)
    assert review.exit_code == 0, review.error
    done = run_procedure("backup", {"mode": "execute", "approved_plan": review.plan_id}, incident=incident,
                         evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    return done.run_dir


def corrupt(url: str) -> None:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.exec_driver_sql("update \"UserTokenBalance\" set balance = balance + 100 where \"userId\" <= 'user_0010'")
        c.exec_driver_sql("delete from \"VoucherRedemption\" where \"voucherId\" = 'v_partner75'")
        c.exec_driver_sql("insert into \"TokenTransaction\"(id, \"userId\", amount, type, source) "
                          "values ('bogus', 'user_0001', 999, 'CREDIT', 'purchase')")
    eng.dispose()


def test_backup_records_checksums_of_its_snapshot(linked_incident_db, target_env, tmp_path):
    target_env(linked_incident_db)
    before = sums(linked_incident_db)
    run_dir = take_backup(tmp_path)
    meta = json.loads((run_dir / "backup.json").read_text())
    for t in TABLES:
        assert meta["tables"][t] == before[t]
    assert meta["pg_restore_list"]["ok"] and meta["pg_restore_list"]["entries"] > 10
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["tables"]["TokenTransaction"] == before["TokenTransaction"]["rows"]
    assert "backup.dump" in manifest["files"] and manifest["verification_passed"] is True
    assert sums(linked_incident_db) == before  # a backup never writes


def test_destructive_execute_without_backup_refuses(linked_incident_db, target_env, tmp_path, engine_for):
    target_env(linked_incident_db)
    before = sums(linked_incident_db)
    params = {**WINDOW, "ledger_mode": "delete"}
    plan = Run("token-reversal", params).review()
    ev = tmp_path / "INC-B" / "001_run"
    with pytest.raises(BackupRequiredError, match="runbook run backup"):
        Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id,
                               "evidence_dir": str(ev)}).execute()
    with pytest.raises(BackupRequiredError, match="no incident folder"):
        Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert sums(linked_incident_db) == before
    # with a backup in the same incident it proceeds
    take_backup(tmp_path, "INC-B")
    run = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id,
                                 "evidence_dir": str(tmp_path / "INC-B" / "009_run")})
    assert run.execute() is not None and run.state["backup"]["backup"]


def test_override_reason_is_recorded(linked_incident_db, target_env, tmp_path):
    target_env(linked_incident_db)
    params = {**WINDOW, "ledger_mode": "delete"}
    review = run_procedure("token-reversal", params, incident="OV", evidence_root=tmp_path, progress_bar=False)
    reason = "provider snapshot snap-0042 taken at 10:05 UTC"
    out = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review.plan_id,
                                           "backup_override_reason": reason},
                        incident="OV", evidence_root=tmp_path, progress_bar=False)
    assert out.exit_code == 0, out.error
    assert out.manifest["backup"] == {"backup": None, "override_reason": reason}
    # an incident without a backup or a reason (its own review: an execute approves a review of its incident)
    review2 = run_procedure("token-reversal", params, incident="OV2", evidence_root=tmp_path, progress_bar=False)
    refused = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review2.plan_id},
                            incident="OV2", evidence_root=tmp_path, progress_bar=False)
    assert refused.exit_code == 14 and refused.status == "aborted"


def test_backup_without_an_evidence_folder_is_a_clear_error(linked_incident_db, target_env):
    target_env(linked_incident_db)
    plan = Run("backup", {}).review()
    with pytest.raises(ParameterError, match="evidence_dir"):
        Run("backup", {"mode": "execute", "approved_plan": plan.plan_id}).execute()
    with pytest.raises(Exception, match="NoSuchModel"):
        Run("backup", {"models": ["Voucher", "NoSuchModel"]}).review()


def test_require_recent_backup_checks_age_tables_and_database(linked_incident_db, target_env, tmp_path):
    import datetime as dt

    target_env(linked_incident_db)
    run_dir = take_backup(tmp_path, "AGE")
    fp = json.loads((run_dir / "backup.json").read_text())["fingerprint"]
    found = backups.require_recent_backup(tmp_path / "AGE", ["Voucher"], fp, dt.timedelta(hours=1), None)
    assert found["backup"] == run_dir.name
    with pytest.raises(BackupRequiredError, match="runbook run backup --incident AGE"):
        backups.require_recent_backup(tmp_path / "AGE", ["Voucher"], fp, dt.timedelta(seconds=-1), None)
    with pytest.raises(BackupRequiredError):
        backups.require_recent_backup(tmp_path / "AGE", ["User"], fp, dt.timedelta(hours=1), None)
    with pytest.raises(BackupRequiredError):
        backups.require_recent_backup(tmp_path / "AGE", ["Voucher"], "other-db", dt.timedelta(hours=1), None)
    assert backups.require_recent_backup(tmp_path / "AGE", ["User"], fp, dt.timedelta(hours=1), "snapshot") == {
        "backup": None, "override_reason": "snapshot"}


def test_guard_refuses_a_backup_whose_archive_was_altered(linked_incident_db, target_env, tmp_path):
    import datetime as dt

    target_env(linked_incident_db)
    run_dir = take_backup(tmp_path, "ALT")
    fp = json.loads((run_dir / "backup.json").read_text())["fingerprint"]
    (run_dir / "backup.dump").write_bytes(b"truncated")  # the archive could no longer be restored
    with pytest.raises(BackupRequiredError, match="archive altered"):
        backups.require_recent_backup(tmp_path / "ALT", ["Voucher"], fp, dt.timedelta(hours=1), None)


@pytest.mark.notebook
def test_cli_backup_review_then_execute(linked_incident_db, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATABASE_URL"] = linked_incident_db
    exe = Path(sys.executable).parent / "runbook"

    def runbook(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), "run", "backup", "--incident", "CLI", "--no-progress", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)

    r = runbook()
    assert r.returncode == 0, r.stderr
    plan_id = next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("plan id:"))
    assert "pg_dump" in r.stdout
    done = runbook("--execute", "--approve", plan_id)
    assert done.returncode == 0, done.stderr
    run_dir = sorted(p for p in (tmp_path / "incidents" / "CLI").iterdir() if p.is_dir())[-1]
    assert (run_dir / "backup.dump").is_file() and (run_dir / "backup.json").is_file()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "succeeded"
    password = sa.engine.make_url(linked_incident_db).password
    if password:
        assert password not in r.stdout + r.stderr + done.stdout + done.stderr


def test_checksum_does_not_depend_on_the_session_settings(fresh_db):
    eng = sa.create_engine(fresh_db, poolclass=sa.pool.NullPool)
    try:
        with eng.begin() as c:
            c.exec_driver_sql("create table t (at timestamptz, d interval, f float8, b bytea)")
            c.exec_driver_sql("insert into t values ('2025-12-01 10:00+00', '1 day 2 hours', 0.1, '\\x00ff')")
        sums = []
        for tz, style in [("UTC", "ISO, YMD"), ("America/New_York", "SQL, DMY"), ("Asia/Kolkata", "German")]:
            with eng.begin() as c:
                c.exec_driver_sql(f"set timezone = '{tz}'")
                c.exec_driver_sql(f"set datestyle = '{style}'")
                c.exec_driver_sql("set intervalstyle = 'iso_8601'")
                sums.append(backups.table_checksum(c, "public", "t"))
                # the session's own settings are put back afterwards
                assert c.exec_driver_sql("show timezone").scalar() == tz
                assert c.exec_driver_sql("show intervalstyle").scalar() == "iso_8601"
        assert sums[0] == sums[1] == sums[2]
    finally:
        eng.dispose()
