"""The report's words and numbers: figure labels and formatting, the net change, and the verdict texts.

Shared by the run page (:mod:`.run_page`) and the incident page (:mod:`.incident_page`): values for people
(thousands separators, yes/no, "—"), an execute's counts and a plan's summary as labelled figures in a fixed
order, an incident's net change, and the texts built from a manifest (verdict, verification, database change,
who, when, database, the header's facts).
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..procedures.base import Procedure

MISSING = "—"

#: execute figures (a manifest's ``counts``) in display order, with their labels; other keys follow, sorted
COUNT_LABELS: dict[str, str] = {
    "tokens_reversed": "tokens reversed",
    "rows_reversed": "ledger rows reversed",
    "users_affected": "users affected",
    "ledger_rows_inserted": "reversing ledger rows inserted",
    "ledger_rows_deleted": "ledger rows deleted",
    "clamp_rows_inserted": "clamp adjustment rows inserted",
    "clamp_shortfall": "tokens not reversed (clamped at zero)",
    "balances_updated": "balances updated",
    "running_balances_corrected": "running balances corrected",
    "users_left_negative": "users left below zero",
    "redemptions_deleted": "redemptions deleted",
    "vouchers_updated": "vouchers updated",
    "vouchers_status_changed": "voucher statuses changed",
    "objects dropped": "database objects dropped",
    "migration_name": "migration",
    "migration_checksum": "migration checksum",
    "migration": "migration",
    "rows_marked_rolled_back": "migration rows marked rolled back",
    "steps_missing_marked_applied": "missing steps marked applied",
    "compensating_statements": "compensating statements run",
    "row_inserted": "migration row inserted",
    "override_reason": "override reason",
    "rows_restored": "rows restored",
    "tables": "tables",
    "archive": "archive",
    "archive_bytes": "archive size (bytes)",
    "pg_restore_list_entries": "archive entries (pg_restore --list)",
    "checksums": "table checksums",
    "copy": "rehearsal copy",
    "copy_kept": "copy kept",
    "copied_by": "copied by",
    "rehearsed_plan_id": "rehearsed plan id",
    "verification_passed": "verification on the copy passed",
    "checks_failed": "checks failed on the copy",
    "live_unchanged": "live database unchanged",
}

#: figures that add up over an incident's committed executes (the net change); "rows deleted from <table>" too
NET_FIGURES = ("tokens_reversed", "rows_reversed", "ledger_rows_inserted", "ledger_rows_deleted",
               "clamp_rows_inserted", "clamp_shortfall", "balances_updated", "running_balances_corrected",
               "redemptions_deleted", "vouchers_updated", "vouchers_status_changed", "objects dropped",
               "rows_restored", "rows_marked_rolled_back", "steps_missing_marked_applied", "compensating_statements")


def _procedure(m: Mapping[str, Any]) -> type[Procedure]:
    """The contract class of the run's procedure (a writing one, with defaults, for a name no longer known)."""
    from .. import procedures
    from ..errors import UnknownProcedureError

    try:
        return type(procedures.get(str(m.get("procedure") or "")))
    except UnknownProcedureError:
        return Procedure


