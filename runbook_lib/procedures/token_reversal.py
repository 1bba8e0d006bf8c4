"""Token reversal: the guide's "Token Transaction Rollback", done so that every number still adds up.

Where the guide is wrong, and what this procedure does instead:

* ``UPDATE "UserTokenBalance" … FROM "TokenTransaction"`` joins one balance row to *several* ledger rows;
  PostgreSQL applies only one of them per target row, so a user with three voucher grants gets one
  reversed. Here the ledger rows are aggregated per user first, and each balance moves by its total.
* Deleting the ledger rows erases the record of what happened. The default ``ledger_mode=compensate``
  writes one reversing row per affected row (amount negated, running balance filled) and keeps the
  originals. The application has no column linking ledger rows, so the reversing row names its original
  through columns it has: ``source`` = the reversal source, ``sourceId`` = the original row's id (indexed),
  ``metadata`` = the original, the voucher code, the incident and the plan id (see ``runbook_lib.grants``);
  a dedicated link column (``reversalOfId``) is used where a schema has one. Its ``type`` is ``REVERSAL``
  where the enum has it, else ``EARN_ADMIN_ADJUSTMENT``. ``ledger_mode=delete`` is the guide's behaviour,
  still with the balances (and later running balances) adjusted in the same transaction.
* Tokens already spent make balances negative. The review lists them; ``negative_policy`` decides:
  ``allow`` (flagged), ``clamp`` to zero (the shortfall is written to the ledger as an adjustment row so the
  ledger still sums to the balance; a balance that was already below zero stays where it was, never raised),
  ``skip`` those users, or ``abort``.
* Rows already reversed (a reversing row links to them) or already deleted are not reversed again, so a
  second execute changes nothing.
* ``voucher_codes`` selects grants as the application writes them: ``sourceId`` = the voucher's id
  (``grant_link=redemption_id`` where ``sourceId`` holds the redemption's id instead).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from .. import grants
from .. import names as nmod
from ..errors import InvariantError, NotFoundError, PolicyAbort, SchemaMismatchError
from ..grants import GrantLink, ReversalLink
from ..names import NameMap
from ..params import (
    INSPECT_USER_DESCRIPTION,
    DestructiveParams,
    InspectUser,
    LedgerSource,
    TopRows,
    name_list,
    parse_aware_datetime,
)
from .base import ApplyResult, Check, Plan, VerifyResult, plan_hash

NAME = "token-reversal"
NOTEBOOK = "token_reversal.ipynb"
TITLE = "Reverse voucher token grants in a time window: balances and ledger, in one transaction"
GUIDE_SECTION = "Token Transaction Rollback"
writes = True
destructive = False  # compensate mode keeps the ledger; delete mode is destructive (see is_destructive)
tables = ["TokenTransaction", "UserTokenBalance"]

LedgerMode = Literal["compensate", "delete"]
NegativePolicy = Literal["allow", "clamp", "skip", "abort"]

LEDGER_NEEDS = ["id", "userId", "amount", "source", "createdAt"]
BALANCE_NEEDS = ["userId", "balance"]


class Params(DestructiveParams):
    procedure: ClassVar[str] = NAME

    since: str | None = Field(None, description="required: start of the incident window (inclusive), ISO-8601 with a zone, e.g. 2025-12-01T00:00:00Z")
    until: str | None = Field(None, description="end of the window (exclusive), ISO-8601 with a zone; empty: up to now")
    source: LedgerSource = Field("voucher_redemption", description="ledger source of voucher grants")
    voucher_codes: list[str] = Field([], description="narrow to grants of these voucher codes (empty: all; unknown codes are an error)")
    user_ids: list[str] = Field([], description="narrow to these users (empty: all; unknown ids are an error)")
    ledger_mode: LedgerMode = Field("compensate", description="compensate (reversing rows, history kept) or delete (the guide's way, running balances corrected)")
    negative_policy: NegativePolicy = Field("allow", description="balances that would go below zero: allow (flagged), clamp (to zero), skip (user left out) or abort")
    reversal_type: str = Field("auto", description="type of reversing rows: auto (REVERSAL if the enum has it, else EARN_ADMIN_ADJUSTMENT) or a value of the enum")
    reversal_source: LedgerSource = Field("voucher_reversal", description="source of reversing rows (their sourceId names the original); must differ from source")
    grant_link: GrantLink = Field("voucher_and_user", description="how a grant names its voucher: voucher_and_user (sourceId = voucher id, as the app writes it) or redemption_id")
    top_users: TopRows = Field(50, description="users shown in the before/after table (1-1000)")
    inspect_user: InspectUser = Field(None, description=INSPECT_USER_DESCRIPTION)


    @field_validator("since", "until", mode="before")
    @classmethod
    def _aware(cls, v: Any, info: Any) -> str | None:
        parsed = parse_aware_datetime(v, info.field_name)
        return parsed.isoformat() if parsed else None

    @field_validator("voucher_codes", "user_ids", mode="before")
    @classmethod
    def _list(cls, v: Any, info: Any) -> list[str]:
        return name_list(v)

    @field_validator("source", "reversal_source", "reversal_type")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v or len(v) > 200:
            raise ValueError("must be a non-empty string of at most 200 characters")
        return v

    @model_validator(mode="after")
    def _window(self) -> Params:
        if not self.since:
            raise ValueError("'since' is required: the start of the incident window, e.g. 2025-12-01T00:00:00Z")
        if self.until and self.until <= self.since:
            raise ValueError(f"'since' ({self.since}) must be before 'until' ({self.until})")
        if self.reversal_source == self.source:
            raise ValueError("'reversal_source' must differ from 'source', or reversals would be reversed again")
        return self

    def since_dt(self) -> dt.datetime:
        assert self.since
        return dt.datetime.fromisoformat(self.since)

    def until_dt(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.until) if self.until else None


def is_destructive(params: Params) -> bool:
    return params.ledger_mode == "delete"


# ---------------------------------------------------------------------------------------------------------
# The reusable core: any selection of ledger rows (partial rollback reuses it)
# ---------------------------------------------------------------------------------------------------------


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


def _n(names: NameMap) -> dict[str, str]:
    """Quoted identifiers for the SQL templates."""
    L, B = "TokenTransaction", "UserTokenBalance"
    return {
        "ledger": names.t(L), "bal": names.t(B),
        "id": names.c(L, "id"), "uid": names.c(L, "userId"), "amt": names.c(L, "amount"),
        "src": names.c(L, "source"), "ts": names.c(L, "createdAt"), "meta": names.c(L, "metadata"),
        "type": names.c(L, "type"), "sid": names.c(L, "sourceId"), "desc": names.c(L, "description"),
        "ba": names.c(L, "balanceAfter"),
        "b_uid": names.c(B, "userId"), "b_bal": names.c(B, "balance"), "b_upd": names.c(B, "updatedAt"),
    }


def _affected_cte(q: dict[str, str], where_sql: str, link: ReversalLink | None) -> str:
    # an anti-join in WHERE (never a correlated subquery per row in a select list): set-based with or without
    # an index on the link column
    not_reversed = (
        f"and not exists (select 1 from {q['ledger']} r where {link.is_reversal_of('r', 'tt.' + q['id'])})"
        if link else "")
    return (
        f"affected as (select tt.{q['id']} as id, tt.{q['uid']} as user_id, tt.{q['amt']}::bigint as amount, "
        f"tt.{q['ts']} as created_at from {q['ledger']} tt where ({where_sql}) {not_reversed})"
    )


def _decision_sql(q: dict[str, str], policy: str) -> str:
    """Per user: count, total, balance before, included?, new balance, shortfall (clamp)."""
    raw_after = "(b.bal - p.total)"
    if policy == "clamp":
        # stop at zero, or where the balance already was if it was below zero: a reversal never raises a balance
        floor = "least(b.bal, 0)"
        new_bal, shortfall = f"greatest({raw_after}, {floor})", f"greatest({floor} - {raw_after}, 0)"
    else:
        new_bal, shortfall = raw_after, "0"
    include = "b.bal is not null" + (f" and {raw_after} >= 0" if policy == "skip" else "")
    return (
        "per_user as (select user_id, count(*)::bigint as n, sum(amount)::bigint as total from affected "
        "group by user_id), "
        f"decided as (select p.user_id, p.n, p.total, b.bal as before, {raw_after} as raw_after, "
        f"({include}) as included, {new_bal} as new_balance, {shortfall} as shortfall "
        f"from per_user p left join (select {q['b_uid']} as uid, {q['b_bal']}::bigint as bal from {q['bal']}) b "
        "on b.uid = p.user_id)"
    )


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
    L = "TokenTransaction"
    nmod.require(conn, names, {L: LEDGER_NEEDS, "UserTokenBalance": BALANCE_NEEDS})
    q = _n(names)
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
    base = f"with {_affected_cte(q, where_sql, link)}, {_decision_sql(q, negative_policy)} "
    # execute recomputes the plan under the locks (detail=False) in a write transaction: the selection is then
    # read once into temp tables that the plan's figures and digests, and later the apply, all come from
    materialize = not detail and bool(conn.execute(sa.text(
        "select current_setting('transaction_read_only') = 'off'")).scalar())
    if materialize:
        already = _materialize(conn, q, where_sql, where_params, link=link,
                               source_id=has["sourceId"], voucher_code_sql=voucher_code_sql, policy=negative_policy)
        selected = "with affected as (select id, user_id, amount from rb_affected), decided as (select * from rb_users) "
        already_sql = str(int(already))
    elif link:
        # one scan of the selection feeds both the affected rows and the count of those already reversed; the
        # reversed ids are joined as a set (hash or index join), never looked up row by row
        selected = (
            f"with selected as (select tt.{q['id']} as id, tt.{q['uid']} as user_id, tt.{q['amt']}::bigint as "
            f"amount, d.oid is not null as done from {q['ledger']} tt "
            f"left join ({link.reversed_ids(q['ledger'])}) d on d.oid = tt.{q['id']} where ({where_sql})), "
            "affected as (select id, user_id, amount from selected where not done), "
            f"{_decision_sql(q, negative_policy)} ")
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
        f"with {_affected_cte(q, where_sql, link)} select id, user_id as \"userId\", amount, "
        "created_at as \"createdAt\" from affected order by created_at, id limit :lim"),
        {**where_params, "lim": sample_rows}).mappings().all())
    rp.frames["by_day"] = pd.DataFrame(conn.execute(sa.text(
        f"with {_affected_cte(q, where_sql, link)} select date_trunc('day', created_at)::date as day, "
        "count(*) as rows, sum(amount)::bigint as tokens from affected group by 1 order by 1"),
        where_params).mappings().all(), columns=["day", "rows", "tokens"])
    rp.frames["histogram"] = _histogram(conn, base, where_params)
    if has["sourceId"] and _voucher_tables_exist(conn, names):
        rp.frames["by_voucher"] = _by_voucher(conn, names, q, where_sql, where_params, link, grant_link,
                                              voucher_code_sql)
    return rp


def _by_voucher(conn: Connection, names: NameMap, q: dict[str, str], where_sql: str, where_params: dict[str, Any],
                link: ReversalLink | None, grant_link: str, voucher_code_sql: str | None) -> pd.DataFrame:
    """Per voucher (as the grant names it, ``grant_link``): rows, tokens, grants without their redemption, and
    grants whose ``metadata.voucherCode`` names another voucher. One aggregated statement."""
    V, R = "Voucher", "VoucherRedemption"
    code_of_meta = voucher_code_sql or "null::text"
    rows = conn.execute(sa.text(
        f"with {_affected_cte(q, where_sql, link)} "
        f"select coalesce(v.{names.c(V, 'code')}, '(no voucher)') as voucher, count(*) as rows, "
        f"sum(a.amount)::bigint as tokens, "
        f"count(*) filter (where not exists (select 1 from {names.t(R)} r where "
        f"{grants.redemption_join(names, grant_link)})) as without_redemption, "
        f"count(*) filter (where {code_of_meta} is not null and {code_of_meta} <> v.{names.c(V, 'code')}) "
        f"as code_mismatch "
        f"from affected a join {q['ledger']} tt on tt.{q['id']} = a.id "
        f"left join {names.t(V)} v on v.{names.c(V, 'id')} = {grants.voucher_of_grant(names, grant_link)} "
        "group by 1 order by 3 desc, 1 limit 50"), where_params).mappings().all()
    return pd.DataFrame(rows, columns=["voucher", "rows", "tokens", "without_redemption", "code_mismatch"])


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


def _histogram(conn: Connection, base: str, where_params: dict[str, Any], bins: int = 30) -> pd.DataFrame:
    """Exact before/after balance distribution of the affected users, binned in the database; every bucket of
    both states is present (an empty one with 0 users), so neighbouring bars are neighbouring ranges."""
    rows = conn.execute(sa.text(base + """
        , vals as (select before as v, 'before' as k from decided where before is not null
                   union all select case when included then new_balance else before end, 'after' from decided
                   where before is not null),
          bounds as (select min(v) as lo, max(v) as hi from vals),
          counted as (select k, width_bucket(v, lo, hi + 1, :bins) as bucket, count(*) as users
                      from vals, bounds group by 1, 2)
        select s.k as "state", b.bucket,
               (lo + (hi + 1 - lo) * (b.bucket - 1) / :bins)::bigint as "from",
               coalesce(c.users, 0)::bigint as users
        from bounds, (values ('after'), ('before')) s(k) cross join generate_series(1, :bins) b(bucket)
        left join counted c on c.k = s.k and c.bucket = b.bucket
        where bounds.lo is not null
        order by 1, 2"""), {**where_params, "bins": bins}).mappings().all()
    return pd.DataFrame(rows, columns=["state", "bucket", "from", "users"])


def _voucher_tables_exist(conn: Connection, names: NameMap) -> bool:
    return all(conn.execute(sa.text("select to_regclass(:t)"), {"t": names.t(m)}).scalar() is not None
               for m in ("Voucher", "VoucherRedemption"))


def _materialize(conn: Connection, q: dict[str, str], where_sql: str, where_params: dict[str, Any], *,
                 link: ReversalLink | None, source_id: bool, voucher_code_sql: str | None, policy: str) -> int:
    """The selection into ``rb_affected`` (rows not reversed yet) and the per-user decisions into ``rb_users``,
    temp tables dropped at COMMIT; returns how many selected rows were already reversed. One scan of the ledger."""
    conn.execute(sa.text("drop table if exists rb_affected, rb_users"))
    extra = f", tt.{q['sid']} as source_id" if source_id else ", null::text as source_id"
    extra += f", {voucher_code_sql} as voucher_code" if voucher_code_sql else ", null::text as voucher_code"
    conn.execute(sa.text(
        f"create temp table rb_affected on commit drop as select tt.{q['id']} as id, tt.{q['uid']} as user_id, "
        f"tt.{q['amt']}::bigint as amount, tt.{q['ts']} as created_at{extra} "
        f"from {q['ledger']} tt where ({where_sql})"), where_params)
    already = 0
    if link:
        # rows reversed already leave the selection in one join: with statistics on the selection the planner
        # probes the application's sourceId index per selected row, or hashes, whichever is cheaper (never a
        # correlated lookup per row that has no index to use)
        conn.execute(sa.text("analyze rb_affected"))
        already = conn.execute(sa.text(
            f"delete from rb_affected a using {q['ledger']} r where {link.is_reversal_of('r', 'a.id')}"),
            where_params).rowcount
    conn.execute(sa.text(
        f"create temp table rb_users on commit drop as with affected as (select * from rb_affected), "
        f"{_decision_sql(q, policy)} select * from decided"))
    # statistics for the planner (a temp table has none); no indexes: the later statements join by hash
    conn.execute(sa.text("analyze rb_users"))
    return int(already)


def lock_reversal(conn: Connection, names: NameMap, where_sql: str, where_params: dict[str, Any]) -> int:
    """Lock the affected ledger rows and their users' balance rows, in id order (no deadlocks)."""
    q = _n(names)
    # one statement, one scan of the selection: the CTE locks the ledger rows in id order (a CTE with FOR UPDATE
    # is never inlined); the aggregate over it must read it to its end, so every selected row is locked before
    # the balance rows of their users are locked, in user order. Counted in the database: no row goes to Python.
    return int(conn.execute(sa.text(
        f"with locked as (select tt.{q['uid']} as user_id from {q['ledger']} tt where ({where_sql}) "
        f"order by tt.{q['id']}::text collate \"C\" for update of tt), "
        "users as (select coalesce(array_agg(distinct user_id), '{}') as ids from locked) "
        f"select count(*) from (select 1 from {q['bal']} b where b.{q['b_uid']} in (select unnest(ids) from users) "
        f"order by b.{q['b_uid']}::text collate \"C\" for update) s"), where_params).scalar_one())


