"""Token reversal against real PostgreSQL: every balance compared with an independent expectation."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from runbook_lib.errors import (
    ApprovalError,
    NotFoundError,
    ParameterError,
    PolicyAbort,
    SchemaMismatchError,
    VerificationFailed,
)
from runbook_lib.run import Run

NO_BACKUP = "test database cloned from a template: no backup needed"

SINCE, UNTIL = "2025-12-01T00:00:00Z", "2025-12-03T00:00:00Z"
WINDOW = {"since": SINCE, "until": UNTIL}


def snapshot(eng: sa.engine.Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    with eng.connect() as c:
        bal = pd.read_sql('select "userId", balance from "UserTokenBalance" order by 1', c).set_index("userId")
        led = pd.read_sql('select * from "TokenTransaction" order by id', c)
    return bal, led


def expected_after(bal: pd.DataFrame, led: pd.DataFrame, policy: str = "allow") -> pd.Series:
    """Independent expectation in pandas: every in-window voucher grant reversed, per-user totals."""
    ts = pd.to_datetime(led["createdAt"])
    sel = led[(led["source"] == "voucher_redemption") & (ts >= "2025-12-01") & (ts < "2025-12-03")]
    reversed_ids = set(led["reversalOfId"].dropna())
    sel = sel[~sel["id"].isin(reversed_ids)]
    totals = sel.groupby("userId")["amount"].sum()
    after = bal["balance"].copy()
    for uid, total in totals.items():
        if uid not in after.index:
            continue
        new = after[uid] - total
        if policy == "clamp":  # stop at zero, or where an already negative balance was: never raised
            new = max(new, min(after[uid], 0))
        elif policy == "skip" and new < 0:
            continue
        after[uid] = new
    return after


def review_then_execute(**params):
    review = Run("token-reversal", {**WINDOW, **params})
    plan = review.review()
    ex = Run("token-reversal", {**WINDOW, **params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id})
    result = ex.execute()
    return plan, result, ex


@pytest.mark.parametrize("policy", ["allow", "clamp", "skip"])
@pytest.mark.parametrize("ledger_mode", ["compensate", "delete"])
def test_every_balance_matches_independent_expectation(linked_incident_db, engine_for, target_env, policy, ledger_mode):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    bal0, led0 = snapshot(eng)
    expected = expected_after(bal0, led0, policy)
    plan, result, ex = review_then_execute(negative_policy=policy, ledger_mode=ledger_mode)
    assert result is not None and result.changed
    # every shared check passes afterwards, running balances included (delete mode corrects later balanceAfter)
    assert ex.verify().passed, ex.verify().table()
    bal1, led1 = snapshot(eng)
    pd.testing.assert_series_equal(bal1["balance"].sort_index(), expected.sort_index(), check_names=False)
    # users with several grants in the window got all of them reversed (the guide's UPDATE…FROM got one)
    assert plan.summary["ledger rows to reverse"] > plan.summary["users affected"]
    if ledger_mode == "compensate":
        rev = led1[led1["reversalOfId"].notna()]
        assert len(rev) == result.counts["rows_reversed"]
        assert (rev["type"] == "REVERSAL").all()
        # originals kept, each linked reversal negates it
        joined = rev.merge(led1[["id", "amount"]], left_on="reversalOfId", right_on="id", suffixes=("", "_orig"))
        assert (joined["amount"] == -joined["amount_orig"]).all()
    else:
        assert len(led1) == len(led0) - result.counts["rows_reversed"] + result.counts.get("clamp_rows_inserted", 0)
    if policy == "allow":
        assert result.counts["users_left_negative"] == plan.summary["users going negative (before policy)"] > 0
    else:
        assert (bal1["balance"][bal1.index.isin(bal0.index)] >= 0).sum() >= (bal0["balance"] >= 0).sum() - 0
        assert result.counts["users_left_negative"] == 0
    # the ledger still sums to every balance (clamp writes its shortfall as an adjustment row)
    if ledger_mode == "compensate" or policy != "clamp":
        sums = led1.groupby("userId")["amount"].sum()
        drift = (bal1["balance"] - sums.reindex(bal1.index).fillna(0)).abs()
        assert drift.max() == 0


def test_balance_after_is_the_true_running_balance(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    bal0, _ = snapshot(eng)
    review_then_execute()
    _, led = snapshot(eng)
    rev = led[led["reversalOfId"].notna()].sort_values(["userId", "createdAt", "id"])
    last = rev.groupby("userId").tail(1).set_index("userId")["balanceAfter"]
    bal1, _ = snapshot(eng)
    assert (last == bal1["balance"].reindex(last.index)).all()


def test_second_execute_changes_nothing(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    plan, first, ex = review_then_execute()
    after_first = snapshot(eng)
    again = Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert again is not None and not again.changed
    assert "nothing to do" in again.messages[0]
    after_second = snapshot(eng)
    pd.testing.assert_frame_equal(after_first[0], after_second[0])
    pd.testing.assert_frame_equal(after_first[1], after_second[1])
    review2 = Run("token-reversal", WINDOW).review()
    assert review2.summary["ledger rows to reverse"] == 0
    assert review2.summary["rows already reversed"] == first.counts["rows_reversed"]


def test_change_between_review_and_execute_aborts(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    plan = Run("token-reversal", WINDOW).review()
    with eng.begin() as c:  # the app spends tokens of an affected user meanwhile
        uid = plan.frames["balances"]["userId"].iloc[0]
        c.execute(sa.text('update "UserTokenBalance" set balance = balance - 1 where "userId" = :u'), {"u": uid})
    before = snapshot(eng)
    with pytest.raises(ApprovalError, match="plan changed"):
        Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    after = snapshot(eng)
    pd.testing.assert_frame_equal(before[0], after[0])
    pd.testing.assert_frame_equal(before[1], after[1])


def test_execute_without_or_with_wrong_approval_refuses(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    before = snapshot(eng)
    with pytest.raises(ApprovalError, match="needs approved_plan"):
        Run("token-reversal", {**WINDOW, "mode": "execute"}).execute()
    with pytest.raises(ApprovalError):
        Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": "0" * 24}).execute()
    after = snapshot(eng)
    pd.testing.assert_frame_equal(before[1], after[1])


def test_abort_policy_refuses_when_balances_would_go_negative(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    before = snapshot(eng)
    with pytest.raises(PolicyAbort, match="below zero"):
        review_then_execute(negative_policy="abort")
    pd.testing.assert_frame_equal(before[1], snapshot(eng)[1])


def test_review_is_read_only_and_lists_negative_balances(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    before = snapshot(eng)
    plan = Run("token-reversal", WINDOW).review()
    assert len(plan.frames["negative"]) > 0
    assert plan.warnings and "below zero" in plan.warnings[0]
    assert len(plan.frames["balances"]) <= 50
    pd.testing.assert_frame_equal(before[1], snapshot(eng)[1])


def test_narrowing_by_user_and_voucher(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    # the linked fixture's grants name their redemption in sourceId (not the voucher, as the app does)
    window = {**WINDOW, "grant_link": "redemption_id"}
    full = Run("token-reversal", window).review()
    uid = full.frames["balances"]["userId"].iloc[0]
    one = Run("token-reversal", {**window, "user_ids": [uid]}).review()
    assert one.summary["users affected"] == 1
    by_voucher = full.frames["by_voucher"]
    assert "(no voucher)" not in set(by_voucher["voucher"])
    code = by_voucher["voucher"].iloc[0]
    v = Run("token-reversal", {**window, "voucher_codes": [code]}).review()
    assert v.summary["tokens to reverse"] == int(by_voucher["tokens"].iloc[0])
    # with the application's convention on this schema nothing matches, and the review says so
    wrong = Run("token-reversal", {**WINDOW, "voucher_codes": [code]}).review()
    assert wrong.summary["ledger rows to reverse"] == 0
    assert any("select no ledger row" in w and "grant_link" in w for w in wrong.warnings)


@pytest.mark.parametrize(
    ("params", "error", "text"),
    [
        ({"since": "2025-12-01T00:00:00"}, ParameterError, "no time zone"),
        ({"since": "yesterday"}, ParameterError, "not an ISO-8601"),
        ({"since": "2025-12-03T00:00:00Z", "until": "2025-12-01T00:00:00Z"}, ParameterError, "must be before"),
        ({**WINDOW, "reversal_type": "BOGUS"}, ParameterError, "not a value of the ledger's type enum"),
        ({**WINDOW, "voucher_codes": ["NOPE"]}, NotFoundError, "unknown voucher codes"),
        ({**WINDOW, "user_ids": ["nobody"]}, NotFoundError, "unknown user ids"),
        ({**WINDOW, "negative_policy": "maybe"}, ParameterError, "negative_policy"),
        ({**WINDOW, "bogus": 1}, ParameterError, "unknown parameter"),
        ({**WINDOW, "table_map": {"TokenTransaction": "ledger_gone"}}, SchemaMismatchError, "ledger_gone"),
        ({**WINDOW, "column_map": {"TokenTransaction.amount": "amt"}}, SchemaMismatchError, '"amt"'),
    ],
)
def test_bad_input_is_refused_with_one_line(linked_incident_db, engine_for, target_env, params, error, text):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    before = snapshot(eng)
    with pytest.raises(error) as exc:
        Run("token-reversal", params).review()
    assert text in str(exc.value)
    assert "\n" not in exc.value.one_line()
    pd.testing.assert_frame_equal(before[1], snapshot(eng)[1])


def test_mapped_names_from_schema_prisma(linked_incident_db, engine_for, target_env):
    from runbook_lib import seed

    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    with eng.begin() as c:
        seed.apply_mapped_names(c)
    with pytest.raises(SchemaMismatchError):
        Run("token-reversal", WINDOW).review()
    params = {**WINDOW, "prisma_schema": "tests/fixtures/prisma_mapped/schema.prisma"}
    plan = Run("token-reversal", params).review()
    assert plan.summary["ledger rows to reverse"] > 0
    result = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert result is not None and result.counts["rows_reversed"] == plan.summary["ledger rows to reverse"]


@pytest.mark.parametrize("marked_by", ["env", "parameter"])
def test_production_target_needs_confirmation(linked_incident_db, engine_for, target_env, monkeypatch, marked_by):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    extra = {"production": True} if marked_by == "parameter" else {}
    if marked_by == "env":
        monkeypatch.setenv("RUNBOOK_TARGET_PRODUCTION", "1")
    plan = Run("token-reversal", {**WINDOW, **extra}).review()  # review is always allowed
    before = snapshot(eng)
    execute = {**WINDOW, **extra, "mode": "execute", "approved_plan": plan.plan_id}
    for confirm in (None, "some_other_db"):
        with pytest.raises(PolicyAbort, match="marked production"):
            Run("token-reversal", {**execute, "confirm_target": confirm}).execute()
    pd.testing.assert_frame_equal(before[1], snapshot(eng)[1])
    dbname = sa.engine.make_url(linked_incident_db).database
    result = Run("token-reversal", {**execute, "confirm_target": dbname}).execute()
    assert result is not None and result.changed


def _in_window_user(eng: sa.engine.Engine) -> str:
    with eng.connect() as c:
        return str(c.execute(sa.text(
            'select min("userId") from "TokenTransaction" where source = \'voucher_redemption\' '
            'and "createdAt" >= \'2025-12-01\' and "createdAt" < \'2025-12-03\'')).scalar_one())


@pytest.mark.parametrize("ledger_mode", ["compensate", "delete"])
def test_clamp_never_raises_a_balance_that_was_already_negative(linked_incident_db, engine_for, target_env, ledger_mode):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    uid = _in_window_user(eng)
    with eng.begin() as c:  # an earlier incident's reversal (policy allow) left this user below zero
        c.execute(sa.text('insert into "TokenTransaction"(id, "userId", amount, type, source, "createdAt", '
                          '"balanceAfter") select \'old_debt\', :u, -1000, \'DEBIT\', \'spend\', '
                          '\'2026-01-31\', balance - 1000 from "UserTokenBalance" where "userId" = :u'), {"u": uid})
        c.execute(sa.text('update "UserTokenBalance" set balance = balance - 1000 where "userId" = :u'), {"u": uid})
    bal0, led0 = snapshot(eng)
    assert bal0.loc[uid, "balance"] < 0
    expected = expected_after(bal0, led0, "clamp")
    plan, result, ex = review_then_execute(negative_policy="clamp", ledger_mode=ledger_mode)
    bal1, _ = snapshot(eng)
    assert bal1.loc[uid, "balance"] == bal0.loc[uid, "balance"]  # not lifted to zero by a reversal
    pd.testing.assert_series_equal(bal1["balance"].sort_index(), expected.sort_index(), check_names=False)
    assert plan.summary["users left negative"] == 1 == result.counts["users_left_negative"]
    assert ex.verify().passed, ex.verify().table()


def test_users_without_a_balance_row_are_skipped_and_verify_agrees(linked_incident_db, engine_for, target_env):
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    uid = _in_window_user(eng)
    with eng.begin() as c:
        c.execute(sa.text('delete from "UserTokenBalance" where "userId" = :u'), {"u": uid})
    plan, result, ex = review_then_execute()
    assert any("no balance row" in w for w in plan.warnings)
    assert uid in set(plan.frames["negative"]["userId"])
    checks = {c.name: c for c in ex.verify().checks}
    assert checks["no selected ledger row left unreversed"].passed
    by_design = checks["rows left by the policy (skipped users, users without a balance row)"]
    assert by_design.count > 0
    _, led = snapshot(eng)
    assert led[led["reversalOfId"].notna() & (led["userId"] == uid)].empty  # left alone, as the review said


def test_a_reviews_pending_checks_take_its_plans_counts(linked_incident_db, engine_for, target_env):
    """A review's verification does not read the selection again: its pending check and the rows left by the policy
    are its own plan's counts, the same as a fresh read of the same data gives."""
    from runbook_lib import db
    from runbook_lib import names as nmod
    from runbook_lib.procedures import token_reversal

    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    with eng.begin() as c:  # a user without a balance row: rows left by the policy
        c.execute(sa.text('delete from "UserTokenBalance" where "userId" = :u'), {"u": _in_window_user(eng)})
    review = Run("token-reversal", WINDOW)
    plan = review.review()
    checks = {c.name: c for c in review.verify().checks}
    pending = checks["no selected ledger row left unreversed"]
    assert pending.pending and pending.count == plan.summary["ledger rows to reverse"] > 0
    assert pending.detail.endswith("(the review's plan)")
    by_design = checks["rows left by the policy (skipped users, users without a balance row)"].count
    with db.read_only(eng) as conn:
        fresh = token_reversal._unreversed(conn, review.params, nmod.resolve(conn))  # noqa: SLF001
    assert fresh == (pending.count, by_design) and by_design > 0


