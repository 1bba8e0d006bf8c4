"""The procedure contract (``runbook_lib.procedures.base.Procedure``) is all the driver needs: a procedure built here
from the contract alone runs through review, execute, verify and finish with every safety of the built-in ones, and
the driver keys no behaviour on a procedure's name (docs/architecture.md, "Adding a procedure")."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import Connection

from runbook_lib import procedures
from runbook_lib.errors import ApprovalError, BackupRequiredError, InvariantError
from runbook_lib.names import NameMap
from runbook_lib.params import CommonParams, DestructiveParams
from runbook_lib.procedures.base import ApplyResult, Check, Plan, Procedure, VerifyResult, plan_hash
from runbook_lib.run import Run

ROOT = Path(__file__).resolve().parents[1]
TABLE = "contract_note"


class NoteParams(CommonParams):
    procedure: ClassVar[str] = "note-fix"
    marker: str = Field("bad", description="the flag value to fix")


class NoteFix(Procedure):
    """Sets ``flag = 'ok'`` on the notes flagged ``marker``: the smallest writing procedure."""

    NAME = "note-fix"
    NOTEBOOK = "note_fix.ipynb"
    TITLE = "Fix flagged notes (contract test)"
    GUIDE_SECTION = "none"
    Params = NoteParams
    shared_checks = False  # the contract test's database has none of the voucher tables

    def plan(self, conn: Connection, params: Any, names: NameMap, *, detail: bool = True) -> Plan:
        ids = [r[0] for r in conn.execute(sa.text(f"select id from {TABLE} where flag = :m order by id"),
                                          {"m": params.marker})]
        return Plan(self.NAME, plan_hash(self.NAME, ids), {"notes to fix": len(ids), "nothing_to_do": not ids},
                    details={"ids": ids})

    def lock(self, conn: Connection, params: Any, names: NameMap) -> None:
        conn.execute(sa.text(f"select id from {TABLE} where flag = :m order by id for update"), {"m": params.marker})

    def apply(self, conn: Connection, params: Any, names: NameMap, plan: Plan) -> ApplyResult:
        n = conn.execute(sa.text(f"update {TABLE} set flag = 'ok' where id = any(:ids)"),
                         {"ids": plan.details["ids"]}).rowcount
        return ApplyResult(changed=True, counts={"notes fixed": n})

    def check(self, conn: Connection, params: Any, names: NameMap, plan: Plan, result: ApplyResult) -> None:
        if result.counts["notes fixed"] != len(plan.details["ids"]):
            raise InvariantError("not every planned note was fixed")

    def verify(self, conn: Connection, params: Any, names: NameMap, plan: Plan | None) -> VerifyResult:
        left = conn.execute(sa.text(f"select count(*) from {TABLE} where flag = :m"), {"m": params.marker}).scalar_one()
        return VerifyResult([Check("no flagged note left", left == 0, int(left), after_execute=True)])


class NoteReport(NoteFix):
    """The same plan, read-only: its execute transaction is READ ONLY even if apply tries to write."""

    NAME = "note-report"
    writes = False


class DestructiveParamsNote(DestructiveParams):
    procedure: ClassVar[str] = "note-purge"
    marker: str = "bad"


class NotePurge(NoteFix):
    NAME = "note-purge"
    Params = DestructiveParamsNote
    destructive = True
    tables = ("contract_note",)


@pytest.fixture
def notes(fresh_db: str, target_env: Any) -> Iterator[str]:
    target_env(fresh_db)
    eng = sa.create_engine(fresh_db, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.exec_driver_sql(f"create table {TABLE} (id int primary key, flag text not null)")
        c.exec_driver_sql(f"insert into {TABLE} select g, case when mod(g, 3) = 0 then 'bad' else 'fine' end "
                          "from generate_series(1, 30) g")
    eng.dispose()
    for cls in (NoteFix, NoteReport, NotePurge):
        procedures.register(cls)
    yield fresh_db
    for cls in (NoteFix, NoteReport, NotePurge):
        procedures.unregister(cls.NAME)


def flags(url: str) -> dict[str, int]:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        out = dict(c.execute(sa.text(f"select flag, count(*) from {TABLE} group by flag")).all())
    eng.dispose()
    return {str(k): int(v) for k, v in out.items()}


def test_a_procedure_built_from_the_contract_alone_runs_review_execute_verify(notes: str) -> None:
    assert "note-fix" in procedures.available()
    review = Run("note-fix")
    plan = review.review()
    assert plan.summary["notes to fix"] == 10
    assert review.verify().passed and review.state["verification_pending"] == ["no flagged note left"]
    assert flags(notes) == {"bad": 10, "fine": 20}  # a review changes nothing

    run = Run("note-fix", {"mode": "execute", "approved_plan": plan.plan_id})
    result = run.execute()
    assert result is not None and result.changed and result.counts == {"notes fixed": 10}
    assert run.verify().passed
    assert run.finish()["status"] == "succeeded"
    assert flags(notes) == {"ok": 10, "fine": 20}

    again = Run("note-fix", {"mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert again is not None and not again.changed  # a second run changes nothing
    assert flags(notes) == {"ok": 10, "fine": 20}


def test_the_driver_refuses_a_stale_plan_and_a_review_cannot_write(notes: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Run("note-fix").review()
    eng = sa.create_engine(notes, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.exec_driver_sql(f"update {TABLE} set flag = 'bad' where id = 1")
    eng.dispose()
    with pytest.raises(ApprovalError, match="plan changed"):
        Run("note-fix", {"mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert flags(notes) == {"bad": 11, "fine": 19}

    def plan_that_writes(self: NoteFix, conn: Connection, params: Any, names: NameMap, *, detail: bool = True) -> Plan:
        conn.exec_driver_sql(f"update {TABLE} set flag = 'ok'")
        raise AssertionError("unreachable: the review's transaction is read-only")

    monkeypatch.setattr(NoteFix, "plan", plan_that_writes)
    with pytest.raises(Exception, match="read-only"):
        Run("note-fix").review()
    assert flags(notes) == {"bad": 11, "fine": 19}


def test_a_procedure_that_does_not_write_gets_a_read_only_execute(notes: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Run("note-report").review()
    with pytest.raises(Exception, match="read-only"):
        Run("note-report", {"mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert flags(notes) == {"bad": 10, "fine": 20}


def test_a_destructive_procedure_needs_a_backup(notes: str) -> None:
    plan = Run("note-purge").review()
    with pytest.raises(BackupRequiredError):
        Run("note-purge", {"mode": "execute", "approved_plan": plan.plan_id}).execute()
    assert flags(notes) == {"bad": 10, "fine": 20}
    done = Run("note-purge", {"mode": "execute", "approved_plan": plan.plan_id,
                              "backup_override_reason": "contract test: a recorded override"})
    assert done.execute() is not None and done.state["backup"]["override_reason"]
    assert flags(notes) == {"ok": 10, "fine": 20}


def test_register_refuses_an_incomplete_procedure() -> None:
    with pytest.raises(TypeError, match="does not implement apply"):
        class NoApply(Procedure):  # noqa: F841 - refused at class definition
            NAME = "no-apply"

    class NoNotebook(Procedure):
        NAME = "no-notebook"
        writes = False

        def plan(self, conn: Connection, params: Any, names: NameMap, *, detail: bool = True) -> Plan:
            raise NotImplementedError

    with pytest.raises(TypeError, match="lacks NOTEBOOK, TITLE, GUIDE_SECTION, Params"):
        procedures.register(NoNotebook)

    class Clash(NoteFix):
        NAME = "token-reversal"

    procedures.get("token-reversal")
    with pytest.raises(TypeError, match="already registered"):
        procedures.register(Clash)


def test_every_built_in_procedure_is_a_registered_contract_class() -> None:
    for name in procedures.available():
        proc = procedures.get(name)
        assert isinstance(proc, Procedure) and proc.NAME == name
        assert proc.Params.procedure == name
        assert (ROOT / "notebooks" / proc.NOTEBOOK).is_file()


PROCEDURE_NAMES = set(procedures.BUILTIN)


def test_no_behaviour_outside_the_procedures_is_keyed_on_a_procedure_name() -> None:
    """Outside ``runbook_lib/procedures/``, a procedure's name is data (a registry key, a manifest value), never a
    branch: no comparison with a procedure's name, and no probing of a procedure for optional attributes."""
    offenders = []
    for path in sorted((ROOT / "runbook_lib").rglob("*.py")):
        if "procedures" in path.parts or path.name in ("demo.py",):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and re.search(r"proc|name|NAME", ast.unparse(node)):
                for side in [node.left, *node.comparators]:
                    consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    if any(isinstance(c, ast.Constant) and c.value in PROCEDURE_NAMES for c in consts):
                        offenders.append(f"{path.name}:{node.lineno} compares with a procedure name")
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
                    isinstance(c, ast.Constant) and c.value in PROCEDURE_NAMES for c in node.elts):
                offenders.append(f"{path.name}:{node.lineno} lists procedures by name")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                target = ast.unparse(node.args[0]) if node.args else ""
                if "proc" in target or target in ("mod", "module"):
                    offenders.append(f"{path.name}:{node.lineno} probes {target} with {node.func.id}")
    assert offenders == []
