"""Redaction: secrets masked everywhere, ordinary figures left alone."""

from __future__ import annotations

import pytest

from runbook_lib.redact import MASK, is_secret_name, redact_obj, redact_text, redact_url


@pytest.mark.parametrize("name", ["PGPASSWORD", "SERVICE_API_TOKEN", "dbPassword", "DATABASE_URL",
                                  "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "api_key", "BASIC_AUTH", "MY_PASS"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["tokens_reversed", "verification_passed", "tokenAmount", "token_amount",
                                  "plan_id", "exclusive_key", "backup_override_reason", "users_affected"])
def test_ordinary_names(name):
    assert not is_secret_name(name)


def test_urls_and_key_values_are_masked(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert redact_text("postgresql://bob:hunter22@db:5432/x failed") == f"postgresql://bob:{MASK}@db:5432/x failed"
    assert redact_text("host=db password='hunter22' user=bob") == f"host=db password='{MASK}' user=bob"
    assert "hunter22" not in redact_url("postgresql+psycopg2://bob:hunter22@db/x")


def test_environment_secrets_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("SERVICE_API_TOKEN", "tok-abcdef123")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:Sup3rS3cret@db/app")
    text = "token tok-abcdef123 and password Sup3rS3cret in a traceback"
    out = redact_text(text)
    assert "tok-abcdef123" not in out and "Sup3rS3cret" not in out


def test_redact_obj_masks_secret_keys_not_figures():
    out = redact_obj({"password": "x" * 8, "counts": {"tokens_reversed": 5}, "verification_passed": True,
                      "nested": ["postgresql://a:pw123456@h/db"]})
    assert out["password"] == MASK and out["counts"]["tokens_reversed"] == 5 and out["verification_passed"] is True
    assert "pw123456" not in out["nested"][0]


def test_secrets_are_masked_in_their_json_html_and_url_encoded_forms(monkeypatch):
    import html
    import json
    from urllib.parse import quote

    pw = 'p"a\\ss<&>wörd'
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{quote(pw, safe='')}@db/app")
    monkeypatch.setenv("PGPASSWORD", pw)
    for text in (json.dumps({"out": f"pw {pw}"}), json.dumps({"out": f"pw {pw}"}, ensure_ascii=False),
                 f"<pre>{html.escape(pw)}</pre>", f"dsn ?password_enc={quote(pw, safe='')}", pw):
        out = redact_text(text)
        assert MASK in out, text
        assert pw not in out and json.dumps(pw)[1:-1] not in out and html.escape(pw) not in out, out
        assert quote(pw, safe="") not in out, out


def test_the_working_directory_is_not_a_secret(monkeypatch):
    monkeypatch.setenv("PWD", "/srv/runbooks/work")
    monkeypatch.setenv("OLDPWD", "/srv/runbooks/old")
    assert redact_text("input_path /srv/runbooks/work/notebooks/x.ipynb") == (
        "input_path /srv/runbooks/work/notebooks/x.ipynb")
