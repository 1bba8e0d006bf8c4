"""Inspect one affected user: their ledger around the incident, what the plan does to each row, before and after.

What analysts do most during a review: pick one user and check the runbook's figures against the ledger by eye.
:func:`inspect` reads, in the review's read-only snapshot, for one user:

* the plan's own per-user figures (the same ``affected`` / ``decided`` SQL the plan aggregates, narrowed to the
  user): affected rows, tokens reversed, balance before and after, and what ``negative_policy`` decides
  (reversed, clamped, skipped);
* the user's ledger rows around the window — from the first affected row minus ``margin`` to the last plus
  ``margin`` (a user the plan does not touch: the procedure's window, else the latest rows) — at most
  ``max_rows`` of them, affected rows first, each marked with what the plan does to it;
* the affected users for a picker: the largest reversals first, at most ``max_users`` (0: none listed).

Every statement is set-based and bounded by the user (the application's ``(userId, createdAt)`` index) or by a
``limit``; tables and columns come from the :class:`~runbook_lib.names.NameMap`. A user the plan does not touch is
shown as such ("not affected by this plan"); a user id that exists nowhere is a one-line note, never an error.
:func:`runbook_lib.display.user_inspector` shows the result in the notebooks.
"""

# ruff: noqa: S608  - identifiers come from NameMap (quoted); values are bind parameters

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import names as nmod
from .grants import ReversalLink
from .names import NameMap
from .reversal import ReversalPlan
from .reversal_sql import affected_cte, decided_ctes, ledger_names, table_exists

#: ledger rows shown for one user, at most
MAX_ROWS = 200
#: affected users offered in the picker, at most (largest reversals first)
MAX_USERS = 500
#: context shown before the user's first and after their last affected row
MARGIN = dt.timedelta(days=7)

Status = Literal["affected", "not_affected", "unknown", "none"]
L, B = "TokenTransaction", "UserTokenBalance"
ROW_COLUMNS = ["id", "createdAt", "type", "source", "sourceId", "amount", "balanceAfter", "affected", "plan",
               "balance_after_plan"]


@dataclass
class UserInspection:
    """One user's ledger around the window and what the plan does to it (small: at most ``max_rows`` rows)."""

    #: the user shown (None: nobody to show, see ``note``)
    user_id: str | None
    status: Status
    #: one line saying what is shown (or why nothing is)
    note: str
    #: ledger rows in time order: ROW_COLUMNS; ``affected`` marks the plan's rows, ``plan`` says what it does to
    #: each, ``balance_after_plan`` is the running balance with this plan's reversed rows taken out
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ROW_COLUMNS))
    #: the user's ledger rows in the shown range (the table shows at most ``max_rows`` of them)
    rows_in_range: int = 0
    #: the range of ``createdAt`` shown (None: open)
    range_start: Any = None
    range_end: Any = None
    #: the plan's figures for this user
    affected_rows: int = 0
    tokens_reversed: int = 0
    balance_before: int | None = None
    balance_after: int | None = None
    clamp_shortfall: int = 0
    #: what the plan does to the user: reversed / clamped / skipped (…) / not affected
    decision: str = ""
    #: affected users for the picker (user_id, rows, tokens), largest reversals first, at most ``max_users``
    users: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["user_id", "rows", "tokens"]))
    #: how many users the plan affects in all
    users_total: int = 0

    @property
    def affected_rows_shown(self) -> int:
        return int(self.rows["affected"].sum()) if len(self.rows) else 0

    @property
    def truncated(self) -> bool:
        return self.rows_in_range > len(self.rows)

    def figures(self) -> dict[str, Any]:
        """The headline figures, in the order the section shows them."""
        return {
            "user": self.user_id or "—",
            "what the plan does": self.decision or "—",
            "affected ledger rows": self.affected_rows,
            "tokens reversed": self.tokens_reversed,
            "balance before": self.balance_before,
            "balance after the plan": self.balance_after,
            **({"clamp shortfall": self.clamp_shortfall} if self.clamp_shortfall else {}),
            "ledger rows shown": f"{len(self.rows):,} of {self.rows_in_range:,} in the range",
        }


def _reversal(plan: Any) -> ReversalPlan | None:
    rp = (getattr(plan, "details", None) or {}).get("reversal")
    return rp if isinstance(rp, ReversalPlan) else None


