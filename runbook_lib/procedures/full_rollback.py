"""Full rollback (guide Steps 2 to 5): remove the voucher system from the database and from Prisma's view.

Where the guide is wrong or silent, and what this procedure does instead:

* Its fixed list of DROP statements misses everything else that depends on the voucher tables and enums:
  views, functions, triggers, foreign keys from other tables, columns of other tables typed with the enums.
  ``DROP … IF EXISTS`` then fails half-way, or ``CASCADE`` silently takes those objects with it. Here the
  objects are found in the catalog (:mod:`runbook_lib.catalog`), shown, ordered by the real dependency
  graph, and an unexpected dependent stops the run unless the operator names it in ``drop_dependents``.
* It runs the statements one by one. Here delete, drop tables and drop enums run in **one transaction**
  (PostgreSQL's DDL is transactional): a failure anywhere leaves the database exactly as it was.
* It says nothing about the token ledger. Voucher grants stay in ``TokenTransaction`` with a ``sourceId``
  naming a redemption that no longer exists. ``ledger_policy`` must be chosen: ``reverse`` (token-reversal
  logic, balances and ledger in the same transaction) or ``keep`` (recorded: counted in the summary, written
  to the migration's header and exported to the evidence folder).
* Step 4 edits schema.prisma by hand and Step 5 runs ``prisma generate``, but Prisma's migration history is
  left behind: the next ``prisma migrate deploy`` or ``migrate dev`` sees drift. Here the DDL that was run is
  recorded in ``_prisma_migrations`` inside the same transaction (Prisma's own checksum), and after COMMIT
  the migration folder and the edited schema are written (:func:`write_prisma_files`).

The Prisma side is in :mod:`.full_rollback_prisma`, the token ledger side in :mod:`.full_rollback_ledger`.
"""

# ruff: noqa: S608  - identifiers come from NameMap or the catalog (quoted); values are bind parameters

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypedDict

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from .. import catalog, faults
from ..db import quote_ident
from ..errors import InvariantError, ParameterError, PolicyAbort
from ..names import NameMap
from ..params import DestructiveParams, identifiers
from ..prisma import config as pconfig
from ..prisma import diff as pdiff
from ..prisma import edit as pedit
from ..prisma import history
from ..reversal import (
    LedgerMode,
    NegativePolicyNoSkip,
    ReversalOptions,
    ReversalPlan,
    abort_if_negative,
    apply_reversal,
    check_reversal,
    lock_reversal,
)
from ..reversal_sql import table_exists
from . import full_rollback_ledger as fledger
from . import full_rollback_prisma as fprisma
from . import register
from .base import VOUCHER_MODELS, ApplyResult, Check, Plan, Procedure, Steps, VerifyResult, plan_hash

# re-exported: the notebook calls full_rollback.show_prisma_side, the notebook and the tests write_prisma_files
from .full_rollback_prisma import show_prisma_side as show_prisma_side
from .full_rollback_prisma import write_prisma_files as write_prisma_files

NAME = "full-rollback"

#: fault point between two DROP statements (tests inject a failure there: RUNBOOK_FAULT=mid_ddl:raise)
MID_DDL = "mid_ddl"


