"""Crash trials for online mode (``execution=online``): killed inside or between batches, the database holds whole
batches only; a resume with the same approval finishes exactly the rest; the application keeps writing and loses
nothing.

On the seeded incident in the real application's shape (a module template, a fresh copy per trial), a token reversal
in batches of ``BATCH_USERS`` users. Every trial reviews into an incident folder ``<tmp>/INC-i/review``, runs the
execute in a worker process (``INC-i/execute-1``) that sleeps at a fault point chosen at random with a fixed seed
(``after_apply@N`` / ``before_commit@N`` inside batch N's open transaction, ``between_batches@N`` after N commits),
then SIGKILLs the worker or terminates its database sessions. The state it leaves is judged batch by batch against
the state before and the clean after-state of a single-transaction execute: each approved batch is either fully
applied or untouched (``partial_batches``), no original row is reversed twice (``double_reversals``). The resume
(``INC-i/execute-2``, same approval) must end at the clean after-state, listing the batches found applied as
"finished earlier" and the rest as "committed".

The application trials also run the voucher app's own kind of transaction (balance moved + one ledger row, not a
voucher grant, ``createdAt`` now) on users of committed batches and unaffected users, and in some trials on users of
pending batches (online mode approves rows and each user's decision, not exact balances, so the same approval
resumes; a write that flips a decision — a user now taken below zero — makes it refuse with "review again", and the
trial then reviews again and executes the new plan). Every committed app write must be in the final balances
(``lost_updates``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runbook_lib.errors import ApprovalError, ConcurrentRunError
from runbook_lib.procedures.base import Batch
from runbook_lib.run import Run

from .support import terminate_runbook_sessions, wait_for

SEED = 20261201
ONLINE_TRIALS = int(os.environ.get("RELIABILITY_ONLINE_TRIALS", "12"))
APP_TRIALS = int(os.environ.get("RELIABILITY_ONLINE_APP_TRIALS", "6"))
SINCE = "2025-12-01T00:00:00Z"
BATCH_USERS = 6
ONLINE = {"since": SINCE, "execution": "online", "batch_users": BATCH_USERS, "batch_pause": "0"}
REVERSAL_SOURCE = "voucher_reversal"  # the reversal_source default: reversing rows' source, sourceId = original
INSIDE = ("after_apply", "before_commit")
BETWEEN = "between_batches"

#: the execute of an approved plan in a process of its own (the test kills it); DATABASE_URL names the target
EXECUTE_WORKER = """
import json, sys
from runbook_lib.run import Run
Run("token-reversal", json.loads(sys.argv[1])).execute()
print("DONE", flush=True)
"""


# ------------------------------------------------------------------------------------------------ the incident
@dataclass
class Snapshot:
    balances: dict[str, int]
    #: per user, the ids of their ledger rows (the test's app rows, ``app_…``, left out)
    rows: dict[str, set[str]]
    #: per original row id, how many reversing rows name it
    reversals: Counter[str]


def snapshot(url: str) -> Snapshot:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            balances = {r[0]: int(r[1]) for r in c.exec_driver_sql(
                'select "userId", balance from user_token_balances')}
            rows: dict[str, set[str]] = defaultdict(set)
            for uid, rid in c.exec_driver_sql(
                    "select \"userId\", id from token_transactions where left(id, 4) <> 'app_'"):
                rows[uid].add(rid)
            reversals = Counter(r[0] for r in c.execute(sa.text(
                'select "sourceId" from token_transactions where source = :s'), {"s": REVERSAL_SOURCE}))
    finally:
        eng.dispose()
    return Snapshot(balances, dict(rows), reversals)


@dataclass
class Incident:
    template: str
    before: Snapshot
    after: Snapshot  # a clean single-transaction execute
    #: per affected user, the ids of the ledger rows the reversal selects
    selected: dict[str, set[str]]
    unaffected: list[str]  # users with a balance and nothing to reverse


@pytest.fixture(scope="module")
def incident(pg_server) -> Any:
    from conftest import MIGRATIONS

    from runbook_lib import seed
    from runbook_lib.prisma.migrate import deploy

    base = f"rb_online_base_{uuid.uuid4().hex[:8]}"
    url = pg_server.create(base)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        deploy(c, MIGRATIONS)
    seed.seed_incident(eng)
    selected: dict[str, set[str]] = defaultdict(set)
    with eng.connect() as c:
        for uid, rid in c.execute(sa.text(
                "select \"userId\", id from token_transactions where source = 'voucher_redemption' and "
                '"createdAt" >= :since'), {"since": "2025-12-01"}):
            selected[uid].add(rid)
    eng.dispose()
    before = snapshot(url)
    clean = f"rb_online_clean_{uuid.uuid4().hex[:8]}"
    clean_url = pg_server.create(clean, template=base)
    plan = Run("token-reversal", {"since": SINCE}, url=clean_url).review()
    Run("token-reversal", {"since": SINCE, "mode": "execute", "approved_plan": plan.plan_id},
        url=clean_url).execute()
    after = snapshot(clean_url)
    pg_server.drop(clean)
    # the clean execute reversed exactly the selected rows, once each, and moved only their users' balances
    assert set(after.reversals) == {r for ids in selected.values() for r in ids}
    assert set(after.reversals.values()) == {1}
    assert {u for u in before.balances if before.balances[u] != after.balances[u]} <= set(selected)
    unaffected = sorted(u for u in before.balances if u not in selected)
    assert len(unaffected) >= 20, "the seeded incident has too few users without a grant in the window"
    yield Incident(base, before, after, dict(selected), unaffected)
    pg_server.drop(base)


# ----------------------------------------------------------------------------------------- judging a state
@dataclass
class Verdict:
    applied: list[int] = field(default_factory=list)  # batch numbers fully applied
    untouched: list[int] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # what is wrong with each partial batch
    double_reversals: int = 0
    stray: list[str] = field(default_factory=list)  # rows reversed that the plan does not select, users moved
    lost_updates: list[str] = field(default_factory=list)


def batch_users(inc: Incident, b: Batch) -> list[str]:
    """The affected users in a batch's range (ids are ASCII: Python's order is the column's order here)."""
    return sorted(u for u in inc.selected if b.first <= u <= b.last)


