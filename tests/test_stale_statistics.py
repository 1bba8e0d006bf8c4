"""Right after an execute the ledger's statistics know none of the reversing rows it wrote (until the next ANALYZE,
which autovacuum may not run for a long time: 666,666 new rows in a 10M-row ledger are under its threshold). The
queries that tell reversed rows from the others must not rest on those statistics: planned as a join against the
reversing rows, expected to be one row, a verification at 10M ledger rows ran as a nested loop over 666,666 × 666,666
rows. Every statement of a review and a verification run after an execute is explained on the same data: no join
has a scan for reversing rows below it (they are probed per row, in a subplan)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from runbook_lib.run import Run

WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
REVERSAL_SOURCE = "voucher_reversal"


def _joined_reversal_scans(node: dict[str, Any], under_join: bool = False) -> list[str]:
    """Scans that look for reversing rows as an input of a join (not inside a subplan or an init plan)."""
    found = []
    conds = " ".join(str(node.get(k, "")) for k in ("Filter", "Index Cond", "Recheck Cond"))
    if under_join and "Relation Name" in node and REVERSAL_SOURCE in conds:
        found.append(f"{node['Node Type']} on {node['Relation Name']}: {conds}")
    is_join = "Join Type" in node
    for child in node.get("Plans", []):
        inner = child.get("Parent Relationship") in ("SubPlan", "InitPlan")
        found += _joined_reversal_scans(child, False if inner else (under_join or is_join))
    return found


def test_reversed_rows_are_told_apart_without_a_join(incident_db, engine_for, target_env):
    target_env(incident_db)
    eng = engine_for(incident_db)
    with eng.begin() as c:  # statistics from before the run, kept (no autovacuum here): no reversing rows in them
        c.exec_driver_sql("alter table token_transactions set (autovacuum_enabled = false)")
        c.exec_driver_sql("analyze")
    plan = Run("token-reversal", WINDOW).review()
    Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan.plan_id,
                           "backup_override_reason": "test database: no backup needed"}).execute()
    with eng.connect() as c:
        reversing = c.execute(sa.text("select count(*) from token_transactions where source = :s"),
                              {"s": REVERSAL_SOURCE}).scalar_one()
        known = c.execute(sa.text(
            "select coalesce(:s = any(most_common_vals::text::text[]), false) from pg_stats "
            "where tablename = 'token_transactions' and attname = 'source'"), {"s": REVERSAL_SOURCE}).scalar()
    assert reversing > 0 and not known  # the situation under test: reversing rows the statistics do not know

    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().lower().startswith(("select", "with")):
            statements.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        again = Run("token-reversal", WINDOW)
        again.review()
        again.verify()
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    about_reversals = [s for s, _ in statements if "rb_rsource" in s]
    assert about_reversals  # the review and the verification did look for reversing rows
    with eng.connect() as c:
        for statement, parameters in statements:
            raw = c.exec_driver_sql("explain (format json) " + statement, parameters).scalar_one()
            tree = raw if isinstance(raw, list) else json.loads(raw)
            assert _joined_reversal_scans(tree[0]["Plan"]) == [], statement[:300]
