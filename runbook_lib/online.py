"""Online mode: an execute in batches of users, each batch its own short transaction.

A single transaction locks every affected user until COMMIT: the application's requests for those users wait for
the whole execute. In online mode (``execution=online``) the review cuts the affected users into batches of
``batch_users`` users (contiguous ranges of user ids) and its plan id covers every batch's digest
(:class:`~runbook_lib.procedures.base.Batch`). The execute then:

1. takes the approved batches: from the review recorded in this incident's evidence (the run whose ``plan_id`` is
   the approved one), or, without one, from the plan recomputed now, which must then be the approved plan;
2. recomputes, read-only and in one statement, what is left in every batch range (:meth:`Procedure.batch_digests`):
   a batch with no work left is finished (committed by an earlier run of this approval: the reversal link makes it
   a no-op); every other batch must still match its approved digest, and no work may have appeared outside the
   ranges — otherwise the run is refused before anything changes;
3. for each remaining batch, in one transaction with the run's lock and statement timeouts: locks its users,
   recomputes its slice under the locks and compares it with its digest, applies, checks the invariants, commits;
   then pauses ``batch_pause`` so the application's queued requests go first.

Killed or failed midway, the database holds whole batches only, and the evidence lists every batch (committed,
finished earlier, failed). Running again with the same approval finishes exactly the remaining batches. A session
advisory lock keeps a second execute of the same procedure out for the whole run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator

from . import db, faults, guards, run_state
from .errors import ApprovalError, ConcurrentRunError, RunbookError, SessionInterruptedError
from .evidence.folders import now
from .run_state import jsonable

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

    from .names import NameMap
    from .procedures.base import ApplyResult, Batch, Plan
    from .run import Run

#: above this many affected users the review advises online mode (a single transaction would lock them all)
ADVISE_ONLINE_USERS = 10_000


class OnlineOptions(BaseModel):
    """The parameters of online mode, for a procedure whose execute can run in batches."""

    execution: Literal["single", "online"] = Field("single", description="single (one transaction, all affected users locked until COMMIT) or online (batches of batch_users users, each its own transaction)")
    batch_users: int = Field(5000, description="online mode: users per batch (1-100000); a batch's locks are held only while it runs")
    batch_pause: str = Field("100ms", description="online mode: pause between batches, e.g. 100ms (0 for none), so the application's waiting requests go first")

    @field_validator("batch_users")
    @classmethod
    def _batch_users(cls, v: int) -> int:
        if not 1 <= v <= 100_000:
            raise ValueError("must be between 1 and 100000 users per batch")
        return v

    @field_validator("batch_pause", mode="before")
    @classmethod
    def _pause(cls, v: object) -> str:
        if _pause_ms(v) > 60_000:
            raise ValueError("must be at most 60s")
        return str(v)

    def batch_pause_s(self) -> float:
        return _pause_ms(self.batch_pause) / 1000


def _pause_ms(v: object) -> int:
    """A pause: ``0`` (none) or a duration such as ``100ms`` or ``2s``."""
    if str(v).strip() in ("0", "0ms", "0s"):
        return 0
    try:
        return db.duration_ms(v if isinstance(v, (int, float)) else str(v), "batch_pause")
    except RunbookError:
        raise ValueError(f"{v!r} is not a pause such as 0, 100ms or 2s") from None


def batches_frame(state: Mapping[str, Any], limit: int = 40) -> pd.DataFrame:
    """The run's batches (online mode) as a bounded table: the first and last ``limit / 2``, and every batch that
    did not commit or finish; empty for a single-transaction run."""
    import pandas as pd

    rows = list(state.get("batches") or [])
    keep = [r for i, r in enumerate(rows) if i < limit // 2 or i >= len(rows) - limit // 2
            or r.get("status") not in ("committed", "finished earlier", "pending")]
    cols = ["number", "status", "users", "rows", "first", "last", "seconds", "locked_seconds", "transaction_id"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in keep], columns=cols)


def advice(users: int, options: OnlineOptions, batches: int | None) -> str:
    """The review's line on which execution mode fits an incident of ``users`` affected users."""
    if options.execution == "online":
        return (f"online: {batches or 0:,} batches of at most {options.batch_users:,} users, each its own "
                f"transaction, {options.batch_pause} pause between batches")
    if users > ADVISE_ONLINE_USERS:
        return (f"single transaction — {users:,} users locked until COMMIT, and the plan pins each one's balance (an "
                "application write for one of them before the execute makes it refuse); for an incident this size "
                "on a live application use execution=online (batches, short locks)")
    return "single transaction (fits: few users, locked briefly; the plan pins their balances)"


