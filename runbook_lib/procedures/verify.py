"""Verify (the guide's "verify no orphaned data remains", made concrete): named read-only checks.

The guide's Testing section says to verify that no orphaned data remains but gives no query. Here each
check is one aggregated statement with a pass/fail, a count and a bounded sample of offending rows
(:mod:`runbook_lib.checks`). ``runbook run verify`` exits 13 when a check fails. The same checks run at the
end of every execute of every other procedure, their results in that run's evidence.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import field_validator
from sqlalchemy.engine import Connection

from .. import checks as checks_mod
from ..names import NameMap
from ..params import CommonParams, name_list
from .base import ApplyResult, Plan, VerifyResult, plan_hash

NAME = "verify"
NOTEBOOK = "verify.ipynb"
TITLE = "Orphan and invariant checks (read-only); exit 13 when one fails"
GUIDE_SECTION = "Testing Rollback: verify no orphaned data remains"
writes = False
destructive = False
tables: list[str] = []


class Params(CommonParams):
    procedure: ClassVar[str] = NAME

    mode: Literal["review"] = "review"
    #: run only these checks (empty: all); see `runbook list --parameters` or docs/procedures/verify.md
    checks: list[str] = []

    @field_validator("mode", mode="before")
    @classmethod
    def _review_only(cls, v: Any) -> str:
        if v not in (None, "", "review"):
            raise ValueError("verify only reads: run it without --execute")
        return "review"

    @field_validator("checks", mode="before")
    @classmethod
    def _names(cls, v: Any) -> list[str]:
        v = name_list(v, limit=len(checks_mod.NAMES))
        unknown = [x for x in v if x not in checks_mod.NAMES]
        if unknown:
            raise ValueError(f"unknown checks {unknown}; the checks are: {', '.join(checks_mod.NAMES)}")
        return v


def plan(conn: Connection, params: Params, names: NameMap) -> Plan:
    """Which checks run (the work is done in ``verify``); nothing would change."""
    chosen = checks_mod.validate_names(params.checks or None)
    summary = {"checks to run": len(chosen), "nothing_to_do": True}
    return Plan(procedure=NAME, plan_id=plan_hash(NAME, chosen), summary=summary)


def lock(conn: Connection, params: Params, names: NameMap) -> None:  # never called: review only
    return None


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan) -> ApplyResult:  # pragma: no cover
    return ApplyResult(changed=False, counts={})


def check(conn: Connection, params: Params, names: NameMap, plan: Plan, result: ApplyResult) -> None:
    return None


def verify(conn: Connection, params: Params, names: NameMap, plan: Plan | None) -> VerifyResult:
    return checks_mod.run_all(conn, names, only=params.checks or None, sample_rows=params.sample_rows)
