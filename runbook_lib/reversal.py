"""The reversal core: reverse any selection of token-ledger rows, balances and ledger in one transaction.

A selection is a SQL condition on the ledger aliased ``tt`` plus its bind values; token-reversal (a time window),
partial-rollback (the grants of the redemptions it clears) and full-rollback (every voucher grant) each build
their own and share everything else here:

* :class:`ReversalOptions`: the reversal parameters of the three procedures, declared and checked once;
* :func:`plan_reversal` (figures, digests, review frames) -> :class:`ReversalPlan`; :func:`lock_reversal`;
  :func:`apply_reversal`; :func:`check_reversal` (invariants before COMMIT); :func:`abort_if_negative`;
  :func:`incident_of`.

The SQL they are written with (the ``affected`` / ``decided`` CTEs, temp tables, totals, frames, the apply's
ledger statements) is in :mod:`runbook_lib.reversal_sql`.
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
    NOW_UTC,
    UserRange,
    analyze_temp,
    applied_totals,
    balance_range,
    balances_frame,
    by_day_frame,
    by_voucher_frame,
    decided_ctes,
    decision_sql,
    delete_reversed_rows,
    histogram_frame,
    insert_clamp_rows,
    insert_reversing_rows,
    ledger_names,
    materialize_selection,
    negative_frame,
    plan_totals,
    reversed_among,
    sample_frame,
    selected_columns,
    selection_key,
    unreversed_count,
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
    #: the user id range every selected user lies in (an online batch's), or None: balance rows are read in it
    users: UserRange | None = None
    #: the link where a reversing row names a row of the selection, so that a read of the selection must leave the
    #: reversed rows out (asked row by row); None where none does (a review's statements then skip that question)
    probe: ReversalLink | None = None


@dataclass
class _LedgerFacts:
    """What the ledger's schema allows a reversal: its optional columns, the link, the type of written rows."""

    has: dict[str, bool]
    link: ReversalLink | None
    type_is_enum: bool
    #: the type of the rows this run writes (reversing rows, clamp adjustments); None when it writes none
    resolved_type: str | None
    voucher_code_sql: str | None


def _ledger_facts(conn: Connection, names: NameMap, ledger_mode: str, negative_policy: str,
                  reversal_type: str) -> _LedgerFacts:
    """The catalog facts a plan is built on (checks the ledger and balance tables have the needed columns)."""
    L = LEDGER
    nmod.require(conn, names, {L: LEDGER_NEEDS, "UserTokenBalance": BALANCE_NEEDS})
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
    type_is_enum = has["type"] and nmod.column_type(conn, names, L, "type") == "USER-DEFINED"
    # the type of the rows this run writes (reversing rows, clamp adjustments); part of the plan id
    writes_rows = ledger_mode == "compensate" or negative_policy == "clamp"
    resolved_type = grants.resolve_reversal_type(conn, names, reversal_type) if has["type"] and writes_rows else None
    return _LedgerFacts(has, link, type_is_enum, resolved_type, grants.metadata_code(conn, names))


def _selection(conn: Connection, q: dict[str, str], where_sql: str, where_params: dict[str, Any],
               facts: _LedgerFacts, negative_policy: str, base: str, *, materialize: bool, probe: ReversalLink | None,
               users: UserRange | None) -> tuple[str, str]:
    """The CTE prefix the plan's totals read the selection through and the SQL of the already-reversed count;
    ``materialize``: into this transaction's temp tables; ``probe``: the link, where rows of the selection may be
    reversed (:func:`_reversal_probe`)."""
    link = facts.link
    if materialize:
        already = materialize_selection(conn, q, where_sql, where_params, link=link, source_id=facts.has["sourceId"],
                                        voucher_code_sql=facts.voucher_code_sql, policy=negative_policy, users=users)
        selected = "with affected as (select id, user_id, amount from rb_affected), decided as (select * from rb_users) "
        return selected, str(int(already))
    if probe:
        # one scan of the selection feeds both the affected rows and the count of those already reversed; each
        # selected row probes the link column's index once (ReversalLink.has_reversal)
        selected = (
            f"with selected as (select tt.{q['id']} as id, tt.{q['user_id']} as user_id, tt.{q['amount']}::bigint as "
            f"amount, {probe.has_reversal(q['ledger'], 'tt.' + q['id'])} as done from {q['ledger']} tt "
            f"where ({where_sql})), "
            "affected as (select id, user_id, amount from selected where not done), "
            f"{decision_sql(q, negative_policy)} ")
        return selected, "(select count(*) from selected where done)"
    return base, "0"


