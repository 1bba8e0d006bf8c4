"""The review's "Inspect one user" section against real PostgreSQL: its figures equal independent SQL."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa

from runbook_lib import db
from runbook_lib import display as show
from runbook_lib import inspect_user as iu
from runbook_lib.errors import ParameterError
from runbook_lib.run import Run

WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
#: the two fixtures' ledger and balance tables (the real application's @@map-ped names; the linked fixture's)
SHAPES = {
    "real": {"db": "incident_db", "ledger": "token_transactions", "bal": "user_token_balances",
             "reversed": "exists (select 1 from token_transactions r where r.source = 'voucher_reversal' "
                         "and r.\"sourceId\" = t.id)"},
    "linked": {"db": "linked_incident_db", "ledger": '"TokenTransaction"', "bal": '"UserTokenBalance"',
               "reversed": 'exists (select 1 from "TokenTransaction" r where r."reversalOfId" = t.id)'},
}


def independent(eng: sa.engine.Engine, shape: dict[str, str], user: str | None = None) -> dict[str, object]:
    """Plain SQL on the fixture's own tables: the user with the largest in-window voucher grants (or ``user``), their
    rows, tokens, balance, and how many of their ledger rows lie within 7 days of their first/last grant."""
    led, bal, rev = shape["ledger"], shape["bal"], shape["reversed"]
    grants = (f"select t.id, t.\"userId\", t.amount, t.\"createdAt\" from {led} t where t.source = 'voucher_redemption' "
              f"and t.\"createdAt\" >= '2025-12-01' and t.\"createdAt\" < '2025-12-03' and not {rev}")
    with eng.connect() as c:
        if user is None:
            user = c.execute(sa.text(f"select \"userId\" from ({grants}) g group by 1 order by sum(amount) desc, 1 "
                                     "limit 1")).scalar_one()
        n, total, first, last = c.execute(sa.text(
            f"select count(*), coalesce(sum(amount), 0), min(\"createdAt\"), max(\"createdAt\") from ({grants}) g "
            "where \"userId\" = :u"), {"u": user}).one()
        balance = c.execute(sa.text(f'select balance from {bal} where "userId" = :u'), {"u": user}).scalar()
        in_range = c.execute(sa.text(
            f"select count(*) from {led} where \"userId\" = :u and \"createdAt\" >= cast(:a as timestamp) - interval "
            "'7 days' and \"createdAt\" <= cast(:b as timestamp) + interval '7 days'"),
            {"u": user, "a": first, "b": last}).scalar() if n else None
    return {"user": user, "rows": int(n), "tokens": int(total), "balance": balance, "in_range": in_range}


@pytest.fixture(params=sorted(SHAPES))
def shaped(request, target_env, engine_for):
    """(url, engine, shape) for each fixture: the real application's shape and the linked one."""
    shape = SHAPES[request.param]
    url = request.getfixturevalue(shape["db"])
    target_env(url)
    return url, engine_for(url), shape


