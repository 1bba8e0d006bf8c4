"""Incident evidence: hashes, the manifest chain, tamper detection, failed runs, index, HTML copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from runbook_lib import evidence, run_state
from runbook_lib.cli import main
from runbook_lib.errors import EvidenceError
from runbook_lib.runner import run_procedure

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "notebooks"
WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
pytestmark = pytest.mark.notebook


@pytest.fixture
def quick_notebook(tmp_path, monkeypatch):
    """Serve the small 'succeeds' fixture notebook as token_reversal.ipynb (fast runs for chain tests)."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    shutil.copy(FIXTURES / "succeeds.ipynb", nbdir / "token_reversal.ipynb")
    monkeypatch.setenv("RUNBOOK_NOTEBOOKS", str(nbdir))
    return nbdir


@pytest.fixture
def incident_with_three_runs(incident_db, target_env, tmp_path, quick_notebook):
    target_env(incident_db)
    root = tmp_path / "ev"
    for _ in range(3):
        out = run_procedure("token-reversal", WINDOW, incident="INC-7", evidence_root=root, progress_bar=False)
        assert out.exit_code == 0, out.error
    return root / "INC-7"


def test_runs_are_numbered_hashed_and_chained(incident_with_three_runs):
    inc = incident_with_three_runs
    dirs = evidence.run_dirs(inc)
    assert [d.name[:3] for d in dirs] == ["001", "002", "003"]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    assert [m["chain_index"] for m in manifests] == [1, 2, 3]
    assert manifests[0]["previous_manifest_sha256"] is None
    for prev_dir, m in zip(dirs, manifests[1:], strict=False):
        assert m["previous_manifest_sha256"] == evidence.sha256_file(prev_dir / "manifest.json")
    m = manifests[0]
    for key in ("procedure", "mode", "status", "plan_id", "parameters", "operator", "code_version", "packages",
                "database", "started_at", "finished_at", "files", "notebook_sha256"):
        assert key in m, key
    assert m["database"]["fingerprint"] and m["database"]["server_version"]
    assert m["packages"]["papermill"] and m["packages"]["python"]
    assert m["code_version"].get("git_commit") or m["code_version"].get("package")
    assert set(m["files"]) >= {"token_reversal.ipynb", "run-state.json"}
    assert evidence.verify_incident(inc) == []


def test_edit_one_byte_is_detected(incident_with_three_runs, capsys):
    inc = incident_with_three_runs
    target = evidence.run_dirs(inc)[1] / "token_reversal.ipynb"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    problems = evidence.verify_incident(inc)
    assert len(problems) == 1 and "002_" in problems[0] and "token_reversal.ipynb changed" in problems[0]
    assert main(["evidence", "verify", str(inc)]) == 11
    assert "token_reversal.ipynb changed" in capsys.readouterr().out


def test_deleted_run_is_detected(incident_with_three_runs):
    inc = incident_with_three_runs
    middle = evidence.run_dirs(inc)[1]
    shutil.rmtree(middle)
    problems = "\n".join(evidence.verify_incident(inc))
    assert "number 2 of the chain are missing" in problems
    assert f"{middle.name}: listed in INDEX.md but its folder is missing" in problems


def test_deleted_last_run_is_detected_through_the_index(incident_with_three_runs):
    inc = incident_with_three_runs
    last = evidence.run_dirs(inc)[-1]
    shutil.rmtree(last)
    assert any(last.name in p and "missing" in p for p in evidence.verify_incident(inc))


def test_reordered_manifests_are_detected(incident_with_three_runs):
    inc = incident_with_three_runs
    first, _, third = evidence.run_dirs(inc)
    a, b = (first / "manifest.json").read_bytes(), (third / "manifest.json").read_bytes()
    (first / "manifest.json").write_bytes(b)
    (third / "manifest.json").write_bytes(a)
    problems = "\n".join(evidence.verify_incident(inc))
    assert f"{first.name}: its manifest belongs to run '{third.name}'" in problems
    assert f"{third.name}: its manifest belongs to run '{first.name}'" in problems


def test_edited_manifest_breaks_the_chain(incident_with_three_runs):
    inc = incident_with_three_runs
    first = evidence.run_dirs(inc)[0]
    m = json.loads((first / "manifest.json").read_text())
    m["status"] = "failed"
    (first / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))
    problems = evidence.verify_incident(inc)
    assert any("002_" in p and "previous_manifest_sha256" in p for p in problems)
    assert any(first.name in p and "manifest.json was edited" in p for p in problems)  # names the edited one


