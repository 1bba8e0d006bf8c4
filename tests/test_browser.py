"""JupyterLab in a real browser (issue 12): the token-reversal review run, the page reloaded, run again.

Headless Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``, ``RUNBOOK_CHROMIUM`` to point
elsewhere) driven by Playwright's Python API; Playwright never downloads a browser here. JupyterLab runs on a
copy of ``notebooks/`` (outputs never land in the repository) with ``DATABASE_URL`` pointing at a fresh seeded
incident database, and the test checks what an analyst sees: itables tables with rows (not "Loading ITables..."),
a matplotlib plot, and the affected-user inspector (ipywidgets Dropdown "Affected user"); then, after a page
reload, on the same kernel, that the tables render again.

Without a browser the test is skipped with a message, except under CI (``CI=true``), where it fails: CI
installs ``chromium`` (``.ci/run``), so the test cannot silently vanish.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook_lib import seed
from runbook_lib.lab import free_port, lab_command

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "token_reversal.ipynb"
CHROMIUM = os.environ.get("RUNBOOK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# as root Chromium needs --no-sandbox; the rest keeps a browser on a closed network from calling home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
RUN_TIMEOUT_MS = 240_000  # a whole review run of the notebook in JupyterLab (a few seconds on a laptop)
UI_TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def _missing(why: str) -> None:
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{why}; CI must install it (.ci/run installs Debian's chromium, `make test` playwright)")
    pytest.skip(f"{why}; install it to run the JupyterLab browser test "
                "(apt-get install chromium; pip install -e '.[test]' for playwright)")


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    try:
        from playwright import sync_api
    except ImportError:
        _missing("the playwright Python package is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"no Chromium browser at {CHROMIUM}")
    return sync_api


def _settings(settings_dir: Path) -> None:
    """User settings of the test's JupyterLab: no news or update checks (the network is closed); every cell in the
    page (``windowingMode: none``; by default cells scrolled out of view leave the DOM); no autosave, so the
    reloaded page starts from the output-free notebook, as after a reload without saving."""
    for plugin, name, values in (
            ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),
            ("notebook-extension", "tracker", {"windowingMode": "none"}),
            ("docmanager-extension", "plugin", {"autosave": False})):
        folder = settings_dir / "@jupyterlab" / plugin
        folder.mkdir(parents=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))


@pytest.fixture
def lab(playwright_api: Any, incident_db: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """JupyterLab (runbook_lib.lab's command line) on a copy of notebooks/, kernels reaching the seeded incident."""
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    home = tmp_path / "jupyter"
    _settings(home / "settings")
    port = free_port(18900)
    token = "browser-test-" + os.urandom(8).hex()
    env = {**os.environ, "DATABASE_URL": incident_db, "JUPYTER_TOKEN": token,
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    env.pop("RUNBOOK_TARGET_PRODUCTION", None)
    log = (tmp_path / "jupyterlab.log").open("wb")
    proc = subprocess.Popen(lab_command(port, True, notebooks), env=env, cwd=notebooks, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}): {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base}: {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": f"{base}/lab/tree/{NOTEBOOK}?token={token}", "base": base, "token": token,
               "notebooks": notebooks, "log": tmp_path / "jupyterlab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def page(playwright_api: Any, tmp_path: Path) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(UI_TIMEOUT_MS)
            pg.on("dialog", lambda d: d.accept())  # "leave the page?" on reload
            yield pg
        finally:
            context.close()


def _prompts(page: Any) -> list[str]:
    return [t.strip() for t in page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def _counts(page: Any) -> list[int | None]:
    out: list[int | None] = []
    for t in _prompts(page):
        m = re.search(r"\[(\d+)\]", t)
        out.append(int(m.group(1)) if m else None)
    return out


def _kernel_id(lab: dict[str, Any]) -> str:
    """The id of the kernel of the notebook's session (Jupyter Server's REST API)."""
    with urllib.request.urlopen(f"{lab['base']}/api/sessions?token={lab['token']}", timeout=10) as r:
        sessions = json.load(r)
    ids = [s["kernel"]["id"] for s in sessions if s.get("path", "").endswith(NOTEBOOK) and s.get("kernel")]
    assert len(ids) == 1, f"expected one session of {NOTEBOOK}: {sessions}"
    return str(ids[0])


def _notebook_ready(page: Any) -> None:
    """The notebook is shown and its kernel idle. A "Select Kernel" dialog would mean the page lost the notebook's
    session: the test fails on it rather than starting another kernel."""
    page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(state="visible")
    page.wait_for_function(f"() => document.querySelector('.jp-Dialog') !== null || ({_IDLE})()",
                           timeout=UI_TIMEOUT_MS)
    dialogs = page.locator(".jp-Dialog")
    assert dialogs.count() == 0, f"JupyterLab asks: {dialogs.first.inner_text()}"


_IDLE = """() => {
    const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
    const status = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
    const kernel = panel && panel.querySelector('.jp-Toolbar-kernelName');
    return status !== null && status.getAttribute('data-status') === 'idle'
           && kernel !== null && /Python/.test(kernel.textContent); }"""


def _wait_idle(page: Any, timeout_ms: int = UI_TIMEOUT_MS) -> None:
    """The notebook has its Python kernel and the kernel is idle (the notebook toolbar's indicator and kernel name;
    the indicator alone says idle before any kernel started)."""
    page.wait_for_function(_IDLE, timeout=timeout_ms)


def _run_all(page: Any, after: int) -> None:
    """Run > Run All Cells, then wait until every code cell ran in this round (execution count > after)."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while True:
        counts = _counts(page)
        if counts and all(c is not None and c > after for c in counts):
            break
        if _errors(page) and page.evaluate(_IDLE):  # a cell failed: Run All stops there
            raise AssertionError(f"a cell failed: {_errors(page)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the notebook did not finish running: prompts {_prompts(page)}")
        page.wait_for_timeout(500)
    _wait_idle(page)


def _errors(page: Any) -> list[str]:
    """Error outputs on screen (JupyterLab renders a traceback as stderr; a warning on stderr is not an error)."""
    stderr = page.locator(".jp-NotebookPanel:visible "
                          ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    return [t[-2000:] for t in stderr if re.search(r"Traceback|\w+(Error|Exception)\b", t)]


_TABLES_READY = """() => {
    const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
    return panel !== null && !/Loading ITables/.test(panel.innerText)
           && panel.querySelector('.jp-OutputArea-output .dt-container table.dataTable') !== null; }"""


def _check_tables(page: Any) -> int:
    """Every itables table on screen is a live DataTable showing rows (not "Loading ITables..." nor itables'
    static preview); returns how many tables."""
    try:
        page.wait_for_function(_TABLES_READY, timeout=UI_TIMEOUT_MS)
    except Exception as e:  # noqa: BLE001 - a timeout: say what is on screen instead
        loading = page.get_by_text("Loading ITables").count()
        raise AssertionError(f"tables did not render: {loading} show 'Loading ITables...' "
                             "(is the itables offline library loaded at every run? display.setup())") from e
    outputs = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output:has(table.dataTable)")
    n = outputs.count()
    for i in range(n):
        output = outputs.nth(i)
        output.scroll_into_view_if_needed()
        # the visible one: itables keeps a hidden static preview of the table next to the interactive one
        container = output.locator(".dt-container:visible").first
        rows = container.locator("table.dataTable tbody tr")
        assert rows.count() > 0, f"table {i} has no rows"
        first = rows.first.inner_text().strip()
        assert first and "Loading ITables" not in first, f"table {i} shows no data: {first!r}"
        for info in container.locator(".dt-info").all_inner_texts():  # small tables have no info line
            assert re.match(r"Showing 1 to \d+ of [\d,]+ entries", info), f"table {i}: {info!r}"
    return n


def _check_plot(page: Any) -> None:
    img = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output img[src^='data:image/png']").first
    img.scroll_into_view_if_needed()
    assert img.is_visible()
    box = img.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 100, f"plot too small: {box}"


def _check_inspector(page: Any) -> None:
    inspector = page.locator(".jp-NotebookPanel:visible .runbook-user-inspector").first
    inspector.wait_for(state="attached", timeout=10_000)
    inspector.scroll_into_view_if_needed()
    dropdown = page.locator(".jp-NotebookPanel:visible .widget-dropdown",
                            has=page.locator(".widget-label", has_text="Affected user")).first
    dropdown.wait_for(state="attached", timeout=10_000)
    dropdown.scroll_into_view_if_needed()
    assert dropdown.is_visible()
    options = dropdown.locator("select option")
    assert options.count() > 1, "the 'Affected user' dropdown lists fewer than two users"
    # choosing another user shows that user's section (the widget talks to the kernel)
    user = options.nth(1).inner_text().split()[0]
    dropdown.locator("select").select_option(index=1)
    chosen = page.locator(".jp-NotebookPanel:visible .runbook-user-inspector", has_text=user).first
    chosen.wait_for(state="visible", timeout=UI_TIMEOUT_MS)


def test_the_review_notebook_in_jupyterlab_survives_a_reload(lab: dict[str, Any], page: Any, tmp_path: Path) -> None:
    # the notebook's example window is the seeded incident's, so "Run All" as it stands reviews the incident
    cells = json.loads((lab["notebooks"] / NOTEBOOK).read_text())["cells"]
    defaults: dict[str, Any] = {}
    exec("".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"]), defaults)
    assert dt.datetime.fromisoformat(defaults["since"].replace("Z", "+00:00")) == seed.WINDOW_START, defaults["since"]
    step = "open"
    try:
        page.goto(lab["url"])
        _notebook_ready(page)
        kernel = _kernel_id(lab)
        step = "first run"
        _run_all(page, 0)
        assert not _errors(page), _errors(page)
        first = max(c or 0 for c in _counts(page))
        n = _check_tables(page)
        assert n >= 3, f"expected the review's tables, found {n}"
        _check_plot(page)
        _check_inspector(page)

        step = "reload"
        # not saved: the reloaded page has none of the first run's outputs, the itables library among them,
        # while the kernel has run everything once (the reported "Loading ITables..." after a reload)
        page.reload()  # "leave the page?" is accepted (the dialog handler)
        _notebook_ready(page)
        assert _kernel_id(lab) == kernel, "the reloaded page must reconnect to the same kernel"
        step = "run after reload"
        _run_all(page, first)  # the same kernel: its execution counts go on from the first run
        assert not _errors(page), _errors(page)
        assert _check_tables(page) == n
        _check_plot(page)
        _check_inspector(page)
    except BaseException:
        shot = tmp_path / f"jupyterlab-{step.replace(' ', '-')}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure ({step}): {shot}")
        except Exception as e:  # noqa: BLE001 - keep the test's own error
            print(f"no screenshot of the failure ({step}): {e}")
        print(f"JupyterLab log: {lab['log']}")
        raise
    # the repository's notebooks stay output-free: only the copy ran
    assert not any(c.get("outputs") for c in json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())["cells"])
