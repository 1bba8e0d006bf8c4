"""Partial rollback ("Keep Structure, Clear Data"): clear redemptions, reverse their tokens, fix the vouchers.

Where the guide is wrong, and what this procedure does instead:

* ``DELETE FROM "TokenTransaction" WHERE "source" = 'voucher_redemption'`` deletes the ledger rows and leaves
  the granted tokens in every balance, so no balance matches its ledger any more. Here the grants of the
  redemptions in scope are reversed with the token-reversal logic (balances moved by per-user totals,
  compensating ledger rows by default) in the same transaction that removes the redemptions.
* ``UPDATE "Voucher" SET "currentUses" = 0, "status" = 'ACTIVE'`` is only right when *every* redemption is
  removed, and it revives vouchers an admin set INACTIVE or that EXPIRED by date. Here each voucher's counter
  is set to the number of redemptions that remain, and the status changes only where the rollback is the
  reason: a DEPLETED voucher that was at its limit and is below it again because redemptions were removed
  becomes ACTIVE (EXPIRED if its date has passed); other DEPLETED vouchers are listed, not revived. Vouchers
  of any other status (INACTIVE, EXPIRED, or a status this runbook does not know) keep it and are listed;
  they are reset only when the operator names their status in ``reset_statuses``. The status names come
  from the database's enum, never assumed: a transition whose status the enum lacks is not made.
* The grants of a redemption are found as the application writes them: ``(userId, sourceId = voucherId)``
  (``grant_link=redemption_id`` for schemas whose ``sourceId`` is the redemption's id). The review counts
  redemptions without a grant and grants without a redemption; an execute whose redemptions granted tokens
  but matched no grant at all refuses, naming the cause (the guide's bug again otherwise: redemptions gone,
  tokens kept).
* The scope can be narrowed to voucher codes and a redemption time window instead of everything.

The scope and the grant matching are in :mod:`.partial_scope`.
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

from typing import Any, ClassVar, Self, TypedDict

import pandas as pd
import sqlalchemy as sa
from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from .. import grants
from ..errors import InvariantError, PolicyAbort
from ..grants import GrantLink
from ..names import NameMap
from ..params import DestructiveParams, TopRows, name_list, parse_aware_datetime
from ..reversal import (
    NegativePolicyNoSkip,
    ReversalOptions,
    ReversalPlan,
    abort_if_negative,
    apply_reversal,
    check_reversal,
    incident_of,
    lock_reversal,
    plan_reversal,
)
from . import register
from .base import VOUCHER_MODELS, ApplyResult, Check, Plan, Procedure, Steps, VerifyResult, plan_hash
from .partial_scope import ACTIVE, DEPLETED, EXPIRED, GrantMatching, Scope, check_statuses, grant_matching

NAME = "partial-rollback"


class ScopeParams(DestructiveParams):
    """partial-rollback's own parameters (the scope); :class:`Params` adds the shared reversal options."""

    all_vouchers: bool = Field(False, description="true: roll back every voucher; otherwise name voucher_codes")
    voucher_codes: list[str] = Field([], description="the vouchers to roll back (case-sensitive; unknown codes are an error)")
    redeemed_since: str | None = Field(None, description="optional redemption window start (inclusive), ISO-8601 with a zone")
    redeemed_until: str | None = Field(None, description="optional redemption window end (exclusive), ISO-8601 with a zone")
    reset_statuses: list[str] = Field([], description="other statuses to reset to ACTIVE too, e.g. [INACTIVE, EXPIRED] (the guide resets all)")
    grant_link: GrantLink = Field("voucher_and_user", description="how a grant names its voucher: voucher_and_user (sourceId = voucher id, as the app writes it) or redemption_id")

    @field_validator("redeemed_since", "redeemed_until", mode="before")
    @classmethod
    def _aware(cls, v: Any, info: Any) -> str | None:
        parsed = parse_aware_datetime(v, info.field_name)
        return parsed.isoformat() if parsed else None

    @field_validator("voucher_codes", "reset_statuses", mode="before")
    @classmethod
    def _list(cls, v: Any) -> list[str]:
        return name_list(v)

    @model_validator(mode="after")
    def _scope(self) -> Self:
        if self.all_vouchers and self.voucher_codes:
            raise ValueError("give either all_vouchers=true or voucher_codes, not both")
        if not self.all_vouchers and not self.voucher_codes:
            raise ValueError("choose the scope: voucher_codes (a list of codes) or all_vouchers=true")
        if self.redeemed_since and self.redeemed_until and self.redeemed_until <= self.redeemed_since:
            raise ValueError(f"'redeemed_since' ({self.redeemed_since}) must be before 'redeemed_until' "
                             f"({self.redeemed_until})")
        return self