def inspect(conn: Connection, names: NameMap, rp: ReversalPlan | None, user_id: str | None = None, *,
            window: tuple[Any, Any] = (None, None), margin: dt.timedelta = MARGIN, max_rows: int = MAX_ROWS,
            max_users: int = MAX_USERS) -> UserInspection:
    """One user's section: ``user_id``, or the user with the largest reversal of ``rp`` when None.

    ``rp`` is the plan's reversal (None: the plan reverses nothing, e.g. full-rollback with ``ledger_policy=keep``);
    ``window`` the procedure's own window in the ledger's ``createdAt`` representation, used for a user with no
    affected row. Read-only; run it in the review's transaction or any read-only one.
    """
    nmod.require(conn, names, {L: ["id", "userId", "amount", "source", "createdAt"]})
    q = ledger_names(names)
    has = {f: nmod.has_column(conn, names, L, f) for f in ("type", "sourceId", "balanceAfter")}
    where_sql, binds, link, policy = _selection_of(rp)
    users, users_total = (_affected_users(conn, q, where_sql, binds, link, policy, max_users) if max_users
                          else (pd.DataFrame(columns=["user_id", "rows", "tokens"]), 0))
    if user_id is None:
        if users.empty:
            return UserInspection(None, "none", "this plan reverses no ledger rows: there is no affected user to "
                                  "inspect (set inspect_user to show one user's ledger anyway)",
                                  users=users, users_total=users_total)
        user_id = str(users.iloc[0]["user_id"])
    out = UserInspection(user_id, "affected", "", users=users, users_total=users_total)
    ub = {**binds, "iu_user": user_id}
    where_user = f"({where_sql}) and tt.{q['user_id']} = :iu_user"
    fig = _figures(conn, q, where_user, ub, link, policy)
    if fig is None:
        if not _user_exists(conn, names, q, user_id):
            return UserInspection(user_id, "unknown", f"user {user_id!r} does not exist (no user row, ledger row or "
                                  "balance row has this id): check the id", users=users, users_total=users_total)
        start, end = _not_affected(conn, q, out, user_id, window, margin)
    else:
        start, end = _affected(out, fig, rp, margin)
    out.range_start, out.range_end = start, end
    out.rows, out.rows_in_range = _rows(conn, q, has, where_user, ub, link, start, end, max_rows)
    _mark(out, rp, included=bool(fig and fig["included"]))
    out.note = _note(out, user_id, start, end, max_rows)
    return out


def _selection_of(rp: ReversalPlan | None) -> tuple[str, dict[str, Any], ReversalLink | None, str]:
    """The plan's selection (condition, binds, link, negative policy); none when the plan reverses nothing."""
    if rp is not None:
        where_sql, binds, link, policy = rp.where_sql, dict(rp.where_params), rp.link, rp.negative_policy
    else:
        where_sql, binds, link, policy = "false", {}, None, "allow"
    binds.setdefault("rb_rsource", rp.reversal_source if rp else "")
    return where_sql, binds, link, policy


def _figures(conn: Connection, q: dict[str, str], where_user: str, ub: dict[str, Any], link: ReversalLink | None,
             policy: str) -> Any:
    """The plan's decision for the user and the time span of their affected rows (None: not affected)."""
    return conn.execute(sa.text(
        decided_ctes(q, where_user, link, policy) + "select d.n, d.total, d.before, d.raw_after, d.included, d.new_balance, d.shortfall, "
        "(select min(created_at) from affected) as first_at, (select max(created_at) from affected) as last_at "
        "from decided d"), ub).mappings().first()


def _not_affected(conn: Connection, q: dict[str, str], out: UserInspection, user_id: str,
                  window: tuple[Any, Any], margin: dt.timedelta) -> tuple[Any, Any]:
    """A user the plan leaves alone: their balance, unchanged; the range shown is the window with a margin."""
    out.status, out.decision = "not_affected", "not affected by this plan"
    out.balance_before = out.balance_after = _balance(conn, q, user_id)
    lo, hi = window
    start = lo - margin if lo is not None else None
    end = hi + margin if hi is not None else None
    return start, end


def _affected(out: UserInspection, fig: Any, rp: ReversalPlan | None, margin: dt.timedelta) -> tuple[Any, Any]:
    """An affected user's figures from the plan's decision; the range shown spans their affected rows."""
    out.affected_rows, out.tokens_reversed = int(fig["n"]), int(fig["total"])
    out.balance_before = None if fig["before"] is None else int(fig["before"])
    out.clamp_shortfall = int(fig["shortfall"] or 0) if fig["included"] else 0
    out.decision = _decision(fig, rp)
    out.balance_after = int(fig["new_balance"]) if fig["included"] else out.balance_before
    return fig["first_at"] - margin, fig["last_at"] + margin


