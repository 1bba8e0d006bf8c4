"""Smoke test of benchmarks/bench_scaling.py at a tiny size against the test server: windows of growing length
select more rows, every step ran, the report has its table and fitted lines; never its timings."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_scaling as bench  # noqa: E402
from common import Cluster, generate  # noqa: E402


def test_scaling_report_structure(pg_server):
    cluster = Cluster(admin_url=pg_server.admin_url)
    prefix = f"rb_scale_{uuid.uuid4().hex[:8]}"
    data = generate(cluster, f"{prefix}_base", users=400, ledger_rows=2000)
    try:
        rows = bench.measure(cluster, f"{prefix}_base", [12, 48], prefix=prefix)
        again = bench.measure(cluster, f"{prefix}_base", [12, 48], prefix=prefix)
    finally:
        cluster.drop(f"{prefix}_base")
    assert [r["hours"] for r in rows] == [12, 48]
    assert 0 < rows[0]["rows"] < rows[1]["rows"] == data.affected_rows  # the whole window: every affected row
    assert all(r["raw"] > 0 and r["review"] > 0 and r["execute"] > 0 for r in rows)

    text = bench.render(rows, cluster, data.ledger_rows, data.users, f"{prefix}_base")
    assert text.startswith("# Scaling: a token reversal's time against the affected rows")
    assert "| 12 h |" in text and "| 48 h |" in text and "- library execute: " in text and "R² " in text
    medians = bench.median_rows([rows, again])  # --repeat: per window the median of the runs and their range
    assert [m["rows"] for m in medians] == [r["rows"] for r in rows] and medians[0]["runs"] == 2
    for m, a, b in zip(medians, rows, again, strict=True):
        assert m["execute_min"] == min(a["execute"], b["execute"]) <= m["execute"] <= m["execute_max"]
    repeated = bench.render(medians, cluster, data.ledger_rows, data.users, f"{prefix}_base")
    assert "each step 2 times" in repeated and "the medians" in repeated and " [" in repeated
    with cluster.admin.connect() as c:  # nothing left behind on the server
        left = c.execute(sa.text("select count(*) from pg_database where starts_with(datname, :p)"),
                         {"p": prefix}).scalar_one()
    assert left == 0
