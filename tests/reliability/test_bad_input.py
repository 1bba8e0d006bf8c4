"""Bad parameters and environments across every procedure: a one-line error naming the problem, a non-zero
exit status, and an unchanged database. Driven through the real CLI entry point (``runbook_lib.cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from runbook_lib.cli import main

from .support import db_state

ROOT = Path(__file__).resolve().parents[2]
W = ["-p", "since", "2025-12-01T00:00:00Z", "-p", "until", "2025-12-03T00:00:00Z"]
SQL = "x'; DROP TABLE \"User\"; --"
TR = ["run", "token-reversal"]

# (case id, argv after `runbook`, environment change, exit status, text the message must contain)
CASES: list[tuple[str, list[str], dict[str, str | None], int, str]] = [
    ("unknown procedure", ["run", "no-such-runbook"], {}, 2, "unknown procedure"),
    ("naive since", [*TR, "-p", "since", "2025-12-01T00:00:00"], {}, 2, "no time zone"),
    ("unparseable since", [*TR, "-p", "since", "yesterday"], {}, 2, "not an ISO-8601"),
    ("impossible offset", [*TR, "-p", "since", "2025-12-01T00:00:00+25:00"], {}, 2, "since"),
    ("impossible date", [*TR, "-p", "since", "2025-02-30T00:00:00Z"], {}, 2, "since"),
    ("since after until", [*TR, "-p", "since", "2025-12-03T00:00:00Z", "-p", "until", "2025-12-01T00:00:00Z"], {},
     2, "must be before"),
    ("naive until", [*TR, "-p", "since", "2025-12-01T00:00:00Z", "-p", "until", "2025-12-03"], {}, 2, "until"),
    ("missing since", [*TR], {}, 2, "'since' is required"),
    ("top_users not a number", [*TR, *W, "-p", "top_users", "many"], {}, 2, "top_users"),
    ("top_users zero", [*TR, *W, "-p", "top_users", "0"], {}, 2, "top_users"),
    ("policy outside its set", [*TR, *W, "-p", "negative_policy", "maybe"], {}, 2, "negative_policy"),
    ("ledger mode outside its set", [*TR, *W, "-p", "ledger_mode", "erase"], {}, 2, "ledger_mode"),
    ("SQL in source", [*TR, *W, "-p", "source", SQL], {}, 2, "not a ledger source"),
    ("SQL in reversal_source", [*TR, *W, "-p", "reversal_source", SQL], {}, 2, "not a ledger source"),
    ("reversal type outside the enum", [*TR, *W, "-p", "reversal_type", "BOGUS"], {}, 2, "reversal_type"),
    ("SQL in reversal_type", [*TR, *W, "-p", "reversal_type", SQL], {}, 2, "reversal_type"),
    ("unknown voucher code", [*TR, *W, "-p", "voucher_codes", "[NOPE]"], {}, 5, "unknown voucher codes"),
    ("SQL in voucher codes", [*TR, *W, "-p", "voucher_codes", f"['{SQL}']"], {}, 5, "unknown voucher codes"),
    ("SQL in user ids", [*TR, *W, "-p", "user_ids", "[\"1 OR 1=1\"]"], {}, 5, "unknown user ids"),
    ("list of the wrong type", [*TR, *W, "-p", "user_ids", "{a: 1}"], {}, 2, "user_ids"),
    ("unknown parameter", [*TR, *W, "-p", "sinse", "x"], {}, 2, "unknown parameter"),
    ("malformed plan id", [*TR, *W, "-p", "approved_plan", "not-hex"], {}, 2, "approved_plan"),
    ("lock timeout unparseable", [*TR, *W, "-p", "lock_timeout", "forever"], {}, 2, "lock_timeout"),
    ("statement timeout zero (disables it)", [*TR, *W, "-p", "statement_timeout", "0s"], {}, 2, "statement_timeout"),
    ("sample_rows zero", [*TR, *W, "-p", "sample_rows", "0"], {}, 2, "sample_rows"),
    ("SQL in db_schema", [*TR, *W, "-p", "db_schema", "public; drop schema public"], {}, 2, "db_schema"),
    ("SQL in table_map", [*TR, *W, "-p", "table_map", f"{{TokenTransaction: '{SQL}'}}"], {}, 2, "table_map"),
    ("missing table", [*TR, *W, "-p", "table_map", "{TokenTransaction: ledger_gone}"], {}, 4, "ledger_gone"),
    ("missing column", [*TR, *W, "-p", "column_map", "{TokenTransaction.amount: amt}"], {}, 4, '"amt"'),
    ("schema path missing", [*TR, *W, "-p", "prisma_schema", "nope/schema.prisma"], {}, 2, "does not exist"),
    ("schema path not a schema", [*TR, *W, "-p", "prisma_schema", str(ROOT / "README.md")], {}, 2,
     "defines no models"),
    ("schema of another layout", [*TR, *W, "-p", "prisma_schema", str(ROOT / "demo/prisma_mapped/schema.prisma")],
     {}, 4, "token_ledger"),
    ("parameter file missing", [*TR, *W, "-f", "no/such.yaml"], {}, 2, "no/such.yaml"),
    ("DATABASE_URL unset", [*TR, *W], {"DATABASE_URL": None}, 3, "DATABASE_URL is not set"),
    ("unreachable database", [*TR, *W], {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}, 3, "cannot reach"),
    ("database that does not exist", [*TR, *W], {"DATABASE_URL": "@nodb"}, 3, "does not exist"),
    ("execute without approval", [*TR, *W, "--execute"], {}, 6, "approved_plan"),
    ("execute with a wrong plan id", [*TR, *W, "--execute", "--approve", "0" * 24], {}, 6, "plan changed"),
    ("production without confirmation", [*TR, *W, "--execute", "--approve", "0" * 24],
     {"RUNBOOK_TARGET_PRODUCTION": "1"}, 7, "marked production"),
    ("production with the wrong name", [*TR, *W, "--execute", "--approve", "0" * 24, "--confirm-target", "prod"],
     {"RUNBOOK_TARGET_PRODUCTION": "1"}, 7, "marked production"),
    ("partial: no scope", ["run", "partial-rollback"], {}, 2, "voucher_codes"),
    ("partial: unknown code", ["run", "partial-rollback", "-p", "voucher_codes", "[NOPE]"], {}, 5, "NOPE"),
    ("partial: naive window", ["run", "partial-rollback", "-p", "all_vouchers", "true", "-p", "redeemed_since",
                               "2025-12-01 00:00"], {}, 2, "redeemed_since"),
    ("partial: unknown status", ["run", "partial-rollback", "-p", "all_vouchers", "true", "-p", "reset_statuses",
                                 "[REVIVED]"], {}, 2, "reset_statuses"),
    ("full: no ledger policy", ["run", "full-rollback", "-p", "prisma_side", "false"], {}, 2, "ledger_policy"),
    ("full: policy outside its set", ["run", "full-rollback", "-p", "ledger_policy", "maybe"], {}, 2,
     "ledger_policy"),
    ("full: prisma side without schema", ["run", "full-rollback", "-p", "ledger_policy", "keep"], {}, 2,
     "prisma_schema"),
    ("recovery: folder missing", ["run", "migration-recovery", "-p", "migrations_dir", "no/dir"], {}, 2,
     "does not exist"),
    ("recovery: applied without folder", ["run", "migration-recovery", "-p", "action", "applied"], {}, 2,
     "migrations_dir"),
    ("recovery: no migrations table", ["run", "migration-recovery"], {"DATABASE_URL": "@empty"}, 5,
     "_prisma_migrations"),
    ("backup: unknown model", ["run", "backup", "-p", "models", "[NoSuchModel]"], {}, 4, "NoSuchModel"),
    ("restore: no such backup", ["run", "restore", "-p", "backup", "nope"], {}, 5, "not a backup folder"),
    ("restore: bad database name", ["run", "restore", "-p", "into_database", "x; drop"], {}, 2, "into_database"),
    ("rehearsal: unknown procedure", ["run", "rehearsal", "-p", "rehearse", "nope"], {}, 2, "unknown procedure"),
    ("verify: unknown check", ["run", "verify", "-p", "checks", "[nope]"], {}, 2, "unknown checks"),
    ("verify: expect_full_rollback not a boolean", ["run", "verify", "-p", "expect_full_rollback", "maybe"], {}, 2,
     "expect_full_rollback"),
]


def test_at_least_forty_cases_across_all_procedures():
    assert len(CASES) >= 40
    from runbook_lib import procedures

    covered = {argv[1] for _, argv, _, _, _ in CASES if len(argv) > 1}
    assert set(procedures.available()) <= covered | {"no-such-runbook"}


@pytest.mark.parametrize(("case", "argv", "env", "code", "text"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused(case, argv, env, code, text, incident_db, fresh_db, pg_server, monkeypatch, capsys,
                              tmp_path, figures):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", incident_db)
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        elif v == "@nodb":
            monkeypatch.setenv(k, pg_server.url("rb_no_such_database"))
        elif v == "@empty":
            monkeypatch.setenv(k, fresh_db)
        else:
            monkeypatch.setenv(k, v)
    before = db_state(incident_db)
    figures["bad_inputs"] += 1
    status = main([*argv, "--no-progress"] if argv[0] == "run" else argv)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == code, (status, err)
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], err
    assert "Traceback" not in err
    assert db_state(incident_db) == before
    figures["refused"] += 1


def test_read_only_database_refuses_execute(incident_db, pg_server, monkeypatch, capsys, tmp_path, figures):
    """A read-only target (a standby, or default_transaction_read_only): execute fails, nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", incident_db)
    assert main(["run", *TR[1:], *W, "--no-progress"]) == 0
    out = capsys.readouterr().out
    plan_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("plan id:"))
    name = sa.engine.make_url(incident_db).database
    admin = pg_server.admin()
    with admin.connect() as c:
        c.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    admin.dispose()
    before = db_state(incident_db)
    figures["bad_inputs"] += 1
    status = main(["run", *TR[1:], *W, "--no-progress", "--execute", "--approve", plan_id])
    err = capsys.readouterr().err.strip()
    assert status == 3 and "read-only" in err and len(err.splitlines()) == 1, err
    assert db_state(incident_db) == before
    figures["refused"] += 1
    run_dirs = sorted(p for p in (tmp_path / "incidents" / "adhoc").iterdir() if p.is_dir())
    assert json.loads((run_dirs[-1] / "manifest.json").read_text())["status"] == "failed"


def test_huge_list_is_refused(incident_db, monkeypatch, capsys, tmp_path, figures):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", incident_db)
    big = tmp_path / "big.yaml"
    big.write_text(json.dumps({"user_ids": [f"u{i}" for i in range(100_001)]}))
    figures["bad_inputs"] += 1
    status = main(["run", *TR[1:], *W, "-f", str(big), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "too many" in err and len(err.splitlines()) == 1
    figures["refused"] += 1
