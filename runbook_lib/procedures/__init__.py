"""The procedure registry: CLI name -> :class:`~runbook_lib.procedures.base.Procedure` instance.

The built-in procedures live in this package, one module each, and register their class with :func:`register` when
their module is imported; :func:`get` imports a built-in one on first use (so importing the package pulls neither
pandas nor SQLAlchemy). A procedure defined elsewhere (a test, an extension) registers the same way.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from ..errors import UnknownProcedureError

if TYPE_CHECKING:  # base pulls pandas and SQLAlchemy: not for `import runbook_lib.procedures`
    from .base import Procedure

#: every procedure of the rollback guide: CLI name -> module of this package that registers it
BUILTIN: dict[str, str] = {
    "token-reversal": "token_reversal",
    "partial-rollback": "partial_rollback",
    "full-rollback": "full_rollback",
    "backup": "backup",
    "restore": "restore",
    "rehearsal": "rehearsal",
    "migration-recovery": "migration_recovery",
    "verify": "verify",
}
_REGISTERED: dict[str, Procedure] = {}
P = TypeVar("P", bound="type[Procedure]")


def _key(name: str) -> str:
    return name.strip().replace("_", "-").lower()


def register(cls: P) -> P:
    """Class decorator: register one instance of a :class:`Procedure` subclass under its ``NAME``."""
    from .base import Procedure

    missing = [a for a in ("NAME", "NOTEBOOK", "TITLE", "GUIDE_SECTION", "Params") if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"procedure {cls.__name__} lacks {', '.join(missing)}")
    if cls.plan is Procedure.plan and cls.steps is None:
        raise TypeError(f"procedure {cls.__name__} does not implement plan()")
    key = _key(cls.NAME)
    if key != cls.NAME:
        raise TypeError(f"procedure name {cls.NAME!r}: use lower-case words joined by '-' ({key!r})")
    known = _REGISTERED.get(key)
    if known is not None and type(known) is not cls and type(known).__qualname__ != cls.__qualname__:
        raise TypeError(f"a procedure named {key!r} is already registered ({type(known).__qualname__})")
    _REGISTERED[key] = cls()
    return cls


def unregister(name: str) -> None:
    """Remove a registered procedure (tests that register their own)."""
    _REGISTERED.pop(_key(name), None)


def get(name: str) -> Procedure:
    key = _key(name)
    if key not in _REGISTERED and key in BUILTIN:
        importlib.import_module(f"{__name__}.{BUILTIN[key]}")
    if key not in _REGISTERED:
        raise UnknownProcedureError(name, available())
    return _REGISTERED[key]


def available() -> list[str]:
    """Every procedure's name: the built-in ones in the guide's order, then any registered elsewhere."""
    for key, module in BUILTIN.items():
        if key not in _REGISTERED:
            importlib.import_module(f"{__name__}.{module}")
    return [*BUILTIN, *(k for k in _REGISTERED if k not in BUILTIN)]


__all__ = ["BUILTIN", "available", "get", "register", "unregister"]
