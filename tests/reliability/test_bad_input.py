"""Bad parameters and environments across every procedure: a one-line error naming the problem, a non-zero
exit status, and an unchanged database. Driven through the real CLI entry point (``runbook_lib.cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from runbook_lib.cli import main
from runbook_lib.params import CommonParams

from .support import db_state

ROOT = Path(__file__).resolve().parents[2]
W = ["-p", "since", "2025-12-01T00:00:00Z", "-p", "until", "2025-12-03T00:00:00Z"]
SQL = "x'; DROP TABLE \"User\"; --"
#: SQL as one element of a YAML flow list or map value (double-quoted, so the quotes survive)
SQL_Y = '"' + SQL.replace('"', '\\"') + '"'
TR = ["run", "token-reversal"]
PR = ["run", "partial-rollback", "-p", "all_vouchers", "true"]
FR = ["run", "full-rollback", "-p", "ledger_policy", "reverse", "-p", "prisma_side", "false"]
MR = ["run", "migration-recovery"]
#: an execute with a syntactically valid approval: a bad parameter must stop it before anything is written
#: (the harness records a review of this plan id by another person in the incident, so that an execute gets past
#: the approval check to the check its case is about; "no review produced it" is a case of its own)
REVIEWED = "0" * 24
EX = ["--execute", "--approve", REVIEWED]
NO_BACKUP = ["-p", "backup_override_reason", "bad-input test on a scratch clone"]
MANY = "[" + ", ".join(f"c{i}" for i in range(100_001)) + "]"
MANY_501 = "[" + ", ".join(f"t{i}" for i in range(501)) + "]"

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
    ("SQL in grant_link", [*TR, *W, "-p", "grant_link", SQL], {}, 2, "grant_link"),
    ("SQL in execution", [*TR, *W, "-p", "execution", SQL], {}, 2, "execution"),
    ("execution outside its set", [*TR, *W, "-p", "execution", "batched"], {}, 2, "execution"),
    ("SQL in batch_pause", [*TR, *W, "-p", "execution", "online", "-p", "batch_pause", SQL], {}, 2, "batch_pause"),
    ("batch_pause over a minute", [*TR, *W, "-p", "execution", "online", "-p", "batch_pause", "2min"], {}, 2,
     "batch_pause"),
    ("batch_users zero", [*TR, *W, "-p", "execution", "online", "-p", "batch_users", "0"], {}, 2, "batch_users"),
    ("online mode in delete mode", [*TR, *W, "-p", "execution", "online", "-p", "ledger_mode", "delete"], {}, 2,
     "ledger_mode=compensate"),
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
    ("schema of another layout", [*TR, *W, "-p", "prisma_schema", str(ROOT / "tests/fixtures/prisma_mapped/schema.prisma")],
     {}, 4, "token_ledger"),
    ("parameter file missing", [*TR, *W, "-f", "no/such.yaml"], {}, 2, "no/such.yaml"),
    ("DATABASE_URL unset", [*TR, *W], {"DATABASE_URL": None}, 3, "DATABASE_URL is not set"),
    ("unreachable database", [*TR, *W], {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}, 3, "cannot reach"),
    ("database that does not exist", [*TR, *W], {"DATABASE_URL": "@nodb"}, 3, "does not exist"),
    ("execute without approval", [*TR, *W, "--execute"], {}, 6, "approved_plan"),
    ("execute with a wrong plan id", [*TR, *W, "--execute", "--approve", "0" * 24], {}, 6, "plan changed"),
    ("execute with a plan id no review produced", [*TR, *W, "--execute", "--approve", "1" * 24], {}, 6,
     "was not produced by any review in incident adhoc"),
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
    # --- SQL in every string parameter: the common ones (validated once, by CommonParams, for all procedures)
    ("SQL in mode", [*TR, *W, "-p", "mode", SQL], {}, 2, "mode"),
    ("SQL in since", [*TR, *W, "-p", "since", SQL, *EX], {}, 2, "since"),
    ("SQL in until", [*TR, *W, "-p", "until", SQL, *EX], {}, 2, "until"),
    ("SQL in approved_plan", [*TR, *W, "-p", "approved_plan", SQL], {}, 2, "approved_plan"),
    ("SQL in lock_timeout", [*TR, *W, "-p", "lock_timeout", SQL, *EX], {}, 2, "lock_timeout"),
    # inspect_user is only ever a bound value: SQL in it is a user nobody has; the execute goes on to the approval
    ("SQL in inspect_user", [*TR, *W, "-p", "inspect_user", SQL, *EX], {}, 6, "the plan changed"),
    ("partial: SQL in inspect_user", [*PR, "-p", "inspect_user", SQL, *NO_BACKUP, *EX], {}, 6, "the plan changed"),
    ("full: SQL in inspect_user", [*FR, "-p", "inspect_user", SQL, *NO_BACKUP, *EX], {}, 6, "the plan changed"),
    ("inspect_user a list", [*TR, *W, "-p", "inspect_user", "[a, b]"], {}, 2, "inspect_user"),
    ("SQL in statement_timeout", [*TR, *W, "-p", "statement_timeout", SQL, *EX], {}, 2, "statement_timeout"),
    ("SQL in prisma_schema", [*TR, *W, "-p", "prisma_schema", SQL], {}, 2, "does not exist"),
    ("SQL in column_map", [*TR, *W, "-p", "column_map", f"{{TokenTransaction.amount: {SQL_Y}}}", *EX], {}, 2,
     "column_map"),
    ("SQL in evidence_dir", [*TR, *W, "-p", "evidence_dir", SQL], {}, 2, "evidence_dir"),
    ("SQL in confirm_target", [*TR, *W, "-p", "confirm_target", SQL, *EX], {"RUNBOOK_TARGET_PRODUCTION": "1"}, 7,
     "marked production"),
    ("SQL in ledger_mode", [*TR, *W, "-p", "ledger_mode", SQL], {}, 2, "ledger_mode"),
    ("SQL in negative_policy", [*TR, *W, "-p", "negative_policy", SQL], {}, 2, "negative_policy"),
    ("named time zone instead of an offset", [*TR, "-p", "since", "2025-12-01T00:00:00 Europe/Paris"], {}, 2,
     "since"),
    ("top_users huge", [*TR, *W, "-p", "top_users", "1000000000"], {}, 2, "top_users"),
    ("wrong schema path (db_schema)", [*TR, *W, "-p", "db_schema", "no_such_schema"], {}, 4, "no_such_schema"),
    ("production by parameter without confirmation", [*TR, *W, "-p", "production", "true", *EX], {}, 7,
     "marked production"),
    # --- partial-rollback
    ("partial: empty code list", ["run", "partial-rollback", "-p", "voucher_codes", "[]"], {}, 2, "voucher_codes"),
    ("partial: huge code list", ["run", "partial-rollback", "-p", "voucher_codes", MANY], {}, 2, "too many"),
    ("partial: SQL in voucher_codes", ["run", "partial-rollback", "-p", "voucher_codes", f"[{SQL_Y}]", *NO_BACKUP,
                                       *EX], {}, 5, "unknown voucher codes"),
    ("partial: SQL in redeemed_since", [*PR, "-p", "redeemed_since", SQL], {}, 2, "redeemed_since"),
    ("partial: SQL in redeemed_until", [*PR, "-p", "redeemed_until", SQL], {}, 2, "redeemed_until"),
    ("partial: SQL in reset_statuses", [*PR, "-p", "reset_statuses", f"[{SQL_Y}]"], {}, 2, "reset_statuses"),
    ("partial: SQL in source", [*PR, "-p", "source", SQL], {}, 2, "not a ledger source"),
    ("partial: SQL in reversal_source", [*PR, "-p", "reversal_source", SQL], {}, 2, "not a ledger source"),
    ("partial: SQL in reversal_type", [*PR, "-p", "reversal_type", SQL], {}, 2, "reversal_type"),
    ("partial: SQL in grant_link", [*PR, "-p", "grant_link", SQL], {}, 2, "grant_link"),
    ("partial: SQL in ledger_mode", [*PR, "-p", "ledger_mode", SQL], {}, 2, "ledger_mode"),
    ("partial: SQL in negative_policy", [*PR, "-p", "negative_policy", SQL], {}, 2, "negative_policy"),
    ("partial: wrong schema path", [*PR, "-p", "db_schema", "no_such_schema"], {}, 4, "no_such_schema"),
    # --- full-rollback
    ("full: empty model list", [*FR, "-p", "models", "[]"], {}, 2, "models"),
    ("full: huge model list", [*FR, "-p", "models", MANY_501], {}, 2, "too many"),
    ("full: SQL in models", [*FR, "-p", "models", f"[Voucher, {SQL_Y}]", *NO_BACKUP, *EX], {}, 2, "models"),
    ("full: SQL in enums", [*FR, "-p", "enums", f"[{SQL_Y}]", *NO_BACKUP, *EX], {}, 2, "enums"),
    ("full: SQL in drop_dependents", [*FR, "-p", "drop_dependents", f"[{SQL_Y}]", *NO_BACKUP, *EX], {}, 2,
     "drop_dependents"),
    ("full: SQL in ledger_policy", ["run", "full-rollback", "-p", "ledger_policy", SQL], {}, 2, "ledger_policy"),
    ("full: SQL in source", [*FR, "-p", "source", SQL], {}, 2, "not a ledger source"),
    ("full: SQL in reversal_source", [*FR, "-p", "reversal_source", SQL], {}, 2, "not a ledger source"),
    ("full: SQL in reversal_type", [*FR, "-p", "reversal_type", SQL], {}, 2, "reversal_type"),
    ("full: SQL in ledger_mode", [*FR, "-p", "ledger_mode", SQL], {}, 2, "ledger_mode"),
    ("full: SQL in negative_policy", [*FR, "-p", "negative_policy", SQL], {}, 2, "negative_policy"),
    ("full: SQL in migration_name", [*FR, "-p", "migration_name", SQL], {}, 2, "migration_name"),
    ("full: SQL in prisma_config", [*FR, "-p", "prisma_config", SQL], {}, 2, "prisma_config"),
    ("full: path in migration_name", [*FR, "-p", "migration_name", "../../etc"], {}, 2, "migration_name"),
    ("full: top_users below one", [*FR, "-p", "top_users", "-5"], {}, 2, "top_users"),
    ("partial: top_users below one", [*PR, "-p", "top_users", "-5"], {}, 2, "top_users"),
    # --- migration-recovery
    ("recovery: SQL in migration_name", [*MR, "-p", "migration_name", SQL, "-p", "action", "rolled_back", *EX], {},
     5, "neither in _prisma_migrations"),
    ("recovery: SQL in compensating_sql", [*MR, "-p", "action", "rolled_back", "-p", "compensating_sql", SQL], {},
     2, "compensating_sql"),
    ("recovery: SQL in migrations_dir", [*MR, "-p", "migrations_dir", SQL], {}, 2, "migrations_dir"),
    ("recovery: SQL in action", [*MR, "-p", "action", SQL], {}, 2, "action"),
    # --- restore
    ("restore: SQL in backup", ["run", "restore", "-p", "backup", SQL, *NO_BACKUP, *EX], {}, 5, "not a backup folder"),
    ("restore: SQL in restore_tables", ["run", "restore", "-p", "restore_tables", f"[{SQL_Y}]"], {}, 2,
     "restore_tables"),
    ("restore: huge table list", ["run", "restore", "-p", "restore_tables", MANY_501], {}, 2, "too many"),
    # --- rehearsal
    ("rehearsal: SQL in rehearse", ["run", "rehearsal", "-p", "rehearse", SQL], {}, 2, "unknown procedure"),
    ("rehearsal: SQL in rehearse_parameters", ["run", "rehearsal", "-p", "rehearse_parameters",
                                               f"{{since: {SQL_Y}}}"], {}, 2, "since"),
    ("rehearsal: unknown inner parameter", ["run", "rehearsal", "-p", "rehearse_parameters", "{sinse: x}"], {}, 2,
     "sinse"),
    # --- backup
    ("backup: empty model list", ["run", "backup", "-p", "models", "[]"], {}, 2, "models"),
    ("backup: huge model list", ["run", "backup", "-p", "models", MANY_501], {}, 2, "too many"),
    ("backup: SQL in models", ["run", "backup", "-p", "models", f"[{SQL_Y}]"], {}, 4, "missing in the target"),
    ("backup: wrong schema path", ["run", "backup", "-p", "db_schema", "no_such_schema"], {}, 4, "no_such_schema"),
    # --- verify
    ("verify: SQL in checks", ["run", "verify", "-p", "checks", f"[{SQL_Y}]"], {}, 2, "unknown checks"),
    ("verify: wrong schema path", ["run", "verify", "-p", "db_schema", "no_such_schema"], {}, 4, "no_such_schema"),
    ("verify: ledger table mapped away", ["run", "verify", "-p", "table_map", "{TokenTransaction: ledger_gone}"], {},
     4, "ledger_gone"),
    # --- environments: read-only target (every procedure that writes) and a wrong password
    ("read-only: token-reversal", [*TR, *W, *EX], {"@": "readonly"}, 3, "read-only"),
    ("read-only: partial-rollback", [*PR, *NO_BACKUP, *EX], {"@": "readonly"}, 3, "read-only"),
    ("read-only: full-rollback", [*FR, *NO_BACKUP, *EX], {"@": "readonly"}, 3, "read-only"),
    ("read-only: migration-recovery", [*MR, *EX], {"@": "readonly"}, 3, "read-only"),
    ("wrong password", [*TR, *W], {"@": "badpassword"}, 3, "authentication failed"),
]

#: string parameters that are free text recorded in the evidence, never part of any SQL text or name
FREE_TEXT = {"backup_override_reason", "override_reason"}  # reasons are recorded text, never SQL
COMMON = set(CommonParams.model_fields)


def test_at_least_forty_cases_across_all_procedures():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
    from runbook_lib import procedures

    covered = {argv[1] for _, argv, _, _, _ in CASES if len(argv) > 1}
    assert set(procedures.available()) <= covered | {"no-such-runbook"}


def _takes_text(annotation: object) -> bool:
    text = repr(annotation)
    return "str" in text or "Literal" in text


def test_sql_is_tried_in_every_string_parameter_of_every_procedure():
    """Each procedure's own string parameters (and each common one, once) get SQL in some case of the table."""
    from runbook_lib import procedures

    tried: set[tuple[str, str]] = set()
    for _, argv, _, _, _ in CASES:
        for i, arg in enumerate(argv[:-2]):
            value = argv[i + 2].lower()
            if arg == "-p" and (";" in value or "'" in value or " or " in value or "drop " in value):
                tried.add((argv[1], argv[i + 1]))
    missing = []
    for name in procedures.available():
        for field, info in procedures.get(name).Params.model_fields.items():
            if field in FREE_TEXT or not _takes_text(info.annotation):
                continue
            if field in COMMON:
                ok = any(f == field for _, f in tried)
            else:
                ok = (name, field) in tried
            if not ok:
                missing.append(f"{name}.{field}")
    assert missing == [], f"no SQL case for: {missing}"


