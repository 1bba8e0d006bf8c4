"""Where the Prisma models live in the database: model/field -> table/column.

Resolved in this order: ``schema.prisma`` when given (``@@map``/``@map`` honoured), else reflection
of the database (the model name, then its snake_case forms), then explicit ``table_map`` /
``column_map`` parameters override either. The guide's quoted model names are only defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .db import quote_ident
from .errors import ParameterError, SchemaMismatchError

#: the models and fields the voucher runbooks know about (Prisma names)
KNOWN_MODELS: dict[str, list[str]] = {
    "User": ["id"],
    "UserTokenBalance": ["id", "userId", "balance", "updatedAt"],
    "TokenTransaction": [
        "id", "userId", "amount", "type", "source", "sourceId", "balanceAfter", "metadata", "createdAt",
        # not in the real application: used when a schema has them (a link column, a description)
        "reversalOfId", "description",
    ],
    "Voucher": ["id", "code", "type", "status", "value", "maxUses", "currentUses", "expiresAt", "metadata",
                "createdAt", "updatedAt", "tokenAmount"],
    "VoucherRedemption": ["id", "voucherId", "userId", "tokensGranted", "redeemedAt"],
}
KNOWN_ENUMS = ["TokenTransactionType", "VoucherType", "VoucherStatus"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class NameMap:
    db_schema: str = "public"
    tables: dict[str, str] = field(default_factory=dict)
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    enums: dict[str, str] = field(default_factory=dict)
    source: str = "defaults"
    #: the models, fields and enums this run looked up (what the evidence records; a schema of 168 models
    #: would otherwise put every name of the application into every manifest)
    used: set[str] = field(default_factory=set, compare=False, repr=False)
    #: the columns (name -> data_type) of each table looked up through this map, read once per table: a map lives
    #: for one step of one run (an online execute's batches share it, and would look the same columns up again)
    catalog: dict[str, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def table_name(self, model: str) -> str:
        self.used.add(model)
        return self.tables.get(model, model)

    def column(self, model: str, fld: str) -> str:
        self.used.add(model)
        self.used.add(f"{model}.{fld}")
        return self.columns.get(model, {}).get(fld, fld)

    def t(self, model: str) -> str:
        """Quoted, schema-qualified table of ``model``."""
        return f"{quote_ident(self.db_schema)}.{quote_ident(self.table_name(model))}"

    def c(self, model: str, fld: str) -> str:
        """Quoted column of ``model.fld``."""
        return quote_ident(self.column(model, fld))

    def enum_name(self, enum: str) -> str:
        self.used.add(f"enum:{enum}")
        return self.enums.get(enum, enum)

    def enum_type(self, enum: str) -> str:
        return f"{quote_ident(self.db_schema)}.{quote_ident(self.enum_name(enum))}"

    def as_dict(self, used_only: bool = False) -> dict[str, Any]:
        """The map; with ``used_only`` just the models, fields and enums this run looked up."""
        if not used_only:
            return {"db_schema": self.db_schema, "source": self.source, "tables": dict(self.tables),
                    "columns": {m: dict(c) for m, c in self.columns.items()}, "enums": dict(self.enums)}
        used = set(self.used)
        return {"db_schema": self.db_schema, "source": self.source,
                "tables": {m: self.tables.get(m, m) for m in sorted(u for u in used if "." not in u and ":" not in u)},
                "columns": {m: {f: c for f, c in sorted(cols.items()) if f"{m}.{f}" in used}
                            for m, cols in sorted(self.columns.items()) if m in used},
                "enums": {e: self.enums.get(e, e) for e in sorted(u[5:] for u in used if u.startswith("enum:"))}}


def from_prisma(path: str, db_schema: str = "public") -> NameMap:
    from .prisma.schema import parse_schema_file

    try:
        schema = parse_schema_file(path)
    except OSError as exc:
        raise ParameterError(f"parameter 'prisma_schema': cannot read {path!r}: {exc.strerror}", "prisma_schema") from None
    if not schema.models:
        raise ParameterError(f"parameter 'prisma_schema': {path!r} defines no models; is it a schema.prisma file?",
                             "prisma_schema")
    nm = NameMap(db_schema=db_schema, source=f"schema.prisma ({path})")
    for model in schema.models.values():
        nm.tables[model.name] = model.table
        nm.columns[model.name] = {f.name: f.column for f in model.fields.values() if not f.is_relation}
    for enum in schema.enums.values():
        nm.enums[enum.name] = enum.db_name
    return nm


def reflect(conn: Connection, db_schema: str = "public") -> NameMap:
    """Find each known model's table by its name or snake_case forms; columns likewise."""
    rows = conn.execute(
        sa.text("select table_name, column_name from information_schema.columns where table_schema = :s"),
        {"s": db_schema},
    ).all()
    cols_by_table: dict[str, set[str]] = {}
    for t, c in rows:
        cols_by_table.setdefault(t, set()).add(c)
    nm = NameMap(db_schema=db_schema, source="reflection")
    for model, fields in KNOWN_MODELS.items():
        for cand in (model, _snake(model), _snake(model) + "s", model.lower()):
            if cand in cols_by_table:
                nm.tables[model] = cand
                cols = cols_by_table[cand]
                nm.columns[model] = {}
                for f in fields:
                    for cc in (f, _snake(f)):
                        if cc in cols:
                            nm.columns[model][f] = cc
                            break
                break
    types = {r[0] for r in conn.execute(
        sa.text("select t.typname from pg_type t join pg_namespace n on n.oid = t.typnamespace "
                "where n.nspname = :s and t.typtype = 'e'"), {"s": db_schema})}
    for e in KNOWN_ENUMS:
        for cand in (e, _snake(e)):
            if cand in types:
                nm.enums[e] = cand
                break
    return nm


