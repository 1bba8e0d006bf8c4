"""Online mode (``execution=online``): a token reversal in batches of users, each its own transaction.

Against the real application's shape (``incident_db``): the same end state as one transaction, whole batches only
after a failure, a resume with the same approval that finishes exactly the rest, refusals before anything changes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from runbook_lib import faults, run_state
from runbook_lib.errors import ApprovalError, ConcurrentRunError, ParameterError, PolicyAbort
from runbook_lib.faults import InjectedFault
from runbook_lib.run import Run

SINCE = "2025-12-01T00:00:00Z"
ONLINE = {"since": SINCE, "execution": "online", "batch_users": 7, "batch_pause": "0"}


def balances(eng: sa.engine.Engine) -> pd.Series:
    with eng.connect() as c:
        return pd.read_sql('select "userId", balance from user_token_balances order by 1', c).set_index("userId")["balance"]


def ledger_count(eng: sa.engine.Engine) -> int:
    with eng.connect() as c:
        return int(c.exec_driver_sql("select count(*) from token_transactions").scalar_one())


def expected_after(eng: sa.engine.Engine) -> pd.Series:
    """Independent expectation: every in-window voucher grant reversed, by per-user totals."""
    with eng.connect() as c:
        led = pd.read_sql("select \"userId\", amount, source, \"createdAt\" from token_transactions", c)
    sel = led[(led["source"] == "voucher_redemption") & (pd.to_datetime(led["createdAt"]) >= "2025-12-01")]
    after = balances(eng).copy()
    for uid, total in sel.groupby("userId")["amount"].sum().items():
        if uid in after.index:
            after[uid] -= total
    return after


def review(params: dict, evidence: Path | None = None):
    return Run("token-reversal", {**params, **({"evidence_dir": str(evidence)} if evidence else {})}).review()


def execute(params: dict, plan_id: str, evidence: Path | None = None) -> Run:
    run = Run("token-reversal", {**params, "mode": "execute", "approved_plan": plan_id,
                                 **({"evidence_dir": str(evidence)} if evidence else {})})
    run.execute()
    return run


def test_online_ends_where_one_transaction_ends(incident_db, engine_for, target_env):
    target_env(incident_db)
    eng = engine_for(incident_db)
    expected = expected_after(eng)
    single = review({"since": SINCE})
    plan = review(ONLINE)
    users = plan.summary["users affected"]
    assert single.summary["execution"].startswith("single transaction")
    assert plan.batches is not None and len(plan.batches) == math.ceil(users / 7)
    assert plan.summary["execution"].startswith(f"online: {len(plan.batches)} batches")
    assert plan.plan_id != single.plan_id  # the approval covers the batches
    assert sum(b.rows for b in plan.batches) == plan.summary["ledger rows to reverse"]
    run = execute(ONLINE, plan.plan_id)
    assert run.result is not None and run.result.counts["batches_committed"] == len(plan.batches)
    assert run.result.counts["rows_reversed"] == plan.summary["ledger rows to reverse"]
    assert [r["status"] for r in run.state["batches"]] == ["committed"] * len(plan.batches)
    pd.testing.assert_series_equal(balances(eng), expected, check_names=False)
    result = run.verify()
    assert result.passed, result.table()
    assert "balances equal the plan's after-figures" in set(result.table()["name"])
    # a second execute of the same approval changes nothing
    n = ledger_count(eng)
    again = execute(ONLINE, plan.plan_id)
    assert again.result is not None and not again.result.changed and ledger_count(eng) == n


def test_a_batch_reads_the_balance_rows_of_its_own_user_range(incident_db, engine_for, target_env):
    """Every statement of a batch that reads the balance table (the lock, the decisions, the update, the checks) is
    narrowed to the batch's user id range (``reversal_sql.balance_range``), the range bound as the batch's first and
    last user: one index range per batch, not the whole balance table once per batch."""
    target_env(incident_db)
    plan = review(ONLINE)
    assert plan.batches is not None and len(plan.batches) > 1
    seen: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "user_token_balances" in statement and isinstance(parameters, dict) and "rb_ufirst" in parameters:
            seen.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        execute(ONLINE, plan.plan_id)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
    per_range: dict[tuple[str, str], list[str]] = {}
    for statement, p in seen:
        per_range.setdefault((p["rb_ufirst"], p["rb_ulast"]), []).append(statement.split()[0].lower())
    assert set(per_range) == {(b.first, b.last) for b in plan.batches}
    for kinds in per_range.values():  # the lock, the decisions (create temp table), the update, the balance check
        assert kinds.count("update") == 1 and kinds.count("create") == 1 and kinds.count("select") >= 2, kinds


def test_a_failure_between_batches_leaves_whole_batches_and_a_rerun_finishes(incident_db, engine_for, target_env,
                                                                             tmp_path, monkeypatch):
    target_env(incident_db)
    eng = engine_for(incident_db)
    expected = expected_after(eng)
    incident = tmp_path / "INC-1"
    plan = review(ONLINE, incident / "review")
    assert plan.batches is not None and len(plan.batches) >= 4
    monkeypatch.setenv("RUNBOOK_FAULT", "between_batches@2:raise")
    monkeypatch.setattr(faults, "_REACHED", {})
    with pytest.raises(InjectedFault):
        execute(ONLINE, plan.plan_id, incident / "execute-1")
    state = run_state.read(incident / "execute-1")
    assert [r["status"] for r in state["batches"][:3]] == ["committed", "committed", "pending"]
    assert state["committed"] is True
    done = {b.number for b in plan.batches[:2]}
    now = balances(eng)
    in_done = [u for u in now.index if any(b.first <= u <= b.last for b in plan.batches if b.number in done)]
    assert (now[in_done] == expected[in_done]).all()  # the two committed batches: fully reversed
    rest = [u for u in now.index if u not in in_done]
    assert not (now[rest] == expected[rest]).all()  # the others: untouched yet
    monkeypatch.delenv("RUNBOOK_FAULT")
    # the same approval finishes exactly the remaining batches
    run = execute(ONLINE, plan.plan_id, incident / "execute-2")
    statuses = [r["status"] for r in run.state["batches"]]
    assert statuses == ["finished earlier"] * 2 + ["committed"] * (len(plan.batches) - 2)
    pd.testing.assert_series_equal(balances(eng), expected, check_names=False)
    assert run.verify().passed


def test_a_resume_without_the_review_evidence_asks_for_a_new_review(incident_db, target_env, monkeypatch):
    target_env(incident_db)
    plan = review(ONLINE)
    monkeypatch.setenv("RUNBOOK_FAULT", "between_batches@1:raise")
    monkeypatch.setattr(faults, "_REACHED", {})
    with pytest.raises(InjectedFault):
        execute(ONLINE, plan.plan_id)
    monkeypatch.delenv("RUNBOOK_FAULT")
    with pytest.raises(ApprovalError, match="review again"):
        execute(ONLINE, plan.plan_id)
    again = review(ONLINE)  # the new plan covers what is left
    run = execute(ONLINE, again.plan_id)
    assert run.verify().passed


def test_the_application_keeps_writing_between_review_and_batches(incident_db, engine_for, target_env, tmp_path):
    """Online mode approves rows and decisions, not exact balances: a spend of an affected user after the review
    goes through, and that user's balance ends at (balance at its batch) - reversed total."""
    target_env(incident_db)
    eng = engine_for(incident_db)
    plan = review(ONLINE, tmp_path / "INC" / "review")
    assert plan.batches is not None
    expected = expected_after(eng)
    spender = plan.batches[2].first
    with eng.begin() as c:  # the application: a spend of 1 token (balance and a ledger row outside the window)
        after = c.execute(sa.text('update user_token_balances set balance = balance - 1 where "userId" = :u '
                                  "returning balance"), {"u": spender}).scalar_one()
        c.execute(sa.text(
            'insert into token_transactions (id, "userId", amount, type, source, "balanceAfter", "createdAt") '
            "values ('app_spend', :u, -1, 'SPEND_APP_MESSAGE', null, :b, now() at time zone 'utc')"),
            {"u": spender, "b": after})
    expected[spender] -= 1
    run = execute(ONLINE, plan.plan_id, tmp_path / "INC" / "execute")
    pd.testing.assert_series_equal(balances(eng), expected, check_names=False)
    assert run.verify().passed


