"""The shared checks scoped to some users (an execute's): they look at those users only, and say so."""

from __future__ import annotations

import sqlalchemy as sa

from runbook_lib import checks, db
from runbook_lib import names as nmod
from runbook_lib.run import Run

WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
BALANCE, RUNNING = "every balance equals its ledger sum", "balanceAfter is the running balance along each user's ledger"


def run_checks(url: str, users: checks.UserScope | None = None, only: list[str] | None = None):
    eng = db.make_engine(url)
    try:
        with db.read_only(eng) as conn:
            return checks.run_all(conn, nmod.resolve(conn), only=only, sample_rows=5, users=users)
    finally:
        eng.dispose()


def test_scoped_checks_say_so_and_the_others_stay_whole(linked_incident_db):
    whole = run_checks(linked_incident_db)
    scoped = run_checks(linked_incident_db, checks.UserScope.of_ids(["user_0001", "user_0002"]))
    assert whole.passed and scoped.passed, scoped.table()
    assert len(scoped.checks) == len(whole.checks) == len(checks.CHECKS)
    for spec, w, s in zip(checks.CHECKS, whole.checks, scoped.checks, strict=True):
        if spec.name in checks.SCOPED_CHECKS:
            assert s.name == f"{w.name} (the affected users only)"
            assert "scoped to the affected users (2 users" in s.detail and "not the whole ledger" in s.detail
            assert "the verify procedure checks every user" in s.detail
        else:
            assert (s.name, s.detail) == (w.name, w.detail)  # not scoped: the same check, the same words


def test_a_defect_is_found_inside_the_scope_and_only_there(linked_incident_db, engine_for):
    with engine_for(linked_incident_db).begin() as c:
        c.execute(sa.text('update "UserTokenBalance" set balance = balance + 7 where "userId" = \'user_0003\''))
        c.execute(sa.text('update "TokenTransaction" set "balanceAfter" = "balanceAfter" + 1 where id = '
                          '(select id from "TokenTransaction" where "userId" = \'user_0003\' order by "createdAt" '
                          'desc, id desc limit 1)'))
    only = list(checks.SCOPED_CHECKS)
    inside = run_checks(linked_incident_db, checks.UserScope.of_ids(["user_0003", "user_0004"], "two users"), only)
    balance, running = inside.checks
    assert balance.name == f"{BALANCE} (two users only)" and running.name == f"{RUNNING} (two users only)"
    assert not balance.passed and balance.count == 1 and "+7 tokens" in balance.detail
    assert "scoped to two users (2 users" in balance.detail
    assert not running.passed and running.count == 1 and set(inside.frames) == {"balance_vs_ledger", "running_balance"}
    assert list(inside.frames["balance_vs_ledger"]["user_id"]) == ["user_0003"]
    outside = run_checks(linked_incident_db, checks.UserScope.of_ids(["user_0004"]), only)
    assert outside.passed, outside.table()
    assert not run_checks(linked_incident_db, only=only).passed  # the whole ledger still sees it
    nobody = run_checks(linked_incident_db, checks.UserScope.of_ids([]), only)
    assert nobody.passed and "(0 users" in nobody.checks[0].detail


def test_a_scope_counts_its_own_users_defects_only(linked_incident_db, engine_for):
    """A scope is ``= any`` of its ids (one array, whatever its size): the users in it, their defects counted."""
    with engine_for(linked_incident_db).begin() as c:
        c.execute(sa.text('update "UserTokenBalance" set balance = balance - 4 where "userId" in (\'user_0003\', '
                          "'user_0005')"))
    only = list(checks.SCOPED_CHECKS)
    got = run_checks(linked_incident_db, checks.UserScope.of_ids(["user_0003", "user_0004"], "two users"), only)
    assert [c.count for c in got.checks] == [1, 0] and "-4 tokens" in got.checks[0].detail
    assert list(got.frames["balance_vs_ledger"]["user_id"]) == ["user_0003"]


def test_an_opening_balance_is_counted_in_a_scoped_check_too(linked_incident_db, engine_for):
    with engine_for(linked_incident_db).begin() as c:
        c.exec_driver_sql("delete from \"TokenTransaction\" where id in (select id from \"TokenTransaction\" "
                          "where \"userId\" = 'user_0003' order by \"createdAt\", id limit 2)")
    result = run_checks(linked_incident_db, checks.UserScope.of_ids(["user_0003"]), list(checks.SCOPED_CHECKS))
    assert result.passed, result.table()
    assert "1 users' ledgers start from an opening balance" in result.checks[0].detail


def test_written_by_an_execute_are_exactly_the_users_it_changed(incident_db, engine_for):
    plan = Run("token-reversal", WINDOW, url=incident_db).review()
    run = Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan.plan_id}, url=incident_db)
    result = run.execute()
    assert result is not None and result.changed
    with engine_for(incident_db).begin() as c:  # a later transaction's write is not the execute's
        c.exec_driver_sql("update user_token_balances set balance = balance where \"userId\" = "
                          "(select min(\"userId\") from user_token_balances)")
    scope = checks.UserScope.written_by(run.state["transaction_id"])
    eng = db.make_engine(incident_db)
    try:
        with db.read_only(eng) as conn:
            written = scope.resolve(conn, nmod.resolve(conn))
            assert run.plan is not None
            reversed_users = run.plan.details["after_expected"]["user_ids"]
            users, expected = (conn.execute(sa.text("select unnest(cast(:a as text[])) order by 1"),
                                            {"a": x.literal}).scalars().all() for x in (written, reversed_users))
    finally:
        eng.dispose()
    assert users == expected and written.count == reversed_users.count == len(users)
    assert len(users) == result.counts["users_affected"]
    verified = run_checks(incident_db, scope)
    assert verified.passed, verified.table()
    by_name = {c.name: c for c in verified.checks}
    assert f"{len(users):,} users" in by_name[f"{BALANCE} (the users this execute wrote only)"].detail
