"""Verify (the guide's "verify no orphaned data remains", made concrete): named read-only checks.

The guide's Testing section says to verify that no orphaned data remains but gives no query. Here each
check is one aggregated statement with a pass/fail, a count and a bounded sample of offending rows
(:mod:`runbook_lib.checks`). ``runbook run verify`` exits 13 when a check fails. The same checks run at the
end of every execute of every other procedure, their results in that run's evidence.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypedDict

import sqlalchemy as sa
from pydantic import Field, field_validator
from sqlalchemy.engine import Connection

from .. import checks as checks_mod
from ..errors import SchemaMismatchError
from ..names import NameMap
from ..params import CommonParams, name_list
from . import register
from .base import Plan, Procedure, Steps, VerifyResult, plan_hash

NAME = "verify"


class Params(CommonParams):
    procedure: ClassVar[str] = NAME

    checks: list[str] = Field([], description="run only these checks (empty: all); docs/procedures/verify.md lists them")
    expect_full_rollback: bool = Field(False, description="the voucher system should be gone (after a full rollback): voucher tables still present fail")

    @field_validator("checks", mode="before")
    @classmethod
    def _names(cls, v: Any) -> list[str]:
        v = name_list(v, limit=len(checks_mod.NAMES))
        unknown = [x for x in v if x not in checks_mod.NAMES]
        if unknown:
            raise ValueError(f"unknown checks {unknown}; the checks are: {', '.join(checks_mod.NAMES)}")
        return v


#: the tables no procedure drops: without them nothing could be verified (a wrong db_schema or table_map)
ALWAYS_THERE = ("TokenTransaction", "UserTokenBalance")


class VerifyDetails(TypedDict):
    """What verify's plan keeps for its verify step: the checks already run in the review's snapshot."""

    result: VerifyResult  # ``checks.run_all``'s result, returned as is by :func:`verify`


def require_target(conn: Connection, names: NameMap) -> None:
    """Refuse to report "all checks passed" when the checks would all be skipped for want of their tables."""
    if conn.execute(sa.text("select to_regnamespace(:s)"), {"s": names.db_schema}).scalar() is None:
        raise SchemaMismatchError(f"schema {names.db_schema!r} does not exist in the target database: check db_schema")
    missing = [f"{names.t(m)} (model {m})" for m in ALWAYS_THERE
               if conn.execute(sa.text("select to_regclass(:t)"), {"t": names.t(m)}).scalar() is None]
    if missing:
        raise SchemaMismatchError("missing in the target database, nothing could be verified: " + ", ".join(missing)
                                  + " — check db_schema, prisma_schema or table_map")


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan[VerifyDetails]:
    """Run the checks in the review's read-only snapshot; the summary is their counts. Nothing would change
    (review and execute are the same for a procedure that only reads)."""
    require_target(conn, names)
    result = checks_mod.run_all(conn, names, only=params.checks or None, sample_rows=params.sample_rows,
                                expect_full_rollback=params.expect_full_rollback)
    failed = [c for c in result.checks if not c.passed]
    summary: dict[str, Any] = {"checks run": len(result.checks), "checks passed": len(result.checks) - len(failed),
                               "checks failed": len(failed),
                               "offending rows": sum(int(c.count) for c in failed), "nothing_to_do": True}
    warnings = [f"{c.name}: {c.detail}" for c in failed]
    return Plan(procedure=NAME, plan_id=plan_hash(NAME, [c.as_dict() for c in result.checks]), summary=summary,
                frames={"checks": result.table()}, warnings=warnings, details=VerifyDetails(result=result))








def verify(conn: Connection, params: Params, names: NameMap, plan: Plan[VerifyDetails] | None) -> VerifyResult:
    """The checks of the review's snapshot when there is one (no second pass over the data), else run them."""
    if plan is not None and isinstance(plan.details.get("result"), VerifyResult):
        return plan.details["result"]
    require_target(conn, names)
    return checks_mod.run_all(conn, names, only=params.checks or None, sample_rows=params.sample_rows,
                              expect_full_rollback=params.expect_full_rollback)


@register
class Verify(Procedure):
    """Verify: the shared checks are its result; it never writes."""

    NAME = NAME
    NOTEBOOK = "verify.ipynb"
    TITLE = "Orphan and invariant checks (read-only); exit 13 when one fails"
    GUIDE_SECTION = "Testing Rollback: verify no orphaned data remains"
    Params = Params
    steps = Steps(plan=plan, verify=verify)
    writes = False
    shared_checks = False  # it runs them itself (plan and verify)
    checks_are_the_result = True  # a failed check fails a review too (exit 13)
