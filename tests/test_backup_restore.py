"""Backup and restore on real PostgreSQL: checksums, corruption, restore, refusals, the backup guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from runbook_lib import backups, pgtools
from runbook_lib.errors import BackupRequiredError, PolicyAbort, ToolMissingError
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


def test_backup_records_checksums_of_its_snapshot(incident_db, target_env, tmp_path):
    target_env(incident_db)
    before = sums(incident_db)
    run_dir = take_backup(tmp_path)
    meta = json.loads((run_dir / "backup.json").read_text())
    for t in TABLES:
        assert meta["tables"][t] == before[t]
    assert meta["pg_restore_list"]["ok"] and meta["pg_restore_list"]["entries"] > 10
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["tables"]["TokenTransaction"] == before["TokenTransaction"]["rows"]
    assert "backup.dump" in manifest["files"] and manifest["verification_passed"] is True
    assert sums(incident_db) == before  # a backup never writes


def test_backup_corrupt_restore_gives_back_the_original_checksums(incident_db, target_env, tmp_path):
    target_env(incident_db)
    original = sums(incident_db)
    take_backup(tmp_path)
    corrupt(incident_db)
    assert sums(incident_db) != original
    take_backup(tmp_path)  # the state before the restore, so the restore itself can be undone
    first = sorted(p.name for p in (tmp_path / "INC").iterdir() if p.name.endswith("backup_execute"))[0]
    params = {"backup": first}
    review = run_procedure("restore", params, incident="INC", evidence_root=tmp_path, progress_bar=False)
    assert review.exit_code == 0, review.error
    assert review.summary["tables that differ"] == 3
    nb = (review.run_dir / "restore.ipynb").read_text()
    assert "bogus" in nb and "changed since the backup" in nb and "missing live" in nb
    done = run_procedure("restore", {**params, "mode": "execute", "approved_plan": review.plan_id}, incident="INC",
                         evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    assert done.manifest["backup"]["backup"]  # the guard found the fresh backup
    assert sums(incident_db) == original
    again = run_procedure("restore", {**params, "mode": "execute", "approved_plan": review.plan_id}, incident="INC",
                          evidence_root=tmp_path, progress_bar=False)
    assert again.exit_code == 0 and again.manifest["committed"] is False


def test_restore_into_another_database_leaves_the_live_one_alone(incident_db, target_env, tmp_path, pg_server):
    target_env(incident_db)
    original = sums(incident_db)
    take_backup(tmp_path)
    corrupt(incident_db)
    corrupted = sums(incident_db)
    name = "rb_investigate_" + Path(tmp_path).name[-8:].replace("-", "_")
    try:
        plan = Run("restore", {"backup": "latest", "into_database": name, "evidence_dir": str(tmp_path / "INC" / "x")}
                   ).review()
        run = Run("restore", {"backup": "latest", "into_database": name, "mode": "execute",
                              "approved_plan": plan.plan_id, "evidence_dir": str(tmp_path / "INC" / "y")})
        assert run.execute() is not None and run.verify().passed
        restored = sums(pg_server.url(name))
        assert {t: restored[t] for t in TABLES} == {t: original[t] for t in TABLES}
        assert restored["User"]["rows"] == 0  # only the backed-up tables carry data; the schema is all there
        assert sums(incident_db) == corrupted
    finally:
        pg_server.drop(name)


def test_backup_from_another_database_is_refused(incident_db, schema_db, target_env, tmp_path):
    target_env(schema_db)
    take_backup(tmp_path, "OTHER")
    target_env(incident_db)
    folder = next(p for p in (tmp_path / "OTHER").iterdir() if p.name.endswith("backup_execute"))
    with pytest.raises(PolicyAbort, match="force_other_database"):
        Run("restore", {"backup": str(folder)}).review()
    plan = Run("restore", {"backup": str(folder), "force_other_database": True}).review()
    assert any("another database" in w for w in plan.warnings)


def test_altered_archive_is_refused(incident_db, target_env, tmp_path):
    target_env(incident_db)
    run_dir = take_backup(tmp_path)
    with (run_dir / "backup.dump").open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(Exception, match="altered"):
        Run("restore", {"backup": str(run_dir)}).review()


def test_destructive_execute_without_backup_refuses(incident_db, target_env, tmp_path, engine_for):
    target_env(incident_db)
    before = sums(incident_db)
    params = {**WINDOW, "ledger_mode": "delete"}
    plan = Run("token-reversal", params).review()
    ev = tmp_path / "INC-B" / "001_run"
    with pytest.raises(BackupRequiredError, match="runbook run backup"):
        Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id,
                               "evidence_dir": str(ev)}).execute()
    with pytest.raises(BackupRequiredError, match="no incident folder"):
        Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert sums(incident_db) == before
    # with a backup in the same incident it proceeds
    take_backup(tmp_path, "INC-B")
    run = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id,
                                 "evidence_dir": str(tmp_path / "INC-B" / "009_run")})
    assert run.execute() is not None and run.state["backup"]["backup"]


def test_override_reason_is_recorded(incident_db, target_env, tmp_path):
    target_env(incident_db)
    params = {**WINDOW, "ledger_mode": "delete"}
    review = run_procedure("token-reversal", params, incident="OV", evidence_root=tmp_path, progress_bar=False)
    reason = "provider snapshot snap-0042 taken at 10:05 UTC"
    out = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review.plan_id,
                                           "backup_override_reason": reason},
                        incident="OV", evidence_root=tmp_path, progress_bar=False)
    assert out.exit_code == 0, out.error
    assert out.manifest["backup"] == {"backup": None, "override_reason": reason}
    refused = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review.plan_id},
                            incident="OV2", evidence_root=tmp_path, progress_bar=False)
    assert refused.exit_code == 14 and refused.status == "aborted"


def test_old_pg_dump_gives_the_clear_error(tmp_path):
    old = Path("/usr/lib/postgresql/15/bin")
    if not (old / "pg_dump").is_file():
        pytest.skip("no PostgreSQL 15 client programs on this machine")
    assert pgtools.find_tool("pg_dump", 15, [old]).major == 15
    with pytest.raises(ToolMissingError, match="pg_dump 18 or newer is needed.*available: 15"):
        pgtools.find_tool("pg_dump", 18, [old])
    with pytest.raises(ToolMissingError, match="none found"):
        pgtools.find_tool("pg_dump", 18, [tmp_path])


def test_password_never_on_the_command_line(monkeypatch):
    args, env = pgtools.libpq_env("postgresql+psycopg2://bob:S3cret-pw@db.internal:6543/app")
    assert "S3cret-pw" not in " ".join(args) and env["PGPASSWORD"] == "S3cret-pw"
    assert args == ["--host", "db.internal", "--port", "6543", "--username", "bob"]
