"""Restore on real PostgreSQL: backup, corrupt, restore gives back the checksums; refusals; into another database."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from test_backup import TABLES, corrupt, sums, take_backup

from runbook_lib import backups
from runbook_lib.errors import BackupRequiredError, ParameterError, PolicyAbort
from runbook_lib.run import Run
from runbook_lib.runner import run_procedure


def test_backup_corrupt_restore_gives_back_the_original_checksums(linked_incident_db, target_env, tmp_path):
    target_env(linked_incident_db)
    original = sums(linked_incident_db)
    take_backup(tmp_path)
    corrupt(linked_incident_db)
    assert sums(linked_incident_db) != original
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
    assert sums(linked_incident_db) == original
    again = run_procedure("restore", {**params, "mode": "execute", "approved_plan": review.plan_id}, incident="INC",
                          evidence_root=tmp_path, progress_bar=False)
    assert again.exit_code == 0 and again.manifest["committed"] is False


def test_restore_into_another_database_leaves_the_live_one_alone(linked_incident_db, target_env, tmp_path, pg_server):
    target_env(linked_incident_db)
    original = sums(linked_incident_db)
    take_backup(tmp_path)
    corrupt(linked_incident_db)
    corrupted = sums(linked_incident_db)
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
        assert sums(linked_incident_db) == corrupted
    finally:
        pg_server.drop(name)


def test_backup_from_another_database_is_refused(linked_incident_db, linked_schema_db, target_env, tmp_path):
    target_env(linked_schema_db)
    take_backup(tmp_path, "OTHER")
    target_env(linked_incident_db)
    folder = next(p for p in (tmp_path / "OTHER").iterdir() if p.name.endswith("backup_execute"))
    with pytest.raises(PolicyAbort, match="force_other_database"):
        Run("restore", {"backup": str(folder)}).review()
    plan = Run("restore", {"backup": str(folder), "force_other_database": True}).review()
    assert any("another database" in w for w in plan.warnings)


def test_altered_archive_is_refused(linked_incident_db, target_env, tmp_path):
    target_env(linked_incident_db)
    run_dir = take_backup(tmp_path)
    with (run_dir / "backup.dump").open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(Exception, match="altered"):
        Run("restore", {"backup": str(run_dir)}).review()


def test_restoring_a_parent_without_its_referencing_tables_is_a_parameter_error(linked_incident_db, target_env, tmp_path):
    target_env(linked_incident_db)
    take_backup(tmp_path)
    before = sums(linked_incident_db)
    with pytest.raises(ParameterError, match=r"also restore VoucherRedemption \(references Voucher\)"):
        Run("restore", {"backup": "latest", "restore_tables": ["Voucher"],
                        "evidence_dir": str(tmp_path / "INC" / "x")}).review()
    assert sums(linked_incident_db) == before
    # both together are fine; so is the parent alone into another database (nothing there is emptied)
    Run("restore", {"backup": "latest", "restore_tables": ["Voucher", "VoucherRedemption"],
                    "evidence_dir": str(tmp_path / "INC" / "y")}).review()


def test_backup_guard_wants_the_tables_this_restore_overwrites(linked_incident_db, target_env, tmp_path):
    """A backup of just the two voucher tables is enough to restore those two; restoring all four needs more."""
    target_env(linked_incident_db)
    source = take_backup(tmp_path, "SRC")  # the source of the restore (all four tables), in another incident
    eng = sa.create_engine(linked_incident_db, poolclass=sa.pool.NullPool)
    with eng.begin() as c:  # damage in the two voucher tables only: restoring those two repairs it
        c.exec_driver_sql("update \"Voucher\" set \"currentUses\" = \"currentUses\" + 5")
    eng.dispose()
    review = run_procedure("backup", {"models": ["Voucher", "VoucherRedemption"]}, incident="INC",
                           evidence_root=tmp_path, progress_bar=False)
    done = run_procedure("backup", {"models": ["Voucher", "VoucherRedemption"], "mode": "execute",
                                    "approved_plan": review.plan_id}, incident="INC", evidence_root=tmp_path,
                         progress_bar=False)
    assert done.exit_code == 0, done.error
    two = {"backup": str(source), "restore_tables": ["Voucher", "VoucherRedemption"]}
    plan = run_procedure("restore", two, incident="INC", evidence_root=tmp_path, progress_bar=False)
    ok = run_procedure("restore", {**two, "mode": "execute", "approved_plan": plan.plan_id}, incident="INC",
                       evidence_root=tmp_path, progress_bar=False)
    assert ok.exit_code == 0, ok.error
    assert ok.manifest["backup"]["backup"]
    four = {"backup": str(source)}
    plan = run_procedure("restore", four, incident="INC", evidence_root=tmp_path, progress_bar=False)
    refused = run_procedure("restore", {**four, "mode": "execute", "approved_plan": plan.plan_id}, incident="INC",
                            evidence_root=tmp_path, progress_bar=False)
    assert refused.exit_code == 14, refused.error


def test_the_backup_being_restored_does_not_count_as_the_backup_of_the_current_state(linked_incident_db,
                                                                                      target_env, tmp_path):
    """Restoring overwrites the current (damaged) state: it must be backed up first, after the restored backup,
    or the restore cannot be undone. The archive being restored is not that backup, nor is an older one."""
    target_env(linked_incident_db)
    first = take_backup(tmp_path)
    corrupt(linked_incident_db)
    damaged = sums(linked_incident_db)
    params = {"backup": first.name}
    review = run_procedure("restore", params, incident="INC", evidence_root=tmp_path, progress_bar=False)
    assert review.exit_code == 0, review.error
    execute = {**params, "mode": "execute", "approved_plan": review.plan_id}
    refused = run_procedure("restore", execute, incident="INC", evidence_root=tmp_path, progress_bar=False)
    assert refused.exit_code == 14, refused.error
    assert "the backup being restored does not count" in refused.error
    assert "runbook run backup --incident INC" in refused.error and "backup_override_reason" in refused.error
    assert "\n" not in refused.error and sums(linked_incident_db) == damaged  # untouched
    # the guard at library level: the restored backup and anything older are skipped
    import datetime as dt
    import json

    meta = json.loads((first / "backup.json").read_text())
    with pytest.raises(BackupRequiredError, match="taken after it"):
        backups.require_recent_backup(tmp_path / "INC", TABLES, meta["fingerprint"], dt.timedelta(hours=1), None,
                                      restoring={"folder": str(first), "created_at": meta["created_at"]})
    # a backup of the damaged state, taken after the restored one, lets it proceed (the restore can be undone)
    second = take_backup(tmp_path)
    done = run_procedure("restore", execute, incident="INC", evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    assert done.manifest["backup"]["backup"] == second.name != first.name
    assert {t: v for t, v in sums(linked_incident_db).items() if t in TABLES} != {t: damaged[t] for t in TABLES}


def test_restore_override_reason_replaces_the_backup_of_the_current_state(linked_incident_db, target_env, tmp_path):
    target_env(linked_incident_db)
    first = take_backup(tmp_path)
    corrupt(linked_incident_db)
    reason = "provider snapshot snap-0099 of the damaged state"
    params = {"backup": first.name, "backup_override_reason": reason}
    review = run_procedure("restore", params, incident="INC", evidence_root=tmp_path, progress_bar=False)
    done = run_procedure("restore", {**params, "mode": "execute", "approved_plan": review.plan_id}, incident="INC",
                         evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    assert done.manifest["backup"] == {"backup": None, "override_reason": reason}
