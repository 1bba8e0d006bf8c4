"""pg_dump / pg_restore discovery: version at least the server's, clear error, password never on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook_lib import pgtools
from runbook_lib.errors import ToolMissingError


def test_old_pg_dump_gives_the_clear_error(tmp_path):
    old = Path("/usr/lib/postgresql/15/bin")
    if not (old / "pg_dump").is_file():
        pytest.skip("no PostgreSQL 15 client programs on this machine")
    assert pgtools.find_tool("pg_dump", 15, [old]).major == 15
    with pytest.raises(ToolMissingError, match="pg_dump 18 or newer is needed.*available: 15"):
        pgtools.find_tool("pg_dump", 18, [old])
    with pytest.raises(ToolMissingError, match="none found"):
        pgtools.find_tool("pg_dump", 18, [tmp_path])


def test_password_never_on_the_command_line(monkeypatch):
    args, env = pgtools.libpq_env("postgresql+psycopg2://bob:S3cret-pw@db.internal:6543/app")
    assert "S3cret-pw" not in " ".join(args) and env["PGPASSWORD"] == "S3cret-pw"
    assert args == ["--dbname", "host='db.internal' port='6543' user='bob' dbname='app'"]


def fake_tool(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    p.chmod(0o755)
    return p


def test_injected_candidates_pick_the_newest_fitting_one(tmp_path):
    fake_tool(tmp_path / "a", "pg_dump", "15.4")
    fake_tool(tmp_path / "b", "pg_dump", "17.2")
    fake_tool(tmp_path / "c", "pg_dump", "18.1")
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    assert pgtools.find_tool("pg_dump", 17, dirs).version == "17.2"  # the server's own major first
    assert pgtools.find_tool("pg_dump", 16, dirs).version == "17.2"  # else the nearest newer one
    assert pgtools.find_tool("pg_dump", 15, dirs).version == "15.4"
    assert pgtools.find_tool("pg_dump", 15, dirs, at_least=17).version == "17.2"
    with pytest.raises(ToolMissingError, match=r"pg_dump 19 or newer is needed.*15\.4.*17\.2"):
        pgtools.find_tool("pg_dump", 19, dirs)


def test_default_candidates_fit_the_embedded_server(incident_db):
    import sqlalchemy as sa

    eng = sa.create_engine(incident_db, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        major = pgtools.server_major(c)
    eng.dispose()
    assert pgtools.find_tool("pg_dump", major).major >= major
    assert pgtools.find_tool("pg_restore", major).major >= major


def test_tool_failure_is_redacted(tmp_path):
    tool = pgtools.Tool("pg_dump", fake_tool(tmp_path, "pg_dump", "18.0"), 18, "18.0")
    failing = tmp_path / "fail"
    failing.write_text("#!/bin/sh\necho 'connection to postgresql://bob:S3cret-pw@h/db failed' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(Exception, match="exit 1") as exc:
        pgtools.run_tool(pgtools.Tool("pg_dump", failing, 18, "18.0"), "postgresql://bob:S3cret-pw@h:5432/db", [])
    assert "S3cret-pw" not in str(exc.value)
    assert tool.major == 18


def test_runbook_pg_bin_forces_the_folder(tmp_path, monkeypatch):
    fake_tool(tmp_path / "only", "pg_dump", "16.3")
    monkeypatch.setenv("RUNBOOK_PG_BIN", str(tmp_path / "only"))
    assert pgtools.candidate_dirs() == [tmp_path / "only"]
    assert pgtools.find_tool("pg_dump", 15).version == "16.3"
    with pytest.raises(ToolMissingError, match="RUNBOOK_PG_BIN"):
        pgtools.find_tool("pg_dump", 17)


def test_script_filter_drops_settings_an_older_server_rejects_but_never_data():
    script = [b"SET statement_timeout = 0;\n", b"SET transaction_timeout = 0;\n",
              b'COPY public."T" (id, note) FROM stdin;\n', b"SET transaction_timeout = 0;\n", b"\\.\n",
              b"SET transaction_timeout = 0;\n", b"CREATE TABLE x ();\n"]
    assert pgtools.unknown_settings(15) == ["transaction_timeout"] and pgtools.unknown_settings(17) == []
    out = list(pgtools.filter_script(script, ["transaction_timeout"]))
    assert out == [script[0], script[2], script[3], script[4], script[6]]
    assert list(pgtools.filter_script(script, [])) == script
    assert pgtools.dump_major("18.1") == 18 and pgtools.dump_major(None) == 0
