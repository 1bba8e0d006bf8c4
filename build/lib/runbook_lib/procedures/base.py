"""What a procedure is: typed parameters plus ``plan``, ``lock``, ``apply``, ``check`` and ``verify``.

The driver (:mod:`runbook_lib.run`) calls them in this order:

review   read-only snapshot:  names = resolve(); plan = plan(conn, params, names)
execute  one write transaction with lock_timeout / statement_timeout and an advisory lock:
           lock(conn, params, names)              # row/table locks, in a fixed order
           plan2 = plan(conn, params, names)       # recomputed under the locks
           plan2.plan_id == approved_plan else ApprovalError (ROLLBACK)
           result = apply(conn, params, names, plan2)   # set-based statements only
           check(conn, params, names, plan2, result)    # invariants; raise InvariantError -> ROLLBACK
         COMMIT
verify   read-only: verify(conn, params, names, plan) -> VerifyResult (post-conditions, orphans)

Procedures that never write (verify, backup's database side) set ``writes = False``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pandas as pd
from sqlalchemy.engine import Connection

from ..names import NameMap
from ..params import CommonParams


def plan_hash(*parts: Any) -> str:
    """A plan id: SHA-256 (first 24 hex digits) of the canonical JSON of what would change."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class Plan:
    """What a procedure would do, computed in a read-only snapshot (or under locks, for execute)."""

    procedure: str
    plan_id: str
    #: headline figures (JSON-able): counts, totals; shown first and written to the manifest
    summary: dict[str, Any]
    #: bounded DataFrames for display (samples, top-N, per-day…); never the full affected set
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: human-readable warnings (negative balances, vouchers that would revive…)
    warnings: list[str] = field(default_factory=list)
    #: SQL (select statements) whose full results go to the evidence folder as Parquet/CSV files;
    #: name -> (sql, bind params). Streamed in chunks by the driver, never held in the notebook.
    exports: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    #: anything else the procedure's apply/check needs from the plan
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def changes_nothing(self) -> bool:
        return bool(self.summary.get("nothing_to_do"))


@dataclass
class ApplyResult:
    """What apply did (row counts by statement, totals). ``changed`` False means a no-op run."""

    changed: bool
    counts: dict[str, Any]
    messages: list[str] = field(default_factory=list)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class Check:
    """One named verification check. ``count`` offending rows, a bounded ``sample`` of them when it failed.

    ``after_execute``: set by the procedure on a post-condition that holds only once the change is applied (token
    reversal's "no selected ledger row left unreversed"). In a review such a check is not a failure: the driver
    marks it ``pending`` (shown as "pending (applies after execute)", never counted as failed).
    """

    name: str
    passed: bool
    count: int = 0
    detail: str = ""
    sample: pd.DataFrame | None = None
    after_execute: bool = False
    pending: bool = False

    @property
    def failed(self) -> bool:
        return not self.passed and not self.pending

    @property
    def status(self) -> str:
        return "passed" if self.passed else "pending (applies after execute)" if self.pending else "FAILED"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "passed": self.passed, "count": int(self.count), "detail": self.detail}
        if self.pending:
            out["pending"] = True
        return out


@dataclass
class VerifyResult:
    checks: list[Check]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No check failed (pending checks of a review do not count)."""
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def table(self) -> pd.DataFrame:
        """One row per check: ``status`` passed / FAILED / pending; ``passed`` is empty for a pending check."""
        return pd.DataFrame([{"name": c.name, "status": c.status, "passed": None if c.pending else c.passed,
                              "count": int(c.count), "detail": c.detail} for c in self.checks],
                            columns=["name", "status", "passed", "count", "detail"])


class Procedure(Protocol):
    """The module-level interface every ``runbook_lib/procedures/<name>.py`` provides."""

    NAME: ClassVar[str]            # CLI name, e.g. "token-reversal"
    NOTEBOOK: ClassVar[str]        # notebook file in notebooks/, e.g. "token_reversal.ipynb"
    TITLE: ClassVar[str]           # one line for `runbook list`
    GUIDE_SECTION: ClassVar[str]   # section of DATABASE_MIGRATION_ROLLBACK.md it implements
    Params: type[CommonParams]
    writes: bool                   # False for read-only procedures
    destructive: bool              # needs a recent backup in the incident before execute (issue 4)
    tables: list[str]              # Prisma models it touches (for backup / rehearsal / locks)

    def plan(self, conn: Connection, params: Any, names: NameMap) -> Plan: ...

    def lock(self, conn: Connection, params: Any, names: NameMap) -> None: ...

    def apply(self, conn: Connection, params: Any, names: NameMap, plan: Plan) -> ApplyResult: ...

    def check(self, conn: Connection, params: Any, names: NameMap, plan: Plan, result: ApplyResult) -> None: ...

    def verify(self, conn: Connection, params: Any, names: NameMap, plan: Plan | None) -> VerifyResult: ...
