"""The driver's guards around an execute: the production marking, the backup guard, and the proof that a failed
execute was rolled back. Plain functions of what they need; :class:`runbook_lib.run.Run` calls them."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import db
from .errors import BackupRequiredError, PolicyAbort
from .names import NameMap
from .params import CommonParams, DestructiveParams
from .procedures.base import Procedure
from .redact import redact_text
from .run_state import jsonable

PRODUCTION_ENV = "RUNBOOK_TARGET_PRODUCTION"


def production_marked(params: CommonParams) -> bool:
    """The target is marked production by its parameters (``production: true``) or the environment."""
    return bool(params.production) or os.environ.get(PRODUCTION_ENV, "").strip().lower() in (
        "1", "true", "yes", "production")


def production_guard(params: CommonParams, database: str) -> None:
    """An execute on a target marked production must name it (``confirm_target``), or nothing happens."""
    if production_marked(params) and params.mode == "execute" and params.confirm_target != database:
        raise PolicyAbort(
            f"the target is marked production ({PRODUCTION_ENV} or production=true); execute needs confirm_target "
            f"(--confirm-target) naming the database {database!r}")


def backup_guard(proc: Procedure, params: CommonParams, engine: Engine, evidence_dir: Path | None,
                 resolve: Callable[[Connection], NameMap]) -> dict[str, Any] | None:
    """Destructive executes need a recent backup of their tables in this incident, or a recorded override.

    Returns what the run records as its ``backup`` (``None``: the execute is not destructive); raises
    :class:`BackupRequiredError` (exit 14) when there is neither.
    """
    from . import backups

    if not proc.is_destructive(params):
        return None
    # a procedure may tell cheaply that the execute has nothing to do (full-rollback run again): no backup needed;
    # execute re-checks under the locks that the plan is indeed empty
    with db.read_only(engine) as conn:
        if proc.nothing_to_do(conn, params, resolve(conn)):
            return {"backup": None, "not_needed": "nothing to do"}
    if not isinstance(params, DestructiveParams):
        raise TypeError(f"{proc.NAME} is destructive: its Params must derive from params.DestructiveParams")
    reason = params.backup_override_reason
    if evidence_dir is None:
        if not reason:
            raise BackupRequiredError(
                f"{proc.NAME} deletes or overwrites data and this run has no incident folder to find a backup "
                "in: run it with `runbook run --incident ID` after `runbook run backup`, or pass "
                "backup_override_reason (recorded)")
        return {"backup": None, "override_reason": reason}
    with db.read_only(engine) as conn:
        fp = db.server_info(conn).fingerprint
        names = resolve(conn)
    # the tables of this very execute (restore: the tables chosen from the backup)
    tables = [names.table_name(m) for m in proc.guarded_tables(params)]
    found = backups.require_recent_backup(
        evidence_dir.parent, tables, fp, dt.timedelta(hours=params.backup_max_age_hours), reason,
        restoring=proc.restoring(params))
    return dict(jsonable(found))


def rolled_back(engine: Engine, xid: int | None, before_id: str | None,
                replan: Callable[[Connection], str]) -> dict[str, Any]:
    """After a failed execute, prove the database is as before: the server's own record of the transaction
    (``txid_status``: aborted, not committed), and the plan recomputed now (``replan``) equal to the plan under the
    locks. Application writes after the failure can change the plan; the transaction status is then what counts."""
    if before_id is None and xid is None:
        return {"checked": True, "rolled_back": True, "how": "the failure came before any statement changed data"}
    status: str | None = None
    now_id: str | None = None
    try:
        with db.read_only(engine) as conn:
            if xid is not None:
                status = conn.execute(sa.text("select txid_status(:x)"), {"x": xid}).scalar()
            if before_id is not None:
                now_id = replan(conn)
    except Exception as exc:  # noqa: BLE001 - reported, not raised over the original error
        return {"checked": False, "rolled_back": None, "how": f"could not re-check: {redact_text(str(exc))[:300]}"}
    how = []
    if xid is not None:
        how.append(f"transaction {xid} is {status or 'unknown'} (txid_status)")
    if before_id is not None:
        how.append(f"plan recomputed after the failure: {now_id} (under the locks: {before_id})"
                   + ("" if now_id == before_id else "; it differs: other sessions wrote since"))
    if status in ("aborted", "committed"):
        result: bool | None = status == "aborted"
    else:  # no transaction id, or one too old to know: the plan comparison decides
        result = now_id == before_id if before_id is not None else None
    return {"checked": result is not None, "rolled_back": result, "how": "; ".join(how)}
