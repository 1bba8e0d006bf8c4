"""Every connection form Prisma documents: the driver and pg_dump / pg_restore / psql get the same target.

Unit tests of the parsing for each form, then integration tests on the real server through its Unix socket
(``?host=/socket/dir``): backup and restore, the password from the URL, ``PGPASSWORD`` or a ``.pgpass`` file,
``sslmode=disable``, Prisma-only parameters, ``?schema=``; no password in any captured output.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from runbook_lib import backups, db, pgtools
from runbook_lib.errors import TargetError

PW = "Conn-Pw-7f3a!x"  # a fake password; every test scans its outputs for it


# ------------------------------------------------------------------------------------------------- parsing
def test_prisma_url_with_schema_and_prisma_only_parameters():
    url = ("postgresql://bob:S3cret@db.internal:6543/app?schema=billing&connection_limit=5&pool_timeout=10"
           "&pgbouncer=true&statement_cache_size=0&socket_timeout=5&sslaccept=strict")
    assert db.libpq_params(url) == {"host": "db.internal", "port": "6543", "user": "bob", "password": "S3cret",
                                    "dbname": "app"}
    assert db.url_schema(url) == "billing"
    assert db.normalize_url(url) == "postgresql+psycopg2://bob:S3cret@db.internal:6543/app"
    assert db.url_schema("postgresql://bob@h/app") is None
    assert db.libpq_params("postgres://bob@h/app")["host"] == "h"  # Prisma accepts postgres:// too


def test_socket_form_host_parameter_overrides_the_url_host():
    params = db.libpq_params("postgresql://bob@localhost/app?host=/var/run/postgresql")
    assert params == {"host": "/var/run/postgresql", "user": "bob", "dbname": "app"}
    args, _ = pgtools.libpq_env("postgresql://bob@localhost:5433/app?host=/var/run/postgresql")
    assert args == ["--dbname", "host='/var/run/postgresql' port='5433' user='bob' dbname='app'"]
    assert "localhost" not in " ".join(args)


def test_ssl_and_libpq_parameters_reach_driver_and_tools_alike():
    url = ("postgresql://bob@db:5432/app?sslmode=verify-full&sslcert=/c/client.crt&sslkey=/c/client.key"
           "&sslrootcert=/c/root.crt&connect_timeout=7&application_name=ops&options=-c%20statement_timeout%3D5s")
    params = db.libpq_params(url)
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == "/c/root.crt"
    assert params["sslcert"] == "/c/client.crt" and params["sslkey"] == "/c/client.key"
    assert params["connect_timeout"] == "7" and params["application_name"] == "ops"
    assert params["options"] == "-c statement_timeout=5s"
    args, _ = pgtools.libpq_env(url)
    assert "sslmode='verify-full'" in args[1] and "options='-c statement_timeout=5s'" in args[1]
    for mode in db.SSLMODES:
        assert db.libpq_params(f"postgresql://h/app?sslmode={mode}")["sslmode"] == mode


def test_password_only_in_the_environment_and_conninfo_quoting():
    args, env = pgtools.libpq_env("postgresql://bob:p%40ss%27w@h/app")
    assert env["PGPASSWORD"] == "p@ss'w" and "p@ss" not in " ".join(args)
    assert db.conninfo({"user": "o'brien", "host": "a\\b", "password": "x"}) == r"user='o\'brien' host='a\\b'"
    _, env = pgtools.libpq_env("postgresql://bob@h/app")  # no password in the URL: libpq's own sources decide
    assert "DATABASE_URL" not in env


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://h/app?sslmode=required", "sslmode='required' is not one of"),
    ("postgresql://h/app?sslidentity=/id.p12", "sslcert and sslkey"),
    ("postgresql://h/app?colour=blue", "'colour', which neither libpq nor Prisma knows"),
    ("postgresql://h/app?schema=x;drop", "not a plain schema name"),
    ("mysql://h/app", "must be PostgreSQL"),
])
def test_bad_urls_are_one_line_target_errors(url, message, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(TargetError, match=message) as err:
        db.url_schema()
        db.database_url()
    assert "\n" not in str(err.value) and err.value.exit_code == 3


def test_engine_connects_with_exactly_the_libpq_params():
    eng = db.create_engine("postgresql://bob:pw@localhost/app?host=/sock&connection_limit=5&sslmode=disable",
                           application_name="runbook:x")
    seen: dict[str, object] = {}

    def spy(dialect, rec, cargs, cparams):  # runs after the engine's own hook
        seen.update(cparams)
        raise RuntimeError("stop before connecting")

    sa.event.listen(eng, "do_connect", spy)
    with pytest.raises(RuntimeError, match="stop before"):
        eng.connect()
    assert seen == {"host": "/sock", "user": "bob", "password": "pw", "dbname": "app", "sslmode": "disable",
                    "connect_timeout": "10", "application_name": "runbook:x"}


def test_prisma_schema_becomes_db_schema_unless_given(monkeypatch):
    from runbook_lib.run import Run

    monkeypatch.setenv("DATABASE_URL", "postgresql://bob@localhost/app?host=/nowhere&schema=billing")
    assert Run("backup", {}).params.db_schema == "billing"  # no connection is made by the constructor
    assert Run("backup", {"db_schema": "other"}).params.db_schema == "other"
    monkeypatch.setenv("DATABASE_URL", "postgresql://bob@localhost/app?host=/nowhere")
    assert Run("backup", {}).params.db_schema == "public"


# ------------------------------------------------------------------------------------------- integration
@dataclass
class Socket:
    folder: str
    port: str
    role: str
    password: str

    def url(self, database: str, *, password: bool = True, query: str = "") -> str:
        cred = f"{self.role}:{PW}" if password else self.role
        return f"postgresql://{cred}@localhost/{database}?host={self.folder}&port={self.port}" + query


@pytest.fixture
def socket(pg_server) -> Iterator[Socket]:
    """A password-authenticated superuser reachable through the server's Unix socket."""
    role = "rb_conn_test"  # one name: the embedded server's pg_hba.conf gains its line once, not once per test
    admin = pg_server.admin()
    with admin.connect() as c:
        folder = str(c.exec_driver_sql("show unix_socket_directories").scalar_one()).split(",")[0].strip()
        port = str(c.exec_driver_sql("show port").scalar_one())
    if not folder:
        pytest.skip("the test server has no Unix socket")
    if pg_server.embedded is not None:
        from runbook_lib import embedded

        embedded.ensure_password_role(pg_server.embedded, role, PW)
    else:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
            c.exec_driver_sql(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PW}'")
    admin.dispose()
    yield Socket(folder, port, role, PW)
    admin = pg_server.admin()
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
    admin.dispose()


