"""The catalog SQL behind ``catalog.discover``: seeds, pg_depend both ways, enum-typed columns, descriptions.

Each function is one query against PostgreSQL's catalog (``pg_class``, ``pg_type``, ``pg_proc``, ``pg_depend``,
``pg_attribute``, ``pg_identify_object``); ``_relative_sql`` turns a described object into the schema-relative
DROP statement Prisma records in ``migration.sql``. ``runbook_lib.catalog`` groups and orders what they find.
"""

# ruff: noqa: S608  - identifiers come from the catalog (quoted by PostgreSQL), values are bind parameters

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Key = tuple[int, int, int]  # (classid, objid, objsubid) as in pg_depend


def _class_oids(conn: Connection) -> dict[str, int]:
    rows = conn.execute(sa.text(
        "select relname, oid::int from pg_class where relnamespace = 'pg_catalog'::regnamespace and relname = any(:n)"),
        {"n": ["pg_class", "pg_type", "pg_proc", "pg_trigger", "pg_constraint", "pg_rewrite", "pg_attrdef",
               "pg_policy"]}).all()
    return {r[0]: int(r[1]) for r in rows}


def find_seeds(conn: Connection, db_schema: str, tables: list[str], enums: list[str]) -> tuple[dict[Key, str], list[str]]:
    """The seed tables and enum types that exist, keyed like pg_depend, and the names that do not exist."""
    cls = _class_oids(conn)
    found: dict[Key, str] = {}
    t_rows = conn.execute(sa.text(
        "select c.relname, c.oid::int from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = :s and c.relname = any(:t) and c.relkind in ('r', 'p')"),
        {"s": db_schema, "t": tables}).all()
    e_rows = conn.execute(sa.text(
        "select t.typname, t.oid::int from pg_type t join pg_namespace n on n.oid = t.typnamespace "
        "where n.nspname = :s and t.typname = any(:e) and t.typtype = 'e'"), {"s": db_schema, "e": enums}).all()
    for name, oid in t_rows:
        found[(cls["pg_class"], int(oid), 0)] = f"table {name}"
    for name, oid in e_rows:
        found[(cls["pg_type"], int(oid), 0)] = f"enum {name}"
    have = {r[0] for r in t_rows} | {r[0] for r in e_rows}
    missing = [n for n in [*tables, *enums] if n not in have]
    return found, missing


def _text_referencing_functions(conn: Connection, db_schema: str, names: list[str], exclude: set[int]) -> list[int]:
    """Functions whose body names a seed (quoted as "Name", or unquoted when the name is lower case).

    PL/pgSQL bodies are not tracked by pg_depend: such a function survives the DROP and fails later.
    """
    if not names:
        return []
    rows = conn.execute(sa.text(
        "select p.oid::int, p.prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%' "
        "and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid "
        "and d.deptype = 'e') "
        "and exists (select 1 from unnest(cast(:names as text[])) x(nm) where strpos(lower(p.prosrc), lower(x.nm)) > 0)"),
        {"names": names}).all()
    lower_rx = [re.compile(r'(?<![\w$"])' + re.escape(nm) + r'(?![\w$"])', re.I)
                for nm in names if nm == nm.lower()]
    out = []
    for oid, src in rows:
        text = src or ""
        # a quoted name is case-sensitive; an unquoted lower-case name is matched case-insensitively
        if int(oid) not in exclude and (any(f'"{nm}"' in text for nm in names) or any(r.search(text) for r in lower_rx)):
            out.append(int(oid))
    return out


def _dependents(conn: Connection, frontier: list[Key]) -> list[tuple[Any, ...]]:
    """pg_depend rows whose referenced object is in ``frontier`` plus the frontier's internal owners."""
    if not frontier:
        return []
    c, o, s = (list(x) for x in zip(*frontier, strict=True))
    return [tuple(r) for r in conn.execute(sa.text(
        "select d.classid::int, d.objid::int, d.objsubid, d.refclassid::int, d.refobjid::int, d.refobjsubid, "
        "d.deptype::text, 'dependent' from pg_depend d "
        "join unnest(cast(:c as oid[]), cast(:o as oid[]), cast(:s as int[])) f(c, o, s) "
        "on d.refclassid = f.c and d.refobjid = f.o and (f.s = 0 or d.refobjsubid = f.s) "
        "where d.deptype in ('n', 'a', 'i') "
        "union "
        "select d.classid::int, d.objid::int, d.objsubid, d.refclassid::int, d.refobjid::int, d.refobjsubid, "
        "d.deptype::text, 'owner' from pg_depend d "
        "join unnest(cast(:c as oid[]), cast(:o as oid[]), cast(:s as int[])) f(c, o, s) "
        "on d.classid = f.c and d.objid = f.o where d.deptype = 'i'"),
        {"c": c, "o": o, "s": s}).all()]


