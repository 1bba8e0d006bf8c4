"""The runbooks on the real application's shape (``demo/prisma``), with default parameters.

The schema has no column linking ledger rows, no ``REVERSAL`` type, status ``INACTIVE``, tables ``@@map``-ped to
snake_case and grants whose ``sourceId`` is the voucher's id (``shared/reference/REAL_APP.md``). Every figure is
compared with an independent expectation computed in pandas from the rows themselves.
"""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from runbook_lib.errors import PolicyAbort, VerificationFailed
from runbook_lib.run import Run

NO_BACKUP = "test database cloned from a template: no backup needed"
SINCE, UNTIL = "2025-12-01T00:00:00Z", "2025-12-03T00:00:00Z"


def snapshot(eng: sa.engine.Engine) -> dict[str, pd.DataFrame]:
    with eng.connect() as c:
        return {
            "b": pd.read_sql('select "userId", balance from user_token_balances order by 1', c).set_index("userId"),
            "l": pd.read_sql("select * from token_transactions order by id", c),
            "v": pd.read_sql('select id, code, status::text as status, "currentUses" from vouchers', c).set_index("code"),
            "r": pd.read_sql("select * from voucher_redemptions", c),
            "other": pd.read_sql("select (select count(*) from accounts) a, (select count(*) from sessions) s, "
                                 "(select count(*) from api_keys) k, (select count(*) from albums) al, "
                                 "(select count(*) from users) u", c),
        }


def execute(procedure: str, params: dict) -> tuple:
    plan = Run(procedure, params).review()
    run = Run(procedure, {**params, "mode": "execute", "approved_plan": plan.plan_id,
                          "backup_override_reason": NO_BACKUP})
    return plan, run.execute(), run


def last_balance_after_equals_balance(eng: sa.engine.Engine) -> int:
    with eng.connect() as c:
        return int(c.exec_driver_sql(
            'select count(*) from user_token_balances b join (select distinct on ("userId") "userId", "balanceAfter" '
            'from token_transactions order by "userId", "createdAt" desc, id desc) l on l."userId" = b."userId" '
            'where l."balanceAfter" <> b.balance').scalar_one())


def test_verify_passes_on_a_clean_database_and_fails_on_a_planted_orphan(incident_db, engine_for, target_env):
    target_env(incident_db)
    result = Run("verify", {}).verify()
    assert result.passed, result.table()
    with engine_for(incident_db).begin() as c:  # a redemption removed without touching its grant
        c.exec_driver_sql("delete from voucher_redemptions where id = (select min(id) from voucher_redemptions r "
                          "where \"tokensGranted\" > 0)")
        c.exec_driver_sql('update vouchers v set "currentUses" = (select count(*) from voucher_redemptions r '
                          'where r."voucherId" = v.id)')
    with pytest.raises(VerificationFailed, match="1 checks failed: voucher grants without redemption or voucher"):
        Run("verify", {}).verify()


@pytest.mark.parametrize("ledger_mode", ["compensate", "delete"])
def test_token_reversal_with_only_since_matches_an_independent_expectation(incident_db, engine_for, target_env,
                                                                           ledger_mode):
    target_env(incident_db)
    eng = engine_for(incident_db)
    before = snapshot(eng)
    led = before["l"]
    sel = led[(led["source"] == "voucher_redemption") & (pd.to_datetime(led["createdAt"]) >= "2025-12-01")]
    expected = before["b"]["balance"].copy()
    for uid, total in sel.groupby("userId")["amount"].sum().items():
        expected[uid] -= total
    params = {"since": SINCE, "ledger_mode": ledger_mode}
    plan, result, run = execute("token-reversal", params)
    assert plan.summary["ledger rows to reverse"] == len(sel) and plan.summary["tokens to reverse"] == sel["amount"].sum()
    # the enum has no REVERSAL: reversing rows are admin adjustments (delete mode writes none)
    assert plan.summary["reversing rows' type"] == ("EARN_ADMIN_ADJUSTMENT" if ledger_mode == "compensate" else "-")
    assert result.counts["rows_reversed"] == len(sel)
    after = snapshot(eng)
    pd.testing.assert_series_equal(after["b"]["balance"].sort_index(), expected.sort_index(), check_names=False)
    assert last_balance_after_equals_balance(eng) == 0
    assert run.verify().passed, run.verify().table()
    assert after["other"].equals(before["other"])  # no cascade touched any other table
    if ledger_mode == "compensate":
        rev = after["l"][after["l"]["source"] == "voucher_reversal"]
        assert len(rev) == len(sel) and set(rev["sourceId"]) == set(sel["id"])
        assert (rev["type"] == "EARN_ADMIN_ADJUSTMENT").all()
        joined = rev.merge(sel[["id", "amount", "metadata"]], left_on="sourceId", right_on="id", suffixes=("", "_o"))
        assert (joined["amount"] == -joined["amount_o"]).all()
        meta = joined["metadata"].iloc[0]
        assert meta["reversalOf"] == joined["sourceId"].iloc[0] and meta["planId"] == plan.plan_id
        assert meta["voucherCode"] == joined["metadata_o"].iloc[0]["voucherCode"]
    # a second run finds nothing to do and changes nothing
    again = Run("token-reversal", params).review()
    assert again.summary["ledger rows to reverse"] == 0 and again.changes_nothing
    if ledger_mode == "compensate":
        assert again.summary["rows already reversed"] == len(sel)


