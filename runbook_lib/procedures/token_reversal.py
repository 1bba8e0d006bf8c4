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

This module selects the rows (:func:`selection`); the reversal itself (plan, locks, apply, invariants), shared with
partial-rollback and full-rollback, is :mod:`runbook_lib.reversal`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, NotRequired, Self, TypedDict

import sqlalchemy as sa
from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from .. import grants
from .. import names as nmod
from ..errors import SchemaMismatchError
from ..grants import GrantLink, ReversalLink
from ..names import NameMap
from ..online import OnlineOptions, advice
from ..params import DestructiveParams, name_list, parse_aware_datetime
from ..reversal import (
    LEDGER_NEEDS,
    ReversalOptions,
    ReversalPlan,
    abort_if_negative,
    apply_reversal,
    check_reversal,
    incident_of,
    lock_reversal,
    plan_reversal,
)
from ..reversal_sql import (
    affected_cte,
    as_column_time,
    decided_ctes,
    ledger_names,
    refuse_unknown,
    table_exists,
)
from ..user_ids import UserIds
from . import register
from .base import ApplyResult, Batch, Check, Plan, Procedure, Steps, VerifyResult, plan_hash

NAME = "token-reversal"


class SelectionParams(DestructiveParams):
    """token-reversal's own parameters (the selection); :class:`Params` adds the shared reversal options."""

    since: str | None = Field(None, description="required: start of the incident window (inclusive), ISO-8601 with a zone, e.g. 2025-12-01T00:00:00Z")
    until: str | None = Field(None, description="end of the window (exclusive), ISO-8601 with a zone; empty: up to now")
    voucher_codes: list[str] = Field([], description="narrow to grants of these voucher codes (empty: all; unknown codes are an error)")
    user_ids: list[str] = Field([], description="narrow to these users (empty: all; unknown ids are an error)")
    grant_link: GrantLink = Field("voucher_and_user", description="how a grant names its voucher: voucher_and_user (sourceId = voucher id, as the app writes it) or redemption_id")

    @field_validator("since", "until", mode="before")
    @classmethod
    def _aware(cls, v: Any, info: Any) -> str | None:
        parsed = parse_aware_datetime(v, info.field_name)
        return parsed.isoformat() if parsed else None

    @field_validator("voucher_codes", "user_ids", mode="before")
    @classmethod
    def _list(cls, v: Any, info: Any) -> list[str]:
        return name_list(v)

    @model_validator(mode="after")
    def _window(self) -> Self:
        if not self.since:
            raise ValueError("'since' is required: the start of the incident window, e.g. 2025-12-01T00:00:00Z")
        if self.until and self.until <= self.since:
            raise ValueError(f"'since' ({self.since}) must be before 'until' ({self.until})")
        return self

    def since_dt(self) -> dt.datetime:
        assert self.since
        return dt.datetime.fromisoformat(self.since)

    def until_dt(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.until) if self.until else None


class Params(OnlineOptions, ReversalOptions, SelectionParams):
    """Its own parameters first, then the reversal options (all as :class:`ReversalOptions` declares them), then
    online mode's (:class:`~runbook_lib.online.OnlineOptions`)."""

    procedure: ClassVar[str] = NAME

    @model_validator(mode="after")
    def _online_compensates(self) -> Self:
        if self.execution == "online" and self.ledger_mode != "compensate":
            raise ValueError("execution=online needs ledger_mode=compensate: a finished batch is recognised by its "
                             "reversing rows (delete mode leaves none); run delete mode as one transaction")
        return self


class AfterExpected(TypedDict):
    """The reversed users' after-figures, read by :func:`check` inside the execute's transaction."""

    user_ids: UserIds  # the reversed users (``rb_users`` where included), one array literal
    balances: str  # each one's balance after the plan (before - reversed + clamp shortfall): a bigint[] literal,
    # in the order of ``user_ids``
    since: dt.datetime  # the execute transaction's start, naive UTC (the ledger's own clock)
    #: added by :func:`verify` when it compares: the run's reversal source (its rows are not moving on)
    reversal_source: NotRequired[str]


