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

The catalog queries themselves are in ``catalog_queries``; ``find_seeds`` and the helpers tests use are
importable from here as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

import pandas as pd
from sqlalchemy.engine import Connection

from .catalog_queries import (
    _DROP_BY_TYPE,
    Key,
    _class_oids,
    _dependents,
    _describe,
    _outgoing,
    _relative_sql,
    _text_referencing_functions,
    _typed_columns,
    _whole_relations,
    find_seeds,
)
from .errors import PolicyAbort

#: object types Prisma's migrations create as part of a table or an enum
_PRISMA_MEMBER_TYPES = {"table column", "index", "table constraint", "default value", "type", "sequence",
                        "toast table", "toast table column"}


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


@dataclass
class _Walk:
    """The objects found so far, and how each was found; ``add`` records a new one."""

    seeds: dict[Key, str]
    nodes: set[Key]
    found_by: dict[Key, str]

    def add(self, k: Key, how: str) -> bool:
        if k in self.nodes:
            return False
        self.nodes.add(k)
        self.found_by.setdefault(k, how)
        return True

    def outside_seeds(self, k: Key) -> bool:
        """Not a seed nor a part of one (a seed table absorbs its columns)."""
        return (k[0], k[1], 0) not in self.seeds


def _start(conn: Connection, cls: dict[str, int], walk: _Walk, names: list[str], db_schema: str,
           ) -> tuple[list[Key], list[tuple[Any, ...]]]:
    """The first frontier: the seeds, functions whose body names one, and columns typed with a seed enum; and
    the synthetic pg_depend rows of those columns (``column -> its enum``)."""
    frontier: list[Key] = sorted(walk.seeds)
    for oid in _text_referencing_functions(conn, db_schema, names, exclude=set()):
        k = (cls["pg_proc"], oid, 0)
        if walk.add(k, "function body (pg_proc.prosrc)"):
            frontier.append(k)
    # columns typed with a seed enum (its array, a domain over it), read from pg_attribute itself rather than
    # only through pg_depend: a column without a DEFAULT must order its table's DROP before the enum's
    typed = _typed_columns(conn, [k[1] for k in walk.seeds if k[0] == cls["pg_type"]])
    typed_rows: list[tuple[Any, ...]] = []
    typed_new: list[Key] = []
    for relid, attnum, typid in typed:
        k = (cls["pg_class"], relid, attnum)
        typed_rows.append((k[0], k[1], k[2], cls["pg_type"], typid, 0, "n"))
        if walk.outside_seeds(k) and walk.add(k, "column type (pg_attribute.atttypid)"):
            typed_new.append(k)
    for k in _whole_relations(conn, cls["pg_class"], typed_new):
        if walk.add(k, "pg_attribute (its column)"):
            typed_new.append(k)
    frontier.extend(typed_new)
    return frontier, typed_rows


def _walk_pg_depend(conn: Connection, cls: dict[str, int], walk: _Walk, frontier: list[Key]) -> None:
    """Follow pg_depend from ``frontier`` (dependents, and internal owners) until nothing new turns up."""
    while frontier:
        new: list[Key] = []
        for row in _dependents(conn, frontier):
            for k in ([(row[0], row[1], row[2])] if row[7] == "dependent" else [(row[3], row[4], row[5])]):
                if walk.outside_seeds(k) and walk.add(k, "pg_depend"):
                    new.append(k)
        # a column of a view or materialized view (typed with a seed enum, or a seed's row type) cannot be
        # dropped alone: the whole relation goes, and what depends on it
        for k in _whole_relations(conn, cls["pg_class"], new):
            if walk.add(k, "pg_depend (its column)"):
                new.append(k)
        frontier = sorted(new)


class _Grouping:
    """Which drop unit each object goes with: a seed absorbs its parts, an object its internal parts, and an
    automatic dependency ties an object to what it is part of (memoized, in the order asked)."""

    def __init__(self, seeds: dict[Key, str], nodes: set[Key], outgoing: dict[Key, list[tuple[Any, ...]]]):
        self.seeds, self.nodes, self.outgoing = seeds, nodes, outgoing
        self.memo: dict[Key, Key] = {}

    def in_drop_set(self, k: Key) -> Key | None:
        if (k[0], k[1], 0) in self.seeds:
            return (k[0], k[1], 0)
        if k in self.nodes:
            return self.unit_of(k)
        if (k[0], k[1], 0) in self.nodes:
            return self.unit_of((k[0], k[1], 0))
        return None

    def unit_of(self, k: Key, depth: int = 0) -> Key:
        memo = self.memo
        if k in memo:
            return memo[k]
        if (k[0], k[1], 0) in self.seeds:
            memo[k] = (k[0], k[1], 0)
            return memo[k]
        if k[2] != 0 and (k[0], k[1], 0) in self.nodes:  # a column of a relation that goes whole (a view)
            memo[k] = self.unit_of((k[0], k[1], 0), depth + 1)
            return memo[k]
        result = k
        if depth < 50:
            rows = self.outgoing.get(k, [])
            owner_i = [r for r in rows if r[6] == "i"]
            if owner_i:
                r = owner_i[0]
                owner = (self.in_drop_set((r[3], r[4], r[5])) if (r[3], r[4], 0) not in self.seeds
                         else (r[3], r[4], 0))
                result = owner if owner is not None else self.unit_of((r[3], r[4], 0), depth + 1)
            else:
                result = self._auto_target(k, rows)
        memo[k] = result
        return result

    def _auto_target(self, k: Key, rows: list[tuple[Any, ...]]) -> Key:
        """The unit of the first object in the drop set that ``k`` depends on automatically, else ``k``."""
        for r in rows:
            if r[6] != "a":
                continue
            ref = (r[3], r[4], r[5])
            if (ref[0], ref[1], 0) in self.seeds or ref in self.nodes or (ref[0], ref[1], 0) in self.nodes:
                target = self.in_drop_set(ref)
                if target is not None and target != k:
                    return target
        return k


