"""How a run ends: a failed verification after an execute is a failed run (exit 13, said on the terminal, in the
notebook's summary and in the manifest); a review's after-execute post-conditions are pending, not failures; the
manifest records only the names the run used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import SCHEMA

from runbook_lib.names import reflect
from runbook_lib.procedures.base import Check, VerifyResult

WINDOW = ["-p", "since", "2025-12-01T00:00:00Z", "-p", "until", "2025-12-03T00:00:00Z"]


def runbook(args: list[str], url: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url:
        env["DATABASE_URL"] = url
    exe = Path(sys.executable).parent / "runbook"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def manifest(tmp_path: Path, incident: str, n: int) -> dict:
    runs = sorted(p for p in (tmp_path / "incidents" / incident).iterdir() if p.is_dir())
    return json.loads((runs[n] / "manifest.json").read_text())


def plant_balance_defect(url: str, tokens: int = 7) -> None:
    """A balance the ledger does not explain (the shared check balance_vs_ledger finds it), on whatever tables the
    schema maps the models to; on a user the window's reversal writes (an execute's checks look at its users)."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        n = reflect(c)
        b, uid, bal = n.t("UserTokenBalance"), n.c("UserTokenBalance", "userId"), n.c("UserTokenBalance", "balance")
        L = "TokenTransaction"
        first = c.execute(sa.text(
            f"select {n.c(L, 'userId')} from {n.t(L)} where {n.c(L, 'source')} = 'voucher_redemption' and "
            f"{n.c(L, 'createdAt')} >= '2025-12-01' and {n.c(L, 'createdAt')} < '2025-12-03' "
            f"and {n.c(L, 'userId')} in (select {uid} from {b}) order by 1 limit 1")).scalar_one()
        c.execute(sa.text(f"update {b} set {bal} = {bal} + :t where {uid} = :u"), {"t": tokens, "u": first})
    eng.dispose()


@pytest.mark.notebook
def test_failed_verification_after_execute_is_a_failed_run(incident_db, tmp_path):
    plant_balance_defect(incident_db)
    schema = ["-p", "prisma_schema", str(SCHEMA)]
    review = runbook(["run", "token-reversal", *WINDOW, *schema, "--incident", "V", "--no-progress"], incident_db,
                     tmp_path)
    assert review.returncode == 0, review.stderr
    plan_id = next(line.split()[-1] for line in review.stdout.splitlines() if line.startswith("plan id:"))

    ex = runbook(["run", "token-reversal", *WINDOW, *schema, "--incident", "V", "--no-progress", "--execute",
                  "--approve", plan_id], incident_db, tmp_path)
    assert ex.returncode == 13, (ex.stdout, ex.stderr)
    err = ex.stderr.strip()
    assert "\n" not in err and err.startswith("error: VerificationFailed: the change was committed; verification "
                                              "failed: ") and "investigate, see the evidence" in err, err
    assert "every balance equals its ledger sum" in err
    assert "status:   failed" in ex.stdout

    m = manifest(tmp_path, "V", 1)
    assert m["status"] == "failed" and m["committed"] is True and m["verification_passed"] is False
    assert m["error"]["type"] == "VerificationFailed" and m["error"]["exit_code"] == 13
    assert m["error"]["step"] == "verify" and "the change was committed" in m["error"]["message"]
    failed = [c["name"] for c in m["verification"] if not c["passed"]]
    assert any(f.startswith("every balance equals its ledger sum") for f in failed) and all(name in err for name in failed)
    assert m["counts"]["rows_reversed"] > 0

    # the notebook's summary box says it too (the display is updated in place as the run goes)
    nb = (tmp_path / "incidents" / "V" / m["run"] / m["notebook"]).read_text()
    assert "CHECKS FAILED: every balance equals its ledger sum" in nb and "the change was committed" in nb
    assert (tmp_path / "incidents" / "V" / m["run"] / "token_reversal.html").is_file()

    # the evidence tools agree
    show = runbook(["evidence", "show", "incidents/V"], None, tmp_path)
    assert show.returncode == 0 and "failed" in show.stdout and "the change was committed" in show.stdout

    # only the names the runs looked up, not the application's whole schema
    for mf in (manifest(tmp_path, "V", 0), m):
        tables = mf["names"]["tables"]
        assert {"TokenTransaction", "UserTokenBalance"} <= set(tables), tables
        assert not {"ApiKey", "VerificationToken", "Account", "Session", "Album"} & set(tables), tables
        assert "***" not in json.dumps(mf["names"])
    assert {"Voucher", "VoucherRedemption", "User"} <= set(m["names"]["tables"])  # the shared checks' models


def test_a_pending_check_is_neither_passed_nor_failed():
    done = Check("no selected ledger row left unreversed", False, 12, "rows left", after_execute=True, pending=True)
    ok = Check("balances equal the plan's after-figures", True)
    result = VerifyResult([done, ok])
    assert result.passed and result.failed == []
    table = result.table()
    assert table["status"].tolist() == ["pending (applies after execute)", "passed"]
    assert table["passed"].tolist()[1] is True and table["passed"].isna().tolist()[0]
    assert done.as_dict()["pending"] is True and "pending" not in ok.as_dict()
    bad = VerifyResult([Check("x", False, 1, after_execute=True), ok])  # not pending: an execute ran
    assert not bad.passed and [c.name for c in bad.failed] == ["x"]


def test_a_review_has_no_failed_after_execute_check(incident_db):
    from runbook_lib.run import Run

    run = Run("token-reversal", {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}, url=incident_db)
    plan = run.review()
    assert not plan.changes_nothing
    result = run.verify()
    assert result.passed, result.table()
    assert any(c.pending for c in result.checks)
    assert run.state["verification_passed"] is True and run.state.get("verification_pending")
    assert "pending (apply after execute)" in run.summary_html()