# ------------------------------------------------------------------------------------------------- the execute
def execute_batches(run: Run, approved: str) -> ApplyResult:
    """Run's execute in online mode (module docstring); returns the counts summed over the batches it committed."""
    from .procedures.base import ApplyResult, Plan

    proc, p = run.proc, run.params
    with _exclusive(run.engine, f"runbook:{run.name}") as still_held:
        with db.read_only(run.engine) as conn:
            info = db.server_info(conn)
            run.server = run.state["database"] = info.as_dict()
            guards.production_guard(p, info.database)
            names = run.names = run._resolve(conn)  # noqa: SLF001 - the driver's own helper
            layout, origin = _approved_layout(run, conn, names, approved)
            left = proc.batch_digests(conn, p, names, layout)
        todo = _classify(layout, left, approved)
        whole: Plan = Plan(procedure=run.name, plan_id=approved, summary={}, batches=layout)
        run.plan = whole
        records = run.state["batches"] = [
            {**b.as_dict(), "status": "pending" if b in todo else "finished earlier"} for b in layout]
        run.progress(f"online: {len(layout):,} approved batches ({origin}); {len(layout) - len(todo):,} finished "
                     f"earlier, {len(todo):,} to run")
        run._write_state()  # noqa: SLF001
        for i, b in enumerate(todo):
            if i:
                faults.hit("between_batches")
                time.sleep(p.batch_pause_s())  # type: ignore[attr-defined]  # batched() procedures have it
            try:
                still_held(b.number)
            except SessionInterruptedError:
                run.state["rolled_back"] = {"checked": True, "rolled_back": True, "how": (
                    f"stopped before batch {b.number}: no batch transaction was open; the batches before it stay "
                    "committed")}
                raise
            result, part = _one_batch(run, names, b, records[b.number - 1], done=len(layout) - len(todo) + i,
                                      total=len(layout))
            proc.absorb_batch(whole, part, result)
    committed = [r for r in records if r["status"] == "committed"]
    if not committed:
        return ApplyResult(changed=False, counts={"batches_committed": 0},
                           messages=["nothing to do: every approved batch is already applied"])
    summary = (f"online: {len(committed):,} batches committed ({sum(r['rows'] for r in committed):,} rows of "
               f"{sum(r['users'] for r in committed):,} users), {len(layout) - len(todo):,} finished earlier")
    totals: dict[str, int] = {}  # the counts summed over the batches this run committed (their records)
    for r in committed:
        for k, v in (r.get("counts") or {}).items():
            if isinstance(v, int) and not isinstance(v, bool):
                totals[k] = totals.get(k, 0) + v
    return ApplyResult(changed=True, counts={**totals, "batches_committed": len(committed),
                                             "batches_total": len(layout)}, messages=[summary])


def _approved_layout(run: Run, conn: sa.engine.Connection, names: NameMap,
                     approved: str) -> tuple[list[Batch], str]:
    """The approved batches: the review of ``approved`` in this incident's evidence, else the plan recomputed now
    (which must then be the approved plan)."""
    stored = stored_layout(run.evidence_dir, approved)
    if stored is not None:
        return stored, "from the review in this incident's evidence"
    plan = run.proc.plan(conn, run.params, names, detail=False)
    if plan.changes_nothing:  # a run of an approval applied already: nothing left anywhere
        return [], "none left: the plan recomputed now has nothing to do"
    if plan.plan_id != approved or plan.batches is None:
        raise ApprovalError(
            f"the plan changed since it was approved (approved {approved}, now {plan.plan_id}) and this incident's "
            f"evidence holds no review of {approved} with its batches: nothing was changed — review again and "
            "approve the new plan id")
    return plan.batches, "the plan recomputed now"


def stored_layout(evidence_dir: Path | None, approved: str) -> list[Batch] | None:
    """The batches of the review whose plan id is ``approved``, from a run folder of the same incident."""
    from .procedures.base import Batch

    if evidence_dir is None or not evidence_dir.parent.is_dir():
        return None
    for state_file in sorted(evidence_dir.parent.glob(f"*/{run_state.STATE_FILE}")):
        with contextlib.suppress(Exception):  # a folder being written, or not a run: not the review we look for
            state = run_state.read(state_file.parent)
            if state.get("mode") == "review" and state.get("plan_id") == approved and state.get("batches"):
                return [Batch.from_dict(b) for b in state["batches"]]
    return None


def _classify(layout: list[Batch], left: dict[int | None, str], approved: str) -> list[Batch]:
    """The batches still to run; refuses (nothing changed yet) when a batch or the work outside them moved."""
    if None in left:
        raise ApprovalError(
            f"rows to reverse appeared outside the batches approved in plan {approved} (users outside every "
            "approved range): nothing was changed by this run — review again and approve the new plan id")
    changed = [b.number for b in layout if b.number in left and left[b.number] != b.digest]
    if changed:
        shown = ", ".join(str(n) for n in changed[:10]) + (" …" if len(changed) > 10 else "")
        raise ApprovalError(
            f"{len(changed)} approved batches changed since plan {approved} was approved (batches {shown}): the "
            "data moved, or this execute's options differ from the review's; nothing was changed by this run — "
            "review again and approve the new plan id")
    return [b for b in layout if b.number in left]