def _outgoing(conn: Connection, nodes: list[Key]) -> list[tuple[Any, ...]]:
    """pg_depend rows of ``nodes``; for a whole object (objsubid 0) also those of its parts (a seed table's
    columns: ``vouchers.type`` depends on ``VoucherType`` with or without a DEFAULT)."""
    c, o, s = (list(x) for x in zip(*nodes, strict=True))
    return [tuple(r) for r in conn.execute(sa.text(
        "select distinct d.classid::int, d.objid::int, d.objsubid, d.refclassid::int, d.refobjid::int, "
        "d.refobjsubid, d.deptype::text from pg_depend d "
        "join unnest(cast(:c as oid[]), cast(:o as oid[]), cast(:s as int[])) f(c, o, s) "
        "on d.classid = f.c and d.objid = f.o and (d.objsubid = f.s or f.s = 0) where d.deptype in ('n', 'a', 'i')"),
        {"c": c, "o": o, "s": s}).all()]


def _typed_columns(conn: Connection, enum_oids: list[int]) -> list[tuple[int, int, int]]:
    """Columns (and composite-type attributes) whose type is a seed enum, an array of it, or a domain over
    either, recursively, read from ``pg_attribute.atttypid`` directly: ``(relid, attnum, typid)``."""
    if not enum_oids:
        return []
    return [(int(r[0]), int(r[1]), int(r[2])) for r in conn.execute(sa.text("""
        with recursive t(oid) as (
            select unnest(cast(:e as oid[]))
            union
            select x.oid from pg_type x join t on (x.typtype = 'd' and x.typbasetype = t.oid)
                                               or (x.typcategory = 'A' and x.typelem = t.oid)
        )
        select a.attrelid::int, a.attnum::int, a.atttypid::int from pg_attribute a
        join t on t.oid = a.atttypid join pg_class c on c.oid = a.attrelid
        where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'f', 'c')
        order by 1, 2"""), {"e": enum_oids}).all()]


def _whole_relations(conn: Connection, pg_class: int, keys: list[Key]) -> list[Key]:
    """The views and materialized views some of whose columns are in ``keys``."""
    oids = sorted({k[1] for k in keys if k[0] == pg_class and k[2] > 0})
    if not oids:
        return []
    return [(pg_class, int(r[0]), 0) for r in conn.execute(sa.text(
        "select oid::int from pg_class where oid = any(cast(:o as oid[])) and relkind in ('v', 'm') order by 1"),
        {"o": oids})]


_DESCRIBE = """
select f.c::int, f.o::int, f.s, i.type, i.identity,
  case
    when f.c = 'pg_class'::regclass and f.s > 0 then
      (select format(case rc.relkind when 'c' then 'ALTER TYPE %s DROP ATTRIBUTE %I'
                                     when 'f' then 'ALTER FOREIGN TABLE %s DROP COLUMN %I'
                                     when 'r' then 'ALTER TABLE %s DROP COLUMN %I'
                                     when 'p' then 'ALTER TABLE %s DROP COLUMN %I' end,
                     (pg_identify_object('pg_class'::regclass, a.attrelid, 0)).identity, a.attname)
       from pg_attribute a join pg_class rc on rc.oid = a.attrelid where a.attrelid = f.o and a.attnum = f.s)
    when f.c = 'pg_trigger'::regclass then
      (select format('DROP TRIGGER %I ON %s', t.tgname, (pg_identify_object('pg_class'::regclass, t.tgrelid, 0)).identity)
       from pg_trigger t where t.oid = f.o)
    when f.c = 'pg_constraint'::regclass then
      (select case when k.conrelid <> 0
                then format('ALTER TABLE %s DROP CONSTRAINT %I',
                            (pg_identify_object('pg_class'::regclass, k.conrelid, 0)).identity, k.conname)
                else format('ALTER DOMAIN %s DROP CONSTRAINT %I',
                            (pg_identify_object('pg_type'::regclass, k.contypid, 0)).identity, k.conname) end
       from pg_constraint k where k.oid = f.o)
    when f.c = 'pg_rewrite'::regclass and i.type = 'rule' then
      (select format('DROP RULE %I ON %s', r.rulename, (pg_identify_object('pg_class'::regclass, r.ev_class, 0)).identity)
       from pg_rewrite r where r.oid = f.o)
    when f.c = 'pg_policy'::regclass then
      (select format('DROP POLICY %I ON %s', p.polname, (pg_identify_object('pg_class'::regclass, p.polrelid, 0)).identity)
       from pg_policy p where p.oid = f.o)
    when f.c = 'pg_attrdef'::regclass then
      (select format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT',
                     (pg_identify_object('pg_class'::regclass, ad.adrelid, 0)).identity, a.attname)
       from pg_attrdef ad join pg_attribute a on a.attrelid = ad.adrelid and a.attnum = ad.adnum where ad.oid = f.o)
  end as special,
  a.object_names, a.object_args
from unnest(cast(:c as oid[]), cast(:o as oid[]), cast(:s as int[])) f(c, o, s),
     lateral pg_identify_object(f.c, f.o, f.s) i,
     lateral pg_identify_object_as_address(f.c, f.o, f.s) a
"""


