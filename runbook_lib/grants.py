"""How voucher grants, redemptions and reversals find each other, on the application's own columns.

The application writes a grant as a ledger row with ``source = 'voucher_redemption'`` and ``sourceId`` = the
**voucher's** id; the redemption it belongs to is the one of the same user for that voucher, which the unique
``(voucherId, userId)`` makes unambiguous (``grant_link = voucher_and_user``, the default). Some schemas put
the redemption's id in ``sourceId`` instead (``grant_link = redemption_id``). ``metadata.voucherCode``, where
the ledger has a ``metadata`` column, is a cross-check of the voucher.

A reversing row is linked to the row it reverses without any schema change: ``source`` = the reversal source
(default ``voucher_reversal``) and ``sourceId`` = the original row's id (``sourceId`` is indexed in the
application), with ``metadata`` naming the original row, the voucher code, the incident and the plan id. When
the ledger has a dedicated link column (``reversalOfId``, found by name or mapped with ``column_map``), that
column is used instead. Idempotency and verification use the same link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import Connection

from . import names as nmod
from .errors import ParameterError, SchemaMismatchError
from .names import NameMap

GrantLink = Literal["voucher_and_user", "redemption_id"]
L, R, V = "TokenTransaction", "VoucherRedemption", "Voucher"
GRANT_LINKS: tuple[str, ...] = ("voucher_and_user", "redemption_id")


def redemption_join(names: NameMap, link: str, r: str = "r", tt: str = "tt") -> str:
    """Join condition between a redemption (alias ``r``) and a ledger grant (alias ``tt``)."""
    if link == "redemption_id":
        return f"{tt}.{names.c(L, 'sourceId')} = {r}.{names.c(R, 'id')}"
    return (f"{tt}.{names.c(L, 'sourceId')} = {r}.{names.c(R, 'voucherId')} "
            f"and {tt}.{names.c(L, 'userId')} = {r}.{names.c(R, 'userId')}")


def voucher_of_grant(names: NameMap, link: str, tt: str = "tt") -> str:
    """SQL for the voucher id a grant (alias ``tt``) belongs to."""
    if link == "redemption_id":
        return (f"(select r0.{names.c(R, 'voucherId')} from {names.t(R)} r0 "
                f"where r0.{names.c(R, 'id')} = {tt}.{names.c(L, 'sourceId')})")
    return f"{tt}.{names.c(L, 'sourceId')}"


def metadata_code(conn: Connection, names: NameMap, tt: str = "tt") -> str | None:
    """SQL for ``metadata.voucherCode`` of a ledger row, or None when the ledger has no json metadata."""
    if not nmod.has_column(conn, names, L, "metadata"):
        return None
    if (nmod.column_type(conn, names, L, "metadata") or "") not in ("json", "jsonb"):
        return None
    return f"({tt}.{names.c(L, 'metadata')} ->> 'voucherCode')"


@dataclass(frozen=True)
class ReversalLink:
    """Where a reversing row names the row it reverses: a dedicated column, or ``source`` + ``sourceId``."""

    kind: Literal["column", "source_id"]
    column: str  # quoted column holding the original's id in the reversing row
    source: str  # quoted source column
    description: str

    def is_reversal_of(self, r: str, original_id: str) -> str:
        """Condition: ledger row ``r`` reverses the row whose id is ``original_id`` (bind ``:rb_rsource``)."""
        cond = f"{r}.{self.column} = {original_id}"
        return cond if self.kind == "column" else f"{cond} and {r}.{self.source} = :rb_rsource"

    def has_reversal(self, ledger: str, original_id: str) -> str:
        """Condition: the row whose id is ``original_id`` has a reversing row (bind ``:rb_rsource``).

        A scalar subquery, which PostgreSQL runs per row as one probe of the link column's index (``sourceId`` is
        indexed in the application) and never turns into a join. As a join (``not exists``, a left join to the
        reversed ids) its plan rests on the statistics of ``source``, which know no reversing rows until the next
        ANALYZE after a run wrote them: the planner then expects one reversing row, and at 10M ledger rows the
        verification after an execute ran as a nested loop over 666,666 × 666,666 rows (stopped after 10
        minutes; the probes take seconds)."""
        return f"{self._probe(ledger, original_id)} is not null"

    def not_reversed(self, ledger: str, original_id: str) -> str:
        """Condition: the row whose id is ``original_id`` has no reversing row (:meth:`has_reversal`'s probe), written
        so that the planner expects most rows to pass it (a ``<>`` on an expression: 99.5%), as they do in a review:
        ``not … is not null`` would be expected to pass 0.5% of the rows, and the joins after it planned for a
        handful of rows (a nested loop over the whole balance table)."""
        return f"coalesce({self._probe(ledger, original_id)}, 0) <> 1"

    def reversals_among(self, r: str, ids_sql: str) -> str:
        """Condition: ledger row ``r`` reverses one of the rows whose ids ``ids_sql`` selects (a temp table's): an
        array comparison that the link column's index answers in one scan, whatever the ledger's size. For
        statements that use it without a join (a count, a GROUP BY): a join on it would rest on the planner's
        estimate of the array's matches (bind ``:rb_rsource``)."""
        cond = f"{r}.{self.column} = any(array({ids_sql}))"
        return cond if self.kind == "column" else f"{cond} and {r}.{self.source} = :rb_rsource"

    def _probe(self, ledger: str, original_id: str) -> str:
        # a scalar subquery: EXISTS (…) is made a semi- or anti-join by PostgreSQL, LIMIT or not
        return f"(select 1 from {ledger} rv_ where {self.is_reversal_of('rv_', original_id)} limit 1)"


def reversal_link(conn: Connection, names: NameMap) -> ReversalLink:
    """The dedicated link column when the schema has one (or one is mapped), else ``source`` + ``sourceId``."""
    if nmod.has_column(conn, names, L, "reversalOfId"):
        col = names.column(L, "reversalOfId")
        return ReversalLink("column", names.c(L, "reversalOfId"), names.c(L, "source"),
                            f'dedicated link column "{col}"')
    if not nmod.has_column(conn, names, L, "sourceId"):
        raise SchemaMismatchError(
            f"ledger_mode=compensate links each reversing row to its original through {L}.sourceId "
            f'("{names.column(L, "sourceId")}") or a link column ({L}.reversalOfId); the ledger has neither: '
            "map one with column_map, or use ledger_mode=delete")
    return ReversalLink("source_id", names.c(L, "sourceId"), names.c(L, "source"),
                        f'source = reversal source, "{names.column(L, "sourceId")}" = the original row\'s id')


def resolve_reversal_type(conn: Connection, names: NameMap, requested: str) -> str:
    """The ledger type of reversing rows: ``auto`` picks ``REVERSAL`` when the type enum has it, else
    ``EARN_ADMIN_ADJUSTMENT``; an explicit value must be one of the enum's values."""
    values = type_enum_values(conn, names)
    if not values:  # a text column (or none): any non-empty name
        return "REVERSAL" if requested == "auto" else requested
    if requested == "auto":
        for candidate in ("REVERSAL", "EARN_ADMIN_ADJUSTMENT"):
            if candidate in values:
                return candidate
        raise ParameterError(
            "parameter 'reversal_type': the ledger's type enum has neither REVERSAL nor EARN_ADMIN_ADJUSTMENT; "
            f"name the type of reversing rows with -p reversal_type VALUE, one of: {', '.join(values)}",
            "reversal_type")
    if requested not in values:
        raise ParameterError(f"parameter 'reversal_type': {requested!r} is not a value of the ledger's type enum; "
                             f"allowed: auto, {', '.join(values)}", "reversal_type")
    return requested


def type_enum_values(conn: Connection, names: NameMap) -> list[str]:
    """Values of the enum type of the ledger's ``type`` column ([] when it is not an enum or absent)."""
    import sqlalchemy as sa

    return [r[0] for r in conn.execute(sa.text(
        "select e.enumlabel from pg_attribute a join pg_enum e on e.enumtypid = a.atttypid "
        "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = :s and c.relname = :t and a.attname = :c order by e.enumsortorder"),
        {"s": names.db_schema, "t": names.table_name(L), "c": names.column(L, "type")})]