def test_voucher_codes_select_exactly_their_grants(incident_db, engine_for, target_env):
    target_env(incident_db)
    led = snapshot(engine_for(incident_db))["l"]
    window = {"since": SINCE, "until": UNTIL}
    full = Run("token-reversal", window).review()
    assert "(no voucher)" not in set(full.frames["by_voucher"]["voucher"])
    assert full.frames["by_voucher"]["without_redemption"].sum() == 0
    for code in ("PARTNER75", "LIMITED500"):
        ts = pd.to_datetime(led["createdAt"])
        mine = led[(led["source"] == "voucher_redemption") & (ts >= "2025-12-01") & (ts < "2025-12-03")
                   & (led["sourceId"] == f"cmv{code.lower()}")]
        plan = Run("token-reversal", {**window, "voucher_codes": [code]}).review()
        assert len(mine) > 0 and plan.summary["ledger rows to reverse"] == len(mine)
        assert plan.summary["tokens to reverse"] == mine["amount"].sum()


def test_partial_rollback_of_two_codes(incident_db, engine_for, target_env):
    target_env(incident_db)
    eng = engine_for(incident_db)
    before = snapshot(eng)
    codes = ["LIMITED500", "HOLIDAY25"]
    vids = {before["v"].loc[c, "id"] for c in codes}
    grants = before["l"][(before["l"]["source"] == "voucher_redemption") & before["l"]["sourceId"].isin(vids)]
    expected = before["b"]["balance"].copy()
    for uid, total in grants.groupby("userId")["amount"].sum().items():
        expected[uid] -= total
    plan, result, run = execute("partial-rollback", {"voucher_codes": codes})
    assert plan.summary["redemptions without a grant"] == 0
    assert plan.summary["ledger rows to reverse"] == len(grants)
    after = snapshot(eng)
    pd.testing.assert_series_equal(after["b"]["balance"].sort_index(), expected.sort_index(), check_names=False)
    assert set(after["l"][after["l"]["source"] == "voucher_reversal"]["sourceId"]) == set(grants["id"])
    assert not after["r"]["voucherId"].isin(vids).any()
    assert (after["v"].loc[codes, "currentUses"] == 0).all()
    assert after["v"].loc["LIMITED500", "status"] == "ACTIVE"  # the rollback brought it below its limit
    assert after["v"].loc["HOLIDAY25", "status"] == "INACTIVE"  # an admin's decision: kept
    others = [c for c in before["v"].index if c not in codes]
    pd.testing.assert_frame_equal(after["v"].loc[others], before["v"].loc[others])
    assert last_balance_after_equals_balance(eng) == 0
    assert run.verify().passed, run.verify().table()
    assert after["other"].equals(before["other"])


def test_partial_rollback_refuses_when_no_grant_matches(incident_db, engine_for, target_env):
    """The guide's bug (redemptions gone, tokens kept) is refused with the cause named, never run silently."""
    target_env(incident_db)
    eng = engine_for(incident_db)
    before = snapshot(eng)
    params = {"voucher_codes": ["PARTNER75"], "grant_link": "redemption_id"}
    plan = Run("partial-rollback", params).review()
    assert plan.summary["of them granting tokens"] == plan.summary["redemptions to clear"] > 0
    assert plan.warnings[0].startswith("EXECUTE WILL REFUSE") and "grant_link voucher_and_user" in plan.warnings[0]
    with pytest.raises(PolicyAbort, match="grant_link voucher_and_user"):
        Run("partial-rollback", {**params, "mode": "execute", "approved_plan": plan.plan_id,
                                 "backup_override_reason": NO_BACKUP}).execute()
    after = snapshot(eng)
    assert len(after["r"]) == len(before["r"]) and after["b"].equals(before["b"])


def test_names_from_the_prisma_7_schema_equal_reflection(incident_db, target_env):
    target_env(incident_db)
    by_reflection = Run("token-reversal", {"since": SINCE, "until": UNTIL}).review()
    by_schema = Run("token-reversal", {"since": SINCE, "until": UNTIL,
                                       "prisma_schema": "demo/prisma/schema.prisma"}).review()
    assert by_schema.plan_id == by_reflection.plan_id


def test_a_year_of_grants_reviews_and_displays(incident_db, engine_for, target_env):
    """Windows of any length: the by-day figures, plots and tables of a year of grants (numeric sums, dates)."""
    from runbook_lib import display

    target_env(incident_db)
    with engine_for(incident_db).begin() as c:  # spread the grants over the year before the incident
        c.exec_driver_sql("update token_transactions set \"createdAt\" = \"createdAt\" - mod(abs(hashtext(id)), 365) "
                          "* interval '1 day' where source = 'voucher_redemption'")
    plan = Run("token-reversal", {"since": "2024-11-01T00:00:00Z"}).review()
    by_day = plan.frames["by_day"]
    assert len(by_day) > 200 and by_day["tokens"].sum() == plan.summary["tokens to reverse"]
    for name, frame in plan.frames.items():
        display.show_table(frame, caption=name)
    display.plot_totals(by_day, "tokens by day", x="day", y="tokens")
    display.plot_before_after(plan.frames["histogram"], "before", "after", "balances")


@pytest.mark.notebook
def test_a_year_of_grants_through_the_notebook(incident_db, engine_for, target_env, tmp_path):
    """The whole token-reversal notebook (papermill, evidence) over a year-long window exits 0."""
    from runbook_lib.runner import run_procedure

    target_env(incident_db)
    with engine_for(incident_db).begin() as c:
        c.exec_driver_sql("update token_transactions set \"createdAt\" = \"createdAt\" - mod(abs(hashtext(id)), 365) "
                          "* interval '1 day' where source = 'voucher_redemption'")
    out = run_procedure("token-reversal", {"since": "2024-11-01T00:00:00Z"}, incident="YEAR",
                        evidence_root=tmp_path, progress_bar=False)
    assert out.exit_code == 0, out.error
    assert out.manifest["status"] == "succeeded"
