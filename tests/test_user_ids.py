"""Many users' ids as one PostgreSQL array literal (runbook_lib.user_ids): what PostgreSQL reads back is exactly
what went in, whatever the ids hold."""

from __future__ import annotations

import sqlalchemy as sa

from runbook_lib import db
from runbook_lib.user_ids import EMPTY, UserIds, concat

#: ids an application could hold in a text column: quotes, backslashes, the array syntax's own characters,
#: spaces, the word NULL, an empty string
AWKWARD = ['plain', 'with "quote"', "back\\slash", "a,b", "{braces}", " spaced ", "NULL", "", "ünï"]


def read_back(url: str, literal: str) -> list[str]:
    eng = db.make_engine(url)
    try:
        with eng.connect() as c:
            return list(c.execute(sa.text("select unnest(cast(:a as text[]))"), {"a": literal}).scalars())
    finally:
        eng.dispose()


def test_of_quotes_every_id_as_postgresql_reads_it(fresh_db):
    ids = UserIds.of([*AWKWARD, "plain", 7])
    assert ids.count == len(AWKWARD) + 1  # duplicates once; values as text
    assert read_back(fresh_db, ids.literal) == sorted({*AWKWARD, "7"})
    assert UserIds.of([]) == UserIds(0, EMPTY) and read_back(fresh_db, EMPTY) == []


def test_query_aggregates_distinct_ids_in_the_database(fresh_db):
    eng = db.make_engine(fresh_db)
    try:
        with eng.connect() as c:
            got = UserIds.query(c, "select unnest(cast(:a as text[])) union all select null union all select 'plain'",
                                {"a": AWKWARD})
            none = UserIds.query(c, "select 'x' where false")
    finally:
        eng.dispose()
    assert got.count == len(AWKWARD) and sorted(read_back(fresh_db, got.literal)) == sorted(AWKWARD)
    assert none == UserIds(0, EMPTY)


def test_concat_joins_batches(fresh_db):
    a, b = UserIds.of(AWKWARD[:4]), UserIds.of(AWKWARD[4:])
    assert read_back(fresh_db, concat(a.literal, b.literal)) == sorted(AWKWARD[:4]) + sorted(AWKWARD[4:])
    assert concat(EMPTY, b.literal) == b.literal and concat(a.literal, EMPTY) == a.literal
    assert concat(EMPTY, EMPTY) == EMPTY
