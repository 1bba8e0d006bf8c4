"""Migration recovery (the guide's "If Migration Failed Mid-Way"): see the state, then resolve it safely.

Where the guide is wrong, and what this procedure does instead:

* It says to run ``npx prisma migrate reset``. That **drops the whole database** and re-applies every
  migration: every user, ledger row and balance is gone. This procedure never runs it, and proposes it only
  for a database marked disposable (``disposable: true`` *and* ``confirm_target`` naming the database).
* It does not say how to find out what a failed migration already did. Here the failed migration's
  ``migration.sql`` is split into statements and each is checked against the catalog.
* The fix Prisma offers is ``prisma migrate resolve``: ``--rolled-back`` (after undoing the steps that took
  effect) or ``--applied`` (after completing the rest by hand). Execute mode does exactly what it does to
  ``_prisma_migrations``, optionally after running compensating SQL, all in one transaction.
"""

# ruff: noqa: S608  - identifiers are quoted; values are bind parameters

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypedDict

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from ..errors import InvariantError, NotFoundError, ParameterError, PolicyAbort
from ..names import NameMap
from ..params import CommonParams, recorded_reason
from ..prisma import history
from ..prisma import status as st
from . import register
from .base import ApplyResult, Check, Plan, Procedure, Steps, VerifyResult, plan_hash

NAME = "migration-recovery"