def test_default_user_is_the_largest_reversal_and_figures_equal_sql(shaped):
    _, eng, shape = shaped
    run = Run("token-reversal", WINDOW)
    plan = run.review()
    res = iu.for_run(run, plan)
    exp = independent(eng, shape)
    assert res.status == "affected" and res.user_id == exp["user"]
    assert (res.affected_rows, res.tokens_reversed) == (exp["rows"], exp["tokens"])
    assert res.balance_before == exp["balance"]
    assert res.balance_after == exp["balance"] - exp["tokens"]  # negative_policy allow
    assert res.affected_rows_shown == exp["rows"] == int(res.rows["affected"].sum())
    assert res.rows_in_range == exp["in_range"] == len(res.rows)
    assert set(res.rows.loc[res.rows["affected"], "plan"]) == {"reversed"}
    assert (res.rows.loc[~res.rows["affected"], "plan"] == "").all()
    assert list(res.rows["createdAt"]) == sorted(res.rows["createdAt"])
    # the running balance without the reversed rows ends where the plan's after-figure says, when the shown range
    # reaches the user's last ledger row
    with eng.connect() as c:
        last = c.execute(sa.text(f'select max("createdAt") from {shape["ledger"]} where "userId" = :u'),
                         {"u": exp["user"]}).scalar()
    if last <= res.range_end:
        assert int(res.rows["balance_after_plan"].iloc[-1]) == res.balance_after
    # the same figures as the review's per-user table
    top = plan.frames["balances"].iloc[0]
    assert (top["userId"], int(top["reversed"]), int(top["balance_after"])) == (
        res.user_id, res.tokens_reversed, res.balance_after)
    # without a picker (a CLI run, a test) the affected users are not listed and the default user comes from that
    # table; with one they are listed, largest first, and the default user is the same
    assert res.users.empty and res.users_total == 0
    listed = iu.for_run(run, plan, picker=True)
    assert listed.user_id == res.user_id and listed.users.iloc[0]["user_id"] == res.user_id
    assert listed.users_total == plan.summary["users affected"]


def test_clamp_and_skip_say_what_the_policy_does(incident_db, target_env, engine_for):
    target_env(incident_db)
    eng = engine_for(incident_db)
    with eng.connect() as c:  # a user whose balance the reversal would push below zero
        user, before, total = c.execute(sa.text(
            "select t.\"userId\", b.balance, sum(t.amount) from token_transactions t join user_token_balances b "
            "on b.\"userId\" = t.\"userId\" where t.source = 'voucher_redemption' and t.\"createdAt\" >= '2025-12-01' "
            "and t.\"createdAt\" < '2025-12-03' group by 1, 2 having b.balance - sum(t.amount) < 0 order by 1 limit 1"
        )).one()
    run = Run("token-reversal", {**WINDOW, "negative_policy": "clamp", "inspect_user": user})
    res = iu.for_run(run, run.review(), run.params.inspect_user)
    assert res.user_id == user and res.balance_before == before
    assert res.balance_after == max(before - total, min(before, 0)) and "clamped" in res.decision
    assert res.clamp_shortfall == res.balance_after - (before - total)
    run = Run("token-reversal", {**WINDOW, "negative_policy": "skip"})
    res = iu.for_run(run, run.review(), user)
    assert res.decision == "skipped (would go negative)" and res.balance_after == before
    assert set(res.rows.loc[res.rows["affected"], "plan"]) == {"skipped (would go negative)"}
    assert (res.rows["balance_after_plan"] == res.rows["balanceAfter"]).all()  # a skipped user's ledger stays


def test_a_user_the_plan_does_not_touch_is_shown_as_such(incident_db, target_env, engine_for):
    target_env(incident_db)
    eng = engine_for(incident_db)
    with eng.connect() as c:
        user, balance = c.execute(sa.text(
            "select b.\"userId\", b.balance from user_token_balances b where not exists (select 1 from "
            "token_transactions t where t.\"userId\" = b.\"userId\" and t.source = 'voucher_redemption' and "
            "t.\"createdAt\" >= '2025-12-01' and t.\"createdAt\" < '2025-12-03') "
            "and exists (select 1 from token_transactions t where t.\"userId\" = b.\"userId\" and t.\"createdAt\" "
            "between '2025-11-24' and '2025-12-10') order by 1 limit 1")).one()
        in_range = c.execute(sa.text(
            "select count(*) from token_transactions where \"userId\" = :u and \"createdAt\" >= '2025-11-24' "
            "and \"createdAt\" <= '2025-12-10'"), {"u": user}).scalar()
    run = Run("token-reversal", {**WINDOW, "inspect_user": user})
    res = iu.for_run(run, run.review(), user, picker=True)
    assert res.status == "not_affected" and "not affected by this plan" in res.note
    assert res.balance_before == res.balance_after == balance and res.affected_rows == 0
    assert res.rows_in_range == in_range == len(res.rows) > 0 and not res.rows["affected"].any()
    assert res.users_total > 0  # the picker still lists the affected users