def test_a_changed_decision_refuses_before_any_batch_commits(incident_db, engine_for, target_env, tmp_path):
    target_env(incident_db)
    eng = engine_for(incident_db)
    plan = review(ONLINE, tmp_path / "INC" / "review")
    assert plan.batches is not None
    moved = plan.batches[2].first
    with eng.begin() as c:  # the user spent nearly everything: the reversal would now take them below zero
        c.execute(sa.text('update user_token_balances set balance = -1 where "userId" = :u'), {"u": moved})
    n, bal = ledger_count(eng), balances(eng)
    with pytest.raises(ApprovalError, match=r"batches 3\)"):
        execute(ONLINE, plan.plan_id, tmp_path / "INC" / "execute")
    assert ledger_count(eng) == n and balances(eng).equals(bal)


def test_work_outside_the_approved_batches_refuses(incident_db, engine_for, target_env, tmp_path):
    target_env(incident_db)
    eng = engine_for(incident_db)
    plan = review(ONLINE, tmp_path / "INC" / "review")
    assert plan.batches is not None
    with eng.connect() as c:  # a user with a balance and no grant in the window, outside every batch range
        ids = [r[0] for r in c.exec_driver_sql('select "userId" from user_token_balances order by 1')]
    outside = [u for u in ids if not any(b.first <= u <= b.last for b in plan.batches)]
    if not outside:
        pytest.skip("every user with a balance falls inside a batch range")
    with eng.begin() as c:
        c.execute(sa.text(
            'insert into token_transactions (id, "userId", amount, type, source, "sourceId", "balanceAfter", '
            '"createdAt") values (\'late_grant\', :u, 5, \'EARN_BONUS\', \'voucher_redemption\', null, 0, '
            "'2025-12-02')"), {"u": outside[0]})
    n = ledger_count(eng)
    with pytest.raises(ApprovalError, match="outside the batches"):
        execute(ONLINE, plan.plan_id, tmp_path / "INC" / "execute")
    assert ledger_count(eng) == n