def test_edited_last_manifest_is_detected(incident_with_three_runs):
    """The newest manifest has no successor to chain it: its own digest must still catch an edit."""
    inc = incident_with_three_runs
    last = evidence.run_dirs(inc)[-1]
    m = json.loads((last / "manifest.json").read_text())
    m["operator"] = "someone-else"
    (last / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))
    problems = evidence.verify_incident(inc)
    assert problems == [f"{last.name}: manifest.json was edited after the run was archived "
                        "(its manifest_sha256 does not match its content)"]


def test_added_file_is_detected(incident_with_three_runs):
    inc = incident_with_three_runs
    (evidence.run_dirs(inc)[0] / "note.txt").write_text("added later")
    assert any("note.txt was added" in p for p in evidence.verify_incident(inc))


def test_index_lists_every_run_and_show_summarizes(incident_with_three_runs, capsys):
    inc = incident_with_three_runs
    md = (inc / "INDEX.md").read_text()
    page = (inc / "index.html").read_text()
    for d in evidence.run_dirs(inc):
        assert d.name in md and d.name in page
    assert md.count("| succeeded |") == 3
    assert main(["evidence", "show", str(inc)]) == 0
    out = capsys.readouterr().out
    assert "3 runs" in out and "integrity: intact" in out and "chain head sha256" in out


def test_interrupted_run_is_archived_as_failed_by_the_next_run(incident_db, target_env, tmp_path, quick_notebook):
    target_env(incident_db)
    root = tmp_path / "ev"
    run_procedure("token-reversal", WINDOW, incident="K", evidence_root=root, progress_bar=False)
    dead = evidence.new_run_dir(root, "K", "token-reversal", "execute")  # a CLI killed mid-run leaves this
    (dead / "run-state.json").write_text(json.dumps({"procedure": "token-reversal", "mode": "execute",
                                                     "status": "running", "steps": {"execute": {}}}))
    run_procedure("token-reversal", WINDOW, incident="K", evidence_root=root, progress_bar=False)
    m = json.loads((dead / "manifest.json").read_text())
    assert m["status"] == "failed" and "interrupted" in m["error"]["message"]
    assert evidence.verify_incident(root / "K") == []


def test_evidence_is_never_overwritten(tmp_path):
    d = evidence.new_run_dir(tmp_path, "X", "verify", "review")
    evidence.finalize_run(d, {"procedure": "verify", "mode": "review", "status": "succeeded"})
    with pytest.raises(Exception, match="never overwritten"):
        evidence.finalize_run(d, {"procedure": "verify", "mode": "review", "status": "succeeded"})
    frame = iter([pd.DataFrame({"a": [1]})])
    evidence.write_frame(d, "rows", frame)
    with pytest.raises(Exception, match="never overwritten"):
        evidence.write_frame(d, "rows", iter([pd.DataFrame({"a": [2]})]))


def test_bad_incident_id_is_refused(tmp_path):
    with pytest.raises(Exception, match="incident id"):
        evidence.new_run_dir(tmp_path, "../escape", "verify", "review")


def _ledger(url: str) -> pd.DataFrame:
    """Ledger and balances, wherever the schema maps them (reflection, as the runbooks find them)."""
    from runbook_lib.names import reflect

    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        n = reflect(c)
        L, B = "TokenTransaction", "UserTokenBalance"
        df = pd.read_sql(f"select * from {n.t(L)} order by {n.c(L, 'id')}", c)
        bal = pd.read_sql(f"select * from {n.t(B)} order by {n.c(B, 'id')}", c)
    eng.dispose()
    return pd.concat([df.astype(str), bal.astype(str)], axis=1)


def test_failed_execute_is_archived_with_a_checked_rollback(incident_db, target_env, tmp_path, monkeypatch):
    target_env(incident_db)
    root = tmp_path / "ev"
    review = run_procedure("token-reversal", WINDOW, incident="F", evidence_root=root, progress_bar=False)
    assert review.exit_code == 0 and review.plan_id
    before = _ledger(incident_db)
    monkeypatch.setenv("RUNBOOK_FAULT", "after_apply:raise")
    failed = run_procedure("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": review.plan_id},
                           incident="F", evidence_root=root, progress_bar=False)
    assert failed.exit_code != 0 and failed.status == "failed"
    m = failed.manifest
    assert m["status"] == "failed" and "injected fault" in m["error"]["message"]
    assert m["rolled_back"]["checked"] is True and m["rolled_back"]["rolled_back"] is True
    assert "is aborted (txid_status)" in m["rolled_back"]["how"]
    assert (failed.run_dir / "token_reversal.ipynb").is_file() and (failed.run_dir / "token_reversal.html").is_file()
    pd.testing.assert_frame_equal(before, _ledger(incident_db))
    assert evidence.verify_incident(root / "F") == []