def test_a_user_that_does_not_exist_is_a_one_line_note(incident_db, target_env, monkeypatch):
    target_env(incident_db)
    shown: list[object] = []
    monkeypatch.setattr(show, "_display", shown.append)
    run = Run("token-reversal", {**WINDOW, "inspect_user": "no_such_user"})
    plan = run.review()
    res = show.user_inspector(run, plan)  # a note in the section, never an error
    assert res.status == "unknown" and res.rows.empty and "\n" not in res.note
    assert "does not exist" in res.note and "no_such_user" in res.note
    (section,) = shown  # only the section's box: no table, no plot
    html = getattr(section, "data", section)
    assert "runbook-user-inspector" in html and "does not exist" in html


def test_rows_are_bounded_affected_rows_first(incident_db, target_env):
    target_env(incident_db)
    run = Run("token-reversal", WINDOW)
    plan = run.review()
    rp = plan.details["reversal"]
    with db.read_only(run.engine) as conn:
        full = iu.inspect(conn, run.names, rp, None, margin=dt.timedelta(days=400))
        small = iu.inspect(conn, run.names, rp, full.user_id, margin=dt.timedelta(days=400),
                           max_rows=full.affected_rows + 1, max_users=3)
    assert full.rows_in_range > full.affected_rows + 1  # the user has more history than the small table shows
    assert len(small.rows) == full.affected_rows + 1 and small.truncated and "showing" in small.note
    assert small.affected_rows_shown == full.affected_rows  # every affected row kept
    assert len(small.users) == 3 and small.users_total == full.users_total
    assert len(full.rows) <= iu.MAX_ROWS and len(full.users) <= iu.MAX_USERS


def test_partial_rollback_inspects_the_grants_it_reverses(incident_db, target_env, engine_for):
    target_env(incident_db)
    eng = engine_for(incident_db)
    run = Run("partial-rollback", {"voucher_codes": ["BLACKFRIDAY100"]})
    plan = run.review()
    res = show.user_inspector(run, plan)
    with eng.connect() as c:  # the grants of those redemptions, as the application links them
        user, n, total = c.execute(sa.text(
            "select t.\"userId\", count(*), sum(t.amount) from token_transactions t join voucher_redemptions r "
            "on r.\"voucherId\" = t.\"sourceId\" and r.\"userId\" = t.\"userId\" join vouchers v on v.id = r.\"voucherId\" "
            "where t.source = 'voucher_redemption' and v.code = 'BLACKFRIDAY100' group by 1 "
            "order by 3 desc, 1 limit 1")).one()
        balance = c.execute(sa.text('select balance from user_token_balances where "userId" = :u'),
                            {"u": user}).scalar()
    assert (res.user_id, res.affected_rows, res.tokens_reversed) == (user, n, total)
    assert (res.balance_before, res.balance_after) == (balance, balance - total)
    assert res.affected_rows_shown == n


def test_inspect_user_parameter_is_one_bounded_user_id():
    from runbook_lib import params as P
    from runbook_lib.procedures import full_rollback, partial_rollback, token_reversal

    assert P.validate(token_reversal.Params, {**WINDOW, "inspect_user": " user_0042 "}).inspect_user == "user_0042"
    assert P.validate(token_reversal.Params, {**WINDOW, "inspect_user": ""}).inspect_user is None
    for bad in ("x" * 201, ["a", "b"], "a\nb", True):
        with pytest.raises(ParameterError, match="inspect_user"):
            P.validate(token_reversal.Params, {**WINDOW, "inspect_user": bad})
    for mod in (partial_rollback, full_rollback):
        assert mod.Params.model_fields["inspect_user"].default is None