def apply_reversal(conn: Connection, names: NameMap, rp: ReversalPlan) -> dict[str, int]:
    """Reverse the planned rows with set-based statements; balances move by per-user totals."""
    q = _n(names)
    if not (rp.materialized and conn.execute(sa.text("select to_regclass('pg_temp.rb_users')")).scalar()):
        _materialize(conn, q, rp.where_sql, rp.where_params, link=rp.link, source_id=rp.has_source_id,
                     voucher_code_sql=rp.voucher_code_sql, policy=rp.negative_policy)
    conn.execute(sa.text("delete from rb_affected a using rb_users u where u.user_id = a.user_id and not u.included"))
    counts: dict[str, int] = {}
    now = "(now() at time zone 'utc')"
    meta_type = nmod.column_type(conn, names, "TokenTransaction", "metadata") if rp.voucher_code_sql else None
    binds = {"rsource": rp.reversal_source, "rtype": rp.reversal_type, "incident": rp.incident,
             "plan_id": rp.plan_id}
    if rp.ledger_mode == "compensate":
        assert rp.link is not None  # plan_reversal refuses compensate mode without a link
        cols = [q["id"], q["uid"], q["amt"], q["src"], q["ts"], rp.link.column]
        vals = ["'rev_' || a.id", "a.user_id", "-a.amount", ":rsource", now, "a.id"]
        type_expr = "cast(:rtype as " + _enum_type_of(conn, names) + ")" if rp.type_is_enum else ":rtype"
        if rp.has_type:
            cols.append(q["type"])
            vals.append(type_expr)
        if rp.link.kind == "column" and rp.has_source_id:
            cols.append(q["sid"])  # the link column names the original; sourceId keeps the original's
            vals.append("a.source_id")
        if meta_type:
            # the application's own way to say what a row is: the original, its voucher, this incident and plan
            cols.append(q["meta"])
            vals.append("jsonb_build_object('reversalOf', a.id, 'voucherCode', a.voucher_code, 'incident', "
                        "cast(:incident as text), 'planId', cast(:plan_id as text), 'reason', "
                        f"'voucher incident runbook: token reversal')::{meta_type}")
        if rp.has_description:
            cols.append(q["desc"])
            vals.append("'Reversal of ' || a.id || ' (voucher incident runbook)'")
        if rp.has_balance_after:
            cols.append(q["ba"])
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
                f"update {q['ledger']} t set {q['ba']} = t.{q['ba']} - d.removed from ("
                f"select t2.{q['id']} as id, sum(a.amount) as removed from {q['ledger']} t2 join rb_affected a "
                f"on a.user_id = t2.{q['uid']} and (a.created_at, a.id) < (t2.{q['ts']}, t2.{q['id']}) "
                f"where t2.{q['ba']} is not null group by 1) d where d.id = t.{q['id']}")).rowcount
    if rp.negative_policy == "clamp":
        cols = [q["id"], q["uid"], q["amt"], q["src"], q["ts"]]
        # one millisecond after the reversals: the adjustment follows them in the ledger's order
        vals = ["'clamp_' || md5(u.user_id || :rsource || now()::text)", "u.user_id", "u.shortfall", ":rsource",
                f"{now} + interval '1 millisecond'"]
        if rp.has_type:
            cols.append(q["type"])
            vals.append("cast(:rtype as " + _enum_type_of(conn, names) + ")" if rp.type_is_enum else ":rtype")
        if rp.has_description:
            cols.append(q["desc"])
            vals.append("'Clamp to zero after voucher reversal: shortfall ' || u.shortfall")
        if meta_type:
            cols.append(q["meta"])
            vals.append("jsonb_build_object('clampShortfall', u.shortfall, 'incident', cast(:incident as text), "
                        "'planId', cast(:plan_id as text), 'reason', 'voucher incident runbook: a reversal "
                        f"stopped at zero (negative_policy=clamp)')::{meta_type}")
        if rp.has_balance_after:
            cols.append(q["ba"])
            vals.append("u.new_balance")
        counts["clamp_rows_inserted"] = conn.execute(sa.text(
            f"insert into {q['ledger']} ({', '.join(cols)}) select {', '.join(vals)} from rb_users u "
            "where u.included and u.shortfall > 0"), binds).rowcount
    upd = f", {q['b_upd']} = {now}" if nmod.has_column(conn, names, "UserTokenBalance", "updatedAt") else ""
    counts["balances_updated"] = conn.execute(sa.text(
        f"update {q['bal']} b set {q['b_bal']} = u.new_balance{upd} from rb_users u "
        f"where b.{q['b_uid']} = u.user_id and u.included")).rowcount
    counts["rows_reversed"] = int(conn.execute(sa.text("select count(*) from rb_affected")).scalar_one())
    counts["tokens_reversed"] = int(conn.execute(sa.text("select coalesce(sum(amount),0) from rb_affected")).scalar_one())
    counts["users_affected"] = int(conn.execute(sa.text("select count(*) from rb_users where included")).scalar_one())
    counts["users_left_negative"] = int(conn.execute(sa.text(
        "select count(*) from rb_users where included and new_balance < 0")).scalar_one())
    counts["clamp_shortfall"] = int(conn.execute(sa.text(
        "select coalesce(sum(shortfall),0) from rb_users where included")).scalar_one())
    return counts


