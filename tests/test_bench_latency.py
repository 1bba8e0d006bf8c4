"""Smoke test of benchmarks/bench_app_latency.py: its core at a tiny size (2k ledger rows, one application worker,
about a second of load per mode) against the test server; the report's structure, never its timings."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_app_latency as bench  # noqa: E402
from common import Cluster  # noqa: E402


def test_app_latency_report_structure(pg_server):
    settings = bench.Settings(users=400, ledger_rows=2000, workers=1, rate=20, lead_s=0.3, tail_s=0.3, idle_s=0.6,
                              batch_users=50, affected_from="lock", sample_users=200)
    cluster = Cluster(admin_url=pg_server.admin_url)
    prefix = f"rb_lat_{uuid.uuid4().hex[:8]}"
    report = bench.run(cluster, settings, prefix=prefix, log=lambda _m: None)

    assert {"date", "machine", "code", "postgres", "data", "settings", "notes", "modes"} <= set(report)
    assert report["data"]["ledger_rows"] == 2000 and report["data"]["affected_users"] > 0
    modes = {m["mode"]: m for m in report["modes"]}
    expected = {"no reversal", "raw SQL", "runbook single"}
    if bench.online_available():
        expected.add("runbook online")
    else:
        assert any("online" in n for n in report["notes"])
    assert set(modes) == expected
    # the affected users are written only once the runbook holds their locks: the approved plan stays valid
    assert modes["runbook single"]["outcome"] == "succeeded"
    assert modes["raw SQL"]["outcome"] == "succeeded"
    assert modes["no reversal"]["transactions"] > 0  # (a reversal of 2k rows may be over before any transaction)
    for m in (modes["no reversal"], modes["raw SQL"], modes["runbook single"]):
        rows = {(r["group"], r["kind"]): r for r in m["rows"]}
        assert set(rows) == {(g, k) for g in bench.GROUPS for k in (*bench.KINDS, "all")}
        for g in bench.GROUPS:
            total = rows[(g, "all")]
            assert total["n"] + total["errors"] == sum(rows[(g, k)]["n"] + rows[(g, k)]["errors"] for k in bench.KINDS)
            assert {"p50_ms", "p95_ms", "p99_ms", "max_ms", "over_1s", "due_p99_ms", "due_max_ms", "due_over_1s"} <= set(total)
        assert {"samples", "samples_with_waits", "max_waiting_sessions", "wait_events"} <= set(m["lock_waits"])
    assert sum(r["n"] for r in modes["no reversal"]["rows"] if r["kind"] == "all") > 0
    assert [r for m in report["modes"] for r in m["rows"] if r["errors"]] == []  # the app's writes all went through

    text = bench.render(report)
    assert text.startswith("# Application latency during a token reversal")
    assert "## Reversal time per mode" in text and "| users | kind | n |" in text
    for mode in expected:
        assert f"| {mode} |" in text
    # nothing left behind on the server
    with cluster.admin.connect() as c:
        left = c.execute(sa.text("select count(*) from pg_database where starts_with(datname, :p)"),
                         {"p": prefix}).scalar_one()
    assert left == 0