class Params(ReversalOptions, ScopeParams):
    """Its own parameters first, then the reversal options; two differ from :class:`ReversalOptions`."""

    procedure: ClassVar[str] = NAME

    # no skip: a skipped user's redemptions would still be deleted, their granted tokens kept (the guide's bug)
    negative_policy: NegativePolicyNoSkip = Field("allow", description="balances that would go below zero: allow (flagged), clamp (to zero) or abort")
    # here top_users bounds the per-voucher tables too, not only the per-user one
    top_users: TopRows = Field(50, description="rows in the per-voucher and per-user tables (1-1000)")


class PartialRollbackDetails(TypedDict):
    """What partial-rollback's plan hands to apply/check: the reversal, the scope and the grant matching."""

    reversal: ReversalPlan  # the grants' reversal (the shared core's plan)
    #: ``reversal.summary`` itself: the core's raw figures (counts, flags, names), mixed values hence ``Any``
    raw_reversal: dict[str, Any]
    scope: Scope  # the scope's SQL fragments and binds, built once by :func:`plan`
    matching: GrantMatching  # redemptions against grants: counts, warnings, why an execute refuses


# ---------------------------------------------------------------------------------------------------------
# plan / lock / apply / check / verify (the scope and the grant matching: runbook_lib.procedures.partial_scope)
# ---------------------------------------------------------------------------------------------------------


def _scope_figures(conn: Connection, sc: Scope, changes: str, binds: dict[str, Any]) -> tuple[Any, Any]:
    """The redemptions to clear and the vouchers in scope, aggregated (counts and digests)."""
    red = conn.execute(sa.text(
        f"select count(*) as n, count(distinct user_id) as users, count(distinct voucher_id) as vouchers, "
        f"min(redeemed_at) as first, max(redeemed_at) as last, "
        f"md5(coalesce(string_agg(id, ',' order by id), '')) as digest from ({sc.redemptions}) s"),
        binds).mappings().one()
    vch = conn.execute(sa.text(
        f"select count(*) as in_scope, "
        f"count(*) filter (where uses <> new_uses or status <> new_status) as changing, "
        f"count(*) filter (where status <> new_status) as status_changing, "
        f"count(*) filter (where status is distinct from :pr_active and status is distinct from :pr_depleted "
        f"  and removed > 0 and status = new_status) as kept_status, "
        f"coalesce(string_agg(distinct status, ', ') filter (where status is distinct from :pr_active and status "
        f"  is distinct from :pr_depleted and removed > 0 and status = new_status), '') as kept_statuses, "
        f"count(*) filter (where status = :pr_depleted and new_status = :pr_expired) as depleted_but_expired, "
        f"count(*) filter (where new_status = :pr_depleted and (max_uses is null or new_uses < max_uses)) "
        f"  as depleted_under_limit, "
        f"md5(coalesce(string_agg(id || ':' || uses || '>' || new_uses || ':' || status || '>' || new_status, ',' "
        f"  order by id) filter (where uses <> new_uses or status <> new_status), '')) as digest "
        f"from ({changes}) c"), binds).mappings().one()
    return red, vch


def _summary(params: Params, red: Any, vch: Any, grants_total: Any, matching: GrantMatching,
             rs: dict[str, Any]) -> dict[str, Any]:
    """The review's summary (figures of the scope, the grant matching and the reversal; the chosen options)."""
    return {
        "redemptions to clear": int(red["n"]),
        "users with redemptions cleared": int(red["users"]),
        "vouchers in scope": int(vch["in_scope"]),
        "vouchers whose counter or status changes": int(vch["changing"]),
        "vouchers whose status changes": int(vch["status_changing"]),
        "vouchers keeping their status (not ACTIVE/DEPLETED)": int(vch["kept_status"]),
        "ledger grants of these redemptions": int(grants_total[0]),
        "redemptions without a grant": matching["redemptions_without_grant"],
        "of them granting tokens": matching["granting_without_grant"],
        "grants of these vouchers without a redemption": matching["grants_without_redemption"],
        "grants whose metadata names another voucher": matching["code_mismatch"],
        "grants matched to redemptions by": params.grant_link,
        "ledger rows to reverse": rs["rows_to_reverse"],
        "tokens to reverse": rs["tokens_to_reverse"],
        "users whose balance changes": rs["users"] - rs["users_excluded"],
        "users going negative (before policy)": rs["users_negative"],
        "grants already reversed": rs["rows_already_reversed"],
        "ledger mode": params.ledger_mode,
        "negative policy": params.negative_policy,
        "reset statuses": ", ".join(params.reset_statuses) or "none",
        "nothing_to_do": int(red["n"]) == 0 and int(vch["changing"]) == 0 and rs["rows_to_reverse"] == 0,
    }


