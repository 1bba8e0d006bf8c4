"""SQL building blocks of the reversal core (:mod:`runbook_lib.reversal`).

* :func:`ledger_names`: the quoted ledger and balance identifiers every reversal query is written with;
* :func:`affected_cte` / :func:`decision_sql`: the ``affected`` rows of a selection and the per-user ``decided``
  figures (the plan, the execute, verify and the user inspector all start from these two);
* :func:`materialize_selection`: an execute's selection and decisions in the temp tables ``rb_affected`` / ``rb_users``
  (:func:`analyze_temp`: their planner statistics);
* :func:`insert_reversing_rows` / :func:`delete_reversed_rows`, :func:`insert_clamp_rows`: the apply's ledger
  statements (compensate or delete mode; the clamp adjustments);
* :func:`plan_totals`: a plan's figures and digests in one statement; :func:`applied_totals`: an apply's;
* :func:`balances_frame`, :func:`negative_frame`, :func:`sample_frame`, :func:`by_day_frame`,
  :func:`histogram_frame`, :func:`by_voucher_frame`: the review's bounded, aggregated frames;
* small catalog helpers the reversing procedures share: :func:`table_exists`, :func:`sql_type`,
  :func:`as_column_time` (naive UTC where Prisma stores it), :func:`refuse_unknown` (unknown codes or ids).
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import grants
from . import names as nmod
from .errors import NotFoundError
from .grants import ReversalLink
from .names import NameMap

if TYPE_CHECKING:
    from .reversal import ReversalPlan

LEDGER, BALANCE = "TokenTransaction", "UserTokenBalance"
#: a range of user ids, (first, last) inclusive: an online batch's users (:func:`balance_range`)
UserRange = tuple[str, str]
#: the time the rows a reversal writes carry (the ledger stores naive UTC)
NOW_UTC = "(now() at time zone 'utc')"


def ledger_names(names: NameMap) -> dict[str, str]:
    """Quoted identifiers for the SQL templates: ``ledger`` and ``balances`` (tables), the ledger's columns by
    their field names in snake case (``user_id``, ``created_at`` …), the balance table's prefixed with ``b_``."""
    L, B = LEDGER, BALANCE
    return {
        "ledger": names.t(L), "balances": names.t(B),
        "id": names.c(L, "id"), "user_id": names.c(L, "userId"), "amount": names.c(L, "amount"),
        "source": names.c(L, "source"), "created_at": names.c(L, "createdAt"), "metadata": names.c(L, "metadata"),
        "type": names.c(L, "type"), "source_id": names.c(L, "sourceId"), "description": names.c(L, "description"),
        "balance_after": names.c(L, "balanceAfter"),
        "b_user_id": names.c(B, "userId"), "b_balance": names.c(B, "balance"), "b_updated_at": names.c(B, "updatedAt"),
    }


def affected_cte(q: dict[str, str], where_sql: str, link: ReversalLink | None) -> str:
    # one probe of the link column's index per selected row (ReversalLink.not_reversed): never a join whose plan
    # rests on statistics that do not know the reversing rows yet
    not_reversed = f"and {link.not_reversed(q['ledger'], 'tt.' + q['id'])}" if link else ""
    return (
        f"affected as (select tt.{q['id']} as id, tt.{q['user_id']} as user_id, tt.{q['amount']}::bigint as amount, "
        f"tt.{q['created_at']} as created_at from {q['ledger']} tt where ({where_sql}) {not_reversed})"
    )


def balance_range(q: dict[str, str], users: UserRange | None) -> tuple[str, dict[str, Any]]:
    """`` and `` a condition keeping the balance rows of the user id range ``users`` (first, last; inclusive), and its
    binds; nothing without a range. An online batch is such a range (every user it selects lies in it): its balance
    rows are then read through the user id index's range, not the whole balance table once per batch."""
    if users is None:
        return "", {}
    return (f" and {q['b_user_id']} >= :rb_ufirst and {q['b_user_id']} <= :rb_ulast",
            {"rb_ufirst": users[0], "rb_ulast": users[1]})


def decision_sql(q: dict[str, str], policy: str, balance_where: str = "") -> str:
    """Per user: count, total, balance before, included?, new balance, shortfall (clamp); ``balance_where``
    (:func:`balance_range`) narrows the balance rows read."""
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
        f"from per_user p left join (select {q['b_user_id']} as uid, {q['b_balance']}::bigint as bal from {q['balances']} "
        f"where true{balance_where}) b "
        "on b.uid = p.user_id)"
    )


