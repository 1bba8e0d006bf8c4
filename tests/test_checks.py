"""Every verification check passes on the clean seeded incident and fails on a database with its defect."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from runbook_lib import checks, db
from runbook_lib import names as nmod
from runbook_lib.errors import ParameterError


def run_checks(url: str, only: list[str] | None = None):
    eng = db.make_engine(url)
    try:
        with db.read_only(eng) as conn:
            return checks.run_all(conn, nmod.resolve(conn), only=only, sample_rows=5)
    finally:
        eng.dispose()


def test_clean_incident_passes_every_check(linked_incident_db):
    result = run_checks(linked_incident_db)
    assert [c.name for c in result.checks if not c.passed] == []
    assert len(result.checks) == len(checks.CHECKS)


# check name -> SQL that plants exactly that defect in the seeded incident
DEFECTS = {
    "redemptions_without_voucher": [
        'alter table "VoucherRedemption" drop constraint "VoucherRedemption_voucherId_fkey"',
        "delete from \"Voucher\" where code = 'UNUSED5'",
        "insert into \"VoucherRedemption\"(id, \"voucherId\", \"userId\") values ('r_orphan', 'v_gone', 'user_0001')",
    ],
    "redemptions_without_user": [
        'alter table "VoucherRedemption" drop constraint "VoucherRedemption_userId_fkey"',
        "insert into \"VoucherRedemption\"(id, \"voucherId\", \"userId\") values ('r_nouser', 'v_unused5', 'ghost')",
        "update \"Voucher\" set \"currentUses\" = \"currentUses\" + 1 where code = 'UNUSED5'",
    ],
    "orphan_voucher_grants": [
        # the guide's partial rollback: redemptions deleted, their grants left in the ledger (and balances)
        "delete from \"VoucherRedemption\" where \"voucherId\" = 'v_welcome50'",
        "update \"Voucher\" set \"currentUses\" = 0 where code = 'WELCOME50'",
    ],
    "balances_without_user": [
        'alter table "UserTokenBalance" drop constraint "UserTokenBalance_userId_fkey"',
        "insert into \"UserTokenBalance\"(id, \"userId\", balance, \"updatedAt\") values ('b_ghost', 'ghost', 0, now())",
    ],
    "voucher_counters": ["update \"Voucher\" set \"currentUses\" = \"currentUses\" + 3 where code = 'PARTNER75'"],
    "depleted_status": ["update \"Voucher\" set status = 'DEPLETED' where code = 'WELCOME50'"],
    "balance_vs_ledger": [
        # the guide's UPDATE … FROM: one grant per user reversed in the balance, the ledger untouched
        "update \"UserTokenBalance\" b set balance = b.balance - t.amount from \"TokenTransaction\" t "
        "where t.\"userId\" = b.\"userId\" and t.source = 'voucher_redemption' and t.\"createdAt\" >= '2025-12-01'",
    ],
    "running_balance": ["update \"TokenTransaction\" set \"balanceAfter\" = \"balanceAfter\" + 1 "
                        "where id = (select min(id) from \"TokenTransaction\")"],
    "nothing_left_after_full_rollback": [
        'drop table "VoucherRedemption"', 'alter table "Voucher" rename to "VoucherOld"',
        'alter table "VoucherOld" rename to "Voucher_backup"',  # the enum-typed columns stay behind
    ],
}


def test_every_check_has_a_defect_case():
    assert set(DEFECTS) == set(checks.NAMES)


@pytest.mark.parametrize("name", checks.NAMES)
def test_each_check_fails_on_its_defect(linked_incident_db, engine_for, name):
    with engine_for(linked_incident_db).begin() as c:
        for sql in DEFECTS[name]:
            c.exec_driver_sql(sql)
    result = run_checks(linked_incident_db)
    by_title = {spec.name: check for spec, check in zip(checks.CHECKS, result.checks, strict=True)}
    failed = by_title[name]
    assert not failed.passed and failed.count > 0, failed
    assert failed.sample is not None and 0 < len(failed.sample) <= 5
    assert name in result.frames


def test_checks_skip_cleanly_when_the_voucher_system_is_gone(linked_incident_db, engine_for):
    with engine_for(linked_incident_db).begin() as c:
        c.exec_driver_sql('drop table "VoucherRedemption", "Voucher"; drop type "VoucherType", "VoucherStatus"')
        # the grants were reversed before the drop (ledger_policy=reverse), so no orphan remains
        c.exec_driver_sql("delete from \"TokenTransaction\" where source = 'voucher_redemption'")
        c.exec_driver_sql('update "UserTokenBalance" b set balance = coalesce((select sum(amount) from '
                          '"TokenTransaction" t where t."userId" = b."userId"), 0)')
        c.exec_driver_sql('update "TokenTransaction" t set "balanceAfter" = r.s from (select id, sum(amount) over '
                          '(partition by "userId" order by "createdAt", id) s from "TokenTransaction") r '
                          'where r.id = t.id')
    result = run_checks(linked_incident_db)
    assert result.passed, result.table()
    skipped = [c for c in result.checks if c.detail.startswith("skipped")]
    assert len(skipped) >= 3


def test_subset_and_unknown_names(linked_incident_db):
    result = run_checks(linked_incident_db, only=["voucher_counters"])
    assert len(result.checks) == 1
    with pytest.raises(ParameterError, match="unknown checks"):
        run_checks(linked_incident_db, only=["nope"])


def test_drift_is_reported_not_assumed(linked_incident_db, engine_for):
    with engine_for(linked_incident_db).begin() as c:
        c.execute(sa.text('update "UserTokenBalance" set balance = balance + 7 where "userId" = \'user_0003\''))
    check = next(c for c in run_checks(linked_incident_db).checks if c.name == "every balance equals its ledger sum")
    assert not check.passed and check.count == 1 and "+7 tokens" in check.detail


def test_expect_full_rollback_fails_while_the_voucher_system_is_there(linked_incident_db):
    eng = db.make_engine(linked_incident_db)
    try:
        with db.read_only(eng) as conn:
            result = checks.run_all(conn, nmod.resolve(conn), only=["nothing_left_after_full_rollback"],
                                    expect_full_rollback=True)
    finally:
        eng.dispose()
    (check,) = result.checks
    assert not check.passed and check.count >= 4  # two tables, two enums, their enum-typed columns
    assert "table Voucher" in check.detail and "enum VoucherStatus" in check.detail


def test_nothing_left_sees_enum_array_columns(linked_incident_db, engine_for):
    with engine_for(linked_incident_db).begin() as c:
        c.exec_driver_sql('drop table "VoucherRedemption"; alter table "Voucher" drop column status, drop column type')
        c.exec_driver_sql('alter table "User" add column "seenStatuses" "VoucherStatus"[]')
        c.exec_driver_sql('drop table "Voucher"; drop type "VoucherType"')
    (check,) = run_checks(linked_incident_db, only=["nothing_left_after_full_rollback"]).checks
    assert not check.passed
    assert "column User.seenStatuses" in check.detail and "enum VoucherStatus" in check.detail


def test_a_ledger_with_archived_history_is_checked_from_its_opening_balance(linked_incident_db, engine_for):
    """The ledger is complete only where it starts from zero: a user whose early rows were archived (the balance
    and the later balanceAfter values still count them) is compared from the first row's opening balance."""
    eng = engine_for(linked_incident_db)
    with eng.begin() as c:
        c.exec_driver_sql("delete from \"TokenTransaction\" where id in (select id from \"TokenTransaction\" "
                          "where \"userId\" = 'user_0003' order by \"createdAt\", id limit 2)")
    result = run_checks(linked_incident_db, only=["balance_vs_ledger", "running_balance"])
    assert result.passed, result.table()
    assert "1 users' ledgers start from an opening balance" in result.checks[0].detail
    with eng.begin() as c:  # drift on top of the opening balance is still found, and measured
        c.exec_driver_sql('update "UserTokenBalance" set balance = balance - 5 where "userId" = \'user_0003\'')
    check = run_checks(linked_incident_db, only=["balance_vs_ledger"]).checks[0]
    assert not check.passed and check.count == 1 and "-5 tokens" in check.detail


