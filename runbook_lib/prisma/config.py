"""Where an app keeps its Prisma schema and migrations, and which Prisma major it uses (6 or 7).

Prisma 7 moved the datasource URL out of ``schema.prisma`` into ``prisma.config.ts``, which also names the
schema and the migrations folder::

    export default defineConfig({
      schema: "prisma/schema.prisma",
      migrations: { path: "prisma/migrations" },
      datasource: { url: env("DATABASE_URL") },
    })

The file is TypeScript; it is read here with conservative regular expressions and **never executed**. Only
string literals and ``path.join``/``path.resolve`` of string literals (``__dirname`` and
``import.meta.dirname`` allowed as the first argument) are understood; anything else is reported as not
understood and the defaults apply (migrations next to the schema file, as Prisma 6 does).

The Prisma major comes from the app's ``package.json`` (``prisma`` or ``@prisma/client``) near the schema; without
one, a datasource block with ``url`` means Prisma 6 and one without means Prisma 7 (Prisma 6 rejects a
datasource without ``url``: "Argument "url" is missing"; Prisma 7 rejects one with it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAMES = ("prisma.config.ts", "prisma.config.mts", "prisma.config.cts", "prisma.config.js",
                "prisma.config.mjs", "prisma.config.cjs")

_STR = r"""(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|`([^`$\\]*)`)"""
_VALUE = rf"""(?:{_STR}|path\s*\.\s*(?:join|resolve)\s*\(([^()]*)\))"""
_SCHEMA_KEY = re.compile(rf"(?<![\w.$])[\"']?schema[\"']?\s*:\s*{_VALUE}")
_MIGRATIONS_BLOCK = re.compile(r"(?<![\w.$])[\"']?migrations[\"']?\s*:\s*\{(?P<body>[^{}]*)\}", re.S)
_PATH_KEY = re.compile(rf"(?<![\w.$])[\"']?path[\"']?\s*:\s*{_VALUE}")
_ANY_KEY = re.compile(r"(?<![\w.$])[\"']?(schema|migrations)[\"']?\s*:")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    # a line comment starts at the line's start or after a space/punctuation; "postgresql://…" in a string stays
    return re.sub(r"(?m)(^|[\s;,{}()])//.*$", r"\1", text)


def _literal(m: re.Match[str], first: int) -> str | None:
    """The value of a matched ``_VALUE`` (groups ``first``..``first+3``), or None when it is not understood."""
    for g in range(first, first + 3):
        if m.group(g) is not None:
            return m.group(g).replace("\\\\", "\\")
    inner = m.group(first + 3)
    if inner is None:
        return None
    parts = [p.strip() for p in inner.split(",") if p.strip()]
    out: list[str] = []
    for i, p in enumerate(parts):
        lit = re.fullmatch(_STR, p)
        if lit:
            out.append(next(x for x in lit.groups() if x is not None))
        elif i == 0 and p in ("__dirname", "import.meta.dirname", "process.cwd()"):
            continue  # the config's own folder (where relative paths start anyway)
        else:
            return None
    return "/".join(out) if out else None


@dataclass
class PrismaConfig:
    path: Path
    #: the schema file or folder, resolved against the config's folder (None: not set, or not understood)
    schema: Path | None = None
    #: the migrations folder, resolved likewise
    migrations: Path | None = None
    has_datasource_url: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "schema": str(self.schema) if self.schema else None,
                "migrations": str(self.migrations) if self.migrations else None,
                "has_datasource_url": self.has_datasource_url, "notes": list(self.notes)}


def read_config(path: str | Path) -> PrismaConfig:
    """What ``prisma.config.ts`` says about the schema and migrations (read as text, never executed)."""
    p = Path(path)
    text = _strip_comments(p.read_text(encoding="utf-8"))
    cfg = PrismaConfig(path=p)
    base = p.resolve().parent
    m = _SCHEMA_KEY.search(text)
    if m:
        val = _literal(m, 1)
        if val is None:
            cfg.notes.append(f"{p.name}: 'schema' is not a string literal or path.join of literals; not understood")
        else:
            cfg.schema = (base / val).resolve()
    elif re.search(r"(?<![\w.$])[\"']?schema[\"']?\s*:", text):
        cfg.notes.append(f"{p.name}: 'schema' is not a string literal or path.join of literals; not understood")
    mb = _MIGRATIONS_BLOCK.search(text)
    if mb:
        pm = _PATH_KEY.search(mb.group("body"))
        val = _literal(pm, 1) if pm else None
        if pm and val is not None:
            cfg.migrations = (base / val).resolve()
        elif pm:
            cfg.notes.append(f"{p.name}: 'migrations.path' is not a string literal; not understood")
    cfg.has_datasource_url = bool(re.search(r"(?<![\w.$])datasource[\"']?\s*:\s*\{[^{}]*\burl\s*:", text, re.S))
    return cfg


def find_config(schema_path: str | Path | None) -> Path | None:
    """``prisma.config.ts`` in the schema's folder or the two folders above it (the app's root), if any."""
    if schema_path is None:
        return None
    start = Path(schema_path).resolve()
    folder = start if start.is_dir() else start.parent
    for d in [folder, *list(folder.parents)[:2]]:
        for name in CONFIG_NAMES:
            if (d / name).is_file():
                return d / name
    return None


def schema_files(schema: str | Path) -> list[Path]:
    """The schema's files: the file itself, or every ``.prisma`` file of a schema folder (sorted)."""
    p = Path(schema)
    if p.is_dir():
        return sorted(x for x in p.rglob("*.prisma") if x.is_file() and "migrations" not in x.relative_to(p).parts)
    return [p]


def schema_from(prisma_schema: str | Path | None, prisma_config: str | Path | None) -> Path | None:
    """The schema path: ``prisma_schema`` when given, else the config's ``schema``."""
    if prisma_schema:
        return Path(prisma_schema)
    if prisma_config:
        return read_config(prisma_config).schema
    return None


def migrations_dir(prisma_schema: str | Path | None, prisma_config: str | Path | None = None) -> Path:
    """The app's migrations folder: the config's ``migrations.path`` (the given config, or one found next to
    the schema or above it), else ``migrations`` next to the schema file (in a schema folder: inside it)."""
    cfg_path = Path(prisma_config) if prisma_config else find_config(prisma_schema)
    if cfg_path is not None:
        cfg = read_config(cfg_path)
        if cfg.migrations is not None:
            return cfg.migrations
        if prisma_schema is None and cfg.schema is not None:
            prisma_schema = cfg.schema
    if prisma_schema is None:
        raise ValueError("no schema path and no migrations path in prisma.config.ts")
    s = Path(prisma_schema).resolve()
    return (s if s.is_dir() else s.parent) / "migrations"


_VERSION = re.compile(r"(\d+)\.")


def prisma_major(prisma_schema: str | Path | None, prisma_config: str | Path | None = None) -> tuple[int, str]:
    """The app's Prisma major (6 or 7) and how it was decided."""
    starts: list[Path] = []
    cfg_path = Path(prisma_config) if prisma_config else find_config(prisma_schema)
    if cfg_path is not None:
        starts.append(cfg_path.resolve().parent)
    if prisma_schema is not None:
        s = Path(prisma_schema).resolve()
        starts.append(s if s.is_dir() else s.parent)
    seen: set[Path] = set()
    for start in starts:
        for d in [start, *list(start.parents)[:2]]:
            pkg = d / "package.json"
            if d in seen or not pkg.is_file():
                continue
            seen.add(d)
            try:
                data = json.loads(pkg.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for section in ("dependencies", "devDependencies"):
                for name in ("prisma", "@prisma/client"):
                    ver = str((data.get(section) or {}).get(name, ""))
                    m = _VERSION.search(ver)
                    if m:
                        return int(m.group(1)), f"{pkg} ({name} {ver})"
    if prisma_schema is not None:
        text = "".join(f.read_text(encoding="utf-8") for f in schema_files(prisma_schema) if f.is_file())
        ds = re.search(r"(?ms)^\s*datasource\s+\w+\s*\{(.*?)^\s*\}", re.sub(r"//.*?$", "", text, flags=re.M))
        if ds is not None:
            if re.search(r"(?m)^\s*url\s*=", ds.group(1)):
                return 6, "datasource block with url (Prisma 6 style)"
            return 7, "datasource block without url (Prisma 7 style: the URL lives in prisma.config.ts)"
    return 7, "no package.json and no datasource block: assumed Prisma 7"


# ------------------------------------------------------------------------------------------ validation
def validator_dir() -> Path:
    """The validator's folder (``tests/prisma_validator``; ``RUNBOOK_PRISMA_VALIDATOR`` overrides)."""
    env = os.environ.get("RUNBOOK_PRISMA_VALIDATOR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "tests" / "prisma_validator"


@dataclass
class Validation:
    checked: bool
    ok: bool | None
    major: int
    message: str
    version: str | None = None
    models: list[str] = field(default_factory=list)
    enums: list[str] = field(default_factory=list)
    #: how the major was chosen (package.json, or the datasource's style)
    major_from: str = ""

    def line(self) -> str:
        if not self.checked:
            return f"Prisma {self.major} parser: not checked: {self.message}"
        verdict = "accepts" if self.ok else "REJECTS"
        return f"Prisma {self.major} parser ({self.version}) {verdict} the edited schema" + (
            "" if self.ok else f": {self.message}")


def validate_text(files: dict[str, str], major: int, timeout: float = 120) -> Validation:
    """Run Prisma's own parser (``@prisma/prisma-schema-wasm`` of ``major`` under Node) on the schema
    ``files`` (name -> text, written to a temporary folder). Never raises for a missing tool."""
    import tempfile

    node = shutil.which("node")
    vdir = validator_dir()
    if node is None:
        return Validation(False, None, major, "Node/validator not installed (no `node` on PATH)")
    if not (vdir / "node_modules" / f"prisma-schema-wasm-{major}").is_dir():
        return Validation(False, None, major, f"Node/validator not installed (run `make validator`: "
                                              f"{vdir}/node_modules/prisma-schema-wasm-{major} is missing)")
    with tempfile.TemporaryDirectory(prefix="runbook-prisma-") as tmp:
        paths = []
        for i, (name, text) in enumerate(files.items()):
            p = Path(tmp) / f"{i:03d}_{Path(name).name}"
            p.write_bytes(text.encode("utf-8"))
            paths.append(str(p))
        try:
            proc = subprocess.run([node, str(vdir / "validate.js"), "--major", str(major), *paths],  # noqa: S603
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Validation(False, None, major, f"validator did not run: {exc}")
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if lines else {}
    except ValueError:
        out = {}
    if proc.returncode == 3 or not out:
        return Validation(False, None, major, out.get("error") or proc.stderr.strip()[:300] or "validator failed")
    if out.get("ok"):
        return Validation(True, True, major, "ok", out.get("version"), [m["name"] for m in out.get("models", [])],
                          list(out.get("enums", [])))
    err = str(out.get("error", ""))
    try:
        err = json.loads(err).get("message", err)
    except (ValueError, AttributeError):
        pass
    return Validation(True, False, major, " ".join(err.split())[:500], out.get("version"))
