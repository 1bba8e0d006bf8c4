"""The runner's papermill engine saves the executed notebook when each code cell starts (and at the start and end),
not also when every cell starts and ends; what an interrupted run leaves on disk is the same: every earlier cell
final with its outputs, the running one marked running."""

from __future__ import annotations

import threading
import time

import nbformat
import papermill as pm
import papermill.engines
import pytest

from runbook_lib.papermill_engine import ENGINE

pytestmark = pytest.mark.notebook


def test_a_running_notebook_on_disk_has_every_earlier_cell_final(tmp_path, monkeypatch):
    marker = tmp_path / "running"
    release = tmp_path / "release"
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_code_cell("print('one')"),
        v4.new_markdown_cell("between"),
        v4.new_code_cell(f"import pathlib, time\npathlib.Path({str(marker)!r}).write_text('x')\n"
                         f"while not pathlib.Path({str(release)!r}).exists():\n    time.sleep(0.05)\nprint('two')"),
        v4.new_markdown_cell("after"),
        v4.new_code_cell("print('three')"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb_in, nb_out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, str(nb_in))
    writes: list[int] = []
    real_write = papermill.engines.write_ipynb

    def counted(nb: object, path: str) -> None:
        writes.append(1)
        real_write(nb, path)

    monkeypatch.setattr(papermill.engines, "write_ipynb", counted)
    failed: list[BaseException] = []

    def execute() -> None:
        try:
            pm.execute_notebook(str(nb_in), str(nb_out), kernel_name="python3", progress_bar=False,
                                engine_name=ENGINE)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failed.append(exc)

    worker = threading.Thread(target=execute)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.05)
        assert marker.exists(), failed
        during = nbformat.read(str(nb_out), as_version=4).cells  # as a kill now would leave it
    finally:
        release.write_text("go")
        worker.join(120)
    assert not failed, failed
    status = [c.metadata.papermill.get("status") for c in during]
    assert status == ["completed", "completed", "running", "pending", "pending"]
    assert "".join(o.get("text", "") for o in during[0].outputs) == "one\n"
    done = nbformat.read(str(nb_out), as_version=4).cells
    assert [c.metadata.papermill.get("status") for c in done] == ["completed"] * 5
    assert [("".join(o.get("text", "") for o in c.outputs)) for c in done if c.cell_type == "code"] == [
        "one\n", "two\n", "three\n"]
    assert len(writes) == 2 + 3  # the notebook's start and end, each code cell's start (papermill: 2 + 2 × 5)
