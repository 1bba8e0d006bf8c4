"""Approvals that name people: review_run, reviewer/approver, four eyes, SSH-signed approvals and manifests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_frame

from runbook_lib import approvals, evidence
from runbook_lib.cli import main
from runbook_lib.errors import ToolMissingError
from runbook_lib.runner import run_procedure

ROOT = Path(__file__).resolve().parent.parent
WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
pytestmark = pytest.mark.notebook


def _ledger(url: str) -> pd.DataFrame:
    return read_frame(url, "select * from token_transactions order by id")


@pytest.fixture
def quick_notebook(tmp_path, monkeypatch):
    """The small 'succeeds' fixture notebook as token_reversal.ipynb: a real review (real plan id), no change
    and no verification (which would fail after an "execute" that changed nothing): fast approval tests."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nb = json.loads((ROOT / "tests" / "notebooks" / "succeeds.ipynb").read_text())
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"]).replace("run.verify()\n", "")
    (nbdir / "token_reversal.ipynb").write_text(json.dumps(nb))
    monkeypatch.setenv("RUNBOOK_NOTEBOOKS", str(nbdir))
    return nbdir


def _keys(tmp_path: Path, *names: str) -> dict[str, Path]:
    """Throwaway ed25519 keys (no passphrase) and one allowed_signers file naming all of them."""
    keys = {}
    lines = []
    for name in names:
        key = tmp_path / "keys" / name
        key.parent.mkdir(exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
        keys[name] = key
        lines.append(f"{name} {key.with_name(name + '.pub').read_text().strip()}")
    (tmp_path / "keys" / "allowed_signers").write_text("\n".join(lines) + "\n")
    return keys


def _rewrite_manifest(run_dir: Path, **changes: object) -> None:
    """What someone holding the folder can do without a key: edit a manifest and make its digest match again."""
    path = run_dir / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    m[evidence.SELF_DIGEST] = evidence.manifest_digest(m)
    path.write_text(json.dumps(m, indent=2, sort_keys=True))


def test_review_then_execute_names_the_people_and_the_review(incident_db, target_env, tmp_path, capsys):
    target_env(incident_db)
    root = tmp_path / "ev"
    review = run_procedure("token-reversal", WINDOW, incident="A", evidence_root=root, progress_bar=False,
                           operator="alice")
    assert review.exit_code == 0, review.error
    assert review.manifest["reviewer"] == "alice" and review.manifest["signer"] is None
    execute = {**WINDOW, "mode": "execute", "approved_plan": review.plan_id}
    before = _ledger(incident_db)

    # four eyes asked for: alice may not approve her own review (exit 6, archived as aborted, nothing changed)
    same = run_procedure("token-reversal", execute, incident="A", evidence_root=root, progress_bar=False,
                         operator="alice", four_eyes=True)
    assert same.exit_code == 6 and same.status == "aborted"
    assert "four eyes" in str(same.error) and "'alice'" in str(same.error)
    assert not (same.run_dir / "token_reversal.ipynb").exists()  # papermill never started
    pd.testing.assert_frame_equal(before, _ledger(incident_db))

    done = run_procedure("token-reversal", execute, incident="A", evidence_root=root, progress_bar=False,
                         operator="carol", approver="bob", four_eyes=True)
    assert done.exit_code == 0, done.error
    m = done.manifest
    assert (m["reviewer"], m["approver"], m["operator"]) == ("alice", "bob", "carol")
    assert m["review_run"] == review.run_dir.name and m["four_eyes"] is True and m["committed"] is True
    approval = json.loads((done.run_dir / "approval.json").read_text())
    assert approval["plan_id"] == review.plan_id and approval["review_run"] == review.run_dir.name
    assert approval["review_manifest_sha256"] == evidence.sha256_file(review.run_dir / "manifest.json")
    assert "approval.json" in m["files"]
    assert len(_ledger(incident_db)) > len(before)
    assert evidence.verify_incident(root / "A") == []

    # one command tells who reviewed, approved and executed each change
    assert main(["evidence", "verify", str(root / "A")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("  " + done.run_dir.name))
    assert "reviewer alice; approver bob" in line and "operator carol" in line and review.run_dir.name in line

    # an approval that no longer matches the review it names is found
    rec = json.loads((done.run_dir / "approval.json").read_text())
    _rewrite_manifest(done.run_dir, approver="mallory")
    problems = evidence.verify_incident(root / "A")
    assert any("approval.json says approver 'bob'" in p for p in problems), problems
    assert rec["approver"] == "bob"


def test_a_plan_id_no_review_produced_is_refused(incident_db, target_env, tmp_path, quick_notebook):
    target_env(incident_db)
    root = tmp_path / "ev"
    before = _ledger(incident_db)
    other = run_procedure("token-reversal", WINDOW, incident="OTHER", evidence_root=root, progress_bar=False)
    assert other.exit_code == 0 and other.plan_id
    for plan in ("0" * 24, other.plan_id):  # never reviewed, or reviewed in another incident
        out = run_procedure("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan}, incident="B",
                            evidence_root=root, progress_bar=False)
        assert out.exit_code == 6 and out.status == "aborted"
        assert f"plan {plan} was not produced by any review in incident B" in str(out.error)
        assert "--incident B" in str(out.error)
        assert out.manifest["error"]["step"] == "approval" and out.manifest["committed"] is False
    pd.testing.assert_frame_equal(before, _ledger(incident_db))
    assert evidence.verify_incident(root / "B") == []


def test_a_tampered_review_is_refused(incident_db, target_env, tmp_path, quick_notebook):
    target_env(incident_db)
    root = tmp_path / "ev"
    review = run_procedure("token-reversal", WINDOW, incident="T", evidence_root=root, progress_bar=False)
    (review.run_dir / "run-state.json").write_text("{}")
    out = run_procedure("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": review.plan_id},
                        incident="T", evidence_root=root, progress_bar=False, approver="bob")
    assert out.exit_code == 6 and "was altered after it was archived" in str(out.error)


def test_four_eyes_by_setting_and_on_production(incident_db, target_env, tmp_path, quick_notebook, monkeypatch,
                                               capsys):
    target_env(incident_db)
    root = tmp_path / "ev"
    review = run_procedure("token-reversal", WINDOW, incident="F", evidence_root=root, progress_bar=False,
                           operator="alice")
    execute = {**WINDOW, "mode": "execute", "approved_plan": review.plan_id}
    # without four eyes the same person may approve; it is recorded
    alone = run_procedure("token-reversal", execute, incident="F", evidence_root=root, progress_bar=False,
                          operator="alice")
    assert alone.exit_code == 0 and alone.manifest["reviewer"] == alone.manifest["approver"] == "alice"
    assert alone.manifest["four_eyes"] is False
    monkeypatch.setenv("RUNBOOK_FOUR_EYES", "1")
    env = run_procedure("token-reversal", execute, incident="F", evidence_root=root, progress_bar=False,
                        operator="ALICE")  # the same person, whatever the case
    assert env.exit_code == 6 and "RUNBOOK_FOUR_EYES=1" in str(env.error)
    monkeypatch.delenv("RUNBOOK_FOUR_EYES")
    monkeypatch.setenv("RUNBOOK_TARGET_PRODUCTION", "1")
    prod = run_procedure("token-reversal", execute, incident="F", evidence_root=root, progress_bar=False,
                         operator="alice")
    assert prod.exit_code == 6 and "marked production" in str(prod.error) and "'alice'" in str(prod.error)
    # the CLI: exit 6, one line naming both
    status = main(["run", "token-reversal", "-p", "since", WINDOW["since"], "-p", "until", WINDOW["until"],
                   "--incident", "F", "--evidence-dir", str(root), "--no-progress", "--execute", "--approve",
                   str(review.plan_id), "--operator", "bob", "--approver", "alice"])
    err = capsys.readouterr().err.strip()
    assert status == 6 and len(err.splitlines()) == 1 and "approver 'alice' is also the reviewer 'alice'" in err
    assert evidence.verify_incident(root / "F") == []


def test_signed_approvals_and_manifests_verify_against_allowed_signers(incident_db, target_env, tmp_path,
                                                                      quick_notebook, capsys):
    target_env(incident_db)
    keys = _keys(tmp_path, "alice@example.com", "bob@example.com")
    allowed = tmp_path / "keys" / "allowed_signers"
    root = tmp_path / "ev"
    review = run_procedure("token-reversal", WINDOW, incident="S", evidence_root=root, progress_bar=False,
                           operator="alice", sign_key=keys["alice@example.com"], signer="alice@example.com")
    assert review.exit_code == 0, review.error
    assert (review.run_dir / "manifest.json.sig").is_file() and review.manifest["signer"] == "alice@example.com"
    execute = {**WINDOW, "mode": "execute", "approved_plan": review.plan_id}
    # four eyes also compares the keys: bob's name with alice's key is refused
    borrowed = run_procedure("token-reversal", execute, incident="S", evidence_root=root, progress_bar=False,
                             operator="bob", four_eyes=True, sign_key=keys["alice@example.com"],
                             signer="alice@example.com")
    assert borrowed.exit_code == 6 and "also signed the review" in str(borrowed.error)
    done = run_procedure("token-reversal", execute, incident="S", evidence_root=root, progress_bar=False,
                         operator="bob", four_eyes=True, sign_key=keys["bob@example.com"], signer="bob@example.com")
    assert done.exit_code == 0, done.error
    assert (done.run_dir / "approval.json.sig").is_file() and (done.run_dir / "manifest.json.sig").is_file()
    assert "approval.json.sig" in done.manifest["files"]  # written before the manifest, so listed in it

    assert main(["evidence", "verify", str(root / "S"), "--allowed-signers", str(allowed)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("  " + done.run_dir.name))
    assert "approver bob" in line and "reviewer alice" in line
    assert "manifest.json: bob@example.com (good signature)" in line and "approval.json: bob@example.com" in line
    assert "every signature checks out" in out
    # a run folder alone, too
    assert main(["evidence", "verify", str(done.run_dir), "--allowed-signers", str(allowed)]) == 0
    capsys.readouterr()

    # an allowed_signers file that does not trust bob: his runs fail, named
    only_alice = tmp_path / "keys" / "only_alice"
    only_alice.write_text(allowed.read_text().splitlines()[0] + "\n")
    assert main(["evidence", "verify", str(root / "S"), "--allowed-signers", str(only_alice)]) == 11
    out = capsys.readouterr().out
    assert f"{done.run_dir.name}: manifest.json.sig is not a valid signature" in out
    assert f"{borrowed.run_dir.name}" not in [p.split(":")[0] for p in out.splitlines() if "not a valid" in p]

    # the newest manifest rewritten consistently (digest recomputed): the hashes and the chain cannot tell,
    # the signature does
    _rewrite_manifest(done.run_dir, approver="carol", reviewer="carol")
    approval = json.loads((done.run_dir / "approval.json").read_text())
    approval.update(approver="carol", reviewer="carol")
    (done.run_dir / "approval.json").write_text(json.dumps(approval))
    files = json.loads((done.run_dir / "manifest.json").read_text())["files"]
    _rewrite_manifest(done.run_dir, files={**files, "approval.json": evidence.sha256_file(
        done.run_dir / "approval.json")})
    problems = evidence.verify_incident(root / "S")
    assert all("review" in p for p in problems), problems  # only the cross-check with the review run's operator
    problems = evidence.verify_incident(root / "S", allowed)
    assert any(p.startswith(f"{done.run_dir.name}: manifest.json.sig is not a valid signature") for p in problems)
    assert any(p.startswith(f"{done.run_dir.name}: approval.json.sig is not a valid signature") for p in problems)

    # an unsigned run in another incident: named when signatures are required, fine without
    unsigned = run_procedure("token-reversal", WINDOW, incident="U", evidence_root=root, progress_bar=False)
    assert evidence.verify_incident(root / "U") == []
    assert evidence.verify_incident(root / "U", allowed) == [
        f"{unsigned.run_dir.name}: manifest.json is not signed (no manifest.json.sig; the run was made without "
        "--sign-key)"]
    # a deleted signature
    (review.run_dir / "manifest.json.sig").unlink()
    problems = evidence.verify_incident(root / "S", allowed)
    assert any("names signer 'alice@example.com' but manifest.json.sig is missing" in p for p in problems)
    assert evidence.verify_incident(root / "S") != []  # also without allowed_signers: the signer is recorded


def test_signing_needs_ssh_keygen_and_a_key(incident_db, target_env, tmp_path, monkeypatch):
    target_env(incident_db)
    key = tmp_path / "k"
    key.write_text("not a key\n")
    with pytest.raises(Exception, match="cannot sign probe"):
        run_procedure("token-reversal", WINDOW, incident="K", evidence_root=tmp_path / "ev", sign_key=key)
    assert not (tmp_path / "ev").exists()  # refused before anything was written
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissingError, match="ssh-keygen is missing") as err:
        run_procedure("token-reversal", WINDOW, incident="K", evidence_root=tmp_path / "ev", sign_key=key)
    assert err.value.exit_code == 12
    with pytest.raises(ToolMissingError):
        approvals.verify_signature(key, "x", key, key)
