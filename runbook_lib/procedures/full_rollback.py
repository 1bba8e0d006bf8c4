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
"""

# ruff: noqa: S608  - identifiers come from NameMap or the catalog (quoted); values are bind parameters

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from .. import catalog, faults
from .. import names as nmod
from ..db import quote_ident
from ..errors import EvidenceError, InvariantError, ParameterError, PolicyAbort
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
    plan_reversal,
)
from ..reversal_sql import table_exists
from . import register
from .base import ApplyResult, Check, Plan, Procedure, VerifyResult, plan_hash

NAME = "full-rollback"

#: fault point between two DROP statements (tests inject a failure there: RUNBOOK_FAULT=mid_ddl:raise)
MID_DDL = "mid_ddl"

_COMMENT = {"table": "DropTable", "type": "DropEnum", "view": "DropView", "materialized view": "DropView",
            "function": "DropFunction", "procedure": "DropFunction", "trigger": "DropTrigger",
            "table constraint": "DropForeignKey", "table column": "AlterTable", "index": "DropIndex",
            "domain": "DropDomain", "sequence": "DropSequence"}


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


def _db_names(names: NameMap, params: Params) -> tuple[list[str], list[str]]:
    return [names.table_name(m) for m in params.models], [names.enum_name(e) for e in params.enums]


def _migrations_folder(params: Params) -> Path:
    """The app's migrations folder: ``migrations.path`` of prisma.config.ts (given, or found next to the schema or
    up to two folders above it), else ``migrations`` next to schema.prisma (Prisma 6's default)."""
    return pconfig.migrations_dir(params.prisma_schema, params.prisma_config)


def nothing_to_do(conn: Connection, params: Params, names: NameMap) -> bool:
    """No voucher table or enum is left (a second execute): the run changes nothing and needs no backup."""
    tbls, enums = _db_names(names, params)
    return not catalog.find_seeds(conn, names.db_schema, tbls, enums)[0]


def _migration_sql(disc: catalog.Discovery, params: Params, ledger_note: str) -> str:
    # schema-relative names, as in Prisma's own migrations (Prisma sets the search_path from ?schema=);
    # the statements that run in apply are the same ones, schema-qualified
    steps = [(_COMMENT.get(u.type, "Drop"), u.migration_sql or u.drop_sql or "") for u in disc.order]
    header = [f"Voucher system removed by the voucher runbooks (full-rollback); ledger_policy={params.ledger_policy}.",
              ledger_note]
    return history.render_sql(steps, header=[h for h in header if h])


def check_schema(params: Params, sedit: pedit.SchemaEdit) -> pconfig.Validation:
    """Does Prisma's own parser (the app's major: package.json, else the datasource's style) accept the edit?"""
    major, how = pconfig.prisma_major(params.prisma_schema, params.prisma_config)
    result = pconfig.validate_text({str(params.prisma_schema): sedit.new_text}, major)
    if result.checked and not result.ok:
        before = pconfig.validate_text({str(params.prisma_schema): sedit.old_text}, major)
        if before.checked and not before.ok:
            result.message += " (the schema as it is now is rejected too: not caused by this edit)"
    result.major_from = how
    return result


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan:
    tbls, enums = _db_names(names, params)
    disc = catalog.discover(conn, names.db_schema, tbls, enums)
    seed_tables = [u for u in disc.order if u.is_seed and u.type == "table"]
    counts = {u.identity: int(conn.execute(sa.text(f"select count(*) from {u.identity}")).scalar_one())
              for u in seed_tables}
    unack = catalog.unacknowledged(disc, params.drop_dependents)
    undroppable = [u.label for u in disc.order if not u.drop_sql]
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
    # the token ledger
    L = "TokenTransaction"
    ledger_exists = table_exists(conn, names.t(L))
    binds = {"fr_source": params.source}
    where = f"tt.{names.c(L, 'source')} = :fr_source"
    grants = (0, 0)
    if ledger_exists:
        g = conn.execute(sa.text(f"select count(*), coalesce(sum(tt.{names.c(L, 'amount')}), 0) from {names.t(L)} tt "
                                 f"where {where}"), binds).one()
        grants = (int(g[0]), int(g[1]))
    rp: ReversalPlan | None = None
    if params.ledger_policy == "reverse" and ledger_exists and not disc.empty:
        rp = plan_reversal(conn, names, where_sql=where, where_params=binds, ledger_mode=params.ledger_mode,
                           negative_policy=params.negative_policy, reversal_type=params.reversal_type,
                           reversal_source=params.reversal_source, sample_rows=params.sample_rows,
                           top_users=params.top_users)
        warnings.extend(rp.warnings)
    if disc.empty:
        ledger_note = ""
    elif params.ledger_policy == "keep":
        ledger_note = (f"{grants[0]} {L} rows with source '{params.source}' ({grants[1]} tokens) were kept; their "
                       "sourceId names vouchers or redemptions dropped here (exported to the run's evidence folder).")
        warnings.append(f"ledger_policy=keep: {grants[0]:,} ledger rows ({grants[1]:,} tokens) keep a sourceId that will "
                        "point to dropped redemptions; they are exported to the evidence folder and noted in the "
                        "migration")
    elif rp is not None:
        ledger_note = (f"{grants[0]} voucher grants in {L} ({grants[1]} tokens): {rp.summary['rows_to_reverse']} "
                       f"reversed first here (ledger_mode={params.ledger_mode}), "
                       f"{rp.summary['rows_already_reversed']} reversed by an earlier run; their sourceId still names "
                       "the dropped vouchers or redemptions.")
    else:
        ledger_note = f"no {L} table: no voucher grants to reverse."
    migration_sql = _migration_sql(disc, params, ledger_note) if not disc.empty else ""
    schema_edit: pedit.SchemaEdit | None = None
    validation: pconfig.Validation | None = None
    mdiff: pdiff.DiffCheck | None = None
    if params.prisma_side and params.prisma_schema:
        schema_edit = pedit.remove_from_file(params.prisma_schema, params.models, params.enums)
        warnings.extend(schema_edit.warnings)
        if detail and schema_edit.changed:  # not under the locks: Node takes a moment
            validation = check_schema(params, schema_edit)
            if validation.checked and not validation.ok:
                warnings.append(validation.line())
            if migration_sql:  # Prisma's own migrate diff of the edit, offline (never fails the review)
                mdiff = pdiff.check_migration(schema_edit.old_text, schema_edit.new_text, migration_sql)
                if mdiff.checked and not mdiff.agrees:
                    warnings.append("Prisma's migrate diff of the schema edit " + mdiff.line())
        if disc.empty and schema_edit.changed:
            warnings.append("the database has no voucher objects but schema.prisma still defines them")
        if not disc.empty and not history.history_table(conn, names.db_schema):
            warnings.append("no _prisma_migrations table (not managed by prisma migrate): schema.prisma is edited, "
                            "no migration folder is written")
    elif not disc.empty and history.history_table(conn, names.db_schema):
        warnings.append("prisma_side=false: Prisma's migration history will not know about this change (drift)")
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
    frames = {"objects": disc.objects_frame(), "drop_order": disc.order_frame(),
              "row_counts": pd.DataFrame(list(counts.items()), columns=["table", "rows"])}
    if rp is not None:
        frames["balances"] = rp.frames.get("balances", pd.DataFrame())
    digest = {"objects": disc.digest(), "counts": counts, "grants": grants, "policy": params.ledger_policy,
              "reversal": rp.digest if rp else None, "allowed": sorted(params.drop_dependents),
              "migration": hashlib.sha256(migration_sql.encode()).hexdigest(),
              "schema": hashlib.sha256(schema_edit.new_text.encode()).hexdigest() if schema_edit else None}
    p = Plan(procedure=NAME, plan_id=plan_hash(NAME, digest), summary=summary, frames=frames, warnings=warnings,
             details={"discovery": disc, "unacknowledged": unack, "undroppable": undroppable, "reversal": rp,
                      "migration_sql": migration_sql, "schema_edit": schema_edit, "row_counts": counts,
                      "schema_validation": validation, "migration_diff": mdiff,
                      "migrations_folder": str(_migrations_folder(params)) if params.prisma_schema else None})
    if ledger_exists and not disc.empty:
        R, V = "VoucherRedemption", "Voucher"
        redemptions, vouchers = table_exists(conn, names.t(R)), table_exists(conn, names.t(V))
        if redemptions and vouchers and nmod.has_column(conn, names, L, "sourceId"):
            p.exports["ledger_grants_with_redemptions"] = (
                f"select tt.*, r.{names.c(R, 'voucherId')} as redemption_voucher_id, "
                f"r.{names.c(R, 'redeemedAt')} as redemption_redeemed_at, v.{names.c(V, 'code')} as voucher_code "
                # sourceId names the redemption (linked shape) or the voucher, the user then picking the
                # redemption (the real application: unique (voucherId, userId))
                f"from {names.t(L)} tt left join {names.t(R)} r on r.{names.c(R, 'id')} = tt.{names.c(L, 'sourceId')} "
                f"or (r.{names.c(R, 'voucherId')} = tt.{names.c(L, 'sourceId')} "
                f"and r.{names.c(R, 'userId')} = tt.{names.c(L, 'userId')}) "
                f"left join {names.t(V)} v on v.{names.c(V, 'id')} = coalesce(r.{names.c(R, 'voucherId')}, "
                f"tt.{names.c(L, 'sourceId')}) where {where} "
                f"order by tt.{names.c(L, 'id')}", binds)
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
    if params.ledger_policy == "reverse":
        L = "TokenTransaction"
        if table_exists(conn, names.t(L)):
            lock_reversal(conn, names, f"tt.{names.c(L, 'source')} = :fr_source", {"fr_source": params.source})


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan) -> ApplyResult:
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
        folder = _migrations_folder(params)
        mname = history.next_migration_name(folder, params.migration_name)
        row = history.record_applied(conn, names.db_schema, mname, plan.details["migration_sql"])
        if row is not None:
            counts["migration_name"] = mname
            counts["migration_checksum"] = row["checksum"]
            messages.append(f"recorded migration {mname} in _prisma_migrations (checksum {row['checksum'][:12]}…)")
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


