"""The process of a ``runbook run``'s kernel: ipykernel's own launcher (what ``python -m ipykernel_launcher`` runs),
started leaner for a headless run. :class:`runbook_lib.kernel.manager_class` starts it with the CLI's own interpreter
(the one ``runbook_lib`` is installed in, which the kernel's start imports).

* The garbage collector waits while the kernel starts. ipykernel's imports and the notebooks' first ones (pandas,
  SQLAlchemy…, :func:`runbook_lib.kernel.warm_start`) make several hundred thousand objects that live as long as the
  process; collecting over them while they are being made is ~10–15 % of the start (measured: imports 1.30 s →
  1.06 s). ``warm_start`` resumes it, after moving what the start made out of its reach (``gc.freeze``), so the
  notebook's own collections do not go over them either. If ``warm_start`` never runs (an exec line that fails
  before it), the collector stays off for the kernel's life: the kernel ends with its run.
* No debugger: ipykernel imports ``debugpy`` (~0.1 s) only to offer a debugger to a front end, and nobody attaches
  one to a papermill run. Its import is refused here, which ipykernel reads as "no debugger available".
"""

from __future__ import annotations

import gc
import sys


def main() -> None:
    """Start the kernel (its command-line arguments: the connection file and the CLI's options)."""
    gc.disable()
    sys.modules["debugpy"] = None  # type: ignore[assignment]  # the import then fails: ipykernel runs without one
    if sys.path and sys.path[0] == "":  # as ipykernel_launcher does: the kernel adds the working directory itself
        del sys.path[0]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