def _catalog_objects(node_list: list[Key], grouping: _Grouping, desc: dict[Key, tuple[Any, Any, Any]],
                     found_by: dict[Key, str]) -> list[CatalogObject]:
    """Every object found, with its unit and whether Prisma's migration creates it."""
    seeds, outgoing = grouping.seeds, grouping.outgoing
    objects: list[CatalogObject] = []
    for k in node_list:
        u = grouping.unit_of(k)
        typ, ident, _ = desc.get(k, ("?", str(k), None))
        is_member_of_seed = u in seeds and k != u
        # internal parts of another member (the triggers behind a foreign key, an index behind a constraint)
        internal = any(r[6] == "i" and grouping.in_drop_set((r[3], r[4], r[5])) == u
                       for r in outgoing.get(k, []))
        expected = k in seeds or (is_member_of_seed and (typ in _PRISMA_MEMBER_TYPES or internal))
        objects.append(CatalogObject(key=k, type=str(typ), identity=str(ident), unit=u, expected=expected,
                                     found_by=found_by.get(k, "pg_depend")))
    return objects


def _drop_units(objects: list[CatalogObject], seeds: dict[Key, str], desc: dict[Key, tuple[Any, Any, Any]],
                address: dict[Key, tuple[list[str], list[str]]], db_schema: str) -> dict[Key, DropUnit]:
    """One unit per distinct unit key, with its DROP statement (as run, and schema-relative) and members."""
    units: dict[Key, DropUnit] = {}
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
    return units


def _drop_order(out_rows: list[tuple[Any, ...]], grouping: _Grouping,
                units: dict[Key, DropUnit]) -> list[DropUnit]:
    """Dependents first. Unit A depends on unit B (A must go first) when any member of A has a pg_depend row on
    B; records each unit's ``dependents``. A cycle stops with ``PolicyAbort``."""
    graph: dict[Key, set[Key]] = {k: set() for k in units}
    for r in out_rows:
        a = grouping.unit_of((r[0], r[1], r[2]))
        b = grouping.in_drop_set((r[3], r[4], r[5]))
        if b is not None and a != b and a in units and b in units:
            graph[b].add(a)
            units[b].dependents.add(units[a].label)
    ts: TopologicalSorter[Key] = TopologicalSorter()
    for k in sorted(graph, key=lambda x: (units[x].type, units[x].identity)):
        ts.add(k, *sorted(graph[k]))
    try:
        return [units[k] for k in ts.static_order()]
    except CycleError as exc:
        cycle = " -> ".join(units[k].label for k in exc.args[1])
        raise PolicyAbort(f"the objects to drop depend on each other in a cycle ({cycle}); break the cycle by "
                          "hand (e.g. drop one foreign key) and review again") from None


def discover(conn: Connection, db_schema: str, tables: list[str], enums: list[str]) -> Discovery:
    """Every object that would go with ``tables`` and ``enums`` (in ``db_schema``), grouped and ordered."""
    seeds, missing = find_seeds(conn, db_schema, tables, enums)
    if not seeds:
        return Discovery(seeds={}, units={}, objects=[], order=[], missing=missing)
    cls = _class_oids(conn)
    walk = _Walk(seeds=seeds, nodes=set(seeds), found_by={k: "seed" for k in seeds})
    frontier, typed_rows = _start(conn, cls, walk, [*tables, *enums], db_schema)
    _walk_pg_depend(conn, cls, walk, frontier)
    node_list = sorted(walk.nodes)
    out_rows = list(dict.fromkeys(_outgoing(conn, node_list) + typed_rows))
    outgoing: dict[Key, list[tuple[Any, ...]]] = {}
    for r in out_rows:
        outgoing.setdefault((r[0], r[1], r[2]), []).append(r)
    desc, address = _describe(conn, node_list)
    grouping = _Grouping(seeds, walk.nodes, outgoing)
    objects = _catalog_objects(node_list, grouping, desc, walk.found_by)
    units = _drop_units(objects, seeds, desc, address, db_schema)
    order = _drop_order(out_rows, grouping, units)
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
