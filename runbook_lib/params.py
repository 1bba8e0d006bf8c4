"""Typed, validated parameters. Every procedure's parameters are a pydantic model; bad input stops here.

Sources are merged in one fixed order (later wins): the model's defaults, parameter files (``-f``,
in the order given), then ``-p NAME VALUE`` pairs. Unknown names and ill-typed values are errors,
never warnings (papermill itself only warns and checks no types).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from .errors import ParameterError

Mode = Literal["review", "execute"]
_PLAN_ID = re.compile(r"^[0-9a-f]{16,64}$")
#: a plain SQL identifier (schema, table, column, enum, model): quoted where used, but never anything else
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def identifiers(values: list[str], what: str) -> list[str]:
    """``values`` if every one is a plain identifier, else a ValueError naming the bad ones."""
    bad = [x for x in values if not IDENTIFIER.fullmatch(x)]
    if bad:
        raise ValueError(f"{bad} are not {what} (letters, digits, _ and $)")
    return values


class _NoTimestampLoader(yaml.SafeLoader):
    """YAML loader that keeps timestamps as strings, so naive ones can be refused by name."""


_NoTimestampLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoTimestampLoader)  # noqa: S506 - a SafeLoader subclass


#: a date with a zone but no time (``2025-12-01Z``, ``2025-12-01+01:00``): midnight in that zone
_DATE_WITH_ZONE = re.compile(r"(\d{4}-\d{2}-\d{2})([Zz]|[+-]\d{2}(?::?\d{2})?)")


def _utc_example(parsed: dt.datetime) -> str:
    """``parsed`` (naive) written as a full ISO-8601 UTC timestamp: the hint for a value without a zone."""
    return parsed.isoformat(timespec="microseconds" if parsed.microsecond else "seconds") + "Z"


def parse_aware_datetime(value: Any, name: str) -> dt.datetime | None:
    """ISO-8601 with an explicit zone -> aware datetime (UTC). Naive or unparseable input is refused.

    A date with a zone (``2025-12-01Z``) is midnight in that zone; a value without a zone is refused with a
    complete example derived from it (``2025-12-01`` -> ``2025-12-01T00:00:00Z``).
    """
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        date_zone = _DATE_WITH_ZONE.fullmatch(text)
        if date_zone:
            text = f"{date_zone[1]}T00:00:00{date_zone[2]}"
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ParameterError(
                f"parameter {name!r}: {value!r} is not an ISO-8601 timestamp such as 2025-12-01T00:00:00Z", name
            ) from None
    else:
        raise ParameterError(f"parameter {name!r}: expected an ISO-8601 timestamp string, got {type(value).__name__}", name)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ParameterError(
            f"parameter {name!r}: timestamp {value!r} has no time zone; add one, e.g. {_utc_example(parsed)} "
            f"(UTC) or {parsed.isoformat(timespec='seconds')}+01:00",
            name,
        )
    return parsed.astimezone(dt.UTC)


def _ledger_source(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}", v or ""):
        raise ValueError(f"{v!r} is not a ledger source: a short name like voucher_redemption "
                         "(letters, digits and _ . : / -)")
    return v


#: the ``source`` of ledger rows (``voucher_redemption``): a slug, never free text
LedgerSource = Annotated[str, AfterValidator(_ledger_source)]


def _top_rows(v: int) -> int:
    if not 1 <= v <= 1000:
        raise ValueError("must be between 1 and 1000")
    return v


#: rows in a bounded table of a review (``top_users``): 1 to 1000
TopRows = Annotated[int, AfterValidator(_top_rows)]


def name_list(v: Any, limit: int = 100_000, allow_empty: bool = True) -> list[str]:
    """A list parameter of names: ``[a, b]`` or ``"a, b"`` (CLI), stripped; too many or non-strings refused."""
    if v is None or v == "":
        v = []
    if isinstance(v, str):
        v = [x for x in (p.strip() for p in v.split(",")) if x]
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) and str(x).strip() for x in v):
        raise ValueError("must be a list of non-empty strings")
    if not v and not allow_empty:
        raise ValueError("must not be empty")
    if len(v) > limit:
        raise ValueError(f"{len(v)} entries is too many for one run (at most {limit})")
    return [str(x).strip() for x in v]


#: the ``inspect_user`` parameter's description, shared by the procedures whose review shows affected users
INSPECT_USER_DESCRIPTION = ("the user shown in the review's 'Inspect one user' section (a user id; empty: the user "
                            "with the largest reversal)")


def inspect_user_id(v: Any) -> str | None:
    """``inspect_user``: None/empty, or one user id (a short printable string, never a list)."""
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError("must be one user id (text), e.g. user_0042")
    text = str(v).strip()
    if not text:
        return None
    if len(text) > 200 or not text.isprintable():
        raise ValueError("must be one user id of at most 200 printable characters, e.g. user_0042")
    return text


#: ``inspect_user``: None, or one user id (checked before pydantic's own str coercion)
InspectUser = Annotated[str | None, BeforeValidator(inspect_user_id)]


def recorded_reason(v: str | None) -> str | None:
    """An override's reason: None when empty, else a real sentence (it is recorded in the evidence)."""
    if v in (None, ""):
        return None
    if len(v) < 10:
        raise ValueError("give a real reason (at least 10 characters); it is recorded in the evidence")
    return v