def _reversal_probe(conn: Connection, q: dict[str, str], where_sql: str, where_params: dict[str, Any],
                    link: ReversalLink | None) -> ReversalLink | None:
    """The link, if a reversing row names a row of the selection; else None: a review's statements then need not
    ask it row by row (the first review of an incident: nothing reversed yet). One scan of the selection and one of
    the link column's index for the array of its ids; the review's snapshot (REPEATABLE READ) holds for the rest."""
    if link is None:
        return None
    selected_ids = f"select tt.{q['id']} from {q['ledger']} tt where ({where_sql})"
    return link if reversed_among(conn, q, link, selected_ids, where_params, at_most=1) else None


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
    users: UserRange | None = None,
) -> ReversalPlan:
    """Compute what reversing the matching ledger rows would do, with aggregated, set-based queries. ``users``: a
    user id range every selected user lies in (an online batch's), read for the balances of an execute."""
    facts = _ledger_facts(conn, names, ledger_mode, negative_policy, reversal_type)
    q = ledger_names(names)
    link, resolved_type = facts.link, facts.resolved_type
    where_params = {**where_params, "rb_rsource": reversal_source}
    # execute recomputes the plan under the locks (detail=False) in a write transaction: the selection is then
    # read once into temp tables that the plan's figures and digests, and later the apply, all come from
    materialize = not detail and bool(conn.execute(sa.text(
        "select current_setting('transaction_read_only') = 'off'")).scalar())
    probe = None if materialize else _reversal_probe(conn, q, where_sql, where_params, link)
    base = decided_ctes(q, where_sql, probe, negative_policy)
    selected, already_sql = _selection(conn, q, where_sql, where_params, facts, negative_policy, base,
                                       materialize=materialize, probe=probe, users=users)
    totals = plan_totals(conn, selected, already_sql, where_params)
    summary = {k: (int(v) if not k.endswith("_digest") else v) for k, v in totals.items()
               if not k.endswith("_digest")}
    already = summary["rows_already_reversed"]
    summary["nothing_to_do"] = summary["rows_to_reverse"] == 0
    digest = {"rows": totals["rows_digest"], "balances": totals["bal_digest"], "mode": ledger_mode,
              "policy": negative_policy, "type": resolved_type, "source": reversal_source, "where": where_sql,
              "link": link.kind if link else None,
              "params": {k: (sorted(v) if isinstance(v, list) else v) for k, v in where_params.items()}}
    rp = ReversalPlan(
        where_sql=where_sql, where_params=where_params, ledger_mode=ledger_mode, negative_policy=negative_policy,
        reversal_type=resolved_type or reversal_type, reversal_source=reversal_source, summary=summary,
        digest=digest, has_balance_after=facts.has["balanceAfter"], link=link, has_type=facts.has["type"],
        has_source_id=facts.has["sourceId"], has_description=facts.has["description"],
        type_is_enum=facts.type_is_enum, voucher_code_sql=facts.voucher_code_sql, materialized=materialize,
        users=users, probe=probe,
    )
    summary["reversal_type"] = resolved_type or "-"
    summary["reversal_link"] = link.description if link else "none (delete mode)"
    _warnings(rp, summary, negative_policy, already)
    if detail:  # not when recomputed under locks for execute: the figures, not the display frames
        _review_frames(conn, names, q, rp, base, sample_rows=sample_rows, top_users=top_users, grant_link=grant_link)
    return rp


def _review_frames(conn: Connection, names: NameMap, q: dict[str, str], rp: ReversalPlan, base: str, *,
                   sample_rows: int, top_users: int, grant_link: str) -> None:
    """The review's bounded, aggregated frames of the plan, into ``rp.frames``."""
    where_sql, where_params, link = rp.where_sql, rp.where_params, rp.probe
    rp.frames["balances"] = balances_frame(conn, base, where_params, top_users)
    rp.frames["negative"] = negative_frame(conn, base, where_params, top_users)
    rp.frames["sample"] = sample_frame(conn, q, where_sql, where_params, link, sample_rows)
    rp.frames["by_day"] = by_day_frame(conn, q, where_sql, where_params, link)
    rp.frames["histogram"] = histogram_frame(conn, base, where_params)
    if rp.has_source_id and voucher_tables_exist(conn, names):
        rp.frames["by_voucher"] = by_voucher_frame(conn, names, q, where_sql, where_params, link, grant_link,
                                                   rp.voucher_code_sql)


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