class TokenReversalDetails(TypedDict):
    """What token-reversal's plan hands to apply/check/verify and the notebook: the reversal, its figures."""

    reversal: ReversalPlan  # the shared reversal core's plan (selection, per-user decisions, frames)
    #: ``reversal.summary`` itself: the core's raw figures (counts, flags, names), mixed values hence ``Any``
    raw: dict[str, Any]
    #: set by :func:`check` after a changing apply: what :func:`verify` compares the committed balances with
    after_expected: NotRequired[AfterExpected]


# ---------------------------------------------------------------------------------------------------------
# The procedure
# ---------------------------------------------------------------------------------------------------------


def selection(conn: Connection, params: Params, names: NameMap) -> tuple[str, dict[str, Any]]:
    """The ledger rows the parameters select, as a SQL condition on ``tt`` plus bind values."""
    L = "TokenTransaction"
    nmod.require(conn, names, {L: LEDGER_NEEDS})
    q = ledger_names(names)
    since = as_column_time(conn, names, L, "createdAt", params.since_dt())
    until = as_column_time(conn, names, L, "createdAt", params.until_dt())
    where = [f"tt.{q['source']} = :source", f"tt.{q['created_at']} >= :since"]
    values: dict[str, Any] = {"source": params.source, "since": since}
    if until:
        where.append(f"tt.{q['created_at']} < :until")
        values["until"] = until
    if params.user_ids:
        User = "User"
        if table_exists(conn, names.t(User)):
            known = {r[0] for r in conn.execute(sa.text(
                f"select {names.c(User, 'id')} from {names.t(User)} where {names.c(User, 'id')} = any(:ids)"),
                {"ids": params.user_ids})}
        else:
            known = {r[0] for r in conn.execute(sa.text(
                f"select distinct {q['user_id']} from {q['ledger']} where {q['user_id']} = any(:ids)"), {"ids": params.user_ids})}
        refuse_unknown(params.user_ids, known, "user ids")
        where.append(f"tt.{q['user_id']} = any(:user_ids)")
        values["user_ids"] = params.user_ids
    if params.voucher_codes:
        V, R = "Voucher", "VoucherRedemption"
        nmod.require(conn, names, {V: ["id", "code"], R: ["id", "voucherId", "userId"], L: ["sourceId"]})
        known = {r[0] for r in conn.execute(sa.text(
            f"select {names.c(V, 'code')} from {names.t(V)} where {names.c(V, 'code')} = any(:codes)"),
            {"codes": params.voucher_codes})}
        refuse_unknown(params.voucher_codes, known, "voucher codes")
        if params.grant_link == "redemption_id":
            where.append(
                f"tt.{q['source_id']} in (select r.{names.c(R, 'id')} from {names.t(R)} r join {names.t(V)} v "
                f"on v.{names.c(V, 'id')} = r.{names.c(R, 'voucherId')} where v.{names.c(V, 'code')} = any(:codes))")
        else:  # the application: a grant's sourceId is its voucher's id
            where.append(f"tt.{q['source_id']} in (select v.{names.c(V, 'id')} from {names.t(V)} v "
                         f"where v.{names.c(V, 'code')} = any(:codes))")
        values["codes"] = params.voucher_codes
    return " and ".join(where), values


def _to_plan(rp: ReversalPlan, params: Params) -> Plan[TokenReversalDetails]:
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
        "execution": advice(s["users"] - s["users_excluded"], params, None),
        "nothing_to_do": s["nothing_to_do"],
    }
    return Plan(
        procedure=NAME,
        plan_id=plan_hash(NAME, rp.digest),
        summary=summary,
        frames=rp.frames,
        warnings=rp.warnings,
        details=TokenReversalDetails(reversal=rp, raw=s),
    )


def plan(conn: Connection, params: Params, names: NameMap, detail: bool = True) -> Plan[TokenReversalDetails]:
    where_sql, where_params = selection(conn, params, names)
    rp = plan_reversal(
        conn, names, where_sql=where_sql, where_params=where_params, ledger_mode=params.ledger_mode,
        negative_policy=params.negative_policy, reversal_type=params.reversal_type,
        reversal_source=params.reversal_source, sample_rows=params.sample_rows, top_users=params.top_users,
        detail=detail, grant_link=params.grant_link,
    )
    p = _to_plan(rp, params)
    if params.execution == "online":
        from .token_reversal_batches import cut_into_batches

        cut_into_batches(conn, params, names, rp, p, (where_sql, where_params))
    if params.voucher_codes and rp.summary["rows"] == 0 and rp.summary["rows_already_reversed"] == 0:
        p.warnings.append(
            f"voucher_codes {', '.join(params.voucher_codes)} select no ledger row in the window: grants are matched "
            f"to vouchers by grant_link={params.grant_link}; check the window, the codes and grant_link")
    q = ledger_names(names)
    p.exports = {
        "affected_rows": (
            f"with {affected_cte(q, where_sql, rp.probe)} select * from affected order by created_at, id",
            rp.where_params),
        "per_user_before_after": (
            decided_ctes(q, where_sql, rp.probe, params.negative_policy) + "select * from decided order by user_id",
            rp.where_params),
    }
    return p