def decided_ctes(q: dict[str, str], where_sql: str, link: ReversalLink | None, policy: str) -> str:
    """``with affected …, per_user …, decided …`` (and a trailing space): the selection's rows not reversed yet and
    each user's decision, read-only (no temp tables); a statement follows with its ``select``."""
    return f"with {affected_cte(q, where_sql, link)}, {decision_sql(q, policy)} "


def selected_columns(q: dict[str, str], source_id: bool, voucher_code_sql: str | None) -> str:
    """The columns an execute keeps of each selected ledger row ``tt`` (``rb_locked``, ``rb_affected``)."""
    extra = f", tt.{q['source_id']} as source_id" if source_id else ", null::text as source_id"
    extra += f", {voucher_code_sql} as voucher_code" if voucher_code_sql else ", null::text as voucher_code"
    return (f"tt.{q['id']} as id, tt.{q['user_id']} as user_id, tt.{q['amount']}::bigint as amount, "
            f"tt.{q['created_at']} as created_at{extra}")


def selection_key(where_sql: str, where_params: dict[str, Any]) -> str:
    """What identifies a selection: its SQL and the values it binds (other binds of a statement do not count)."""
    import json

    used = {k: v for k, v in where_params.items() if f":{k}" in where_sql}
    return json.dumps([where_sql, used], sort_keys=True, default=str)


def locked_selection(conn: Connection, where_sql: str, where_params: dict[str, Any]) -> bool:
    """Did this transaction's lock step keep exactly this selection in ``rb_locked`` (see ``lock_reversal``)?"""
    return bool(conn.info.get("rb_locked") == selection_key(where_sql, where_params) and conn.execute(
        sa.text("select to_regclass('pg_temp.rb_locked') is not null")).scalar())


def analyze_temp(conn: Connection, table: str) -> None:
    """Planner statistics for one of this transaction's temp tables (autovacuum never sees them): without them the
    joins that follow are planned for a few hundred rows (index probes per user instead of one hash join). From a
    small sample (``default_statistics_target`` 10 for the rest of the transaction; only ANALYZE reads it): the
    row count is the table's own either way, and the plans need no finer histograms. 1M ledger rows, 66,666
    selected: 8 ms a table instead of 50, the same plans."""
    conn.execute(sa.text(f"set local default_statistics_target = 10; analyze {table}"))


def materialize_selection(conn: Connection, q: dict[str, str], where_sql: str, where_params: dict[str, Any], *,
                          link: ReversalLink | None, source_id: bool, voucher_code_sql: str | None, policy: str,
                          users: UserRange | None = None) -> int:
    """The selection into ``rb_affected`` (rows not reversed yet) and the per-user decisions into ``rb_users``,
    temp tables dropped at COMMIT; returns how many selected rows were already reversed. At most one scan of the
    ledger: none when the lock step already kept the locked rows of this very selection (``rb_locked``)."""
    conn.execute(sa.text("drop table if exists rb_affected, rb_users"))
    if locked_selection(conn, where_sql, where_params):
        conn.execute(sa.text("alter table rb_locked rename to rb_affected"))
        conn.info.pop("rb_locked", None)
    else:
        conn.execute(sa.text(
            f"create temp table rb_affected on commit drop as select "
            f"{selected_columns(q, source_id, voucher_code_sql)} from {q['ledger']} tt where ({where_sql})"),
            where_params)
        analyze_temp(conn, "rb_affected")
    already = 0
    if link:
        # rows reversed already leave the selection: their reversing rows found through the link column's index,
        # never a scan of the whole ledger nor a join (ReversalLink.has_reversal)
        if reversed_among(conn, q, link, "select id from rb_affected", where_params):  # a re-run or a resume
            already = conn.execute(sa.text(
                f"delete from rb_affected a where {link.has_reversal(q['ledger'], 'a.id')}"), where_params).rowcount
    in_range, range_binds = balance_range(q, users)
    conn.execute(sa.text(
        f"create temp table rb_users on commit drop as with affected as (select * from rb_affected), "
        f"{decision_sql(q, policy, in_range)} select * from decided"), range_binds)
    # statistics for the planner (a temp table has none); no indexes: the later statements join by hash
    analyze_temp(conn, "rb_users")
    return int(already)


def reversed_among(conn: Connection, q: dict[str, str], link: ReversalLink, ids_sql: str, binds: dict[str, Any],
                   *, at_most: int | None = None) -> int:
    """How many reversing rows the link names for the ids ``ids_sql`` selects (counted up to ``at_most``: 1 asks
    whether there is any): one scan of the link column's index for the array of those ids, no join, whatever the
    statistics know of the reversing rows. Bind ``:rb_rsource`` and what ``ids_sql`` binds."""
    rows = f"select 1 from {q['ledger']} r where {link.reversals_among('r', ids_sql)}"
    if at_most is not None:
        rows += f" limit {int(at_most)}"
    return int(conn.execute(sa.text(f"select count(*) from ({rows}) found"), binds).scalar_one())


