"""SQL building blocks of the reversal core (:mod:`runbook_lib.reversal`).

* :func:`ledger_names`: the quoted ledger and balance identifiers every reversal query is written with;
* :func:`affected_cte` / :func:`decision_sql`: the ``affected`` rows of a selection and the per-user ``decided``
  figures (the plan, the execute, verify and the user inspector all start from these two);
* :func:`materialize_selection`: an execute's selection and decisions in the temp tables ``rb_affected`` / ``rb_users``;
* :func:`histogram_frame` / :func:`by_voucher_frame`: two of the review's aggregated frames;
* small catalog helpers the reversing procedures share: :func:`table_exists`, :func:`sql_type`,
  :func:`as_column_time` (naive UTC where Prisma stores it), :func:`refuse_unknown` (unknown codes or ids).
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import grants
from . import names as nmod
from .errors import NotFoundError
from .grants import ReversalLink
from .names import NameMap

LEDGER, BALANCE = "TokenTransaction", "UserTokenBalance"


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
    # an anti-join in WHERE (never a correlated subquery per row in a select list): set-based with or without
    # an index on the link column
    not_reversed = (
        f"and not exists (select 1 from {q['ledger']} r where {link.is_reversal_of('r', 'tt.' + q['id'])})"
        if link else "")
    return (
        f"affected as (select tt.{q['id']} as id, tt.{q['user_id']} as user_id, tt.{q['amount']}::bigint as amount, "
        f"tt.{q['created_at']} as created_at from {q['ledger']} tt where ({where_sql}) {not_reversed})"
    )


def decision_sql(q: dict[str, str], policy: str) -> str:
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
        f"from per_user p left join (select {q['b_user_id']} as uid, {q['b_balance']}::bigint as bal from {q['balances']}) b "
        "on b.uid = p.user_id)"
    )


def materialize_selection(conn: Connection, q: dict[str, str], where_sql: str, where_params: dict[str, Any], *,
                          link: ReversalLink | None, source_id: bool, voucher_code_sql: str | None, policy: str) -> int:
    """The selection into ``rb_affected`` (rows not reversed yet) and the per-user decisions into ``rb_users``,
    temp tables dropped at COMMIT; returns how many selected rows were already reversed. One scan of the ledger."""
    conn.execute(sa.text("drop table if exists rb_affected, rb_users"))
    extra = f", tt.{q['source_id']} as source_id" if source_id else ", null::text as source_id"
    extra += f", {voucher_code_sql} as voucher_code" if voucher_code_sql else ", null::text as voucher_code"
    conn.execute(sa.text(
        f"create temp table rb_affected on commit drop as select tt.{q['id']} as id, tt.{q['user_id']} as user_id, "
        f"tt.{q['amount']}::bigint as amount, tt.{q['created_at']} as created_at{extra} "
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
        f"{decision_sql(q, policy)} select * from decided"))
    # statistics for the planner (a temp table has none); no indexes: the later statements join by hash
    conn.execute(sa.text("analyze rb_users"))
    return int(already)


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
