"""Batches of a reversal for online mode: contiguous ranges of user ids, each with the digest of its rows and balances.

A batch's digest is made of the rows digest a plan's figures carry (:func:`runbook_lib.reversal_sql.plan_totals`:
``rows_digest`` over the affected rows ordered by id) and a digest of each user's decision (:data:`DECISION`: reversed
or left out by the policy, taken below zero or not), restricted to the batch's users. Unlike a single transaction's
plan id it does not pin the balances themselves: during an online run the application keeps writing for the users
of later batches, and each batch moves its users' balances by their totals under its own locks (its invariants
compare with the balances read there). A write that changes a decision (a user who would now go below zero, or be
skipped) changes the digest, and the batch is refused. The review computes every batch's digest in one aggregated statement
(:func:`layout`); an execute recomputes one batch under its locks with the ordinary plan of the restricted
selection (:func:`restrict`) and compares :func:`digest_of` its two digests with the approved one; before the
first batch, :func:`current` recomputes all of them at once (finished batches have no rows left: absent).

Ranges use the user id column's own collation (``>=`` / ``<=``, ``order by``), so the application's
``(userId, createdAt)`` index serves each batch's selection; digests order with ``collate "C"`` as the plan does.
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: per batch: users, rows, the two digests, and how many users a full reversal would take below zero
_PER_BATCH_TEMPLATE = """
  rows_by as (select g.batch, count(*) as n,
                md5(coalesce(string_agg(a.id || ':' || a.user_id || ':' || a.amount, ',' order by a.id::text collate "C"), ''))
                  as rd
              from affected a join grouped g on g.user_id = a.user_id group by g.batch),
  users_by as (select batch, min(user_id) as first, max(user_id) as last, count(*) as users,
                 md5(coalesce(string_agg({DECISION}, ',' order by user_id::text collate "C"), ''))
                   as bd,
                 coalesce(sum(n) filter (where included), 0) as open_rows,
                 count(*) filter (where raw_after < 0 and before is not null) as negative,
                 coalesce(sum(-raw_after) filter (where raw_after < 0 and before is not null), 0) as negative_tokens
               from grouped group by batch)
select u.batch, u.first, u.last, u.users, coalesce(r.n, 0) as rows, coalesce(r.rd, md5('')) as rd, u.bd,
       u.open_rows, u.negative, u.negative_tokens
from users_by u left join rows_by r on r.batch is not distinct from u.batch
order by u.batch nulls last"""


#: what a batch's approval fixes of each user: the policy's decision (reversed or left out) and whether the reversal
#: takes the balance below zero — not the balance itself, which the application keeps moving during an online run
DECISION = "user_id || ':' || included::int || ':' || (raw_after < 0 and before is not null)::int"


def digest_of(rows_digest: str, decisions_digest: str, options: str) -> str:
    """A batch's digest from its rows' digest (the same one a plan's figures carry: ids, users, amounts), its users'
    decisions (:data:`DECISION`) and the run's ``options`` (a fingerprint of the whole selection and the reversal
    options: an execute with other options than the review's matches no batch)."""
    return hashlib.sha256(f"{rows_digest}/{decisions_digest}/{options}".encode()).hexdigest()[:24]


def decisions_digest(conn: Connection, base: str | None = None, where_params: dict[str, Any] | None = None) -> str:
    """The decisions digest of the users materialized in this transaction's ``rb_users`` (under a batch's locks), or
    of ``decided`` as ``base`` (the CTEs that define it) computes it."""
    source = f"{base} select * from decided" if base else "select * from rb_users"
    return str(conn.execute(sa.text(
        f"select md5(coalesce(string_agg({DECISION}, ',' order by user_id::text collate \"C\"), '')) "
        f"from ({source}) d"), where_params or {}).scalar_one())


_PER_BATCH = _PER_BATCH_TEMPLATE.replace("{DECISION}", DECISION)


def restrict(where_sql: str, where_params: dict[str, Any], user_id_column: str, first: str,
             last: str) -> tuple[str, dict[str, Any]]:
    """The selection ``where_sql`` (on the ledger aliased ``tt``) restricted to one batch's users."""
    return (f"({where_sql}) and tt.{user_id_column} >= :rb_first and tt.{user_id_column} <= :rb_last",
            {**where_params, "rb_first": first, "rb_last": last})


def layout(conn: Connection, base: str, where_params: dict[str, Any], size: int,
           options: str) -> list[dict[str, Any]]:
    """Cut the users of ``decided`` (``base``: the CTEs that define ``affected`` and ``decided``) into batches of
    ``size`` users in user id order; one statement. Returns one dict per batch (number, first, last, users, rows,
    digest, open_rows: the rows the policy reverses, negative, negative_tokens)."""
    rows = conn.execute(sa.text(
        base + ", grouped as (select user_id, n, included, before, raw_after, "
        "(row_number() over (order by user_id) - 1) / :rb_size + 1 as batch from decided), " + _PER_BATCH),
        {**where_params, "rb_size": size}).mappings().all()
    return [_batch(r, options) for r in rows]


def current(conn: Connection, base: str, where_params: dict[str, Any], firsts: list[str],
            lasts: list[str], options: str) -> dict[int | None, dict[str, Any]]:
    """The work left now in each range (``firsts[i]``..``lasts[i]`` is batch ``i + 1``), keyed by batch number,
    and under ``None`` the work of users outside every range; ranges without any unreversed row are absent, and a
    range whose ``open_rows`` is 0 (only users the policy leaves out) has nothing left to do. One statement."""
    rows = conn.execute(sa.text(
        base + ", ranges as (select * from unnest(cast(:rb_firsts as text[]), cast(:rb_lasts as text[])) "
        "with ordinality as r(f, l, batch)), "
        "grouped as (select d.user_id, d.n, d.included, d.before, d.raw_after, r.batch from decided d "
        "left join ranges r on d.user_id >= r.f and d.user_id <= r.l), " + _PER_BATCH),
        {**where_params, "rb_firsts": firsts, "rb_lasts": lasts}).mappings().all()
    return {(int(r["batch"]) if r["batch"] is not None else None): _batch(r, options) for r in rows}


def _batch(r: Any, options: str) -> dict[str, Any]:
    return {"number": int(r["batch"]) if r["batch"] is not None else None, "first": str(r["first"]),
            "last": str(r["last"]), "users": int(r["users"]), "rows": int(r["rows"]),
            "digest": digest_of(r["rd"], r["bd"], options), "open_rows": int(r["open_rows"]), "negative": int(r["negative"]),
            "negative_tokens": int(r["negative_tokens"])}