def lock(conn: Connection, params: Params, names: NameMap) -> None:
    where_sql, where_params = selection(conn, params, names)
    lock_reversal(conn, names, where_sql, where_params)


def apply(conn: Connection, params: Params, names: NameMap, plan: Plan[TokenReversalDetails]) -> ApplyResult:
    rp = plan.details["reversal"]
    abort_if_negative(rp, params.negative_policy, "Review the list, then choose allow, clamp or skip")
    if rp.summary["nothing_to_do"]:
        return ApplyResult(changed=False, counts={"rows_reversed": 0},
                           messages=["nothing to reverse: every matching row is already reversed or gone"])
    rp.incident, rp.plan_id = incident_of(params), params.approved_plan
    counts = apply_reversal(conn, names, rp)
    return ApplyResult(changed=True, counts=counts, messages=[
        f"reversed {counts['rows_reversed']} ledger rows of {counts['users_affected']} users "
        f"({counts['tokens_reversed']} tokens, mode {rp.ledger_mode}, policy {rp.negative_policy})"])


def check(conn: Connection, params: Params, names: NameMap, plan: Plan[TokenReversalDetails],
          result: ApplyResult) -> None:
    if result.changed:
        check_reversal(conn, names, plan.details["reversal"], result.counts)
        plan.details["after_expected"] = expected_after(conn)


def expected_after(conn: Connection) -> AfterExpected:
    """The plan's after-figure of every reversed user (before - reversed + shortfall), read inside the execute's
    transaction, with that transaction's start: what ``verify`` compares the committed balances with."""
    # as two array literals PostgreSQL writes (:mod:`runbook_lib.user_ids`: 500,000 users are two strings, not a
    # million Python objects); the start in the ledger's own clock (naive UTC, as apply_reversal writes its rows)
    n, ids, balances, started = conn.execute(sa.text(
        "select count(*), coalesce(array_agg(user_id::text order by user_id::text collate \"C\")::text, '{}'), "
        "coalesce(array_agg(new_balance::bigint order by user_id::text collate \"C\")::text, '{}'), "
        "now() at time zone 'utc' "
        "from rb_users where included")).one()
    return AfterExpected(user_ids=UserIds(int(n), str(ids)), balances=str(balances), since=started)


def after_figures_check(conn: Connection, names: NameMap, expected: AfterExpected) -> Check:
    """Committed balances against the plan's after-figures, one aggregated statement.

    A user whose balance differs is a failure, unless the application wrote a ledger row for that user (other
    than the run's own reversing rows) since the execute's transaction started: that user's balance has moved on
    by the application's own activity and is counted, not failed.
    """
    q = ledger_names(names)
    n_users = expected["user_ids"].count
    row = conn.execute(sa.text(
        f"with e(user_id, balance) as (select * from unnest(cast(:ids as text[]), cast(:bals as bigint[]))), "
        f"d as (select e.user_id, e.balance as expected, b.{q['b_balance']}::bigint as actual, exists ("
        f"  select 1 from {q['ledger']} t where t.{q['user_id']}::text = e.user_id and t.{q['created_at']} >= :since "
        f"  and t.{q['source']} <> :rsource) as moved_on "
        f"from e left join {q['balances']} b on b.{q['b_user_id']}::text = e.user_id "
        "where b.{bal} is distinct from e.balance) "
        "select count(*) filter (where not moved_on), count(*) filter (where moved_on), "
        "(array_agg(user_id order by user_id) filter (where not moved_on))[1:20] from d"
        .replace("{bal}", q["b_balance"])),
        {"ids": expected["user_ids"].literal, "bals": expected["balances"], "since": expected["since"],
         "rsource": expected.get("reversal_source", "")}).one()
    wrong, moved = int(row[0]), int(row[1])
    detail = (f"{n_users} reversed users compared with before - reversed (+ clamp shortfall)"
              + (f"; {moved} moved on since by the application's own ledger rows" if moved else "")
              + (f"; differing: {', '.join(row[2])}" if wrong else ""))
    return Check("balances equal the plan's after-figures", wrong == 0, wrong, detail, after_execute=True)