def test_a_misspelled_notebook_parameter_is_refused_not_ignored(linked_incident_db, target_env):
    """papermill -p negative_polcy abort only warns; the notebook must not run with the default policy."""
    target_env(linked_incident_db)
    with pytest.raises(ParameterError, match="negative_polcy.*unknown parameter"):
        Run.from_namespace("token-reversal", {**WINDOW, "negative_polcy": "abort", "Run": Run, "In": [""]})
    ok = Run.from_namespace("token-reversal", {**WINDOW, "negative_policy": "abort", "plan": None, "result": 1})
    assert ok.params.negative_policy == "abort"


def test_apply_reverses_exactly_the_rows_the_plan_recomputed_under_the_locks(linked_incident_db, engine_for, target_env):
    """Execute reads the selection once, under the locks, into temp tables: the recomputed plan's figures and
    the apply both come from them. A grant the app writes after that recompute (a new row: row locks cannot keep
    it out) is not half-included: the rows applied are the rows approved, the invariants hold, and the late grant
    is left for the next review."""
    from runbook_lib import db
    from runbook_lib.procedures import token_reversal as tr

    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    review = Run("token-reversal", WINDOW).review()
    run = Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": review.plan_id})
    uid = review.frames["balances"]["userId"].iloc[0]
    with db.write_transaction(run.engine, lock_timeout_ms=5000, statement_timeout_ms=60000) as conn:
        names = run._resolve(conn)
        tr.lock(conn, run.params, names)
        plan = tr.plan(conn, run.params, names, detail=False)
        assert plan.plan_id == review.plan_id and plan.details["reversal"].materialized
        with eng.begin() as app:  # the app grants once more, inside the window, while the execute runs
            app.execute(sa.text(
                'insert into "TokenTransaction" (id, "userId", amount, type, source, "createdAt") '
                "values ('late_grant', :u, 7, 'CREDIT', 'voucher_redemption', '2025-12-02T12:00:00')"), {"u": uid})
        result = tr.apply(conn, run.params, names, plan)
        tr.check(conn, run.params, names, plan, result)
    assert result.counts["rows_reversed"] == review.summary["ledger rows to reverse"]
    assert result.counts["tokens_reversed"] == review.summary["tokens to reverse"]
    with eng.connect() as c:
        assert c.exec_driver_sql(
            """select count(*) from "TokenTransaction" where "reversalOfId" = 'late_grant'""").scalar() == 0
    again = Run("token-reversal", WINDOW).review()
    assert again.summary["ledger rows to reverse"] == 1  # the late grant, for the next approval