def judge(inc: Incident, layout: list[Batch], snap: Snapshot, deltas: Counter[str]) -> Verdict:
    """Each approved batch fully applied or untouched, with the app's committed writes (``deltas``) taken out."""
    v = Verdict()
    v.double_reversals = sum(1 for n in snap.reversals.values() if n > 1)
    every = {r for ids in inc.selected.values() for r in ids}
    v.stray += [f"row {r} reversed but not selected" for r in snap.reversals if r not in every]
    for b in layout:
        users = batch_users(inc, b)
        bal = {u: snap.balances.get(u, 0) - deltas[u] for u in users}
        done = all(bal[u] == inc.after.balances[u] for u in users) and all(
            snap.reversals[r] == 1 for u in users for r in inc.selected[u]) and all(
            inc.before.rows[u] <= snap.rows.get(u, set())
            and len(snap.rows.get(u, set())) == len(inc.before.rows[u]) + len(inc.selected[u]) for u in users)
        untouched = all(bal[u] == inc.before.balances[u] for u in users) and all(
            snap.reversals[r] == 0 for u in users for r in inc.selected[u]) and all(
            snap.rows.get(u, set()) == inc.before.rows[u] for u in users)
        if done:
            v.applied.append(b.number)
        elif untouched:
            v.untouched.append(b.number)
        else:
            v.partial.append(
                f"batch {b.number} ({b.first}..{b.last}): balances-deltas {bal}, before "
                f"{ {u: inc.before.balances[u] for u in users} }, after { {u: inc.after.balances[u] for u in users} }, "
                f"reversals { {r: snap.reversals[r] for u in users for r in inc.selected[u]} }")
    for u in inc.unaffected:
        if snap.balances.get(u, 0) - deltas[u] != inc.before.balances[u]:
            v.stray.append(f"unaffected user {u}: balance {snap.balances.get(u)} - app {deltas[u]} != "
                           f"{inc.before.balances[u]}")
        if snap.rows.get(u, set()) != inc.before.rows.get(u, set()):
            v.stray.append(f"unaffected user {u}: ledger rows changed")
    return v


