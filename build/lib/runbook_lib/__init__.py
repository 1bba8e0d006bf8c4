"""Voucher incident runbooks as Jupyter notebooks, for a Prisma-managed PostgreSQL database.

The public API is small: :class:`Run` (what notebooks call), :func:`run_procedure` (what the CLI calls),
:func:`list_procedures`, and the :class:`RunbookError` hierarchy.
"""

from __future__ import annotations

from typing import Any

from .errors import RunbookError

__version__ = "0.1.0"


def list_procedures() -> list[str]:
    from .procedures import available

    return available()


def __getattr__(name: str) -> Any:  # lazy: importing the package must not pull papermill or pandas
    if name == "Run":
        from .run import Run

        return Run
    if name == "run_procedure":
        from .runner import run_procedure

        return run_procedure
    raise AttributeError(name)


__all__ = ["RunbookError", "Run", "run_procedure", "list_procedures", "__version__"]
