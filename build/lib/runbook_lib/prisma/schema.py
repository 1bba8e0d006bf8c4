"""A small reader for schema.prisma: models, their fields, ``@@map``/``@map`` names, and enums.

It reads what the runbooks need (names in the database), not the whole Prisma grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK = re.compile(r"^(?P<kind>model|enum|view|type)\s+(?P<name>\w+)\s*\{(?P<body>.*?)^\}", re.M | re.S)
_COMMENT = re.compile(r"//.*?$", re.M)
_MAP = re.compile(r"@map\(\s*(?:name\s*:\s*)?\"([^\"]+)\"")
_MODEL_MAP = re.compile(r"@@map\(\s*(?:name\s*:\s*)?\"([^\"]+)\"")
_SCHEMA = re.compile(r"@@schema\(\s*\"([^\"]+)\"")


@dataclass
class Field:
    name: str
    type: str
    column: str
    is_list: bool = False
    optional: bool = False
    is_relation: bool = False
    attributes: str = ""


@dataclass
class Model:
    name: str
    table: str
    fields: dict[str, Field] = field(default_factory=dict)
    db_schema: str | None = None


@dataclass
class Enum:
    name: str
    db_name: str
    values: list[str]


@dataclass
class PrismaSchema:
    text: str
    models: dict[str, Model]
    enums: dict[str, Enum]
    path: str | None = None


def parse_schema(text: str, path: str | None = None) -> PrismaSchema:
    clean = _COMMENT.sub("", text)
    models: dict[str, Model] = {}
    enums: dict[str, Enum] = {}
    blocks = list(_BLOCK.finditer(clean))
    model_names = {b.group("name") for b in blocks if b.group("kind") in ("model", "view")}
    for b in blocks:
        kind, name, body = b.group("kind"), b.group("name"), b.group("body")
        if kind == "enum":
            values, db_name = [], name
            for line in body.splitlines():
                line = line.strip()
                if not line:
                    continue
                if line.startswith("@@map"):
                    m = _MODEL_MAP.search(line)
                    db_name = m.group(1) if m else name
                    continue
                if line.startswith("@@"):
                    continue
                tok = line.split()[0]
                m = _MAP.search(line)
                values.append(m.group(1) if m else tok)
            enums[name] = Enum(name, db_name, values)
        elif kind in ("model", "view"):
            mm = _MODEL_MAP.search(body)
            sm = _SCHEMA.search(body)
            model = Model(name=name, table=mm.group(1) if mm else name, db_schema=sm.group(1) if sm else None)
            for line in body.splitlines():
                line = line.strip()
                if not line or line.startswith("@@"):
                    continue
                parts = line.split(None, 2)
                if len(parts) < 2:
                    continue
                fname, ftype = parts[0], parts[1]
                attrs = parts[2] if len(parts) > 2 else ""
                base = ftype.rstrip("?").removesuffix("[]")
                fmap = _MAP.search(attrs)
                model.fields[fname] = Field(
                    name=fname,
                    type=base,
                    column=fmap.group(1) if fmap else fname,
                    is_list=ftype.endswith("[]"),
                    optional=ftype.endswith("?"),
                    is_relation=base in model_names,
                    attributes=attrs,
                )
            models[name] = model
    return PrismaSchema(text=text, models=models, enums=enums, path=path)


def parse_schema_file(path: str | Path) -> PrismaSchema:
    p = Path(path)
    return parse_schema(p.read_text(), str(p))