def unreversed_count(conn: Connection, q: dict[str, str], link: ReversalLink, binds: dict[str, Any]) -> int:
    """Rows of ``rb_affected`` without exactly one reversing row of the opposite amount: the rows and their reversing
    rows (found as in :func:`reversed_among`) grouped by the original's id — no join, so no plan that the
    statistics, which do not know the reversing rows this transaction just wrote, could make quadratic."""
    return int(conn.execute(sa.text(
        "select count(*) from (select oid from ("
        "select a.id as oid, a.amount as orig, null::bigint as rev from rb_affected a union all "
        f"select r.{link.column}, null, r.{q['amount']}::bigint from {q['ledger']} r "
        f"where {link.reversals_among('r', 'select id from rb_affected')}) m "
        "group by oid having count(rev) <> 1 or sum(rev) <> -max(orig)) bad"), binds).scalar_one())


def plan_totals(conn: Connection, selected: str, already_sql: str, where_params: dict[str, Any]) -> Any:
    """The plan's figures and digests over ``decided`` (``selected``: the CTEs that define it). One statement:
    the selection is read once and feeds totals, digests and the already-count (``already_sql``)."""
    return conn.execute(sa.text(selected + f"""
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


def balances_frame(conn: Connection, base: str, where_params: dict[str, Any], top: int) -> pd.DataFrame:
    """The ``top`` users by reversed total: balance before and after, and why a user is flagged."""
    return pd.DataFrame(conn.execute(sa.text(base + """
        select user_id as "userId", n as "rows", total as "reversed", before as "balance_before",
          case when included then new_balance else before end as "balance_after",
          case when before is null then 'no balance row: skipped'
               when not included then 'skipped (would go negative)'
               when raw_after < 0 and shortfall > 0 then 'clamped, shortfall ' || shortfall
               when raw_after < 0 then 'NEGATIVE' else '' end as "flag"
        from decided order by total desc, user_id limit :top"""), {**where_params, "top": top}).mappings().all())


def negative_frame(conn: Connection, base: str, where_params: dict[str, Any], top: int) -> pd.DataFrame:
    """Users a full reversal would take below zero, or who have no balance row (the most negative first)."""
    return pd.DataFrame(conn.execute(sa.text(base + """
        select user_id as "userId", n as "rows", total as "reversed", before as "balance_before",
          raw_after as "balance_if_reversed", shortfall as "clamp_shortfall", included as "reversed_by_policy"
        from decided where raw_after < 0 or before is null order by raw_after nulls first, user_id
        limit :top"""), {**where_params, "top": top}).mappings().all())


def sample_frame(conn: Connection, q: dict[str, str], where_sql: str, where_params: dict[str, Any],
                 link: ReversalLink | None, limit: int) -> pd.DataFrame:
    """The first ``limit`` affected rows, in ledger order."""
    return pd.DataFrame(conn.execute(sa.text(
        f"with {affected_cte(q, where_sql, link)} select id, user_id as \"userId\", amount, "
        "created_at as \"createdAt\" from affected order by created_at, id limit :lim"),
        {**where_params, "lim": limit}).mappings().all())


def by_day_frame(conn: Connection, q: dict[str, str], where_sql: str, where_params: dict[str, Any],
                 link: ReversalLink | None) -> pd.DataFrame:
    """Affected rows and tokens per day."""
    return pd.DataFrame(conn.execute(sa.text(
        f"with {affected_cte(q, where_sql, link)} select date_trunc('day', created_at)::date as day, "
        "count(*) as rows, sum(amount)::bigint as tokens from affected group by 1 order by 1"),
        where_params).mappings().all(), columns=["day", "rows", "tokens"])


def histogram_frame(conn: Connection, base: str, where_params: dict[str, Any], bins: int = 30) -> pd.DataFrame:
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


def by_voucher_frame(conn: Connection, names: NameMap, q: dict[str, str], where_sql: str, where_params: dict[str, Any],
                     link: ReversalLink | None, grant_link: str, voucher_code_sql: str | None) -> pd.DataFrame:
    """Per voucher (as the grant names it, ``grant_link``): rows, tokens, grants without their redemption, and
    grants whose ``metadata.voucherCode`` names another voucher. One aggregated statement."""
    V, R = "Voucher", "VoucherRedemption"
    code_of_meta = voucher_code_sql or "null::text"
    rows = conn.execute(sa.text(
        f"with {affected_cte(q, where_sql, link)} "
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


def applied_totals(conn: Connection) -> dict[str, int]:
    """An apply's figures, counted in rb_affected / rb_users after it: rows and tokens reversed, users."""
    row = conn.execute(sa.text(
        "select (select count(*) from rb_affected) as rows_reversed, "
        "(select coalesce(sum(amount),0) from rb_affected) as tokens_reversed, "
        "count(*) filter (where included) as users_affected, "
        "count(*) filter (where included and new_balance < 0) as users_left_negative, "
        "coalesce(sum(shortfall) filter (where included),0) as clamp_shortfall from rb_users")).mappings().one()
    return {k: int(v) for k, v in row.items()}


def type_value(conn: Connection, names: NameMap, rp: ReversalPlan) -> str:
    """The written rows' type: the bind ``:rtype``, cast to the enum where the column is one."""
    return "cast(:rtype as " + sql_type(conn, names, LEDGER, "type") + ")" if rp.type_is_enum else ":rtype"


def insert_reversing_rows(conn: Connection, names: NameMap, q: dict[str, str], rp: ReversalPlan,
                           meta_type: str | None, binds: dict[str, Any]) -> int:
    """compensate mode: one reversing row per affected row, naming its original. One statement."""
    assert rp.link is not None  # plan_reversal refuses compensate mode without a link
    cols = [q["id"], q["user_id"], q["amount"], q["source"], q["created_at"], rp.link.column]
    vals = ["'rev_' || a.id", "a.user_id", "-a.amount", ":rsource", NOW_UTC, "a.id"]
    type_expr = type_value(conn, names, rp)
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
    return int(conn.execute(sa.text(
        f"insert into {q['ledger']} ({', '.join(cols)}) select {', '.join(vals)} from rb_affected a "
        "join rb_users u on u.user_id = a.user_id"), binds).rowcount)


def delete_reversed_rows(conn: Connection, q: dict[str, str], rp: ReversalPlan) -> dict[str, int]:
    """delete mode: the affected rows go; later running balances of their users are corrected."""
    counts: dict[str, int] = {}
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
    return counts


def insert_clamp_rows(conn: Connection, names: NameMap, q: dict[str, str], rp: ReversalPlan,
                       meta_type: str | None, binds: dict[str, Any]) -> int:
    """negative_policy=clamp: one adjustment row per user whose reversal stopped at zero. One statement."""
    cols = [q["id"], q["user_id"], q["amount"], q["source"], q["created_at"]]
    # one millisecond after the reversals: the adjustment follows them in the ledger's order
    vals = ["'clamp_' || md5(u.user_id || :rsource || now()::text)", "u.user_id", "u.shortfall", ":rsource",
            f"{NOW_UTC} + interval '1 millisecond'"]
    if rp.has_type:
        cols.append(q["type"])
        vals.append(type_value(conn, names, rp))
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
    return int(conn.execute(sa.text(
        f"insert into {q['ledger']} ({', '.join(cols)}) select {', '.join(vals)} from rb_users u "
        "where u.included and u.shortfall > 0"), binds).rowcount)


def table_exists(conn: Connection, table: str) -> bool:
    """Does ``table`` (a quoted, schema-qualified name such as ``names.t(model)``) exist?"""
    return conn.execute(sa.text("select to_regclass(:t)"), {"t": table}).scalar() is not None


def voucher_tables_exist(conn: Connection, names: NameMap) -> bool:
    return all(table_exists(conn, names.t(m)) for m in ("Voucher", "VoucherRedemption"))


def sql_type(conn: Connection, names: NameMap, model: str, fld: str) -> str:
    """The column's type as SQL can name it in a cast (``format_type``: ``"TransactionType"``, ``text`` …)."""
    return str(conn.execute(sa.text(
        "select format_type(a.atttypid, a.atttypmod) from pg_attribute a "
        "where a.attrelid = to_regclass(:t) and a.attname = :c"),
        {"t": names.t(model), "c": names.column(model, fld)}).scalar_one())


def as_column_time(conn: Connection, names: NameMap, model: str, fld: str, value: dt.datetime | None) -> Any:
    """Prisma stores UTC in ``timestamp(3) without time zone``: compare with naive UTC values there."""
    if value is None:
        return None
    ctype = nmod.column_type(conn, names, model, fld) or ""
    return value.astimezone(dt.UTC).replace(tzinfo=None) if "without time zone" in ctype else value


def refuse_unknown(wanted: list[str], known: set[Any], what: str, hint: str = "") -> None:
    """NotFoundError naming the ``wanted`` values (voucher codes, user ids) the database does not know."""
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise NotFoundError(f"unknown {what} ({len(unknown)}): {', '.join(unknown[:10])}"
                            + (" …" if len(unknown) > 10 else "") + hint, unknown=unknown)
