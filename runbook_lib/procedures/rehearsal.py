"""Rehearsal (the guide's "Testing Rollback"): run a procedure on a scratch copy of the target, never on it.

The guide says to test the rollback "on staging first" without saying how to get a staging copy that matches
production. Here the copy is made from the target itself — ``CREATE DATABASE … TEMPLATE`` when nobody else is
connected to it, else ``pg_dump | pg_restore`` — the named procedure runs there in execute mode with its plan
approved automatically, the verification checks run, and the figures are shown side by side with the live
database, which is only read (its checksums are compared before and after). The copy is dropped unless
``keep_copy``.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NotRequired, TypedDict

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator
from sqlalchemy.engine import Connection

from .. import backups, db, pgtools, procedures
from .. import params as params_mod
from ..errors import InvariantError
from ..names import NameMap
from ..params import CommonParams
from . import register
from .base import ApplyResult, Check, Plan, Procedure, Steps, VerifyResult, plan_hash

NAME = "rehearsal"
OVERRIDE = "rehearsal on a scratch copy: the live database is not written"


class Params(CommonParams):
    procedure: ClassVar[str] = NAME

    rehearse: str = Field("token-reversal", description="the procedure to rehearse, e.g. token-reversal")
    rehearse_parameters: dict[str, Any] = Field({}, description="its parameters, as in its parameters file (mode and approval are set by the rehearsal)")
    keep_copy: bool = Field(False, description="keep the scratch copy afterwards (its name is in the evidence) instead of dropping it")

    @field_validator("rehearse")
    @classmethod
    def _proc(cls, v: str) -> str:
        proc = procedures.get(v)
        if not proc.writes:
            raise ValueError(f"{proc.NAME} cannot be rehearsed (it does not change the database)")
        return str(proc.NAME)




class RehearsalDetails(TypedDict):
    """What the rehearsal's plan hands to apply/check/verify: the inner parameters, then the live checksums."""

    #: the rehearsed procedure's parameter values (validated against its ``Params``): values of any parameter, so
    #: ``Any``
    inner: dict[str, Any]
    #: set by :func:`apply`: ``backups.table_checksums`` of the live tables before and after the rehearsal
    #: (table -> {"rows": int, "md5": str})
    live_before: NotRequired[dict[str, dict[str, Any]]]
    live_after: NotRequired[dict[str, dict[str, Any]]]


def _inner_params(params: Params) -> dict[str, Any]:
    values = {k: v for k, v in params.rehearse_parameters.items()
              if k not in ("mode", "approved_plan", "evidence_dir", "confirm_target", "production")}
    proc = procedures.get(params.rehearse)
    if issubclass(proc.Params, params_mod.DestructiveParams):
        values.setdefault("backup_override_reason", OVERRIDE)
    params_mod.validate(proc.Params, values)  # bad inner parameters fail the review, one line
    return values


def _for_the_copy(conn: Connection, params: Params, inner: dict[str, Any]) -> dict[str, Any]:
    """Inner parameters as they apply on the copy (the rehearsed procedure's ``for_a_copy``)."""
    incident = Path(params.evidence_dir).parent if params.evidence_dir else None
    return procedures.get(params.rehearse).for_a_copy(conn, inner, incident)


def _tables(params: Params, names: NameMap) -> list[str]:
    return [names.table_name(m) for m in procedures.get(params.rehearse).tables]


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan[RehearsalDetails]:
    inner = _inner_params(params)
    info = db.server_info(conn)
    size = conn.execute(sa.text("select pg_database_size(current_database())")).scalar_one()
    others = conn.execute(sa.text("select count(*) from pg_stat_activity where datname = current_database() "
                                  "and pid <> pg_backend_pid() and backend_type = 'client backend'")).scalar_one()
    method = ("CREATE DATABASE … TEMPLATE (nobody else is connected now)" if others == 0
              else f"pg_dump | pg_restore ({others} other sessions are connected)")
    summary = {"procedure to rehearse": params.rehearse, "target (read only)": info.database,
               "database size (MB)": round(int(size) / 1e6, 1), "copy by": method,
               "keep the copy": params.keep_copy}
    return Plan(NAME, plan_hash(NAME, params.rehearse, inner, info.fingerprint), summary,
                frames={"parameters": pd.DataFrame([{"parameter": k, "value": str(v)} for k, v in inner.items()])},
                details=RehearsalDetails(inner=inner))