def test_html_copy_has_the_summary_and_review_files(incident_db, target_env, tmp_path):
    target_env(incident_db)
    out = run_procedure("token-reversal", WINDOW, incident="H", evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 0, out.error
    page = (out.run_dir / "token_reversal.html").read_text()
    assert "Summary — token-reversal" in page and "ledger rows to reverse" in page
    assert "itables" in page.lower() or "datatable" in page.lower()  # sortable, searchable tables
    for name in ("balances", "histogram", "by_day"):  # the before/after figures as files too
        assert (out.run_dir / f"{name}.csv").is_file(), name
    affected = pd.read_parquet(out.run_dir / "affected_rows.parquet")
    assert len(affected) == out.summary["ledger rows to reverse"]
    assert out.manifest["exports"]["affected_rows"]["rows"] == len(affected)
    # the kernel's own peak memory (VmHWM), recorded by the kernel: not the CLI's process
    assert out.manifest["peak_memory_mb"] > 50 and run_state.read(out.run_dir)["peak_memory_mb"] > 50


def test_a_live_run_of_another_process_is_not_archived_as_interrupted(tmp_path):
    """Two operators in one incident: the second run must not take the first (still running) for dead."""
    import subprocess
    import sys
    import time

    marker = tmp_path / "live"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from runbook_lib import evidence; "
        f"d = evidence.new_run_dir(Path({str(tmp_path)!r}), 'L', 'token-reversal', 'execute', hold=True); "
        f"Path({str(marker)!r}).write_text(str(d)); time.sleep(60)")])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        live = Path(marker.read_text())
        assert evidence.is_live(live)
        other = evidence.new_run_dir(tmp_path, "L", "token-reversal", "review")
        assert not (live / "manifest.json").exists()  # left alone: it archives itself when done
        assert other.name.startswith("002_")
        assert any("still running" in p for p in evidence.verify_incident(tmp_path / "L"))
    finally:
        child.kill()
        child.wait()
    assert not evidence.is_live(live)  # the process died: now it is an interrupted run
    evidence.new_run_dir(tmp_path, "L", "token-reversal", "review")
    m = json.loads((live / "manifest.json").read_text())
    assert m["status"] == "failed" and "interrupted" in m["error"]["message"]


def test_rollback_check_trusts_the_server_over_a_plan_moved_by_other_sessions(incident_db, target_env):
    """Application writes after a failed execute change the recomputed plan; the transaction's own status
    (txid_status) still says it was rolled back. A committed transaction is never reported as rolled back."""
    from runbook_lib.run import Run

    target_env(incident_db)
    run = Run("token-reversal", WINDOW)
    plan_id = run.review().plan_id
    eng = sa.create_engine(incident_db, poolclass=sa.pool.NullPool)
    xids = {}
    for outcome in ("aborted", "committed"):
        with eng.connect() as c:
            xids[outcome] = int(c.exec_driver_sql("select txid_current()").scalar_one())
            c.commit() if outcome == "committed" else c.rollback()
    eng.dispose()
    moved = run._check_rolled_back("0" * 24, xids["aborted"])  # the plan differs now: other sessions wrote
    assert moved["checked"] is True and moved["rolled_back"] is True and "it differs" in moved["how"]
    assert run._check_rolled_back(plan_id, xids["committed"])["rolled_back"] is False
    assert run._check_rolled_back(plan_id, None)["rolled_back"] is True  # no id: the plan comparison decides