class DropParams(DestructiveParams):
    """full-rollback's own parameters (what to drop, the Prisma side); :class:`Params` adds the reversal options."""

    ledger_policy: Literal["keep", "reverse"] | None = Field(None, description="required: reverse (voucher tokens taken back first) or keep (grants stay, their sourceId dangles)")
    drop_dependents: list[str] = Field([], description="unexpected dependent objects you accept to drop, as listed by the review")
    models: list[str] = Field(["Voucher", "VoucherRedemption"], description="the voucher models (tables) to drop")
    enums: list[str] = Field(["VoucherType", "VoucherStatus"], description="the voucher enums to drop")
    prisma_side: bool = Field(True, description="also edit schema.prisma and write and record the migration (needs prisma_schema)")
    prisma_config: str | None = Field(None, description="the app's prisma.config.ts (Prisma 7; default: next to prisma_schema or up to two folders above)")
    migration_name: str = Field("remove_voucher_system", description="name of the migration that records the removal")

    @field_validator("drop_dependents", "models", "enums", mode="before")
    @classmethod
    def _list(cls, v: Any) -> list[str]:
        if v is None or v == "":
            return []
        if isinstance(v, str):
            v = [s for s in (x.strip() for x in v.split(",")) if s]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise ValueError("must be a list of non-empty strings")
        if len(v) > 500:
            raise ValueError(f"{len(v)} entries is too many for one run (at most 500)")
        return [x.strip() for x in v]

    @field_validator("models", "enums")
    @classmethod
    def _identifiers(cls, v: list[str]) -> list[str]:
        return identifiers(v, "model, table or enum names")

    @field_validator("drop_dependents")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if len(x) > 300 or "--" in x or any(c in x for c in ";'\\") or not x.isprintable()]
        if bad:
            raise ValueError(f"{bad} are not object names as the review shows them (e.g. view public.voucher_stats)")
        return v

    @field_validator("prisma_config")
    @classmethod
    def _config(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not Path(v).is_file():
            raise ValueError(f"file {v!r} does not exist (give the app's prisma.config.ts)")
        return v

    @field_validator("migration_name")
    @classmethod
    def _mname(cls, v: str) -> str:
        history.check_name(v)
        return v

    @model_validator(mode="after")
    def _choices(self) -> Self:
        if self.ledger_policy is None:
            raise ValueError("'ledger_policy' is required: 'reverse' (take the granted tokens back first) or 'keep' "
                             "(ledger rows stay, their sourceId then names dropped redemptions)")
        if not self.models:
            raise ValueError("'models' must name at least one model to drop")
        if self.prisma_config and not self.prisma_schema:
            cfg = pconfig.read_config(self.prisma_config)
            if cfg.schema is None:
                raise ValueError(f"prisma_config {self.prisma_config!r} names no schema this tool understands "
                                 "(a string literal or path.join of literals); pass prisma_schema")
            if not cfg.schema.is_file():
                raise ValueError(f"prisma_config names the schema {str(cfg.schema)!r}, which is not a file (a schema "
                                 "folder cannot be edited here: pass prisma_schema naming the file with the voucher "
                                 "models, or prisma_side=false)")
            self.prisma_schema = str(cfg.schema)
        if self.prisma_side and not self.prisma_schema:
            raise ValueError("'prisma_schema' is required for the Prisma side (Steps 4-5): the path of schema.prisma; "
                             "or set prisma_side=false to change only the database")
        return self


class Params(ReversalOptions, DropParams):
    """Its own parameters first, then the reversal options (used with ``ledger_policy=reverse`` only)."""

    procedure: ClassVar[str] = NAME

    # these two say that they apply with ledger_policy=reverse only; no skip: a skipped user's grants would
    # keep their tokens while their vouchers are dropped
    ledger_mode: LedgerMode = Field("compensate", description="with ledger_policy reverse: compensate (reversing rows) or delete")
    negative_policy: NegativePolicyNoSkip = Field("allow", description="with ledger_policy reverse: allow (flagged), clamp (to zero) or abort")


class FullRollbackDetails(TypedDict):
    """What full-rollback's plan hands to apply/check/verify, the Prisma side and the notebook."""

    discovery: catalog.Discovery  # the voucher objects and their dependents, in drop order
    unacknowledged: list[str]  # unexpected dependents not named in drop_dependents (apply stops on them)
    undroppable: list[str]  # objects with no DROP statement (apply stops on them)
    reversal: ReversalPlan | None  # ledger_policy=reverse with a ledger and something to drop, else None
    migration_sql: str  # the migration's text ("" when nothing is left to drop)
    schema_edit: pedit.SchemaEdit | None  # None without the Prisma side
    row_counts: dict[str, int]  # rows per voucher table (its quoted identity)
    schema_validation: pconfig.Validation | None  # Prisma's parser on the edit (detail and a changed schema only)
    migration_diff: pdiff.DiffCheck | None  # Prisma's migrate diff of the edit (detail, changed schema, migration)
    migrations_folder: str | None  # None without prisma_schema


def _db_names(names: NameMap, params: Params) -> tuple[list[str], list[str]]:
    return [names.table_name(m) for m in params.models], [names.enum_name(e) for e in params.enums]


def nothing_to_do(conn: Connection, params: Params, names: NameMap) -> bool:
    """No voucher table or enum is left (a second execute): the run changes nothing and needs no backup."""
    tbls, enums = _db_names(names, params)
    return not catalog.find_seeds(conn, names.db_schema, tbls, enums)[0]


def _discovery_warnings(disc: catalog.Discovery, params: Params, unack: list[str], undroppable: list[str]) -> list[str]:
    """What the catalog found that execute stops on or the operator should know (unexpected, undroppable, missing)."""
    warnings: list[str] = []
    if unack:
        warnings.append(f"{len(unack)} unexpected dependents (execute stops unless each is named in drop_dependents): "
                        + "; ".join(unack[:10]) + (" …" if len(unack) > 10 else ""))
    if undroppable:
        warnings.append("cannot be dropped automatically (drop by hand first): " + "; ".join(undroppable))
    unknown = catalog.unknown_names(disc, params.drop_dependents) if not disc.empty else []
    if unknown:
        warnings.append("drop_dependents names no object found: " + ", ".join(unknown))
    if disc.missing and not disc.empty:
        warnings.append("not in the database (already gone?): " + ", ".join(disc.missing))
    return warnings


def _summary(params: Params, disc: catalog.Discovery, unack: list[str], counts: dict[str, int],
             grants: tuple[int, int], schema_edit: pedit.SchemaEdit | None, validation: pconfig.Validation | None,
             mdiff: pdiff.DiffCheck | None, rp: ReversalPlan | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "objects found": len(disc.objects),
        "drop statements": len(disc.order),
        "unexpected dependents not named": len(unack),
        **{f"rows in {k}": v for k, v in counts.items()},
        "voucher grants in the ledger": grants[0],
        "tokens granted by vouchers": grants[1],
        "ledger policy": params.ledger_policy,
        "schema.prisma blocks removed": len(schema_edit.removed_blocks) if schema_edit else 0,
        "schema.prisma fields removed": len(schema_edit.removed_fields) if schema_edit else 0,
        **({"Prisma's parser on the edited schema": validation.line()} if validation is not None else {}),
        **({"Prisma's migrate diff of the schema edit": mdiff.line()} if mdiff is not None else {}),
        "nothing_to_do": disc.empty,
    }
    if rp is not None:
        summary.update({"ledger rows to reverse": rp.summary["rows_to_reverse"],
                        "tokens to reverse": rp.summary["tokens_to_reverse"],
                        "users going negative (before policy)": rp.summary["users_negative"]})
    return summary


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan[FullRollbackDetails]:
    tbls, enums = _db_names(names, params)
    disc = catalog.discover(conn, names.db_schema, tbls, enums)
    seed_tables = [u for u in disc.order if u.is_seed and u.type == "table"]
    counts = {u.identity: int(conn.execute(sa.text(f"select count(*) from {u.identity}")).scalar_one())
              for u in seed_tables}
    unack = catalog.unacknowledged(disc, params.drop_dependents)
    undroppable = [u.label for u in disc.order if not u.drop_sql]
    warnings = _discovery_warnings(disc, params, unack, undroppable)
    ledger_exists, grants, rp, ledger_note = fledger.ledger_review(conn, names, params, disc, warnings)
    migration_sql = fprisma.migration_sql(disc, params, ledger_note) if not disc.empty else ""
    schema_edit, validation, mdiff = fprisma.prisma_review(conn, names, params, disc, migration_sql, detail, warnings)
    summary = _summary(params, disc, unack, counts, grants, schema_edit, validation, mdiff, rp)
    frames = {"objects": disc.objects_frame(), "drop_order": disc.order_frame(),
              "row_counts": pd.DataFrame(list(counts.items()), columns=["table", "rows"])}
    if rp is not None:
        frames["balances"] = rp.frames.get("balances", pd.DataFrame())
    digest = {"objects": disc.digest(), "counts": counts, "grants": grants, "policy": params.ledger_policy,
              "reversal": rp.digest if rp else None, "allowed": sorted(params.drop_dependents),
              "migration": hashlib.sha256(migration_sql.encode()).hexdigest(),
              "schema": hashlib.sha256(schema_edit.new_text.encode()).hexdigest() if schema_edit else None}
    details = FullRollbackDetails(
        discovery=disc, unacknowledged=unack, undroppable=undroppable, reversal=rp, migration_sql=migration_sql,
        schema_edit=schema_edit, row_counts=counts, schema_validation=validation, migration_diff=mdiff,
        migrations_folder=str(fprisma.migrations_folder(params)) if params.prisma_schema else None)
    p = Plan(procedure=NAME, plan_id=plan_hash(NAME, digest), summary=summary, frames=frames, warnings=warnings,
             details=details)
    if ledger_exists and not disc.empty:
        where, binds = fledger.voucher_grants(names, params)
        export = fledger.grants_export_sql(conn, names, where)
        if export is not None:
            p.exports["ledger_grants_with_redemptions"] = (export, binds)
        for u in seed_tables:
            p.exports[f"rows_{u.identity.split('.')[-1].strip(chr(34))}"] = (f"select * from {u.identity}", {})
    return p


def lock(conn: Connection, params: Params, names: NameMap) -> None:
    """ACCESS EXCLUSIVE on the voucher tables (nobody reads or writes them while they go), then ledger rows."""
    tbls, _ = _db_names(names, params)
    for t in sorted(tbls):
        ident = f"{quote_ident(names.db_schema)}.{quote_ident(t)}"
        if table_exists(conn, ident):
            conn.execute(sa.text(f"lock table {ident} in access exclusive mode"))
    if params.ledger_policy == "reverse" and table_exists(conn, names.t(fledger.L)):
        lock_reversal(conn, names, *fledger.voucher_grants(names, params))


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan[FullRollbackDetails]) -> ApplyResult:
    disc: catalog.Discovery = plan.details["discovery"]
    unack: list[str] = plan.details["unacknowledged"]
    if unack:
        raise PolicyAbort(f"{len(unack)} unexpected objects depend on the voucher system: " + "; ".join(unack[:10])
                          + (" …" if len(unack) > 10 else "") + ". Nothing was changed. Name each one in "
                          "drop_dependents to drop it too, or change it by hand first, then review again",
                          unexpected=unack)
    if plan.details["undroppable"]:
        raise PolicyAbort("cannot drop automatically: " + "; ".join(plan.details["undroppable"])
                          + ". Nothing was changed; drop them by hand, then review again")
    counts: dict[str, Any] = {}
    rp: ReversalPlan | None = plan.details["reversal"]
    if rp is not None:
        abort_if_negative(rp, params.negative_policy, "Choose allow or clamp, or ledger_policy=keep")
        if rp.summary["users_without_balance"]:
            raise PolicyAbort(f"{rp.summary['users_without_balance']} users have voucher grants but no balance row; "
                              "nothing was changed. Create their balance rows or use ledger_policy=keep")
        if rp.summary["rows_to_reverse"]:
            counts.update(apply_reversal(conn, names, rp))
    for i, u in enumerate(disc.order):  # Steps 2 and 3, in dependency order (dependents first)
        if i == 1:
            faults.hit(MID_DDL)
        if u.is_seed and u.type == "table":
            # the guide's Step 2, each table just before its DROP: by then the foreign keys of other tables into it
            # are gone, so their ON DELETE CASCADE / SET NULL / RESTRICT never touch (or stop on) kept rows
            counts[f"rows deleted from {u.identity}"] = conn.execute(sa.text(f"delete from {u.identity}")).rowcount
        assert u.drop_sql
        conn.exec_driver_sql(u.drop_sql)
    counts["objects dropped"] = len(disc.order)
    messages = [f"dropped {len(disc.order)} objects ({len(disc.objects)} catalog entries) in one transaction"]
    if params.prisma_side and params.prisma_schema:
        fprisma.record_migration(conn, names, params, plan, counts, messages)
    return ApplyResult(changed=True, counts=counts, messages=messages)