def check(conn: Connection, params: Params, names: NameMap, plan: Plan, result: ApplyResult) -> None:
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
    if result.counts.get("migration_name"):
        chk = conn.execute(sa.text(
            f"select checksum from {history.history_table(conn, names.db_schema)} where migration_name = :n"),
            {"n": result.counts["migration_name"]}).scalar()
        if chk != result.counts["migration_checksum"]:
            problems.append("the _prisma_migrations row is missing or has another checksum")
    if problems:
        raise InvariantError("invariant failed before COMMIT, rolled back: " + "; ".join(problems), problems=problems)
    rp = plan.details["reversal"]
    if rp is not None and result.counts.get("rows_reversed"):
        check_reversal(conn, names, rp, result.counts)


def show_prisma_side(run: Any) -> None:
    """Review output of the Prisma side: the migration to record (where), the schema.prisma diff, and whether
    Prisma's own parser accepts the edited schema."""
    p: Params = run.params
    plan = run.plan
    print(plan.details["migration_sql"] or "(nothing to drop)")
    sedit: pedit.SchemaEdit | None = plan.details["schema_edit"]
    if sedit is None:
        print("(prisma_side is off: schema.prisma and the migrations folder are left alone)")
        return
    print(f"migrations folder: {plan.details.get('migrations_folder')}")
    print(sedit.diff(str(p.prisma_schema)) or "(schema.prisma needs no change)")
    v: pconfig.Validation | None = plan.details.get("schema_validation")
    if v is not None:
        print(v.line() + (f" [major from {v.major_from}]" if v.major_from else ""))
    d: pdiff.DiffCheck | None = plan.details.get("migration_diff")
    if d is not None:
        print("Prisma's migrate diff of the schema edit " + d.line())


