"""Partial rollback against real PostgreSQL: counters, statuses, balances and ledger checked independently."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import sqlalchemy as sa

from runbook_lib.errors import InvariantError, NotFoundError, ParameterError, PolicyAbort
from runbook_lib.run import Run

NO_BACKUP = "test database cloned from a template: no backup needed"

# (code, status, maxUses, tokenAmount, expiresAt, [(user, redeemedAt)])
VOUCHERS = [
    ("WELCOME", "ACTIVE", None, 100, None,
     [("u1", "2025-11-20 10:00"), ("u2", "2025-12-01 09:00"), ("u3", "2025-12-02 12:00")]),
    ("LIMITED", "DEPLETED", 2, 50, None, [("u1", "2025-12-01 10:00"), ("u4", "2025-12-02 11:00")]),
    ("OFF", "DISABLED", 5, 30, None, [("u2", "2025-12-01 15:00")]),
    ("OLD", "EXPIRED", None, 20, "2025-12-05 00:00", [("u5", "2025-12-01 08:00")]),
    ("GONE", "DEPLETED", 1, 10, "2025-12-04 00:00", [("u6", "2025-12-02 08:00")]),
    ("UNUSED", "ACTIVE", 10, 5, None, []),
]
USERS = ["u1", "u2", "u3", "u4", "u5", "u6", "u7"]
SPENT = {"u1": 140, "u3": 20}  # u1 spent more than its purchase: reversing leaves it negative


def seed_small(eng: sa.engine.Engine) -> None:
    """A small voucher incident on the linked schema: grants written as the app does (sourceId = the voucher's id,
    for the redeeming user), balances = ledger sums."""
    with eng.begin() as c:
        for u in USERS:
            c.execute(sa.text('insert into "User"(id, email) values (:u, :e)'), {"u": u, "e": f"{u}@example.test"})
            c.execute(sa.text('insert into "TokenTransaction"(id, "userId", amount, type, source, "createdAt") '
                              "values (:id, :u, 100, 'CREDIT', 'purchase', '2025-11-01')"), {"id": f"buy_{u}", "u": u})
        for code, status, max_uses, amount, expires, reds in VOUCHERS:
            vid = f"v_{code}"
            c.execute(sa.text(
                'insert into "Voucher"(id, code, status, "tokenAmount", "maxUses", "currentUses", "expiresAt", '
                '"updatedAt") values (:id, :code, cast(:st as "VoucherStatus"), :amt, :mx, :n, :exp, now())'),
                {"id": vid, "code": code, "st": status, "amt": amount, "mx": max_uses, "n": len(reds), "exp": expires})
            for user, ts in reds:
                rid = f"r_{code}_{user}"
                c.execute(sa.text('insert into "VoucherRedemption"(id, "voucherId", "userId", "redeemedAt") '
                                  "values (:id, :v, :u, :ts)"), {"id": rid, "v": vid, "u": user, "ts": ts})
                c.execute(sa.text(
                    'insert into "TokenTransaction"(id, "userId", amount, type, source, "sourceId", "createdAt") '
                    "values (:id, :u, :amt, 'CREDIT', 'voucher_redemption', :vid, :ts)"),
                    {"id": f"g_{code}_{user}", "u": user, "amt": amount, "vid": vid, "ts": ts})
        for u, amt in SPENT.items():
            c.execute(sa.text('insert into "TokenTransaction"(id, "userId", amount, type, source, "createdAt") '
                              "values (:id, :u, :a, 'DEBIT', 'spend', '2025-12-03')"), {"id": f"spend_{u}", "u": u,
                                                                                     "a": -amt})
        c.execute(sa.text('insert into "UserTokenBalance"(id, "userId", balance, "updatedAt") '
                          'select \'b_\' || "userId", "userId", sum(amount), now() from "TokenTransaction" group by 2'))


@pytest.fixture
def small_db(linked_schema_db, engine_for, target_env):
    seed_small(engine_for(linked_schema_db))
    target_env(linked_schema_db)
    return linked_schema_db


def state(eng: sa.engine.Engine) -> dict[str, pd.DataFrame]:
    with eng.connect() as c:
        return {
            "v": pd.read_sql('select code, status::text as status, "currentUses" from "Voucher" order by code',
                             c).set_index("code"),
            "r": pd.read_sql('select id, "voucherId", "userId" from "VoucherRedemption" order by id', c),
            "b": pd.read_sql('select "userId", balance from "UserTokenBalance" order by 1', c).set_index("userId"),
            "l": pd.read_sql('select * from "TokenTransaction" order by id', c),
        }


def review_then_execute(**params):
    plan = Run("partial-rollback", params).review()
    run = Run("partial-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id})
    return plan, run.execute(), run


def test_all_vouchers_matches_independent_expectation(small_db, engine_for):
    eng = engine_for(small_db)
    before = state(eng)
    plan, result, run = review_then_execute(all_vouchers=True)
    assert result is not None and result.changed
    after = state(eng)
    assert after["r"].empty
    assert (after["v"]["currentUses"] == 0).all()
    # status changes only where the rollback is the reason
    assert after["v"].loc["LIMITED", "status"] == "ACTIVE"  # depleted, below its limit again
    assert after["v"].loc["GONE", "status"] == "EXPIRED"  # depleted but its date has passed
    assert after["v"].loc["OFF", "status"] == "DISABLED"  # an admin's decision is kept
    assert after["v"].loc["OLD", "status"] == "EXPIRED"
    assert after["v"].loc["WELCOME", "status"] == "ACTIVE"
    # every balance moved by the user's total voucher grants (u1 had two grants: both reversed)
    led = before["l"]
    grants = led[led["source"] == "voucher_redemption"].groupby("userId")["amount"].sum()
    expected = before["b"]["balance"].sub(grants, fill_value=0)
    pd.testing.assert_series_equal(after["b"]["balance"], expected.astype(after["b"]["balance"].dtype),
                                   check_names=False)
    assert after["b"].loc["u1", "balance"] < 0  # spent tokens: flagged, not hidden
    # the ledger still sums to every balance; originals kept, each with exactly one reversal
    sums = after["l"].groupby("userId")["amount"].sum()
    assert (sums.reindex(after["b"].index) == after["b"]["balance"]).all()
    rev = after["l"][after["l"]["reversalOfId"].notna()]
    assert sorted(rev["reversalOfId"]) == sorted(led[led["source"] == "voucher_redemption"]["id"])
    assert plan.summary["redemptions to clear"] == 8 and plan.summary["ledger rows to reverse"] == 8
    assert run.verify().passed


def test_chosen_codes_and_window(small_db, engine_for):
    eng = engine_for(small_db)
    before = state(eng)
    plan, result, run = review_then_execute(voucher_codes=["WELCOME", "LIMITED"],
                                            redeemed_since="2025-12-01T00:00:00Z",
                                            redeemed_until="2025-12-02T00:00:00+00:00")
    after = state(eng)
    # in scope: WELCOME/u2 (Dec 1) and LIMITED/u1 (Dec 1); WELCOME/u1 (Nov) and u3, LIMITED/u4 (Dec 2) stay
    assert set(before["r"]["id"]) - set(after["r"]["id"]) == {"r_WELCOME_u2", "r_LIMITED_u1"}
    assert after["v"].loc["WELCOME", "currentUses"] == 2
    assert after["v"].loc["LIMITED", "currentUses"] == 1 and after["v"].loc["LIMITED", "status"] == "ACTIVE"
    assert after["v"].loc["OFF", "currentUses"] == 1  # out of scope: untouched
    assert after["b"].loc["u2", "balance"] == before["b"].loc["u2", "balance"] - 100
    assert after["b"].loc["u1", "balance"] == before["b"].loc["u1", "balance"] - 50
    assert after["b"].loc["u3", "balance"] == before["b"].loc["u3", "balance"]
    frame = plan.frames["vouchers"].set_index("code")
    assert frame.loc["LIMITED", "status_before"] == "DEPLETED" and frame.loc["LIMITED", "status_after"] == "ACTIVE"
    assert frame.loc["WELCOME", "uses_before"] == 3 and frame.loc["WELCOME", "uses_after"] == 2
    assert run.verify().passed


def test_reset_statuses_named_by_operator(small_db, engine_for):
    eng = engine_for(small_db)
    plan, _, _ = review_then_execute(voucher_codes=["OFF", "OLD"], reset_statuses=["DISABLED", "EXPIRED"])
    after = state(eng)
    assert after["v"].loc["OFF", "status"] == "ACTIVE" and after["v"].loc["OLD", "status"] == "ACTIVE"
    assert plan.summary["vouchers whose status changes"] == 2


def test_disabled_kept_and_warned(small_db):
    plan = Run("partial-rollback", {"voucher_codes": ["OFF"]}).review()
    assert any("keep their status" in w for w in plan.warnings)
    frame = plan.frames["vouchers"].set_index("code")
    assert frame.loc["OFF", "status_after"] == "DISABLED" and frame.loc["OFF", "uses_after"] == 0


def test_delete_mode_and_clamp(small_db, engine_for):
    eng = engine_for(small_db)
    before = state(eng)
    review_then_execute(all_vouchers=True, ledger_mode="delete", negative_policy="clamp")
    after = state(eng)
    assert not (after["l"]["source"] == "voucher_redemption").any()
    assert (after["b"]["balance"] >= 0).all()
    assert after["b"].loc["u7", "balance"] == before["b"].loc["u7", "balance"]


def test_second_execute_changes_nothing(small_db, engine_for):
    eng = engine_for(small_db)
    plan, _, _ = review_then_execute(all_vouchers=True)
    once = state(eng)
    run = Run("partial-rollback", {"all_vouchers": True, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id})
    result = run.execute()
    assert result is not None and not result.changed
    twice = state(eng)
    for k in once:
        pd.testing.assert_frame_equal(once[k], twice[k])


def test_review_writes_nothing(small_db, engine_for):
    eng = engine_for(small_db)
    before = state(eng)
    plan = Run("partial-rollback", {"all_vouchers": True}).review()
    assert plan.summary["redemptions to clear"] == 8
    after = state(eng)
    for k in before:
        pd.testing.assert_frame_equal(before[k], after[k])


def test_bad_input(small_db, engine_for):
    eng = engine_for(small_db)
    before = state(eng)
    with pytest.raises(ParameterError, match="choose the scope"):
        Run("partial-rollback", {})
    with pytest.raises(ParameterError, match="no time zone"):
        Run("partial-rollback", {"all_vouchers": True, "redeemed_since": "2025-12-01T00:00:00"})
    with pytest.raises(NotFoundError, match="NOPE"):
        Run("partial-rollback", {"voucher_codes": ["WELCOME", "NOPE"]}).review()
    with pytest.raises(ParameterError, match="reset_statuses"):
        Run("partial-rollback", {"all_vouchers": True, "reset_statuses": ["ACTIV"]}).review()
    with pytest.raises(ParameterError):
        Run("partial-rollback", {"all_vouchers": True, "negative_policy": "skip"})
    plan = Run("partial-rollback", {"all_vouchers": True, "negative_policy": "abort"}).review()
    with pytest.raises(PolicyAbort, match="below zero"):
        Run("partial-rollback", {"all_vouchers": True, "negative_policy": "abort", "mode": "execute", "backup_override_reason": NO_BACKUP,
                                 "approved_plan": plan.plan_id}).execute()
    after = state(eng)
    for k in before:
        pd.testing.assert_frame_equal(before[k], after[k])


def test_invariant_failure_rolls_back(small_db, engine_for, monkeypatch):
    """A broken counter update is caught before COMMIT and nothing is changed."""
    from runbook_lib.procedures import partial_rollback as pr

    eng = engine_for(small_db)
    before = state(eng)
    plan = Run("partial-rollback", {"all_vouchers": True}).review()
    real_apply = pr.apply

    def bad_apply(conn, params, names, plan):
        result = real_apply(conn, params, names, plan)
        conn.execute(sa.text('update "Voucher" set "currentUses" = "currentUses" + 1 where code = \'WELCOME\''))
        return result

    # the procedure's steps are the functions its class declared (Steps): replace apply there
    monkeypatch.setattr(pr.PartialRollback, "steps", dataclasses.replace(pr.PartialRollback.steps, apply=bad_apply))
    with pytest.raises(InvariantError, match="counters"):
        Run("partial-rollback", {"all_vouchers": True, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id}).execute()
    after = state(eng)
    for k in before:
        pd.testing.assert_frame_equal(before[k], after[k])


def notebook_text(path) -> str:
    """All outputs of an executed notebook as text; fails on an error output."""
    import json

    import nbformat

    nb = nbformat.read(path, as_version=4)
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in outs)


@pytest.mark.notebook
def test_notebook_review_then_execute(small_db, engine_for, tmp_path):
    from runbook_lib.runner import run_procedure

    # through the runner (what `runbook run` calls): an execute from a notebook alone would leave no record
    ev, params = tmp_path / "ev", {"all_vouchers": True}
    review = run_procedure("partial-rollback", params, incident="NB", evidence_root=ev, progress_bar=False)
    assert review.exit_code == 0, review.error
    assert "runbook-user-inspector" in notebook_text(review.run_dir / "partial_rollback.ipynb")  # "Inspect one user"
    out = run_procedure("partial-rollback", {**params, "mode": "execute", "backup_override_reason": NO_BACKUP,
                                             "approved_plan": review.plan_id},
                        incident="NB", evidence_root=ev, progress_bar=False)
    assert out.exit_code == 0, out.error
    text = notebook_text(out.run_dir / "partial_rollback.ipynb")
    assert "redemptions_deleted" in text and "review mode: nothing was changed" not in text
    assert state(engine_for(small_db))["r"].empty


def add_voucher(eng: sa.engine.Engine, code: str, status: str, max_uses: int | None, uses: int,
                reds: list[tuple[str, str]], expires: str | None = None) -> None:
    """One more voucher with redemptions and their grants (balances moved by the grants)."""
    with eng.begin() as c:
        c.execute(sa.text(
            'insert into "Voucher"(id, code, status, "tokenAmount", "maxUses", "currentUses", "expiresAt", '
            '"updatedAt") values (:id, :code, cast(:st as "VoucherStatus"), 10, :mx, :n, :exp, now())'),
            {"id": f"v_{code}", "code": code, "st": status, "mx": max_uses, "n": uses, "exp": expires})
        for user, ts in reds:
            rid = f"r_{code}_{user}"
            c.execute(sa.text('insert into "VoucherRedemption"(id, "voucherId", "userId", "redeemedAt") '
                              "values (:id, :v, :u, :ts)"), {"id": rid, "v": f"v_{code}", "u": user, "ts": ts})
            c.execute(sa.text(
                'insert into "TokenTransaction"(id, "userId", amount, type, source, "sourceId", "createdAt") '
                "values (:id, :u, 10, 'CREDIT', 'voucher_redemption', :vid, :ts)"),
                {"id": f"g_{code}_{user}", "u": user, "vid": f"v_{code}", "ts": ts})
            c.execute(sa.text('update "UserTokenBalance" set balance = balance + 10 where "userId" = :u'), {"u": user})


def test_depleted_status_changes_only_when_the_rollback_brings_it_below_its_limit(small_db, engine_for):
    """DEPLETED becomes ACTIVE only where redemptions were removed and that brought it below its limit."""
    eng = engine_for(small_db)
    # over its limit: 3 redemptions, limit 1; one removed -> still over -> stays DEPLETED
    add_voucher(eng, "OVER", "DEPLETED", 1, 3, [("u1", "2025-12-01 10:00"), ("u2", "2025-11-20 10:00"),
                                                ("u3", "2025-11-21 10:00")])
    # DEPLETED with nothing in the window: its counter drifted (2 > 1 redemption), the counter is fixed but the
    # rollback removes nothing, so the status is not the rollback's to change
    add_voucher(eng, "DRIFT", "DEPLETED", 2, 2, [("u4", "2025-11-20 10:00")])
    # DEPLETED without a limit (an admin's decision): losing a redemption does not revive it
    add_voucher(eng, "NOLIMIT", "DEPLETED", None, 1, [("u5", "2025-12-01 10:00")])
    # DEPLETED although below its limit before the rollback (the limit was raised): not the rollback's reason
    add_voucher(eng, "RAISED", "DEPLETED", 10, 2, [("u6", "2025-12-01 10:00"), ("u7", "2025-11-20 10:00")])
    params = {"voucher_codes": ["OVER", "DRIFT", "NOLIMIT", "RAISED", "LIMITED"],
              "redeemed_since": "2025-12-01T00:00:00Z"}
    plan, result, run = review_then_execute(**params)
    after = state(eng)
    assert after["v"].loc["OVER", "currentUses"] == 2 and after["v"].loc["OVER", "status"] == "DEPLETED"
    assert after["v"].loc["DRIFT", "currentUses"] == 1 and after["v"].loc["DRIFT", "status"] == "DEPLETED"
    assert after["v"].loc["NOLIMIT", "currentUses"] == 0 and after["v"].loc["NOLIMIT", "status"] == "DEPLETED"
    assert after["v"].loc["RAISED", "currentUses"] == 1 and after["v"].loc["RAISED", "status"] == "DEPLETED"
    assert after["v"].loc["LIMITED", "currentUses"] == 0 and after["v"].loc["LIMITED", "status"] == "ACTIVE"
    assert plan.summary["vouchers whose status changes"] == 1
    assert any("stay DEPLETED" in w and "reset_statuses" in w for w in plan.warnings)
    # the shared check still reports the DEPLETED vouchers under their limit: they were so before (or lost
    # nothing here); the operator decides with reset_statuses
    failed = [c.name for c in run.verify().checks if not c.passed]
    assert failed == ["DEPLETED status agrees with the use limit"]
    plan2, _, _ = review_then_execute(voucher_codes=["DRIFT", "NOLIMIT", "RAISED"], reset_statuses=["DEPLETED"])
    after = state(eng)
    assert (after["v"].loc[["DRIFT", "NOLIMIT", "RAISED"], "status"] == "ACTIVE").all()


def test_expiry_compared_in_utc_whatever_the_session_time_zone(small_db, engine_for):
    """A timestamptz expiresAt two hours ahead is not expired, even when the session's TimeZone is UTC-5."""
    eng = engine_for(small_db)
    with eng.begin() as c:
        c.execute(sa.text('alter table "Voucher" alter column "expiresAt" type timestamptz(3) '
                          "using \"expiresAt\" at time zone 'UTC'"))
        c.execute(sa.text("select current_database()")).scalar_one()
        db = c.execute(sa.text("select current_database()")).scalar_one()
        c.execute(sa.text(f"alter database \"{db}\" set timezone = 'Etc/GMT+5'"))
    eng.dispose()
    with eng.begin() as c:
        assert c.execute(sa.text("show timezone")).scalar_one() == "Etc/GMT+5"
        c.execute(sa.text('update "Voucher" set "expiresAt" = now() + interval \'2 hours\' where code = \'LIMITED\''))
    plan, _, _ = review_then_execute(voucher_codes=["LIMITED"])
    after = state(eng)
    assert after["v"].loc["LIMITED", "status"] == "ACTIVE", plan.frames["vouchers"]


