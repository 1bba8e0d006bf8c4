"""The token ledger side of the full rollback: the voucher grants that ``ledger_policy`` decides about.

* :func:`voucher_grants`: the grants as a condition on the ledger (aliased ``tt``) and its bind values, for the
  review and the locks;
* :func:`ledger_review`: the grants' rows and tokens, their reversal plan with ``ledger_policy=reverse``, the note
  the migration's header carries;
* :func:`grants_export_sql`: the grants with the redemption and voucher each names (the evidence of
  ``ledger_policy=keep``); :func:`kept_grants_check`: verify's count of the kept grants.

Used by :mod:`runbook_lib.procedures.full_rollback`.
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import catalog
from .. import names as nmod
from ..names import NameMap
from ..reversal import ReversalPlan, plan_reversal
from ..reversal_sql import table_exists
from .base import Check

if TYPE_CHECKING:  # full_rollback imports this module
    from .full_rollback import Params

L, R, V = "TokenTransaction", "VoucherRedemption", "Voucher"


def voucher_grants(names: NameMap, params: Params) -> tuple[str, dict[str, Any]]:
    """The voucher grants in the ledger: a condition on the ledger aliased ``tt``, and its bind values."""
    return f"tt.{names.c(L, 'source')} = :fr_source", {"fr_source": params.source}


def ledger_review(conn: Connection, names: NameMap, params: Params, disc: catalog.Discovery,
                  warnings: list[str]) -> tuple[bool, tuple[int, int], ReversalPlan | None, str]:
    """The token ledger: does it exist, the voucher grants (rows, tokens), their reversal plan with
    ``ledger_policy=reverse``, and the note for the migration's header; warnings are appended to ``warnings``."""
    ledger_exists = table_exists(conn, names.t(L))
    where, binds = voucher_grants(names, params)
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
    return ledger_exists, grants, rp, ledger_note


def grants_export_sql(conn: Connection, names: NameMap, where: str) -> str | None:
    """The voucher grants with the redemption and voucher each names (an export to the evidence folder)."""
    redemptions, vouchers = table_exists(conn, names.t(R)), table_exists(conn, names.t(V))
    if not (redemptions and vouchers and nmod.has_column(conn, names, L, "sourceId")):
        return None
    return (f"select tt.*, r.{names.c(R, 'voucherId')} as redemption_voucher_id, "
            f"r.{names.c(R, 'redeemedAt')} as redemption_redeemed_at, v.{names.c(V, 'code')} as voucher_code "
            # sourceId names the redemption (linked shape) or the voucher, the user then picking the
            # redemption (the real application: unique (voucherId, userId))
            f"from {names.t(L)} tt left join {names.t(R)} r on r.{names.c(R, 'id')} = tt.{names.c(L, 'sourceId')} "
            f"or (r.{names.c(R, 'voucherId')} = tt.{names.c(L, 'sourceId')} "
            f"and r.{names.c(R, 'userId')} = tt.{names.c(L, 'userId')}) "
            f"left join {names.t(V)} v on v.{names.c(V, 'id')} = coalesce(r.{names.c(R, 'voucherId')}, "
            f"tt.{names.c(L, 'sourceId')}) where {where} "
            f"order by tt.{names.c(L, 'id')}")


def kept_grants_check(conn: Connection, names: NameMap, params: Params) -> Check:
    """verify after an execute with ``ledger_policy=keep``: the voucher grants kept in the ledger (recorded)."""
    n = int(conn.execute(sa.text(f"select count(*) from {names.t(L)} where {names.c(L, 'source')} = :s"),
                         {"s": params.source}).scalar_one())
    return Check("voucher grants kept in the ledger (recorded, sourceId dangling)", True, n,
                 "ledger_policy=keep: see ledger_grants_with_redemptions in the evidence folder")
