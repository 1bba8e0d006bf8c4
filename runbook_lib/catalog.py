"""What depends on a set of tables and enum types, found in PostgreSQL's catalog, and the order to drop it.

Nothing here is a fixed list. Starting from the seed tables and enum types, ``discover`` walks
``pg_depend`` (both ways where PostgreSQL records an object as *part of* another, e.g. a view's
``pg_rewrite`` rule, an enum's array type), adds functions whose body names a seed in text (PL/pgSQL
bodies are not tracked by ``pg_depend``), and names every object with ``pg_identify_object``. Objects are
grouped into *drop units*: a seed table absorbs its columns, indexes, constraints, defaults, row type and
triggers (dropping the table drops them); anything else (a view, a function, a foreign key or a column
in another table, a trigger on another table…) is a unit of its own with its own DROP statement. The drop
order comes from the dependency graph between units (``graphlib.TopologicalSorter``): dependents first.

An object is *expected* when it is something Prisma's own migration creates for the seeds (the tables,
their columns, indexes, constraints and defaults, the enum types and their array types). Every other
dependent is *unexpected*: the caller stops unless the operator names it.
"""

# ruff: noqa: S608  - identifiers come from the catalog (quoted by PostgreSQL), values are bind parameters

from __future__ import annotations

import re
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: object types Prisma's migrations create as part of a table or an enum
_PRISMA_MEMBER_TYPES = {"table column", "index", "table constraint", "default value", "type", "sequence",
                        "toast table", "toast table column"}

Key = tuple[int, int, int]  # (classid, objid, objsubid) as in pg_depend


@dataclass
class CatalogObject:
    key: Key
    type: str
    identity: str
    unit: Key
    expected: bool
    found_by: str = "pg_depend"

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "identity": self.identity, "expected": self.expected, "found_by": self.found_by}


@dataclass
class DropUnit:
    key: Key
    type: str
    identity: str
    drop_sql: str | None
    is_seed: bool
    members: list[CatalogObject] = field(default_factory=list)
    #: ``drop_sql`` with names relative to the schema, as recorded in Prisma's migration.sql
    migration_sql: str | None = None
    #: identities of the units that must be dropped before this one (they depend on it)
    dependents: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{self.type} {self.identity}"

    @property
    def expected(self) -> bool:
        return self.is_seed and all(m.expected for m in self.members)

    def unexpected_members(self) -> list[CatalogObject]:
        if not self.is_seed:
            return [m for m in self.members if m.key == self.key] or self.members[:1]
        return [m for m in self.members if not m.expected]


@dataclass
class Discovery:
    seeds: dict[Key, str]
    units: dict[Key, DropUnit]
    objects: list[CatalogObject]
    order: list[DropUnit]
    missing: list[str]

    @property
    def empty(self) -> bool:
        return not self.units

    def unexpected(self) -> list[DropUnit]:
        """Units that are not the seeds themselves, or seeds holding non-Prisma members (triggers, rules…)."""
        return [u for u in self.order if not u.expected]

    def objects_frame(self) -> pd.DataFrame:
        by_key = {u.key: u for u in self.units.values()}
        rows = [{**o.as_dict(), "dropped_with": by_key[o.unit].label} for o in self.objects]
        df = pd.DataFrame(rows, columns=["type", "identity", "expected", "found_by", "dropped_with"])
        return df.sort_values(["expected", "dropped_with", "type", "identity"]).reset_index(drop=True)

    def order_frame(self) -> pd.DataFrame:
        rows = [{"step": i + 1, "object": u.label, "statement": u.drop_sql or "(cannot be dropped automatically)",
                 "expected": u.expected, "members": len(u.members),
                 "dropped after": ", ".join(sorted(u.dependents))} for i, u in enumerate(self.order)]
        return pd.DataFrame(rows, columns=["step", "object", "statement", "expected", "members", "dropped after"])

    def digest(self) -> list[Any]:
        return [[u.label, u.drop_sql, sorted(m.type + " " + m.identity for m in u.members)] for u in self.order]


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