def judge_final(inc: Incident, snap: Snapshot, deltas: Counter[str]) -> Verdict:
    """The end of a resumed run: the clean after-state plus every committed app write, each original reversed once."""
    v = Verdict()
    v.double_reversals = sum(1 for n in snap.reversals.values() if n > 1)
    every = {r for ids in inc.selected.values() for r in ids}
    v.stray += [f"row {r} reversed but not selected" for r in snap.reversals if r not in every]
    v.stray += [f"row {r} not reversed" for r in every if snap.reversals[r] == 0]
    for u, want in inc.after.balances.items():
        got = snap.balances.get(u, 0)
        if got != want + deltas[u]:
            v.lost_updates.append(f"user {u}: balance {got}, clean after {want} + app {deltas[u]}")
    return v


# ---------------------------------------------------------------------------------------------- the runs
def review(url: str, evidence: Path) -> tuple[str, list[Batch]]:
    plan = Run("token-reversal", {**ONLINE, "evidence_dir": str(evidence)}, url=url).review()
    assert plan.batches is not None and len(plan.batches) >= 4, plan.summary
    return plan.plan_id, plan.batches


def execute(url: str, plan_id: str, evidence: Path) -> Run:
    run = Run("token-reversal", {**ONLINE, "mode": "execute", "approved_plan": plan_id,
                                 "evidence_dir": str(evidence)}, url=url)
    run.execute()
    return run