def _enum_type_of(conn: Connection, names: NameMap) -> str:
    L = "TokenTransaction"
    return str(conn.execute(sa.text(
        "select format_type(a.atttypid, a.atttypmod) from pg_attribute a "
        "where a.attrelid = to_regclass(:t) and a.attname = :c"),
        {"t": names.t(L), "c": names.column(L, "type")}).scalar_one())


def check_reversal(conn: Connection, names: NameMap, rp: ReversalPlan, counts: dict[str, int]) -> None:
    """Invariants before COMMIT, recomputed from the database; raise InvariantError (-> ROLLBACK)."""
    q = _n(names)
    problems: list[str] = []

    def users_whose_balance(condition: str) -> int:
        """How many included users' balances meet ``condition`` (on ``b``, the balance row, and ``u``)."""
        return int(conn.execute(sa.text(
            f"select count(*) from rb_users u join {q['bal']} b on b.{q['b_uid']} = u.user_id "
            f"where u.included and {condition}")).scalar_one())

    if wrong_balance := users_whose_balance(f"b.{q['b_bal']} <> u.before - u.total + u.shortfall"):
        problems.append(f"{wrong_balance} balances differ from before - reversed total (+ clamp shortfall)")
    if rp.ledger_mode == "compensate":
        assert rp.link is not None
        # each affected row has exactly one reversing row of the opposite amount: one aggregated join
        unreversed = conn.execute(sa.text(
            f"select count(*) from rb_affected a left join (select r.{rp.link.column} as oid, count(*) as n, "
            f"sum(r.{q['amt']})::bigint as total from {q['ledger']} r join rb_affected a2 "
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
            pushed_below := users_whose_balance(f"b.{q['b_bal']} < least(u.before, 0)")):
        problems.append(f"{pushed_below} balances pushed below zero despite policy {rp.negative_policy}")
    if rp.negative_policy == "clamp" and (raised := users_whose_balance(f"b.{q['b_bal']} > u.before")):
        problems.append(f"{raised} balances raised by a reversal (clamp must never add tokens)")
    expected_rows = rp.summary["rows_to_reverse"]
    if counts["rows_reversed"] != expected_rows:
        problems.append(f"reversed {counts['rows_reversed']} rows, the plan said {expected_rows}")
    if problems:
        raise InvariantError("invariant failed before COMMIT, rolled back: " + "; ".join(problems), problems=problems)


# ---------------------------------------------------------------------------------------------------------
# The procedure
# ---------------------------------------------------------------------------------------------------------


def selection(conn: Connection, params: Params, names: NameMap) -> tuple[str, dict[str, Any]]:
    """The ledger rows the parameters select, as a SQL condition on ``tt`` plus bind values."""
    L = "TokenTransaction"
    nmod.require(conn, names, {L: LEDGER_NEEDS})
    q = _n(names)
    ts_type = nmod.column_type(conn, names, L, "createdAt") or ""
    since = params.since_dt()
    until = params.until_dt()
    if "without time zone" in ts_type:  # Prisma stores UTC in timestamp(3) without time zone
        since = since.astimezone(dt.UTC).replace(tzinfo=None)
        until = until.astimezone(dt.UTC).replace(tzinfo=None) if until else None
    where = [f"tt.{q['src']} = :source", f"tt.{q['ts']} >= :since"]
    values: dict[str, Any] = {"source": params.source, "since": since}
    if until:
        where.append(f"tt.{q['ts']} < :until")
        values["until"] = until
    if params.user_ids:
        User = "User"
        if conn.execute(sa.text("select to_regclass(:t)"), {"t": names.t(User)}).scalar() is not None:
            known = {r[0] for r in conn.execute(sa.text(
                f"select {names.c(User, 'id')} from {names.t(User)} where {names.c(User, 'id')} = any(:ids)"),
                {"ids": params.user_ids})}
        else:
            known = {r[0] for r in conn.execute(sa.text(
                f"select distinct {q['uid']} from {q['ledger']} where {q['uid']} = any(:ids)"), {"ids": params.user_ids})}
        unknown = sorted(set(params.user_ids) - known)
        if unknown:
            raise NotFoundError(f"unknown user ids ({len(unknown)}): {', '.join(unknown[:10])}"
                                + (" …" if len(unknown) > 10 else ""), unknown=unknown)
        where.append(f"tt.{q['uid']} = any(:user_ids)")
        values["user_ids"] = params.user_ids
    if params.voucher_codes:
        V, R = "Voucher", "VoucherRedemption"
        nmod.require(conn, names, {V: ["id", "code"], R: ["id", "voucherId", "userId"], L: ["sourceId"]})
        known = {r[0] for r in conn.execute(sa.text(
            f"select {names.c(V, 'code')} from {names.t(V)} where {names.c(V, 'code')} = any(:codes)"),
            {"codes": params.voucher_codes})}
        unknown = sorted(set(params.voucher_codes) - known)
        if unknown:
            raise NotFoundError(f"unknown voucher codes ({len(unknown)}): {', '.join(unknown[:10])}"
                                + (" …" if len(unknown) > 10 else ""), unknown=unknown)
        if params.grant_link == "redemption_id":
            where.append(
                f"tt.{q['sid']} in (select r.{names.c(R, 'id')} from {names.t(R)} r join {names.t(V)} v "
                f"on v.{names.c(V, 'id')} = r.{names.c(R, 'voucherId')} where v.{names.c(V, 'code')} = any(:codes))")
        else:  # the application: a grant's sourceId is its voucher's id
            where.append(f"tt.{q['sid']} in (select v.{names.c(V, 'id')} from {names.t(V)} v "
                         f"where v.{names.c(V, 'code')} = any(:codes))")
        values["codes"] = params.voucher_codes
    return " and ".join(where), values


def _to_plan(rp: ReversalPlan, params: Params) -> Plan:
    s = rp.summary
    summary = {
        "ledger rows to reverse": s["rows_to_reverse"],
        "users affected": s["users"] - s["users_excluded"],
        "tokens to reverse": s["tokens_to_reverse"],
        "users left negative": s["users_left_negative"],
        "users going negative (before policy)": s["users_negative"],
        "users skipped": s["users_excluded"],
        "clamp shortfall": s["clamp_shortfall"],
        "rows already reversed": s["rows_already_reversed"],
        "ledger mode": params.ledger_mode,
        "negative policy": params.negative_policy,
        "reversing rows' type": s["reversal_type"],
        "reversal linked by": s["reversal_link"],
        "grants matched to redemptions by": params.grant_link,
        "nothing_to_do": s["nothing_to_do"],
    }
    return Plan(
        procedure=NAME,
        plan_id=plan_hash(NAME, rp.digest),
        summary=summary,
        frames=rp.frames,
        warnings=rp.warnings,
        details={"reversal": rp, "raw": s},
    )


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan:
    where_sql, where_params = selection(conn, params, names)
    rp = plan_reversal(
        conn, names, where_sql=where_sql, where_params=where_params, ledger_mode=params.ledger_mode,
        negative_policy=params.negative_policy, reversal_type=params.reversal_type,
        reversal_source=params.reversal_source, sample_rows=params.sample_rows, top_users=params.top_users,
        detail=detail, grant_link=params.grant_link,
    )
    p = _to_plan(rp, params)
    if params.voucher_codes and rp.summary["rows"] == 0 and rp.summary["rows_already_reversed"] == 0:
        p.warnings.append(
            f"voucher_codes {', '.join(params.voucher_codes)} select no ledger row in the window: grants are matched "
            f"to vouchers by grant_link={params.grant_link}; check the window, the codes and grant_link")
    q = _n(names)
    p.exports = {
        "affected_rows": (
            f"with {_affected_cte(q, where_sql, rp.link)} select * from affected order by created_at, id",
            rp.where_params),
        "per_user_before_after": (
            f"with {_affected_cte(q, where_sql, rp.link)}, {_decision_sql(q, params.negative_policy)} "
            "select * from decided order by user_id", rp.where_params),
    }
    return p


def incident_of(params: DestructiveParams) -> str | None:
    """The incident of the run, from its evidence folder (``<root>/<incident>/<run>/``), if it has one."""
    from pathlib import Path

    return Path(params.evidence_dir).parent.name if params.evidence_dir else None


def lock(conn: Connection, params: Params, names: NameMap) -> None:
    where_sql, where_params = selection(conn, params, names)
    lock_reversal(conn, names, where_sql, where_params)


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan) -> ApplyResult:
    rp: ReversalPlan = plan.details["reversal"]
    if params.negative_policy == "abort" and rp.summary["users_negative"]:
        raise PolicyAbort(
            f"negative_policy=abort: {rp.summary['users_negative']} users would go below zero "
            f"({rp.summary['negative_tokens']} tokens); nothing was changed. Review the list, then choose "
            "allow, clamp or skip")
    if rp.summary["nothing_to_do"]:
        return ApplyResult(changed=False, counts={"rows_reversed": 0},
                           messages=["nothing to reverse: every matching row is already reversed or gone"])
    rp.incident, rp.plan_id = incident_of(params), params.approved_plan
    counts = apply_reversal(conn, names, rp)
    return ApplyResult(changed=True, counts=counts, messages=[
        f"reversed {counts['rows_reversed']} ledger rows of {counts['users_affected']} users "
        f"({counts['tokens_reversed']} tokens, mode {rp.ledger_mode}, policy {rp.negative_policy})"])


