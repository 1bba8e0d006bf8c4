"""``runbook lab`` / ``make lab``: JupyterLab on the demo database, for exploring the notebooks by hand.

Starts (or reuses) the embedded PostgreSQL (``.runbook/pgdata``, ``RUNBOOK_PGDATA`` to change it), creates the
demo database with its seeded incident when it is missing (an existing one is kept unless ``reset``), then runs
``jupyter lab --notebook-dir notebooks`` as a child process with ``DATABASE_URL`` in its environment, so every
kernel it starts reaches the demo database. The embedded server stays up while JupyterLab runs; Ctrl-C or
SIGTERM stops JupyterLab, then the server (unless another process still uses it).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

from . import embedded
from .demo import DEMO_DB, ROOT, prepare_database
from .errors import ToolMissingError
from .redact import redact_text

DEFAULT_PORT = 8888


def has_display() -> bool:
    """Whether a browser can be opened here: Linux/BSD need an X11 or Wayland display; macOS/Windows have one."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def free_port(start: int = DEFAULT_PORT, tries: int = 100) -> int:
    """The first port from ``start`` nobody listens on (localhost), as Jupyter's own port retries would pick."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {start}..{start + tries - 1}")


def lab_command(port: int, no_browser: bool, notebook_dir: Path) -> list[str]:
    """The ``jupyter lab`` command line (the token comes through ``JUPYTER_TOKEN``, not the command line)."""
    cmd = [sys.executable, "-m", "jupyter", "lab", "--notebook-dir", str(notebook_dir), "--port", str(port),
           "--ServerApp.port_retries=0"]
    if no_browser or not has_display():
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # a container's root: Jupyter refuses without it
        cmd.append("--allow-root")
    return cmd


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM JupyterLab (it shuts its kernels down), SIGKILL it if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_lab(port: int | None = None, no_browser: bool = False, reset: bool = False,
            notebook_dir: Path = ROOT / "notebooks") -> int:
    """Run JupyterLab on the demo database until it exits, Ctrl-C or SIGTERM; returns the exit status."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops everything as Ctrl-C does
    try:
        return _run_lab(port, no_browser, reset, notebook_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_lab(port: int | None, no_browser: bool, reset: bool, notebook_dir: Path) -> int:
    import importlib.util

    if importlib.util.find_spec("jupyterlab") is None:
        raise ToolMissingError("JupyterLab is not installed (it comes with the lab extra): "
                               "pip install 'voucher-runbooks[lab]', or `make lab`")
    print(f"starting the embedded PostgreSQL (data in {embedded.pgdata_dir()}, reused by later runs)", flush=True)
    server = embedded.start()
    try:
        database_url = prepare_database(server, reset=reset)  # creates + seeds only when missing (or reset)
        port = port or free_port()
        token = secrets.token_hex(16)
        env = {**os.environ, "DATABASE_URL": database_url, "JUPYTER_TOKEN": token}
        cmd = lab_command(port, no_browser, notebook_dir)
        print(f"demo database {DEMO_DB} ready; JupyterLab and its kernels get (no password: trust over the socket)",
              flush=True)
        print(f"  DATABASE_URL={redact_text(database_url)}", flush=True)
        print(f"starting JupyterLab on the notebooks in {notebook_dir}; open", flush=True)
        print(f"  http://localhost:{port}/lab?token={token}", flush=True)
        print("Ctrl-C stops JupyterLab and the embedded PostgreSQL", flush=True)
        # its own session: a terminal Ctrl-C reaches only this process, which stops JupyterLab without its
        # "Shutdown this Jupyter server (y/[n])?" prompt
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            print("\nstopping JupyterLab", flush=True)
            _stop(proc)
            code = 0
        finally:
            if proc.poll() is None:  # pragma: no cover - another exception while waiting
                _stop(proc)
    finally:
        print("stopping the embedded PostgreSQL (unless another runbook process still uses it)", flush=True)
        server.cleanup()
    return code
