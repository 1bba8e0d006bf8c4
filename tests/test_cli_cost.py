"""What makes a CLI run cheaper changes nothing the run shows or keeps (benchmarks/bench_cli_phases.py times it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pyarrow.parquet as pq
import sqlalchemy as sa

from runbook_lib import db, redact, report, runner
from runbook_lib.cli import main
from runbook_lib.evidence.folders import export_queries

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)


def executed_notebook(path: Path) -> Path:
    """A small notebook with every kind of output a report shows, as papermill leaves it."""
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# Token reversal\n\nWhat *would* change, with `code` and a [link](x.html)."),
        v4.new_code_cell("run = 1", outputs=[
            v4.new_output("display_data", data={"text/plain": "t", "text/html": "<table><tr><td>1,000 &amp; 2"
                                                "</td></tr></table>"}),
            v4.new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="}),
            v4.new_output("stream", name="stderr", text="a warning\n"),
            v4.new_output("stream", name="stdout", text="[ 0.1s] a log line\n"),
            v4.new_output("error", ename="ValueError", evalue="bad", traceback=["\x1b[0;31mValueError\x1b[0m: bad"]),
        ])])
    path.mkdir(parents=True, exist_ok=True)
    out = path / "token_reversal.ipynb"
    nbformat.write(nb, str(out))
    return out


MANIFEST = {"incident": "INC-1", "procedure": "token-reversal", "mode": "review", "status": "succeeded",
            "plan_id": "abc", "summary": {"ledger rows to reverse": 1234}}


def test_a_report_rendered_after_the_warm_up_is_the_page_rendered_cold(tmp_path):
    nb = executed_notebook(tmp_path / "INC-1" / "001_run")
    cold = python("import json, sys; from pathlib import Path; from runbook_lib import report; "
                  "print(report.render_run_report(Path(sys.argv[1]), json.loads(sys.argv[2])), end='')",
                  str(nb), json.dumps(MANIFEST))
    assert cold.returncode == 0, cold.stderr
    report.warm_up()
    warm = report.render_run_report(nb, MANIFEST)
    assert warm == cold.stdout
    assert "1,234" in warm and "a warning" in warm and "a log line" not in warm
    assert report.render_run_report(nb, MANIFEST) == warm  # the shared exporter renders the same page again


def test_papermill_is_imported_without_rfc3987_and_it_stays_importable():
    got = python("import sys; from runbook_lib import runner; runner._import_papermill(); "
                 "print('papermill' in sys.modules, 'rfc3987_syntax' in sys.modules); "
                 "import rfc3987_syntax; print(rfc3987_syntax.is_valid_syntax('iri', 'http://example.com/ä'))")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["True", "False", "True"]


def test_the_kernels_start_leaves_nothing_in_the_notebook():
    """The quick exit and the notebooks' first imports run at the kernel's start, outside the notebook."""
    from jupyter_client.manager import start_new_kernel

    seen: list[str] = []
    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=runner.KERNEL_ARGUMENTS)
    try:
        reply = kc.execute_interactive(
            "print(sorted(k for k in globals() if k in ('_a', '_g', 'atexit', 'gc', 'runbook_lib')), "
            "'runbook_lib.run' in __import__('sys').modules, 'runbook_lib.display' in __import__('sys').modules)",
            timeout=60, output_hook=lambda msg: seen.append(msg["content"].get("text", "")))
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert reply["content"]["status"] == "ok"
    assert "".join(seen).strip() == "[] True True"  # imported, and no name left behind
    assert reply["content"]["execution_count"] == 1  # and the notebook's first cell is still In [1]


def test_the_url_password_prefilter_masks_exactly_what_the_pattern_masks():
    blob = "iVBORw0KGgo+AAAA/abc.def-ghi+" * 2000
    texts = [
        blob, f"{blob} postgresql://app:s3cret@db:5432/x {blob}", "POSTGRESQL+psycopg2://u:p%40ss@h/db",
        "a://:pw@h", "see https://cdn.example.com/x.js and mailto:x@y", "x://u:p@h y://v:q@i", "",
        "dsn password=hunter22 host=x", 'he said "http://u:pw@host"',
    ]
    for text in texts:
        expected = redact._KV_PASSWORD.sub(lambda m: m.group("head") + redact.MASK, redact._URL_PASSWORD.sub(
            lambda m: m.group("head") + redact.MASK + m.group("tail"), text))
        assert redact.redact_text(text) == expected, text[:80]
    assert "s3cret" not in redact.redact_text(texts[1])


def test_main_freezes_the_collector_only_as_the_program(capsys):
    import gc

    assert main(["list"]) == 0 and gc.isenabled()  # a call from Python leaves the caller's process alone
    assert "token-reversal" in capsys.readouterr().out
    got = python("import gc, sys; from runbook_lib.cli import main; sys.argv = ['runbook', 'list']; "
                 "code = main(); print(code, gc.isenabled())")
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[-1] == "0 False" and "token-reversal" in got.stdout


def test_exports_hold_the_rows_the_query_returns(incident_db, tmp_path):
    # the export streams COPY output through Arrow with types from the result description (evidence/export.py):
    # the values are the rows', jsonb kept as its JSON text, an unconstrained numeric as its exact text
    import decimal

    import pyarrow as pa

    sql = ("select id, \"userId\", amount, \"createdAt\", metadata, \"balanceAfter\", amount::numeric / 3 as third, "
           "null::text as nothing from token_transactions order by id")
    eng = db.make_engine(incident_db)
    try:
        with db.read_only(eng) as conn:
            export_queries(conn, tmp_path, {"rows": (sql, {})}, lambda _msg: None)
            rows = [r._asdict() for r in conn.execute(sa.text(sql))]
    finally:
        eng.dispose()
    got = pq.read_table(tmp_path / "rows.parquet")
    assert got.schema == pa.schema([
        ("id", pa.string()), ("userId", pa.string()), ("amount", pa.int64()), ("createdAt", pa.timestamp("us")),
        ("metadata", pa.string()), ("balanceAfter", pa.int64()), ("third", pa.string()), ("nothing", pa.string())])
    exported = [{**r, "metadata": None if r["metadata"] is None else json.loads(r["metadata"]),
                 "third": decimal.Decimal(r["third"])} for r in got.to_pylist()]
    assert exported == rows and len(rows) > 0