#: copies made by :func:`before_transaction`, by id of the run's parameters, until apply takes them over
_PREPARED: dict[int, str] = {}


def before_transaction(engine: sa.engine.Engine, params: Params) -> Callable[[], None] | None:
    """Called by the driver before it opens its transaction on the target, with no session of ours open there.

    ``CREATE DATABASE … TEMPLATE`` refuses a source that has any other session — the runbook's own write
    transaction included — so the TEMPLATE copy can only be made here. It is made when nobody is connected to
    the target and the approved plan id is the current one; otherwise :func:`apply` falls back to
    ``pg_dump | pg_restore``. Returns the cleanup the driver calls if the run fails before apply took the copy.
    """
    with db.read_only(engine) as conn:
        current = plan(conn, params, NameMap()).plan_id
        source = conn.execute(sa.text("select current_database()")).scalar_one()
    engine.dispose()
    if current != params.approved_plan:
        return None  # the driver refuses the run with the usual message; no copy wasted
    name = f"rb_rehearsal_{uuid.uuid4().hex[:10]}"
    admin = db.create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as a:
            busy = a.execute(sa.text("select count(*) from pg_stat_activity where datname = :d"),
                             {"d": source}).scalar_one()
            if busy:
                return None  # TEMPLATE would wait, then fail: apply copies with pg_dump instead
            a.exec_driver_sql(f"CREATE DATABASE {db.quote_ident(name)} TEMPLATE {db.quote_ident(source)}")
    except sa.exc.DBAPIError:
        return None  # a session arrived meanwhile: apply copies with pg_dump instead
    finally:
        admin.dispose()
    _PREPARED[id(params)] = name

    def cleanup() -> None:
        left = _PREPARED.pop(id(params), None)
        if left is not None:
            db.run_autocommit(engine.url.set(database="postgres"),
                              f"DROP DATABASE IF EXISTS {db.quote_ident(left)} WITH (FORCE)")

    return cleanup


def _admin(conn: Connection) -> sa.engine.Engine:
    return db.create_engine(conn.engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool)


def make_copy(conn: Connection, name: str) -> str:
    """Copy the target into a new database ``name`` with ``pg_dump | pg_restore``; returns how.

    (``conn`` is a session on the target, so ``CREATE DATABASE … TEMPLATE`` is impossible here: that copy is
    made by :func:`before_transaction`.) A copy that fails half-way is dropped, never left behind."""
    admin = _admin(conn)
    try:
        with admin.connect() as a:
            a.exec_driver_sql(f"CREATE DATABASE {db.quote_ident(name)}")
    finally:
        admin.dispose()
    try:
        major = pgtools.server_major(conn)
        url = conn.engine.url.render_as_string(hide_password=False)
        copy_url = conn.engine.url.set(database=name).render_as_string(hide_password=False)
        with tempfile.TemporaryDirectory(prefix="rb-rehearsal-") as tmp:
            archive = Path(tmp) / "copy.dump"
            dump = pgtools.find_tool("pg_dump", major)
            pgtools.run_tool(dump, url, ["--format=custom", f"--file={archive}", "--no-owner", "--no-acl"])
            # one transaction, stopping at the first error; through psql when only a newer pg_restore exists
            pgtools.pg_restore(copy_url, archive, ["--no-owner", "--no-acl"], major, at_least=dump.major)
    except BaseException:
        drop_copy(conn, name)
        raise
    return "pg_dump | pg_restore"


def drop_copy(conn: Connection, name: str) -> None:
    db.run_autocommit(conn.engine.url.set(database="postgres"),
                      f"DROP DATABASE IF EXISTS {db.quote_ident(name)} WITH (FORCE)")


