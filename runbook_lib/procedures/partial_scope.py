"""The scope of a partial rollback, and how its redemptions and the ledger's grants find each other.

* :class:`Scope`: for one parameter set, the SQL of the vouchers in scope, the redemptions to clear and the ledger
  grants they produced (a condition on the ledger aliased ``tt``), the voucher statuses the database knows and
  the per-voucher counter and status change (:meth:`Scope.voucher_changes_sql`);
* :func:`query_names`: the quoted table and column names those queries are written with;
* :func:`check_statuses`: ``reset_statuses`` must name statuses of the database's enum;
* :func:`grant_matching`: redemptions without a grant, grants without a redemption, grants naming another voucher,
  and the refusal when no grant matches at all.

Used by :mod:`runbook_lib.procedures.partial_rollback` (its plan, lock, apply, check and verify).
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import grants
from .. import names as nmod
from ..errors import ParameterError
from ..names import NameMap
from ..params import parse_aware_datetime
from ..reversal_sql import as_column_time, refuse_unknown, sql_type

if TYPE_CHECKING:  # partial_rollback imports this module
    from .partial_rollback import Params

V, R, L = "Voucher", "VoucherRedemption", "TokenTransaction"
VOUCHER_NEEDS = ["id", "code", "status", "maxUses", "currentUses"]
REDEMPTION_NEEDS = ["id", "voucherId", "userId", "redeemedAt"]
#: the status names the rollback's transitions use, when the voucher status enum has them
ACTIVE, DEPLETED, EXPIRED = "ACTIVE", "DEPLETED", "EXPIRED"


class GrantMatching(TypedDict):
    """How the redemptions in scope and the ledger's grants match (:func:`grant_matching`'s answer)."""

    redemptions_without_grant: int  # redemptions in scope no grant matches
    granting_without_grant: int  # of them, those that granted tokens (tokensGranted > 0, or unknown)
    grants_without_redemption: int  # grants of the vouchers in scope of no redemption, not reversed
    code_mismatch: int  # matched grants whose metadata.voucherCode names another voucher
    warnings: list[str]  # for the review, in this order
    refuse: str | None  # why an execute refuses (no grant matches any granting redemption); None: it does not


def query_names(names: NameMap) -> dict[str, str]:
    """Quoted table and column names of the scope queries: ``V``, ``R``, ``L`` and ``v_…``, ``r_…``, ``l_…`` columns."""
    return {
        "V": names.t(V), "R": names.t(R), "L": names.t(L),
        "v_id": names.c(V, "id"), "v_code": names.c(V, "code"), "v_status": names.c(V, "status"),
        "v_max": names.c(V, "maxUses"), "v_uses": names.c(V, "currentUses"), "v_exp": names.c(V, "expiresAt"),
        "v_upd": names.c(V, "updatedAt"),
        "r_id": names.c(R, "id"), "r_vid": names.c(R, "voucherId"), "r_uid": names.c(R, "userId"),
        "r_ts": names.c(R, "redeemedAt"),
        "l_id": names.c(L, "id"), "l_src": names.c(L, "source"), "l_sid": names.c(L, "sourceId"),
        "l_uid": names.c(L, "userId"), "l_amt": names.c(L, "amount"),
    }


class Scope:
    """SQL fragments and bind values for one parameter set (built once per plan/lock/verify)."""

    def __init__(self, conn: Connection, params: Params, names: NameMap) -> None:
        nmod.require(conn, names, {V: VOUCHER_NEEDS, R: REDEMPTION_NEEDS, L: ["id", "userId", "amount", "source",
                                                                            "sourceId"]})
        self.q = q = query_names(names)
        self.binds: dict[str, Any] = {"pr_source": params.source, "rb_rsource": params.reversal_source}
        v_where = ["true"]
        if params.voucher_codes:
            known = {r[0] for r in conn.execute(sa.text(
                f"select {q['v_code']} from {q['V']} where {q['v_code']} = any(:pr_codes)"),
                {"pr_codes": params.voucher_codes})}
            refuse_unknown(params.voucher_codes, known, "voucher codes",
                           "; check the spelling (codes are case-sensitive)")
            v_where.append(f"v.{q['v_code']} = any(:pr_codes)")
            self.binds["pr_codes"] = params.voucher_codes
        r_where = list(v_where)
        since = parse_aware_datetime(params.redeemed_since, "redeemed_since")
        until = parse_aware_datetime(params.redeemed_until, "redeemed_until")
        if since:
            r_where.append(f"r.{q['r_ts']} >= :pr_since")
            self.binds["pr_since"] = as_column_time(conn, names, R, "redeemedAt", since)
        if until:
            r_where.append(f"r.{q['r_ts']} < :pr_until")
            self.binds["pr_until"] = as_column_time(conn, names, R, "redeemedAt", until)
        #: vouchers in scope (alias v)
        self.vouchers = f"select v.* from {q['V']} v where {' and '.join(v_where)}"
        #: redemptions to clear (alias r), with their voucher's code
        self.redemptions = (
            f"select r.{q['r_id']} as id, r.{q['r_vid']} as voucher_id, r.{q['r_uid']} as user_id, "
            f"r.{q['r_ts']} as redeemed_at, v.{q['v_code']} as code from {q['R']} r join {q['V']} v "
            f"on v.{q['v_id']} = r.{q['r_vid']} where {' and '.join(r_where)}")
        #: tokens each redemption granted, where the schema records it (the application's tokensGranted)
        self.tokens_granted = (f"r.{names.c(R, 'tokensGranted')}" if nmod.has_column(conn, names, R, "tokensGranted")
                               else "null::int")
        self.redemptions = self.redemptions.replace(
            " as code from", f" as code, {self.tokens_granted} as tokens_granted from", 1)
        # the ledger grants those redemptions produced, as a condition on the ledger aliased tt (a semi-join)
        self.grant_link = params.grant_link
        if params.grant_link == "redemption_id":
            self.grant_where = (f"tt.{q['l_src']} = :pr_source and tt.{q['l_sid']} in "
                                f"(select s.id from ({self.redemptions}) s)")
        else:  # the application: sourceId = the voucher's id, for the redeeming user
            self.grant_where = (f"tt.{q['l_src']} = :pr_source and (tt.{q['l_sid']}, tt.{q['l_uid']}) in "
                                f"(select s.voucher_id, s.user_id from ({self.redemptions}) s)")
        self.has_expiry = nmod.has_column(conn, names, V, "expiresAt")
        self.has_updated = nmod.has_column(conn, names, V, "updatedAt")
        #: "now" as the timestamp columns hold it: Prisma's DateTime is UTC in ``timestamp without time zone``;
        #: a ``timestamptz`` column compares with now() itself (never via the session's TimeZone)
        self.now_expiry = now_for(conn, names, V, "expiresAt") if self.has_expiry else "now()"
        self.now_updated = now_for(conn, names, V, "updatedAt") if self.has_updated else "now()"
        self.status_type = sql_type(conn, names, V, "status")
        #: the voucher statuses the database knows (the enum's values, else those in use)
        self.statuses = voucher_statuses(conn, names)
        # a transition is made only to and from statuses the enum has (None disables it)
        self.active = ACTIVE if ACTIVE in self.statuses else None
        self.depleted = DEPLETED if DEPLETED in self.statuses else None
        self.expired = EXPIRED if EXPIRED in self.statuses else None

    def voucher_changes_sql(self) -> str:
        """Per voucher in scope: counter and status before and after (the rollback's reasons only)."""
        q = self.q
        expired = (f"(v.{q['v_exp']} is not null and v.{q['v_exp']} <= {self.now_expiry})"
                   if self.has_expiry else "false")
        below = "(v.max_uses is null or v.new_uses < v.max_uses)"
        # the rollback is the reason only when it removed redemptions of a voucher that was at (or over) its
        # limit and is below it afterwards; a DEPLETED voucher without a limit, below its limit already, or
        # losing nothing in this scope was depleted by someone else and keeps its status
        revived = ("(v.removed > 0 and v.max_uses is not null and greatest(v.uses, v.old_uses) >= v.max_uses "
                   "and v.new_uses < v.max_uses)")
        # status names are bind values from the enum (:pr_active, :pr_depleted, :pr_expired; null when absent)
        return f"""
            select v.id, v.code, v.status, v.uses, v.max_uses, v.removed, v.new_uses, v.expired,
              case when v.status = any(cast(:pr_reset as text[])) and :pr_active is not null then
                     case when {below} then :pr_active else coalesce(:pr_depleted, v.status) end
                   when v.status = :pr_depleted and {revived} and :pr_active is not null then
                     case when v.expired then coalesce(:pr_expired, v.status) else :pr_active end
                   else v.status end as new_status
            from (select v.{q['v_id']} as id, v.{q['v_code']} as code, v.{q['v_status']}::text as status,
                    v.{q['v_uses']} as uses, v.{q['v_max']} as max_uses, {expired} as expired,
                    coalesce(tot.n, 0) as old_uses,
                    coalesce(rm.n, 0) as removed, coalesce(tot.n, 0) - coalesce(rm.n, 0) as new_uses
                  from ({self.vouchers}) v
                  left join (select voucher_id, count(*) as n from ({self.redemptions}) s group by 1) rm
                    on rm.voucher_id = v.{q['v_id']}
                  left join (select {q['r_vid']} as voucher_id, count(*) as n from {q['R']} group by 1) tot
                    on tot.voucher_id = v.{q['v_id']}) v"""

    def bind(self, reset: list[str]) -> dict[str, Any]:
        return {**self.binds, "pr_reset": reset, "pr_active": self.active, "pr_depleted": self.depleted,
                "pr_expired": self.expired}


def now_for(conn: Connection, names: NameMap, model: str, fld: str) -> str:
    """SQL for the current time in the column's own kind: naive UTC for ``timestamp``, ``now()`` for ``timestamptz``."""
    ctype = nmod.column_type(conn, names, model, fld) or ""
    return "now()" if "with time zone" in ctype else "(now() at time zone 'utc')"


def voucher_statuses(conn: Connection, names: NameMap) -> list[str]:
    """The voucher statuses the database knows: the enum's values, else those in use."""
    return nmod.enum_values(conn, names, "VoucherStatus") or [
        r[0] for r in conn.execute(sa.text(f"select distinct {names.c(V, 'status')}::text from {names.t(V)}"))]


def check_statuses(conn: Connection, names: NameMap, params: Params) -> None:
    """``reset_statuses`` must name voucher statuses the database knows (:func:`voucher_statuses`)."""
    if not params.reset_statuses:
        return
    allowed = voucher_statuses(conn, names)
    bad = [s for s in params.reset_statuses if s not in allowed]
    if bad:
        raise ParameterError(f"parameter 'reset_statuses': {', '.join(bad)} not a voucher status; allowed: "
                             f"{', '.join(allowed)}", "reset_statuses")


def _scope_join(names: NameMap, link: str) -> str:
    """:func:`grants.redemption_join` between a row of :attr:`Scope.redemptions` (alias ``s``) and a grant (``tt``)."""
    join = grants.redemption_join(names, link, "s", "tt").replace(f"s.{names.c(R, 'voucherId')}", "s.voucher_id")
    return join.replace(f"s.{names.c(R, 'userId')}", "s.user_id").replace(f"s.{names.c(R, 'id')}", "s.id")


def _orphan_grants_sql(conn: Connection, names: NameMap, sc: Scope) -> str:
    """Count of the grants of the vouchers in scope that belong to no redemption and are not reversed."""
    q = sc.q
    link = grants.reversal_link(conn, names) if nmod.has_column(conn, names, L, "sourceId") else None
    not_reversed = link.not_reversed(q['L'], 'tt.' + q['l_id']) if link else "true"
    if sc.grant_link == "voucher_and_user":
        return (
            f"select count(*) from {q['L']} tt where tt.{q['l_src']} = :pr_source and tt.{q['l_sid']} in "
            f"(select v.{q['v_id']} from ({sc.vouchers}) v) and not exists (select 1 from {q['R']} r where "
            f"{grants.redemption_join(names, 'voucher_and_user', 'r', 'tt')}) and {not_reversed}")
    return (
        f"select count(*) from {q['L']} tt where tt.{q['l_src']} = :pr_source and tt.{q['l_sid']} is not null "
        f"and not exists (select 1 from {q['R']} r where r.{q['r_id']} = tt.{q['l_sid']}) and {not_reversed}")


def _matching_row(conn: Connection, names: NameMap, sc: Scope, binds: dict[str, Any], other: str) -> Any:
    """The one aggregated statement of :func:`grant_matching` (``other``: the grant link not chosen)."""
    q = sc.q
    this, that = _scope_join(names, sc.grant_link), _scope_join(names, other)
    orphan_grants = _orphan_grants_sql(conn, names, sc)
    code_sql = grants.metadata_code(conn, names, "tt")
    mismatch = (f"(select count(*) from ({sc.redemptions}) s join {q['L']} tt on tt.{q['l_src']} = :pr_source "
                f"and {this} where {code_sql} is not null and {code_sql} <> s.code)") if code_sql else "0"
    return conn.execute(sa.text(
        f"select count(*) filter (where not m.matched) as without_grant, "
        f"count(*) filter (where not m.matched and coalesce(m.tokens_granted, 1) > 0) as granting_without, "
        f"count(*) filter (where coalesce(m.tokens_granted, 1) > 0) as granting, "
        f"count(*) filter (where m.other_matched) as other_matched, "
        f"({orphan_grants}) as orphan_grants, {mismatch} as mismatch "
        f"from (select s.tokens_granted, exists (select 1 from {q['L']} tt where tt.{q['l_src']} = :pr_source "
        f"and {this}) as matched, exists (select 1 from {q['L']} tt where tt.{q['l_src']} = :pr_source "
        f"and {that}) as other_matched from ({sc.redemptions}) s) m"), binds).mappings().one()


def grant_matching(conn: Connection, names: NameMap, sc: Scope, binds: dict[str, Any]) -> GrantMatching:
    """How the redemptions in scope and the ledger's grants find each other; never silent about either side.

    One aggregated statement: redemptions in scope without any grant (and how many of those granted tokens),
    grants of the vouchers in scope without any redemption and not reversed, and grants whose
    ``metadata.voucherCode`` names another voucher than the one they point to."""
    other = "redemption_id" if sc.grant_link == "voucher_and_user" else "voucher_and_user"
    row = _matching_row(conn, names, sc, binds, other)
    out = GrantMatching(
        redemptions_without_grant=int(row["without_grant"]),
        granting_without_grant=int(row["granting_without"]),
        grants_without_redemption=int(row["orphan_grants"]),
        code_mismatch=int(row["mismatch"]),
        warnings=[], refuse=None,
    )
    source = binds["pr_source"]
    if out["granting_without_grant"]:
        out["warnings"].append(
            f"{out['granting_without_grant']} redemptions in scope granted tokens but have no ledger grant "
            f"(source = '{source}', grant_link={sc.grant_link}): their tokens cannot be reversed")
    if out["grants_without_redemption"]:
        out["warnings"].append(f"{out['grants_without_redemption']} ledger grants of these vouchers belong to no "
                               "redemption and are not reversed (listed by verify's orphan_voucher_grants)")
    if out["code_mismatch"]:
        out["warnings"].append(f"{out['code_mismatch']} matched grants carry a metadata.voucherCode of another "
                               "voucher: check them before executing")
    granting = int(row["granting"])
    if granting and out["granting_without_grant"] == granting:
        hint = (f"{int(row['other_matched'])} of them match with grant_link={other}: pass -p grant_link {other}"
                if row["other_matched"] else f"check 'source' (grants are looked up with source = '{source}') "
                "and whether this database records grants in the ledger at all")
        refuse = (f"{granting} redemptions in scope granted tokens but no ledger grant matches any of them "
                  f"by grant_link={sc.grant_link}: deleting them would keep every granted token (the guide's "
                  f"bug); nothing was changed. {hint}")
        out["refuse"] = refuse
        out["warnings"].insert(0, "EXECUTE WILL REFUSE: " + refuse.replace("; nothing was changed", ""))
    return out