class CommonParams(BaseModel):
    """Parameters every procedure takes. Connection strings are never parameters: see DATABASE_URL."""

    model_config = ConfigDict(extra="forbid", validate_default=True, str_strip_whitespace=True)

    #: procedure name, set by subclasses
    procedure: ClassVar[str] = ""

    mode: Mode = Field("review", description="review (read-only, the default) or execute (needs approved_plan; "
                       "--execute)")
    approved_plan: str | None = Field(None, description="the plan id printed by the review; required to execute "
                                      "(--approve)")
    lock_timeout: str = Field("5s", description="how long execute waits for row locks before aborting, e.g. 5s")
    statement_timeout: str = Field("300s", description="the longest one statement may run, e.g. 300s")
    prisma_schema: str | None = Field(None, description="path to schema.prisma when models are @@map/@map-ped "
                                      "(default: tables found by reflection)")
    db_schema: str = Field("public", description="the PostgreSQL schema holding the application's tables")
    table_map: dict[str, str] = Field({}, description="model -> table overrides, e.g. "
                                      "{TokenTransaction: token_transactions}")
    column_map: dict[str, str] = Field({}, description="Model.field -> column overrides, e.g. "
                                       "{Voucher.currentUses: current_uses}")
    evidence_dir: str | None = Field(None, description="where exports and run-state.json go (set by the CLI: the "
                                     "new run folder)")
    sample_rows: int = Field(20, description="rows shown in each sample table (1-1000)")
    confirm_target: str | None = Field(None, description="the target database's name, needed to execute on a "
                                       "production target (--confirm-target; never from a -f file)")
    production: bool = Field(False, description="mark the target production (like RUNBOOK_TARGET_PRODUCTION=1): "
                             "execute then needs confirm_target")

    @field_validator("approved_plan")
    @classmethod
    def _plan_id(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not _PLAN_ID.match(v):
            raise ValueError(f"{v!r} is not a plan id (hex digits, as printed by the review run)")
        return v

    @field_validator("prisma_schema")
    @classmethod
    def _schema_path(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not Path(v).is_file():
            raise ValueError(f"schema file {v!r} does not exist")
        return v

    @field_validator("sample_rows")
    @classmethod
    def _sample(cls, v: int) -> int:
        if not 1 <= v <= 1000:
            raise ValueError("must be between 1 and 1000")
        return v

    @field_validator("db_schema")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not IDENTIFIER.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid schema name")
        return v

    @field_validator("table_map", "column_map")
    @classmethod
    def _maps(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,126}", str(k)) or not IDENTIFIER.fullmatch(str(val)):
                raise ValueError(f"{k!r}: {val!r} is not a valid model.field -> identifier mapping")
        return v

    def lock_timeout_ms(self) -> int:
        from .db import duration_ms

        return duration_ms(self.lock_timeout, "lock_timeout")

    def statement_timeout_ms(self) -> int:
        from .db import duration_ms

        return duration_ms(self.statement_timeout, "statement_timeout")

    def public_dict(self) -> dict[str, Any]:
        """Parameters as JSON-able values, for manifests and papermill (no secrets exist here)."""
        return self.model_dump(mode="json")


class DestructiveParams(CommonParams):
    """Parameters of procedures that delete or overwrite data: they need a recent backup (see ``backup``)."""

    backup_max_age_hours: float = Field(24.0, description="execute needs a backup of the procedure's tables in "
                                        "this incident younger than this many hours")
    backup_override_reason: str | None = Field(None, description="execute without such a backup: the reason (at "
                                               "least 10 characters) is recorded in the manifest")

    @field_validator("backup_max_age_hours")
    @classmethod
    def _age(cls, v: float) -> float:
        if not 0 < v <= 24 * 365:
            raise ValueError("must be more than 0 and at most 8760 hours")
        return v

    @field_validator("backup_override_reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        return recorded_reason(v)


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown parameter (check its spelling; 'runbook list --parameters' shows the valid ones)"
        # a model-level check (several parameters together) names its parameters in its own message
        parts.append(f"parameter {loc!r}: {msg}" if loc else msg)
    return "; ".join(parts)


def _error_parameter(exc: ValidationError, model: type[CommonParams]) -> str | None:
    """The parameter the first error is about: its location, or the first parameter a model-level check names."""
    first = exc.errors()[0]
    if first["loc"]:
        return str(first["loc"][0])
    named = [n for n in re.findall(r"'([A-Za-z_][A-Za-z0-9_]*)'", first["msg"]) if n in model.model_fields]
    return named[0] if named else None


def validate(model: type[CommonParams], values: dict[str, Any]) -> CommonParams:
    """Build ``model`` from ``values`` or raise one ParameterError naming every problem on one line."""
    try:
        params = model.model_validate(values)
    except ParameterError:
        raise
    except ValidationError as exc:
        raise ParameterError(_one_line(exc), _error_parameter(exc, model)) from None
    params.lock_timeout_ms()
    params.statement_timeout_ms()
    return params


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"parameter file {str(p)!r} does not exist", "parameters_file")
    try:
        data = load_yaml(p.read_text())
    except yaml.YAMLError as exc:
        raise ParameterError(f"parameter file {str(p)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(f"parameter file {str(p)!r} must hold a mapping of name: value")
    return data


def parse_cli_value(raw: str) -> Any:
    """``-p name value``: YAML scalars, flow lists ``[a, b]`` and maps ``{a: b}``, timestamps kept as text.

    Only a value written as a list or map becomes one: ``-p reason "snapshot: taken at 10:05"`` stays the
    string it looks like (plain YAML would read it as a one-key map).
    """
    text = raw.strip()
    try:
        value = load_yaml(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, dict) and not text.startswith("{"):
        return raw
    if isinstance(value, list) and not text.startswith("["):
        return raw
    return value


def merge_sources(
    files: list[str | Path] | None = None,
    pairs: list[tuple[str, str]] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge parameter sources in the documented order: files (in order), then -p pairs, then overrides."""
    merged: dict[str, Any] = {}
    for f in files or []:
        values = read_parameter_file(f)
        if "confirm_target" in values:
            # naming the production database is a deliberate act at the command line, never a saved default
            raise ParameterError(f"parameter file {f}: 'confirm_target' cannot come from a file; give "
                                 "--confirm-target DATABASE on the command line", "confirm_target")
        merged.update(values)
    for name, raw in pairs or []:
        merged[name] = parse_cli_value(raw)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return merged


def execute_command(procedure: str, params: CommonParams, plan_id: str | None) -> str:
    """The ``runbook run`` command that executes ``plan_id`` with these parameters (those that differ from the
    defaults), ready to paste: the execute then leaves a run record in the incident's chain."""
    import shlex

    skip = {"mode", "approved_plan", "evidence_dir", "confirm_target"}
    defaults = {k: json.loads(json.dumps(f.get_default(call_default_factory=True), default=str))
                for k, f in type(params).model_fields.items() if not f.is_required()}
    cmd = ["runbook", "run", procedure]
    for key, value in params.public_dict().items():
        if key in skip or defaults.get(key, object()) == value:
            continue
        cmd += ["-p", key, value if isinstance(value, str) else json.dumps(value)]
    if params.confirm_target:
        cmd += ["--confirm-target", params.confirm_target]
    cmd += ["--incident", "INCIDENT", "--execute", "--approve", plan_id or "PLAN_ID"]
    return shlex.join(cmd)
