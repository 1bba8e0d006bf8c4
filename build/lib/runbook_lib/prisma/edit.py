"""Remove models and enums from a schema.prisma, and the fields other models hold to them.

Everything else stays byte-for-byte as it was: the edit only deletes whole lines (a block from its
header line to its closing brace, the ``///`` documentation lines directly above it, one blank line
separating it from the next block; a field line and its ``///`` lines). It never re-formats; run
``prisma format`` afterwards if column alignment matters. The result is checked by Prisma's own validator
in the tests (tests/prisma_validator).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

_HEADER = re.compile(r"^[ \t]*(model|enum|view|type)[ \t]+(\w+)[ \t]*\{", re.M)


@dataclass
class Block:
    kind: str
    name: str
    start: int  # offset of the header line's first character
    end: int  # offset just after the closing brace's line (its newline included)
    body_start: int  # offset just after the opening brace


@dataclass
class SchemaEdit:
    old_text: str
    new_text: str
    removed_blocks: list[str] = field(default_factory=list)
    removed_fields: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.new_text != self.old_text

    def diff(self, path: str = "schema.prisma") -> str:
        return "".join(difflib.unified_diff(self.old_text.splitlines(keepends=True),
                                            self.new_text.splitlines(keepends=True),
                                            fromfile=f"a/{path}", tofile=f"b/{path}"))


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _line_end(text: str, pos: int) -> int:
    """Offset just after the newline of the line containing ``pos`` (or the end of the text)."""
    nl = text.find("\n", pos)
    return len(text) if nl < 0 else nl + 1


def _closing_brace(text: str, pos: int) -> int:
    """Offset of the ``}`` closing the block whose body starts at ``pos`` (strings and comments skipped)."""
    depth, i, n = 1, pos, len(text)
    while i < n:
        ch = text[i]
        if ch == "/" and text.startswith("//", i):
            i = _line_end(text, i)
            continue
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced braces in schema.prisma")


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    pos = 0
    while True:
        m = _HEADER.search(text, pos)
        if not m:
            return out
        # a header inside a comment line is not a header
        ls = _line_start(text, m.start())
        if text[ls:m.start()].strip():
            pos = m.end()
            continue
        close = _closing_brace(text, m.end())
        out.append(Block(kind=m.group(1), name=m.group(2), start=ls, end=_line_end(text, close), body_start=m.end()))
        pos = close + 1


def _doc_lines_above(text: str, start: int) -> int:
    """Extend ``start`` upwards over directly preceding ``///`` documentation lines."""
    while start > 0:
        prev = _line_start(text, start - 1)
        if text[prev:start].strip().startswith("///"):
            start = prev
        else:
            break
    return start


def _is_blank_line(text: str, start: int) -> bool:
    end = _line_end(text, start)
    return start < len(text) and not text[start:end].strip()


def _field_type(line: str) -> str | None:
    code = line.split("//", 1)[0].strip()
    if not code or code.startswith("@@") or code.startswith("@"):
        return None
    parts = code.split()
    if len(parts) < 2:
        return None
    return parts[1].rstrip("?").removesuffix("[]").rstrip("?")


def remove_definitions(text: str, models: list[str], enums: list[str]) -> SchemaEdit:
    """Delete the ``models`` and ``enums`` blocks and every field of another block typed with one of them."""
    targets = set(models) | set(enums)
    all_blocks = blocks(text)
    present = {b.name for b in all_blocks}
    edit = SchemaEdit(old_text=text, new_text=text, not_found=[n for n in [*models, *enums] if n not in present])
    cuts: list[tuple[int, int]] = []
    for b in all_blocks:
        if b.name in targets and b.kind in ("model", "enum", "view", "type"):
            cuts.append((_doc_lines_above(text, b.start), b.end))
            edit.removed_blocks.append(f"{b.kind} {b.name}")
            continue
        # fields of kept blocks that point to a removed model or enum
        body_end = _closing_brace(text, b.body_start)
        pos = _line_end(text, b.body_start)
        removed_here: list[str] = []
        while pos < body_end:
            end = _line_end(text, pos)
            line = text[pos:min(end, body_end)]
            ftype = _field_type(line)
            if ftype in targets:
                fname = line.split()[0]
                cuts.append((_doc_lines_above(text, pos), end))
                removed_here.append(fname)
                edit.removed_fields.append(f"{b.name}.{fname}")
            pos = end
        if removed_here:
            body = text[b.body_start:body_end]
            for fname in removed_here:
                if re.search(r"@@\w+\([^)]*\b" + re.escape(fname) + r"\b", body):
                    edit.warnings.append(f"{b.kind} {b.name}: a block attribute (@@index/@@unique/@@id) still names the "
                                         f"removed field {fname!r}; edit it by hand")
    cuts.sort()
    merged: list[list[int]] = []
    for s, e in cuts:
        # blocks separated only by blank lines are removed together
        if merged and not text[merged[-1][1]:s].strip():
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    for m in merged:
        s, e = m
        before_blank = s == 0 or _is_blank_line(text, _line_start(text, s - 1))
        rest = text[e:]
        if before_blank and _is_blank_line(text, e):
            m[1] = _line_end(text, e)  # the blank line that separated the block from the next one
        elif not rest.strip() and s > 0 and before_blank:
            m[0] = _line_start(text, s - 1)  # at the end of the file: drop the blank line above instead
    new = []
    pos = 0
    for s, e in merged:
        new.append(text[pos:s])
        pos = e
    new.append(text[pos:])
    edit.new_text = "".join(new)
    return edit


def remove_from_file(path: str | Path, models: list[str], enums: list[str]) -> SchemaEdit:
    """The edit for the file at ``path``, computed in memory (nothing is written)."""
    return remove_definitions(Path(path).read_bytes().decode("utf-8"), models, enums)


def write_atomically(path: str | Path, text: str) -> None:
    """Replace the file's contents in one step (a temporary file in the same folder, then rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.runbook-tmp")
    tmp.write_bytes(text.encode("utf-8"))
    try:
        tmp.chmod(p.stat().st_mode & 0o7777)
    except OSError:
        pass
    tmp.replace(p)