def _remaining(conn: Connection, disc: catalog.Discovery) -> list[str]:
    keys = [u.key for u in disc.order]
    if not keys:
        return []
    c, o, s = (list(x) for x in zip(*keys, strict=True))
    alive = {(int(r[0]), int(r[1]), int(r[2])) for r in conn.execute(sa.text(
        "select f.c, f.o, f.s from unnest(cast(:c as oid[]), cast(:o as oid[]), cast(:s as int[])) f(c, o, s) "
        "where case when f.s > 0 then exists (select 1 from pg_attribute a where a.attrelid = f.o "
        "and a.attnum = f.s and not a.attisdropped) else pg_describe_object(f.c, f.o, 0) is not null end"),
        {"c": c, "o": o, "s": s})}
    return [u.label for u in disc.order if u.key in alive]


def check(conn: Connection, params: Params, names: NameMap, plan: Plan[FullRollbackDetails],
          result: ApplyResult) -> None:
    """Before COMMIT: none of the objects remain, no seed name exists, the reversal (if any) adds up."""
    disc: catalog.Discovery = plan.details["discovery"]
    problems = []
    left = _remaining(conn, disc)
    if left:
        problems.append("still present: " + "; ".join(left[:10]))
    tbls, enums = _db_names(names, params)
    seeds, _ = catalog.find_seeds(conn, names.db_schema, tbls, enums)
    if seeds:
        problems.append("still present: " + ", ".join(seeds.values()))
    migration_problem = fprisma.recorded_migration_problem(conn, names, result.counts)
    if migration_problem:
        problems.append(migration_problem)
    if problems:
        raise InvariantError("invariant failed before COMMIT, rolled back: " + "; ".join(problems), problems=problems)
    rp = plan.details["reversal"]
    if rp is not None and result.counts.get("rows_reversed"):
        check_reversal(conn, names, rp, result.counts)