def write_prisma_files(run: Any) -> dict[str, Any]:
    """After COMMIT only: write the migration folder and the edited schema.prisma. Review writes nothing.

    ``run`` is the :class:`runbook_lib.run.Run` that executed. Returns what was written.
    """
    p: Params = run.params
    result = run.result
    if p.mode != "execute" or result is None or not result.changed or not p.prisma_side or not p.prisma_schema:
        print("nothing written: " + ("review mode" if p.mode != "execute" else "no committed change, or prisma_side "
                                     "is off"), flush=True)
        return {"written": False}
    plan = run.plan
    sedit: pedit.SchemaEdit = plan.details["schema_edit"]
    schema_path = Path(p.prisma_schema)
    out: dict[str, Any] = {"written": True}
    mname = result.counts.get("migration_name")
    if mname:
        path = history.write_migration(_migrations_folder(p), mname, plan.details["migration_sql"])
        out["migration_file"] = str(path)
        out["migration_checksum"] = history.checksum(path.read_bytes())
        if out["migration_checksum"] != result.counts["migration_checksum"]:
            raise EvidenceError(f"{path} has checksum {out['migration_checksum']}, _prisma_migrations has "
                                f"{result.counts['migration_checksum']}; fix the file before running prisma")
    current = schema_path.read_bytes().decode("utf-8")
    if current != sedit.old_text:
        raise EvidenceError(f"{schema_path} changed since the plan was made; it was not edited. Remove the models "
                            f"{', '.join(p.models)} and enums {', '.join(p.enums)} by hand (the diff is shown above)")
    if sedit.changed:
        pedit.write_atomically(schema_path, sedit.new_text)
    out["schema_file"] = str(schema_path)
    out["schema_blocks_removed"] = sedit.removed_blocks
    out["schema_fields_removed"] = sedit.removed_fields
    out["next_step"] = "run `npx prisma generate` (guide Step 5) and commit schema.prisma and the migration folder"
    print(f"wrote {out.get('migration_file', '(no migration folder: database not managed by prisma migrate)')} and "
          f"{schema_path}. Next: {out['next_step']}", flush=True)
    return out


