"""The driver every notebook uses: ``Run(procedure, params)`` then ``review()``, ``execute()``, ``verify()``.

The same object serves an analyst in JupyterLab and a headless papermill run started by the CLI. It
records what happened in ``run-state.json`` inside the run's evidence folder (when there is one), which
the CLI reads to print the plan id, choose the exit status and write the manifest.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import db, faults, guards, procedures, run_state
from . import names as names_mod
from . import params as params_mod
from .errors import ApprovalError, BackupRequiredError, RunbookError, VerificationFailed
from .evidence.folders import export_queries, now
from .procedures.base import ApplyResult, Check, Plan, VerifyResult
from .redact import redact_text
from .run_state import STATE_FILE, FinishedRun, RunState, jsonable


class Run:
    """One run of one procedure against the target in ``DATABASE_URL`` (or ``url``)."""

    def __init__(self, procedure: str, params: Mapping[str, Any] | None = None, *, url: str | None = None,
                 **more: Any) -> None:
        self.started = time.monotonic()
        self._name_maps: list[names_mod.NameMap] = []  # every map this run resolved: their ``used`` names
        self.proc = procedures.get(procedure)
        self.name: str = self.proc.NAME
        values = {**(params or {}), **more}
        self.evidence_dir = Path(values["evidence_dir"]) if values.get("evidence_dir") else None
        self.state: RunState = {"procedure": self.name, "mode": values.get("mode", "review"),
                                      "status": "running", "started_at": now(), "steps": {}}
        self._summary_handle: Any = None
        with self._step("parameters"):
            self.params = params_mod.validate(self.proc.Params, values)
            self.state["mode"] = self.params.mode
            self.state["parameters"] = self.params.public_dict()
            schema = db.url_schema(url)  # Prisma's ?schema= names the schema when db_schema is left at "public"
            self.url = url or db.database_url()
            if schema and self.params.db_schema == "public" and schema != "public":
                self.params = params_mod.validate(self.proc.Params, {**values, "db_schema": schema})
                self.state["parameters"] = self.params.public_dict()
            self.engine = db.make_engine(self.url, application_name=f"runbook:{self.name}")
        self.plan: Plan | None = None
        self.result: ApplyResult | None = None
        self.verification: VerifyResult | None = None
        self.names: names_mod.NameMap | None = None
        self.server: dict[str, Any] | None = None
        #: built from a notebook's variables (``from_namespace``): an execute must then be one ``runbook run`` records
        self.in_notebook = False

    @classmethod
    def from_namespace(cls, procedure: str, namespace: Mapping[str, Any], **more: Any) -> Run:
        """Build a run from a notebook's variables (its parameters cell), taking only the procedure's names.

        A variable that looks like a misspelled parameter (``negative_polcy``, from a typo in the cell or
        from ``papermill -p``, which only warns about unknown names) is passed on too, so validation refuses
        it as an unknown parameter instead of the run silently using the default.
        """
        import difflib

        fields = procedures.get(procedure).Params.model_fields
        simple = (str, int, float, bool, list, dict, type(None))
        near_misses = {k: v for k, v in namespace.items()
                       if k not in fields and not k.startswith("_") and isinstance(v, simple)
                       and difflib.get_close_matches(k, list(fields), n=1, cutoff=0.8)}
        run = cls(procedure, {**near_misses, **{k: v for k, v in namespace.items() if k in fields}}, **more)
        run.in_notebook = True
        return run

    # ------------------------------------------------------------------------------------- recording
    def _recorded_by_runner(self) -> bool:
        """Is this run's evidence folder a run folder that ``runbook run`` created and is still writing?

        The runner holds a lock on the folder until it has written the manifest and chained it into the incident
        (``evidence.new_run_dir(hold=True)``); a folder named by hand (``papermill -p evidence_dir …``), or none
        (JupyterLab), holds no such lock.
        """
        from . import evidence

        d = self.evidence_dir
        return bool(d is not None and d.is_dir() and not (d / evidence.MANIFEST).exists() and evidence.is_live(d))

    def runner_command(self, plan_id: str | None) -> str:
        """The ``runbook run`` command that executes ``plan_id`` with this run's parameters, ready to paste."""
        return params_mod.execute_command(self.name, self.params, plan_id)

    # ----------------------------------------------------------------------------------------- state
    def _write_state(self) -> None:
        if self.evidence_dir is None:
            return
        if self._name_maps:  # the names looked up so far; the last write (finish, or a failure) has them all
            self.state["names"] = self.used_names()
        run_state.write(self.evidence_dir, self.state)

    @contextlib.contextmanager
    def _step(self, step: str) -> Iterator[None]:
        self.state["steps"][step] = {"started_at": now(), "status": "running"}
        self._write_state()
        try:
            yield
        except BaseException as exc:
            err = exc if isinstance(exc, RunbookError) else None
            self.state["steps"][step].update({"status": "failed", "finished_at": now()})
            self.state["status"] = err.status if err else "failed"
            message = err.one_line() if err else f"{type(exc).__name__}: {exc}"
            if step == "verify" and self.state.get("committed"):  # the database change stands: say so first
                message = f"the change was committed; verification could not complete: {message}"
            self.state["error"] = {
                "step": step,
                "type": type(exc).__name__,
                "message": redact_text(message),
                "exit_code": err.exit_code if err else 1,
                "traceback": redact_text("".join(traceback.format_exception(exc))[-4000:]),
            }
            self._write_state()
            self._refresh_summary()
            raise
        else:
            self.state["steps"][step].update({"status": "done", "finished_at": now()})
            self._write_state()

    def progress(self, message: str) -> None:
        """A timestamped status line, flushed at once, so headless runs show what they are doing."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:7.1f}s] {self.name}: {message}", flush=True)

    # ----------------------------------------------------------------------------------------- steps
    def _resolve(self, conn: sa.engine.Connection) -> names_mod.NameMap:
        p = self.params
        nm = names_mod.resolve(conn, p.prisma_schema, p.db_schema, p.table_map, p.column_map)
        self._name_maps.append(nm)
        return nm

    def used_names(self) -> dict[str, Any]:
        """The models, fields and enums this run looked up (review, backup guard, execute, verify), with their
        tables/columns: what the evidence records, not the application's whole schema."""
        if not self._name_maps:
            return {}
        import dataclasses

        used: set[str] = set().union(*(m.used for m in self._name_maps))
        return dataclasses.replace(self.names or self._name_maps[-1], used=used).as_dict(used_only=True)

    def _plan(self, conn: sa.engine.Connection, names: names_mod.NameMap, detail: bool = True) -> Plan:
        """The procedure's plan; ``detail=False`` (under locks) lets it skip display frames."""
        return self.proc.plan(conn, self.params, names, detail=detail)

    def review(self) -> Plan:
        """Compute the plan in a read-only snapshot; export the full affected set to the evidence folder."""
        with self._step("review"):
            self.progress("connecting (read-only transaction)")
            with db.read_only(self.engine) as conn:
                info = db.server_info(conn)
                self.server = info.as_dict()
                self.state["database"] = self.server
                guards.production_guard(self.params, info.database)
                self.names = self._resolve(conn)
                self.progress(f"computing the plan on {info.database} (PostgreSQL {info.server_version})")
                plan = self._plan(conn, self.names)
                self.state["plan_id"] = plan.plan_id
                self.state["summary"] = jsonable(plan.summary)
                self.state["warnings"] = list(plan.warnings)
                if plan.batches is not None:  # online mode: what an execute of this plan id will commit, batch by batch
                    self.state["batches"] = [b.as_dict() for b in plan.batches]
                # the full affected set is exported by the review whose plan an execute approves (its manifest's
                # review_run): an execute does not write it a second time
                if plan.exports and self.evidence_dir is not None and self.params.mode != "execute":
                    self.state["exports"] = export_queries(conn, self.evidence_dir, plan.exports, self.progress)
            if self.evidence_dir is not None:
                self._write_frames(plan)
            self.plan = plan
            self.progress(f"plan id {plan.plan_id}")
        self._refresh_summary()
        return plan

    def _write_frames(self, plan: Plan) -> None:
        """The plan's bounded tables (before/after balances, per day, per voucher…) as CSV evidence files."""
        assert self.evidence_dir is not None
        for name, frame in plan.frames.items():
            if frame is not None and not frame.empty and name.replace("_", "").isalnum():
                frame.to_csv(self.evidence_dir / f"{name}.csv", index=False)

    def execute(self, plan: Plan | None = None) -> ApplyResult | None:
        """In execute mode with an approved plan id: lock, recompute, compare, apply, check, COMMIT."""
        if self.params.mode != "execute":
            shown = plan or self.plan
            pid = shown.plan_id if shown else "<plan id>"
            print(f"review mode: nothing was changed. To apply this plan run with mode=execute "
                  f"approved_plan={pid} (CLI: --execute --approve {pid}).", flush=True)
            return None
        with self._step("execute"):
            approved = self._approved_plan()
            self._require_backup()
            p = self.params
            # a procedure may need a step with no session of ours on the target (rehearsal: CREATE DATABASE …
            # TEMPLATE); it returns the cleanup to run if the execute fails before apply took over
            cleanup = self.proc.before_transaction(self.engine, p)
            self.progress(f"opening the write transaction (lock_timeout {p.lock_timeout}, "
                          f"statement_timeout {p.statement_timeout})")
            seen: dict[str, Any] = {"xid": None, "plan_id": None}  # what a failure's rollback check needs
            try:
                if self.proc.batched(p):  # online mode: batches, each its own transaction (runbook_lib.online)
                    from .online import execute_batches

                    result = execute_batches(self, approved)
                else:
                    with db.write_transaction(self.engine, lock_timeout_ms=p.lock_timeout_ms(),
                                              statement_timeout_ms=p.statement_timeout_ms(),
                                              exclusive_key=f"runbook:{self.name}") as conn:
                        result = self._apply_under_locks(conn, approved, seen)
            except BaseException:
                if "rolled_back" not in self.state:  # online mode records its failed batch's own finding
                    self.state["rolled_back"] = self._check_rolled_back(seen["plan_id"], seen["xid"])
                raise
            finally:
                if cleanup is not None:
                    with contextlib.suppress(Exception):  # never hides the run's own outcome
                        cleanup()
            faults.hit("after_commit")
            self.result = result
            self.state["committed"] = result.changed or bool(self.state.get("committed"))
            self.state["counts"] = jsonable(result.counts)
            self.state["messages"] = result.messages
            for m in result.messages:
                self.progress(m)
        self._refresh_summary()
        return result

    def _approved_plan(self) -> str:
        """The approved plan id, once the execute may start at all (nothing has touched the database yet)."""
        approved = self.params.approved_plan
        if self.in_notebook and not self._recorded_by_runner():
            # papermill by hand or JupyterLab: a committed change would have no manifest and no place in the
            # incident's chain
            raise ApprovalError(
                "an execute from a notebook must run through the CLI, which records it in the incident's "
                f"evidence chain; nothing was changed. Run: {self.runner_command(approved)}")
        if not approved:
            raise ApprovalError("mode=execute needs approved_plan: run a review first and pass its plan id "
                                "(CLI: --approve PLAN_ID)")
        return approved

    def _apply_under_locks(self, conn: sa.engine.Connection, approved: str, seen: dict[str, Any]) -> ApplyResult:
        """Inside the write transaction: lock, recompute the plan, compare it with the approved one, apply, check.
        ``seen`` receives the transaction id and the plan id under the locks as soon as they are known."""
        p = self.params
        info = db.server_info(conn)
        self.server = info.as_dict()
        self.state["database"] = self.server
        # the transaction's id: after a failure, the server itself says whether it was rolled back
        seen["xid"] = self.state["transaction_id"] = int(conn.exec_driver_sql("select txid_current()").scalar_one())
        if not self.proc.writes:  # verify, backup, rehearsal: the target is only read
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        guards.production_guard(p, info.database)
        names = self.names = self._resolve(conn)
        faults.hit("before_lock")
        self.progress("locking the affected rows")
        self.proc.lock(conn, p, names)
        faults.hit("after_lock")
        self.progress("recomputing the plan under the locks")
        plan = self._plan(conn, names, detail=False)
        seen["plan_id"] = self.state["plan_id_at_execute"] = plan.plan_id
        if plan.changes_nothing:
            result = ApplyResult(changed=False, counts={}, messages=["nothing to do: the approved change is already "
                                                                     "applied"])
        elif (self.state.get("backup") or {}).get("not_needed"):
            raise BackupRequiredError(f"{self.name} had nothing to do when the backup was checked, but now has: "
                                      "review again (nothing was changed)")
        elif plan.plan_id != approved:
            raise ApprovalError(f"the plan changed since it was approved (approved {approved}, now {plan.plan_id}): "
                                "the data moved; nothing was changed — review again and approve the new plan id")
        else:
            self.progress("applying set-based statements")
            result = self.proc.apply(conn, p, names, plan)
            faults.hit("after_apply")
            self.progress("checking invariants before COMMIT")
            self.proc.check(conn, p, names, plan, result)
            faults.hit("before_commit")
        self.plan = plan
        return result

    def after_commit(self) -> dict[str, Any] | None:
        """The procedure's file work after COMMIT (full rollback: migration folder and schema.prisma), in its own
        step: a file that cannot be written as planned fails the run with the procedure's error (EvidenceError: exit
        11), recorded in the evidence. Returns what was written (``None``: the procedure has no such work)."""
        with self._step("after_commit"):
            written = self.proc.after_commit(self)
            if written is not None:
                self.state["after_commit"] = jsonable(written)
        return written

    def _check_rolled_back(self, before_id: str | None, xid: int | None = None) -> dict[str, Any]:
        """After a failed execute: was it rolled back? (:func:`runbook_lib.guards.rolled_back`)"""
        return guards.rolled_back(self.engine, xid, before_id,
                                  lambda conn: self._plan(conn, self._resolve(conn), detail=False).plan_id)

    def _require_backup(self) -> None:
        found = guards.backup_guard(self.proc, self.params, self.engine, self.evidence_dir, self._resolve)
        if found is not None:
            self.state["backup"] = found
            shown = ("not needed, nothing to do" if found.get("not_needed")
                     else found.get("backup") or f"none, override: {found.get('override_reason')}")
            self.progress(f"backup: {shown}")

    def verify(self) -> VerifyResult:
        """Post-conditions of this procedure plus the general orphan/invariant checks, read-only."""
        with self._step("verify"):
            self.progress("verifying (read-only)")
            with db.read_only(self.engine) as conn:
                names = self.names or self._resolve(conn)
                result = self.proc.verify(conn, self.params, names, self.plan)
                if self.params.mode == "execute" and self.proc.wants_shared_checks(self.params):
                    from . import checks

                    # after a committed change the per-user checks look at the users the execute wrote; the
                    # verify procedure checks the whole ledger
                    general = checks.run_all(conn, names, sample_rows=self.params.sample_rows,
                                             users=self._written_users())
                    result = VerifyResult(checks=[*result.checks, *general.checks],
                                          frames={**result.frames, **general.frames})
            if self.params.mode != "execute":
                # a review: post-conditions that hold only once the change is applied are pending, not failed
                for c in result.checks:
                    if c.after_execute and not c.passed:
                        c.pending = True
            self.verification = result
            self.state["verification"] = [c.as_dict() for c in result.checks]
            self.state["verification_passed"] = result.passed
            pending = [c.name for c in result.checks if c.pending]
            if pending:
                self.state["verification_pending"] = pending
            failed = result.failed
            if failed and self.proc.checks_are_the_result:
                raise VerificationFailed(f"{len(failed)} checks failed: " + ", ".join(c.name for c in failed))
        if failed and self.params.mode == "execute":
            self._verification_failed(failed)
        self._refresh_summary()
        return result

    def _written_users(self) -> Any:
        """The users this execute wrote (``checks.UserScope``), or None: it changed nothing, check every user."""
        from .checks import UserScope

        if not self.state.get("committed"):
            return None
        ids = self.proc.written_users(self.params, self.plan) if self.plan is not None else None
        if ids is not None:
            return UserScope("the users this execute reversed", ids=ids)
        xid = self.state.get("transaction_id")
        return UserScope.written_by(xid) if xid is not None else None

    def _verification_failed(self, failed: list[Check]) -> None:
        """After an execute a failed check makes the run failed (exit 13, VerificationFailed), recorded now so the
        evidence says it even if the notebook stops here; ``finish`` raises it. The change stays committed."""
        committed = bool(self.state.get("committed"))
        done = ("the change was committed" if committed
                else "this execute changed nothing (the change was already applied)")
        where = f" ({self.evidence_dir})" if self.evidence_dir is not None else ""
        err = VerificationFailed(
            f"{done}; verification failed: {', '.join(c.name for c in failed)}; investigate, see the evidence{where}",
            checks=[c.name for c in failed], committed=committed)
        self.state["steps"]["verify"]["status"] = "failed"
        self.state["status"] = err.status
        self.state["error"] = {"step": "verify", "type": type(err).__name__, "message": redact_text(err.one_line()),
                               "exit_code": err.exit_code, "traceback": ""}
        self.progress(f"VERIFICATION FAILED: {', '.join(c.name for c in failed)} — the database change stands")
        self._write_state()

    def finish(self) -> FinishedRun:
        """Mark the run succeeded (a failure before this leaves it failed/aborted).

        Raises :class:`VerificationFailed` (exit 13) when the verification after an execute failed: the run is
        recorded as failed first, and the notebook shows the error at its last cell.
        """
        if self.state.get("status") == "running":
            self.state["status"] = "succeeded"
        self.state["finished_at"] = now()
        self._write_state()
        self._refresh_summary()
        err = self.state.get("error") or {}
        if err.get("type") == VerificationFailed.__name__ and err.get("step") == "verify":
            raise VerificationFailed(str(err["message"]).removeprefix(f"{VerificationFailed.__name__}: "))
        return FinishedRun(self.state, evidence_dir=self.evidence_dir)

    # ----------------------------------------------------------------------------------------- display
    def summary_html(self) -> str:
        """The ten-second summary: what was found, what would change, what was changed."""
        from . import display

        return display.run_summary_html(self.name, self.state, self.server)

    def show_summary(self) -> None:
        """Show the summary here and keep it updated as later cells run (a display id)."""
        try:
            from IPython.display import HTML, display
        except ImportError:  # pragma: no cover
            print(self.summary_html())
            return
        self._summary_handle = display(HTML(self.summary_html()), display_id=True)

    def _refresh_summary(self) -> None:
        if self._summary_handle is not None:
            from IPython.display import HTML

            with contextlib.suppress(Exception):
                self._summary_handle.update(HTML(self.summary_html()))


__all__ = ["Run", "Plan", "ApplyResult", "VerifyResult", "Check", "STATE_FILE", "sys"]