def check(conn: Connection, params: Params, names: NameMap, plan: Plan, result: ApplyResult) -> None:
    if result.changed:
        check_reversal(conn, names, plan.details["reversal"], result.counts)
        plan.details["after_expected"] = expected_after(conn)


def expected_after(conn: Connection) -> dict[str, Any]:
    """The plan's after-figure of every reversed user (before - reversed + shortfall), read inside the execute's
    transaction, with that transaction's start: what ``verify`` compares the committed balances with."""
    rows = conn.execute(sa.text(
        "select user_id::text, new_balance::bigint from rb_users where included order by user_id")).all()
    # in the ledger's own clock (naive UTC, as apply_reversal writes its rows' timestamps)
    started = conn.execute(sa.text("select now() at time zone 'utc'")).scalar_one()
    return {"user_ids": [r[0] for r in rows], "balances": [int(r[1]) for r in rows], "since": started}


def after_figures_check(conn: Connection, names: NameMap, expected: dict[str, Any]) -> Check:
    """Committed balances against the plan's after-figures, one aggregated statement.

    A user whose balance differs is a failure, unless the application wrote a ledger row for that user (other
    than the run's own reversing rows) since the execute's transaction started: that user's balance has moved on
    by the application's own activity and is counted, not failed.
    """
    q = _n(names)
    n_users = len(expected["user_ids"])
    row = conn.execute(sa.text(
        f"with e(user_id, balance) as (select * from unnest(cast(:ids as text[]), cast(:bals as bigint[]))), "
        f"d as (select e.user_id, e.balance as expected, b.{q['b_bal']}::bigint as actual, exists ("
        f"  select 1 from {q['ledger']} t where t.{q['uid']}::text = e.user_id and t.{q['ts']} >= :since "
        f"  and t.{q['src']} <> :rsource) as moved_on "
        f"from e left join {q['bal']} b on b.{q['b_uid']}::text = e.user_id "
        "where b.{bal} is distinct from e.balance) "
        "select count(*) filter (where not moved_on), count(*) filter (where moved_on), "
        "(array_agg(user_id order by user_id) filter (where not moved_on))[1:20] from d"
        .replace("{bal}", q["b_bal"])),
        {"ids": expected["user_ids"], "bals": expected["balances"], "since": expected["since"],
         "rsource": expected.get("reversal_source", "")}).one()
    wrong, moved = int(row[0]), int(row[1])
    detail = (f"{n_users} reversed users compared with before - reversed (+ clamp shortfall)"
              + (f"; {moved} moved on since by the application's own ledger rows" if moved else "")
              + (f"; differing: {', '.join(row[2])}" if wrong else ""))
    return Check("balances equal the plan's after-figures", wrong == 0, wrong, detail, after_execute=True)