class Params(CommonParams):
    procedure: ClassVar[str] = NAME

    migrations_dir: str | None = Field(None, description="the app's prisma/migrations folder (recommended: pending, modified and missing states need it)")
    migration_name: str | None = Field(None, description="the migration to resolve (default: the one failed migration, when there is exactly one)")
    action: Literal["none", "rolled_back", "applied"] = Field("none", description="what execute does: none (report only), rolled_back or applied (as prisma migrate resolve)")
    compensating_sql: str | None = Field(None, description="a .sql file undoing (rolled_back) or completing (applied) the steps, run in the same transaction")
    propose_reset: bool = Field(False, description="the guide's prisma migrate reset: proposed only when the database is disposable and confirmed")
    disposable: bool = Field(False, description="the database may be thrown away (with confirm_target naming it)")
    override_reason: str | None = Field(None, description="action applied with steps missing and no compensating_sql: refused unless this reason is given (recorded)")

    @field_validator("migrations_dir")
    @classmethod
    def _folder(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not Path(v).is_dir():
            raise ValueError(f"folder {v!r} does not exist (give the app's prisma/migrations folder)")
        return v

    @field_validator("compensating_sql")
    @classmethod
    def _sql_file(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not Path(v).is_file():
            raise ValueError(f"file {v!r} does not exist")
        return v

    @field_validator("override_reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        return recorded_reason(v)

    @field_validator("migration_name")
    @classmethod
    def _mname(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not 1 <= len(v) <= 255 or any(c in v for c in "/\\\0"):
            raise ValueError(f"{v!r} is not a migration folder name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.compensating_sql and self.action == "none":
            raise ValueError("compensating_sql needs action rolled_back or applied")
        if self.action == "applied" and not self.migrations_dir:
            raise ValueError("action applied needs migrations_dir: the row records the file's checksum")
        return self


class MigrationRecoveryDetails(TypedDict):
    """What the plan hands to apply/check/verify: the migration to resolve, its steps, the compensating SQL."""

    target: st.MigrationStatus | None  # None: no failed migration (and none named); the plan then changes nothing
    effects: list[st.StatementEffect]  # the target's migration.sql steps checked in the catalog (may be empty)
    compensating: bytes  # the compensating_sql file's content; b"" when none is given
    reset: dict[str, str]  # the `prisma migrate reset` proposal (database, message); {} unless propose_reset


def _table(conn: Connection, names: NameMap) -> str:
    table = history.history_table(conn, names.db_schema)
    if table is None:
        raise NotFoundError(f"no _prisma_migrations table in schema {names.db_schema!r}: this database is not "
                            "managed by prisma migrate (check DATABASE_URL and db_schema)")
    return table


def _target(statuses: list[st.MigrationStatus], params: Params) -> st.MigrationStatus | None:
    if params.migration_name:
        found = [s for s in statuses if s.name == params.migration_name]
        if not found:
            raise NotFoundError(f"migration {params.migration_name!r} is neither in _prisma_migrations nor in the "
                                "migrations folder", names=[params.migration_name])
        return found[0]
    failed = [s for s in statuses if s.status == "failed"]
    if len(failed) > 1 and params.action != "none":
        raise ParameterError(f"{len(failed)} failed migrations ({', '.join(s.name for s in failed)}): name one with "
                             "migration_name", "migration_name")
    return failed[0] if failed else None


def _script(params: Params, name: str) -> bytes | None:
    if not params.migrations_dir:
        return None
    p = Path(params.migrations_dir) / name / "migration.sql"
    return p.read_bytes() if p.is_file() else None


def plan(conn: Connection, params: Params, names: NameMap,
         detail: bool = True) -> Plan[MigrationRecoveryDetails]:
    _table(conn, names)
    folder = Path(params.migrations_dir) if params.migrations_dir else None
    statuses = st.migration_statuses(conn, names.db_schema, folder)
    target = _target(statuses, params)
    warnings: list[str] = []
    frames: dict[str, pd.DataFrame] = {"migrations": pd.DataFrame([s.as_row() for s in statuses])}
    effects = _target_effects(conn, params, names, target, warnings, frames)
    summary = _status_summary(statuses, target, effects, warnings)
    summary["action"] = params.action
    do_nothing = _action_warnings(params, target, effects, warnings)
    reset: dict[str, str] = {}
    if params.propose_reset:
        reset = _reset_proposal(conn, params)
        warnings.append(reset["message"])
    comp = Path(params.compensating_sql).read_bytes() if params.compensating_sql else b""
    if params.action == "applied" and effects:
        summary["steps missing"] = len(_missing(effects))
    digest = {"target": target.as_row() if target else None, "effects": [e.as_row() for e in effects],
              "action": params.action, "compensating_sql": history.checksum(comp) if comp else None,
              "override_reason": params.override_reason}
    summary["nothing_to_do"] = do_nothing
    return Plan(NAME, plan_hash(NAME, digest), summary, frames, warnings,
                details=MigrationRecoveryDetails(target=target, effects=effects, compensating=comp, reset=reset))


def _target_effects(conn: Connection, params: Params, names: NameMap, target: st.MigrationStatus | None,
                    warnings: list[str], frames: dict[str, pd.DataFrame]) -> list[st.StatementEffect]:
    """Which steps of the target's migration.sql are in the database (the ``steps`` frame); none to list when
    there is no target, it needs no steps checked, or its script is not available (a warning)."""
    # the steps of the failed migration; with action applied also those of a pending or rolled-back one (marking
    # it applied tells `prisma migrate deploy` that every step is in the database)
    if target is None or not (target.status == "failed" or (params.action == "applied"
                                                            and target.status in ("pending", "rolled back"))):
        return []
    script = _script(params, target.name)
    if script is None:
        warnings.append(f"{target.name} failed, but its migration.sql is not available (give migrations_dir): "
                        "the steps that took effect cannot be listed")
        return []
    effects = st.statement_effects(conn, script.decode("utf-8"), names.db_schema)
    frames["steps"] = pd.DataFrame([e.as_row() for e in effects])
    return effects


def _status_summary(statuses: list[st.MigrationStatus], target: st.MigrationStatus | None,
                    effects: list[st.StatementEffect], warnings: list[str]) -> dict[str, Any]:
    """Migrations per status, the target and its steps; warnings for failed and modified migrations."""
    counts = {k: sum(1 for s in statuses if s.status == k) for k in st.NEXT_ACTION}
    summary: dict[str, Any] = {f"migrations {k}": v for k, v in counts.items() if v}
    if target is not None:
        summary["migration to resolve"] = target.name
        summary["its status"] = target.status
    if effects:
        summary["steps that took effect"] = sum(1 for e in effects if e.took_effect)
        summary["steps not applied"] = sum(1 for e in effects if e.took_effect is False)
        summary["steps unknown (check by hand)"] = sum(1 for e in effects if e.took_effect is None)
    if counts["failed"]:
        warnings.append("a failed migration blocks `prisma migrate deploy` (error P3009) until it is resolved")
    if counts["modified"]:
        warnings.append("modified migrations: `prisma migrate dev` reports that they were changed after being "
                        "applied and wants to reset the database; restore the files instead")
    return summary


def _action_warnings(params: Params, target: st.MigrationStatus | None, effects: list[st.StatementEffect],
                     warnings: list[str]) -> bool:
    """Whether the action has nothing to do, with its warnings; refuses an action Prisma would refuse."""
    if params.action == "none":
        return True
    do_nothing = False
    done_state = "rolled back" if params.action == "rolled_back" else "applied"
    if target is None:
        do_nothing = True
        warnings.append("no failed migration to resolve: nothing to do")
    elif target.status == done_state or (params.action == "applied" and target.status == "modified"):
        do_nothing = True  # a second run: Prisma would say P3008 / P3012; the runbook changes nothing
        warnings.append(f"{target.name} is already {target.status}: nothing to do")
    elif params.action == "rolled_back" and target.status != "failed":
        code = "P3011" if target.status == "pending" else "P3012"
        raise PolicyAbort(f"{target.name} is {target.status}, not failed: `migrate resolve --rolled-back` only "
                          f"applies to failed migrations (Prisma error {code}); choose the failed migration")
    elif params.action == "applied" and _script(params, target.name) is None:
        raise NotFoundError(f"{target.name}/migration.sql is not in {params.migrations_dir}")
    missing = _missing(effects)
    if params.action == "applied" and not do_nothing and missing and target is not None:
        warnings.append(_missing_steps_warning(params, target.name, missing))
    if params.action == "applied" and not do_nothing and any(e.took_effect is None for e in effects):
        warnings.append("some steps cannot be checked in the catalog (data changes, unrecognised DDL): check "
                        "them by hand before marking the migration applied")
    if params.action == "rolled_back" and effects and any(e.took_effect for e in effects) \
            and not params.compensating_sql:
        warnings.append("steps of this migration took effect and no compensating_sql is given: after marking it "
                        "rolled back, `migrate deploy` will re-run it and fail on the objects that exist")
    return do_nothing


def _missing_steps_warning(params: Params, name: str, missing: list[str]) -> str:
    """action=applied with steps not in the database: what completes them, or the recorded override."""
    listed = "; ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
    if params.compensating_sql:
        return (f"{len(missing)} steps of {name} are not in the database ({listed}): "
                "compensating_sql must complete them; checked again before COMMIT")
    if params.override_reason:
        return (f"{len(missing)} steps of {name} are not in the database ({listed}); marked "
                f"applied anyway, override recorded: {params.override_reason}")
    return (f"{len(missing)} steps of {name} are not in the database ({listed}): execute "
            "refuses to mark it applied without compensating_sql completing them, or override_reason")


def _missing(effects: list[st.StatementEffect]) -> list[str]:
    """The steps the catalog shows are not in effect, as 'step N: kind object'."""
    return [f"step {e.index}: {e.kind} {e.object}" for e in effects if e.took_effect is False]


def _reset_proposal(conn: Connection, params: Params) -> dict[str, str]:
    db = conn.execute(sa.text("select current_database()")).scalar_one()
    if not params.disposable or params.confirm_target != db:
        raise PolicyAbort(
            f"refusing to propose `prisma migrate reset` for {db!r}: it drops the whole database (every user, "
            "ledger row and balance). Only for a disposable database: disposable=true and confirm_target naming it")
    return {"database": db, "message": f"{db!r} is marked disposable: `npx prisma migrate reset` would drop and "
            "recreate it from the migrations folder. This runbook never runs it; run it yourself if you mean it."}


def lock(conn: Connection, params: Params, names: NameMap) -> None:
    conn.execute(sa.text(f"lock table {_table(conn, names)} in exclusive mode"))


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan[MigrationRecoveryDetails]) -> ApplyResult:
    target = plan.details["target"]
    assert target is not None, "the driver applies only a plan that changes something: it has a target"
    counts: dict[str, Any] = {"migration": target.name}
    comp: bytes = plan.details["compensating"]
    missing = _missing(plan.details["effects"])
    if params.action == "applied" and missing and not comp and not params.override_reason:
        raise PolicyAbort(f"{target.name}: {len(missing)} steps are not in the database ("
                          + "; ".join(missing[:5]) + (" …" if len(missing) > 5 else "") + "); marking it applied "
                          "would hide them from `prisma migrate deploy`. Nothing was changed. Give compensating_sql "
                          "completing them, or override_reason (recorded) to mark it applied anyway",
                          missing=missing)
    if params.action == "applied" and missing and params.override_reason:
        counts["override_reason"] = params.override_reason
        counts["steps_missing_marked_applied"] = len(missing)
    if comp:
        statements = st.split_statements(comp.decode("utf-8"))
        for stmt in statements:
            conn.exec_driver_sql(stmt)
        counts["compensating_statements"] = len(statements)
    if params.action == "rolled_back":
        counts["rows_marked_rolled_back"] = st.mark_rolled_back(conn, names.db_schema, target.name)
    else:
        script = _script(params, target.name)
        assert script is not None
        row = st.mark_applied(conn, names.db_schema, target.name, script)
        counts["rows_marked_rolled_back"] = row["failed_rows_marked_rolled_back"]
        counts["row_inserted"] = row["id"]
    return ApplyResult(True, counts, [f"{target.name} marked {params.action.replace('_', ' ')} in "
                                      "_prisma_migrations, as `prisma migrate resolve` does"])


def _status_of(conn: Connection, params: Params, names: NameMap, name: str) -> str:
    folder = Path(params.migrations_dir) if params.migrations_dir else None
    return next((s.status for s in st.migration_statuses(conn, names.db_schema, folder) if s.name == name), "absent")


def check(conn: Connection, params: Params, names: NameMap, plan: Plan[MigrationRecoveryDetails],
          result: ApplyResult) -> None:
    target = plan.details["target"]
    assert target is not None, "the driver applies only a plan that changes something: it has a target"
    want = "rolled back" if params.action == "rolled_back" else "applied"
    now = _status_of(conn, params, names, target.name)
    if now != want:
        raise InvariantError(f"{target.name} is {now} after the change, expected {want}; rolled back")
    if result.counts.get("rows_marked_rolled_back", 0) < (1 if target.status == "failed" else 0):
        raise InvariantError(f"no failed row of {target.name} was marked rolled back; rolled back")
    if params.action == "applied" and plan.details["compensating"] and not params.override_reason:
        script = _script(params, target.name) or b""
        still = _missing(st.statement_effects(conn, script.decode("utf-8"), names.db_schema))
        if still:
            raise InvariantError(f"compensating_sql left {len(still)} steps of {target.name} missing ("
                                 + "; ".join(still[:5]) + "); rolled back: complete them in compensating_sql",
                                 missing=still)


def verify(conn: Connection, params: Params, names: NameMap,
           plan: Plan[MigrationRecoveryDetails] | None) -> VerifyResult:
    folder = Path(params.migrations_dir) if params.migrations_dir else None
    statuses = st.migration_statuses(conn, names.db_schema, folder)
    failed = [s.name for s in statuses if s.status == "failed"]
    checks = [Check("no failed migration blocks `prisma migrate deploy`", not failed, len(failed),
                    ", ".join(failed) or "none")]
    target = plan.details.get("target") if plan is not None else None
    if target is not None and params.mode == "execute" and params.action != "none":
        name = target.name
        want = "rolled back" if params.action == "rolled_back" else "applied"
        now = _status_of(conn, params, names, name)
        checks.append(Check(f"{name} is {want}", now == want, 0, f"status now: {now}"))
        if params.action == "rolled_back" and params.compensating_sql:
            left = [e for e in st.statement_effects(conn, (_script(params, name) or b"").decode(), names.db_schema)
                    if e.took_effect]
            checks.append(Check("no step of the rolled-back migration remains in effect", not left, len(left),
                                ", ".join(f"{e.kind} {e.object}" for e in left) or "none"))
    return VerifyResult(checks=checks)


@register
class MigrationRecovery(Procedure):
    """Migration recovery: resolves one failed Prisma migration (rolled back / applied) in ``_prisma_migrations``."""

    NAME = NAME
    NOTEBOOK = "migration_recovery.ipynb"
    TITLE = "Prisma migration state; resolve a failed migration (rolled back / applied), with compensating SQL"
    GUIDE_SECTION = "If Migration Failed Mid-Way"
    Params = Params
    steps = Steps(plan=plan, lock=lock, apply=apply, check=check, verify=verify)