def _note(out: UserInspection, user_id: str, start: Any, end: Any, max_rows: int) -> str:
    """The section's one-line note: what the plan does to the user, which ledger range is shown."""
    range_text = (f"{_when(start)} to {_when(end)}" if start is not None or end is not None
                  else f"the latest {max_rows} rows")
    if out.status == "not_affected":
        note = (f"user {user_id} is not affected by this plan: their ledger is shown around the window "
                f"({range_text}), nothing in it changes")
    else:
        note = (f"user {user_id}: {out.affected_rows:,} affected ledger rows ({out.tokens_reversed:,} tokens), "
                f"{out.decision}; ledger from {range_text}")
    if out.truncated:
        note += f"; showing {len(out.rows):,} of {out.rows_in_range:,} rows (affected rows first)"
    return note


def _when(v: Any) -> str:
    if v is None:
        return "…"
    return v.isoformat(sep=" ", timespec="seconds") if isinstance(v, dt.datetime) else str(v)


def _decision(fig: Any, rp: ReversalPlan | None) -> str:
    """What the plan does to this user, in the words of the review's per-user table."""
    if fig["before"] is None:
        return "skipped (no balance row)"
    if not fig["included"]:
        return "skipped (would go negative)"
    verb = "deleted" if rp is not None and rp.ledger_mode == "delete" else "reversed"
    if fig["shortfall"] and int(fig["shortfall"]) > 0:
        return f"{verb}, balance clamped (shortfall {int(fig['shortfall']):,})"
    if int(fig["raw_after"]) < 0:
        return f"{verb}, balance left negative"
    return verb


def _affected_users(conn: Connection, q: dict[str, str], where_sql: str, binds: dict[str, Any], link: Any,
                    policy: str, max_users: int) -> tuple[pd.DataFrame, int]:
    """The plan's affected users, largest reversal first (the review table's order), at most ``max_users``."""
    rows = conn.execute(sa.text(
        decided_ctes(q, where_sql, link, policy) + "select user_id, n as rows, total as tokens, count(*) over () as users_total from decided "
        "order by total desc, user_id limit :iu_lim"), {**binds, "iu_lim": max_users}).mappings().all()
    frame = pd.DataFrame([{"user_id": str(r["user_id"]), "rows": int(r["rows"]), "tokens": int(r["tokens"])}
                          for r in rows], columns=["user_id", "rows", "tokens"])
    return frame, int(rows[0]["users_total"]) if rows else 0


def _user_exists(conn: Connection, names: NameMap, q: dict[str, str], user_id: str) -> bool:
    """A user row (where the schema has a User table), else a ledger or balance row with this id."""
    if table_exists(conn, names.t("User")):
        if conn.execute(sa.text(f"select 1 from {names.t('User')} where {names.c('User', 'id')} = :u"),
                        {"u": user_id}).first():
            return True
    return bool(conn.execute(sa.text(
        f"select exists (select 1 from {q['ledger']} where {q['user_id']} = :u) "
        f"or exists (select 1 from {q['balances']} where {q['b_user_id']} = :u)"), {"u": user_id}).scalar())


def _balance(conn: Connection, q: dict[str, str], user_id: str) -> int | None:
    v = conn.execute(sa.text(f"select {q['b_balance']}::bigint from {q['balances']} where {q['b_user_id']} = :u"),
                     {"u": user_id}).scalar()
    return None if v is None else int(v)


def _rows(conn: Connection, q: dict[str, str], has: dict[str, bool], where_user: str, ub: dict[str, Any],
          link: Any, start: Any, end: Any, max_rows: int) -> tuple[pd.DataFrame, int]:
    """The user's ledger rows in [start, end]: at most ``max_rows``, affected rows first, then the latest; one
    statement. ``selected`` marks rows of the selection reversed by an earlier run (not in ``affected``)."""
    cond = [f"tt.{q['user_id']} = :iu_user"]
    binds = dict(ub)
    if start is not None:
        cond.append(f"tt.{q['created_at']} >= :iu_start")
        binds["iu_start"] = start
    if end is not None:
        cond.append(f"tt.{q['created_at']} <= :iu_end")
        binds["iu_end"] = end
    typ = f"tt.{q['type']}::text" if has["type"] else "null::text"
    sid = f"tt.{q['source_id']}::text" if has["sourceId"] else "null::text"
    ba = f"tt.{q['balance_after']}::bigint" if has["balanceAfter"] else "null::bigint"
    res = conn.execute(sa.text(
        f"with {affected_cte(q, where_user, link)}, "
        f"selected as (select tt.{q['id']} as id from {q['ledger']} tt where {where_user}) "
        f"select tt.{q['id']} as id, tt.{q['created_at']} as created_at, {typ} as type, tt.{q['source']} as source, "
        f"{sid} as source_id, tt.{q['amount']}::bigint as amount, {ba} as balance_after, "
        "a.id is not null as affected, s.id is not null and a.id is null as already_reversed, "
        "count(*) over () as in_range "
        f"from {q['ledger']} tt left join affected a on a.id = tt.{q['id']} "
        f"left join selected s on s.id = tt.{q['id']} "
        f"where {' and '.join(cond)} "
        f"order by a.id is not null desc, tt.{q['created_at']} desc, tt.{q['id']} desc limit :iu_rows"),
        {**binds, "iu_rows": max_rows}).mappings().all()
    frame = pd.DataFrame([dict(r) for r in res], columns=[
        "id", "created_at", "type", "source", "source_id", "amount", "balance_after", "affected",
        "already_reversed", "in_range"])
    total = int(frame["in_range"].iloc[0]) if len(frame) else 0
    frame = frame.sort_values(["created_at", "id"], kind="stable").reset_index(drop=True)
    return frame.drop(columns=["in_range"]), total