def test_widgets_only_in_an_interactive_kernel_without_evidence(incident_db, target_env, tmp_path):
    target_env(incident_db)
    assert not iu.widgets_wanted(Run("token-reversal", {**WINDOW, "evidence_dir": str(tmp_path / "ev")}))
    assert not iu.widgets_wanted(Run("token-reversal", WINDOW))  # no IPython kernel in pytest


def test_the_affected_user_dropdown_shows_the_chosen_users_section(incident_db, target_env, monkeypatch):
    """In JupyterLab: a Dropdown "Affected user" lists the affected users; choosing one renders their section."""
    import ipywidgets as widgets

    target_env(incident_db)
    shown: list[object] = []
    monkeypatch.setattr(show, "_display", shown.append)
    monkeypatch.setattr(iu, "widgets_wanted", lambda run: True)
    monkeypatch.setattr(show, "show_table", lambda *a, **k: None)
    monkeypatch.setattr(show, "plot_user_timeline", lambda r: None)
    run = Run("token-reversal", WINDOW)
    plan = run.review()
    res = show.user_inspector(run, plan)
    box = shown[-1]
    assert isinstance(box, widgets.VBox)
    picker = next(w for w in box.children if isinstance(w, widgets.Dropdown))
    assert picker.description == "Affected user" and picker.value is None
    assert [v for _, v in picker.options] == list(res.users["user_id"])
    before = len(shown)
    picker.value = res.users.iloc[1]["user_id"]
    assert any("runbook-user-inspector" in getattr(o, "data", "") and res.users.iloc[1]["user_id"] in o.data
               for o in shown[before:])


@pytest.mark.notebook
def test_the_html_evidence_shows_the_parameters_user(incident_db, target_env, engine_for, tmp_path):
    """Through the CLI's runner (papermill + evidence): the section of ``inspect_user`` is in the HTML copy, with its
    table and plot; no widget (the archived HTML cannot run one)."""
    from runbook_lib.runner import run_procedure

    target_env(incident_db)
    exp = independent(engine_for(incident_db), SHAPES["real"])
    with engine_for(incident_db).connect() as c:  # another affected user than the default one
        user = c.execute(sa.text(
            "select \"userId\" from token_transactions where source = 'voucher_redemption' and \"createdAt\" >= "
            "'2025-12-01' and \"createdAt\" < '2025-12-03' and \"userId\" <> :u order by 1 limit 1"),
            {"u": exp["user"]}).scalar_one()
    out = run_procedure("token-reversal", {**WINDOW, "inspect_user": user}, incident="I", evidence_root=tmp_path,
                        progress_bar=False)
    assert out.exit_code == 0, out.error
    (page,) = [p for p in out.run_dir.glob("*.html")]
    text = page.read_text()
    assert "runbook-user-inspector" in text and re.search(f"data-user=[\"']{user}[\"']", text)
    assert f"Ledger of {user} around the window" in text and "widget-view" not in text


def test_full_rollback_inspects_its_reversal_or_says_it_has_none(incident_db, target_env, engine_for):
    target_env(incident_db)
    with engine_for(incident_db).connect() as c:  # every voucher grant is reversed, whatever its time
        user, n, total = c.execute(sa.text(
            "select \"userId\", count(*), sum(amount) from token_transactions where source = 'voucher_redemption' "
            "group by 1 order by 3 desc, 1 limit 1")).one()
    run = Run("full-rollback", {"ledger_policy": "reverse", "prisma_side": False})
    res = iu.for_run(run, run.review())
    assert (res.user_id, res.affected_rows, res.tokens_reversed, res.status) == (user, n, total, "affected")
    keep = Run("full-rollback", {"ledger_policy": "keep", "prisma_side": False})
    none = iu.for_run(keep, keep.review())
    assert none.status == "none" and none.user_id is None and "reverses no ledger rows" in none.note
    shown = iu.for_run(keep, keep.review(), user)  # a named user's ledger is still shown, nothing marked
    assert shown.status == "not_affected" and len(shown.rows) and not shown.rows["affected"].any()