def verify(conn: Connection, params: Params, names: NameMap, plan: Plan | None) -> VerifyResult:
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
        folder = _migrations_folder(params)
        if history.history_table(conn, names.db_schema):
            entries = history.compare(conn, names.db_schema, folder)
            bad = [e.migration_name for e in entries if not (e.in_database and e.in_folder and e.checksum_matches)]
            checks.append(Check("Prisma's migration history agrees with the folder", not bad, len(bad),
                                ", ".join(bad) or f"{len(entries)} migrations, checksums match"))
        left_blocks = pedit.remove_from_file(params.prisma_schema, params.models, params.enums)
        checks.append(Check("schema.prisma no longer defines the voucher models", not left_blocks.changed,
                            len(left_blocks.removed_blocks) + len(left_blocks.removed_fields),
                            ", ".join(left_blocks.removed_blocks + left_blocks.removed_fields) or "clean"))
    if params.ledger_policy == "keep" and done:
        L = "TokenTransaction"
        if table_exists(conn, names.t(L)):
            n = int(conn.execute(sa.text(f"select count(*) from {names.t(L)} where {names.c(L, 'source')} = :s"),
                                 {"s": params.source}).scalar_one())
            checks.append(Check("voucher grants kept in the ledger (recorded, sourceId dangling)", True, n,
                                "ledger_policy=keep: see ledger_grants_with_redemptions in the evidence folder"))
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
    tables = ("Voucher", "VoucherRedemption", "TokenTransaction", "UserTokenBalance")
    destructive = True
    fault_points = (MID_DDL,)

    def plan(self, conn: Connection, params: Any, names: NameMap, *, detail: bool = True) -> Plan:
        return plan(conn, params, names, detail=detail)

    def lock(self, conn: Connection, params: Any, names: NameMap) -> None:
        lock(conn, params, names)

    def apply(self, conn: Connection, params: Any, names: NameMap, plan: Plan) -> ApplyResult:
        return apply(conn, params, names, plan)

    def check(self, conn: Connection, params: Any, names: NameMap, plan: Plan, result: ApplyResult) -> None:
        check(conn, params, names, plan, result)

    def verify(self, conn: Connection, params: Any, names: NameMap, plan: Plan | None) -> VerifyResult:
        return verify(conn, params, names, plan)

    def nothing_to_do(self, conn: Connection, params: Any, names: NameMap) -> bool:
        return nothing_to_do(conn, params, names)

    def after_commit(self, run: Any) -> dict[str, Any] | None:
        return write_prisma_files(run)
