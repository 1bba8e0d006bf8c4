"""Every command, procedure, parameter file and parameter is documented (sqlite-utils' test_docs style)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook_lib import procedures
from runbook_lib.cli import _parser
from runbook_lib.params import load_yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_command_is_in_the_readme():
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"runbook {name}" in README or f"`{name}`" in README, name
    for opt in ("-p NAME VALUE", "-f FILE", "--incident", "--evidence-dir", "--execute", "--approve",
                "--confirm-target", "--operator", "--raiseerr"):
        assert opt in README, opt


@pytest.mark.parametrize("name", procedures.available())
def test_every_procedure_is_documented(name):
    mod = procedures.get(name)
    assert f"`{name}`" in README
    assert f"notebooks/{mod.NOTEBOOK}" in README
    assert (ROOT / "notebooks" / mod.NOTEBOOK).is_file()
    doc = ROOT / "docs" / "procedures" / f"{name}.md"
    assert doc.is_file(), f"missing {doc}"
    pfile = ROOT / "parameters" / f"{name}.yaml"
    assert pfile.is_file(), f"missing {pfile}"
    assert f"parameters/{name}.yaml" in README


@pytest.mark.parametrize("name", procedures.available())
def test_parameter_files_are_valid_and_complete(name):
    mod = procedures.get(name)
    text = (ROOT / "parameters" / f"{name}.yaml").read_text()
    data = load_yaml(text) or {}
    unknown = set(data) - set(mod.Params.model_fields)
    assert not unknown, f"parameters/{name}.yaml names unknown parameters {unknown}"
    own = set(mod.Params.model_fields) - {"mode", "approved_plan", "confirm_target", "evidence_dir"}
    undocumented = {f for f in own if f not in text}
    assert not undocumented, f"parameters/{name}.yaml does not mention {sorted(undocumented)}"


def test_every_parameter_file_belongs_to_a_procedure():
    names = set(procedures.BUILTIN)
    for f in (ROOT / "parameters").glob("*.yaml"):
        assert f.stem in names, f"{f.name} matches no procedure"


def test_every_exit_status_is_in_the_readme():
    from runbook_lib.errors import EXIT_CODES

    for name, code in EXIT_CODES.items():
        if name not in ("success", "unexpected error"):
            assert f"| {code} | `{name}`" in README, name


def test_notebooks_are_committed_without_outputs():
    import json

    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        data = json.loads(nb.read_text())
        for cell in data["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and not cell.get("execution_count"), nb.name
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in data["cells"]), nb.name


@pytest.mark.parametrize("name", procedures.available())
def test_notebook_parameters_cell_matches_the_procedure(name, caplog):
    """papermill can read the parameters cell (no warnings) and it defines exactly the procedure's parameters."""
    import logging

    import papermill as pm

    mod = procedures.get(name)
    with caplog.at_level(logging.WARNING, logger="papermill"):
        found = pm.inspect_notebook(str(ROOT / "notebooks" / mod.NOTEBOOK))
    assert not [r for r in caplog.records if r.name.startswith("papermill")], caplog.text
    assert set(found) == set(mod.Params.model_fields), set(found) ^ set(mod.Params.model_fields)


def test_architecture_page_lists_every_part_of_the_procedure_contract():
    """docs/architecture.md states the contract: every attribute and hook of ``Procedure`` is in its tables."""
    from runbook_lib.procedures.base import Procedure

    text = (ROOT / "docs" / "architecture.md").read_text()
    names = [n for n in [*Procedure.__annotations__, *vars(Procedure)] if not n.startswith("_")]
    missing = sorted({n for n in names if f"`{n}" not in text})
    assert missing == [], f"docs/architecture.md does not describe {missing}"


#: values the notebooks' parameters cells set on purpose (an example to run in JupyterLab), not the model's default
NOTEBOOK_EXAMPLES = {("token-reversal", "since"), ("rehearsal", "rehearse_parameters")}


@pytest.mark.parametrize("name", procedures.available())
def test_notebook_defaults_are_the_models_defaults(name):
    """One source of defaults: a notebook's parameters cell holds the pydantic model's defaults (what the CLI and
    ``runbook list --parameters`` show), apart from required parameters and the named examples."""
    import json

    from runbook_lib.cli import notebook_defaults

    proc = procedures.get(name)
    in_notebook = notebook_defaults(proc)
    drift = {}
    for pname, field in proc.Params.model_fields.items():
        if field.is_required() or (name, pname) in NOTEBOOK_EXAMPLES or pname not in in_notebook:
            continue
        default = json.loads(json.dumps(field.get_default(call_default_factory=True), default=str))
        if in_notebook[pname] != default:
            drift[pname] = (in_notebook[pname], default)
    assert drift == {}, f"notebooks/{proc.NOTEBOOK}: parameters cell differs from the model's defaults: {drift}"