def verify(conn: Connection, params: Params, names: NameMap, plan: Plan[FullRollbackDetails] | None) -> VerifyResult:
    tbls, enums = _db_names(names, params)
    seeds, _ = catalog.find_seeds(conn, names.db_schema, tbls, enums)
    checks: list[Check] = []
    done = params.mode == "execute"
    checks.append(Check("no voucher table or enum remains", not seeds or not done, len(seeds),
                        ", ".join(seeds.values()) or "none left"))
    if plan is not None and done:
        left = _remaining(conn, plan.details["discovery"])
        checks.append(Check("no dropped object remains", not left, len(left), "; ".join(left[:10])))
    if params.prisma_side and params.prisma_schema and done:
        checks.extend(fprisma.prisma_checks(conn, names, params, params.prisma_schema))
    if params.ledger_policy == "keep" and done and table_exists(conn, names.t(fledger.L)):
        checks.append(fledger.kept_grants_check(conn, names, params))
    if not checks:
        raise ParameterError("nothing to verify")
    return VerifyResult(checks=checks)


@register
class FullRollback(Procedure):
    """Full rollback: the voucher tables and enums dropped (destructive); the Prisma files written after COMMIT."""

    NAME = NAME
    NOTEBOOK = "full_rollback.ipynb"
    TITLE = "Drop the voucher tables and enums (and named dependents), edit schema.prisma, record the migration"
    GUIDE_SECTION = "Rollback Procedure, Steps 2 to 5"
    Params = Params
    steps = Steps(plan=plan, lock=lock, apply=apply, check=check, verify=verify)
    tables = VOUCHER_MODELS
    destructive = True
    fault_points = (MID_DDL,)

    def nothing_to_do(self, conn: Connection, params: Any, names: NameMap) -> bool:
        return nothing_to_do(conn, params, names)

    def after_commit(self, run: Any) -> dict[str, Any] | None:
        return write_prisma_files(run)
