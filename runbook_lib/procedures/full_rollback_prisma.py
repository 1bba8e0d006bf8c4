"""The Prisma side of the full rollback (guide Steps 4 and 5): the migration that records the removal, the
schema.prisma edit and Prisma's own checks of it, the ``_prisma_migrations`` row, and the files written after COMMIT.

* review: :func:`migration_sql` (the migration's text), :func:`prisma_review` (the schema edit,
  :func:`check_schema`, Prisma's migrate diff), :func:`show_prisma_side` (the notebook's output);
* execute: :func:`record_migration` (inside the transaction), :func:`recorded_migration_problem` (before COMMIT),
  :func:`write_prisma_files` (after COMMIT);
* verify: :func:`prisma_checks`.

Used by :mod:`runbook_lib.procedures.full_rollback`, which re-exports :func:`show_prisma_side` and
:func:`write_prisma_files` (the notebook and the tests call them there).
"""

# ruff: noqa: S608  - identifiers come from NameMap or the catalog (quoted); values are bind parameters

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import catalog
from ..errors import EvidenceError
from ..names import NameMap
from ..prisma import config as pconfig
from ..prisma import diff as pdiff
from ..prisma import edit as pedit
from ..prisma import history
from .base import Check, Plan

if TYPE_CHECKING:  # full_rollback imports this module
    from .full_rollback import FullRollbackDetails, Params

_COMMENT = {"table": "DropTable", "type": "DropEnum", "view": "DropView", "materialized view": "DropView",
            "function": "DropFunction", "procedure": "DropFunction", "trigger": "DropTrigger",
            "table constraint": "DropForeignKey", "table column": "AlterTable", "index": "DropIndex",
            "domain": "DropDomain", "sequence": "DropSequence"}


def migrations_folder(params: Params) -> Path:
    """The app's migrations folder: ``migrations.path`` of prisma.config.ts (given, or found next to the schema or
    up to two folders above it), else ``migrations`` next to schema.prisma (Prisma 6's default)."""
    return pconfig.migrations_dir(params.prisma_schema, params.prisma_config)


def migration_sql(disc: catalog.Discovery, params: Params, ledger_note: str) -> str:
    # schema-relative names, as in Prisma's own migrations (Prisma sets the search_path from ?schema=);
    # the statements that run in apply are the same ones, schema-qualified
    steps = [(_COMMENT.get(u.type, "Drop"), u.migration_sql or u.drop_sql or "") for u in disc.order]
    header = [f"Voucher system removed by the voucher runbooks (full-rollback); ledger_policy={params.ledger_policy}.",
              ledger_note]
    return history.render_sql(steps, header=[h for h in header if h])


def check_schema(params: Params, sedit: pedit.SchemaEdit) -> pconfig.Validation:
    """Does Prisma's own parser (the app's major: package.json, else the datasource's style) accept the edit?"""
    major, how = pconfig.prisma_major(params.prisma_schema, params.prisma_config)
    result = pconfig.validate_text({str(params.prisma_schema): sedit.new_text}, major)
    if result.checked and not result.ok:
        before = pconfig.validate_text({str(params.prisma_schema): sedit.old_text}, major)
        if before.checked and not before.ok:
            result.message += " (the schema as it is now is rejected too: not caused by this edit)"
    result.major_from = how
    return result


def prisma_review(conn: Connection, names: NameMap, params: Params, disc: catalog.Discovery, sql: str, detail: bool,
                  warnings: list[str]) -> tuple[pedit.SchemaEdit | None, pconfig.Validation | None,
                                                pdiff.DiffCheck | None]:
    """The review's Prisma side: the schema.prisma edit and, with ``detail``, Prisma's parser and migrate diff on
    it (``sql``: the migration); what needs the operator's attention is appended to ``warnings``."""
    schema_edit: pedit.SchemaEdit | None = None
    validation: pconfig.Validation | None = None
    mdiff: pdiff.DiffCheck | None = None
    if params.prisma_side and params.prisma_schema:
        schema_edit = pedit.remove_from_file(params.prisma_schema, params.models, params.enums)
        warnings.extend(schema_edit.warnings)
        if detail and schema_edit.changed:  # not under the locks: Node takes a moment
            validation = check_schema(params, schema_edit)
            if validation.checked and not validation.ok:
                warnings.append(validation.line())
            if sql:  # Prisma's own migrate diff of the edit, offline (never fails the review)
                mdiff = pdiff.check_migration(schema_edit.old_text, schema_edit.new_text, sql)
                if mdiff.checked and not mdiff.agrees:
                    warnings.append("Prisma's migrate diff of the schema edit " + mdiff.line())
        if disc.empty and schema_edit.changed:
            warnings.append("the database has no voucher objects but schema.prisma still defines them")
        if not disc.empty and not history.history_table(conn, names.db_schema):
            warnings.append("no _prisma_migrations table (not managed by prisma migrate): schema.prisma is edited, "
                            "no migration folder is written")
    elif not disc.empty and history.history_table(conn, names.db_schema):
        warnings.append("prisma_side=false: Prisma's migration history will not know about this change (drift)")
    return schema_edit, validation, mdiff