def verify(conn: Connection, params: Params, names: NameMap, plan: Plan | None) -> VerifyResult:
    """After execute: nothing in the selection is left unreversed; balances equal the plan's after-figures."""

    where_sql, where_params = selection(conn, params, names)
    q = _n(names)
    try:
        link: ReversalLink | None = grants.reversal_link(conn, names)
    except SchemaMismatchError:
        link = None  # delete mode on a ledger without any link: a deleted row is simply gone
    # rows still unreversed, split by the policy's decision for their user: rows of users the policy
    # reverses must be gone; users it leaves out (skip, or no balance row) keep theirs, and are counted
    left, by_design = (int(x) for x in conn.execute(sa.text(
        f"with {_affected_cte(q, where_sql, link)}, {_decision_sql(q, params.negative_policy)} "
        "select coalesce(sum(n) filter (where included), 0), coalesce(sum(n) filter (where not included), 0) "
        "from decided"), {**where_params, "rb_rsource": params.reversal_source}).one())
    checks = [Check("no selected ledger row left unreversed", left == 0, left,
                    "rows in the selection without a reversal, of users the policy reverses", after_execute=True)]
    if by_design:
        checks.append(Check("rows left by the policy (skipped users, users without a balance row)", True, by_design,
                            "listed in the review; not reversed by design"))
    if plan is not None and plan.details.get("after_expected") is not None:
        checks.append(after_figures_check(conn, names, {**plan.details["after_expected"],
                                                        "reversal_source": params.reversal_source}))
    return VerifyResult(checks=checks)
