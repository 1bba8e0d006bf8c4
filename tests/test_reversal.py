"""The reversal core is one module pair (runbook_lib.reversal, runbook_lib.reversal_sql): the reversing procedures
and the user inspector import it, never the token-reversal procedure, and share one set of reversal options."""

import ast
from pathlib import Path

import pytest

from runbook_lib import params as P
from runbook_lib.procedures import full_rollback, partial_rollback, token_reversal
from runbook_lib.reversal import ReversalOptions

ROOT = Path(__file__).resolve().parents[1]
REVERSING = [token_reversal, partial_rollback, full_rollback]
VALID = {token_reversal: {"since": "2025-12-01T00:00:00Z"}, partial_rollback: {"all_vouchers": True},
         full_rollback: {"ledger_policy": "keep", "prisma_side": False}}


def test_nothing_imports_the_token_reversal_procedure_for_the_core():
    for path in [*(ROOT / "runbook_lib").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not any(a.name == "token_reversal" for a in node.names), path
                assert not (node.module or "").endswith("procedures.token_reversal") or path.name == "__init__.py", path


@pytest.mark.parametrize("mod", REVERSING, ids=lambda m: m.NAME)
def test_the_reversal_options_are_declared_once(mod):
    assert issubclass(mod.Params, ReversalOptions)
    fields = mod.Params.model_fields
    for name, shared in ReversalOptions.model_fields.items():
        assert fields[name].default == shared.default, (mod.NAME, name)
    # the procedure's own parameters come first, the reversal options after them (then online mode's, if any)
    from runbook_lib.online import OnlineOptions

    shared = {**ReversalOptions.model_fields, **OnlineOptions.model_fields}
    own = [n for n in fields if n not in P.DestructiveParams.model_fields and n not in shared]
    order = [n for n in fields if n not in P.DestructiveParams.model_fields]
    assert order[:len(own)] == own


@pytest.mark.parametrize("mod", REVERSING, ids=lambda m: m.NAME)
def test_the_shared_checks_apply_to_every_reversing_procedure(mod):
    with pytest.raises(P.ParameterError, match="'reversal_source' must differ from 'source'"):
        P.validate(mod.Params, {**VALID[mod], "reversal_source": "voucher_redemption"})
    with pytest.raises(P.ParameterError, match="reversal_type"):
        P.validate(mod.Params, {**VALID[mod], "reversal_type": " "})
    skip = {"ledger_mode": "compensate", "negative_policy": "skip"}
    if mod is token_reversal:
        assert P.validate(mod.Params, {**VALID[mod], **skip}).negative_policy == "skip"
    else:  # partial and full rollback override negative_policy: no skip
        with pytest.raises(P.ParameterError, match="negative_policy"):
            P.validate(mod.Params, {**VALID[mod], **skip})
