"""token-reversal's online mode (``execution=online``, :mod:`runbook_lib.online`): its batches, their digests, and
one batch's lock and plan. A batch digest covers the batch's rows and balances (:mod:`runbook_lib.reversal_batches`)
and a fingerprint of the whole selection and the reversal options, so an execute with other options than the
review's matches no batch."""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from .. import grants, reversal_batches
from ..errors import PolicyAbort
from ..names import NameMap
from ..online import advice
from ..reversal import ReversalPlan, lock_reversal, plan_reversal
from ..reversal_sql import decided_ctes, ledger_names
from ..user_ids import UserIds, concat
from .base import Batch, Plan, plan_hash
from .token_reversal import NAME, AfterExpected, Params, TokenReversalDetails, _to_plan, selection


def cut_into_batches(conn: Connection, params: Params, names: NameMap, rp: ReversalPlan,
                     p: Plan[TokenReversalDetails], selected: tuple[str, dict[str, Any]]) -> None:
    """Online mode: the plan's batches (one statement) and a plan id that covers every batch's digest.
    ``selected``: the selection (SQL, binds) the plan was computed from."""
    base = decided_ctes(ledger_names(names), rp.where_sql, rp.probe, params.negative_policy)  # the review's snapshot
    options = _options(params, *selected)
    p.batches = [Batch(b["number"], b["first"], b["last"], b["users"], b["rows"], b["digest"])
                 for b in reversal_batches.layout(conn, base, rp.where_params, params.batch_users, options)]
    # the balances are approved through each batch's decisions (reversal_batches.DECISION), not pinned exactly
    fixed = {k: v for k, v in rp.digest.items() if k != "balances"}
    p.plan_id = plan_hash(NAME, fixed, {"batch_users": params.batch_users, "batches": [b.digest for b in p.batches]})
    p.summary["execution"] = advice(p.summary["users affected"], params, len(p.batches))


def _options(params: Params, where_sql: str, where_params: dict[str, Any]) -> str:
    """What a batch digest covers besides its rows and decisions: the whole selection and the reversal options."""
    return plan_hash(where_sql, {k: sorted(v) if isinstance(v, list) else v for k, v in where_params.items()},
                     params.ledger_mode, params.negative_policy, params.reversal_type, params.reversal_source)


def _batch_selection(conn: Connection, params: Params, names: NameMap,
                     batch: Batch) -> tuple[str, dict[str, Any], str]:
    """One batch's selection (SQL, binds) and the options fingerprint of the whole selection."""
    where_sql, where_params = selection(conn, params, names)
    return (*reversal_batches.restrict(where_sql, where_params, ledger_names(names)["user_id"], batch.first,
                                       batch.last), _options(params, where_sql, where_params))


def batch_digests(conn: Connection, params: Params, names: NameMap, batches: list[Batch]) -> dict[int | None, str]:
    """Online mode: the digest of the work left in each batch range now (``None``: outside every range), one
    statement; ``negative_policy=abort`` refuses here, before any batch commits, when any user would go below zero."""
    where_sql, where_params = selection(conn, params, names)
    base = decided_ctes(ledger_names(names), where_sql, grants.reversal_link(conn, names), params.negative_policy)
    left = reversal_batches.current(conn, base, {**where_params, "rb_rsource": params.reversal_source},
                                    [b.first for b in batches], [b.last for b in batches],
                                    _options(params, where_sql, where_params))
    open_ = {k: v for k, v in left.items() if v["open_rows"]}
    if params.negative_policy == "abort" and (neg := sum(v["negative"] for v in open_.values())):
        raise PolicyAbort(f"negative_policy=abort: {neg} users would go below zero "
                          f"({sum(v['negative_tokens'] for v in open_.values())} tokens); nothing was changed by this "
                          "run. Review the list, then choose allow, clamp or skip")
    return {k: v["digest"] for k, v in open_.items()}


def lock_batch(conn: Connection, params: Params, names: NameMap, batch: Batch) -> None:
    where_sql, where_params, _ = _batch_selection(conn, params, names, batch)
    lock_reversal(conn, names, where_sql, where_params, users=(batch.first, batch.last))


def plan_batch(conn: Connection, params: Params, names: NameMap, batch: Batch) -> Plan[TokenReversalDetails]:
    """One batch's reversal, recomputed under its locks; its plan id is the batch's digest."""
    where_sql, where_params, options = _batch_selection(conn, params, names, batch)
    rp = plan_reversal(
        conn, names, where_sql=where_sql, where_params=where_params, ledger_mode=params.ledger_mode,
        negative_policy=params.negative_policy, reversal_type=params.reversal_type,
        reversal_source=params.reversal_source, detail=False, grant_link=params.grant_link,
        users=(batch.first, batch.last))
    p = _to_plan(rp, params)
    # read-only (a failed batch's re-check): no temp tables
    base = None if rp.materialized else decided_ctes(ledger_names(names), rp.where_sql, rp.link,
                                                     params.negative_policy)
    p.plan_id = reversal_batches.digest_of(
        rp.digest["rows"], reversal_batches.decisions_digest(conn, base, rp.where_params), options)
    return p


def absorb_batch(whole: Plan[TokenReversalDetails], part: Plan[TokenReversalDetails]) -> None:
    """A committed batch's after-figures join the whole run's, for :func:`verify`'s comparison."""
    got = part.details.get("after_expected")
    if got is None:
        return
    have = whole.details.get("after_expected")
    whole.details["after_expected"] = got if have is None else AfterExpected(  # batches: users apart
        user_ids=UserIds(have["user_ids"].count + got["user_ids"].count,
                         concat(have["user_ids"].literal, got["user_ids"].literal)),
        balances=concat(have["balances"], got["balances"]),
        since=min(have["since"], got["since"]))
