"""`runbook run PROC --help` and `runbook list --parameters`: every parameter with its type, default and one
description, from one source (the procedures' pydantic models); unknown procedures get a "did you mean"."""

from __future__ import annotations

import shlex

import pytest

from runbook_lib import procedures
from runbook_lib.cli import _parser, build_parameters, execute_command, main, parameter_rows
from runbook_lib.params import DestructiveParams


@pytest.mark.parametrize("name", procedures.available())
def test_every_parameter_has_a_one_line_description(name):
    mod = procedures.get(name)
    for pname, field in mod.Params.model_fields.items():
        desc = field.description or ""
        assert desc.strip(), f"{name}: parameter {pname!r} has no Field(description=...)"
        assert "\n" not in desc and len(desc) <= 160, f"{name}: {pname!r}'s description is not one short line"
    for pname, field in DestructiveParams.model_fields.items():
        assert field.description, pname


@pytest.mark.parametrize("name", procedures.available())
def test_run_help_lists_the_procedures_parameters(name, capsys):
    mod = procedures.get(name)
    with pytest.raises(SystemExit) as exit_:
        main(["run", name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--execute" in out and f"parameters of {mod.NAME}" in out
    for pname, tname, default, desc in parameter_rows(mod):
        assert f"  {pname} " in out and desc in out and f"{tname}, {default}" in out, pname
    assert set(r[0] for r in parameter_rows(mod)) == set(mod.Params.model_fields)


def test_run_help_shows_types_defaults_required_and_the_notebook_example(capsys):
    with pytest.raises(SystemExit):
        main(["run", "token-reversal", "--help"])
    out = capsys.readouterr().out
    assert "since                   text, required (the notebook's example: 2025-12-01T00:00:00Z)" in out
    assert "negative_policy         allow|clamp|skip|abort, default allow" in out
    assert "voucher_codes           list, default []" in out
    assert out.index("  since ") < out.index("  mode ")  # the procedure's own parameters first


def test_run_help_without_a_procedure_and_list_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "'runbook run PROCEDURE --help' also lists the procedure's parameters" in capsys.readouterr().out
    assert main(["list", "--parameters"]) == 0
    out = capsys.readouterr().out
    assert ("    since                    text, required (the notebook's example: 2025-12-01T00:00:00Z) — start of "
            "the incident window") in out
    assert "    ledger_policy            keep|reverse, required — reverse" in out


@pytest.mark.parametrize(
    ("typed", "suggestion"),
    [("tokn-reversal", "token-reversal"), ("reversal", "token-reversal"), ("partial_rollback", None),
     ("rehersal", "rehearsal"), ("zzz", "")],
)
def test_unknown_procedure_did_you_mean(typed, suggestion, capsys):
    code = main(["run", typed])
    err = capsys.readouterr().err.strip()
    if suggestion is None:  # a known procedure written with "_": accepted (fails later on DATABASE_URL, not the name)
        assert "unknown procedure" not in err
        return
    assert code == 2 and err.startswith("error:") and "\n" not in err and "unknown procedure" in err
    if suggestion:
        assert f"did you mean {suggestion!r}?" in err
    else:
        assert "did you mean" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["run", typed, "--help"])
    assert exit_.value.code == 2


def test_execute_command_repeats_the_reviews_parameters_shell_quoted():
    review = ["run", "token-reversal", "-f", "my params.yaml", "-p", "since", "2025-12-01T00:00:00Z",
              "-p", "user_ids", "[u1, u2]", "-p", "mode", "review", "--incident", "INC 42", "--evidence-dir", "/ev"]
    args = _parser().parse_args(review)
    cmd = execute_command(args, "token-reversal", "abcdef0123456789abcdef01")
    assert cmd == ("runbook run token-reversal -f 'my params.yaml' -p since 2025-12-01T00:00:00Z "
                   "-p user_ids '[u1, u2]' --incident 'INC 42' --evidence-dir /ev --execute "
                   "--approve abcdef0123456789abcdef01")
    again = _parser().parse_args(shlex.split(cmd)[1:])
    assert again.parameters_file == ["my params.yaml"] and again.incident == "INC 42" and again.evidence_dir == "/ev"
    # the pasted command merges to the review's parameters plus the approval (the files are read the same way)
    args.parameters_file = again.parameters_file = []
    assert build_parameters(again) == {**build_parameters(args), "mode": "execute",
                                       "approved_plan": "abcdef0123456789abcdef01"}