# ------------------------------------------------------------------------------------------ figures
def fmt(value: Any) -> str:
    """A value for people: thousands separators (38,175), yes/no, "—" for nothing, mappings as ``k: v``."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) or MISSING
    return str(value)


_BARE_NUMBER = re.compile(r"(?<![\w.,:/#-])-?\d{4,}(?![\w:/-]|[.,]\d)")


def numbers_in_text(text: str) -> str:
    """Thousands separators for the whole numbers in a sentence (a procedure's warning), not in ids or dates."""
    return _BARE_NUMBER.sub(lambda m: f"{int(m.group(0)):,}", text)


def label(key: str) -> str:
    """A figure's label: the procedures' summaries already use words; counts are snake_case keys."""
    return COUNT_LABELS.get(key) or key.replace("_", " ")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def count_figures(counts: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """An execute's counts as (label, value), in the fixed order of ``COUNT_LABELS``, then the rest sorted."""
    counts = counts or {}
    known = [k for k in COUNT_LABELS if k in counts]
    rest = sorted(k for k in counts if k not in COUNT_LABELS)
    return [(label(k), counts[k]) for k in [*known, *rest]]


def summary_figures(summary: Mapping[str, Any] | None, order: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """A plan's summary as (label, value) in the procedure's own order (``order``, from run-state.json, when the
    mapping lost it: manifests are written with sorted keys), without the internal ``nothing_to_do`` flag."""
    summary = summary or {}
    keys = [k for k in order if k in summary] + [k for k in summary if k not in order]
    return [(label(k), summary[k]) for k in keys if k != "nothing_to_do"]


def state_order(run_dir: Path | None) -> list[str]:
    """The procedure's order of its summary figures, as its run wrote them to run-state.json."""
    from .. import run_state

    summary = run_state.read(run_dir).get("summary")
    return list(summary) if isinstance(summary, dict) else []


def key_figures(m: Mapping[str, Any], order: Sequence[str] = (), limit: int = 4) -> list[tuple[str, Any]]:
    """The few figures that say what a run did (an execute's counts) or found (a review's plan), numbers only."""
    figures = count_figures(m.get("counts")) if m.get("counts") else summary_figures(m.get("summary"), order)
    return [(k, v) for k, v in figures if _is_number(v)][:limit]


def figures_text(figures: Iterable[tuple[str, Any]]) -> str:
    return "; ".join(f"{k}: {fmt(v)}" for k, v in figures)


def net_change(manifests: Iterable[Mapping[str, Any] | None]) -> list[tuple[str, int | float, list[str]]]:
    """The incident's net change: (label, total, runs) summed over the committed executes that changed the target.

    ``rows_restored`` (per table) counts as its total; ``rows deleted from <table>`` stays per table.
    """
    totals: dict[str, int | float] = {}
    runs: dict[str, list[str]] = {}
    for m in manifests:
        if not m or m.get("mode") != "execute" or m.get("committed") is not True \
                or not _procedure(m).writes:  # a copy, a dump, checks: not in the net change
            continue
        run = str(m.get("run") or "?")[:3]
        for key, value in (m.get("counts") or {}).items():
            if not (key in NET_FIGURES or key.startswith("rows deleted from ")):
                continue
            if isinstance(value, Mapping):
                value = sum(v for v in value.values() if _is_number(v))
            if not _is_number(value):
                continue
            totals[key] = totals.get(key, 0) + value
            if value:
                runs.setdefault(key, []).append(run)
    totals = {k: v for k, v in totals.items() if v}  # a figure no run changed says nothing about the change
    order = [k for k in NET_FIGURES if k in totals] + sorted(k for k in totals if k not in NET_FIGURES)
    return [(label(k), totals[k], runs[k]) for k in order]


# ------------------------------------------------------------------------------------------ verdict
def when(value: Any) -> str:
    """An ISO timestamp as ``2025-12-04 10:15:00 UTC``."""
    if not value:
        return MISSING
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if t.tzinfo is not None else "")


def checks(m: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """The manifest's verification checks by outcome: passed, failed, pending (applies after an execute)."""
    out: dict[str, list[Mapping[str, Any]]] = {"passed": [], "failed": [], "pending": []}
    for c in m.get("verification") or []:
        if not isinstance(c, Mapping):
            continue
        out["passed" if c.get("passed") else "pending" if c.get("pending") else "failed"].append(c)
    return out


def verification_text(m: Mapping[str, Any]) -> str:
    by = checks(m)
    if not any(by.values()):
        return "not run" if m.get("verification_passed") is None else \
            ("passed" if m.get("verification_passed") else "FAILED")
    if by["failed"]:
        return f"{len(by['failed'])} FAILED ({', '.join(str(c.get('name')) for c in by['failed'])}), " \
               f"{len(by['passed'])} passed" + (f", {len(by['pending'])} pending" if by["pending"] else "")
    text = f"all {len(by['passed'])} checks passed" if not by["pending"] else \
        f"{len(by['passed'])} passed, {len(by['pending'])} pending (apply after an execute)"
    return text


def change_text(m: Mapping[str, Any]) -> str | None:
    """What an execute did to the database: committed, nothing (already applied), or rolled back."""
    if m.get("mode") != "execute":
        return "nothing (a review is read-only)" if m.get("mode") == "review" else None
    if m.get("committed") is True:
        return "committed"
    if m.get("committed") is False and not m.get("error"):
        return "nothing (the change was already applied)"
    rb = m.get("rolled_back") or {}
    if rb.get("rolled_back") is True:
        return "nothing: rolled back" + (" (checked)" if rb.get("checked") else "")
    if m.get("error"):
        return "unknown: see the error and the executed notebook" if rb else "nothing committed (stopped before)"
    return None


def verdict(m: Mapping[str, Any]) -> str:
    status = str(m.get("status") or "unknown")
    err = m.get("error") or {}
    exit_code = err.get("exit_code") if isinstance(err, Mapping) else None
    head = status if not exit_code else f"{status} (exit {exit_code})"
    return f"{head} — verification: {verification_text(m)}"


def _db(m: Mapping[str, Any]) -> Mapping[str, Any]:
    d = m.get("database")
    return d if isinstance(d, Mapping) else {}


def database_text(m: Mapping[str, Any], short: bool = False) -> str:
    d = _db(m)
    if not d:
        return MISSING
    fp = str(d.get("fingerprint") or "")
    if short:
        return f"{d.get('database') or '?'} ({fp[:8] or '?'})"
    return f"{d.get('database') or '?'} · PostgreSQL {d.get('server_version') or '?'} · fingerprint {fp or '?'}"


def who_text(m: Mapping[str, Any]) -> str:
    parts = [f"operator {m.get('operator') or MISSING}"]
    for key in ("reviewer", "approver"):
        if m.get(key):
            parts.append(f"{key} {m[key]}")
    return ", ".join(parts)


def header_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The report header's facts, in order (figures and checks follow as their own tables)."""
    d = _db(m)
    err = m.get("error") if isinstance(m.get("error"), Mapping) else None
    rows = [
        ("incident", fmt(m.get("incident"))),
        ("procedure", fmt(m.get("procedure"))),
        ("mode", fmt(m.get("mode"))),
        ("verdict", verdict(m)),
        ("database change", change_text(m) or MISSING),
        ("operator", fmt(m.get("operator"))),
        ("reviewer", fmt(m.get("reviewer"))),
        ("approver", fmt(m.get("approver"))),
        ("review run", fmt(m.get("review_run"))),
        ("started", when(m.get("started_at"))),
        ("finished", when(m.get("finished_at"))),
        ("database", fmt(d.get("database"))),
        ("server version", f"PostgreSQL {d['server_version']}" if d.get("server_version") else MISSING),
        ("fingerprint", fmt(d.get("fingerprint"))),
        ("plan id", fmt(m.get("plan_id"))),
    ]
    if m.get("plan_id_at_execute") and m.get("plan_id_at_execute") != m.get("plan_id"):
        rows.append(("plan id under the locks", fmt(m["plan_id_at_execute"])))
    if m.get("signer"):
        rows.append(("signed by", fmt(m["signer"])))
    if err and err.get("message"):
        rows.append(("error", f"{err.get('message')}" + (f" (step {err['step']})" if err.get("step") else "")))
    rb = m.get("rolled_back")
    if isinstance(rb, Mapping) and rb:
        rows.append(("rolled back", f"{fmt(rb.get('rolled_back'))} — {rb.get('how') or ''}".strip(" —")))
    if m.get("run"):
        rows.append(("run", fmt(m["run"])))
    return rows


def _e(value: Any) -> str:
    """Text escaped for HTML (quotes too): every page builds its markup with it."""
    return html.escape(str(value), quote=True)