def record_migration(conn: Connection, names: NameMap, params: Params, plan: Plan[FullRollbackDetails],
                     counts: dict[str, Any], messages: list[str]) -> None:
    """In the execute's transaction: the migration's row in ``_prisma_migrations`` (Prisma's own checksum), where
    the database has that table; its name and checksum go to ``counts``."""
    folder = migrations_folder(params)
    mname = history.next_migration_name(folder, params.migration_name)
    row = history.record_applied(conn, names.db_schema, mname, plan.details["migration_sql"])
    if row is not None:
        counts["migration_name"] = mname
        counts["migration_checksum"] = row["checksum"]
        messages.append(f"recorded migration {mname} in _prisma_migrations (checksum {row['checksum'][:12]}…)")


def recorded_migration_problem(conn: Connection, names: NameMap, counts: dict[str, Any]) -> str | None:
    """Before COMMIT: the recorded migration's row is there with its checksum (None), else the problem."""
    if not counts.get("migration_name"):
        return None
    chk = conn.execute(sa.text(
        f"select checksum from {history.history_table(conn, names.db_schema)} where migration_name = :n"),
        {"n": counts["migration_name"]}).scalar()
    if chk != counts["migration_checksum"]:
        return "the _prisma_migrations row is missing or has another checksum"
    return None


def prisma_checks(conn: Connection, names: NameMap, params: Params, schema: str) -> list[Check]:
    """verify after an execute with the Prisma side: the migration history agrees with the folder, and
    ``schema`` (schema.prisma) no longer defines the voucher models."""
    checks: list[Check] = []
    folder = migrations_folder(params)
    if history.history_table(conn, names.db_schema):
        entries = history.compare(conn, names.db_schema, folder)
        bad = [e.migration_name for e in entries if not (e.in_database and e.in_folder and e.checksum_matches)]
        checks.append(Check("Prisma's migration history agrees with the folder", not bad, len(bad),
                            ", ".join(bad) or f"{len(entries)} migrations, checksums match"))
    left_blocks = pedit.remove_from_file(schema, params.models, params.enums)
    checks.append(Check("schema.prisma no longer defines the voucher models", not left_blocks.changed,
                        len(left_blocks.removed_blocks) + len(left_blocks.removed_fields),
                        ", ".join(left_blocks.removed_blocks + left_blocks.removed_fields) or "clean"))
    return checks


def show_prisma_side(run: Any) -> None:
    """Review output of the Prisma side: the migration to record (where), the schema.prisma diff, and whether
    Prisma's own parser accepts the edited schema."""
    p: Params = run.params
    plan: Plan[FullRollbackDetails] = run.plan
    print(plan.details["migration_sql"] or "(nothing to drop)")
    sedit: pedit.SchemaEdit | None = plan.details["schema_edit"]
    if sedit is None:
        print("(prisma_side is off: schema.prisma and the migrations folder are left alone)")
        return
    print(f"migrations folder: {plan.details.get('migrations_folder')}")
    print(sedit.diff(str(p.prisma_schema)) or "(schema.prisma needs no change)")
    v: pconfig.Validation | None = plan.details.get("schema_validation")
    if v is not None:
        print(v.line() + (f" [major from {v.major_from}]" if v.major_from else ""))
    d: pdiff.DiffCheck | None = plan.details.get("migration_diff")
    if d is not None:
        print("Prisma's migrate diff of the schema edit " + d.line())


def write_prisma_files(run: Any) -> dict[str, Any]:
    """After COMMIT only: write the migration folder and the edited schema.prisma. Review writes nothing.

    ``run`` is the :class:`runbook_lib.run.Run` that executed. Returns what was written.
    """
    p: Params = run.params
    result = run.result
    if p.mode != "execute" or result is None or not result.changed or not p.prisma_side or not p.prisma_schema:
        print("nothing written: " + ("review mode" if p.mode != "execute" else "no committed change, or prisma_side "
                                     "is off"), flush=True)
        return {"written": False}
    plan: Plan[FullRollbackDetails] = run.plan
    sedit = plan.details["schema_edit"]
    assert sedit is not None  # prisma_side with prisma_schema: the plan's prisma_review made the edit
    schema_path = Path(p.prisma_schema)
    out: dict[str, Any] = {"written": True}
    mname = result.counts.get("migration_name")
    if mname:
        path = history.write_migration(migrations_folder(p), mname, plan.details["migration_sql"])
        out["migration_file"] = str(path)
        out["migration_checksum"] = history.checksum(path.read_bytes())
        if out["migration_checksum"] != result.counts["migration_checksum"]:
            raise EvidenceError(f"{path} has checksum {out['migration_checksum']}, _prisma_migrations has "
                                f"{result.counts['migration_checksum']}; fix the file before running prisma")
    current = schema_path.read_bytes().decode("utf-8")
    if current != sedit.old_text:
        raise EvidenceError(f"{schema_path} changed since the plan was made; it was not edited. Remove the models "
                            f"{', '.join(p.models)} and enums {', '.join(p.enums)} by hand (the diff is shown above)")
    if sedit.changed:
        pedit.write_atomically(schema_path, sedit.new_text)
    out["schema_file"] = str(schema_path)
    out["schema_blocks_removed"] = sedit.removed_blocks
    out["schema_fields_removed"] = sedit.removed_fields
    out["next_step"] = "run `npx prisma generate` (guide Step 5) and commit schema.prisma and the migration folder"
    print(f"wrote {out.get('migration_file', '(no migration folder: database not managed by prisma migrate)')} and "
          f"{schema_path}. Next: {out['next_step']}", flush=True)
    return out
