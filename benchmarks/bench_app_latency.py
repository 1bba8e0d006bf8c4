"""Benchmark: what the application feels while a token reversal executes (issue 13, item 2).

    .venv/bin/python benchmarks/bench_app_latency.py [--users 200000] [--ledger-rows 1000000] [--workers 4]

Generates the data of bench_token_reversal.py once (runbook_lib.seed.seed_bulk, the real application's shape),
then, for each execution mode, on its own identical copy (CREATE DATABASE … TEMPLATE):

* ``no reversal``: the application load alone, the reference for the figures below;
* ``raw SQL``: the hand-written aggregated reversal (``common.RAW_SQL``, one transaction), the baseline;
* ``runbook single``: ``Run("token-reversal", {mode: execute, approved_plan: …}).execute()`` after a review;
* ``runbook online``: the same with ``execution: online, batch_users: N, batch_pause: …`` — only when the
  procedure's parameters have ``execution`` (otherwise skipped with a note).

While the reversal executes, worker processes (each one connection, ``application_name`` "app-sim") write the way
the application does (shared/reference/REAL_APP.md), one transaction each:

* ``redeem``: the voucher read by code, a redemption row, ``currentUses`` + 1, the balance upserted (+ tokens),
  a ledger row (EARN_BONUS, source 'voucher_redemption', sourceId = the voucher's id, balanceAfter,
  metadata {"voucherCode": …}); vouchers of the worker's own, created before it starts;
* ``spend``: the balance decremented, a ledger row with a negative amount (SPEND_APP_MESSAGE, source 'app_message');
* ``regenerate``: the balance incremented and ``lastRegeneration`` set, an EARN_REGENERATION ledger row.

Half the workers write for **affected** users (those the reversal touches), half for **unaffected** ones (one worker:
both, alternately). Every new row is created now (2026), outside the incident window, so the selection stays the same.
Each worker issues transactions on a fixed schedule (``--rate`` per second); a transaction blocked on a lock
delays the next ones of that worker, so each transaction has two figures: its own duration (BEGIN to COMMIT) and its
time since it was *due* (what a request arriving on schedule waits, queueing included: no coordinated omission).

Affected users and the approved plan: a single transaction's plan id pins the affected users' balances, so an
application write for an affected user after the review and before the execute locks that user makes it refuse
(the data moved), as designed; online mode approves each batch's rows and its users' decisions, not their exact
balances, so the application may keep writing for every user. ``--affected-from start`` writes every affected user
from the start of the load (after the review), as a live application would, and reports the outcome;
``--affected-from lock`` writes an affected user only once the runbook holds its lock (all of them after a single
transaction's ``lock``, batch by batch after each ``lock_batch`` of an online execute: the registered procedure's
two hooks are wrapped in this process to raise the gate; nothing else changes), which shows a single
transaction's lock waits without its refusal; ``--affected-from both`` (the default) runs every runbook mode both
ways. For the raw SQL, which checks no plan, affected users are written from the start of the load.

Lock waits are sampled every 50 ms from pg_stat_activity (app-sim sessions with wait_event_type 'Lock').

Reports machine, PostgreSQL version, data size, worker count and, per mode, the reversal's own time and the latency
table (p50/p95/p99/max, transactions over 1 s, split by affected/unaffected and kind), to stdout and
benchmarks/results/app_latency.md. Not a test: no thresholds are asserted anywhere.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import math
import multiprocessing as mp
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import ROOT, SINCE, UNTIL, Cluster, generate, machine, run_raw_sql

APP_NAME = "app-sim"
KINDS = ("redeem", "spend", "regenerate")
#: the mix each worker draws from (weights; an assumption: the application spends more often than it redeems)
KIND_WEIGHTS = (1, 2, 1)
GROUPS = ("affected", "unaffected")
SLOW_S = 1.0
SAMPLE_EVERY_S = 0.05


# ---------------------------------------------------------------------------------------------------------
# The application's writes (one transaction each, in the order the application issues them)
# ---------------------------------------------------------------------------------------------------------


def _cuid() -> str:
    return "c" + uuid.uuid4().hex[:24]


NOW = "(now() at time zone 'utc')"  # Prisma writes timestamp(3) in UTC


class App:
    """One application connection (``application_name`` app-sim) and the vouchers it redeems."""

    def __init__(self, url: str, tag: str, vouchers: int = 8) -> None:
        self.eng = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"application_name": APP_NAME})
        self.conn = self.eng.connect()
        self.codes = [f"APPSIM-{tag}-{k}" for k in range(vouchers)]
        self.used: set[tuple[str, str]] = set()  # (code, user): the redemption is unique per voucher and user
        with self.conn.begin():  # the admin creating vouchers, before any timed transaction
            for code in self.codes:
                self.conn.exec_driver_sql(
                    'insert into vouchers (id, code, type, value, "maxUses", "currentUses", status, "createdAt", '
                    f'"updatedAt") values (%(id)s, %(code)s, \'FIXED_TOKENS\', 25, null, 0, \'ACTIVE\', {NOW}, {NOW})',
                    {"id": _cuid(), "code": code})

    def close(self) -> None:
        self.conn.close()
        self.eng.dispose()

    def redeem(self, user: str) -> None:
        code = next((c for c in self.codes if (c, user) not in self.used), None)
        if code is None:  # this worker's vouchers are all redeemed by this user: one more voucher
            code = f"{self.codes[0]}-{len(self.codes)}"
            self.codes.append(code)
            with self.conn.begin():
                self.conn.exec_driver_sql(
                    'insert into vouchers (id, code, type, value, "maxUses", "currentUses", status, "createdAt", '
                    f'"updatedAt") values (%(id)s, %(code)s, \'FIXED_TOKENS\', 25, null, 0, \'ACTIVE\', {NOW}, {NOW})',
                    {"id": _cuid(), "code": code})
        self.used.add((code, user))
        c = self.conn
        with c.begin():
            vid, status, expires, max_uses, uses, value = c.exec_driver_sql(
                'select id, status, "expiresAt", "maxUses", "currentUses", value from vouchers where code = %(code)s',
                {"code": code}).one()
            if status != "ACTIVE" or (max_uses is not None and uses >= max_uses) or expires is not None:
                raise RuntimeError(f"voucher {code} cannot be redeemed ({status})")
            c.exec_driver_sql(
                'insert into voucher_redemptions (id, "voucherId", "userId", "tokensGranted", "redeemedAt") '
                f"values (%(id)s, %(v)s, %(u)s, %(n)s, {NOW})", {"id": _cuid(), "v": vid, "u": user, "n": value})
            c.exec_driver_sql(
                'update vouchers set "currentUses" = "currentUses" + 1, status = case when "maxUses" is not null and '
                f'"currentUses" + 1 >= "maxUses" then \'DEPLETED\' else status end, "updatedAt" = {NOW} '
                "where id = %(v)s", {"v": vid})
            balance = c.exec_driver_sql(
                'insert into user_token_balances (id, "userId", balance, "lastRegeneration", "createdAt", "updatedAt") '
                f'values (%(id)s, %(u)s, %(n)s, {NOW}, {NOW}, {NOW}) on conflict ("userId") do update set '
                'balance = user_token_balances.balance + excluded.balance, "updatedAt" = excluded."updatedAt" '
                "returning balance", {"id": _cuid(), "u": user, "n": value}).scalar_one()
            c.exec_driver_sql(
                'insert into token_transactions (id, "userId", amount, type, source, "sourceId", "balanceAfter", '
                f"metadata, \"createdAt\") values (%(id)s, %(u)s, %(n)s, 'EARN_BONUS', 'voucher_redemption', %(v)s, "
                f"%(b)s, jsonb_build_object('voucherCode', %(code)s::text), {NOW})",
                {"id": _cuid(), "u": user, "n": value, "v": vid, "b": balance, "code": code})

    def _move(self, user: str, amount: int, type_: str, source: str, regeneration: bool = False) -> None:
        c = self.conn
        regen = f', "lastRegeneration" = {NOW}' if regeneration else ""
        with c.begin():
            balance = c.exec_driver_sql(
                f'update user_token_balances set balance = balance + %(n)s, "updatedAt" = {NOW}{regen} '
                'where "userId" = %(u)s returning balance', {"n": amount, "u": user}).scalar_one()
            c.exec_driver_sql(
                'insert into token_transactions (id, "userId", amount, type, source, "balanceAfter", "createdAt") '
                f"values (%(id)s, %(u)s, %(n)s, %(t)s, %(s)s, %(b)s, {NOW})",
                {"id": _cuid(), "u": user, "n": amount, "t": type_, "s": source, "b": balance})

    def spend(self, user: str) -> None:
        self._move(user, -3, "SPEND_APP_MESSAGE", "app_message")

    def regenerate(self, user: str) -> None:
        self._move(user, 10, "EARN_REGENERATION", "regeneration", regeneration=True)


# ---------------------------------------------------------------------------------------------------------
# Worker and sampler processes
# ---------------------------------------------------------------------------------------------------------

#: one transaction: (due, start, end, group, kind, error or "")
Tx = tuple[float, float, float, str, str, str]


ALL_OPEN = 1 << 30  # the gate value once every affected user may be written


@dataclass
class LoadSpec:
    url: str
    affected: list[tuple[int, str]]  # (batch number, user), ascending: a user is written once its batch is open
    unaffected: list[str]
    workers: int
    rate: float  # transactions per second per worker
    seed: int = 13


def _worker(idx: int, spec: LoadSpec, groups: tuple[str, ...], go: Any, opened: Any, stop: Any,
            out: Any) -> None:
    rng = random.Random(spec.seed * 1000 + idx)
    txs: list[Tx] = []
    app: App | None = None
    try:
        app = App(spec.url, f"{uuid.uuid4().hex[:6]}-{idx}")
        actions = {"redeem": app.redeem, "spend": app.spend, "regenerate": app.regenerate}
        affected_batches = [b for b, _ in spec.affected]
        affected_users = [u for _, u in spec.affected]
        interval = 1.0 / spec.rate
        go.wait()
        due = time.monotonic() + rng.random() * interval  # workers out of phase
        k = 0
        while not stop.is_set():
            n_open = bisect.bisect_right(affected_batches, opened.value)  # affected users written so far
            open_groups = [g for g in groups if g != "affected" or n_open]
            if not open_groups:
                time.sleep(0.005)
                due = time.monotonic()
                continue
            group = open_groups[k % len(open_groups)]
            k += 1
            kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
            user = rng.choice(affected_users[:n_open] if group == "affected" else spec.unaffected)
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            start = time.monotonic()
            err = ""
            try:
                actions[kind](user)
            except Exception as exc:  # noqa: BLE001 - counted in the report
                err = type(exc).__name__ + ": " + " ".join(str(exc).split())[:200]
            txs.append((due, start, time.monotonic(), group, kind, err))
            due += interval
    finally:
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()
        out.put(("tx", txs))


def _sampler(url: str, go: Any, stop: Any, out: Any) -> None:
    """pg_stat_activity every 50 ms: how many app-sim sessions wait on a lock, and on which kind."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"application_name": "bench-sampler"})
    samples: list[tuple[float, int, str]] = []
    try:
        with eng.connect() as c:
            c.exec_driver_sql("set application_name = 'bench-sampler'")
            c.commit()
            go.wait()
            while not stop.is_set():
                t = time.monotonic()
                n, events = c.exec_driver_sql(
                    "select count(*), coalesce(string_agg(distinct wait_event, ','), '') from pg_stat_activity "
                    "where datname = current_database() and application_name = %(a)s and wait_event_type = 'Lock'",
                    {"a": APP_NAME}).one()
                c.rollback()
                samples.append((t, int(n), str(events)))
                time.sleep(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - t)))
    finally:
        eng.dispose()
        out.put(("samples", samples))