def _describe(conn: Connection, nodes: list[Key]) -> tuple[dict[Key, tuple[Any, Any, Any]],
                                                           dict[Key, tuple[list[str], list[str]]]]:
    """Each of ``nodes`` named by ``pg_identify_object``: ``(type, identity, special DROP statement or None)``,
    and its address (``object_names``, ``object_args``) for the schema-relative statement."""
    c, o, s = (list(x) for x in zip(*nodes, strict=True))
    described = conn.execute(sa.text(_DESCRIBE), {"c": c, "o": o, "s": s}).all()
    desc = {(int(r[0]), int(r[1]), int(r[2])): (r[3], r[4], r[5]) for r in described}
    address = {(int(r[0]), int(r[1]), int(r[2])): (list(r[6] or []), list(r[7] or [])) for r in described}
    return desc, address

_DROP_BY_TYPE = {
    "table": "DROP TABLE {}", "view": "DROP VIEW {}", "materialized view": "DROP MATERIALIZED VIEW {}",
    "function": "DROP FUNCTION {}", "procedure": "DROP PROCEDURE {}", "aggregate": "DROP AGGREGATE {}",
    "type": "DROP TYPE {}", "composite type": "DROP TYPE {}", "domain": "DROP DOMAIN {}", "index": "DROP INDEX {}",
    "sequence": "DROP SEQUENCE {}", "foreign table": "DROP FOREIGN TABLE {}",
}


def _qq(name: str) -> str:
    """Always-quoted identifier, as Prisma writes them in migration.sql."""
    return '"' + name.replace('"', '""') + '"'


def _relative_sql(typ: str, names: list[str], args: list[str], db_schema: str, fallback: str | None) -> str | None:
    """The DROP statement with names relative to ``db_schema`` (Prisma's migrations are schema-relative: Prisma
    sets the search_path from ``?schema=``); objects of other schemas stay qualified. ``fallback`` (the
    schema-qualified statement that runs) when the object's kind is not one of these."""
    if not names or fallback is None:
        return fallback

    def rel(parts: list[str]) -> str:  # [schema, name] -> "name" (or "schema"."name" for another schema)
        return _qq(parts[1]) if parts[0] == db_schema else f"{_qq(parts[0])}.{_qq(parts[1])}"

    def arg(a: str) -> str:
        for prefix in (f"{db_schema}.", f"{_qq(db_schema)}."):
            if a.startswith(prefix):
                return a[len(prefix):]
        return a

    keyword = {"table": "TABLE", "view": "VIEW", "materialized view": "MATERIALIZED VIEW", "index": "INDEX",
               "sequence": "SEQUENCE", "foreign table": "FOREIGN TABLE", "type": "TYPE", "composite type": "TYPE",
               "domain": "DOMAIN"}
    if typ in keyword and len(names) == 2:
        return f"DROP {keyword[typ]} {rel(names)}"
    if typ in ("type", "composite type", "domain") and len(names) == 1:  # one type name, as format_type writes it
        name = arg(names[0])
        return f"DROP {keyword[typ]} {_qq(name) if re.fullmatch(r'[a-z_][a-z0-9_$]*', name) else name}"
    if typ in ("function", "procedure", "aggregate") and len(names) == 2:
        return f"DROP {typ.upper()} {rel(names)}({', '.join(arg(a) for a in args)})"
    if len(names) == 3:
        table, member = rel(names[:2]), _qq(names[2])
        if typ == "table column":
            return f"ALTER TABLE {table} DROP COLUMN {member}"
        if typ == "table constraint":
            return f"ALTER TABLE {table} DROP CONSTRAINT {member}"
        if typ == "default value":
            return f"ALTER TABLE {table} ALTER COLUMN {member} DROP DEFAULT"
        if typ in ("trigger", "rule", "policy"):
            return f"DROP {typ.upper()} {member} ON {table}"
    return fallback