def _unreversed(conn: Connection, params: Params, names: NameMap) -> tuple[int, int]:
    """Rows still unreversed, split by the policy's decision for their user: rows of users the policy reverses
    must be gone; users it leaves out (skip, or no balance row) keep theirs, and are counted."""
    where_sql, where_params = selection(conn, params, names)
    try:
        link: ReversalLink | None = grants.reversal_link(conn, names)
    except SchemaMismatchError:
        link = None  # delete mode on a ledger without any link: a deleted row is simply gone
    left, by_design = conn.execute(sa.text(
        decided_ctes(ledger_names(names), where_sql, link, params.negative_policy)
        + "select coalesce(sum(n) filter (where included), 0), coalesce(sum(n) filter (where not included), 0) "
        "from decided"), {**where_params, "rb_rsource": params.reversal_source}).one()
    return int(left), int(by_design)


def verify(conn: Connection, params: Params, names: NameMap,
           plan: Plan[TokenReversalDetails] | None) -> VerifyResult:
    """After execute: nothing in the selection is left unreversed; balances equal the plan's after-figures."""
    if params.mode != "execute" and plan is not None:
        # a review: its checks are pending, and its own plan counted these rows in the same snapshot it shows —
        # no second read of the selection (2.2 s of a review at 10M ledger rows)
        s, source = plan.details["raw"], " (the review's plan)"
        left, by_design = int(s["rows_to_reverse"]), int(s["rows"]) - int(s["rows_to_reverse"])
    else:
        left, by_design, source = *_unreversed(conn, params, names), ""
    checks = [Check("no selected ledger row left unreversed", left == 0, left,
                    f"rows in the selection without a reversal, of users the policy reverses{source}",
                    after_execute=True)]
    if by_design:
        checks.append(Check("rows left by the policy (skipped users, users without a balance row)", True, by_design,
                            "listed in the review; not reversed by design"))
    if plan is not None and plan.details.get("after_expected") is not None:
        checks.append(after_figures_check(conn, names, {**plan.details["after_expected"],
                                                        "reversal_source": params.reversal_source}))
    return VerifyResult(checks=checks)


@register
class TokenReversal(Procedure):
    """Token reversal: compensating ledger rows (or, destructive, deleted grants) and balances, one transaction."""

    NAME = NAME
    NOTEBOOK = "token_reversal.ipynb"
    TITLE = "Reverse voucher token grants in a time window: balances and ledger, in one transaction"
    GUIDE_SECTION = "Token Transaction Rollback"
    Params = Params
    steps = Steps(plan=plan, lock=lock, apply=apply, check=check, verify=verify)
    tables = ("TokenTransaction", "UserTokenBalance")

    def is_destructive(self, params: Any) -> bool:
        return bool(params.ledger_mode == "delete")  # compensate mode keeps the ledger

    def written_users(self, params: Any, plan: Plan) -> UserIds | None:
        after = plan.details.get("after_expected")
        return after["user_ids"] if after is not None else None

    def batched(self, params: Any) -> bool:
        return bool(params.execution == "online")

    # online mode: the functions of procedures/token_reversal_batches.py (which imports this module)
    def batch_digests(self, conn: Connection, params: Any, names: NameMap,
                      batches: list[Batch]) -> dict[int | None, str]:
        from .token_reversal_batches import batch_digests

        return batch_digests(conn, params, names, batches)

    def lock_batch(self, conn: Connection, params: Any, names: NameMap, batch: Batch) -> None:
        from .token_reversal_batches import lock_batch

        lock_batch(conn, params, names, batch)

    def plan_batch(self, conn: Connection, params: Any, names: NameMap, batch: Batch) -> Plan:
        from .token_reversal_batches import plan_batch

        return plan_batch(conn, params, names, batch)

    def absorb_batch(self, whole: Plan, part: Plan, result: ApplyResult) -> None:
        from .token_reversal_batches import absorb_batch

        absorb_batch(whole, part)