def resolve(conn: Connection, prisma_schema: str | None = None, db_schema: str = "public",
            table_map: dict[str, str] | None = None, column_map: dict[str, str] | None = None) -> NameMap:
    nm = from_prisma(prisma_schema, db_schema) if prisma_schema else reflect(conn, db_schema)
    for model, table in (table_map or {}).items():
        nm.tables[model] = table
    for key, col in (column_map or {}).items():
        if "." not in key:
            raise ParameterError(f"parameter 'column_map': key {key!r} must be Model.field", "column_map")
        model, fld = key.split(".", 1)
        nm.columns.setdefault(model, {})[fld] = col
    if table_map or column_map:
        nm.source += " + explicit maps"
    return nm


def table_columns(conn: Connection, names: NameMap, table: str) -> dict[str, str]:
    """A table's columns and their ``data_type`` (empty: no such table), read once per map (``names.catalog``)."""
    if table not in names.catalog:
        names.catalog[table] = {str(r[0]): str(r[1]) for r in conn.execute(
            sa.text("select column_name, data_type from information_schema.columns where table_schema = :s "
                    "and table_name = :t"), {"s": names.db_schema, "t": table})}
    return names.catalog[table]


def require(conn: Connection, names: NameMap, needs: dict[str, list[str]]) -> None:
    """Raise SchemaMismatchError naming every missing table and column among ``needs``."""
    missing: list[str] = []
    for model, fields in needs.items():
        table = names.table_name(model)
        cols = table_columns(conn, names, table)
        if not cols:
            missing.append(f'table "{names.db_schema}"."{table}" (model {model})')
            continue
        for f in fields:
            col = names.column(model, f)
            if col not in cols:
                missing.append(f'column "{table}"."{col}" ({model}.{f})')
    if missing:
        raise SchemaMismatchError(
            "missing in the target database: " + ", ".join(missing)
            + " — pass prisma_schema, table_map or column_map if the names differ",
            missing=missing,
        )


def has_column(conn: Connection, names: NameMap, model: str, fld: str) -> bool:
    return names.column(model, fld) in table_columns(conn, names, names.table_name(model))


def column_type(conn: Connection, names: NameMap, model: str, fld: str) -> str | None:
    return table_columns(conn, names, names.table_name(model)).get(names.column(model, fld))


def enum_values(conn: Connection, names: NameMap, enum: str) -> list[str]:
    return [r[0] for r in conn.execute(
        sa.text("select e.enumlabel from pg_enum e join pg_type t on t.oid = e.enumtypid "
                "join pg_namespace n on n.oid = t.typnamespace where n.nspname = :s and t.typname = :t "
                "order by e.enumsortorder"),
        {"s": names.db_schema, "t": names.enum_name(enum)})]