def _make_tables(url: str, schema: str = "public") -> None:
    eng = db.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        c.exec_driver_sql(f"CREATE TABLE {schema}.parent (id int PRIMARY KEY, note text)")
        c.exec_driver_sql(f"CREATE TABLE {schema}.child (id int PRIMARY KEY, parent int REFERENCES {schema}.parent)")
        c.exec_driver_sql(f"INSERT INTO {schema}.parent SELECT g, 'note ' || g FROM generate_series(1, 50) g")
        c.exec_driver_sql(f"INSERT INTO {schema}.child SELECT g, g FROM generate_series(1, 50) g")
    eng.dispose()


def _backup(url: str, out: Path, schema: str = "public") -> dict[str, object]:
    eng = db.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with db.read_only(eng) as c:
            info = db.server_info(c)
        return backups.take_backup(eng, db.normalize_url(url), schema, ["parent", "child"], out, info.fingerprint,
                                   info.database)
    finally:
        eng.dispose()


def _sums(url: str, schema: str = "public") -> dict[str, dict[str, object]]:
    eng = db.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            return backups.table_checksums(c, schema, ["parent", "child"])
    finally:
        eng.dispose()


def _restore_into_new(pg_server, url_of, meta: dict, archive: Path, schema: str = "public") -> str:
    name = f"rb_conn_restore_{uuid.uuid4().hex[:8]}"
    pg_server.create(name)
    db.run_autocommit(url_of(name), f"DROP SCHEMA IF EXISTS {schema}")
    eng = db.create_engine(url_of(name), poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        major = pgtools.server_major(c)
    eng.dispose()
    dumped_by = pgtools.dump_major(meta["pg_dump"]["version"])  # type: ignore[index]
    backups.restore_archive(db.normalize_url(url_of(name)), archive, major, dumped_by=dumped_by)
    assert backups.restore_post_data(db.normalize_url(url_of(name)), archive, major, dumped_by) == 0
    return name


def _no_password_anywhere(capfd, *folders: Path) -> None:
    out, err = capfd.readouterr()
    assert PW not in out and PW not in err
    for folder in folders:
        for f in folder.rglob("*"):
            if f.is_file():
                assert PW.encode() not in f.read_bytes(), f


def test_backup_and_restore_through_the_socket_form(socket, fresh_db, pg_server, tmp_path, capfd):
    """``postgresql://user:pw@localhost/db?host=/socket/dir``: the tools used to get 'localhost' and fail."""
    database = sa.engine.make_url(fresh_db).database
    url = socket.url(database, query="&connection_limit=5&pool_timeout=10&sslmode=disable")
    _make_tables(url)
    meta = _backup(url, tmp_path)
    assert meta["tables"] == _sums(url)
    name = _restore_into_new(pg_server, lambda d: socket.url(d, query="&sslmode=disable"), meta,
                             tmp_path / backups.ARCHIVE)
    try:
        assert _sums(socket.url(name)) == meta["tables"]
    finally:
        pg_server.drop(name)
    _no_password_anywhere(capfd, tmp_path)


@pytest.mark.parametrize("source", ["PGPASSWORD", "PGPASSFILE"])
def test_password_from_the_environment_or_pgpass(source, socket, fresh_db, pg_server, tmp_path, monkeypatch,
                                                 capfd):
    database = sa.engine.make_url(fresh_db).database
    monkeypatch.delenv("PGPASSWORD", raising=False)
    if source == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", PW)
    else:
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"*:*:*:{socket.role}:{PW}\n")
        passfile.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(passfile))
    url = socket.url(database, password=False)
    assert "password" not in db.libpq_params(url)
    _make_tables(url)
    out = tmp_path / "backup"
    out.mkdir()
    meta = _backup(url, out)
    name = _restore_into_new(pg_server, lambda d: socket.url(d, password=False), meta, out / backups.ARCHIVE)
    try:
        assert _sums(socket.url(name, password=False)) == meta["tables"]
    finally:
        pg_server.drop(name)
    _no_password_anywhere(capfd, out)


