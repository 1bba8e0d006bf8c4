"""The notebook's kernel for a ``runbook run``: started before anything heavy is imported, its process ended on
every way out, its own output in the run folder's ``kernel.log``.

papermill (nbclient) neither starts nor shuts down a kernel manager it is handed (``km=``). The CLI boots the kernel
first (:func:`early`), before it imports the procedure, validates the parameters and imports papermill: the kernel's
boot (its interpreter, ipykernel started leaner by :mod:`.kernel_launch`, the notebooks' first imports in
:func:`warm_start`) is the longest step before the first cell, and it runs on a second core meanwhile. Bad input, a
refused approval or an interrupt before the run ends that kernel at once (:meth:`Kernel.end`). The library (:func:`runbook_lib.runner.run_procedure` without a
kernel) boots one in :func:`started`. On the way out a kernel that ran is ended as nbclient would (interrupt,
shutdown request, up to 5 s, SIGTERM, SIGKILL), or its process group killed when that fails or the operator
interrupts twice.

The kernel process's own output goes through a pipe (:class:`KernelOutput`): held in memory until the run folder
exists, then written to its ``kernel.log`` as it comes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

KERNEL_LOG = "kernel.log"
#: run in the kernel at its start, outside the notebook (no cell, no execution count, no name left behind). First:
#: at exit, after every atexit handler, the interpreter skips its last collections over the objects the notebook
#: made (pandas, SQLAlchemy, matplotlib…), which kept papermill waiting ~0.4 s for the kernel to end; files and
#: connections are closed as before. Then :func:`warm_start`. One option: given twice, ``exec_lines`` runs neither
#: (each is read as a line of code, a list literal).
KERNEL_START = ["import atexit as _a, gc as _g; _a.register(_g.freeze); del _a, _g",
                "import runbook_lib.kernel as _k; _k.warm_start(); del _k"]
#: what the notebooks' first code cell imports: the run and its display, and what that cell's ``Run`` and
#: ``show.setup()`` import on first use (the engine's dialect, the table library and pandas' Styler it patches)
WARM_IMPORTS = ("runbook_lib.run", "runbook_lib.display", "sqlalchemy.dialects.postgresql.psycopg2", "itables",
                "pandas.io.formats.style")
#: the kernel's command line. Its own log (start-up warnings such as "running over TCP without encryption" on a local
#: socket, and at shutdown "ERROR | KeyboardInterrupt caught in kernel", as jupyter_client interrupts the kernel
#: before every shutdown) is routine noise: only what is critical reaches kernel.log. Every failure reaches the
#: operator as the one error line and the archived notebook. The history in memory, as nbclient asks of the kernels
#: it starts itself (not of one it is handed).
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL", f"--IPKernelApp.exec_lines={json.dumps(KERNEL_START)}",
                    "--HistoryManager.hist_file=:memory:"]


def warm_start() -> None:
    """The kernel's start (:data:`KERNEL_START`), before it answers papermill: the notebooks' first imports
    (:data:`WARM_IMPORTS`, ~0.5 s that their first code cell would spend), synchronously — one that fails here
    fails again, visibly, in that cell. Then the garbage collector, paused by :mod:`runbook_lib.kernel_launch`
    while the kernel started, is resumed with everything made so far frozen out of its reach. Last, matplotlib's
    import (~0.35 s of the first plot's cell) on a background thread (:func:`runbook_lib.plots.preload`): it runs
    while the kernel waits for cells and for the review's queries."""
    import gc
    import importlib

    try:
        for name in WARM_IMPORTS:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()
    from . import plots

    plots.preload()


class KernelOutput:
    """What the kernel process writes outside the notebook (its stdout and stderr, one pipe), read on a thread: held
    in memory until :meth:`attach` names the run's ``kernel.log``, then appended to it as it comes. The file is made
    only when the kernel said something; what a kernel that never ran a run said is dropped with it."""

    def __init__(self) -> None:
        self._read, self.fd = os.pipe()  # ``fd``: the kernel's stdout and stderr (the launch dup2s it)
        self._lock = threading.Lock()
        self._held = bytearray()
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self._fd_open = True
        self._closed = False  # the run's evidence is being sealed: nothing more is written
        self._thread = threading.Thread(target=self._relay, name="runbook-kernel-output", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        try:
            while chunk := os.read(self._read, 65536):
                with self._lock:
                    self._held += chunk
                    self._flush()
        finally:
            os.close(self._read)

    def _flush(self) -> None:  # under the lock
        if self._path is None or not self._held or self._closed:
            return
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115 - open for the run, closed in close()
        self._file.write(self._held)
        self._file.flush()
        self._held.clear()

    def held(self) -> bytes:
        """What the kernel wrote that is not in a file yet (before :meth:`attach`: all of it)."""
        with self._lock:
            return bytes(self._held)

    def attach(self, path: Path) -> None:
        """From now on the output goes to ``path`` (what was held first)."""
        with self._lock:
            self._path = path
            self._flush()

    def launched(self) -> None:
        """The kernel process holds the pipe's write end: close this process's copy, so that the pipe ends (and
        :meth:`settle` returns) when the kernel process does."""
        with self._lock:
            if self._fd_open:
                os.close(self.fd)
                self._fd_open = False

    def settle(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) until everything the ended kernel wrote is in its file."""
        self.launched()
        self._thread.join(timeout)

    def close(self) -> None:
        """After the kernel process ended: the rest of its output written, the file closed."""
        self.settle(10)
        with self._lock:
            self._flush()
            self._closed = True  # a straggler still holding the pipe (10 s on) is not written into sealed evidence
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class Kernel:
    """The notebook's kernel: its manager (started or not: what ``end`` shuts down) of the class whose kernel
    process writes its own output to ``output``; :attr:`km` is the manager once its kernel started."""

    manager: Any
    manager_class: type
    output: KernelOutput
    started: bool = False  # False when the early start failed: papermill then starts one, and reports what fails
    asked_to_end: bool = False
    ran: bool = False  # a run's notebook was given to it: ended gently, as nbclient would
    ended: bool = field(default=False, repr=False)

    @property
    def km(self) -> Any:
        """The manager of the started kernel, handed to papermill (None: papermill starts its own)."""
        return self.manager if self.started else None

    def ask_to_end(self) -> None:
        """Ask the kernel to end, without waiting (``end`` waits, on the run's way out: the report renders
        meanwhile)."""
        from jupyter_core.utils import run_sync

        if self.km is not None and not self.asked_to_end:
            with contextlib.suppress(Exception):  # then ``stop`` shuts it down as nbclient would
                run_sync(self.km.request_shutdown)()
                self.asked_to_end = True

    def end(self) -> None:
        """End the kernel's process and close what talks to it: gently when it ran a notebook, at once (SIGKILL to
        its process group) when it never did. Its remaining output reaches kernel.log. Once only."""
        if self.ended:
            return
        self.ended = True
        try:
            if self.manager is not None:
                stop(self.manager, self.asked_to_end, kill=not self.ran)
        finally:
            self.output.close()


def boot() -> Kernel:
    """Start the notebook's kernel now; its output is held until a run folder takes it (:func:`started`)."""
    from jupyter_core.utils import run_sync

    output = KernelOutput()
    cls = manager_class(output.fd)
    km = cls(kernel_name="python3")
    kernel = Kernel(km, cls, output)
    try:
        with contextlib.suppress(Exception):  # papermill starts one itself then (and reports)
            run_sync(km.start_kernel)(extra_arguments=KERNEL_ARGUMENTS, cwd=str(Path.cwd()))
            kernel.started = True
            output.launched()
    except BaseException:  # an interrupt while it starts: nothing is left behind
        kernel.end()
        raise
    return kernel


@contextlib.contextmanager
def early() -> Iterator[Kernel]:
    """The CLI's kernel, booted before the CLI imports the procedure and papermill; a run takes it over
    (:func:`started`), and on any other way out (bad input, a refused approval, an interrupt) it is ended at once."""
    kernel = boot()
    try:
        yield kernel
    finally:
        kernel.end()


@contextlib.contextmanager
def started(run_dir: Path, kernel: Kernel | None = None) -> Iterator[Kernel]:
    """The run's kernel (``kernel``, booted early by the CLI, or booted now: its boot overlaps papermill's import
    and preparation), its output in the run folder's kernel.log, its process ended on every way out (the notebook's
    end, a failure, an interrupt): papermill neither starts nor shuts down a kernel manager it is handed. kernel.log
    exists only when the kernel process said something outside the notebook."""
    kernel = kernel if kernel is not None else boot()
    kernel.ran = True
    kernel.output.attach(run_dir / KERNEL_LOG)
    try:
        yield kernel
    finally:
        kernel.end()


def stop(km: Any, asked: bool, *, kill: bool = False) -> None:
    """End the kernel's process and close what talks to it. As nbclient does for a kernel it started: interrupt,
    shutdown request, up to 5 s, SIGTERM, SIGKILL (``asked``: the request was sent, only the wait is left); with
    ``kill`` (a kernel that never ran a notebook), or on any failure or a second interrupt, :func:`kill_now`."""
    from jupyter_core.utils import run_sync

    try:
        for kc in km.__dict__.pop("runbook_clients", []):
            kc.stop_channels()
        if kill:
            kill_now(km)
        elif km.has_kernel and run_sync(km.is_alive)():
            run_sync(km.finish_shutdown if asked else km.shutdown_kernel)()
        run_sync(km.cleanup_resources)()
    except BaseException as exc:  # noqa: BLE001 - killed instead; an interrupt goes on, the run is archived otherwise
        kill_now(km)
        if not isinstance(exc, Exception):
            raise


def kill_now(km: Any) -> None:
    """SIGKILL to the kernel's process group (a session of its own: the kernel and what it started), then wait."""
    process = getattr(km.provisioner, "process", None)
    if process is not None and process.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()  # nothing once it is gone
        process.wait(10)


def manager_class(log: int) -> type:
    """A kernel manager whose kernel process writes its own stdout and stderr to ``log`` (a file descriptor: the
    write end of :class:`KernelOutput`'s pipe), not to the CLI's.

    The kernel inherits the CLI's file descriptors. Inside a cell ipykernel captures them into the notebook, but
    before and after (start-up, shutdown, a native library aborting, e.g. libzmq's "Assertion failed:
    pfd.revents & POLLIN (src/signaler.cpp:238)" at teardown) the kernel writes straight to them and would break
    the CLI's contract: stderr holds the one error line, nothing else. What it writes is evidence, so it goes to
    ``kernel.log`` in the run folder (redacted and hashed with the rest; made only when there is something).
    """
    from jupyter_client import AsyncKernelManager

    class _LoggedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            # this interpreter (runbook_lib's, which the kernel's start imports) and ipykernel started leaner
            return [sys.executable, "-m", "runbook_lib.kernel_launch", "-f", os.path.realpath(self.connection_file),
                    *(extra_arguments or [])]

        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]  # async in this class
            kw.setdefault("stdout", log)
            kw.setdefault("stderr", log)
            await super().start_kernel(**kw)

        def client(self, **kw: Any) -> Any:  # the clients nbclient makes: ``stop`` closes their channels
            kc = super().client(**kw)
            self.__dict__.setdefault("runbook_clients", []).append(kc)
            return kc

    return _LoggedKernelManager
