"""The application keeps running while a runbook executes: no lost update, or a clean abort on lock timeout.
Two operators at once: one proceeds, the other is refused. Any change between review and execute aborts.

These trials run on the linked fixture (``tests/fixtures/prisma_linked``: a dedicated link column, grants whose sourceId is
the redemption's id, hence ``grant_link: redemption_id``); the crash trials run on the real application's shape."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from runbook_lib.errors import ApprovalError, ConcurrentRunError, LockTimeoutError
from runbook_lib.run import Run

from .support import (
    FAILED_MIGRATION,
    FAILED_SQL,
    NO_BACKUP,
    WINDOW,
    db_state,
    fail_a_migration,
    start_worker,
    wait_for,
)


class App:
    """What the voucher app does, each action one transaction like the app's own code."""

    def __init__(self, url: str, users: list[str], seed: int) -> None:
        self.eng = sa.create_engine(url, pool_size=2)
        self.users = users
        self.rng = random.Random(seed)
        self.done = 0
        self.errors: list[str] = []
        #: users whose balance differed from their ledger when a regenerate came to them: an update was lost
        #: before the regenerate (which rewrites the balance from the ledger) could hide it from the final check
        self.lost: list[str] = []

    def redeem(self, uid: str) -> None:
        code = f"APP{uuid.uuid4().hex[:10]}"
        with self.eng.begin() as c:
            vid = c.execute(sa.text(
                "insert into \"Voucher\"(id, code, \"tokenAmount\", \"currentUses\", \"updatedAt\") "
                "values (:id, :code, 25, 1, now()) returning id"), {"id": "v_" + code, "code": code}).scalar_one()
            rid = "r_" + code
            c.execute(sa.text('insert into "VoucherRedemption"(id, "voucherId", "userId") values (:r, :v, :u)'),
                      {"r": rid, "v": vid, "u": uid})
            bal = c.execute(sa.text('update "UserTokenBalance" set balance = balance + 25, "updatedAt" = now() '
                                    'where "userId" = :u returning balance'), {"u": uid}).scalar_one()
            c.execute(sa.text('insert into "TokenTransaction"(id, "userId", amount, type, source, "sourceId", '
                              '"balanceAfter", "createdAt") values (:id, :u, 25, \'CREDIT\', \'voucher_redemption\', '
                              ":r, :b, clock_timestamp())"), {"id": "t_" + code, "u": uid, "r": rid, "b": bal})

    def spend(self, uid: str) -> None:
        with self.eng.begin() as c:
            bal = c.execute(sa.text('update "UserTokenBalance" set balance = balance - 3, "updatedAt" = now() '
                                    'where "userId" = :u returning balance'), {"u": uid}).scalar_one()
            c.execute(sa.text('insert into "TokenTransaction"(id, "userId", amount, type, source, "balanceAfter", '
                              '"createdAt") values (:id, :u, -3, \'DEBIT\', \'spend\', :b, clock_timestamp())'),
                      {"id": "s_" + uuid.uuid4().hex, "u": uid, "b": bal})

    def regenerate(self, uid: str) -> None:
        with self.eng.begin() as c:  # the app's "recompute balance from ledger" job, row-locked like the app
            c.execute(sa.text('select 1 from "UserTokenBalance" where "userId" = :u for update'), {"u": uid})
            bal, ledger = c.execute(sa.text(
                'select balance, (select coalesce(sum(amount), 0) from "TokenTransaction" t where t."userId" = :u) '
                'from "UserTokenBalance" where "userId" = :u'), {"u": uid}).one()
            if bal != ledger:
                self.lost.append(f"{uid}: balance {bal}, ledger {ledger}")
            c.execute(sa.text('update "UserTokenBalance" b set balance = (select coalesce(sum(amount), 0) from '
                              '"TokenTransaction" t where t."userId" = b."userId") where "userId" = :u'), {"u": uid})

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            uid = self.rng.choice(self.users)
            action = self.rng.choice([self.redeem, self.spend, self.spend, self.regenerate])
            try:
                action(uid)
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(f"{action.__name__}: {exc}")