def _warnings(rp: ReversalPlan, rs: dict[str, Any], matching: GrantMatching, vch: Any,
              sc: Scope) -> list[str]:
    """The reversal's warnings, then what execute stops on or leaves alone (balances, grants, statuses)."""
    warnings = list(rp.warnings)
    if rs["users_without_balance"]:
        warnings.append(f"{rs['users_without_balance']:,} users have grants but no balance row: execute stops "
                        "(their grants could not be reversed); fix the balances or narrow the scope")
    warnings.extend(matching["warnings"])
    if vch["kept_status"]:
        warnings.append(f"{vch['kept_status']} vouchers lose redemptions but keep their status ({vch['kept_statuses']}; "
                        "the guide's SET status='ACTIVE' would revive them); name the statuses in reset_statuses "
                        "to reset them")
    unknown = sorted(set(sc.statuses) - {ACTIVE, DEPLETED, EXPIRED, "INACTIVE"})
    if unknown:
        warnings.append(f"voucher statuses this runbook has no rule for: {', '.join(unknown)}; vouchers with them "
                        "keep their status unless named in reset_statuses")
    if vch["depleted_but_expired"]:
        warnings.append(f"{vch['depleted_but_expired']} DEPLETED vouchers are below their limit again but past "
                        "expiresAt: they become EXPIRED, not ACTIVE")
    if vch["depleted_under_limit"]:
        warnings.append(f"{vch['depleted_under_limit']} vouchers stay DEPLETED below their limit (or without one): "
                        "this rollback removes none of their redemptions, or they were below the limit already, so "
                        "it is not the reason to reactivate them; name DEPLETED in reset_statuses to do so")
    return warnings


def _frames(conn: Connection, params: Params, sc: Scope, changes: str, binds: dict[str, Any],
            rp: ReversalPlan) -> dict[str, pd.DataFrame]:
    """The review's tables: vouchers before/after, redemptions by voucher and a sample, the reversal's frames."""
    frames: dict[str, pd.DataFrame] = {}
    frames["vouchers"] = pd.DataFrame(conn.execute(sa.text(
        f"select code, status as status_before, new_status as status_after, uses as uses_before, "
        f"new_uses as uses_after, max_uses, removed as redemptions_cleared from ({changes}) c "
        f"where uses <> new_uses or status <> new_status order by removed desc, code limit :lim"),
        {**binds, "lim": params.top_users}).mappings().all(),
        columns=["code", "status_before", "status_after", "uses_before", "uses_after", "max_uses",
                 "redemptions_cleared"])
    frames["redemptions_by_voucher"] = pd.DataFrame(conn.execute(sa.text(
        f"select code, count(*) as redemptions, min(redeemed_at) as first, max(redeemed_at) as last "
        f"from ({sc.redemptions}) s group by code order by 2 desc, code limit :lim"),
        {**binds, "lim": params.top_users}).mappings().all(), columns=["code", "redemptions", "first", "last"])
    frames["redemptions_sample"] = pd.DataFrame(conn.execute(sa.text(
        f"select id, code, user_id, redeemed_at from ({sc.redemptions}) s order by redeemed_at, id limit :lim"),
        {**binds, "lim": params.sample_rows}).mappings().all(), columns=["id", "code", "user_id", "redeemed_at"])
    frames["grants_sample"] = rp.frames.get("sample", pd.DataFrame())
    frames["balances"] = rp.frames.get("balances", pd.DataFrame())
    frames["negative"] = rp.frames.get("negative", pd.DataFrame())
    return frames


