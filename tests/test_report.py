"""Evidence pages: every run's report page (header first, no code, figures with separators, nothing remote) and
the incident page (timeline, net change, chain head), from real runs on a real database."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from conftest import _fresh

from runbook_lib import evidence, report
from runbook_lib.cli import main
from runbook_lib.runner import run_procedure

WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
HEADER_ORDER = ["incident", "procedure", "mode", "verdict", "operator", "reviewer", "approver", "review run",
                "started", "finished", "database", "server version", "fingerprint", "plan id"]


@pytest.fixture(scope="module")
def incident(pg_server, tmp_path_factory) -> Iterator[dict]:
    """One real incident: a review by alice, its execute by bob, and a second execute that finds nothing to do."""
    fresh = _fresh(pg_server, "incident")
    url = next(fresh)
    root = tmp_path_factory.mktemp("report") / "ev"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATABASE_URL", url)
        review = run_procedure("token-reversal", WINDOW, incident="INC-R", evidence_root=root, progress_bar=False,
                               operator="alice")
        assert review.exit_code == 0, review.error
        execute = run_procedure("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": review.plan_id},
                                incident="INC-R", evidence_root=root, progress_bar=False, operator="bob")
        assert execute.exit_code == 0, execute.error
        again = run_procedure("token-reversal", {**WINDOW, "mode": "execute", "approved_plan": review.plan_id},
                              incident="INC-R", evidence_root=root, progress_bar=False, operator="bob")
        assert again.exit_code == 0, again.error
    yield {"dir": root / "INC-R", "review": review, "execute": execute, "again": again}
    fresh.close()


def page(outcome) -> str:
    return (outcome.run_dir / "token_reversal.html").read_text(encoding="utf-8")


def visible_text(html: str) -> str:
    """What a reader sees: no scripts, styles or tags (itables' data and JS sit in scripts)."""
    html = re.sub(r"<(script|style)\b.*?</\1\s*>", " ", html, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&amp;", "&")


class Resources(HTMLParser):
    """Every attribute that makes a browser fetch or open a URL, and every <script src>/<link href>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "poster", "formaction") and value:
                self.urls.append((tag, name, value.strip()))


def remote_resources(html: str) -> list[tuple[str, str, str]]:
    parser = Resources()
    parser.feed(html)
    return [u for u in parser.urls if re.match(r"(?i)(https?:)?//", u[2])]


def header_of(html: str) -> str:
    start = re.search(r"<header class=[\"']rb-header", html).start()  # type: ignore[union-attr]
    return html[start:html.index("</header>", start)]


# ------------------------------------------------------------------------------------------ run report
def test_report_header_comes_first_with_every_field(incident):
    ex = incident["execute"]
    m = ex.manifest
    html = page(ex)
    header = header_of(html)
    labels = [re.sub(r"<[^>]+>", "", x) for x in re.findall(r"<tr><th>(.*?)</th>", header)]
    positions = [labels.index(name) for name in HEADER_ORDER]
    assert positions == sorted(positions), labels
    narrative = html.index("Token reversal — voucher grants in an incident window")  # the notebook's first cell
    assert html.index("id=\"run-report\"" if "id=\"run-report\"" in html else "id='run-report'") < narrative
    text = visible_text(header)
    db = m["database"]
    for value in ("INC-R", "token-reversal", "execute", "succeeded", "bob", "alice", m["plan_id"], db["database"],
                  f"PostgreSQL {db['server_version']}", db["fingerprint"], m["review_run"] or "001_", "UTC"):
        assert value in text, value
    assert m.get("reviewer") == "alice" and m.get("approver") == "bob"
    assert f"all {len(m['verification'])} checks passed" in text and "committed" in text
    for c in m["verification"]:
        assert c["name"] in text
    # the figures that matter, in a fixed order, labelled for people
    figures = [label for label, _ in report.count_figures(m["counts"])]
    assert figures[:3] == ["tokens reversed", "ledger rows reversed", "users affected"]
    at = [text.index(f" {label} ") for label in figures]
    assert at == sorted(at)
    assert text.index("Changed by this run") < text.index("The plan") < text.index("Verification:")


def test_review_report_names_pending_checks_and_no_approver(incident):
    rv = incident["review"]
    text = visible_text(header_of(page(rv)))
    assert "review" in text and "alice" in text and "nothing (a review is read-only)" in text
    assert re.search(r"approver —", text) and re.search(r"review run —", text)
    assert "pending" in text and "FAILED" not in text
    assert "ledger rows to reverse" in text and "The plan (what would change)" in text


def test_report_hides_code_parameters_and_raw_dumps(incident):
    for outcome in (incident["review"], incident["execute"]):
        html = page(outcome)
        nb = nbformat.read(outcome.run_dir / "token_reversal.ipynb", as_version=4)
        narrative = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            for line in cell.source.splitlines():
                line = line.strip()
                if len(line) > 12 and not line.startswith("#") and line not in narrative:
                    assert line not in html and line.replace('"', "&quot;") not in html, line
        for code in ("run.finish()", "Run.from_namespace", "show.setup()", "approved_plan = ", "papermill injects"):
            assert code not in html, code
        # the state dictionary run.finish() returns, the counts dict, and the run's log lines are not shown
        text = visible_text(html)
        assert "'procedure': 'token-reversal'" not in text and "{'ledger_rows_inserted'" not in text
        assert "token-reversal: connecting" not in text and "done: " not in text
        # the executed notebook in the evidence keeps its code and outputs
        assert "run.finish()" in (outcome.run_dir / "token_reversal.ipynb").read_text()
    assert evidence.verify_incident(incident["dir"]) == []
    m = incident["execute"].manifest
    assert m["files"]["token_reversal.html"] == evidence.sha256_file(incident["execute"].run_dir / "token_reversal.html")


def test_report_figures_use_thousands_separators_everywhere(incident):
    m = incident["execute"].manifest
    tokens = m["counts"]["tokens_reversed"]
    assert tokens >= 1000  # the seeded incident: so the separator shows
    text = visible_text(page(incident["execute"]))
    assert f"tokens reversed {tokens:,}" in text
    assert not re.search(rf"(?<![\d,.]){tokens}(?![\d,])", text), "the same number without separators"
    for label, value in report.count_figures(m["counts"]):
        assert f"{label} {report.fmt(value)}" in text
    for warning in m["warnings"]:  # a procedure's warnings too: "4,149 tokens below zero"
        assert report.numbers_in_text(warning) in text
        assert not re.search(r"(?<![\w.,:/#-])\d{4,}(?![\w:/-]|[.,]\d)", report.numbers_in_text(warning))


def test_report_loads_nothing_from_the_network(incident):
    for outcome in (incident["review"], incident["execute"], incident["again"]):
        html = page(outcome)
        assert remote_resources(html) == []
        lowered = html.lower()
        assert "mathjax" not in lowered and "require.js" not in lowered and "requirejs" not in lowered
        assert "@import" not in lowered and not re.search(r"url\(\s*['\"]?(https?:)?//", lowered)
        # no URL at all but the SVG namespace names inline SVG carries (identifiers, never fetched)
        rest = re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"', "", html)
        assert "http://" not in rest and "https://" not in rest
        assert "DataTable" in html or "itables" in html.lower()  # the tables stay interactive, offline
        assert "data:image/png;base64," in html  # plots embedded
    index = (incident["dir"] / "index.html").read_text()
    assert remote_resources(index) == [] and "http://" not in index and "https://" not in index


# ------------------------------------------------------------------------------------------ incident page
def test_incident_page_has_timeline_net_change_and_chain_head(incident, capsys):
    inc = incident["dir"]
    rv, ex, again = incident["review"], incident["execute"], incident["again"]
    html = (inc / "index.html").read_text()
    md = (inc / "INDEX.md").read_text()
    head = evidence.chain_head(inc)
    assert head and head == evidence.sha256_file(again.run_dir / "manifest.json")
    for doc in (html, md):
        assert head in doc and "record this in the ticket" in doc.lower()
        at = [doc.index(o.run_dir.name) for o in (rv, ex, again)]
        assert at == sorted(at)  # a timeline, oldest first
        assert doc.index("Net change") < doc.index("Timeline")
        for o in (rv, ex, again):
            assert f"{o.run_dir.name}/token_reversal.html" in doc and f"{o.run_dir.name}/token_reversal.ipynb" in doc
            assert o.manifest["plan_id"] in doc
        db = ex.manifest["database"]
        assert f"{db['database']} ({db['fingerprint'][:8]})" in doc
        assert "alice" in doc and "approver bob" in doc
    text = visible_text(html)
    assert "nothing (the change was already applied)" in text and "committed" in text
    # the net change: only the committed execute counts (the review and the no-op execute change nothing)
    counts = ex.manifest["counts"]
    assert again.manifest["committed"] is False and rv.manifest["mode"] == "review"
    net = {label: total for label, total, _ in report.net_change(json.loads((d / "manifest.json").read_text())
                                                                 for d in evidence.run_dirs(inc))}
    assert net["tokens reversed"] == counts["tokens_reversed"] and net["ledger rows reversed"] == counts["rows_reversed"]
    assert net["reversing ledger rows inserted"] == counts["ledger_rows_inserted"]
    assert net["balances updated"] == counts["balances_updated"]
    net_section = html[html.index("Net change"):html.index("Timeline")]
    assert f"<th>tokens reversed</th><td class=num>{counts['tokens_reversed']:,}</td><td>{ex.run_dir.name[:3]}</td>" \
        in net_section
    assert f"| tokens reversed | {counts['tokens_reversed']:,} | {ex.run_dir.name[:3]} |" in md
    # the terminal summary says the same
    assert main(["evidence", "show", str(inc)]) == 0
    out = capsys.readouterr().out
    assert f"tokens reversed: {counts['tokens_reversed']:,}" in out and "record this in the ticket" in out
    assert f"chain head sha256: {head}" in out and "integrity: intact" in out


# ------------------------------------------------------------------------------------------ units
def test_figures_are_formatted_and_ordered_the_same_whatever_the_dict_order():
    counts = {"users_affected": 3, "balances_updated": 3, "tokens_reversed": 38175, "rows_reversed": 1200,
              "zeta_extra": 5, "alpha_extra": 1}
    shuffled = dict(sorted(counts.items()))
    assert report.count_figures(counts) == report.count_figures(shuffled)
    assert [k for k, _ in report.count_figures(counts)] == ["tokens reversed", "ledger rows reversed", "users affected",
                                                             "balances updated", "alpha extra", "zeta extra"]
    assert report.fmt(38175) == "38,175" and report.fmt(True) == "yes" and report.fmt(None) == "—"
    assert report.fmt({"a": 1000}) == "a: 1,000" and report.fmt(1234.5) == "1,234.50"
    assert report.numbers_in_text("31 users, 4149 tokens on 2025-12-01, id cmu00001, plan 39e5ead8") == \
        "31 users, 4,149 tokens on 2025-12-01, id cmu00001, plan 39e5ead8"
    summary = {"b figure": 2, "a figure": 1, "nothing_to_do": False}
    assert report.summary_figures(summary, order=["b figure", "a figure"]) == [("b figure", 2), ("a figure", 1)]


def test_net_change_counts_only_committed_executes_on_the_target():
    manifests = [
        {"run": "001_x", "mode": "review", "procedure": "token-reversal", "summary": {"tokens to reverse": 5}},
        {"run": "002_x", "mode": "execute", "procedure": "token-reversal", "committed": True,
         "counts": {"tokens_reversed": 38175, "rows_reversed": 10, "users_left_negative": 2}},
        {"run": "003_x", "mode": "execute", "procedure": "token-reversal", "committed": False,
         "counts": {"tokens_reversed": 0}},
        {"run": "004_x", "mode": "execute", "procedure": "token-reversal", "committed": None, "status": "failed",
         "counts": None},
        {"run": "005_x", "mode": "execute", "procedure": "rehearsal", "committed": True,
         "counts": {"rows_reversed": 99}},
        {"run": "006_x", "mode": "execute", "procedure": "partial-rollback", "committed": True,
         "counts": {"tokens_reversed": 25, "rows_reversed": 1, "redemptions_deleted": 1}},
        None,
    ]
    assert report.net_change(manifests) == [("tokens reversed", 38200, ["002", "006"]),
                                            ("ledger rows reversed", 11, ["002", "006"]),
                                            ("redemptions deleted", 1, ["006"])]


def test_offline_removes_remote_references_and_keeps_local_ones():
    page = ("<html><head><script src='https://cdn.example/require.js'></script>"
            "<link rel=stylesheet href=\"//cdn.example/x.css\"><style>/* see https://x.example */ a{color:red}"
            "@import url(https://fonts.example/f.css);</style></head><body>"
            "<a href=https://itables.org/ title=help>help</a> <img src=\"http://x.example/p.png\" alt=p>"
            "<a href='001_run/token_reversal.html'>report</a><img src='data:image/png;base64,AA=='></body></html>")
    out = report.offline(page)
    assert remote_resources(out) == [] and "example" not in out and "itables.org" not in out
    assert ">help</a>" in out and "001_run/token_reversal.html" in out and "data:image/png;base64,AA==" in out
    assert "a{color:red}" in out


def test_render_html_keeps_the_file_name_the_evidence_lists(incident):
    for outcome in (incident["review"], incident["execute"]):
        m = json.loads((outcome.run_dir / "manifest.json").read_text())
        assert "token_reversal.html" in m["files"] and "html_error" not in m
        assert Path(m["notebook"]).with_suffix(".html").name == "token_reversal.html"


def test_a_failed_execute_header_says_what_happened():
    m = {"incident": "INC-F", "procedure": "token-reversal", "mode": "execute", "status": "failed",
         "operator": "bob", "reviewer": "alice", "approver": "carol", "review_run": "001_x", "plan_id": "abc",
         "committed": True, "counts": {"tokens_reversed": 38175},
         "verification": [{"name": "every balance equals its ledger sum", "passed": False, "count": 1234,
                           "detail": "drift"},
                          {"name": "redemptions without their user", "passed": True, "count": 0, "detail": "none"}],
         "verification_passed": False, "warnings": ["31 users would be 4149 tokens below zero"],
         "error": {"message": "VerificationFailed: the change was committed; verification failed", "step": "verify",
                   "exit_code": 13}}
    text = visible_text(report.header_html(m))
    assert "failed (exit 13) — verification: 1 FAILED (every balance equals its ledger sum), 1 passed" in text
    assert "database change committed" in text and "approver carol" in text and "database —" in text
    assert "error VerificationFailed: the change was committed; verification failed (step verify)" in text
    assert "tokens reversed 38,175" in text and "4,149 tokens" in text and "1,234" in text
    assert text.index("every balance equals its ledger sum") < text.index("redemptions without their user")
    rolled = {**m, "committed": None, "counts": None, "error": {"message": "boom", "exit_code": 8},
              "rolled_back": {"checked": True, "rolled_back": True, "how": "txid_status: aborted"}}
    text = visible_text(report.header_html(rolled))
    assert "nothing: rolled back (checked)" in text and "rolled back yes — txid_status: aborted" in text