def lost_updates(url: str) -> int:
    """Users whose balance is not the sum of their ledger: an update was lost somewhere."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        n = c.exec_driver_sql(
            'select count(*) from "UserTokenBalance" b left join (select "userId", sum(amount) s from '
            '"TokenTransaction" group by 1) l on l."userId" = b."userId" where b.balance <> coalesce(l.s, 0)'
        ).scalar_one()
    eng.dispose()
    return int(n)


def affected_users(url: str) -> list[str]:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        users = [r[0] for r in c.exec_driver_sql(
            "select distinct \"userId\" from \"TokenTransaction\" where source = 'voucher_redemption' and "
            "\"createdAt\" >= '2025-12-01' and \"createdAt\" < '2025-12-03' order by 1")]
    eng.dispose()
    return users


def run_with_app(url: str, procedure: str, params: dict, hold: float, app_seconds: float, seed: int,
                 tmp_path, figures) -> tuple[int, App]:
    """Execute in a worker that pauses ``hold`` s with its locks held, while app threads keep writing."""
    users = affected_users(url)[:40] + [f"user_{i:04d}" for i in range(250, 300)]
    apps = [App(url, users, seed + i) for i in range(3)]
    marker = tmp_path / f"app-marker-{seed}"
    worker = start_worker(url, procedure, params, {"RUNBOOK_FAULT": f"after_lock:sleep:{hold}",
                                                   "RUNBOOK_FAULT_MARKER": str(marker)})
    assert wait_for(marker, worker) is not None, worker.stderr.read() if worker.stderr else ""
    threads = [threading.Thread(target=a.run, args=(app_seconds,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-2000:]
    for a in apps:
        a.eng.dispose()
    lost = lost_updates(url) + sum(len(a.lost) for a in apps)
    figures["trials"] += 1
    figures["lost_updates"] += lost
    assert sum(a.done for a in apps) > 0 and [e for a in apps for e in a.errors] == []
    return lost, apps[0]


def test_app_writes_during_execute_lose_nothing(linked_incident_db, tmp_path, figures):
    lost, app = run_with_app(linked_incident_db, "token-reversal", {**WINDOW}, hold=2, app_seconds=4, seed=1,
                             tmp_path=tmp_path, figures=figures)
    assert lost == 0
    assert app.errors == [] and app.done > 0
    eng = sa.create_engine(linked_incident_db, poolclass=sa.pool.NullPool)
    with eng.connect() as c:  # the runbook's reversals all landed
        left = c.exec_driver_sql(
            "select count(*) from \"TokenTransaction\" t where source = 'voucher_redemption' and \"createdAt\" >= "
            "'2025-12-01' and \"createdAt\" < '2025-12-03' and not exists (select 1 from \"TokenTransaction\" r "
            'where r."reversalOfId" = t.id)').scalar_one()
    eng.dispose()
    assert left == 0


@pytest.mark.slow
@pytest.mark.parametrize("procedure,params", [
    ("token-reversal", {**WINDOW, "ledger_mode": "delete"}),
    ("partial-rollback", {"all_vouchers": True, "grant_link": "redemption_id"}),
    ("token-reversal", {**WINDOW, "negative_policy": "clamp"}),
])
def test_app_writes_during_execute_long(linked_incident_db, tmp_path, figures, procedure, params):
    lost, app = run_with_app(linked_incident_db, procedure, params, hold=5, app_seconds=10, seed=7, tmp_path=tmp_path,
                             figures=figures)
    assert lost == 0 and app.errors == []


def test_lock_held_by_the_app_aborts_cleanly_on_lock_timeout(linked_incident_db, figures):
    import os

    os.environ["DATABASE_URL"] = linked_incident_db
    try:
        plan = Run("token-reversal", WINDOW).review()
        uid = affected_users(linked_incident_db)[0]
        before = db_state(linked_incident_db)
        eng = sa.create_engine(linked_incident_db, poolclass=sa.pool.NullPool)
        with eng.begin() as app:  # the app holds one affected balance row for longer than lock_timeout
            app.execute(sa.text('select 1 from "UserTokenBalance" where "userId" = :u for update'), {"u": uid})
            with pytest.raises(LockTimeoutError, match="lock_timeout"):
                Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan.plan_id,
                                       "lock_timeout": "300ms"}).execute()
        eng.dispose()
        assert db_state(linked_incident_db) == before
        figures["trials"] += 1
        figures["faults_injected"] += 1
    finally:
        os.environ.pop("DATABASE_URL", None)


def test_two_operators_one_proceeds_the_other_is_refused(linked_incident_db, tmp_path, figures, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", linked_incident_db)
    plan = Run("token-reversal", WINDOW).review()
    marker = tmp_path / "op-a"
    a = start_worker(linked_incident_db, "token-reversal", dict(WINDOW), {"RUNBOOK_FAULT": "after_lock:sleep:3",
                                                                  "RUNBOOK_FAULT_MARKER": str(marker)})
    assert wait_for(marker, a) is not None
    with pytest.raises(ConcurrentRunError, match="another operator"):
        Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan.plan_id,
                               "backup_override_reason": NO_BACKUP}).execute()
    _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err[-2000:]
    figures["trials"] += 1
    # afterwards the second operator's approved plan is stale: it is applied already, nothing to do
    again = Run("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert again is not None and not again.changed


@pytest.mark.slow
def test_two_operators_through_the_cli_the_second_gets_exit_10(linked_incident_db, tmp_path, figures, monkeypatch, capfd):
    """The same refusal end to end: one error line naming the other operator, exit 10, its run archived."""
    from runbook_lib.cli import main

    monkeypatch.setenv("DATABASE_URL", linked_incident_db)
    monkeypatch.chdir(tmp_path)
    cli_window = ["-p", "since", WINDOW["since"], "-p", "until", WINDOW["until"], "-p", "backup_override_reason",
                  NO_BACKUP, "--incident", "TWO", "--no-progress"]
    assert main(["run", "token-reversal", *cli_window]) == 0  # the review the execute approves, in its incident
    plan_id = next(line.split()[-1] for line in capfd.readouterr().out.splitlines() if line.startswith("plan id:"))
    marker = tmp_path / "op-a"
    a = start_worker(linked_incident_db, "token-reversal", dict(WINDOW), {"RUNBOOK_FAULT": "after_lock:sleep:25",
                                                                  "RUNBOOK_FAULT_MARKER": str(marker)})
    try:
        assert wait_for(marker, a) is not None
        before = db_state(linked_incident_db)
        status = main(["run", "token-reversal", *cli_window, "--execute", "--approve", plan_id])
        err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert status == 10, err
        assert len(err) == 1 and err[0].startswith("error:") and "another operator" in err[0], err
        assert db_state(linked_incident_db) == before  # operator A still holds its uncommitted transaction
        runs = sorted((tmp_path / "incidents" / "TWO").glob("*_token-reversal_execute"))
        manifest = json.loads((runs[0] / "manifest.json").read_text())
        assert len(runs) == 1 and manifest["status"] == "aborted" and manifest["error"]["exit_code"] == 10
    finally:
        _, out_err = a.communicate(timeout=180)
    assert a.returncode == 0, out_err[-2000:]
    figures["trials"] += 1


def _grant_in_window(c: sa.engine.Connection) -> None:
    c.exec_driver_sql("insert into \"TokenTransaction\"(id, \"userId\", amount, type, source, \"createdAt\") "
                      "values ('late_grant', 'user_0002', 40, 'CREDIT', 'voucher_redemption', '2025-12-02 10:00')")
    c.exec_driver_sql("update \"UserTokenBalance\" set balance = balance + 40 where \"userId\" = 'user_0002'")


def _spend_by_affected(c: sa.engine.Connection) -> None:
    uid = c.exec_driver_sql("select \"userId\" from \"TokenTransaction\" where source = 'voucher_redemption' and "
                            "\"createdAt\" >= '2025-12-01' and \"createdAt\" < '2025-12-03' limit 1").scalar_one()
    c.execute(sa.text('update "UserTokenBalance" set balance = balance - 1 where "userId" = :u'), {"u": uid})


def _reversed_elsewhere(c: sa.engine.Connection) -> None:
    c.exec_driver_sql("insert into \"TokenTransaction\"(id, \"userId\", amount, type, source, \"reversalOfId\") "
                      "select 'manual_' || id, \"userId\", -amount, 'REVERSAL', 'manual', id from \"TokenTransaction\" "
                      "where source = 'voucher_redemption' and \"createdAt\" >= '2025-12-01' order by id limit 1")


def _grant_deleted(c: sa.engine.Connection) -> None:
    c.exec_driver_sql("delete from \"TokenTransaction\" where id = (select min(id) from \"TokenTransaction\" where "
                      "source = 'voucher_redemption' and \"createdAt\" >= '2025-12-01' and \"createdAt\" < '2025-12-03')")


def _amount_changed(c: sa.engine.Connection) -> None:
    c.exec_driver_sql("update \"TokenTransaction\" set amount = amount + 1 where id = (select max(id) from "
                      "\"TokenTransaction\" where source = 'voucher_redemption' and \"createdAt\" >= '2025-12-01' "
                      "and \"createdAt\" < '2025-12-03')")


def _new_redemption(c: sa.engine.Connection) -> None:
    c.exec_driver_sql("insert into \"VoucherRedemption\"(id, \"voucherId\", \"userId\") values ('r_late', "
                      "'v_unused5', 'user_0299')")
    c.exec_driver_sql("update \"Voucher\" set \"currentUses\" = \"currentUses\" + 1 where id = 'v_unused5'")


def _depleted_voucher_disabled(c: sa.engine.Connection) -> None:
    """An admin disables the depleted voucher the rollback would reactivate."""
    c.exec_driver_sql("update \"Voucher\" set status = 'DISABLED' where code = 'LIMITED500'")


def _grant_of_the_voucher_changed(c: sa.engine.Connection) -> None:
    c.exec_driver_sql("update \"TokenTransaction\" set amount = amount + 1 where id = (select min(t.id) from "
                      "\"TokenTransaction\" t join \"VoucherRedemption\" r on r.id = t.\"sourceId\" "
                      "where r.\"voucherId\" = 'v_limited500')")


def _redemption_removed(c: sa.engine.Connection) -> None:
    c.exec_driver_sql("delete from \"VoucherRedemption\" where id = (select min(id) from \"VoucherRedemption\")")


@pytest.mark.parametrize(("procedure", "params", "change"), [
    ("token-reversal", WINDOW, _grant_in_window),
    ("token-reversal", WINDOW, _spend_by_affected),
    ("token-reversal", WINDOW, _reversed_elsewhere),
    ("token-reversal", WINDOW, _grant_deleted),
    ("token-reversal", WINDOW, _amount_changed),
    ("partial-rollback", {"all_vouchers": True, "grant_link": "redemption_id"}, _new_redemption),
    ("partial-rollback", {"all_vouchers": True, "grant_link": "redemption_id"}, _spend_by_affected),
    ("partial-rollback", {"all_vouchers": True, "grant_link": "redemption_id"}, _depleted_voucher_disabled),
    ("partial-rollback", {"all_vouchers": True, "grant_link": "redemption_id"}, _redemption_removed),
    ("partial-rollback", {"voucher_codes": ["LIMITED500"], "grant_link": "redemption_id"}, _grant_of_the_voucher_changed),
    ("full-rollback", {"ledger_policy": "reverse", "prisma_side": False}, _grant_in_window),
    ("full-rollback", {"ledger_policy": "reverse", "prisma_side": False}, _spend_by_affected),
    ("full-rollback", {"ledger_policy": "reverse", "prisma_side": False}, _new_redemption),
], ids=lambda x: getattr(x, "__name__", None) or (x if isinstance(x, str) else None))
def test_plan_drift_aborts(linked_incident_db, monkeypatch, figures, procedure, params, change):
    monkeypatch.setenv("DATABASE_URL", linked_incident_db)
    plan = Run(procedure, params).review()
    eng = sa.create_engine(linked_incident_db, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        change(c)
    eng.dispose()
    before = db_state(linked_incident_db)
    with pytest.raises(ApprovalError, match="plan changed"):
        Run(procedure, {**params, "mode": "execute", "approved_plan": plan.plan_id,
                        "backup_override_reason": NO_BACKUP}).execute()
    assert db_state(linked_incident_db) == before
    figures["trials"] += 1
    figures["faults_injected"] += 1


def _backup_of(url: str, tmp_path) -> str:
    from runbook_lib import backups, db

    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        info = db.server_info(c)
    folder = tmp_path / "backup"
    folder.mkdir()
    backups.take_backup(eng, url, "public", ["Voucher", "VoucherRedemption", "TokenTransaction", "UserTokenBalance"],
                        folder, info.fingerprint, info.database)
    eng.dispose()
    return str(folder)


@pytest.mark.parametrize("change", [_spend_by_affected, _new_redemption, _redemption_removed],
                         ids=lambda f: f.__name__)
def test_plan_drift_aborts_a_restore(linked_incident_db, monkeypatch, tmp_path, figures, change):
    """A restore's plan covers the live tables it overwrites: a write between review and execute aborts it."""
    monkeypatch.setenv("DATABASE_URL", linked_incident_db)
    params = {"backup": _backup_of(linked_incident_db, tmp_path)}
    eng = sa.create_engine(linked_incident_db, poolclass=sa.pool.NullPool)
    with eng.begin() as c:  # the damage the restore is to undo
        c.exec_driver_sql("update \"UserTokenBalance\" set balance = balance + 7 where \"userId\" <= 'user_0050'")
    plan = Run("restore", params).review()
    with eng.begin() as c:
        change(c)
    eng.dispose()
    before = db_state(linked_incident_db)
    with pytest.raises(ApprovalError, match="plan changed"):
        Run("restore", {**params, "mode": "execute", "approved_plan": plan.plan_id,
                        "backup_override_reason": NO_BACKUP}).execute()
    assert db_state(linked_incident_db) == before
    figures["trials"] += 1
    figures["faults_injected"] += 1


