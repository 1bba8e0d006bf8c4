"""`runbook lab`: the embedded server and the demo database up, JupyterLab serving with DATABASE_URL, SIGTERM stops both."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from runbook_lib import lab

pytestmark = pytest.mark.notebook


def _lines(proc: subprocess.Popen[str], out: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put(line)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2) as r:
            return "version" in json.loads(r.read())
    except (OSError, ValueError):
        return False


def test_lab_serves_the_notebooks_on_the_demo_database_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["RUNBOOK_PGDATA"] = str(tmp_path / "pgdata")  # a server of its own, started and stopped by `runbook lab`
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "jupyter-runtime")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    port = lab.free_port(18888)
    exe = Path(sys.executable).parent / "runbook"
    proc = subprocess.Popen([str(exe), "lab", "--no-browser", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120  # the first start initializes the cluster and seeds the incident
        while not _answers(port):
            assert proc.poll() is None, "runbook lab exited early:\n" + "".join(seen) + "".join(lines.queue)
            assert time.monotonic() < deadline, "JupyterLab did not answer in time:\n" + "".join(lines.queue)
            time.sleep(0.5)
        while not lines.empty():
            seen.append(lines.get())
        out = "".join(seen)
        url = next(line.split("DATABASE_URL=", 1)[1].strip() for line in seen if "DATABASE_URL=" in line)
        assert url.startswith("postgresql") and url.split("?")[0].endswith("/voucher_demo"), out
        assert f"http://localhost:{port}/lab?token=" in out
        # the demo database exists and carries the seeded incident
        eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with eng.connect() as c:
            assert c.execute(sa.text("select count(*) from voucher_redemptions")).scalar_one() > 0
        eng.dispose()
        # the JupyterLab process (whose kernels inherit its environment) has DATABASE_URL
        jupyter = [p for p in psutil.Process(proc.pid).children(recursive=True) if "jupyter" in " ".join(p.cmdline())]
        assert jupyter and all(p.environ().get("DATABASE_URL") == url for p in jupyter)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in jupyter)
        assert not _answers(port)
        assert not (tmp_path / "pgdata" / "postmaster.pid").exists(), "the embedded PostgreSQL is still running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_no_browser_without_a_display(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cmd = lab.lab_command(9999, False, tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "jupyter", "lab"] and "--no-browser" in cmd
    assert cmd[cmd.index("--port") + 1] == "9999" and cmd[cmd.index("--notebook-dir") + 1] == str(tmp_path)
    monkeypatch.setenv("DISPLAY", ":0")
    assert "--no-browser" not in lab.lab_command(9999, False, tmp_path)
    assert "--no-browser" in lab.lab_command(9999, True, tmp_path)
