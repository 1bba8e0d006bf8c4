"""The notebook's kernel for a ``runbook run``: started before papermill is imported, its process ended on every way
out, its own output in the run folder's ``kernel.log``.

papermill (nbclient) neither starts nor shuts down a kernel manager it is handed (``km=``): :func:`started` boots the
kernel while the runner imports papermill and prepares the notebook, and the notebook's first imports run in the
kernel's start (:data:`KERNEL_START`); on the way out it ends the process as nbclient would (interrupt, shutdown
request, up to 5 s, SIGTERM, SIGKILL), or kills its process group when that fails or the operator interrupts twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

KERNEL_LOG = "kernel.log"
#: run in the kernel at its start, outside the notebook (no cell, no execution count, no name left behind). First:
#: at exit, after every atexit handler, the interpreter skips its last collections over the objects the notebook
#: made (pandas, SQLAlchemy, matplotlib…), which kept papermill waiting ~0.4 s for the kernel to end; files and
#: connections are closed as before. Then the notebooks' own first imports (~0.45 s of their first code cell),
#: synchronously, before the kernel answers; one that fails fails again, visibly, in that cell. One option: given
#: twice, ``exec_lines`` runs neither (each is read as a line of code, a list literal).
KERNEL_START = ["import atexit as _a, gc as _g; _a.register(_g.freeze); del _a, _g",
                "import runbook_lib.run, runbook_lib.display", "del runbook_lib"]
#: the kernel's command line. Its own log (start-up warnings such as "running over TCP without encryption" on a local
#: socket, and at shutdown "ERROR | KeyboardInterrupt caught in kernel", as jupyter_client interrupts the kernel
#: before every shutdown) is routine noise: only what is critical reaches kernel.log. Every failure reaches the
#: operator as the one error line and the archived notebook. The history in memory, as nbclient asks of the kernels
#: it starts itself (not of one it is handed).
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL", f"--IPKernelApp.exec_lines={json.dumps(KERNEL_START)}",
                    "--HistoryManager.hist_file=:memory:"]


@dataclass
class Kernel:
    """The notebook's kernel: its manager (None when the early start failed: papermill then starts one, and
    reports what fails) and the manager class, whose kernel process writes its own output to kernel.log."""

    km: Any
    manager_class: type
    asked_to_end: bool = False

    def ask_to_end(self) -> None:
        """Ask the kernel to end, without waiting (``started`` waits, on its way out: the report renders meanwhile)."""
        from jupyter_core.utils import run_sync

        if self.km is not None and not self.asked_to_end:
            with contextlib.suppress(Exception):  # then ``stop`` shuts it down as nbclient would
                run_sync(self.km.request_shutdown)()
                self.asked_to_end = True


@contextlib.contextmanager
def started(run_dir: Path) -> Iterator[Kernel]:
    """Start the notebook's kernel now (its boot overlaps papermill's import and preparation) and end its process on
    every way out (the notebook's end, a failure, an interrupt): papermill neither starts nor shuts down a kernel
    manager it is handed. kernel.log is kept only when the kernel process said something outside the notebook."""
    from jupyter_core.utils import run_sync

    kernel_log = run_dir / KERNEL_LOG
    try:
        with open(kernel_log, "ab") as log:
            cls = manager_class(log)
            km, kernel = cls(kernel_name="python3"), Kernel(None, cls)
            try:
                with contextlib.suppress(Exception):  # papermill starts one itself then (and reports)
                    run_sync(km.start_kernel)(extra_arguments=KERNEL_ARGUMENTS, cwd=str(Path.cwd()))
                    kernel.km = km
                yield kernel
            finally:
                stop(km, kernel.asked_to_end)
    finally:
        if kernel_log.is_file() and kernel_log.stat().st_size == 0:
            kernel_log.unlink()


def stop(km: Any, asked: bool) -> None:
    """End the kernel's process and close what talks to it. As nbclient does for a kernel it started: interrupt,
    shutdown request, up to 5 s, SIGTERM, SIGKILL (``asked``: the request was sent, only the wait is left); on any
    failure or a second interrupt, SIGKILL to its process group (a session of its own) at once."""
    from jupyter_core.utils import run_sync

    try:
        for kc in km.__dict__.pop("runbook_clients", []):
            kc.stop_channels()
        if km.has_kernel and run_sync(km.is_alive)():
            run_sync(km.finish_shutdown if asked else km.shutdown_kernel)()
        run_sync(km.cleanup_resources)()
    except BaseException as exc:  # noqa: BLE001 - killed instead; an interrupt goes on, the run is archived otherwise
        process = getattr(km.provisioner, "process", None)
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the kernel and what it started
            process.kill()  # nothing once it is gone
            process.wait(10)
        if not isinstance(exc, Exception):
            raise


def manager_class(log: IO[bytes]) -> type:
    """A kernel manager whose kernel process writes its own stdout and stderr to ``log``, not to the CLI's.

    The kernel inherits the CLI's file descriptors. Inside a cell ipykernel captures them into the notebook, but
    before and after (start-up, shutdown, a native library aborting, e.g. libzmq's "Assertion failed:
    pfd.revents & POLLIN (src/signaler.cpp:238)" at teardown) the kernel writes straight to them and would break
    the CLI's contract: stderr holds the one error line, nothing else. What it writes is evidence, so it goes to
    ``kernel.log`` in the run folder (redacted and hashed with the rest; removed when empty).
    """
    from jupyter_client import AsyncKernelManager

    class _LoggedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]  # async in this class
            kw.setdefault("stdout", log)  # a restart reuses these launch arguments: ``log`` stays open for the run
            kw.setdefault("stderr", log)
            await super().start_kernel(**kw)

        def client(self, **kw: Any) -> Any:  # the clients nbclient makes: ``stop`` closes their channels
            kc = super().client(**kw)
            self.__dict__.setdefault("runbook_clients", []).append(kc)
            return kc

    return _LoggedKernelManager