@pytest.mark.parametrize("mode", ["compensate", "delete"])
def test_grants_reversed_by_an_earlier_token_reversal_are_not_reversed_again(small_db, engine_for, mode):
    """token-reversal first (part of the grants), then partial-rollback of everything: each grant reversed once."""
    eng = engine_for(small_db)
    before = state(eng)
    tr_params = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-02T00:00:00Z", "ledger_mode": mode}
    tplan = Run("token-reversal", tr_params).review()
    Run("token-reversal", {**tr_params, "mode": "execute", "backup_override_reason": NO_BACKUP,
                           "approved_plan": tplan.plan_id}).execute()
    plan, _, run = review_then_execute(all_vouchers=True)
    after = state(eng)
    led = before["l"]
    grants = led[led["source"] == "voucher_redemption"].groupby("userId")["amount"].sum()
    expected = before["b"]["balance"].sub(grants, fill_value=0)
    pd.testing.assert_series_equal(after["b"]["balance"], expected.astype(after["b"]["balance"].dtype),
                                   check_names=False)
    sums = after["l"].groupby("userId")["amount"].sum()
    assert (sums.reindex(after["b"].index).fillna(0) == after["b"]["balance"]).all()
    if mode == "compensate":
        assert after["l"]["reversalOfId"].dropna().is_unique
        assert plan.summary["grants already reversed"] == tplan.summary["ledger rows to reverse"] > 0
    assert after["r"].empty and run.verify().passed