def discover(conn: Connection, db_schema: str, tables: list[str], enums: list[str]) -> Discovery:
    """Every object that would go with ``tables`` and ``enums`` (in ``db_schema``), grouped and ordered."""
    seeds, missing = find_seeds(conn, db_schema, tables, enums)
    if not seeds:
        return Discovery(seeds={}, units={}, objects=[], order=[], missing=missing)
    cls = _class_oids(conn)
    found_by: dict[Key, str] = {k: "seed" for k in seeds}
    nodes: set[Key] = set(seeds)
    text_refs = _text_referencing_functions(conn, db_schema, [*tables, *enums], exclude=set())
    frontier: list[Key] = sorted(seeds)
    for oid in text_refs:
        k = (cls["pg_proc"], oid, 0)
        if k not in nodes:
            nodes.add(k)
            found_by[k] = "function body (pg_proc.prosrc)"
            frontier.append(k)
    # columns typed with a seed enum (its array, a domain over it), read from pg_attribute itself rather than
    # only through pg_depend: a column without a DEFAULT must order its table's DROP before the enum's
    typed = _typed_columns(conn, [k[1] for k in seeds if k[0] == cls["pg_type"]])
    typed_rows: list[tuple[Any, ...]] = []
    typed_new: list[Key] = []
    for relid, attnum, typid in typed:
        k = (cls["pg_class"], relid, attnum)
        typed_rows.append((k[0], k[1], k[2], cls["pg_type"], typid, 0, "n"))
        if k not in nodes and (k[0], k[1], 0) not in seeds:
            nodes.add(k)
            found_by[k] = "column type (pg_attribute.atttypid)"
            typed_new.append(k)
    for k in _whole_relations(conn, cls["pg_class"], typed_new):
        if k not in nodes:
            nodes.add(k)
            found_by.setdefault(k, "pg_attribute (its column)")
            typed_new.append(k)
    frontier.extend(typed_new)
    while frontier:
        new: list[Key] = []
        for row in _dependents(conn, frontier):
            for k in ([(row[0], row[1], row[2])] if row[7] == "dependent" else [(row[3], row[4], row[5])]):
                if k not in nodes and (k[0], k[1], 0) not in seeds:
                    nodes.add(k)
                    found_by.setdefault(k, "pg_depend")
                    new.append(k)
        # a column of a view or materialized view (typed with a seed enum, or a seed's row type) cannot be
        # dropped alone: the whole relation goes, and what depends on it
        for k in _whole_relations(conn, cls["pg_class"], new):
            if k not in nodes:
                nodes.add(k)
                found_by.setdefault(k, "pg_depend (its column)")
                new.append(k)
        frontier = sorted(new)
    node_list = sorted(nodes)
    out_rows = list(dict.fromkeys(_outgoing(conn, node_list) + typed_rows))
    outgoing: dict[Key, list[tuple[Any, ...]]] = {}
    for r in out_rows:
        outgoing.setdefault((r[0], r[1], r[2]), []).append(r)
    c, o, s = (list(x) for x in zip(*node_list, strict=True))
    described = conn.execute(sa.text(_DESCRIBE), {"c": c, "o": o, "s": s}).all()
    desc = {(int(r[0]), int(r[1]), int(r[2])): (r[3], r[4], r[5]) for r in described}
    address = {(int(r[0]), int(r[1]), int(r[2])): (list(r[6] or []), list(r[7] or [])) for r in described}

    memo: dict[Key, Key] = {}

    def in_drop_set(k: Key) -> Key | None:
        if (k[0], k[1], 0) in seeds:
            return (k[0], k[1], 0)
        if k in nodes:
            return unit_of(k)
        if (k[0], k[1], 0) in nodes:
            return unit_of((k[0], k[1], 0))
        return None

    def unit_of(k: Key, depth: int = 0) -> Key:
        if k in memo:
            return memo[k]
        if (k[0], k[1], 0) in seeds:
            memo[k] = (k[0], k[1], 0)
            return memo[k]
        if k[2] != 0 and (k[0], k[1], 0) in nodes:  # a column of a relation that goes whole (a view)
            memo[k] = unit_of((k[0], k[1], 0), depth + 1)
            return memo[k]
        result = k
        if depth < 50:
            rows = outgoing.get(k, [])
            owner_i = [r for r in rows if r[6] == "i"]
            if owner_i:
                r = owner_i[0]
                owner = in_drop_set((r[3], r[4], r[5])) if (r[3], r[4], 0) not in seeds else (r[3], r[4], 0)
                result = owner if owner is not None else unit_of((r[3], r[4], 0), depth + 1)
            else:
                for r in rows:
                    if r[6] != "a":
                        continue
                    ref = (r[3], r[4], r[5])
                    if (ref[0], ref[1], 0) in seeds or ref in nodes or (ref[0], ref[1], 0) in nodes:
                        target = in_drop_set(ref)
                        if target is not None and target != k:
                            result = target
                            break
        memo[k] = result
        return result

    units: dict[Key, DropUnit] = {}
    objects: list[CatalogObject] = []
    for k in node_list:
        u = unit_of(k)
        typ, ident, _ = desc.get(k, ("?", str(k), None))
        is_member_of_seed = u in seeds and k != u
        # internal parts of another member (the triggers behind a foreign key, an index behind a constraint)
        internal = any(r[6] == "i" and in_drop_set((r[3], r[4], r[5])) == u for r in outgoing.get(k, []))
        expected = k in seeds or (is_member_of_seed and (typ in _PRISMA_MEMBER_TYPES or internal))
        objects.append(CatalogObject(key=k, type=str(typ), identity=str(ident), unit=u, expected=expected,
                                     found_by=found_by.get(k, "pg_depend")))
    for k in {o.unit for o in objects}:
        typ, ident, special = desc.get(k, ("?", str(k), None))
        if special:
            sql = str(special)
        elif typ in _DROP_BY_TYPE:
            sql = _DROP_BY_TYPE[str(typ)].format(ident)
        else:
            sql = None
        parts, args = address.get(k, ([], []))
        units[k] = DropUnit(key=k, type=str(typ), identity=str(ident), drop_sql=sql, is_seed=k in seeds,
                            migration_sql=_relative_sql(str(typ), parts, args, db_schema, sql))
    for obj in objects:
        units[obj.unit].members.append(obj)
    # edges: unit A depends on unit B (A must go first) when any member of A has a pg_depend row on B
    graph: dict[Key, set[Key]] = {k: set() for k in units}
    for r in out_rows:
        a = unit_of((r[0], r[1], r[2]))
        b = in_drop_set((r[3], r[4], r[5]))
        if b is not None and a != b and a in units and b in units:
            graph[b].add(a)
            units[b].dependents.add(units[a].label)
    ts: TopologicalSorter[Key] = TopologicalSorter()
    for k in sorted(graph, key=lambda x: (units[x].type, units[x].identity)):
        ts.add(k, *sorted(graph[k]))
    try:
        order = [units[k] for k in ts.static_order()]
    except CycleError as exc:
        cycle = " -> ".join(units[k].label for k in exc.args[1])
        from .errors import PolicyAbort

        raise PolicyAbort(f"the objects to drop depend on each other in a cycle ({cycle}); break the cycle by "
                          "hand (e.g. drop one foreign key) and review again") from None
    objects.sort(key=lambda x: (x.unit, x.key))
    return Discovery(seeds=seeds, units=units, objects=objects, order=order, missing=missing)


def normalize_label(text: str) -> str:
    """A name an operator typed, made comparable with a unit's identity or 'type identity' label."""
    return " ".join(text.replace('"', "").split()).lower()


def _names_for(typ: str, identity: str) -> set[str]:
    ident = normalize_label(identity)
    out = {ident, normalize_label(f"{typ} {identity}")}
    if ident.startswith("public."):
        out.add(ident.removeprefix("public."))
    return out


def unacknowledged(disc: Discovery, allowed: list[str]) -> list[str]:
    """Unexpected dependents the operator has not named (by identity, or 'type identity' as in the review)."""
    wanted = {normalize_label(a) for a in allowed}
    out: list[str] = []
    for u in disc.order:
        if u.expected:
            continue
        for m in u.unexpected_members():
            if not wanted & _names_for(m.type, m.identity):
                out.append(f"{m.type} {m.identity}")
    return out


def unknown_names(disc: Discovery, allowed: list[str]) -> list[str]:
    """Names in ``allowed`` that match no object found (a typo must not pass silently)."""
    known: set[str] = set()
    for o in disc.objects:
        known |= _names_for(o.type, o.identity)
    return [a for a in allowed if normalize_label(a) not in known]