def _mark(out: UserInspection, rp: ReversalPlan | None, included: bool) -> None:
    """The ``plan`` column (what the plan does to each row) and the running balance after the plan."""
    f = out.rows
    if f.empty:
        out.rows = pd.DataFrame(columns=ROW_COLUMNS)
        return
    verb = "deleted" if rp is not None and rp.ledger_mode == "delete" else "reversed"
    if not included:
        affected_text = out.decision  # skipped (no balance row / would go negative)
    elif out.clamp_shortfall:
        affected_text = f"{verb} (balance clamped at the end)"
    else:
        affected_text = verb
    rsource = rp.reversal_source if rp is not None else None

    def plan_of(row: Any) -> str:
        if row["affected"]:
            return affected_text
        if row["already_reversed"]:
            return "already reversed (left alone)"
        if rsource is not None and row["source"] == rsource:
            return "reversing row of an earlier run"
        return ""

    amounts = pd.to_numeric(f["amount"]).astype("int64")
    taken = amounts.where(f["affected"].astype(bool) & included, 0).cumsum()
    after = pd.to_numeric(f["balance_after"], errors="coerce")
    rows = pd.DataFrame({
        "id": f["id"], "createdAt": f["created_at"], "type": f["type"], "source": f["source"],
        "sourceId": f["source_id"], "amount": amounts, "balanceAfter": f["balance_after"],
        "affected": f["affected"].astype(bool), "plan": [plan_of(r) for _, r in f.iterrows()],
        "balance_after_plan": (after - taken) if after.notna().any() else after,
    })
    out.rows = rows[ROW_COLUMNS]


def window_of(rp: ReversalPlan | None) -> tuple[Any, Any]:
    """The procedure's own window in the ledger's representation: token-reversal's ``since``/``until``, a partial
    rollback's redemption window; (None, None) when it has none."""
    wp = rp.where_params if rp is not None else {}
    return wp.get("since", wp.get("pr_since")), wp.get("until", wp.get("pr_until"))


def for_run(run: Any, plan: Any, user_id: str | None = None, *, picker: bool | None = None) -> UserInspection:
    """:func:`inspect` for a notebook's run and its reviewed plan, in a read-only transaction of its own.

    ``picker`` (default: :func:`widgets_wanted`): list the affected users for the picker. Without it the default
    user is the first of the review's "Affected users" table (the same order, largest reversal first), so the
    selection is not read again (one pass over 500,000 users' rows at 10M ledger rows: ≈1.8 s)."""
    from . import db

    rp = _reversal(plan)
    picker = widgets_wanted(run) if picker is None else picker
    if user_id is None and not picker:
        user_id = _largest(plan)
    with db.read_only(run.engine) as conn:
        names = run.names or run._resolve(conn)
        return inspect(conn, names, rp, user_id, window=window_of(rp),
                       max_users=MAX_USERS if picker or user_id is None else 0)


def _largest(plan: Any) -> str | None:
    """The user with the largest reversal, from the review's "Affected users" frame (None: no such frame)."""
    frame = (getattr(plan, "frames", None) or {}).get("balances")
    if frame is None or frame.empty or "userId" not in frame.columns or "reversed" not in frame.columns:
        return None
    return str(frame.iloc[0]["userId"])


def widgets_wanted(run: Any) -> bool:
    """Show the interactive picker? Only in an interactive kernel with ipywidgets, never in a run the CLI started
    (``evidence_dir`` set: papermill, whose output is archived HTML where widgets do not render)."""
    if getattr(run, "evidence_dir", None) is not None:
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