def _sums(url: str, schema: str, tbls: list[str]) -> dict[str, dict[str, Any]]:
    eng = db.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            return backups.table_checksums(c, schema, tbls)
    finally:
        eng.dispose()


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan[RehearsalDetails]) -> ApplyResult:
    from ..run import Run

    tbls = _tables(params, names)
    live_url = conn.engine.url.render_as_string(hide_password=False)
    live_before = backups.table_checksums(conn, names.db_schema, tbls)
    prepared = _PREPARED.pop(id(params), None)  # from now on the copy is apply's to drop or keep
    if prepared is not None:
        name, how = prepared, "template"
    else:
        name = f"rb_rehearsal_{uuid.uuid4().hex[:10]}"
        how = make_copy(conn, name)
    copy_url = conn.engine.url.set(database=name).render_as_string(hide_password=False)
    try:
        copy_before = _sums(copy_url, names.db_schema, tbls)
        # the copy's URL has no Prisma ?schema=: the schema resolved for the live run applies to the copy too
        inner = {"db_schema": params.db_schema, **_for_the_copy(conn, params, plan.details["inner"])}
        review = Run(params.rehearse, inner, url=copy_url).review()
        # the copy is the scratch database: confirm it as the target (a production mark is about the live one)
        ex = Run(params.rehearse, {**inner, "mode": "execute", "approved_plan": review.plan_id,
                                   "confirm_target": name}, url=copy_url)
        result = ex.execute()
        verification = ex.verify()
        copy_after = _sums(copy_url, names.db_schema, tbls)
    finally:
        if not params.keep_copy:
            drop_copy(conn, name)
    live_after = _sums(live_url, names.db_schema, tbls)
    rows = [{"table": t, "live rows": live_before[t]["rows"], "copy rows before": copy_before[t]["rows"],
             "copy rows after": copy_after[t]["rows"],
             "copy changed": copy_after[t]["md5"] != copy_before[t]["md5"],
             "live unchanged": live_after[t] == live_before[t]} for t in tbls]
    summary = pd.DataFrame([{"figure": k, "planned (live data)": v} for k, v in review.summary.items()
                            if k != "nothing_to_do"])
    done = pd.DataFrame([{"figure": k, "done on the copy": str(v)} for k, v in (result.counts if result else {}).items()])
    counts: dict[str, Any] = {"copy": name, "copy_kept": params.keep_copy, "copied_by": how,
                              "rehearsed_plan_id": review.plan_id, "verification_passed": verification.passed,
                              "checks_failed": [c.name for c in verification.checks if not c.passed],
                              "live_unchanged": all(r["live unchanged"] for r in rows)}
    plan.details["live_before"] = live_before
    plan.details["live_after"] = live_after
    return ApplyResult(True, counts, [f"rehearsed {params.rehearse} on {name} ({how}); verification "
                                      f"{'passed' if verification.passed else 'FAILED'}; live database unchanged: "
                                      f"{counts['live_unchanged']}"],
                       frames={"side_by_side": pd.DataFrame(rows), "planned": summary, "done": done,
                               "checks": verification.table()})


def check(conn: Connection, params: Params, names: NameMap, plan: Plan[RehearsalDetails],
          result: ApplyResult) -> None:
    if plan.details.get("live_before") != plan.details.get("live_after"):
        raise InvariantError("the live database changed during the rehearsal (the application kept writing?); "
                             "the figures are not comparable — run it again in a quiet moment")


def verify(conn: Connection, params: Params, names: NameMap, plan: Plan[RehearsalDetails] | None) -> VerifyResult:
    if params.mode != "execute" or plan is None or "live_before" not in plan.details:
        return VerifyResult(checks=[Check("review only: nothing rehearsed", True, 0, "")])
    now = backups.table_checksums(conn, names.db_schema, _tables(params, names))
    same = now == plan.details["live_before"]
    return VerifyResult(checks=[Check("the live database was not written (checksums before and after)", same, 0,
                                      "identical" if same else "CHANGED")])


@register
class Rehearsal(Procedure):
    """Rehearsal: the target is only read (the driver makes its transaction READ ONLY); the copy is written."""

    NAME = NAME
    NOTEBOOK = "rehearsal.ipynb"
    TITLE = "Run a procedure on a scratch copy of the target (never the target) and compare the figures"
    GUIDE_SECTION = "Testing Rollback"
    Params = Params
    steps = Steps(plan=plan, apply=apply, check=check, verify=verify)
    writes = False  # only the scratch copy is written
    #: the live database is only read: the shared checks would judge its (often damaged) state, not the rehearsal;
    #: the copy's own verification is in the result
    shared_checks = False

    def before_transaction(self, engine: sa.engine.Engine, params: Any) -> Callable[[], None] | None:
        return before_transaction(engine, params)