@pytest.mark.parametrize("change", ["step_applied_by_hand", "resolved_elsewhere_then_failed_again"])
def test_plan_drift_aborts_a_migration_recovery(linked_schema_db, monkeypatch, tmp_path, figures, change):
    """migration-recovery: the failed migration's steps or rows change between review and execute: abort."""
    import uuid as _uuid

    from conftest import MIGRATIONS

    from runbook_lib.prisma.migrate import checksum

    params = fail_a_migration(linked_schema_db, MIGRATIONS, tmp_path / "migrations")
    name = FAILED_MIGRATION
    eng = sa.create_engine(linked_schema_db, poolclass=sa.pool.NullPool)
    monkeypatch.setenv("DATABASE_URL", linked_schema_db)
    plan = Run("migration-recovery", params).review()
    with eng.begin() as c:
        if change == "step_applied_by_hand":
            c.exec_driver_sql('CREATE TABLE "CampaignStat" ("id" TEXT NOT NULL)')
        else:  # someone resolved it and a new attempt failed again: a second failed row
            c.exec_driver_sql("update \"_prisma_migrations\" set rolled_back_at = now() where migration_name = "
                              f"'{name}'")
            c.execute(sa.text('insert into "_prisma_migrations" (id, checksum, migration_name, logs, started_at, '
                              "applied_steps_count) values (:id, :c, :n, 'failed again', now(), 0)"),
                      {"id": str(_uuid.uuid4()), "c": checksum(FAILED_SQL), "n": name})
    eng.dispose()
    before = db_state(linked_schema_db)
    with pytest.raises(ApprovalError, match="plan changed"):
        Run("migration-recovery", {**params, "mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert db_state(linked_schema_db) == before
    figures["trials"] += 1
    figures["faults_injected"] += 1


def test_deadlock_with_the_app_is_a_clean_lock_abort(linked_incident_db, figures):
    """A deadlock between the runbook's transaction and an app transaction: exit 9 with a message saying so
    (it was an 'unexpected error', exit 1, with the driver's multi-line text), nothing written."""
    from runbook_lib import db

    before = db_state(linked_incident_db)
    app = sa.create_engine(linked_incident_db, poolclass=sa.pool.NullPool)
    runbook = db.make_engine(linked_incident_db)
    lock = 'select 1 from "UserTokenBalance" where "userId" = :u for update'
    with app.connect() as ac:
        tx = ac.begin()
        ac.exec_driver_sql("set local deadlock_timeout = '60s'")  # the runbook's session detects the cycle
        ac.execute(sa.text(lock), {"u": "user_0002"})

        def app_takes_the_other_row() -> None:
            time.sleep(0.5)
            try:
                ac.execute(sa.text(lock), {"u": "user_0001"})
            except sa.exc.DBAPIError:
                pass

        t = threading.Thread(target=app_takes_the_other_row)
        with pytest.raises(LockTimeoutError, match="deadlock"):
            with db.write_transaction(runbook, lock_timeout_ms=60_000, statement_timeout_ms=120_000) as c:
                c.exec_driver_sql("set local deadlock_timeout = '2s'")
                c.execute(sa.text(lock), {"u": "user_0001"})
                c.exec_driver_sql("update \"UserTokenBalance\" set balance = balance + 1 where \"userId\" = 'user_0001'")
                t.start()
                c.execute(sa.text(lock), {"u": "user_0002"})
        t.join()
        tx.rollback()
    app.dispose()
    runbook.dispose()
    assert db_state(linked_incident_db) == before
    figures["trials"] += 1
    figures["faults_injected"] += 1