def plan(conn: Connection, params: Params, names: NameMap,
         detail: bool = True) -> Plan[PartialRollbackDetails]:
    sc = Scope(conn, params, names)
    check_statuses(conn, names, params)
    binds = sc.bind(params.reset_statuses)
    changes = sc.voucher_changes_sql()
    red, vch = _scope_figures(conn, sc, changes, binds)
    rp = plan_reversal(
        conn, names, where_sql=sc.grant_where, where_params=binds, ledger_mode=params.ledger_mode,
        negative_policy=params.negative_policy, reversal_type=params.reversal_type,
        reversal_source=params.reversal_source, sample_rows=params.sample_rows, top_users=params.top_users,
        grant_link=params.grant_link)
    rs = rp.summary
    grants_total = conn.execute(sa.text(
        f"select count(*), coalesce(sum(tt.{sc.q['l_amt']}), 0)::bigint from {sc.q['L']} tt where {sc.grant_where}"),
        binds).one()
    matching = grant_matching(conn, names, sc, binds)
    summary = _summary(params, red, vch, grants_total, matching, rs)
    warnings = _warnings(rp, rs, matching, vch, sc)
    frames = _frames(conn, params, sc, changes, binds, rp)
    digest = {"redemptions": red["digest"], "vouchers": vch["digest"], "reversal": rp.digest,
              "reset": sorted(params.reset_statuses), "link": params.grant_link}
    p = Plan(procedure=NAME, plan_id=plan_hash(NAME, digest), summary=summary, frames=frames, warnings=warnings,
             details=PartialRollbackDetails(reversal=rp, raw_reversal=rs, scope=sc, matching=matching))
    p.exports = {
        "redemptions_cleared": (f"select * from ({sc.redemptions}) s order by redeemed_at, id", binds),
        "vouchers_before_after": (f"select * from ({changes}) c order by code", binds),
        "ledger_grants": (f"select tt.* from {sc.q['L']} tt where {sc.grant_where} order by tt.{sc.q['l_id']}",
                          binds),
    }
    return p


def lock(conn: Connection, params: Params, names: NameMap) -> None:
    """Vouchers in scope, then their redemptions, then ledger rows and balances (a fixed order)."""
    sc = Scope(conn, params, names)
    q, binds = sc.q, sc.bind(params.reset_statuses)
    conn.execute(sa.text(f"select 1 from {q['V']} v where v.{q['v_id']} in (select v.{q['v_id']} from "
                         f"({sc.vouchers}) v) order by v.{q['v_id']} for update"), binds)
    conn.execute(sa.text(f"select 1 from {q['R']} r where r.{q['r_id']} in (select id from ({sc.redemptions}) s) "
                         f"order by r.{q['r_id']} for update"), binds)
    lock_reversal(conn, names, sc.grant_where, binds)


def apply(conn: Connection, params: Params, names: NameMap,
          plan: Plan[PartialRollbackDetails]) -> ApplyResult:
    rp = plan.details["reversal"]
    rs = plan.details["raw_reversal"]
    sc = plan.details["scope"]
    q, binds = sc.q, sc.bind(params.reset_statuses)
    abort_if_negative(rp, params.negative_policy, "Review the list, then choose allow or clamp")
    if rs["users_without_balance"]:
        raise PolicyAbort(f"{rs['users_without_balance']} users have voucher grants but no balance row, so their "
                          "grants cannot be reversed; nothing was changed. Create their balance rows or narrow "
                          "voucher_codes")
    if plan.details["matching"]["refuse"]:
        raise PolicyAbort(plan.details["matching"]["refuse"])
    rp.incident, rp.plan_id = incident_of(params), params.approved_plan
    conn.execute(sa.text("drop table if exists pr_removed, pr_vouchers"))
    conn.execute(sa.text(f"create temp table pr_removed on commit drop as {sc.redemptions}"), binds)
    conn.execute(sa.text(f"create temp table pr_vouchers on commit drop as "
                         f"{sc.voucher_changes_sql()}"), binds)
    conn.execute(sa.text("create index on pr_removed (id); analyze pr_removed; analyze pr_vouchers"))
    counts: dict[str, Any] = {}
    if rs["rows_to_reverse"]:
        counts.update(apply_reversal(conn, names, rp))  # before the redemptions go: it selects through them
    else:
        counts.update(rows_reversed=0, tokens_reversed=0, users_affected=0)
    counts["redemptions_deleted"] = conn.execute(sa.text(
        f"delete from {q['R']} r using pr_removed x where r.{q['r_id']} = x.id")).rowcount
    upd = f", {q['v_upd']} = {sc.now_updated}" if sc.has_updated else ""
    counts["vouchers_updated"] = conn.execute(sa.text(
        f"update {q['V']} v set {q['v_uses']} = c.new_uses, {q['v_status']} = cast(c.new_status as {sc.status_type})"
        f"{upd} from pr_vouchers c where v.{q['v_id']} = c.id and (c.uses <> c.new_uses or c.status <> c.new_status)"
    )).rowcount
    counts["vouchers_status_changed"] = int(conn.execute(sa.text(
        "select count(*) from pr_vouchers where status <> new_status")).scalar_one())
    return ApplyResult(changed=True, counts=counts, messages=[
        f"cleared {counts['redemptions_deleted']} redemptions, reversed {counts['rows_reversed']} ledger grants "
        f"({counts['tokens_reversed']} tokens), updated {counts['vouchers_updated']} vouchers "
        f"({counts['vouchers_status_changed']} status changes)"])


