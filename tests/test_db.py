"""The database layer: read-only transactions cannot write, write transactions time out and roll back."""

from __future__ import annotations

import pytest

from runbook_lib import db
from runbook_lib.errors import ConcurrentRunError, LockTimeoutError, StatementTimeoutError, TargetError


@pytest.fixture
def users_db(fresh_db, engine_for) -> str:
    """A fresh database with one table of its own (independent of the demo schema's table names)."""
    with engine_for(fresh_db).begin() as c:
        c.exec_driver_sql('create table "User" (id text primary key, email text, name text)')
    return fresh_db


def test_read_only_refuses_writes(users_db, engine_for):
    eng = engine_for(users_db)
    with pytest.raises(TargetError, match="read-only"):
        with db.read_only(eng) as c:
            c.exec_driver_sql('insert into "User"(id, email) values (\'u\', \'e\')')
    with eng.connect() as c:
        assert c.exec_driver_sql('select count(*) from "User"').scalar() == 0


def test_write_transaction_rolls_back_on_error(users_db, engine_for):
    eng = engine_for(users_db)
    with pytest.raises(RuntimeError):
        with db.write_transaction(eng, lock_timeout_ms=1000, statement_timeout_ms=5000) as c:
            c.exec_driver_sql('insert into "User"(id, email) values (\'u\', \'e\')')
            raise RuntimeError("boom")
    with eng.connect() as c:
        assert c.exec_driver_sql('select count(*) from "User"').scalar() == 0


def test_lock_timeout_is_translated(users_db, engine_for):
    eng = engine_for(users_db)
    with eng.begin() as c:
        c.exec_driver_sql('insert into "User"(id, email) values (\'u\', \'e\')')
    holder = eng.connect()
    tx = holder.begin()
    holder.exec_driver_sql('select * from "User" for update')
    try:
        with pytest.raises(LockTimeoutError):
            with db.write_transaction(eng, lock_timeout_ms=200, statement_timeout_ms=5000) as c:
                c.exec_driver_sql('update "User" set name = \'x\'')
    finally:
        tx.rollback()
        holder.close()


def test_exclusive_key_refuses_second_operator(users_db, engine_for):
    eng = engine_for(users_db)
    with db.write_transaction(eng, lock_timeout_ms=500, statement_timeout_ms=5000, exclusive_key="token-reversal"):
        with pytest.raises(ConcurrentRunError, match="another operator"):
            with db.write_transaction(eng, lock_timeout_ms=500, statement_timeout_ms=5000,
                                      exclusive_key="token-reversal"):
                pass


def test_unreachable_and_missing_url(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(TargetError, match="DATABASE_URL is not set"):
        db.database_url()
    eng = db.make_engine("postgresql+psycopg2://nobody:hunter22@127.0.0.1:1/x")
    with pytest.raises(TargetError) as err:
        with db.connect(eng):
            pass
    assert "hunter22" not in str(err.value)


def test_server_info(fresh_db, engine_for):
    with db.read_only(engine_for(fresh_db)) as c:
        info = db.server_info(c)
    assert info.database.startswith("rb_test_")
    assert len(info.fingerprint) == 16
    assert info.server_version


def test_duration_parsing():
    assert db.duration_ms("5s", "x") == 5000
    assert db.duration_ms("250ms", "x") == 250
    assert db.duration_ms("2min", "x") == 120000
    with pytest.raises(Exception, match="not a duration"):
        db.duration_ms("soon", "x")


def test_statement_timeout_has_its_own_error_and_exit(fresh_db, engine_for):
    """A slow statement is not a lock wait: its own error (exit 16) says to raise the timeout or narrow the scope."""
    eng = engine_for(fresh_db)
    with pytest.raises(StatementTimeoutError, match="statement_timeout") as info:
        with db.write_transaction(eng, lock_timeout_ms=1000, statement_timeout_ms=100) as c:
            c.exec_driver_sql("select pg_sleep(2)")
    assert info.value.exit_code == 16 and "narrow the scope" in str(info.value)
