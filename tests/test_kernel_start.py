"""The runner starts the notebook's kernel itself, before papermill, and ends its process on every way out: a run
that succeeds, one whose notebook fails, one whose kernel dies, one interrupted (Ctrl-C); an execute refused at
approval starts none. The kernel's start (its quick exit, the notebooks' first imports) leaves no name behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from runbook_lib import kernel, runner
from runbook_lib.runner import run_procedure

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "notebooks"
WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
PARAMETERS = ('since = "2025-12-01T00:00:00Z"\nuntil = "2025-12-03T00:00:00Z"\nmode = "review"\n'
              "approved_plan = None\nevidence_dir = None")
pytestmark = pytest.mark.notebook


def children(pid: int | None = None) -> set[int]:
    """The processes whose parent is ``pid`` (default: this one), alive or ended but never waited for (zombies)."""
    pid = os.getpid() if pid is None else pid
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        if any(line.split() == ["PPid:", str(pid)] for line in status.splitlines()):
            found.add(int(proc.name))
    return found


def notebook(path: Path, *cells: str) -> Path:
    """A token-reversal notebook: the parameters cell, then ``cells``."""
    v4 = nbformat.v4
    params = v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]})
    nb = v4.new_notebook(cells=[params, *(v4.new_code_cell(c) for c in cells)],
                         metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path / "token_reversal.ipynb"))
    return path


@pytest.mark.parametrize(("fixture", "exit_code"), [("succeeds", 0), ("plain_exception", 1), ("kernel_dies", 17)])
def test_a_run_leaves_no_kernel_process_behind(fixture, exit_code, incident_db, target_env, tmp_path, monkeypatch):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    shutil.copy(FIXTURES / f"{fixture}.ipynb", nbdir / "token_reversal.ipynb")
    target_env(incident_db)
    monkeypatch.setenv("RUNBOOK_NOTEBOOKS", str(nbdir))
    before = children()
    out = run_procedure("token-reversal", WINDOW, incident="K", evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == exit_code, out.error
    assert children() - before == set(), "the kernel process outlived the run (or was never waited for)"
    assert (out.run_dir / "manifest.json").is_file()
    if fixture == "kernel_dies":
        assert "kernel died" in (out.error or "")


def test_an_interrupted_run_leaves_no_kernel_process_behind(incident_db, tmp_path):
    """Ctrl-C while a cell runs: the CLI shuts the kernel it started down (interrupt, then shutdown) and exits 130."""
    pid_file = tmp_path / "kernel.pid"
    nbdir = notebook(tmp_path / "nbs", "import os, pathlib, time\n"
                     f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\ntime.sleep(300)")
    env = {**os.environ, "DATABASE_URL": incident_db, "RUNBOOK_NOTEBOOKS": str(nbdir)}
    cli = subprocess.Popen([str(Path(sys.executable).parent / "runbook"), "run", "token-reversal", "-p", "since",
                            WINDOW["since"], "-p", "until", WINDOW["until"], "--no-progress", "--evidence-dir",
                            str(tmp_path / "ev")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            assert cli.poll() is None, cli.communicate()
            time.sleep(0.05)
        kernel_pid = int(pid_file.read_text())
        assert kernel_pid in children(cli.pid)
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 130 and err.strip() == "error: interrupted", err
    assert not Path(f"/proc/{kernel_pid}").exists(), "the kernel process outlived the interrupted run"


def test_a_refused_execute_starts_no_kernel(incident_db, target_env, tmp_path, monkeypatch):
    target_env(incident_db)
    before = children()
    started: list[object] = []
    real = kernel.manager_class

    def counted(log):
        started.append(log)
        return real(log)

    monkeypatch.setattr(kernel, "manager_class", counted)
    out = run_procedure("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": "f" * 24}, incident="R",
                        evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 6 and out.status == "aborted", out.error
    assert started == [] and children() - before == set()
    assert not (out.run_dir / runner.KERNEL_LOG).exists()


def test_the_notebook_holds_no_name_from_the_kernels_start(incident_db, target_env, tmp_path, monkeypatch):
    """The first imports are done before the first cell, and leave nothing in its namespace; it is still In [1]."""
    nbdir = notebook(tmp_path / "nbs", "import sys\nprint(sorted(k for k in globals() if k in "
                     "('_a', '_g', 'atexit', 'gc', 'runbook_lib')), 'runbook_lib.run' in sys.modules)",
                     "from runbook_lib.run import Run\nrun = Run.from_namespace('token-reversal', globals())\n"
                     "run.review()\nrun.verify()\nrun.finish()")
    target_env(incident_db)
    monkeypatch.setenv("RUNBOOK_NOTEBOOKS", str(nbdir))
    out = run_procedure("token-reversal", WINDOW, incident="N", evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 0, out.error
    nb = nbformat.read(str(out.run_dir / "token_reversal.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = next(c for c in code if "globals()" in c.source and "print" in c.source)
    assert "".join(o.get("text", "") for o in first.outputs).strip() == "[] True"
    assert code[0].execution_count == 1  # the parameters cell (papermill's injected one follows it)