def _one_batch(run: Run, names: NameMap, b: Batch, record: dict[str, Any], *, done: int,
               total: int) -> tuple[ApplyResult, Plan]:
    """One batch in its own transaction: lock, recompute under the locks, compare, apply, check, COMMIT."""
    from .procedures.base import ApplyResult

    proc, p = run.proc, run.params
    started = time.monotonic()
    record.update({"status": "running", "started_at": now()})
    seen: dict[str, Any] = {"xid": None, "digest": None}
    try:
        with db.write_transaction(run.engine, lock_timeout_ms=p.lock_timeout_ms(),
                                  statement_timeout_ms=p.statement_timeout_ms()) as conn:
            seen["xid"] = record["transaction_id"] = int(conn.exec_driver_sql("select txid_current()").scalar_one())
            proc.lock_batch(conn, p, names, b)
            locked = time.monotonic()
            part = proc.plan_batch(conn, p, names, b)
            seen["digest"] = part.plan_id
            if part.changes_nothing:
                result = ApplyResult(changed=False, counts={}, messages=["nothing left in this batch"])
            elif part.plan_id != b.digest:
                raise ApprovalError(f"batch {b.number} changed since it was approved (its users' rows or balances "
                                    "moved): this batch was rolled back — review again and approve the new plan id")
            else:
                result = proc.apply(conn, p, names, part)
                faults.hit("after_apply")
                proc.check(conn, p, names, part, result)
                faults.hit("before_commit")
    except BaseException as exc:
        record.update({"status": "failed", "finished_at": now(), "seconds": round(time.monotonic() - started, 3)})
        run.state["rolled_back"] = _batch_rolled_back(run, names, b, seen)
        if isinstance(exc, RunbookError):
            _say_where(exc, run.state.get("batches") or [], b)
        raise
    seconds = time.monotonic() - started
    record.update({"status": "committed" if result.changed else "nothing to do", "finished_at": now(),
                   "seconds": round(seconds, 3), "locked_seconds": round(time.monotonic() - locked, 3),
                   "counts": jsonable(result.counts)})
    if result.changed:
        run.state["committed"] = True
    run._write_state()  # noqa: SLF001
    run.progress(f"batch {b.number:,}/{total:,} ({done + 1:,} done): {b.rows:,} rows of {b.users:,} users "
                 f"{'committed' if result.changed else 'had nothing left'} in {seconds:.2f}s")
    return result, part


def _batch_rolled_back(run: Run, names: NameMap, b: Batch, seen: dict[str, Any]) -> dict[str, Any]:
    """The failed batch's transaction: rolled back? (the server's record, and the batch's plan recomputed)."""
    found = guards.rolled_back(run.engine, seen["xid"], seen["digest"],
                               lambda conn: run.proc.plan_batch(conn, run.params, names, b).plan_id)
    found["how"] = f"batch {b.number}: {found['how']}; earlier batches of this run stay committed"
    return found


def _say_where(exc: RunbookError, records: list[dict[str, Any]], failed: Batch) -> None:
    """Prefix the error with where the online run stopped, so its one line says what stands and what to do."""
    committed = sum(1 for r in records if r["status"] in ("committed", "finished earlier"))
    exc.message = (f"online run stopped at batch {failed.number} of {len(records)} ({committed} batches committed, "
                   f"batch {failed.number} rolled back; run again with the same approval to finish the remaining "
                   f"batches): {exc.message}")
    exc.args = (exc.message,)


@contextlib.contextmanager
def _exclusive(engine: Engine, key: str) -> Iterator[Callable[[int], None]]:
    """A session advisory lock on its own connection for the whole online run: a second execute of the same
    procedure (single or online) gets ConcurrentRunError; a killed run's lock goes with its connection.

    Yields the check to call before each batch: if that session was terminated (a DBA's ``pg_terminate_backend``),
    the lock is gone and the run stops there with SessionInterruptedError — it never carries on unguarded on new
    connections. Batches committed so far stand; the same approval run again finishes the rest."""
    with db.connect(engine) as conn:
        got = conn.execute(sa.text("select pg_try_advisory_lock(hashtextextended(:k, 0))"), {"k": key}).scalar_one()
        conn.commit()
        if not got:
            raise ConcurrentRunError(f"another operator is executing {key!r} on this database right now; wait for "
                                     "it to finish, then review again")

        def still_held(before_batch: int) -> None:
            try:
                held = conn.execute(sa.text(
                    "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid() "
                    "and granted")).scalar_one()
                conn.commit()
            except Exception:  # noqa: BLE001 - any failure of the lock's session means the lock is gone
                held = 0
            if not held:
                raise SessionInterruptedError(
                    f"the online run's lock session was terminated before batch {before_batch}: stopped there (the "
                    "batches before it are committed); run again with the same approval to finish the rest")

        try:
            yield still_held
        finally:
            with contextlib.suppress(Exception):
                conn.execute(sa.text("select pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": key})
                conn.commit()