def start_execute(url: str, plan_id: str, evidence: Path, fault: str, marker: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, "RUNBOOK_FAULT": fault, "RUNBOOK_FAULT_MARKER": str(marker)}
    params = {**ONLINE, "mode": "execute", "approved_plan": plan_id, "evidence_dir": str(evidence)}
    return subprocess.Popen([sys.executable, "-c", EXECUTE_WORKER, json.dumps(params)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pick_fault(rng: random.Random, batches: int) -> tuple[str, int, str]:
    """A fault point and its N (a later batch is left pending in every case) and the way to kill."""
    point = rng.choice([*INSIDE, BETWEEN])
    n = rng.randint(1, batches - 1)
    return point, n, rng.choice(["sigkill", "terminate"])


def committed_before(point: str, n: int) -> int:
    """How many batches a run stopped at ``point@n`` has committed: N-1 inside batch N, N between N and N+1."""
    return n if point == BETWEEN else n - 1


def kill(proc: subprocess.Popen[str], kind: str, admin_url: str, database: str) -> tuple[int, str]:
    """SIGKILL the worker, or terminate its database sessions; its exit status and stderr."""
    try:
        if kind == "sigkill":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            assert terminate_runbook_sessions(admin_url, database) >= 1
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


# --------------------------------------------------------------------------------------------- the app
class App:
    """The voucher app's writes: one transaction moves a user's balance and writes one ledger row (a spend or a
    purchase, createdAt now: never a voucher grant). ``deltas`` holds only writes whose COMMIT returned."""

    KINDS = [(-3, "SPEND_ENHANCEMENT", "enhancement"), (-1, "SPEND_APP_MESSAGE", None),
             (20, "EARN_PURCHASE", "purchase")]

    def __init__(self, url: str, seed: int) -> None:
        self.eng = sa.create_engine(url, pool_size=4, connect_args={"application_name": "voucher-app"})
        self.rng = random.Random(seed)
        self.deltas: Counter[str] = Counter()
        self.writes = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def write(self, uid: str) -> None:
        with self._lock:
            amount, kind, source = self.rng.choice(self.KINDS)
        try:
            with self.eng.begin() as c:
                bal = c.execute(sa.text(
                    'update user_token_balances set balance = balance + :a, "updatedAt" = now() at time zone '
                    '\'utc\' where "userId" = :u returning balance'), {"a": amount, "u": uid}).scalar_one()
                c.execute(sa.text(
                    'insert into token_transactions (id, "userId", amount, type, source, "balanceAfter", '
                    '"createdAt") values (:id, :u, :a, cast(:k as "TokenTransactionType"), :s, :b, '
                    "now() at time zone 'utc')"),
                    {"id": f"app_{uuid.uuid4().hex}", "u": uid, "a": amount, "k": kind, "s": source, "b": bal})
        except Exception as exc:  # noqa: BLE001 - reported by the trial (an app write must not fail)
            with self._lock:
                self.errors.append(f"{uid}: {type(exc).__name__}: {exc}"[:300])
            return
        with self._lock:
            self.deltas[uid] += amount
            self.writes += 1

    def some(self, users: list[str], count: int, gap: float = 0.01) -> threading.Thread:
        """``count`` writes on users picked from ``users``, in a thread."""
        picks = [self.rng.choice(users) for _ in range(count)]

        def go() -> None:
            for u in picks:
                self.write(u)
                time.sleep(gap)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t

    def until_stopped(self, users: list[str], gap: float = 0.005) -> threading.Thread:
        def go() -> None:
            while not self.stop.is_set():
                with self._lock:
                    u = self.rng.choice(users)
                self.write(u)
                time.sleep(gap)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t


# ------------------------------------------------------------------------------------------- one trial
@dataclass
class Outcome:
    kill_verdict: Verdict
    final: Verdict
    resumes: list[str]  # "same approval" / "refused: review again" / "new plan" per attempt
    problems: list[str]
    line: str  # what happened, for the test's printout


def trial(i: int, rng: random.Random, inc: Incident, pg_server: Any, tmp_path: Path, figures: Counter[str],
          *, app_mode: str | None = None, forced: tuple[str, int, str] | None = None) -> Outcome:
    """One crash trial; ``app_mode``: None (no app), "safe" (app writes on committed batches' and unaffected
    users) or "pending" (also on users of the killed and pending batches)."""
    problems: list[str] = []
    name = f"rb_online_{i}_{uuid.uuid4().hex[:6]}"
    url = pg_server.create(name, template=inc.template)
    folder = tmp_path / f"INC-{i}"
    app = App(url, SEED + i) if app_mode else None
    try:
        plan_id, layout = review(url, folder / "review")
        point, n, kind = forced or pick_fault(rng, len(layout))
        label = f"trial {i}: {kind} at {point}@{n} of {len(layout)} batches" + (f", app {app_mode}" if app else "")
        marker = tmp_path / f"marker-{i}"
        proc = start_execute(url, plan_id, folder / "execute-1", f"{point}@{n}:sleep:{60 if kind == 'sigkill' else 2}",
                             marker)
        reached = wait_for(marker, proc, timeout=120)
        if reached is None:
            out, err = proc.communicate()
            raise AssertionError(f"{label}: the execute ended before its fault point: {err[-2000:]}")
        done = committed_before(point, n)
        threads: list[threading.Thread] = []
        if app:  # the app writes while the batch is held open (or between two batches), and on through the kill
            safe = inc.unaffected + [u for b in layout[:done] for u in batch_users(inc, b)]
            threads.append(app.some(safe, 25))
            if app_mode == "pending":  # the killed batch's users wait for its locks; later ones move on
                threads.append(app.some([u for b in layout[done:] for u in batch_users(inc, b)], 4))
            time.sleep(0.15)
        code, err = kill(proc, kind, pg_server.admin_url, name)
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive(), f"{label}: an app write hung"
        figures["online_kills"] += 1
        figures["faults_injected"] += 1
        deltas = app.deltas.copy() if app else Counter[str]()
        v = judge(inc, layout, snapshot(url), deltas)
        figures["partial_batches"] += len(v.partial)
        figures["double_reversals"] += v.double_reversals
        problems += [f"{label}: partial {p}" for p in v.partial] + [f"{label}: {s}" for s in v.stray]
        if v.double_reversals:
            problems.append(f"{label}: {v.double_reversals} rows reversed more than once")
        expected = list(range(1, done + 1))
        # killed, or its sessions terminated (inside a batch, or between two: the run's lock session is gone, so
        # it stops before the next batch): exactly the batches committed before the fault
        if v.applied != expected:
            problems.append(f"{label}: batches applied {v.applied}, expected {expected}")
        if kind == "terminate":
            if code == 0 or "SessionInterruptedError" not in err:
                problems.append(f"{label}: exit {code}, no SessionInterruptedError: {err[-800:]}")
        # the resume, while the app keeps writing on users whose batches are done, and on unaffected users
        resumes: list[str] = []
        if app:
            app.stop.clear()
            threads = [app.until_stopped(inc.unaffected + [u for b in layout if b.number in v.applied
                                                           for u in batch_users(inc, b)])]
        try:
            resumes, run_problems = resume(url, plan_id, folder, v.applied, len(layout), label)
            problems += run_problems
        finally:
            if app:
                app.stop.set()
                for t in threads:
                    t.join(timeout=120)
        final = judge_final(inc, snapshot(url), app.deltas if app else Counter[str]())
        figures["double_reversals"] += final.double_reversals
        problems += [f"{label}: final {s}" for s in final.stray + final.lost_updates]
        if final.double_reversals:
            problems.append(f"{label}: final state has {final.double_reversals} rows reversed more than once")
        if app:
            figures["lost_updates"] += len(final.lost_updates)
            problems += [f"{label}: app write failed: {e}" for e in app.errors]
            if app_mode == "safe" and resumes != ["same approval"]:
                problems.append(f"{label}: app writes on done batches' and unaffected users only, yet {resumes}")
            # online mode approves rows and decisions, not exact balances: spends and purchases on pending
            # batches' users let the same approval resume, unless one flipped a decision (a user now taken below
            # zero), which must be refused ("review again") and then done under the new plan
            if app_mode == "pending" and resumes[0] not in ("same approval", "refused: review again"):
                problems.append(f"{label}: pending users' balances moved, and the resume went {resumes}")
        figures["online_trials"] += 1
        figures["trials"] += 1
        line = (f"{label}: exit {code}, applied {len(v.applied)}, untouched {len(v.untouched)}, partial "
                f"{len(v.partial)}; resume {' / '.join(resumes)}" + (f"; app writes {app.writes}" if app else ""))
        print(line)
        return Outcome(v, final, resumes, problems, line)
    finally:
        if app:
            app.stop.set()
            app.eng.dispose()
        pg_server.drop(name)


def resume(url: str, plan_id: str, folder: Path, applied: list[int], total: int,
           label: str) -> tuple[list[str], list[str]]:
    """The same approval again (a sibling evidence folder); refused ("review again"), a new review and its plan,
    at most three times."""
    problems: list[str] = []
    resumes: list[str] = []
    approved, attempt = plan_id, 2
    for _ in range(4):
        try:
            run = execute(url, approved, folder / f"execute-{attempt}")
        except ApprovalError as exc:
            if "review again" not in str(exc):
                problems.append(f"{label}: refusal without 'review again': {exc}")
            resumes.append("refused: review again")
            attempt += 1
            approved, _ = review(url, folder / f"review-{attempt}")
            attempt += 1
            continue
        statuses = [r["status"] for r in run.state.get("batches") or []]
        if approved == plan_id:
            resumes.append("same approval")
            want = ["finished earlier" if k in applied else "committed" for k in range(1, total + 1)]
            if statuses != want:
                problems.append(f"{label}: resumed run's batches {statuses}, expected {want}")
        else:
            resumes.append("new plan")
            if set(statuses) != {"committed"}:
                problems.append(f"{label}: the new plan's run: {statuses}")
        return resumes, problems
    problems.append(f"{label}: no resume completed: {resumes}")
    return resumes, problems


# ---------------------------------------------------------------------------------------------- the tests
def test_sigkill_inside_a_batch_then_the_same_approval_finishes(incident, pg_server, tmp_path, figures):
    """One trial of each kind in the fast suite: SIGKILL with batch 3 open, sessions terminated after batch 2."""
    rng = random.Random(SEED)
    problems: list[str] = []
    for i, forced in enumerate([("before_commit", 3, "sigkill"), (BETWEEN, 2, "terminate")]):
        problems += trial(i, rng, incident, pg_server, tmp_path, figures, forced=forced).problems
    assert problems == []


@pytest.mark.slow
def test_kills_inside_and_between_batches(incident, pg_server, tmp_path, figures):
    rng = random.Random(SEED + 1)
    problems: list[str] = []
    tally: Counter[str] = Counter()
    for i in range(ONLINE_TRIALS):
        out = trial(100 + i, rng, incident, pg_server, tmp_path, figures)
        problems += out.problems
        tally[f"{len(out.kill_verdict.applied)} applied"] += 1
    print(f"online crash trials: {dict(tally)}")
    assert problems == []


@pytest.mark.slow
def test_app_writes_through_a_killed_online_execute_lose_nothing(incident, pg_server, tmp_path, figures):
    rng = random.Random(SEED + 2)
    problems: list[str] = []
    resumes: Counter[str] = Counter()
    for i in range(APP_TRIALS):
        mode = "pending" if i % 3 == 2 else "safe"
        out = trial(200 + i, rng, incident, pg_server, tmp_path, figures, app_mode=mode)
        problems += out.problems
        resumes[" / ".join(out.resumes)] += 1
    print(f"online app trials, resumes: {dict(resumes)}")
    assert problems == []


@pytest.mark.slow
def test_sessions_terminated_between_batches_do_not_leave_two_runs_going(incident, pg_server, tmp_path, figures):
    """A DBA terminates the runbook's sessions between two batches (pg_terminate_backend, e.g. to stop it). The
    online execute's session advisory lock goes with its session; the run must then either stop, or still keep a
    second execute of the same approval out — not go on with new connections while the second one runs too
    ("a session advisory lock keeps a second execute of the same procedure out for the whole run")."""
    name = f"rb_online_lock_{uuid.uuid4().hex[:6]}"
    url = pg_server.create(name, template=incident.template)
    folder = tmp_path / "INC-lock"
    try:
        plan_id, layout = review(url, folder / "review")
        marker = tmp_path / "marker-lock"
        proc = start_execute(url, plan_id, folder / "execute-1", f"{BETWEEN}@2:sleep:4", marker)
        assert wait_for(marker, proc) is not None, proc.communicate()[1][-2000:]
        assert terminate_runbook_sessions(pg_server.admin_url, name) >= 1
        figures["online_kills"] += 1
        figures["faults_injected"] += 1
        second: str
        try:
            run = execute(url, plan_id, folder / "execute-2")
            second = f"ran: {run.result.messages if run.result else None}"
        except ConcurrentRunError:
            second = "refused: another operator"
        _, err = proc.communicate(timeout=120)
        first = json.loads((folder / "execute-1" / "run-state.json").read_text())
        after_terminate = Counter(r["status"] for r in first["batches"][2:])
        final = judge_final(incident, snapshot(url), Counter())
        figures["online_trials"] += 1
        figures["trials"] += 1
        figures["double_reversals"] += final.double_reversals
        assert final.double_reversals == 0 and final.stray == [] and final.lost_updates == []
        went_on = proc.returncode == 0 and not set(after_terminate) <= {"pending", "failed"}
        assert second.startswith("refused") or not went_on, (
            f"the first run went on after its sessions were terminated (exit {proc.returncode}, its batches 3.. "
            f"{dict(after_terminate)}) while a second execute of the same approval {second}")
    finally:
        pg_server.drop(name)