# ------------------------------------------------------------------ `runbook evidence verify` on any path
@pytest.fixture
def one_run(incident_db, target_env, tmp_path, quick_notebook) -> Path:
    target_env(incident_db)
    out = run_procedure("token-reversal", WINDOW, incident="V", evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 0, out.error
    return out.run_dir


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "intact" not in captured.out + captured.err.replace("NOT intact", "")
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: EvidenceError: "), captured.err
    return lines[0]


def test_verify_one_run_folder_intact(one_run, capsys):
    assert main(["evidence", "verify", str(one_run)]) == 0
    out = capsys.readouterr().out.strip()
    files = len(json.loads((one_run / "manifest.json").read_text())["files"])
    people, out = out.rsplit("\n", 1)  # who ran it (tests/test_approvals.py), then the verdict
    assert people.startswith("runs (who reviewed, approved, ran and signed):\n  " + one_run.name)
    assert out == (f"run {one_run.name} intact: {files} files match its manifest; first of the chain checks out; "
                   f"the chain is checked when you verify the incident folder {one_run.parent}")


def test_verify_one_run_folder_with_a_tampered_csv(one_run, capsys):
    csvs = sorted(one_run.glob("*.csv"))
    assert csvs, "the run wrote no CSV figures"
    with csvs[0].open("a") as f:
        f.write("1,2,3\n")
    assert main(["evidence", "verify", str(one_run)]) == 11
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{one_run.name}: file {csvs[0].name} changed (sha256 ")
    assert "evidence NOT intact: 1 problem" in captured.err and " intact:" not in captured.out


def test_verify_one_run_folder_with_an_added_file(one_run, capsys):
    (one_run / "notes.csv").write_text("a\n1\n")
    assert main(["evidence", "verify", str(one_run)]) == 11
    assert f"{one_run.name}: file notes.csv was added after the run was archived" in capsys.readouterr().out


def test_verify_one_run_folder_with_an_edited_manifest(one_run, capsys):
    mf = one_run / "manifest.json"
    m = json.loads(mf.read_text())
    m["status"] = "failed"
    mf.write_text(json.dumps(m, indent=2, sort_keys=True))
    assert main(["evidence", "verify", str(one_run)]) == 11
    assert capsys.readouterr().out.strip().splitlines()[0] == (
        f"{one_run.name}: manifest.json was edited after the run was archived (its manifest_sha256 does not match "
        "its content)")


def test_verify_one_run_checks_its_links_in_the_chain(incident_with_three_runs, capsys):
    """A run folder alone: its successor's link catches a manifest edited with its own digest recomputed."""
    first, middle, last = evidence.run_dirs(incident_with_three_runs)
    assert main(["evidence", "verify", str(middle)]) == 0
    assert f"link to {first.name} and link from {last.name} check out" in capsys.readouterr().out
    m = json.loads((middle / "manifest.json").read_text())
    m["operator"] = "someone-else"
    m[evidence.SELF_DIGEST] = evidence.manifest_digest(m)
    (middle / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))
    assert main(["evidence", "verify", str(middle)]) == 11
    assert f"its manifest is not the one the next run {last.name} recorded" in capsys.readouterr().out
    shutil.rmtree(first)
    assert main(["evidence", "verify", str(middle)]) == 11
    assert "the run before it in the chain (number 1" in capsys.readouterr().out


@pytest.mark.parametrize("case, expected", [
    ("empty", "is an empty folder: no evidence to verify"),
    ("no-manifest", "no manifest.json: not an archived run folder"),
    ("missing", "no such file or folder"),
    ("file", "is a file, not an evidence folder"),
    ("other-folder", "no manifest.json and no run folders: neither a run folder nor an incident folder"),
    ("incident-without-runs", "no run folders (NNN_<time>_<procedure>_<mode>/) in it: not an incident folder"),
])
def test_verify_refuses_what_is_not_evidence(tmp_path, capsys, case, expected):
    path = tmp_path / "INC-1"
    if case == "empty":
        path.mkdir()
    elif case == "no-manifest":
        path = tmp_path / "INC-1" / "001_20251204T101500Z_token-reversal_review"
        path.mkdir(parents=True)
        (path / "balances.csv").write_text("a\n1\n")
    elif case == "file":
        path.write_text("not a folder")
    elif case == "other-folder":
        path.mkdir()
        (path / "notes").mkdir()
    elif case == "incident-without-runs":
        path.mkdir()
        evidence.write_index(path)  # an INDEX.md listing no run
        (path / "notes").mkdir()
    assert main(["evidence", "verify", str(path)]) == 11
    line = _one_error_line(capsys)
    assert str(path) in line and expected in line, line
    if case == "incident-without-runs":
        with pytest.raises(EvidenceError, match="no run folders"):
            evidence.verify_incident(path)


def test_verify_an_incident_whose_runs_were_all_deleted(incident_with_three_runs, capsys):
    for d in evidence.run_dirs(incident_with_three_runs):
        shutil.rmtree(d)
    assert main(["evidence", "verify", str(incident_with_three_runs)]) == 11
    assert capsys.readouterr().out.count("listed in INDEX.md but its folder is missing") == 3