def check(conn: Connection, params: Params, names: NameMap, plan: Plan[PartialRollbackDetails],
          result: ApplyResult) -> None:
    """Invariants before COMMIT; any failure raises InvariantError and the transaction rolls back."""
    if not result.changed:
        return
    sc = plan.details["scope"]
    q = sc.q
    problems: list[str] = []
    wrong_counter = conn.execute(sa.text(
        f"select count(*) from pr_vouchers c join {q['V']} v on v.{q['v_id']} = c.id where v.{q['v_uses']} <> "
        f"(select count(*) from {q['R']} r where r.{q['r_vid']} = c.id)")).scalar_one()
    if wrong_counter:
        problems.append(f"{wrong_counter} vouchers' counters differ from their remaining redemptions")
    wrong_status = conn.execute(sa.text(
        f"select count(*) from pr_vouchers c join {q['V']} v on v.{q['v_id']} = c.id "
        f"where v.{q['v_status']}::text <> c.new_status")).scalar_one()
    if wrong_status:
        problems.append(f"{wrong_status} vouchers' status differs from the plan")
    # only DEPLETED vouchers may change status on their own (the rollback being the reason); any other status
    # (INACTIVE, EXPIRED, one the runbook does not know) changes only when named in reset_statuses
    revived = conn.execute(sa.text(
        f"select count(*) from pr_vouchers c join {q['V']} v on v.{q['v_id']} = c.id where c.status is distinct "
        f"from :dep and not (c.status = any(:reset)) and v.{q['v_status']}::text <> c.status"),
        {"reset": params.reset_statuses, "dep": sc.depleted}).scalar_one()
    if revived:
        problems.append(f"{revived} vouchers that were not DEPLETED changed status without reset_statuses")
    left = conn.execute(sa.text(
        f"select count(*) from {q['R']} r join pr_removed x on x.id = r.{q['r_id']}")).scalar_one()
    if left:
        problems.append(f"{left} redemptions in scope still exist")
    join = ("tt.{sid} = x.id" if params.grant_link == "redemption_id"
            else "tt.{sid} = x.voucher_id and tt.{uid} = x.user_id").format(sid=q["l_sid"], uid=q["l_uid"])
    link = grants.reversal_link(conn, names)
    dangling = conn.execute(sa.text(
        f"select count(*) from {q['L']} tt join pr_removed x on {join} where tt.{q['l_src']} = :src "
        f"and {link.not_reversed(q['L'], 'tt.' + q['l_id'])}"),
        {"src": params.source, "rb_rsource": params.reversal_source}).scalar_one()
    if dangling:
        problems.append(f"{dangling} ledger grants point to a removed redemption without their reversal")
    if problems:
        raise InvariantError("invariant failed before COMMIT, rolled back: " + "; ".join(problems), problems=problems)
    if result.counts.get("rows_reversed"):
        check_reversal(conn, names, plan.details["reversal"], result.counts)  # balance change == reversed total


def verify(conn: Connection, params: Params, names: NameMap,
           plan: Plan[PartialRollbackDetails] | None) -> VerifyResult:
    sc = Scope(conn, params, names)
    q, binds = sc.q, sc.bind(params.reset_statuses)
    left = int(conn.execute(sa.text(f"select count(*) from ({sc.redemptions}) s"), binds).scalar_one())
    wrong = int(conn.execute(sa.text(
        f"select count(*) from ({sc.vouchers}) v where v.{q['v_uses']} <> "
        f"(select count(*) from {q['R']} r where r.{q['r_vid']} = v.{q['v_id']})"), binds).scalar_one())
    checks = [
        Check("no redemption left in scope", left == 0, left,
              "redemptions matching the scope (expected 0 after execute)", after_execute=True),
        Check("counters equal remaining redemptions", wrong == 0, wrong, "vouchers in scope whose currentUses differs"),
    ]
    # grants of a missing redemption that no reversing row compensates: the shared check
    # orphan_voucher_grants (runbook_lib.checks), run after every execute, covers every convention
    return VerifyResult(checks=checks)


@register
class PartialRollback(Procedure):
    """Partial rollback: redemptions deleted (destructive), their grants reversed, counters and statuses fixed."""

    NAME = NAME
    NOTEBOOK = "partial_rollback.ipynb"
    TITLE = "Clear voucher redemptions (all or chosen codes/window), reverse their tokens, fix counters and status"
    GUIDE_SECTION = "Partial Rollback (Keep Structure, Clear Data)"
    Params = Params
    steps = Steps(plan=plan, lock=lock, apply=apply, check=check, verify=verify)
    tables = VOUCHER_MODELS
    destructive = True  # redemptions are deleted
