"""Many users' ids held as ONE PostgreSQL array literal: what an execute hands to its verification.

After a large execute the verification compares every reversed user's committed balance with the plan's figure and
scopes the per-user checks to those users. Held as Python objects, 500,000 ids and balances took ~140 MB at their
peak (the lists, the copies that sorted them, psycopg2's quoting of each element); as two ``text[]`` / ``bigint[]``
literals that PostgreSQL wrote itself (``array_agg(…)::text``) and reads back with ``cast(:p as text[])``, they are
two strings of ~13 MB and ~4 MB, bound as one value each. Python never parses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

EMPTY = "{}"


@dataclass(frozen=True)
class UserIds:
    """``count`` users' ids as one PostgreSQL ``text[]`` literal (``literal``), each id once."""

    count: int
    literal: str = EMPTY

    @classmethod
    def of(cls, ids: Iterable[Any]) -> UserIds:
        """From Python values (a few users: tests, a parameter's list): each quoted as PostgreSQL's array input
        reads it."""
        unique = sorted({str(i) for i in ids})
        quoted = ('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in unique)
        return cls(len(unique), "{" + ",".join(quoted) + "}")

    @classmethod
    def query(cls, conn: Connection, sql: str, params: dict[str, Any] | None = None) -> UserIds:
        """The distinct non-null ids in the first column of ``sql``, aggregated by PostgreSQL into one literal."""
        count, literal = conn.execute(sa.text(
            f"select count(*), coalesce(array_agg(u order by u)::text, '{EMPTY}') from (select distinct u::text "
            f"from ({sql}) s(u) where u is not null) d"), params or {}).one()
        return cls(int(count), str(literal))


def concat(a: str, b: str) -> str:
    """Two one-dimensional array literals joined (``{a,b}`` and ``{c}`` → ``{a,b,c}``): an online run's batches."""
    parts = [x[1:-1] for x in (a, b) if x != EMPTY]
    return "{" + ",".join(parts) + "}"