def test_abort_policy_refuses_before_any_batch(incident_db, engine_for, target_env):
    target_env(incident_db)
    eng = engine_for(incident_db)
    params = {**ONLINE, "negative_policy": "abort"}
    plan = review(params)
    if not plan.summary["users going negative (before policy)"]:
        pytest.skip("the seeded incident has no user going below zero")
    n = ledger_count(eng)
    with pytest.raises(PolicyAbort, match="nothing was changed"):
        execute(params, plan.plan_id)
    assert ledger_count(eng) == n


def test_online_needs_compensate_mode(incident_db, target_env):
    target_env(incident_db)
    with pytest.raises(ParameterError, match="ledger_mode=compensate"):
        Run("token-reversal", {**ONLINE, "ledger_mode": "delete"})
    with pytest.raises(ParameterError, match="batch_users"):
        Run("token-reversal", {**ONLINE, "batch_users": 0})


def test_a_second_operator_is_kept_out_for_the_whole_online_run(incident_db, engine_for, target_env):
    target_env(incident_db)
    eng = engine_for(incident_db)
    plan = review(ONLINE)
    with eng.connect() as other:
        other.execute(sa.text("select pg_advisory_lock(hashtextextended('runbook:token-reversal', 0))"))
        with pytest.raises(ConcurrentRunError):
            execute(ONLINE, plan.plan_id)
        other.execute(sa.text("select pg_advisory_unlock(hashtextextended('runbook:token-reversal', 0))"))


def test_through_the_cli_a_failed_online_run_is_finished_by_a_second_with_the_same_approval(
        incident_db, engine_for, target_env, tmp_path, monkeypatch):
    """The operator's path: papermill notebooks, evidence, the manifest lists every batch; exit codes."""
    import json

    from runbook_lib.runner import run_procedure

    target_env(incident_db)
    eng = engine_for(incident_db)
    expected = expected_after(eng)
    params = {**ONLINE, "batch_users": 25}
    review_run = run_procedure("token-reversal", params, incident="INC-9", evidence_root=tmp_path, progress_bar=False)
    assert review_run.exit_code == 0, review_run.error
    assert review_run.summary["execution"].startswith("online: ")
    n_batches = len(review_run.manifest["batches"])
    assert n_batches >= 3
    monkeypatch.setenv("RUNBOOK_FAULT", "between_batches@2:raise")  # the kernel inherits it
    failed = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review_run.plan_id},
                           incident="INC-9", evidence_root=tmp_path, progress_bar=False)
    assert failed.exit_code != 0 and failed.manifest["committed"] is True
    assert [b["status"] for b in failed.manifest["batches"][:3]] == ["committed", "committed", "pending"]
    monkeypatch.delenv("RUNBOOK_FAULT")
    done = run_procedure("token-reversal", {**params, "mode": "execute", "approved_plan": review_run.plan_id},
                         incident="INC-9", evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    statuses = [b["status"] for b in done.manifest["batches"]]
    assert statuses == ["finished earlier"] * 2 + ["committed"] * (n_batches - 2)
    assert done.manifest["verification_passed"] is True
    pd.testing.assert_series_equal(balances(eng), expected, check_names=False)
    executed = json.loads((done.run_dir / "token_reversal.ipynb").read_text())
    assert "finished earlier" in json.dumps(executed["cells"])  # the batches table is in the evidence notebook


def test_an_execute_with_other_options_than_the_review_matches_no_batch(incident_db, engine_for, target_env,
                                                                        tmp_path):
    """The review's batches approve its options too: clamp instead of the reviewed allow is refused."""
    target_env(incident_db)
    eng = engine_for(incident_db)
    plan = review(ONLINE, tmp_path / "INC" / "review")
    n = ledger_count(eng)
    with pytest.raises(ApprovalError, match="changed since"):
        execute({**ONLINE, "negative_policy": "clamp"}, plan.plan_id, tmp_path / "INC" / "execute")
    assert ledger_count(eng) == n
