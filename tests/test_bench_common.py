"""The fresh copies every timed benchmark run starts from carry the planner's column statistics (an ANALYZE rolled
back with its transaction keeps only the row counts); the generated base's own are tested in test_seed.py."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from common import Cluster  # noqa: E402


def _column_stats(url: str, setup: str = "") -> int:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.begin() as c:
            if setup:
                c.exec_driver_sql(setup)
            return int(c.exec_driver_sql("select count(*) from pg_stats where tablename = 'probe'").scalar_one())
    finally:
        eng.dispose()


def test_a_fresh_copy_is_analysed(pg_server):
    cluster = Cluster(admin_url=pg_server.admin_url)
    base, copy = (f"rb_common_{uuid.uuid4().hex[:8]}_{x}" for x in ("base", "copy"))
    try:
        # a base without statistics: the copy's can only come from fresh_copy's own ANALYZE
        assert _column_stats(cluster.recreate(base), "create table probe as select g as x, mod(g, 7) as y "
                                                     "from generate_series(1, 500) g") == 0
        assert _column_stats(cluster.fresh_copy(copy, base)) == 2
    finally:
        cluster.drop(base, copy)
