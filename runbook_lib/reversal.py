"""The reversal core: reverse any selection of token-ledger rows, balances and ledger in one transaction.

A selection is a SQL condition on the ledger aliased ``tt`` plus its bind values; token-reversal (a time window),
partial-rollback (the grants of the redemptions it clears) and full-rollback (every voucher grant) each build
their own and share everything else here:

* :class:`ReversalOptions`: the reversal parameters of the three procedures, declared and checked once;
* :func:`plan_reversal` (figures, digests, review frames) -> :class:`ReversalPlan`; :func:`lock_reversal`;
  :func:`apply_reversal`; :func:`check_reversal` (invariants before COMMIT); :func:`abort_if_negative`;
  :func:`incident_of`.

The SQL they are written with (the ``affected`` / ``decided`` CTEs, temp tables, frames) is in
:mod:`runbook_lib.reversal_sql`.
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Self

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from . import grants
from . import names as nmod
from .errors import InvariantError, PolicyAbort, SchemaMismatchError
from .grants import ReversalLink
from .names import NameMap
from .params import INSPECT_USER_DESCRIPTION, DestructiveParams, InspectUser, LedgerSource, TopRows
from .reversal_sql import (
    LEDGER,
    affected_cte,
    by_voucher_frame,
    decision_sql,
    histogram_frame,
    ledger_names,
    materialize_selection,
    sql_type,
    voucher_tables_exist,
)

LedgerMode = Literal["compensate", "delete"]
NegativePolicy = Literal["allow", "clamp", "skip", "abort"]
#: partial- and full-rollback: no ``skip`` (a skipped user's redemptions or vouchers would go, their tokens stay)
NegativePolicyNoSkip = Literal["allow", "clamp", "abort"]

LEDGER_NEEDS = ["id", "userId", "amount", "source", "createdAt"]
BALANCE_NEEDS = ["userId", "balance"]


class ReversalOptions(BaseModel):
    """The reversal parameters of token-reversal, partial-rollback and full-rollback, declared and checked once.

    A procedure declares its own parameters in a :class:`~runbook_lib.params.DestructiveParams` subclass and
    combines them as ``class Params(ReversalOptions, OwnParams)``: its own parameters come first (in ``--help``
    and in the parameters' order), its own checks run first, then these. A procedure whose option differs
    overrides that field in its ``Params``, saying why.
    """

    source: LedgerSource = Field("voucher_redemption", description="ledger source of voucher grants")
    ledger_mode: LedgerMode = Field("compensate", description="compensate (reversing rows, history kept) or delete (the guide's way, running balances corrected)")
    negative_policy: NegativePolicy = Field("allow", description="balances that would go below zero: allow (flagged), clamp (to zero), skip (user left out) or abort")
    reversal_type: str = Field("auto", description="type of reversing rows: auto (REVERSAL if the enum has it, else EARN_ADMIN_ADJUSTMENT) or a value of the enum")
    reversal_source: LedgerSource = Field("voucher_reversal", description="source of reversing rows (their sourceId names the original); must differ from source")
    top_users: TopRows = Field(50, description="users shown in the before/after table (1-1000)")
    inspect_user: InspectUser = Field(None, description=INSPECT_USER_DESCRIPTION)

    @field_validator("source", "reversal_source", "reversal_type")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v or len(v) > 200:
            raise ValueError("must be a non-empty string of at most 200 characters")
        return v

    @model_validator(mode="after")
    def _sources_differ(self) -> Self:
        if self.reversal_source == self.source:
            raise ValueError("'reversal_source' must differ from 'source', or reversals would be reversed again")
        return self


@dataclass
class ReversalPlan:
    """The reversal of the ledger rows matching ``where_sql`` (a condition on the ledger aliased ``tt``)."""

    where_sql: str
    where_params: dict[str, Any]
    ledger_mode: str
    negative_policy: str
    reversal_type: str
    reversal_source: str
    summary: dict[str, Any]
    digest: dict[str, Any]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    has_balance_after: bool = False
    #: how a reversing row names its original (None: delete mode on a ledger that has no way to link)
    link: ReversalLink | None = None
    has_type: bool = False
    has_source_id: bool = False
    has_description: bool = False
    type_is_enum: bool = False
    #: SQL for the original's metadata.voucherCode (None without a json metadata column)
    voucher_code_sql: str | None = None
    #: written into the reversing rows' metadata: the incident and the plan id of the run
    incident: str | None = None
    plan_id: str | None = None
    #: the selection and the per-user decisions are already in this transaction's temp tables rb_affected and
    #: rb_users (computed under the locks, for execute): apply_reversal works on exactly the rows the plan saw
    materialized: bool = False


def plan_reversal(
    conn: Connection,
    names: NameMap,
    *,
    where_sql: str,
    where_params: dict[str, Any],
    ledger_mode: str = "compensate",
    negative_policy: str = "allow",
    reversal_type: str = "auto",
    reversal_source: LedgerSource = "voucher_reversal",
    sample_rows: int = 20,
    top_users: int = 50,
    detail: bool = True,
    grant_link: str = "voucher_and_user",
) -> ReversalPlan:
    """Compute what reversing the matching ledger rows would do, with aggregated, set-based queries."""
    L = LEDGER
    nmod.require(conn, names, {L: LEDGER_NEEDS, "UserTokenBalance": BALANCE_NEEDS})
    q = ledger_names(names)
    has = {f: nmod.has_column(conn, names, L, f) for f in ("balanceAfter", "type", "sourceId", "description",
                                                          "metadata")}
    # compensate mode needs the link; delete mode uses it, where the ledger has one, to leave alone rows an
    # earlier compensating run reversed
    link: ReversalLink | None
    try:
        link = grants.reversal_link(conn, names)
    except SchemaMismatchError:
        if ledger_mode == "compensate":
            raise
        link = None
    where_params = {**where_params, "rb_rsource": reversal_source}
    type_is_enum = has["type"] and nmod.column_type(conn, names, L, "type") == "USER-DEFINED"
    # the type of the rows this run writes (reversing rows, clamp adjustments); part of the plan id
    writes_rows = ledger_mode == "compensate" or negative_policy == "clamp"
    resolved_type = grants.resolve_reversal_type(conn, names, reversal_type) if has["type"] and writes_rows else None
    voucher_code_sql = grants.metadata_code(conn, names)
    base = f"with {affected_cte(q, where_sql, link)}, {decision_sql(q, negative_policy)} "
    # execute recomputes the plan under the locks (detail=False) in a write transaction: the selection is then
    # read once into temp tables that the plan's figures and digests, and later the apply, all come from
    materialize = not detail and bool(conn.execute(sa.text(
        "select current_setting('transaction_read_only') = 'off'")).scalar())
    if materialize:
        already = materialize_selection(conn, q, where_sql, where_params, link=link,
                                        source_id=has["sourceId"], voucher_code_sql=voucher_code_sql, policy=negative_policy)
        selected = "with affected as (select id, user_id, amount from rb_affected), decided as (select * from rb_users) "
        already_sql = str(int(already))
    elif link:
        # one scan of the selection feeds both the affected rows and the count of those already reversed; the
        # reversed ids are joined as a set (hash or index join), never looked up row by row
        selected = (
            f"with selected as (select tt.{q['id']} as id, tt.{q['user_id']} as user_id, tt.{q['amount']}::bigint as "
            f"amount, d.oid is not null as done from {q['ledger']} tt "
            f"left join ({link.reversed_ids(q['ledger'])}) d on d.oid = tt.{q['id']} where ({where_sql})), "
            "affected as (select id, user_id, amount from selected where not done), "
            f"{decision_sql(q, negative_policy)} ")
        already_sql = "(select count(*) from selected where done)"
    else:
        selected, already_sql = base, "0"
    # one statement: the selection is read once and feeds totals, digests and the already-count
    totals = conn.execute(sa.text(selected + f"""
        select count(*) as users, coalesce(sum(n),0) as rows, coalesce(sum(total),0) as tokens,
          count(*) filter (where raw_after < 0 and before is not null) as users_negative,
          coalesce(sum(-raw_after) filter (where raw_after < 0 and before is not null),0) as negative_tokens,
          count(*) filter (where before is null) as users_without_balance,
          count(*) filter (where included and new_balance < 0) as users_left_negative,
          count(*) filter (where not included) as users_excluded,
          coalesce(sum(n) filter (where included),0) as rows_to_reverse,
          coalesce(sum(total) filter (where included),0) as tokens_to_reverse,
          coalesce(sum(shortfall) filter (where included),0) as clamp_shortfall,
          coalesce(sum(before) filter (where included),0) as balance_before_total,
          coalesce(sum(new_balance) filter (where included),0) as balance_after_total,
          md5(coalesce(string_agg(user_id || ':' || coalesce(before::text,'-'), ',' order by user_id::text collate "C"),'')) as bal_digest,
          (select md5(coalesce(string_agg(id || ':' || user_id || ':' || amount, ',' order by id::text collate "C"),''))
             from affected) as rows_digest,
          {already_sql} as rows_already_reversed
        from decided"""), where_params).mappings().one()
    summary = {k: (int(v) if not k.endswith("_digest") else v) for k, v in totals.items()
               if not k.endswith("_digest")}
    rows_digest = totals["rows_digest"]
    already = summary["rows_already_reversed"]
    summary["nothing_to_do"] = summary["rows_to_reverse"] == 0
    digest = {"rows": rows_digest, "balances": totals["bal_digest"], "mode": ledger_mode,
              "policy": negative_policy, "type": resolved_type, "source": reversal_source, "where": where_sql,
              "link": link.kind if link else None,
              "params": {k: (sorted(v) if isinstance(v, list) else v) for k, v in where_params.items()}}
    rp = ReversalPlan(
        where_sql=where_sql, where_params=where_params, ledger_mode=ledger_mode, negative_policy=negative_policy,
        reversal_type=resolved_type or reversal_type, reversal_source=reversal_source, summary=summary,
        digest=digest, has_balance_after=has["balanceAfter"], link=link, has_type=has["type"],
        has_source_id=has["sourceId"], has_description=has["description"], type_is_enum=type_is_enum,
        voucher_code_sql=voucher_code_sql, materialized=materialize,
    )
    summary["reversal_type"] = resolved_type or "-"
    summary["reversal_link"] = link.description if link else "none (delete mode)"
    _warnings(rp, summary, negative_policy, already)
    if not detail:  # recomputed under locks for execute: the figures, not the display frames
        return rp
    rp.frames["balances"] = pd.DataFrame(conn.execute(sa.text(base + """
        select user_id as "userId", n as "rows", total as "reversed", before as "balance_before",
          case when included then new_balance else before end as "balance_after",
          case when before is null then 'no balance row: skipped'
               when not included then 'skipped (would go negative)'
               when raw_after < 0 and shortfall > 0 then 'clamped, shortfall ' || shortfall
               when raw_after < 0 then 'NEGATIVE' else '' end as "flag"
        from decided order by total desc, user_id limit :top"""), {**where_params, "top": top_users}).mappings().all())
    rp.frames["negative"] = pd.DataFrame(conn.execute(sa.text(base + """
        select user_id as "userId", n as "rows", total as "reversed", before as "balance_before",
          raw_after as "balance_if_reversed", shortfall as "clamp_shortfall", included as "reversed_by_policy"
        from decided where raw_after < 0 or before is null order by raw_after nulls first, user_id
        limit :top"""), {**where_params, "top": top_users}).mappings().all())
    rp.frames["sample"] = pd.DataFrame(conn.execute(sa.text(
        f"with {affected_cte(q, where_sql, link)} select id, user_id as \"userId\", amount, "
        "created_at as \"createdAt\" from affected order by created_at, id limit :lim"),
        {**where_params, "lim": sample_rows}).mappings().all())
    rp.frames["by_day"] = pd.DataFrame(conn.execute(sa.text(
        f"with {affected_cte(q, where_sql, link)} select date_trunc('day', created_at)::date as day, "
        "count(*) as rows, sum(amount)::bigint as tokens from affected group by 1 order by 1"),
        where_params).mappings().all(), columns=["day", "rows", "tokens"])
    rp.frames["histogram"] = histogram_frame(conn, base, where_params)
    if has["sourceId"] and voucher_tables_exist(conn, names):
        rp.frames["by_voucher"] = by_voucher_frame(conn, names, q, where_sql, where_params, link, grant_link,
                                                   voucher_code_sql)
    return rp


def _warnings(rp: ReversalPlan, summary: dict[str, Any], negative_policy: str, already: int) -> None:
    if summary["users_negative"]:
        rp.warnings.append(
            f"{summary['users_negative']:,} users already spent granted tokens: reversing all would leave them "
            f"{summary['negative_tokens']:,} tokens below zero in total (policy: {negative_policy})")
    if summary["users_without_balance"]:
        rp.warnings.append(f"{summary['users_without_balance']:,} users have ledger rows but no balance row; "
                           "they are skipped and listed")
    if already:
        rp.warnings.append(f"{already:,} matching rows were already reversed by an earlier run and are left alone")


def lock_reversal(conn: Connection, names: NameMap, where_sql: str, where_params: dict[str, Any]) -> int:
    """Lock the affected ledger rows and their users' balance rows, in id order (no deadlocks)."""
    q = ledger_names(names)
    # one statement, one scan of the selection: the CTE locks the ledger rows in id order (a CTE with FOR UPDATE
    # is never inlined); the aggregate over it must read it to its end, so every selected row is locked before
    # the balance rows of their users are locked, in user order. Counted in the database: no row goes to Python.
    return int(conn.execute(sa.text(
        f"with locked as (select tt.{q['user_id']} as user_id from {q['ledger']} tt where ({where_sql}) "
        f"order by tt.{q['id']}::text collate \"C\" for update of tt), "
        "users as (select coalesce(array_agg(distinct user_id), '{}') as ids from locked) "
        f"select count(*) from (select 1 from {q['balances']} b where b.{q['b_user_id']} in (select unnest(ids) from users) "
        f"order by b.{q['b_user_id']}::text collate \"C\" for update) s"), where_params).scalar_one())


def apply_reversal(conn: Connection, names: NameMap, rp: ReversalPlan) -> dict[str, int]:
    """Reverse the planned rows with set-based statements; balances move by per-user totals."""
    q = ledger_names(names)
    if not (rp.materialized and conn.execute(sa.text("select to_regclass('pg_temp.rb_users')")).scalar()):
        materialize_selection(conn, q, rp.where_sql, rp.where_params, link=rp.link, source_id=rp.has_source_id,
                              voucher_code_sql=rp.voucher_code_sql, policy=rp.negative_policy)
    conn.execute(sa.text("delete from rb_affected a using rb_users u where u.user_id = a.user_id and not u.included"))
    counts: dict[str, int] = {}
    now = "(now() at time zone 'utc')"
    meta_type = nmod.column_type(conn, names, "TokenTransaction", "metadata") if rp.voucher_code_sql else None
    binds = {"rsource": rp.reversal_source, "rtype": rp.reversal_type, "incident": rp.incident,
             "plan_id": rp.plan_id}
    if rp.ledger_mode == "compensate":
        assert rp.link is not None  # plan_reversal refuses compensate mode without a link
        cols = [q["id"], q["user_id"], q["amount"], q["source"], q["created_at"], rp.link.column]
        vals = ["'rev_' || a.id", "a.user_id", "-a.amount", ":rsource", now, "a.id"]
        type_expr = "cast(:rtype as " + sql_type(conn, names, LEDGER, "type") + ")" if rp.type_is_enum else ":rtype"
        if rp.has_type:
            cols.append(q["type"])
            vals.append(type_expr)
        if rp.link.kind == "column" and rp.has_source_id:
            cols.append(q["source_id"])  # the link column names the original; sourceId keeps the original's
            vals.append("a.source_id")
        if meta_type:
            # the application's own way to say what a row is: the original, its voucher, this incident and plan
            cols.append(q["metadata"])
            vals.append("jsonb_build_object('reversalOf', a.id, 'voucherCode', a.voucher_code, 'incident', "
                        "cast(:incident as text), 'planId', cast(:plan_id as text), 'reason', "
                        f"'voucher incident runbook: token reversal')::{meta_type}")
        if rp.has_description:
            cols.append(q["description"])
            vals.append("'Reversal of ' || a.id || ' (voucher incident runbook)'")
        if rp.has_balance_after:
            cols.append(q["balance_after"])
            # the reversal rows share one timestamp, so the ledger orders them by their own id ('rev_' || original id);
            # ordering by that same expression keeps the two in step in any collation
            vals.append("u.before - sum(a.amount) over (partition by a.user_id order by 'rev_' || a.id)")
        counts["ledger_rows_inserted"] = conn.execute(sa.text(
            f"insert into {q['ledger']} ({', '.join(cols)}) select {', '.join(vals)} from rb_affected a "
            "join rb_users u on u.user_id = a.user_id"), binds).rowcount
        counts["ledger_rows_deleted"] = 0
    else:
        counts["ledger_rows_deleted"] = conn.execute(sa.text(
            f"delete from {q['ledger']} tt using rb_affected a where tt.{q['id']} = a.id")).rowcount
        counts["ledger_rows_inserted"] = 0
        if rp.has_balance_after:
            # the deleted grants were counted in every later running balance of their user: take them out
            # (by difference, so a ledger that does not start at zero keeps its baseline)
            counts["running_balances_corrected"] = conn.execute(sa.text(
                f"update {q['ledger']} t set {q['balance_after']} = t.{q['balance_after']} - d.removed from ("
                f"select t2.{q['id']} as id, sum(a.amount) as removed from {q['ledger']} t2 join rb_affected a "
                f"on a.user_id = t2.{q['user_id']} and (a.created_at, a.id) < (t2.{q['created_at']}, t2.{q['id']}) "
                f"where t2.{q['balance_after']} is not null group by 1) d where d.id = t.{q['id']}")).rowcount
    if rp.negative_policy == "clamp":
        cols = [q["id"], q["user_id"], q["amount"], q["source"], q["created_at"]]
        # one millisecond after the reversals: the adjustment follows them in the ledger's order
        vals = ["'clamp_' || md5(u.user_id || :rsource || now()::text)", "u.user_id", "u.shortfall", ":rsource",
                f"{now} + interval '1 millisecond'"]
        if rp.has_type:
            cols.append(q["type"])
            vals.append("cast(:rtype as " + sql_type(conn, names, LEDGER, "type") + ")" if rp.type_is_enum else ":rtype")
        if rp.has_description:
            cols.append(q["description"])
            vals.append("'Clamp to zero after voucher reversal: shortfall ' || u.shortfall")
        if meta_type:
            cols.append(q["metadata"])
            vals.append("jsonb_build_object('clampShortfall', u.shortfall, 'incident', cast(:incident as text), "
                        "'planId', cast(:plan_id as text), 'reason', 'voucher incident runbook: a reversal "
                        f"stopped at zero (negative_policy=clamp)')::{meta_type}")
        if rp.has_balance_after:
            cols.append(q["balance_after"])
            vals.append("u.new_balance")
        counts["clamp_rows_inserted"] = conn.execute(sa.text(
            f"insert into {q['ledger']} ({', '.join(cols)}) select {', '.join(vals)} from rb_users u "
            "where u.included and u.shortfall > 0"), binds).rowcount
    upd = f", {q['b_updated_at']} = {now}" if nmod.has_column(conn, names, "UserTokenBalance", "updatedAt") else ""
    counts["balances_updated"] = conn.execute(sa.text(
        f"update {q['balances']} b set {q['b_balance']} = u.new_balance{upd} from rb_users u "
        f"where b.{q['b_user_id']} = u.user_id and u.included")).rowcount
    counts["rows_reversed"] = int(conn.execute(sa.text("select count(*) from rb_affected")).scalar_one())
    counts["tokens_reversed"] = int(conn.execute(sa.text("select coalesce(sum(amount),0) from rb_affected")).scalar_one())
    counts["users_affected"] = int(conn.execute(sa.text("select count(*) from rb_users where included")).scalar_one())
    counts["users_left_negative"] = int(conn.execute(sa.text(
        "select count(*) from rb_users where included and new_balance < 0")).scalar_one())
    counts["clamp_shortfall"] = int(conn.execute(sa.text(
        "select coalesce(sum(shortfall),0) from rb_users where included")).scalar_one())
    return counts


def check_reversal(conn: Connection, names: NameMap, rp: ReversalPlan, counts: dict[str, int]) -> None:
    """Invariants before COMMIT, recomputed from the database; raise InvariantError (-> ROLLBACK)."""
    q = ledger_names(names)
    problems: list[str] = []

    def users_whose_balance(condition: str) -> int:
        """How many included users' balances meet ``condition`` (on ``b``, the balance row, and ``u``)."""
        return int(conn.execute(sa.text(
            f"select count(*) from rb_users u join {q['balances']} b on b.{q['b_user_id']} = u.user_id "
            f"where u.included and {condition}")).scalar_one())

    if wrong_balance := users_whose_balance(f"b.{q['b_balance']} <> u.before - u.total + u.shortfall"):
        problems.append(f"{wrong_balance} balances differ from before - reversed total (+ clamp shortfall)")
    if rp.ledger_mode == "compensate":
        assert rp.link is not None
        # each affected row has exactly one reversing row of the opposite amount: one aggregated join
        unreversed = conn.execute(sa.text(
            f"select count(*) from rb_affected a left join (select r.{rp.link.column} as oid, count(*) as n, "
            f"sum(r.{q['amount']})::bigint as total from {q['ledger']} r join rb_affected a2 "
            f"on {rp.link.is_reversal_of('r', 'a2.id')} group by 1) x on x.oid = a.id "
            "where coalesce(x.n, 0) <> 1 or x.total <> -a.amount"), {"rb_rsource": rp.reversal_source}).scalar_one()
    else:
        unreversed = conn.execute(sa.text(
            f"select count(*) from rb_affected a join {q['ledger']} tt on tt.{q['id']} = a.id")).scalar_one()
    if unreversed:
        problems.append(f"{unreversed} affected ledger rows are not reversed exactly once")
    if counts["balances_updated"] != counts["users_affected"]:
        problems.append(f"{counts['balances_updated']} balance rows updated for {counts['users_affected']} users")
    # no balance may end below zero, nor below where it was when it was negative already
    if rp.negative_policy in ("clamp", "skip") and (
            pushed_below := users_whose_balance(f"b.{q['b_balance']} < least(u.before, 0)")):
        problems.append(f"{pushed_below} balances pushed below zero despite policy {rp.negative_policy}")
    if rp.negative_policy == "clamp" and (raised := users_whose_balance(f"b.{q['b_balance']} > u.before")):
        problems.append(f"{raised} balances raised by a reversal (clamp must never add tokens)")
    expected_rows = rp.summary["rows_to_reverse"]
    if counts["rows_reversed"] != expected_rows:
        problems.append(f"reversed {counts['rows_reversed']} rows, the plan said {expected_rows}")
    if problems:
        raise InvariantError("invariant failed before COMMIT, rolled back: " + "; ".join(problems), problems=problems)


def abort_if_negative(rp: ReversalPlan, negative_policy: str, choices: str) -> None:
    """``negative_policy=abort`` and some user would go below zero: PolicyAbort before anything changes."""
    s = rp.summary
    if negative_policy == "abort" and s["users_negative"]:
        raise PolicyAbort(f"negative_policy=abort: {s['users_negative']} users would go below zero "
                          f"({s['negative_tokens']} tokens); nothing was changed. {choices}")


def incident_of(params: DestructiveParams) -> str | None:
    """The incident of the run, from its evidence folder (``<root>/<incident>/<run>/``), if it has one."""
    from pathlib import Path

    return Path(params.evidence_dir).parent.name if params.evidence_dir else None
