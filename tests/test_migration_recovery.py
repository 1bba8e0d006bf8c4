"""Migration recovery on a database whose migration failed after some of its statements."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import MIGRATIONS, read_frame

from runbook_lib.errors import InvariantError, ParameterError, PolicyAbort
from runbook_lib.prisma import status as st
from runbook_lib.prisma.migrate import checksum, deploy
from runbook_lib.run import Run
from runbook_lib.runner import run_procedure

#: the fixture's own migrations (the init, then the voucher tables), whatever their timestamps
INIT, VOUCHERS = sorted(p.name for p in MIGRATIONS.iterdir() if (p / "migration.sql").is_file())[:2]
FAILED = "20260101000000_add_campaigns"
PENDING = "20260201000000_later"
FAILED_SQL = """-- CreateEnum
CREATE TYPE "CampaignKind" AS ENUM ('EMAIL', 'PARTNER');

-- CreateTable
CREATE TABLE "Campaign" (
    "id" TEXT NOT NULL,
    "kind" "CampaignKind" NOT NULL,
    CONSTRAINT "Campaign_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "Campaign_kind_key" ON "Campaign"("kind");

-- AlterTable
ALTER TABLE "vouchers" ADD COLUMN "campaignId" TEXT;

-- AddForeignKey
ALTER TABLE "vouchers" ADD CONSTRAINT "vouchers_campaignId_fkey" FOREIGN KEY ("campaignId") REFERENCES "Campaign"("uid") ON DELETE SET NULL ON UPDATE CASCADE;

-- CreateTable
CREATE TABLE "CampaignStat" ("id" TEXT NOT NULL);
"""
UNDO_SQL = 'ALTER TABLE "vouchers" DROP COLUMN "campaignId";\nDROP TABLE "Campaign";\nDROP TYPE "CampaignKind";\n'


@pytest.fixture
def failed_db(schema_db, engine_for, tmp_path, target_env):
    """The demo migrations applied, then FAILED run as Prisma would leave it: 4 of 6 steps in effect."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    (folder / FAILED).mkdir()
    (folder / FAILED / "migration.sql").write_text(FAILED_SQL)
    (folder / PENDING).mkdir()
    (folder / PENDING / "migration.sql").write_text('CREATE TABLE "Later" ("id" TEXT);\n')
    eng = engine_for(schema_db)
    statements = st.split_statements(FAILED_SQL)
    with eng.begin() as c:
        c.execute(sa.text('insert into "_prisma_migrations" (id, checksum, migration_name, logs, started_at, '
                          "applied_steps_count) values (:id, :c, :n, :logs, now(), 0)"),
                  {"id": str(uuid.uuid4()), "c": checksum(FAILED_SQL), "n": FAILED,
                   "logs": 'Database error code: 42703 column "uid" referenced in foreign key constraint does '
                           "not exist"})
        for stmt in statements[:4]:
            c.exec_driver_sql(stmt)
    with pytest.raises(sa.exc.ProgrammingError), eng.begin() as c:
        c.exec_driver_sql(statements[4])
    target_env(schema_db)
    return schema_db, folder


def rows(url: str) -> pd.DataFrame:
    return read_frame(url, 'select * from "_prisma_migrations" order by started_at, migration_name')


def test_statuses_and_applied_steps(failed_db):
    url, folder = failed_db
    plan = Run("migration-recovery", {"migrations_dir": str(folder)}).review()
    status = dict(zip(plan.frames["migrations"]["migration"], plan.frames["migrations"]["status"], strict=True))
    assert status == {INIT: "applied", VOUCHERS: "applied",
                      FAILED: "failed", PENDING: "pending"}
    steps = plan.frames["steps"]
    assert list(steps["took effect"]) == ["yes", "yes", "yes", "yes", "no", "no"]
    assert list(steps["kind"]) == ["create type", "create table", "create index", "add column", "add constraint",
                                   "create table"]
    assert plan.summary["steps that took effect"] == 4
    assert any("P3009" in w for w in plan.warnings)
    logs = plan.frames["migrations"].set_index("migration").loc[FAILED, "logs"]
    assert "42703" in logs


def test_modified_and_missing_locally(failed_db, engine_for):
    url, folder = failed_db
    (folder / INIT / "migration.sql").write_text("-- edited after it was applied\n")
    shutil.rmtree(folder / VOUCHERS)
    eng = engine_for(url)
    with eng.connect() as c:
        got = {s.name: s.status for s in st.migration_statuses(c, "public", folder)}
    assert got[INIT] == "modified"
    assert got[VOUCHERS] == "missing locally"


def test_resolve_rolled_back_with_compensating_sql(failed_db, tmp_path, engine_for):
    url, folder = failed_db
    undo = tmp_path / "undo.sql"
    undo.write_text(UNDO_SQL)
    params = {"migrations_dir": str(folder), "action": "rolled_back", "compensating_sql": str(undo)}
    plan = Run("migration-recovery", params).review()
    before = rows(url)
    run = Run("migration-recovery", {**params, "mode": "execute", "approved_plan": plan.plan_id})
    result = run.execute()
    assert result is not None and result.counts["rows_marked_rolled_back"] == 1
    after = rows(url)
    # exactly what `prisma migrate resolve --rolled-back` leaves: same rows, rolled_back_at set on the failed one
    assert len(after) == len(before)
    failed = after[after["migration_name"] == FAILED].iloc[0]
    assert failed["rolled_back_at"] is not pd.NaT and pd.notna(failed["rolled_back_at"])
    assert pd.isna(failed["finished_at"])
    assert run.verify().passed
    with engine_for(url).connect() as c:
        assert c.exec_driver_sql("select to_regclass('\"Campaign\"')").scalar() is None
        effects = st.statement_effects(c, FAILED_SQL)
    assert not any(e.took_effect for e in effects)
    # `prisma migrate deploy` would now re-apply it; after fixing the file, our deploy does
    (folder / FAILED / "migration.sql").write_text(FAILED_SQL.replace('("uid")', '("id")'))
    with engine_for(url).begin() as c:
        applied = deploy(c, folder)
    assert applied == [FAILED, PENDING]
    again = Run("migration-recovery", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert again is not None and not again.changed  # a second run changes nothing


def test_resolve_applied_after_completing_by_hand(failed_db, tmp_path):
    url, folder = failed_db
    finish = tmp_path / "finish.sql"
    finish.write_text('ALTER TABLE "Campaign" ADD COLUMN "uid" TEXT UNIQUE;\n'
                      'ALTER TABLE "vouchers" ADD CONSTRAINT "vouchers_campaignId_fkey" FOREIGN KEY ("campaignId") '
                      'REFERENCES "Campaign"("uid");\nCREATE TABLE "CampaignStat" ("id" TEXT NOT NULL);\n')
    params = {"migrations_dir": str(folder), "action": "applied", "compensating_sql": str(finish)}
    plan = Run("migration-recovery", params).review()
    result = Run("migration-recovery", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert result is not None and result.changed
    after = rows(url)
    mine = after[after["migration_name"] == FAILED]
    # as Prisma's markMigrationApplied: the failed row rolled back, a new finished row with the file's checksum
    assert len(mine) == 2
    old, new = mine.iloc[0], mine.iloc[1]
    assert pd.notna(old["rolled_back_at"]) and pd.isna(old["finished_at"])
    assert pd.isna(new["rolled_back_at"]) and new["finished_at"] == new["started_at"]
    assert new["checksum"] == checksum(FAILED_SQL) and new["applied_steps_count"] == 0
    assert new["logs"] == ""  # Prisma's markMigrationApplied writes an empty string, not NULL
    assert old["logs"] and "42703" in old["logs"]  # the failed row keeps its error
    review = Run("migration-recovery", {"migrations_dir": str(folder)}).review()
    status = dict(zip(review.frames["migrations"]["migration"], review.frames["migrations"]["status"], strict=True))
    assert status[FAILED] == "applied"


def test_reset_is_refused_unless_disposable(failed_db):
    url, folder = failed_db
    with pytest.raises(PolicyAbort, match="drops the whole database"):
        Run("migration-recovery", {"migrations_dir": str(folder), "propose_reset": True}).review()
    dbname = sa.engine.make_url(url).database
    plan = Run("migration-recovery", {"migrations_dir": str(folder), "propose_reset": True, "disposable": True,
                                      "confirm_target": dbname}).review()
    assert any("never runs it" in w for w in plan.warnings)


def test_rolled_back_refused_for_an_applied_migration(failed_db):
    url, folder = failed_db
    with pytest.raises(PolicyAbort, match="P3012"):
        Run("migration-recovery", {"migrations_dir": str(folder), "action": "rolled_back",
                                   "migration_name": INIT}).review()
    with pytest.raises(PolicyAbort, match="P3011"):
        Run("migration-recovery", {"migrations_dir": str(folder), "action": "rolled_back",
                                   "migration_name": PENDING}).review()


def test_notebook_via_cli_path(failed_db, tmp_path):
    url, folder = failed_db
    out = run_procedure("migration-recovery", {"migrations_dir": str(folder)}, incident="M",
                        evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 0, out.error
    nb = Path(out.run_dir / "migration_recovery.ipynb").read_text()
    assert FAILED in nb and "prisma migrate reset" in nb
    assert out.summary["migrations failed"] == 1


def test_applied_with_missing_steps_is_refused_without_completing_sql(failed_db, engine_for):
    """`resolve --applied` tells deploy every step is there: two are not (the foreign key, CampaignStat)."""
    url, folder = failed_db
    before = rows(url)
    params = {"migrations_dir": str(folder), "action": "applied"}
    plan = Run("migration-recovery", params).review()
    assert plan.summary["steps missing"] == 2
    warning = next(w for w in plan.warnings if "not in the database" in w)
    assert "add constraint vouchers.vouchers_campaignId_fkey" in warning and "create table CampaignStat" in warning
    assert "compensating_sql" in warning and "override_reason" in warning
    run = Run("migration-recovery", {**params, "mode": "execute", "approved_plan": plan.plan_id})
    with pytest.raises(PolicyAbort, match="2 steps are not in the database.*compensating_sql.*override_reason") as ei:
        run.execute()
    assert ei.value.exit_code == 7 and "\n" not in ei.value.one_line()
    pd.testing.assert_frame_equal(rows(url), before)  # nothing written
    with engine_for(url).connect() as c:
        assert c.execute(sa.text("select to_regclass('\"CampaignStat\"')")).scalar() is None


def test_applied_with_incomplete_compensating_sql_rolls_back(failed_db, tmp_path):
    url, folder = failed_db
    before = rows(url)
    half = tmp_path / "half.sql"
    half.write_text('CREATE TABLE "CampaignStat" ("id" TEXT NOT NULL);\n')  # the foreign key is still missing
    params = {"migrations_dir": str(folder), "action": "applied", "compensating_sql": str(half)}
    plan = Run("migration-recovery", params).review()
    with pytest.raises(InvariantError, match="left 1 steps.*vouchers_campaignId_fkey"):
        Run("migration-recovery", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    pd.testing.assert_frame_equal(rows(url), before)


def test_applied_with_missing_steps_and_override_is_recorded(failed_db):
    url, folder = failed_db
    reason = "steps dropped on purpose in hotfix INC-9, see ticket"
    params = {"migrations_dir": str(folder), "action": "applied", "override_reason": reason}
    plan = Run("migration-recovery", params).review()
    assert any("override recorded" in w for w in plan.warnings)
    result = Run("migration-recovery", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert result is not None and result.changed
    assert result.counts["override_reason"] == reason and result.counts["steps_missing_marked_applied"] == 2
    with pytest.raises(ParameterError, match="override_reason"):
        Run("migration-recovery", {**params, "override_reason": "short"})


def test_applied_refused_via_cli_with_one_line_and_exit_7(failed_db, tmp_path):
    url, folder = failed_db
    params = {"migrations_dir": str(folder), "action": "applied"}
    review = run_procedure("migration-recovery", params, incident="M", evidence_root=tmp_path / "ev",
                           progress_bar=False)
    assert review.exit_code == 0, review.error
    out = run_procedure("migration-recovery", {**params, "mode": "execute", "approved_plan": review.plan_id},
                        incident="M", evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 7 and "compensating_sql" in str(out.error)
