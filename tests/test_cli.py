"""The `runbook` command end to end: papermill, evidence, exit statuses, one-line errors, no secrets."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
WINDOW = ["-p", "since", "2025-12-01T00:00:00Z", "-p", "until", "2025-12-03T00:00:00Z"]
pytestmark = pytest.mark.notebook


def runbook(args: list[str], url: str | None, tmp_path: Path, extra_env: dict[str, str] | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    if url:
        env["DATABASE_URL"] = url
    env.update(extra_env or {})
    exe = Path(sys.executable).parent / "runbook"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def ledger(url: str) -> pd.DataFrame:
    """The whole token ledger, wherever the schema maps it (found by reflection, like the runbooks do)."""
    from runbook_lib.names import reflect

    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        nm = reflect(c)
        df = pd.read_sql(f"select * from {nm.t('TokenTransaction')} order by {nm.c('TokenTransaction', 'id')}", c)
    eng.dispose()
    return df


def run_dirs(tmp_path: Path, incident: str) -> list[Path]:
    return sorted(p for p in (tmp_path / "incidents" / incident).iterdir() if p.is_dir())


def test_review_then_execute_then_noop(incident_db, tmp_path):
    r = runbook(["run", "token-reversal", *WINDOW, "--incident", "INC-1", "--no-progress"], incident_db, tmp_path)
    assert r.returncode == 0, r.stderr
    plan_id = next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("plan id:"))
    lines = r.stdout.splitlines()
    # the summary with the procedure's labels, its warnings (users below zero), the execute command ready to paste
    assert "summary:" in lines and any(line.startswith("  ledger rows to reverse ") for line in lines)
    assert any(line.startswith("warnings (") for line in lines) and "already spent granted tokens" in r.stdout
    pasted = lines[lines.index("to execute this plan:") + 1].strip()
    assert pasted == shlex.join(["runbook", "run", "token-reversal", *WINDOW, "--incident", "INC-1", "--execute",
                                 "--approve", plan_id])
    review_dir = run_dirs(tmp_path, "INC-1")[0]
    manifest = json.loads((review_dir / "manifest.json").read_text())
    assert manifest["procedure"] == "token-reversal" and manifest["mode"] == "review"
    assert manifest["status"] == "succeeded" and manifest["plan_id"] == plan_id
    assert manifest["database"]["server_version"] and manifest["database"]["fingerprint"]
    assert (review_dir / "token_reversal.ipynb").is_file()
    assert (review_dir / "affected_rows.parquet").is_file()
    before = ledger(incident_db)

    no_approve = runbook(["run", "token-reversal", *WINDOW, "--incident", "INC-1", "--execute", "--no-progress"],
                         incident_db, tmp_path)
    assert no_approve.returncode == 6
    assert no_approve.stderr.strip().count("\n") == 0 and "approved_plan" in no_approve.stderr
    pd.testing.assert_frame_equal(before, ledger(incident_db))
    aborted = json.loads((run_dirs(tmp_path, "INC-1")[1] / "manifest.json").read_text())
    assert aborted["status"] == "aborted"

    ex = runbook([*shlex.split(pasted)[1:], "--no-progress", "--operator", "alice"], incident_db, tmp_path)
    assert ex.returncode == 0, ex.stderr
    m = json.loads((run_dirs(tmp_path, "INC-1")[2] / "manifest.json").read_text())
    assert m["status"] == "succeeded" and m["committed"] is True and m["operator"] == "alice"
    assert m["counts"]["rows_reversed"] > 0
    assert isinstance(m["counts"]["tokens_reversed"], int) and m["verification_passed"] is True  # not redacted
    after = ledger(incident_db)
    assert len(after) == len(before) + m["counts"]["rows_reversed"]

    again = runbook(["run", "token-reversal", *WINDOW, "--incident", "INC-1", "--execute", "--approve", plan_id,
                     "--no-progress"], incident_db, tmp_path)
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(after, ledger(incident_db))
    m2 = json.loads((run_dirs(tmp_path, "INC-1")[3] / "manifest.json").read_text())
    assert m2["committed"] is False

    verify = runbook(["evidence", "verify", "incidents/INC-1"], None, tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    (review_dir / "token_reversal.ipynb").write_text("{}")
    tampered = runbook(["evidence", "verify", "incidents/INC-1"], None, tmp_path)
    assert tampered.returncode == 11
    found = re.search(r"(\d+) (problems?)\b", tampered.stderr)
    assert found, tampered.stderr
    n, noun = found.groups()
    assert noun == ("problem" if n == "1" else "problems"), tampered.stderr


def test_review_summary_prints_in_the_procedures_order(incident_db, tmp_path):
    r = runbook(["run", "token-reversal", *WINDOW, "--no-progress", "-p", "negative_policy", "clamp"], incident_db,
                tmp_path)
    assert r.returncode == 0, r.stderr
    labels = [line.strip().rsplit("  ", 1)[0].strip() for line in
              r.stdout.split("summary:\n", 1)[1].split("\nwarnings", 1)[0].splitlines() if line.startswith("  ")]
    assert labels[:4] == ["ledger rows to reverse", "users affected", "tokens to reverse", "users left negative"]
    assert labels.index("clamp shortfall") > labels.index("users skipped")


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["run", "no-such-procedure"], 2, "unknown procedure"),
        (["run", "token-reversal", "-p", "since", "2025-12-01T00:00:00"], 2, "no time zone"),
        (["run", "token-reversal", "-p", "since", "2025-12-03T00:00:00Z", "-p", "until", "2025-12-01T00:00:00Z"],
         2, "must be before"),
        (["run", "token-reversal", *WINDOW, "-p", "reversal_type", "BOGUS"], 2, "reversal_type"),
        (["run", "token-reversal", *WINDOW, "-p", "voucher_codes", "[NOPE]"], 5, "unknown voucher codes"),
        (["run", "token-reversal", *WINDOW, "-p", "sinse", "x"], 2, "unknown parameter"),
    ],
)
def test_bad_input_one_line_nonzero_untouched(incident_db, tmp_path, args, code, text):
    before = ledger(incident_db)
    r = runbook([*args, "--no-progress"], incident_db, tmp_path)
    assert r.returncode == code, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and text in err
    pd.testing.assert_frame_equal(before, ledger(incident_db))


def test_missing_target_is_exit_3(tmp_path):
    r = runbook(["run", "token-reversal", *WINDOW], None, tmp_path)
    assert r.returncode == 3 and "DATABASE_URL is not set" in r.stderr


def test_wrong_password_and_no_secret_anywhere(pg_server, incident_db, tmp_path):
    if pg_server.embedded is None:
        pytest.skip("needs the embedded server to create a password role")
    from runbook_lib import embedded

    embedded.ensure_password_role(pg_server.embedded, "rb_pw_user", PASSWORD)
    good = sa.engine.make_url(incident_db).set(username="rb_pw_user", password=PASSWORD)
    bad = good.set(password="Wr0ng-" + PASSWORD[::-1])
    bad_url = bad.render_as_string(hide_password=False)
    good_url = good.render_as_string(hide_password=False)
    env = {"SERVICE_API_TOKEN": "tok-" + PASSWORD}

    r = runbook(["run", "token-reversal", *WINDOW, "--no-progress"], bad_url, tmp_path, env)
    assert r.returncode == 3 and "authentication failed" in r.stderr
    assert bad.password not in r.stdout + r.stderr

    ok = runbook(["--raiseerr", "run", "token-reversal", *WINDOW, "--no-progress", "--log-output",
                  "--incident", "PW"], good_url, tmp_path, env)
    assert ok.returncode == 0, ok.stderr
    fail = runbook(["--raiseerr", "run", "token-reversal", *WINDOW, "--no-progress", "--log-output", "--incident",
                    "PW", "--execute", "--approve", "0" * 24], good_url, tmp_path, env)
    assert fail.returncode == 6
    for text in (ok.stdout, ok.stderr, fail.stdout, fail.stderr):
        assert PASSWORD not in text
    hits = [p for p in (tmp_path / "incidents").rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert hits == []
