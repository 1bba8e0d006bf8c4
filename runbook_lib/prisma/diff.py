"""Prisma's own ``migrate diff`` of a schema edit, offline, compared with the migration the runbook records.

``tests/prisma_validator/diff.js`` runs the schema engine's WASM build (``@prisma/schema-engine-wasm`` of Prisma
7.3.0, pinned there as ``schema-engine-wasm-7``; ``make validator`` installs it) on the schema before and after
the edit: ``prisma migrate diff --from-schema OLD --to-schema NEW --script`` without a database (a stub
connection answers the engine's one start-up version query and refuses anything else; see diff.js).

The comparison looks at the statements a datamodel diff can produce (``DROP TABLE``, ``DROP TYPE``, ``ALTER
TABLE``), comments and whitespace ignored, order ignored. An ``ALTER TABLE t DROP CONSTRAINT`` on a table ``t``
that the same script drops is folded into that ``DROP TABLE`` (Prisma drops a dropped table's foreign keys
first; dropping the table drops them anyway). Other statements of the recorded migration (views, functions,
triggers the database had on the voucher tables) are outside Prisma's datamodel and are listed, not compared.
A missing Node or engine is "not checked", never a failure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from runbook_lib.prisma.config import validator_dir

PACKAGE = "schema-engine-wasm-7"
_COMPARED = re.compile(r"^(DROP TABLE|DROP TYPE|ALTER TABLE)\b", re.I)
_FK_DROP = re.compile(r'^ALTER TABLE (?P<table>\S+) DROP CONSTRAINT \S+$', re.I)
_TABLE_DROP = re.compile(r"^DROP TABLE (?P<table>\S+)$", re.I)


def statements(script: str) -> list[str]:
    """The script's statements, ``--`` comments dropped, whitespace collapsed, no trailing ``;``; an identifier
    quoted without need (``"vouchers"``) is written bare, as PostgreSQL reads both the same."""
    text = "\n".join(re.sub(r"--.*$", "", line) for line in script.splitlines())
    out = []
    for part in text.split(";"):
        s = " ".join(part.split())
        if s:
            out.append(re.sub(r'"([a-z_][a-z0-9_$]*)"', r"\1", s))
    return out


def _fold(stmts: list[str]) -> tuple[set[str], list[str]]:
    """The compared statements (a dropped table's own foreign-key drops folded in) and the folded ones."""
    compared = [s for s in stmts if _COMPARED.match(s)]
    dropped = {m.group("table") for s in compared if (m := _TABLE_DROP.match(s))}
    folded = [s for s in compared if (m := _FK_DROP.match(s)) and m.group("table") in dropped]
    return {s for s in compared if s not in folded}, folded


@dataclass
class DiffCheck:
    checked: bool
    agrees: bool | None
    message: str
    version: str | None = None
    prisma: list[str] = field(default_factory=list)
    only_in_prisma: list[str] = field(default_factory=list)
    only_in_migration: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.checked:
            return f"not checked: {self.message}"
        if self.agrees:
            return f"agrees with the recorded migration.sql ({self.message})"
        return f"differs from the recorded migration.sql: {self.message}"


def prisma_diff(old_text: str, new_text: str, timeout: float = 120) -> tuple[str | None, str, str | None]:
    """Prisma's script for the edit ``old_text`` -> ``new_text``: (script or None, why not, engine version)."""
    node = shutil.which("node")
    vdir = validator_dir()
    if node is None:
        return None, "Node/schema engine not installed (no `node` on PATH)", None
    if not (vdir / "node_modules" / PACKAGE).is_dir() or not (vdir / "diff.js").is_file():
        return None, f"Node/schema engine not installed (run `make validator`: {vdir}/node_modules/{PACKAGE} " \
                     "is missing)", None
    with tempfile.TemporaryDirectory(prefix="runbook-prisma-diff-") as tmp:
        old, new = Path(tmp) / "old.prisma", Path(tmp) / "new.prisma"
        old.write_bytes(old_text.encode("utf-8"))
        new.write_bytes(new_text.encode("utf-8"))
        try:
            proc = subprocess.run([node, str(vdir / "diff.js"), str(old), str(new)],  # noqa: S603
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"the schema engine did not run: {exc}", None
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if lines else {}
    except ValueError:
        out = {}
    if out.get("ok"):
        return str(out.get("script") or ""), "ok", out.get("version")
    err = out.get("error") or proc.stderr.strip()[-300:] or f"diff.js exited {proc.returncode}"
    return None, "the schema engine failed: " + " ".join(str(err).split())[:300], out.get("version")


def check_migration(old_text: str, new_text: str, migration_sql: str, timeout: float = 120) -> DiffCheck:
    """Compare Prisma's ``migrate diff`` of the schema edit with the recorded ``migration_sql``."""
    script, why, version = prisma_diff(old_text, new_text, timeout)
    if script is None:
        return DiffCheck(False, None, why, version)
    prisma_all, recorded_all = statements(script), statements(migration_sql)
    prisma_set, prisma_folded = _fold(prisma_all)
    recorded_set, recorded_folded = _fold(recorded_all)
    only_p, only_m = sorted(prisma_set - recorded_set), sorted(recorded_set - prisma_set)
    not_compared = [s for s in recorded_all if not _COMPARED.match(s)]
    check = DiffCheck(True, not only_p and not only_m, "", version, prisma_all, only_p, only_m, not_compared)
    if check.agrees:
        notes = [f"{len(prisma_set)} statements, same set"]
        if len(prisma_folded) != len(recorded_folded):
            notes.append(f"Prisma drops {len(prisma_folded)} foreign keys of the dropped tables first, the migration "
                         f"{len(recorded_folded)}")
        if not_compared:
            notes.append(f"{len(not_compared)} more statements outside Prisma's datamodel not compared")
        check.message = "; ".join(notes)
    else:
        parts = []
        if only_p:
            parts.append("only in Prisma's diff: " + "; ".join(only_p))
        if only_m:
            parts.append("only in migration.sql: " + "; ".join(only_m))
        check.message = " | ".join(parts)
    return check