def lock_reversal(conn: Connection, names: NameMap, where_sql: str, where_params: dict[str, Any],
                  users: UserRange | None = None) -> int:
    """Lock the affected ledger rows and their users' balance rows, in id order (no deadlocks). ``users``: a user id
    range every selected user lies in (an online batch's): the balance rows are looked up in it.

    One scan of the selection: the locked ledger rows are kept in the temp table ``rb_locked`` (dropped at
    COMMIT), from which the plan recomputed under these locks takes its selection instead of scanning the ledger
    again (:func:`runbook_lib.reversal_sql.materialize_selection`): the plan is exactly the rows locked here.
    """
    q = ledger_names(names)
    source_id = nmod.has_column(conn, names, LEDGER, "sourceId")
    conn.execute(sa.text("drop table if exists rb_locked"))
    conn.execute(sa.text(
        f"create temp table rb_locked on commit drop as select "
        f"{selected_columns(q, source_id, grants.metadata_code(conn, names))} from {q['ledger']} tt "
        f"where ({where_sql}) order by tt.{q['id']}::text collate \"C\" for update of tt"), where_params)
    conn.info["rb_locked"] = selection_key(where_sql, where_params)
    analyze_temp(conn, "rb_locked")  # kept by the rename to rb_affected; plans the balance lock's join by hash
    # then the balance rows of their users, in user order; counted in the database: no row goes to Python
    in_range, range_binds = balance_range(q, users)
    return int(conn.execute(sa.text(
        f"select count(*) from (select 1 from {q['balances']} b where b.{q['b_user_id']} in "
        f"(select distinct user_id from rb_locked){in_range} order by b.{q['b_user_id']}::text collate \"C\" "
        "for update) s"), range_binds).scalar_one())


def apply_reversal(conn: Connection, names: NameMap, rp: ReversalPlan) -> dict[str, int]:
    """Reverse the planned rows with set-based statements; balances move by per-user totals."""
    q = ledger_names(names)
    _ensure_selection(conn, q, rp)
    counts: dict[str, int] = {}
    meta_type = nmod.column_type(conn, names, "TokenTransaction", "metadata") if rp.voucher_code_sql else None
    binds = {"rsource": rp.reversal_source, "rtype": rp.reversal_type, "incident": rp.incident,
             "plan_id": rp.plan_id}
    if rp.ledger_mode == "compensate":
        counts["ledger_rows_inserted"] = insert_reversing_rows(conn, names, q, rp, meta_type, binds)
        counts["ledger_rows_deleted"] = 0
    else:
        counts.update(delete_reversed_rows(conn, q, rp))
    if rp.negative_policy == "clamp":
        counts["clamp_rows_inserted"] = insert_clamp_rows(conn, names, q, rp, meta_type, binds)
    upd = f", {q['b_updated_at']} = {NOW_UTC}" if nmod.has_column(conn, names, "UserTokenBalance", "updatedAt") else ""
    in_range, range_binds = balance_range(q, rp.users)
    counts["balances_updated"] = conn.execute(sa.text(
        f"update {q['balances']} b set {q['b_balance']} = u.new_balance{upd} from rb_users u "
        f"where b.{q['b_user_id']} = u.user_id and u.included{in_range}"), range_binds).rowcount
    counts.update(applied_totals(conn))
    return counts


def _ensure_selection(conn: Connection, q: dict[str, str], rp: ReversalPlan) -> None:
    """The plan's selection in rb_affected / rb_users (materialized now unless the plan did), less the rows of
    users the policy leaves out."""
    if not (rp.materialized and conn.execute(sa.text("select to_regclass('pg_temp.rb_users')")).scalar()):
        materialize_selection(conn, q, rp.where_sql, rp.where_params, link=rp.link, source_id=rp.has_source_id,
                              voucher_code_sql=rp.voucher_code_sql, policy=rp.negative_policy, users=rp.users)
    conn.execute(sa.text("delete from rb_affected a using rb_users u where u.user_id = a.user_id and not u.included"))


def check_reversal(conn: Connection, names: NameMap, rp: ReversalPlan, counts: dict[str, int]) -> None:
    """Invariants before COMMIT, recomputed from the database; raise InvariantError (-> ROLLBACK)."""
    q = ledger_names(names)
    problems: list[str] = []
    in_range, range_binds = balance_range(q, rp.users)

    def users_whose_balance(condition: str) -> int:
        """How many included users' balances meet ``condition`` (on ``b``, the balance row, and ``u``)."""
        return int(conn.execute(sa.text(
            f"select count(*) from rb_users u join {q['balances']} b on b.{q['b_user_id']} = u.user_id "
            f"where u.included{in_range} and {condition}"), range_binds).scalar_one())

    if wrong_balance := users_whose_balance(f"b.{q['b_balance']} <> u.before - u.total + u.shortfall"):
        problems.append(f"{wrong_balance} balances differ from before - reversed total (+ clamp shortfall)")
    if rp.ledger_mode == "compensate":
        assert rp.link is not None
        # each affected row has exactly one reversing row of the opposite amount
        unreversed = unreversed_count(conn, q, rp.link, {"rb_rsource": rp.reversal_source})
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
