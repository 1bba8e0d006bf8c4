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

Every procedure is a :class:`Procedure` subclass (below) registered by name; the hooks it does not override keep
their documented defaults. Procedures that never write the target (verify, backup, rehearsal) set
``writes = False``: the driver then makes the execute transaction READ ONLY.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pandas as pd
from sqlalchemy.engine import Connection, Engine

from ..names import NameMap
from ..params import CommonParams
from ..user_ids import UserIds

#: the Prisma models of the voucher system and its token ledger, as the application names them
VOUCHER_MODELS: tuple[str, ...] = ("Voucher", "VoucherRedemption", "TokenTransaction", "UserTokenBalance")


def plan_hash(*parts: Any) -> str:
    """A plan id: SHA-256 (first 24 hex digits) of the canonical JSON of what would change."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


#: a procedure's plan details: a ``TypedDict`` of its own (``TokenReversalDetails``…), a plain dict at run time
D = TypeVar("D", bound=Mapping[str, Any])


@dataclass(frozen=True)
class Batch:
    """One batch of an online (batched) execute: a contiguous range of user ids, in the user id column's own order,
    with the digest of its rows and balances at review. The review's plan id covers every batch's digest."""

    number: int  # 1-based, in user id order
    first: str  # first and last user id of the range (inclusive)
    last: str
    users: int
    rows: int
    digest: str

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "first": self.first, "last": self.last, "users": self.users,
                "rows": self.rows, "digest": self.digest}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Batch:
        return cls(int(d["number"]), str(d["first"]), str(d["last"]), int(d["users"]), int(d["rows"]),
                   str(d["digest"]))


@dataclass
class Plan(Generic[D]):
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
    #: what the procedure's apply/check/verify (and its notebook) need from the plan, typed per procedure by a
    #: ``TypedDict`` (``Plan[TokenReversalDetails]``); a dict at run time, so notebooks read ``plan.details["…"]``
    details: D = field(default_factory=dict)  # type: ignore[assignment]
    #: online mode (:meth:`Procedure.batched`): the batches the execute commits one by one, each with its digest
    batches: list[Batch] | None = None

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


@dataclass(frozen=True)
class Steps:
    """A procedure's five steps as plain functions of ``(conn, params, names, …)``, the way the built-in procedures
    are written (module functions that tests and notebooks call directly too). ``plan`` takes ``detail`` as a
    keyword; a step left ``None`` keeps the contract's default."""

    plan: Callable[..., Plan]
    lock: Callable[[Connection, Any, NameMap], None] | None = None
    apply: Callable[[Connection, Any, NameMap, Plan], ApplyResult] | None = None
    check: Callable[[Connection, Any, NameMap, Plan, ApplyResult], None] | None = None
    verify: Callable[[Connection, Any, NameMap, Plan | None], VerifyResult] | None = None


