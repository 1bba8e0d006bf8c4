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


#: the cell that makes a probed notebook a finished token-reversal run
FINISH = ("from runbook_lib.run import Run\nrun = Run.from_namespace('token-reversal', globals())\n"
          "run.review()\nrun.verify()\nrun.finish()")


def probed_run(probe: str, tmp_path: Path, monkeypatch, incident: str) -> tuple[str, nbformat.NotebookNode, Path]:
    """Run a token-reversal notebook whose first code cell after the parameters is ``probe``: that cell's output
    text, the executed notebook's code cells and the run folder."""
    monkeypatch.setenv("RUNBOOK_NOTEBOOKS", str(notebook(tmp_path / "nbs", probe, FINISH)))
    out = run_procedure("token-reversal", WINDOW, incident=incident, evidence_root=tmp_path / "ev", progress_bar=False)
    assert out.exit_code == 0, out.error
    nb = nbformat.read(str(out.run_dir / "token_reversal.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = next(c for c in code if c.source == probe)
    return "".join(o.get("text", "") for o in first.outputs), code, out.run_dir


def test_the_notebook_holds_no_name_from_the_kernels_start(incident_db, target_env, tmp_path, monkeypatch):
    """The first imports are done before the first cell (matplotlib's under way on a thread), and leave nothing in
    its namespace; it is still In [1]."""
    target_env(incident_db)
    text, code, _ = probed_run(
        "import sys, threading\nprint(sorted(k for k in globals() if k in ('_a', '_g', '_k', 'atexit', 'gc', "
        "'runbook_lib')), 'runbook_lib.run' in sys.modules, 'matplotlib.figure' in sys.modules or "
        "any(t.name == 'runbook-matplotlib-preload' for t in threading.enumerate()))", tmp_path, monkeypatch, "N")
    # nothing left in the namespace; runbook_lib imported; matplotlib imported or being imported on the preload thread
    assert text.strip() == "[] True True"
    assert code[0].execution_count == 1  # the parameters cell (papermill's injected one follows it)


def test_the_kernel_starts_lean_and_leaves_the_collector_on(incident_db, target_env, tmp_path, monkeypatch):
    """The run's kernel is ``runbook_lib.kernel_launch`` in the CLI's interpreter: its start imported what the first
    cell needs, paused the garbage collector and resumed it with the start's objects frozen; no debugger loaded."""
    target_env(incident_db)
    text, _, run_dir = probed_run(
        "import gc, sys\nprint(gc.isenabled(), gc.get_freeze_count() > 100_000, sys.modules.get('debugpy'), "
        f"all(m in sys.modules for m in {kernel.WARM_IMPORTS!r}), sys.executable == {sys.executable!r}, "
        "sys.argv[0].endswith('kernel_launch.py'))", tmp_path, monkeypatch, "L")
    assert text.split() == ["True", "True", "None", "True", "True", "True"]
    assert not (run_dir / runner.KERNEL_LOG).exists()  # and it said nothing outside the notebook


def marked_processes(mark: str) -> set[int]:
    """Processes whose environment holds ``RUNBOOK_TEST_MARK=mark`` (a kernel the CLI left behind is no longer its
    child once the CLI exits)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if f"RUNBOOK_TEST_MARK={mark}".encode() in env.split(b"\0"):
            found.add(int(proc.name))
    return found


@pytest.mark.parametrize(("case", "args", "exit_code", "says"), [
    ("bad parameter", ["-p", "since", "yesterday-ish"], 2, "since"),
    ("unknown procedure", [], 2, "unknown procedure"),
    ("refused approval", ["--execute", "--approve", "f" * 24], 6, "plan"),
])
def test_the_cli_ends_its_early_kernel_when_no_run_takes_it(case, args, exit_code, says, incident_db, tmp_path):
    """The CLI boots the kernel before it validates: bad input, an unknown procedure or a refused approval end it
    at once — the one error line, the exit status of the problem, no kernel process left, no kernel.log."""
    mark = f"{case}-{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, "DATABASE_URL": incident_db, "RUNBOOK_TEST_MARK": mark}
    procedure = "token-reversl" if case == "unknown procedure" else "token-reversal"
    r = subprocess.run([str(Path(sys.executable).parent / "runbook"), "run", procedure, "-p", "since",
                        WINDOW["since"], "-p", "until", WINDOW["until"], *args, "--no-progress", "--incident", "E",
                        "--evidence-dir", str(tmp_path / "ev")], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == exit_code and len(lines) == 1 and says in lines[0], r.stderr
    assert marked_processes(mark) == set(), "a kernel outlived the CLI"
    assert list(tmp_path.rglob(runner.KERNEL_LOG)) == []


def test_the_kernel_output_is_held_until_the_run_folder_takes_it(tmp_path):
    """What the kernel process writes before its run folder exists reaches kernel.log when the folder does; later
    output is written as it comes; a kernel that says nothing leaves no file."""
    out = kernel.KernelOutput()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stderr.write('at boot\\n'); "
                              "sys.stderr.flush(); sys.stdin.readline(); print('later', flush=True)"],
                             stdin=subprocess.PIPE, stdout=out.fd, stderr=out.fd, text=True)
    out.launched()
    log = tmp_path / "kernel.log"
    deadline = time.monotonic() + 60
    while b"at boot" not in out.held() and time.monotonic() < deadline:  # read by the relay, held
        time.sleep(0.02)
    assert not log.exists()
    out.attach(log)
    assert log.read_text() == "at boot\n"
    child.communicate("go\n", timeout=60)
    out.settle()
    assert log.read_text() == "at boot\nlater\n"  # before close: written as it came
    out.close()
    silent = kernel.KernelOutput()
    subprocess.run([sys.executable, "-c", "pass"], stdout=silent.fd, stderr=silent.fd, check=True)
    silent.launched()
    silent.attach(tmp_path / "silent.log")
    silent.close()
    assert not (tmp_path / "silent.log").exists()