def test_verify_compares_committed_balances_with_the_plans_after_figures(linked_incident_db, engine_for, target_env):
    """The after-figures check runs after every execute, fails on a balance that differs from the plan, and counts
    (does not fail) a user whose balance the application moved on since with a ledger row of its own."""
    target_env(linked_incident_db)
    eng = engine_for(linked_incident_db)
    plan, result, ex = review_then_execute()
    name = "balances equal the plan's after-figures"
    check = next(c for c in ex.verify().checks if c.name == name)
    assert check.passed and check.detail.startswith(f"{result.counts['users_affected']} reversed users")
    expected = ex.plan.details["after_expected"]
    assert expected["user_ids"].count == result.counts["users_affected"]
    with eng.begin() as c:
        tampered, active = c.execute(sa.text("select unnest(cast(:a as text[])) limit 2"),
                                     {"a": expected["user_ids"].literal}).scalars().all()
        # one balance changed behind the ledger's back; another moved on by the application's own activity
        c.execute(sa.text('update "UserTokenBalance" set balance = balance + 7 where "userId" = :u'), {"u": tampered})
        c.execute(sa.text('update "UserTokenBalance" set balance = balance - 3 where "userId" = :u'), {"u": active})
        c.execute(sa.text('insert into "TokenTransaction"(id, "userId", amount, type, source, "createdAt") '
                          "values ('app_spend', :u, -3, 'DEBIT', 'spend', now() at time zone 'utc')"), {"u": active})
    verification = ex.verify()
    check = next(c for c in verification.checks if c.name == name)
    assert not check.passed and check.count == 1
    assert f"differing: {tampered}" in check.detail and "1 moved on since" in check.detail
    assert check in verification.failed
    with pytest.raises(VerificationFailed):
        ex.finish()