class Procedure:
    """The contract of a procedure: metadata, typed parameters, the five steps and every optional hook, defaulted.

    A procedure is a subclass registered with :func:`runbook_lib.procedures.register`; the driver
    (:class:`runbook_lib.run.Run`) calls only what is declared here, never probes a module for optional names and
    never keys behaviour on a procedure's name. ``docs/architecture.md`` walks through one execute and shows how
    to add a procedure; ``tests/test_contract.py`` builds one from this class alone.

    Required: ``NAME``, ``NOTEBOOK``, ``TITLE``, ``GUIDE_SECTION``, ``Params`` and :meth:`plan`; a procedure that
    ``writes`` must also implement :meth:`apply` (checked when the class is defined).
    """

    NAME: ClassVar[str]            # CLI name, e.g. "token-reversal"
    NOTEBOOK: ClassVar[str]        # notebook file in notebooks/, e.g. "token_reversal.ipynb"
    TITLE: ClassVar[str]           # one line for `runbook list`
    GUIDE_SECTION: ClassVar[str]   # section of DATABASE_MIGRATION_ROLLBACK.md it implements
    Params: ClassVar[type[CommonParams]]

    #: Prisma models it touches: the backup guard's tables (see :meth:`guarded_tables`) and what a rehearsal compares
    tables: ClassVar[tuple[str, ...]] = ()
    #: False: the execute transaction on the target is made READ ONLY by the driver (verify, backup, rehearsal —
    #: whose writes go to a scratch copy); such a procedure cannot be rehearsed
    writes: ClassVar[bool] = True
    #: deletes or overwrites data: an execute needs a recent backup of its tables in the incident (see
    #: :meth:`is_destructive` for a per-run answer)
    destructive: ClassVar[bool] = False
    #: after an execute the shared orphan/invariant checks (:mod:`runbook_lib.checks`) run with this procedure's own
    #: post-conditions (see :meth:`wants_shared_checks`)
    shared_checks: ClassVar[bool] = True
    #: the checks are the procedure's result (verify): a failed check fails a review too, and a review is the whole
    #: run (the CLI offers no execute command after it)
    checks_are_the_result: ClassVar[bool] = False
    #: fault-injection points inside the procedure (``faults.hit``), besides the driver's own; reliability trials
    fault_points: ClassVar[tuple[str, ...]] = ()

    #: the five steps as module functions (how the built-in procedures are written); ``None``: the subclass
    #: overrides the step methods itself (tests/test_contract.py)
    steps: ClassVar[Steps | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        applies = cls.apply is not Procedure.apply or (cls.steps is not None and cls.steps.apply is not None)
        if cls.writes and not applies and "NAME" in cls.__dict__:
            raise TypeError(f"procedure {cls.__name__} writes but does not implement apply()")

    # -------------------------------------------------------------------------------- the five steps
    def plan(self, conn: Connection, params: Any, names: NameMap, *, detail: bool = True) -> Plan:
        """What would change, computed read-only. ``detail=False`` (under the execute's locks) may skip the display
        frames; the plan id must not depend on ``detail``."""
        if self.steps is None:
            raise NotImplementedError(f"{type(self).__name__}.plan")
        return self.steps.plan(conn, params, names, detail=detail)

    def lock(self, conn: Connection, params: Any, names: NameMap) -> None:
        """Take the row/table locks of an execute, in a fixed order (default: none)."""
        if self.steps is not None and self.steps.lock is not None:
            self.steps.lock(conn, params, names)

    def apply(self, conn: Connection, params: Any, names: NameMap, plan: Plan) -> ApplyResult:
        """Apply the plan with set-based statements (default, for procedures that do not write: nothing)."""
        if self.steps is not None and self.steps.apply is not None:
            return self.steps.apply(conn, params, names, plan)
        return ApplyResult(changed=False, counts={})

    def check(self, conn: Connection, params: Any, names: NameMap, plan: Plan, result: ApplyResult) -> None:
        """Invariants before COMMIT; raise :class:`~runbook_lib.errors.InvariantError` to roll back (default: none)."""
        if self.steps is not None and self.steps.check is not None:
            self.steps.check(conn, params, names, plan, result)

    def verify(self, conn: Connection, params: Any, names: NameMap, plan: Plan | None) -> VerifyResult:
        """Post-conditions, read-only, after the execute or at the end of a review (default: none)."""
        if self.steps is not None and self.steps.verify is not None:
            return self.steps.verify(conn, params, names, plan)
        return VerifyResult(checks=[])

    # -------------------------------------------------------------------------------- optional hooks
    def is_destructive(self, params: Any) -> bool:
        """Does this run delete or overwrite data (token reversal: only ``ledger_mode=delete``)?"""
        return self.destructive

    def guarded_tables(self, params: Any) -> list[str]:
        """The models a backup must cover before a destructive execute (restore: the tables chosen)."""
        return list(self.tables)

    def restoring(self, params: Any) -> dict[str, Any] | None:
        """The backup this execute restores from, when it does (restore): the backup guard accepts that one."""
        return None

    def nothing_to_do(self, conn: Connection, params: Any, names: NameMap) -> bool:
        """A cheap read-only answer "the execute would change nothing" (a full rollback run again): no backup is then
        required. The driver re-checks under the locks. Default: cannot tell, so the backup is required."""
        return False

    def before_transaction(self, engine: Engine, params: Any) -> Callable[[], None] | None:
        """Work that needs no session of ours on the target, before the write transaction (rehearsal: CREATE
        DATABASE … TEMPLATE). Returns the cleanup to run if the execute fails before apply took over."""
        return None

    def wants_shared_checks(self, params: Any) -> bool:
        """Run the shared checks after this execute? (backup and restore into another database: no)."""
        return self.shared_checks

    def for_a_copy(self, conn: Connection, values: dict[str, Any], incident: Path | None) -> dict[str, Any]:
        """Parameter values as they apply when a rehearsal runs this procedure on a scratch copy of the target
        ``conn`` is connected to (restore: the live database's backup accepted on the copy). Default: unchanged."""
        return values

    def written_users(self, params: Any, plan: Plan) -> UserIds | None:
        """The users whose balances and ledger rows this execute wrote, when its plan knows them (token reversal: the
        reversed users, across every batch of an online run); the shared per-user checks after the execute look at
        these. ``None`` (default): the driver finds them from the execute's transaction id (the rows it wrote)."""
        return None

    # -------------------------------------------------------------------------------- online mode (batches)
    def batched(self, params: Any) -> bool:
        """Does this execute run in batches, each its own short transaction (:mod:`runbook_lib.online`)? The plan
        then carries ``batches`` and the hooks below are used instead of :meth:`lock` / :meth:`plan`. Default: no."""
        return False

    def batch_digests(self, conn: Connection, params: Any, names: NameMap,
                      batches: list[Batch]) -> dict[int | None, str]:
        """Read-only, one statement: the current digest of every batch range that still has work (a batch whose
        rows are all reversed is absent: finished), and under the key ``None`` a digest of the work outside every
        range (absent when there is none). Raise a :class:`~runbook_lib.errors.PolicyAbort` that applies to the
        whole selection here, before any batch commits."""
        raise NotImplementedError(f"{type(self).__name__}.batch_digests")

    def lock_batch(self, conn: Connection, params: Any, names: NameMap, batch: Batch) -> None:
        """Take the locks of one batch, in a fixed order (default: none)."""

    def plan_batch(self, conn: Connection, params: Any, names: NameMap, batch: Batch) -> Plan:
        """One batch's plan under its locks: ``plan_id`` is its digest (compared with ``batch.digest``); the
        procedure's :meth:`apply` and :meth:`check` then run on it."""
        raise NotImplementedError(f"{type(self).__name__}.plan_batch")

    def absorb_batch(self, whole: Plan, part: Plan, result: ApplyResult) -> None:
        """A batch committed: fold what its check recorded in ``part`` into the whole plan (what :meth:`verify`
        compares after the run). Default: nothing."""

    def after_commit(self, run: Any) -> dict[str, Any] | None:
        """File work after COMMIT (full rollback: the migration folder and schema.prisma), called by
        :meth:`runbook_lib.run.Run.after_commit` in its own step; raise
        :class:`~runbook_lib.errors.EvidenceError` when a file cannot be written as planned."""
        return None