class Load:
    """The application load on one database: worker processes plus the lock-wait sampler."""

    def __init__(self, spec: LoadSpec, affected_from_start: bool) -> None:
        ctx = mp.get_context("fork")  # the children inherit the spec; they open connections of their own
        self.go, self.stop = ctx.Event(), ctx.Event()
        #: the highest batch number whose users the affected workers may write (ALL_OPEN: all of them)
        self.opened: Any = ctx.Value("i", ALL_OPEN if affected_from_start else 0)
        self.out: Any = ctx.Queue()
        if spec.workers == 1:
            plan: list[tuple[str, ...]] = [GROUPS]
        else:  # half and half (the odd one out writes for unaffected users)
            plan = [(GROUPS[0],) if i < spec.workers // 2 else (GROUPS[1],) for i in range(spec.workers)]
        self.procs = [ctx.Process(target=_worker, args=(i, spec, g, self.go, self.opened, self.stop, self.out),
                                  daemon=True) for i, g in enumerate(plan)]
        self.procs.append(ctx.Process(target=_sampler, args=(spec.url, self.go, self.stop, self.out), daemon=True))
        for p in self.procs:
            p.start()
        self.started = 0.0

    def begin(self) -> None:
        self.started = time.monotonic()
        self.go.set()

    def finish(self) -> tuple[list[Tx], list[tuple[float, int, str]]]:
        self.stop.set()
        txs: list[Tx] = []
        samples: list[tuple[float, int, str]] = []
        for _ in self.procs:  # read before join: a child blocks until its queue is drained
            what, items = self.out.get(timeout=300)
            if what == "tx":
                txs.extend(items)
            else:
                samples.extend(items)
        for p in self.procs:
            p.join(timeout=30)
        return txs, samples


@contextlib.contextmanager
def gate_at_locks(load: Load) -> Iterator[None]:
    """Open the affected users to the workers as the runbook's execute locks them: all at once after a single
    transaction's ``lock``, batch by batch after each ``lock_batch`` of an online execute. The registered procedure
    object's two hooks are wrapped for the duration (this process only; the library is not changed)."""
    from runbook_lib import procedures

    proc: Any = procedures.get("token-reversal")
    lock, lock_batch = proc.lock, getattr(proc, "lock_batch", None)

    def locked(*a: Any, **k: Any) -> Any:
        out = lock(*a, **k)
        load.opened.value = ALL_OPEN
        return out

    def batch_locked(conn: Any, params: Any, names: Any, batch: Any) -> Any:
        assert lock_batch is not None
        out = lock_batch(conn, params, names, batch)
        load.opened.value = max(load.opened.value, int(batch.number))
        return out

    proc.lock = locked
    if lock_batch is not None:
        proc.lock_batch = batch_locked
    try:
        yield
    finally:
        for name in ("lock", "lock_batch"):
            with contextlib.suppress(AttributeError):
                delattr(proc, name)  # the class's methods again


def batch_of_users(url: str, users: list[str], batches: list[Any] | None) -> list[tuple[int, str]]:
    """Each affected user with the number of the online batch whose range holds it (the ranges compare in the
    database's own collation, as the batches were cut), ascending; a single transaction: batch 1 for all."""
    if not batches:
        return [(1, u) for u in users]
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        rows = c.exec_driver_sql(
            "select b.n::int, u from unnest(%(users)s::text[]) u join unnest(%(firsts)s::text[], %(lasts)s::text[]) "
            "with ordinality b(f, l, n) on u between b.f and b.l order by 1, 2",
            {"users": users, "firsts": [b.first for b in batches], "lasts": [b.last for b in batches]}).all()
    eng.dispose()
    return [(int(n), str(u)) for n, u in rows]


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


@dataclass
class Row:
    group: str
    kind: str
    n: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    over_1s: int
    #: from the time the transaction was due (queueing behind a blocked transaction of the same worker included)
    due_p99_ms: float
    due_max_ms: float
    due_over_1s: int


def latency_rows(txs: list[Tx], t0: float, t1: float) -> list[Row]:
    """Per group and kind (and per group, kind 'all'): the transactions that overlap [t0, t1]."""
    during = [t for t in txs if t[1] <= t1 and t[2] >= t0]
    rows: list[Row] = []
    for group in GROUPS:
        for kind in (*KINDS, "all"):
            sel = [t for t in during if t[3] == group and (kind == "all" or t[4] == kind)]
            ok = [t for t in sel if not t[5]]
            lat = sorted(t[2] - t[1] for t in ok)
            due = sorted(t[2] - t[0] for t in ok)
            rows.append(Row(group, kind, len(ok), len(sel) - len(ok),
                            percentile(lat, .5) * 1e3, percentile(lat, .95) * 1e3, percentile(lat, .99) * 1e3,
                            (lat[-1] if lat else math.nan) * 1e3, sum(x > SLOW_S for x in lat),
                            percentile(due, .99) * 1e3, (due[-1] if due else math.nan) * 1e3,
                            sum(x > SLOW_S for x in due)))
    return rows


def lock_waits(samples: list[tuple[float, int, str]], t0: float, t1: float) -> dict[str, Any]:
    sel = [s for s in samples if t0 <= s[0] <= t1]
    waiting = [s for s in sel if s[1] > 0]
    events = sorted({e for s in waiting for e in s[2].split(",") if e})
    return {"samples": len(sel), "samples_with_waits": len(waiting), "max_waiting_sessions": max(
        (s[1] for s in sel), default=0), "wait_events": events}


@dataclass
class ModeResult:
    mode: str
    affected_from: str  # "load start", "row locks" or "-"
    outcome: str
    reversal_s: float  # the reversal's own time (execute call, or the raw SQL transaction); the load alone: its window
    window_s: float
    transactions: int
    rows: list[Row] = field(default_factory=list)
    lock_waits: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # a few distinct application errors, if any
    detail: str = ""  # online mode: the batches' own transaction times


# ---------------------------------------------------------------------------------------------------------
# One mode on one copy
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    users: int = 200_000
    ledger_rows: int = 1_000_000
    workers: int = 4
    rate: float = 20.0
    lead_s: float = 1.0  # load before the reversal starts
    tail_s: float = 1.0  # load after it ends
    idle_s: float = 3.0  # the reference run without a reversal
    batch_users: int = 5000  # the procedure's default
    batch_pause: str = "100ms"
    affected_from: str = "both"  # lock | start | both
    sample_users: int = 5000  # users each group draws from


def code_version() -> str:
    """The commit the benchmark ran on, and whether runbook_lib had uncommitted changes."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=False).stdout.strip()

    head = git("log", "-1", "--format=%h %s")[:70] or "unknown (no git)"
    dirty = git("status", "--porcelain", "--", "runbook_lib")
    return head + (" + uncommitted changes in runbook_lib" if dirty else "")


def online_available() -> bool:
    from runbook_lib import procedures

    return "execution" in procedures.get("token-reversal").Params.model_fields


def groups_of_users(url: str, n: int) -> tuple[list[str], list[str]]:
    """Up to ``n`` users the reversal touches and ``n`` it does not (both with a balance row), deterministic and spread
    over the id range (ordered by a hash: online batches are ranges of ids)."""
    window = ("tt.source = 'voucher_redemption' and tt.\"createdAt\" >= '2025-12-01' and "
              "tt.\"createdAt\" < '2025-12-03'")
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        affected = [r[0] for r in c.exec_driver_sql(
            'select b."userId" from user_token_balances b where exists (select 1 from token_transactions tt '
            f'where tt."userId" = b."userId" and {window}) order by md5(b."userId") limit %(n)s', {"n": n})]
        unaffected = [r[0] for r in c.exec_driver_sql(
            'select b."userId" from user_token_balances b where not exists (select 1 from token_transactions tt '
            f'where tt."userId" = b."userId" and {window}) order by md5(b."userId") limit %(n)s', {"n": n})]
    eng.dispose()
    return affected, unaffected


def run_mode(url: str, mode: str, s: Settings, affected: list[str], unaffected: list[str],
             affected_from: str) -> ModeResult:
    """One mode on a fresh copy at ``url``: review (runbook modes), load, the reversal timed, load, figures."""
    from runbook_lib.run import Run

    window = {"since": SINCE, "until": UNTIL}
    extra: dict[str, Any] = {}
    if mode == "runbook online":
        extra = {"execution": "online", "batch_users": s.batch_users, "batch_pause": s.batch_pause}
    elif mode == "runbook single" and online_available():
        extra = {"execution": "single"}
    from_start = mode in ("no reversal", "raw SQL") or affected_from == "start"
    label = "-" if mode == "no reversal" else ("load start" if from_start else "row locks")
    pid, batches = None, None
    if mode.startswith("runbook"):
        review = Run("token-reversal", {**window, "mode": "review", **extra}, url=url)
        try:
            plan = review.review()
        except Exception as exc:  # noqa: BLE001 - the outcome is part of the report
            return ModeResult(mode, label, f"review failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                              math.nan, 0.0, 0)
        finally:
            review.engine.dispose()  # no pooled connection of ours crosses the fork below
        pid, batches = plan.plan_id, getattr(plan, "batches", None)

    spec = LoadSpec(url, batch_of_users(url, affected, batches), unaffected, s.workers, s.rate)
    load = Load(spec, affected_from_start=from_start)
    outcome, detail = "succeeded", ""
    load.begin()
    try:
        time.sleep(s.lead_s)
        t0 = time.monotonic()
        if mode == "no reversal":
            time.sleep(s.idle_s)
        elif mode == "raw SQL":
            run_raw_sql(url)
        else:
            run = Run("token-reversal", {**window, "mode": "execute", "approved_plan": pid, **extra}, url=url)
            gate = contextlib.nullcontext() if from_start else gate_at_locks(load)
            try:
                with gate:
                    res = run.execute()
                outcome = "succeeded" if res is not None and res.changed else "succeeded, nothing changed"
            except Exception as exc:  # noqa: BLE001 - the outcome is part of the report
                outcome = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            finally:
                run.engine.dispose()
            detail = batch_detail(run.state.get("batches"))
        t1 = time.monotonic()
        time.sleep(s.tail_s)
    finally:
        txs, samples = load.finish()
    errors = sorted({t[5] for t in txs if t[5]})[:5]
    return ModeResult(mode, label, outcome, t1 - t0, t1 - t0, len([t for t in txs if t[1] <= t1 and t[2] >= t0]),
                      latency_rows(txs, t0, t1), lock_waits(samples, t0, t1), errors, detail)


def batch_detail(records: Any) -> str:
    """Online mode's batches as the run recorded them: how many committed, and their transactions' times."""
    if not records:
        return ""
    done = [r for r in records if r.get("status") == "committed"]
    secs = sorted(float(r["seconds"]) for r in done if "seconds" in r)
    locked = sorted(float(r["locked_seconds"]) for r in done if "locked_seconds" in r)
    text = f"{len(done)} of {len(records)} batches committed"
    if secs:
        text += (f"; a batch's transaction: median {percentile(secs, .5) * 1e3:.0f} ms, max {secs[-1] * 1e3:.0f} ms")
    if locked:
        text += f"; its rows locked: median {percentile(locked, .5) * 1e3:.0f} ms, max {locked[-1] * 1e3:.0f} ms"
    return text


def run(cluster: Cluster, s: Settings, prefix: str = "lat", log: Any = print) -> dict[str, Any]:
    """The whole benchmark on ``cluster``; returns the report as a dict (``render`` makes it Markdown)."""
    base, copy = f"{prefix}_base", f"{prefix}_run"
    try:
        return _run(cluster, s, base, copy, log)
    finally:
        cluster.drop(copy, base)


def _run(cluster: Cluster, s: Settings, base: str, copy: str, log: Any) -> dict[str, Any]:
    load_before = os.getloadavg()
    data = generate(cluster, base, s.users, s.ledger_rows)
    log(f"data: {data.ledger_rows} ledger rows, {data.users} users, {data.affected_rows} affected rows "
        f"(generated in {data.seconds:.1f}s)")
    affected, unaffected = groups_of_users(data.url, s.sample_users)
    eng = sa.create_engine(data.url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        n_aff_users = int(c.exec_driver_sql(
            'select count(distinct "userId") from token_transactions where source = \'voucher_redemption\' and '
            "\"createdAt\" >= '2025-12-01' and \"createdAt\" < '2025-12-03'").scalar_one())
    eng.dispose()

    modes: list[tuple[str, str]] = [("no reversal", "-"), ("raw SQL", "start")]
    notes: list[str] = []
    runbook_modes = ["runbook single"]
    if online_available():
        runbook_modes.append("runbook online")
    else:
        notes.append("runbook online: skipped — token-reversal has no 'execution' parameter yet")
        log("note: " + notes[-1])
    ways = ["lock", "start"] if s.affected_from == "both" else [s.affected_from]
    modes += [(m, w) for m in runbook_modes for w in ways]

    results: list[ModeResult] = []
    for mode, way in modes:
        url = cluster.fresh_copy(copy, base)
        r = run_mode(url, mode, s, affected, unaffected, way)
        results.append(r)
        log(f"{mode} (affected from {r.affected_from}): {r.outcome}, {r.reversal_s:.2f}s, "
            f"{r.transactions} app transactions")
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_version(),
        "postgres": cluster.describe(),
        "data": {"ledger_rows": data.ledger_rows, "users": data.users, "affected_rows": data.affected_rows,
                 "affected_users": n_aff_users},
        "settings": asdict(s),
        "notes": notes,
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],  # 1-min, before and after
        "modes": [asdict(r) for r in results],
    }


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return "–" if v != v else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")  # v != v: NaN, no transaction


def render(report: dict[str, Any]) -> str:
    s, d = report["settings"], report["data"]
    lines = [
        "# Application latency during a token reversal",
        "",
        f"- date: {report['date']}",
        f"- machine: {report['machine']}",
        f"- PostgreSQL: {report['postgres']}",
        f"- code: {report['code']}",
        f"- machine load (1-min load average, other work included) before / after: "
        f"{report['load_average'][0]:g} / {report['load_average'][1]:g}",
        f"- data: {d['ledger_rows']:,} ledger rows, {d['users']:,} users; the reversal touches {d['affected_rows']:,} "
        f"ledger rows of {d['affected_users']:,} users (bench_token_reversal's data, seed_bulk)",
        f"- application load: {s['workers']} worker processes (one connection each, application_name {APP_NAME}), "
        f"{s['rate']:g} transactions/s each on a fixed schedule; "
        + ("one worker alternating affected and unaffected users" if s["workers"] == 1 else
           f"{s['workers'] // 2} for affected users, {s['workers'] - s['workers'] // 2} for unaffected ones")
        + f"; kinds redeem:spend:regenerate = {':'.join(map(str, KIND_WEIGHTS))}; users drawn from up to "
        f"{s['sample_users']:,} per group",
        f"- load from {s['lead_s']:g} s before the reversal to {s['tail_s']:g} s after it; the reference "
        f"(no reversal) runs {s['idle_s']:g} s; online mode: batch_users {s['batch_users']}, "
        f"batch_pause {s['batch_pause']}",
        "- figures cover the transactions overlapping the reversal (the reference: its whole window). "
        "'ms' columns: the transaction's own time (BEGIN to COMMIT); 'due' columns: from the time it was due on the "
        "worker's schedule (a request arriving while an earlier one is blocked waits too). '> 1 s': transactions "
        "slower than one second. 'affected users written from': the load's start (after the review), or only once "
        "the runbook holds their row locks (single: all at once; online: batch by batch) — a single transaction's "
        "plan pins the affected balances, so an earlier write makes it refuse; online mode approves rows and "
        "decisions, not exact balances (see the script's docstring). Lock waits: pg_stat_activity "
        f"sampled every {SAMPLE_EVERY_S * 1e3:.0f} ms during the reversal (app-sim sessions waiting on a lock).",
    ]
    for n in report["notes"]:
        lines.append(f"- note: {n}")
    lines += ["", "## Reversal time per mode", "",
              "| mode | affected users written from | outcome | reversal s | app transactions | lock-wait samples "
              "(with waits / all) | most app sessions waiting |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for m in report["modes"]:
        lw = m["lock_waits"] or {"samples": 0, "samples_with_waits": 0, "max_waiting_sessions": 0, "wait_events": []}
        ev = f" ({', '.join(lw['wait_events'])})" if lw["wait_events"] else ""
        secs = "–" if m["mode"] == "no reversal" or m["reversal_s"] != m["reversal_s"] else f"{m['reversal_s']:.2f}"
        lines.append(f"| {m['mode']} | {m['affected_from']} | {m['outcome']} | {secs} | {m['transactions']} | "
                     f"{lw['samples_with_waits']} / {lw['samples']} | {lw['max_waiting_sessions']}{ev} |")
    for m in report["modes"]:
        title = m["mode"] + ("" if m["mode"] == "no reversal" else f", affected users written from {m['affected_from']}")
        if not m["rows"]:
            continue  # no load ran (the review failed): the first table says why
        secs = "" if m["mode"] == "no reversal" else f" — reversal {m['reversal_s']:.2f} s, {m['outcome']}"
        lines += ["", f"## {title}{secs}", "",
                  "| users | kind | n | errors | p50 ms | p95 ms | p99 ms | max ms | > 1 s | due p99 ms | due max ms "
                  "| due > 1 s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in m["rows"]:
            k = f"**{r['kind']}**" if r["kind"] == "all" else r["kind"]
            lines.append(f"| {r['group']} | {k} | {r['n']} | {r['errors']} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
                         f"{_ms(r['p99_ms'])} | {_ms(r['max_ms'])} | {r['over_1s']} | {_ms(r['due_p99_ms'])} | "
                         f"{_ms(r['due_max_ms'])} | {r['due_over_1s']} |")
        if m["detail"]:
            lines += ["", f"online batches: {m['detail']}"]
        if m["errors"]:
            lines += ["", "application errors: " + "; ".join(m["errors"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    d = Settings()
    ap.add_argument("--users", type=int, default=d.users)
    ap.add_argument("--ledger-rows", type=int, default=d.ledger_rows)
    ap.add_argument("--workers", type=int, default=d.workers, help="application worker processes")
    ap.add_argument("--rate", type=float, default=d.rate, help="transactions per second per worker")
    ap.add_argument("--lead", type=float, default=d.lead_s, help="seconds of load before the reversal")
    ap.add_argument("--tail", type=float, default=d.tail_s, help="seconds of load after it")
    ap.add_argument("--idle", type=float, default=d.idle_s, help="seconds of the reference run (no reversal)")
    ap.add_argument("--batch-users", type=int, default=d.batch_users)
    ap.add_argument("--batch-pause", default=d.batch_pause)
    ap.add_argument("--affected-from", choices=("lock", "start", "both"), default=d.affected_from,
                    help="when the affected users' workers start in runbook modes (see the module docstring)")
    ap.add_argument("--pgdata", default=str(ROOT / ".runbook" / "pgdata-bench"),
                    help="the embedded server's data folder (unless BENCH_DATABASE_URL is set)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "app_latency.md"))
    a = ap.parse_args()
    s = Settings(users=a.users, ledger_rows=a.ledger_rows, workers=a.workers, rate=a.rate, lead_s=a.lead,
                 tail_s=a.tail, idle_s=a.idle, batch_users=a.batch_users, batch_pause=a.batch_pause,
                 affected_from=a.affected_from)
    if s.workers < 1:
        ap.error("--workers must be at least 1")
    cluster = Cluster(pgdata=a.pgdata)
    print(f"machine: {machine()}", flush=True)
    report = run(cluster, s, log=lambda m: print(m, flush=True))
    text = render(report)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
