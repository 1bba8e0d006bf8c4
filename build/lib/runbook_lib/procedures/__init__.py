"""The procedure registry: CLI name -> module in this package (imported lazily)."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UnknownProcedureError

#: every procedure of the rollback guide; a module that is not there yet is skipped by `available()`
REGISTRY: dict[str, str] = {
    "token-reversal": "token_reversal",
    "partial-rollback": "partial_rollback",
    "full-rollback": "full_rollback",
    "backup": "backup",
    "restore": "restore",
    "rehearsal": "rehearsal",
    "migration-recovery": "migration_recovery",
    "verify": "verify",
}


def get(name: str) -> ModuleType:
    key = name.strip().replace("_", "-").lower()
    if key not in REGISTRY:
        raise UnknownProcedureError(name, available())
    try:
        return importlib.import_module(f"{__name__}.{REGISTRY[key]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{REGISTRY[key]}":
            raise UnknownProcedureError(name, available()) from None
        raise


def available() -> list[str]:
    out = []
    for name, mod in REGISTRY.items():
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{mod}":
                continue
            raise
        out.append(name)
    return out
