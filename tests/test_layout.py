"""The code stays readable: no module of ``runbook_lib`` over ~400 lines, and no function over 60 lines unless a
``# long: <reason>`` comment right above it says why (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "runbook_lib").rglob("*.py"))
MAX_MODULE_LINES = 420  # "~400"
MAX_FUNCTION_LINES = 60


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"split these modules by concern: {long}"


def test_no_function_is_over_60_lines_without_a_reason():
    unexplained = []
    for path in MODULES:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1  # 0-based line of def/@
            above = lines[first - 1].strip() if first > 0 else ""
            reason = above.startswith("# long:") or (above.startswith("#") and any(
                ln.strip().startswith("# long:") for ln in lines[max(0, first - 4):first]))
            if length > MAX_FUNCTION_LINES and not reason:
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert unexplained == [], "split these functions, or say why they stay long in a '# long:' comment: " + \
        "; ".join(unexplained)