def test_wrong_password_is_refused_alike_and_never_shown(socket, fresh_db, tmp_path, monkeypatch, capfd):
    database = sa.engine.make_url(fresh_db).database
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    bad = f"postgresql://{socket.role}:Wrong-{PW}@localhost/{database}?host={socket.folder}&port={socket.port}"
    with pytest.raises(TargetError, match="authentication failed") as err:
        with db.connect(db.make_engine(bad)):
            pass
    assert PW not in str(err.value)
    with pytest.raises(TargetError, match="pg_dump cannot connect") as err2:
        pgtools.run_tool(pgtools.find_tool("pg_dump", 0), db.normalize_url(bad), ["--schema-only"])
    assert "password authentication failed" in str(err2.value) and PW not in str(err2.value)
    assert err2.value.exit_code == 3
    _no_password_anywhere(capfd)


def test_libpq_options_reach_the_driver_and_psql_alike(socket, fresh_db):
    database = sa.engine.make_url(fresh_db).database
    url = socket.url(database, query="&options=-c%20statement_timeout%3D4321&application_name=probe")
    eng = db.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        major = pgtools.server_major(c)
        assert c.exec_driver_sql("show statement_timeout").scalar_one() == "4321ms"
    eng.dispose()
    psql = pgtools.find_tool("psql", major)
    shown = pgtools.run_tool(psql, db.normalize_url(url), ["-XAt", "-c", "show statement_timeout",
                                                           "-c", "select current_setting('application_name')"])
    assert shown.split() == ["4321ms", "probe"]


def test_pgoptions_sets_the_runbooks_session_settings(fresh_db, monkeypatch):
    """``PGOPTIONS`` (libpq's environment variable, README "Running a procedure") reaches every session the runbook
    opens, read-only and writing: the driver gets exactly the URL's libpq settings, and libpq adds the environment's.
    A run's own timeouts stay its own: the write transaction sets them with SET LOCAL."""
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=77MB -c statement_timeout=1234")
    eng = db.create_engine(fresh_db, poolclass=sa.pool.NullPool)
    with db.read_only(eng) as c:
        assert c.exec_driver_sql("show work_mem").scalar_one() == "77MB"
    with db.write_transaction(eng, lock_timeout_ms=2000, statement_timeout_ms=9000) as c:
        assert c.exec_driver_sql("show work_mem").scalar_one() == "77MB"
        assert c.exec_driver_sql("show statement_timeout").scalar_one() == "9s"
    eng.dispose()


