"""The driver every notebook uses: ``Run(procedure, params)`` then ``review()``, ``execute()``, ``verify()``.

The same object serves an analyst in JupyterLab and a headless papermill run started by the CLI. It
records what happened in ``run-state.json`` inside the run's evidence folder (when there is one), which
the CLI reads to print the plan id, choose the exit status and write the manifest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import db, faults, procedures, run_state
from . import names as names_mod
from . import params as params_mod
from .errors import ApprovalError, BackupRequiredError, PolicyAbort, RunbookError, VerificationFailed
from .procedures.base import ApplyResult, Check, Plan, VerifyResult
from .redact import redact_text
from .run_state import STATE_FILE, RunState, jsonable

PRODUCTION_ENV = "RUNBOOK_TARGET_PRODUCTION"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class FinishedRun(dict[str, Any]):
    """The run's recorded state, shown in a notebook as one line (not as the ~150-line dictionary it is)."""

    def __init__(self, state: Mapping[str, Any], *, evidence_dir: Path | None) -> None:
        super().__init__(state)
        self.evidence_dir = evidence_dir

    def __repr__(self) -> str:
        where = str(self.evidence_dir) if self.evidence_dir is not None else "none (runbook run records the evidence)"
        plan = f", plan id {self['plan_id']}" if self.get("plan_id") else ""
        return f"run {self.get('status')}: {self.get('procedure')} {self.get('mode')}{plan}; evidence: {where}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython's text/plain
        printer.text(repr(self))


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
                                      "status": "running", "started_at": _now(), "steps": {}}
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
        """The ``runbook run`` command that executes ``plan_id`` with this run's parameters (those that differ
        from the defaults), ready to paste: the execute then leaves a run record in the incident's chain."""
        import shlex

        skip = {"mode", "approved_plan", "evidence_dir", "confirm_target"}
        defaults = {k: json.loads(json.dumps(f.get_default(call_default_factory=True), default=str))
                    for k, f in self.proc.Params.model_fields.items() if not f.is_required()}
        cmd = ["runbook", "run", self.name]
        for key, value in self.params.public_dict().items():
            if key in skip or defaults.get(key, object()) == value:
                continue
            cmd += ["-p", key, value if isinstance(value, str) else json.dumps(value)]
        if self.params.confirm_target:
            cmd += ["--confirm-target", self.params.confirm_target]
        cmd += ["--incident", "INCIDENT", "--execute", "--approve", plan_id or "PLAN_ID"]
        return shlex.join(cmd)

    # ----------------------------------------------------------------------------------------- state
    def _write_state(self) -> None:
        if self.evidence_dir is None:
            return
        if self._name_maps:  # the names looked up so far; the last write (finish, or a failure) has them all
            self.state["names"] = self.used_names()
        run_state.write(self.evidence_dir, self.state)

    @contextlib.contextmanager
    def _step(self, step: str) -> Iterator[None]:
        self.state["steps"][step] = {"started_at": _now(), "status": "running"}
        self._write_state()
        try:
            yield
        except BaseException as exc:
            err = exc if isinstance(exc, RunbookError) else None
            self.state["steps"][step].update({"status": "failed", "finished_at": _now()})
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
            self.state["steps"][step].update({"status": "done", "finished_at": _now()})
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
                self._production_guard(info.database)
                self.names = self._resolve(conn)
                self.progress(f"computing the plan on {info.database} (PostgreSQL {info.server_version})")
                plan = self._plan(conn, self.names)
                self.state["plan_id"] = plan.plan_id
                self.state["summary"] = jsonable(plan.summary)
                self.state["warnings"] = list(plan.warnings)
                if plan.exports and self.evidence_dir is not None:
                    self.state["exports"] = self._export(conn, plan.exports)
            if self.evidence_dir is not None:
                self._write_frames(plan)
            self.plan = plan
            self.progress(f"plan id {plan.plan_id}")
        self._refresh_summary()
        return plan

    def _export(self, conn: sa.engine.Connection, exports: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Stream each export query to a Parquet file in chunks (never the whole set in memory)."""
        from . import evidence

        assert self.evidence_dir is not None
        out: dict[str, Any] = {}
        for name, (sql, binds) in exports.items():
            counter = {"rows": 0}

            def chunks(sql: str = sql, binds: dict[str, Any] = binds, counter: dict[str, int] = counter,
                       name: str = name) -> Iterator[Any]:
                import pandas as pd

                res = conn.execution_options(stream_results=True, max_row_buffer=50_000).execute(sa.text(sql), binds)
                cols = list(res.keys())
                for part in res.partitions(50_000):
                    counter["rows"] += len(part)
                    self.progress(f"exporting {name}: {counter['rows']} rows")
                    yield pd.DataFrame(part, columns=cols)

            path = evidence.write_frame(self.evidence_dir, name, chunks())
            out[name] = {"file": Path(path).name, "rows": counter["rows"]}
        return out

    def _write_frames(self, plan: Plan) -> None:
        """The plan's bounded tables (before/after balances, per day, per voucher…) as CSV evidence files."""
        assert self.evidence_dir is not None
        for name, frame in plan.frames.items():
            if frame is not None and not frame.empty and name.replace("_", "").isalnum():
                frame.to_csv(self.evidence_dir / f"{name}.csv", index=False)

    def _production_guard(self, database: str) -> None:
        marked = self.params.production or os.environ.get(PRODUCTION_ENV, "").strip().lower() in (
            "1", "true", "yes", "production")
        if marked and self.params.mode == "execute" and self.params.confirm_target != database:
            raise PolicyAbort(
                f"the target is marked production ({PRODUCTION_ENV} or production=true); execute needs confirm_target "
                f"(--confirm-target) naming the database {database!r}")

    def execute(self, plan: Plan | None = None) -> ApplyResult | None:
        """In execute mode with an approved plan id: lock, recompute, compare, apply, check, COMMIT."""
        if self.params.mode != "execute":
            shown = plan or self.plan
            pid = shown.plan_id if shown else "<plan id>"
            print(f"review mode: nothing was changed. To apply this plan run with mode=execute "
                  f"approved_plan={pid} (CLI: --execute --approve {pid}).", flush=True)
            return None
        with self._step("execute"):
            approved = self.params.approved_plan
            if self.in_notebook and not self._recorded_by_runner():
                # papermill by hand or JupyterLab: a committed change would have no manifest and no place in the
                # incident's chain. Nothing has touched the database yet.
                raise ApprovalError(
                    "an execute from a notebook must run through the CLI, which records it in the incident's "
                    f"evidence chain; nothing was changed. Run: {self.runner_command(approved)}")
            if not approved:
                raise ApprovalError("mode=execute needs approved_plan: run a review first and pass its plan id "
                                    "(CLI: --approve PLAN_ID)")
            self._require_backup()
            p = self.params
            # a procedure may need a step with no session of ours on the target (rehearsal: CREATE DATABASE …
            # TEMPLATE); it returns the cleanup to run if the execute fails before apply took over
            cleanup = self.proc.before_transaction(self.engine, p)
            self.progress(f"opening the write transaction (lock_timeout {p.lock_timeout}, "
                          f"statement_timeout {p.statement_timeout})")
            before_id: str | None = None
            xid: int | None = None
            try:
                with db.write_transaction(self.engine, lock_timeout_ms=p.lock_timeout_ms(),
                                          statement_timeout_ms=p.statement_timeout_ms(),
                                          exclusive_key=f"runbook:{self.name}") as conn:
                    info = db.server_info(conn)
                    self.server = info.as_dict()
                    self.state["database"] = self.server
                    # the transaction's id: after a failure, the server itself says whether it was rolled back
                    xid = int(conn.exec_driver_sql("select txid_current()").scalar_one())
                    self.state["transaction_id"] = xid
                    if not self.proc.writes:  # verify, backup, rehearsal: the target is only read
                        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    self._production_guard(info.database)
                    names = self.names = self._resolve(conn)
                    faults.hit("before_lock")
                    self.progress("locking the affected rows")
                    self.proc.lock(conn, p, names)
                    faults.hit("after_lock")
                    self.progress("recomputing the plan under the locks")
                    plan2 = self._plan(conn, names, detail=False)
                    before_id = plan2.plan_id
                    self.state["plan_id_at_execute"] = plan2.plan_id
                    if plan2.changes_nothing:
                        result = ApplyResult(changed=False, counts={},
                                             messages=["nothing to do: the approved change is already applied"])
                    elif (self.state.get("backup") or {}).get("not_needed"):
                        raise BackupRequiredError(
                            f"{self.name} had nothing to do when the backup was checked, but now has: review again "
                            "(nothing was changed)")
                    elif plan2.plan_id != approved:
                        raise ApprovalError(
                            f"the plan changed since it was approved (approved {approved}, now {plan2.plan_id}): "
                            "the data moved; nothing was changed — review again and approve the new plan id")
                    else:
                        self.progress("applying set-based statements")
                        result = self.proc.apply(conn, p, names, plan2)
                        faults.hit("after_apply")
                        self.progress("checking invariants before COMMIT")
                        self.proc.check(conn, p, names, plan2, result)
                        faults.hit("before_commit")
                    self.plan = plan2
            except BaseException:
                self.state["rolled_back"] = self._check_rolled_back(before_id, xid)
                raise
            finally:
                if cleanup is not None:
                    with contextlib.suppress(Exception):  # never hides the run's own outcome
                        cleanup()
            faults.hit("after_commit")
            self.result = result
            self.state["committed"] = result.changed
            self.state["counts"] = jsonable(result.counts)
            self.state["messages"] = result.messages
            for m in result.messages:
                self.progress(m)
        self._refresh_summary()
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
        """After a failed execute, prove the database is as before: the server's own record of the transaction
        (``txid_status``: aborted, not committed), and the plan recomputed now equal to the plan under the locks.
        Application writes after the failure can change the plan; the transaction status is then what counts."""
        if before_id is None and xid is None:
            return {"checked": True, "rolled_back": True, "how": "the failure came before any statement changed data"}
        status: str | None = None
        now_id: str | None = None
        try:
            with db.read_only(self.engine) as conn:
                if xid is not None:
                    status = conn.execute(sa.text("select txid_status(:x)"), {"x": xid}).scalar()
                if before_id is not None:
                    now_id = self._plan(conn, self._resolve(conn), detail=False).plan_id
        except Exception as exc:  # noqa: BLE001 - reported, not raised over the original error
            return {"checked": False, "rolled_back": None, "how": f"could not re-check: {redact_text(str(exc))[:300]}"}
        how = []
        if xid is not None:
            how.append(f"transaction {xid} is {status or 'unknown'} (txid_status)")
        if before_id is not None:
            how.append(f"plan recomputed after the failure: {now_id} (under the locks: {before_id})"
                       + ("" if now_id == before_id else "; it differs: other sessions wrote since"))
        if status in ("aborted", "committed"):
            rolled_back: bool | None = status == "aborted"
        else:  # no transaction id, or one too old to know: the plan comparison decides
            rolled_back = now_id == before_id if before_id is not None else None
        return {"checked": rolled_back is not None, "rolled_back": rolled_back, "how": "; ".join(how)}

    def _require_backup(self) -> None:
        """Destructive executes need a recent backup of their tables in this incident, or a recorded override."""
        from . import backups

        p = self.params
        if not self.proc.is_destructive(p):
            return
        # a procedure may tell cheaply that the execute has nothing to do (full-rollback run again): no backup needed;
        # execute re-checks under the locks that the plan is indeed empty
        with db.read_only(self.engine) as conn:
            if self.proc.nothing_to_do(conn, p, self._resolve(conn)):
                self.state["backup"] = {"backup": None, "not_needed": "nothing to do"}
                self.progress("backup: not needed, nothing to do")
                return
        if not isinstance(p, params_mod.DestructiveParams):
            raise TypeError(f"{self.name} is destructive: its Params must derive from params.DestructiveParams")
        reason = p.backup_override_reason
        if self.evidence_dir is None:
            if not reason:
                raise BackupRequiredError(
                    f"{self.name} deletes or overwrites data and this run has no incident folder to find a backup "
                    "in: run it with `runbook run --incident ID` after `runbook run backup`, or pass "
                    "backup_override_reason (recorded)")
            self.state["backup"] = {"backup": None, "override_reason": reason}
            return
        with db.read_only(self.engine) as conn:
            fp = db.server_info(conn).fingerprint
            names = self._resolve(conn)
        # the tables of this very execute (restore: the tables chosen from the backup)
        tables = [names.table_name(m) for m in self.proc.guarded_tables(p)]
        found = backups.require_recent_backup(
            self.evidence_dir.parent, tables, fp, dt.timedelta(hours=p.backup_max_age_hours), reason,
            restoring=self.proc.restoring(p))
        self.state["backup"] = jsonable(found)
        self.progress(f"backup: {found.get('backup') or 'none, override: ' + str(found.get('override_reason'))}")

    def verify(self) -> VerifyResult:
        """Post-conditions of this procedure plus the general orphan/invariant checks, read-only."""
        with self._step("verify"):
            self.progress("verifying (read-only)")
            with db.read_only(self.engine) as conn:
                names = self.names or self._resolve(conn)
                result = self.proc.verify(conn, self.params, names, self.plan)
                if self.params.mode == "execute" and self.proc.wants_shared_checks(self.params):
                    from . import checks

                    general = checks.run_all(conn, names, sample_rows=self.params.sample_rows)
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
        self.state["finished_at"] = _now()
        self._write_state()
        self._refresh_summary()
        err = self.state.get("error") or {}
        if err.get("type") == VerificationFailed.__name__ and err.get("step") == "verify":
            raise VerificationFailed(str(err["message"]).removeprefix(f"{VerificationFailed.__name__}: "))
        return FinishedRun(self.state, evidence_dir=self.evidence_dir)

    # ----------------------------------------------------------------------------------------- display
    def summary_html(self) -> str:
        """The ten-second summary: what was found, what would change, what was changed."""
        s = self.state
        rows = [("procedure", self.name), ("mode", s.get("mode")), ("status", s.get("status"))]
        if self.server:
            rows.append(("database", f"{self.server['database']} (PostgreSQL {self.server['server_version']})"))
        if s.get("plan_id"):
            rows.append(("plan id", s["plan_id"]))
        for k, v in (s.get("summary") or {}).items():
            if k != "nothing_to_do":
                rows.append((k, v))
        if s.get("mode") == "execute" and "committed" in s:
            rows.append(("changed", "yes, committed" if s["committed"] else "nothing (already applied)"))
            for k, v in (s.get("counts") or {}).items():
                rows.append((f"done: {k}", v))
        if "verification_passed" in s:
            pending = len(s.get("verification_pending") or [])
            if not s["verification_passed"]:
                failed = [c["name"] for c in s.get("verification") or [] if not c["passed"] and not c.get("pending")]
                rows.append(("verification", "CHECKS FAILED: " + ", ".join(failed)))
            else:
                rows.append(("verification", "all checks passed" if not pending else
                             f"no check failed; {pending} pending (apply after execute)"))
        if s.get("error"):
            rb = s.get("rolled_back") or {}
            rows.append(("error", s["error"]["message"]))
            if rb:
                rows.append(("rolled back", f"{rb.get('rolled_back')} — {rb.get('how')}"))
        body = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
            f"<td style='text-align:right;font-family:monospace'>{html.escape(str(v))}</td></tr>" for k, v in rows)
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in s.get("warnings") or [])
        color = {"succeeded": "#2e7d32", "running": "#1565c0"}.get(str(s.get("status")), "#c62828")
        return (f"<div style='border-left:6px solid {color};padding:0.5em 1em'>"
                f"<b>Summary — {html.escape(self.name)}</b><table>{body}</table>"
                + (f"<b>Warnings</b><ul style='color:#b71c1c'>{warn}</ul>" if warn else "") + "</div>")

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