def _record_review(root: Path, procedure: str, plan_id: str) -> None:
    """An archived review of ``plan_id`` in the incident ``adhoc``, by someone else than the operator."""
    from runbook_lib import evidence

    d = evidence.new_run_dir(root, "adhoc", procedure, "review")
    evidence.finalize_run(d, {"procedure": procedure, "mode": "review", "status": "succeeded", "plan_id": plan_id,
                              "operator": "reviewer-ann", "reviewer": "reviewer-ann"})


@pytest.mark.parametrize(("case", "argv", "env", "code", "text"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused(case, argv, env, code, text, incident_db, fresh_db, pg_server, monkeypatch, capfd,
                              tmp_path, figures):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", incident_db)
    special = env.get("@")
    if special == "readonly":
        admin = pg_server.admin()
        with admin.connect() as c:
            c.exec_driver_sql(f'ALTER DATABASE "{sa.engine.make_url(incident_db).database}" '
                              "SET default_transaction_read_only = on")
        admin.dispose()
    elif special == "badpassword":
        if pg_server.embedded is None:
            pytest.skip("needs the embedded server to create a password role")
        from conftest import PASSWORD

        from runbook_lib import embedded

        embedded.ensure_password_role(pg_server.embedded, "rb_pw_user", PASSWORD)
        bad = sa.engine.make_url(incident_db).set(username="rb_pw_user", password="Wr0ng-" + PASSWORD[::-1])
        monkeypatch.setenv("DATABASE_URL", bad.render_as_string(hide_password=False))
    for k, v in env.items():
        if k == "@":
            continue
        if v is None:
            monkeypatch.delenv(k, raising=False)
        elif v == "@nodb":
            monkeypatch.setenv(k, pg_server.url("rb_no_such_database"))
        elif v == "@empty":
            monkeypatch.setenv(k, fresh_db)
        else:
            monkeypatch.setenv(k, v)
    if REVIEWED in argv:
        _record_review(tmp_path / "incidents", argv[1], REVIEWED)
    before = db_state(incident_db)
    figures["bad_inputs"] += 1
    status = main([*argv, "--no-progress"] if argv[0] == "run" else argv)
    err = capfd.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == code, (status, err)
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], err
    assert "Traceback" not in err
    assert db_state(incident_db) == before
    if special == "badpassword":
        assert "Wr0ng-" not in err
    figures["refused"] += 1


def test_read_only_database_refuses_execute(incident_db, pg_server, monkeypatch, capfd, tmp_path, figures):
    """A read-only target (a standby, or default_transaction_read_only): execute fails, nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", incident_db)
    assert main(["run", *TR[1:], *W, "--no-progress"]) == 0
    out = capfd.readouterr().out
    plan_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("plan id:"))
    name = sa.engine.make_url(incident_db).database
    admin = pg_server.admin()
    with admin.connect() as c:
        c.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    admin.dispose()
    before = db_state(incident_db)
    figures["bad_inputs"] += 1
    status = main(["run", *TR[1:], *W, "--no-progress", "--execute", "--approve", plan_id])
    err = capfd.readouterr().err.strip()
    assert status == 3 and "read-only" in err and len(err.splitlines()) == 1, err
    assert db_state(incident_db) == before
    figures["refused"] += 1
    run_dirs = sorted(p for p in (tmp_path / "incidents" / "adhoc").iterdir() if p.is_dir())
    assert json.loads((run_dirs[-1] / "manifest.json").read_text())["status"] == "failed"


def test_huge_list_is_refused(incident_db, monkeypatch, capfd, tmp_path, figures):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", incident_db)
    big = tmp_path / "big.yaml"
    big.write_text(json.dumps({"user_ids": [f"u{i}" for i in range(100_001)]}))
    figures["bad_inputs"] += 1
    status = main(["run", *TR[1:], *W, "-f", str(big), "--no-progress"])
    err = capfd.readouterr().err.strip()
    assert status == 2 and "too many" in err and len(err.splitlines()) == 1
    figures["refused"] += 1