def test_one_ledger_pass_counts_what_the_offending_rows_show(linked_incident_db, engine_for):
    """The two per-user checks are counted in one pass over the ledger (``_ledger_figures``): with several
    defects at once, including running balances of a user who has no balance row, each count equals the rows its
    own offending-row query finds, whole and scoped."""
    eng = engine_for(linked_incident_db)
    with eng.begin() as c:
        c.exec_driver_sql('update "UserTokenBalance" set balance = balance + 3 where "userId" in (\'user_0002\', '
                          "'user_0004')")
        c.exec_driver_sql('update "TokenTransaction" set "balanceAfter" = "balanceAfter" + 1 where id in (select id '
                          'from "TokenTransaction" where "userId" = \'user_0005\' order by "createdAt" desc, id desc '
                          "limit 1)")
        c.exec_driver_sql('delete from "UserTokenBalance" where "userId" = \'user_0006\'')
        c.exec_driver_sql('update "TokenTransaction" set "balanceAfter" = "balanceAfter" - 9 where id in (select id '
                          'from "TokenTransaction" where "userId" = \'user_0006\' order by "createdAt" desc, id desc '
                          "limit 1)")
    drift, running = run_checks(linked_incident_db, only=["balance_vs_ledger", "running_balance"]).checks
    assert (drift.passed, drift.count) == (False, 2) and "+6 tokens" in drift.detail
    assert (running.passed, running.count) == (False, 2)
    assert set(running.sample["user_id"]) == {"user_0005", "user_0006"}
    eng2 = db.make_engine(linked_incident_db)
    try:
        with db.read_only(eng2) as conn:
            scoped = checks.run_all(conn, nmod.resolve(conn), only=["balance_vs_ledger", "running_balance"],
                                    users=checks.UserScope.of_ids(["user_0002", "user_0006"], "two users"))
    finally:
        eng2.dispose()
    assert [c.count for c in scoped.checks] == [1, 1]
    assert all("two users only" in c.name for c in scoped.checks)
