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


SCHEMA = """
datasource db {
  provider = "postgresql"
  url      = env("DATABASE_URL")
}

model User {
  id           String   @id
  password     String
  tokenBalance Int      @default(0)
  apiKeys      ApiKey[]
  @@map("users")
}

model ApiKey {
  id     String @id
  key    String @unique
  userId String
  user   User   @relation(fields: [userId], references: [id])
  @@map("api_keys")
}

model VerificationToken {
  identifier String
  token      String   @unique
  expires    DateTime
  @@map("verification_tokens")
}

model TokenTransaction {
  id     String @id
  amount Int
  @@map("token_transactions")
}
"""


def test_schema_names_are_never_masked_but_secrets_next_to_them_are(tmp_path, monkeypatch):
    """``ApiKey`` reads as api + key and ``VerificationToken`` ends in "token": the key-name rule masked their
    tables (and the whole column map of each) in every manifest. Identifiers stay; secrets still go."""
    from runbook_lib.names import from_prisma

    monkeypatch.setenv("PGPASSWORD", "pg-Secret-4711")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:Url-Secret-99@db/app")
    (tmp_path / "schema.prisma").write_text(SCHEMA)
    names = from_prisma(str(tmp_path / "schema.prisma"))
    manifest = {
        "names": names.as_dict(),
        "parameters": {"table_map": {"ApiKey": "api_keys", "VerificationToken": "verification_tokens"},
                       "column_map": {"User.password": "password", "VerificationToken.token": "token"},
                       "password": "hunter22-param"},
        "counts": {'"public"."api_keys"': 3, "public.verification_tokens": 2, "tokens_reversed": 5},
        "error": {"message": "connection to postgresql://app:Url-Secret-99@db/app failed; PGPASSWORD=pg-Secret-4711"},
        "notes": ["password=hunter22-kv"],
        "api_key": "sk-live-123456",
    }
    out = redact_obj(manifest)
    tables = out["names"]["tables"]
    assert tables["ApiKey"] == "api_keys" and tables["VerificationToken"] == "verification_tokens"
    assert tables["User"] == "users" and tables["TokenTransaction"] == "token_transactions"
    assert out["names"]["columns"]["ApiKey"]["key"] == "key"
    assert out["names"]["columns"]["VerificationToken"]["token"] == "token"
    assert out["names"]["columns"]["User"] == {"id": "id", "password": "password", "tokenBalance": "tokenBalance"}
    assert out["parameters"]["table_map"] == manifest["parameters"]["table_map"]
    assert out["parameters"]["column_map"] == manifest["parameters"]["column_map"]
    assert out["counts"] == manifest["counts"]
    # secrets in the same document: secret-named keys, URL passwords, env values, key=value pairs
    assert out["parameters"]["password"] == MASK and out["api_key"] == MASK
    text = repr(out)
    for secret in ("hunter22-param", "Url-Secret-99", "pg-Secret-4711", "hunter22-kv", "sk-live-123456"):
        assert secret not in text, secret
    # an environment secret is masked even inside the name map (a value is a value wherever it sits)
    assert redact_obj({"names": {"source": "schema.prisma (pg-Secret-4711)"}})["names"]["source"] == (
        f"schema.prisma ({MASK})")


@pytest.mark.parametrize("name", ["api_keys", "ApiKey", "verification_tokens", "VerificationToken", "tokenBalance",
                                  "token_transactions", "users"])
def test_identifiers_as_values_are_left_alone(name, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert redact_obj({"table": name, "tables": [name], "model": {"name": name}}) == {
        "table": name, "tables": [name], "model": {"name": name}}
