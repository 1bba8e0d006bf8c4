"""Crashes at random points of execute: the database is exactly its before- or after-state, never between.

Two kinds of fault, at points chosen at random with a fixed seed (runbook_lib.faults): SIGKILL of the process
running the execute, and pg_terminate_backend of its database session from another session. Trials through the
CLI also kill the notebook's kernel or the CLI itself and check that the evidence says the run failed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from runbook_lib import faults, procedures

from .support import (
    NO_BACKUP,
    PROCEDURES,
    db_state,
    fail_a_migration,
    needs_backup,
    start_worker,
    terminate_runbook_sessions,
    wait_for,
)

SEED = 20261125
LIBRARY_TRIALS = int(os.environ.get("RELIABILITY_TRIALS", "48"))
CLI_TRIALS = int(os.environ.get("RELIABILITY_CLI_TRIALS", "8"))


def _points(procedure: str) -> list[str]:
    return [*faults.POINTS, *procedures.get(procedure).fault_points]


@pytest.fixture(scope="module")
def states(pg_server, tmp_path_factory):
    """The seeded incident in the real application's shape (a template) and, per procedure, the state a clean
    execute leaves."""
    from conftest import MIGRATIONS

    from runbook_lib import seed
    from runbook_lib.prisma.migrate import deploy

    base = f"rb_crash_base_{uuid.uuid4().hex[:8]}"
    url = pg_server.create(base)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        deploy(c, MIGRATIONS)
    seed.seed_incident(eng)
    # restore trials: a backup of the clean incident, and a template whose tables were damaged since
    from runbook_lib import backups, db

    backup_dir = tmp_path_factory.mktemp("crash-backup")
    with eng.connect() as c:
        info = db.server_info(c)
    backups.take_backup(eng, url, "public", ["vouchers", "voucher_redemptions", "token_transactions",
                                             "user_token_balances"], backup_dir, info.fingerprint, info.database)
    eng.dispose()
    damaged = f"rb_crash_damaged_{uuid.uuid4().hex[:8]}"
    damaged_url = pg_server.create(damaged, template=base)
    deng = sa.create_engine(damaged_url, poolclass=sa.pool.NullPool)
    with deng.begin() as c:
        c.exec_driver_sql("update user_token_balances set balance = balance + 7 where \"userId\" <= 'cmu00050'")
        c.exec_driver_sql("delete from voucher_redemptions where \"voucherId\" = 'cmvpartner75'")
    deng.dispose()
    # migration-recovery trials: a migration that failed half-way, resolved as rolled back with compensating SQL
    failed = f"rb_crash_failedmig_{uuid.uuid4().hex[:8]}"
    recovery = fail_a_migration(pg_server.create(failed, template=base), MIGRATIONS,
                                tmp_path_factory.mktemp("crash-migrations") / "migrations")
    specs = {**PROCEDURES, "restore": {"procedure": "restore", "template": damaged,
                                       "params": {"backup": str(backup_dir), "force_other_database": True}},
             "migration-recovery": {"procedure": "migration-recovery", "template": failed, "params": recovery}}
    templates = {k: v.get("template", base) for k, v in specs.items()}
    before = {k: db_state(pg_server.url(t)) for k, t in templates.items()}
    after = {}
    for key, spec in specs.items():
        name = f"rb_crash_after_{uuid.uuid4().hex[:8]}"
        clone = pg_server.create(name, template=templates[key])
        proc = start_worker(clone, spec["procedure"], spec["params"], {})
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "DONE" in out, err[-2000:]
        after[key] = db_state(clone)
        assert after[key] != before[key], key
        pg_server.drop(name)
    yield {"specs": specs, "templates": templates, "before": before, "after": after}
    pg_server.drop(failed)
    pg_server.drop(damaged)
    pg_server.drop(base)


def _classify(state: dict, before: dict, after: dict) -> str:
    return "before" if state == before else "after" if state == after else "PARTIAL"


@pytest.mark.slow
def test_kill_or_terminate_at_random_points(pg_server, states, tmp_path, figures):
    rng = random.Random(SEED)
    partial: list[str] = []
    tally: dict[str, int] = {}
    kinds: set[tuple[str, str]] = set()
    for i in range(LIBRARY_TRIALS):
        key = rng.choice(sorted(states["specs"]))
        spec = states["specs"][key]
        tally[key] = tally.get(key, 0) + 1
        point = rng.choice(_points(spec["procedure"]))
        kind = rng.choice(["sigkill", "terminate"])
        kinds.add((key, kind))
        name = f"rb_crash_{i}_{uuid.uuid4().hex[:6]}"
        url = pg_server.create(name, template=states["templates"][key])
        marker = tmp_path / f"marker-{i}"
        sleep = 60 if kind == "sigkill" else 2
        proc = start_worker(url, spec["procedure"], spec["params"],
                            {"RUNBOOK_FAULT": f"{point}:sleep:{sleep}", "RUNBOOK_FAULT_MARKER": str(marker)})
        try:
            reached = wait_for(marker, proc)
            assert reached is not None, f"trial {i}: {key} ended before {point}: {proc.stderr.read()[-1500:]}"
            if kind == "sigkill":
                os.kill(proc.pid, signal.SIGKILL)
            else:
                terminate_runbook_sessions(pg_server.admin_url, name)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        figures["trials"] += 1
        figures["faults_injected"] += 1
        got = _classify(db_state(url), states["before"][key], states["after"][key])
        expected = "after" if point == "after_commit" else "before"
        if got == "PARTIAL":
            figures["partial_states"] += 1
        if got != expected:
            partial.append(f"trial {i}: {key} {kind} at {point}: {got}, expected {expected}")
        if kind == "terminate" and point != "after_commit":
            assert proc.returncode != 0, f"trial {i}: the runbook did not notice its session was terminated"
            err = proc.stderr.read() if proc.stderr else ""
            assert "SessionInterruptedError" in err, f"trial {i}: {err[-1500:]}"
        pg_server.drop(name)
    print(f"crash trials per procedure: {tally}")
    assert partial == []
    if LIBRARY_TRIALS >= 40:
        assert set(tally) == set(states["specs"]), tally  # every writing procedure was crashed
        assert kinds == {(k, f) for k in states["specs"] for f in ("sigkill", "terminate")}, kinds  # both ways


def _cli(args: list[str], url: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, **(env_extra or {})}
    exe = Path(sys.executable).parent / "runbook"
    return subprocess.Popen([str(exe), *args, "--no-progress"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_the_kernel_or_the_cli_and_the_evidence_says_failed(pg_server, states, tmp_path, figures):
    rng = random.Random(SEED + 1)
    problems: list[str] = []
    tally: dict[str, int] = {}
    for i in range(CLI_TRIALS):
        key = rng.choice(sorted(states["specs"]))
        spec = states["specs"][key]
        point = rng.choice([p for p in _points(spec["procedure"]) if p not in ("before_lock", "after_commit")])
        victim = rng.choice(["kernel", "cli", "session"])
        name = f"rb_crashcli_{i}_{uuid.uuid4().hex[:6]}"
        url = pg_server.create(name, template=states["templates"][key])
        params = [x for k, v in spec["params"].items() for x in ("-p", k, json.dumps(v) if not isinstance(v, str)
                                                                  else v)]
        params += ["-p", "backup_override_reason", NO_BACKUP] if needs_backup(spec["procedure"]) else []
        incident = f"CRASH-{i}"
        review = _cli(["run", spec["procedure"], *params, "--incident", incident], url, tmp_path)
        out, err = review.communicate(timeout=300)
        assert review.returncode == 0, err
        plan_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("plan id:"))
        marker = tmp_path / f"cli-marker-{i}"
        ex = _cli(["run", spec["procedure"], *params, "--incident", incident, "--execute", "--approve", plan_id],
                  url, tmp_path, {"RUNBOOK_FAULT": f"{point}:sleep:60", "RUNBOOK_FAULT_MARKER": str(marker)})
        try:
            reached = wait_for(marker, ex)
            assert reached is not None, ex.stderr.read() if ex.stderr else ""
            kernel_pid = int(reached.split()[1])
            if victim == "session":
                assert terminate_runbook_sessions(pg_server.admin_url, name) >= 1
            else:
                os.kill(kernel_pid if victim == "kernel" else ex.pid, signal.SIGKILL)
            ex.wait(timeout=120)
        finally:
            if ex.poll() is None:
                ex.kill()
        if victim == "cli":
            os.kill(kernel_pid, signal.SIGKILL) if _alive(kernel_pid) else None
            # the next run of the incident archives the interrupted one
            nxt = _cli(["run", "verify", "--incident", incident], url, tmp_path)
            nxt.communicate(timeout=300)
        figures["trials"] += 1
        figures["faults_injected"] += 1
        got = _classify(db_state(url), states["before"][key], states["after"][key])
        if got == "PARTIAL":
            figures["partial_states"] += 1
        if got != "before":
            problems.append(f"cli trial {i}: {victim} killed at {point}: {got}")
        runs = sorted(p for p in (tmp_path / "incidents" / incident).iterdir() if p.is_dir())
        manifest = json.loads((runs[1] / "manifest.json").read_text())
        if manifest["status"] != "failed" or manifest["mode"] != "execute":
            problems.append(f"cli trial {i}: evidence says {manifest['status']} for the killed execute")
        if victim == "session" and ex.returncode != 15:
            problems.append(f"cli trial {i}: terminated session gave exit {ex.returncode}, not 15")
        if victim == "kernel" and (ex.returncode != 17 or manifest["error"]["exit_code"] != 17):
            problems.append(f"cli trial {i}: killed kernel gave exit {ex.returncode}, not 17 (KernelDiedError)")
        tally[f"{key}/{victim}"] = tally.get(f"{key}/{victim}", 0) + 1
        pg_server.drop(name)
    print(f"CLI crash trials per procedure and victim: {tally}")
    assert problems == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def test_terminated_session_is_reported_as_interrupted(incident_db, pg_server, tmp_path, figures):
    """pg_terminate_backend during execute, through the CLI: its own exit status (15, not 'cannot reach the
    target' of an unreachable server), one line saying what happened, the database as before, evidence failed."""
    params = ["-p", "since", "2025-12-01T00:00:00Z", "-p", "until", "2025-12-03T00:00:00Z"]
    review = _cli(["run", "token-reversal", *params, "--incident", "TERM"], incident_db, tmp_path)
    out, err = review.communicate(timeout=300)
    assert review.returncode == 0, err
    plan_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("plan id:"))
    before = db_state(incident_db)
    marker = tmp_path / "term-marker"
    ex = _cli(["run", "token-reversal", *params, "--incident", "TERM", "--execute", "--approve", plan_id],
              incident_db, tmp_path, {"RUNBOOK_FAULT": "after_apply:sleep:30", "RUNBOOK_FAULT_MARKER": str(marker)})
    try:
        assert wait_for(marker, ex) is not None
        assert terminate_runbook_sessions(pg_server.admin_url, sa.engine.make_url(incident_db).database) >= 1
        _, err = ex.communicate(timeout=120)
    finally:
        if ex.poll() is None:
            ex.kill()
    figures["trials"] += 1
    figures["faults_injected"] += 1
    lines = err.strip().splitlines()
    assert ex.returncode == 15 and len(lines) == 1, err
    assert "SessionInterruptedError" in lines[0] and "before COMMIT" in lines[0] and "cannot reach" not in lines[0]
    state = db_state(incident_db)
    if state != before:
        figures["partial_states"] += 1
    assert state == before
    run_dir = sorted(p for p in (tmp_path / "incidents" / "TERM").iterdir() if p.is_dir())[-1]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["exit_code"] == 15
    assert manifest["rolled_back"]["rolled_back"] is True