def test_prisma_schema_is_the_schema_backed_up(socket, fresh_db, pg_server, tmp_path, monkeypatch, capfd):
    """``?schema=billing``: the run's db_schema, the tables dumped and restored are those of that schema."""
    from runbook_lib.run import Run

    database = sa.engine.make_url(fresh_db).database
    url = socket.url(database, query="&schema=billing")
    _make_tables(url, "billing")
    monkeypatch.setenv("DATABASE_URL", url)
    run = Run("backup", {})
    assert run.params.db_schema == "billing"
    meta = _backup(db.database_url(), tmp_path, run.params.db_schema)
    assert meta["schema"] == "billing" and meta["tables"]["parent"]["rows"] == 50  # type: ignore[index]
    name = _restore_into_new(pg_server, lambda d: socket.url(d, query="&schema=billing"), meta,
                             tmp_path / backups.ARCHIVE, "billing")
    try:
        assert _sums(socket.url(name), "billing") == meta["tables"]
    finally:
        pg_server.drop(name)
    assert "billing" in json.loads((tmp_path / backups.META).read_text())["schema"]
    _no_password_anywhere(capfd, tmp_path)


def test_restore_through_psql_when_only_a_newer_pg_restore_exists(socket, fresh_db, pg_server, tmp_path,
                                                                 monkeypatch):
    """The newest pg_restore available is forced (RUNBOOK_PG_BIN): on a pre-17 server its archive's
    ``SET transaction_timeout`` is dropped and psql restores it in one transaction; on 17+ pg_restore runs."""
    database = sa.engine.make_url(fresh_db).database
    url = socket.url(database)
    _make_tables(url)
    meta = _backup(url, tmp_path)
    newest = max((pgtools.find_tool("pg_restore", 0, [d]) for d in pgtools.candidate_dirs()
                  if (d / "pg_restore").is_file() and (d / "psql").is_file()), key=lambda t: t.major)
    monkeypatch.setenv("RUNBOOK_PG_BIN", str(newest.path.parent))
    name = _restore_into_new(pg_server, socket.url, meta, tmp_path / backups.ARCHIVE)
    try:
        assert _sums(socket.url(name)) == meta["tables"]
        # a failing statement stops the whole restore: nothing is left half-restored
        db.run_autocommit(socket.url(name), "DROP TABLE child", "DROP TABLE parent",
                          "CREATE TABLE child (id int)")  # pre-data will collide with this
        eng = db.create_engine(socket.url(name), poolclass=sa.pool.NullPool)
        with eng.connect() as c:
            major = pgtools.server_major(c)
        eng.dispose()
        with pytest.raises(Exception, match="already exists"):
            backups.restore_archive(db.normalize_url(socket.url(name)), tmp_path / backups.ARCHIVE, major,
                                    dumped_by=pgtools.dump_major(meta["pg_dump"]["version"]))  # type: ignore[index]
        eng = db.create_engine(socket.url(name), poolclass=sa.pool.NullPool)
        with eng.connect() as c:
            assert c.exec_driver_sql("select to_regclass('public.parent')").scalar() is None
        eng.dispose()
    finally:
        pg_server.drop(name)


def test_backup_procedure_through_the_socket_form_with_prisma_parameters(socket, linked_incident_db, tmp_path,
                                                                          monkeypatch, capfd):
    """The whole `backup` procedure (papermill, evidence) on ``postgresql://user@localhost/db?host=/socket/dir``
    with Prisma's parameters and the password from PGPASSWORD: it used to give pg_dump 'localhost'."""
    from runbook_lib.runner import run_procedure

    database = sa.engine.make_url(linked_incident_db).database
    monkeypatch.setenv("PGPASSWORD", PW)
    monkeypatch.setenv("DATABASE_URL", socket.url(database, password=False,
                                                  query="&schema=public&connection_limit=5&pgbouncer=false"))
    review = run_procedure("backup", {}, incident="SOCK", evidence_root=tmp_path, progress_bar=False)
    assert review.exit_code == 0, review.error
    done = run_procedure("backup", {"mode": "execute", "approved_plan": review.plan_id}, incident="SOCK",
                         evidence_root=tmp_path, progress_bar=False)
    assert done.exit_code == 0, done.error
    meta = json.loads((done.run_dir / backups.META).read_text())
    assert meta["pg_restore_list"]["ok"] and all(v["rows"] > 0 for v in meta["tables"].values())
    _no_password_anywhere(capfd, tmp_path)
