"""Keep secrets out of every output: URLs with passwords, secret-looking environment values."""

from __future__ import annotations

import html
import json
import os
import re
from typing import Any
from urllib.parse import quote, quote_plus

_SECRET_ENDINGS = ("password", "passwd", "passphrase", "secret", "token", "apikey", "credential", "credentials",
                   "privatekey", "accesskey", "secretkey")
_SECRET_PARTS = {"pwd", "pass", "auth", "dsn"}
_SECRET_NAMES = {"database_url", "api_key", "private_key", "access_key", "secret_key", "auth_token"}


def is_secret_name(name: str) -> bool:
    """Does a variable or key name suggest a secret? (``PGPASSWORD``, ``SERVICE_API_TOKEN``, ``dbPassword``;
    not ``tokens_reversed`` or ``verification_passed``)."""
    low = name.lower()
    if low in _SECRET_NAMES:
        return True
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    parts = [p for p in re.split(r"[^a-z0-9]+", words) if p]
    if not parts:
        return False
    tail = [parts[-1], "".join(parts[-2:])]  # the noun is last: API_TOKEN, dbPassword, SECRET_ACCESS_KEY
    return any(p.endswith(_SECRET_ENDINGS) for p in tail) or parts[-1] in _SECRET_PARTS or "password" in parts

# scheme://user:password@host  -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^@\s'\"]+)(?P<tail>@)", re.I)
# what every match of _URL_PASSWORD ends with, from its "://" on: a literal-led pattern, found fast. Texts without it
# (nearly every evidence file) skip _URL_PASSWORD, whose scheme part is tried at every word boundary and took
# ~0.2 s on a 1.3 MB notebook of base64 plots and itables' bundle
_URL_PASSWORD_TAIL = re.compile(r"://[^:/@\s'\"]*:[^@\s'\"]+@")
# key=value pairs in libpq connection strings and error texts: password=secret
_KV_PASSWORD = re.compile(r"(?P<head>\b(password|passwd|pwd)\s*[=:]\s*['\"]?)(?P<pw>[^\s'\",;&]+)", re.I)

MASK = "***"


def _known_secrets() -> list[str]:
    """Secret values currently in the environment (passwords in URLs, values of secret-named vars)."""
    found: list[str] = []
    for name, value in os.environ.items():
        if not value:
            continue
        if "://" in value:
            # imported here: the CLI imports this module before its kernel boots (runbook_lib/kernel.py)
            from sqlalchemy.engine import make_url

            try:
                pw = make_url(value).password
            except Exception:  # noqa: BLE001 - not a URL after all
                pw = None
            if pw and len(str(pw)) >= 3:
                found.append(str(pw))
        elif is_secret_name(name) and len(value) >= 6 and name not in _NOT_SECRET:
            found.append(value)
    return sorted(set(found), key=len, reverse=True)


# PWD/OLDPWD are the shell's working directories (not passwords): masking them blanked every path
# under the current directory in the evidence (papermill's input_path, tracebacks…)
_NOT_SECRET = {"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "TEST_DATABASE_URL_SCHEMA", "KEYTIMEOUT", "PWD", "OLDPWD"}


def _variants(secret: str) -> list[str]:
    """The secret as it may appear in a JSON file (.ipynb, manifests), in HTML, or percent-encoded in a URL."""
    js = json.dumps(secret, ensure_ascii=False)[1:-1]
    forms = {secret, js, json.dumps(secret)[1:-1], html.escape(secret), html.escape(secret, quote=False),
             html.escape(js), quote(secret, safe=""), quote_plus(secret, safe="")}
    return sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)


def redact_text(text: str, extra_secrets: list[str] | None = None) -> str:
    """Mask passwords in URLs and key=value pairs, and every known secret value, in ``text``."""
    if not text:
        return text
    out = text
    if _URL_PASSWORD_TAIL.search(text):
        out = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("tail"), text)
    out = _KV_PASSWORD.sub(lambda m: m.group("head") + MASK, out)
    for secret in [*(extra_secrets or []), *_known_secrets()]:
        if secret and len(secret) >= 3:
            for form in _variants(secret):
                out = out.replace(form, MASK)
    return out


def redact_url(url: str) -> str:
    """A connection URL with its password masked (never raises)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return redact_text(url)


#: sections of manifests and run states whose keys are schema identifiers (Prisma models and fields, tables,
#: columns, enums), never secret names: the name map, ``table_map``/``column_map``, per-table figures
IDENTIFIER_SECTIONS = frozenset({"names", "table_map", "column_map", "tables", "columns", "enums", "models",
                                 "checksums", "rows_restored"})


def is_identifier_key(key: str) -> bool:
    """A key that is a qualified or quoted SQL/Prisma identifier (``"public"."ApiKey"``, ``User.password``,
    ``public.api_keys``): a schema object, not a setting."""
    return '"' in key or bool(re.fullmatch(r"[A-Za-z_][\w$]*(\.[A-Za-z_][\w$]*)+", key))


def redact_obj(obj: Any, *, identifiers: bool = False) -> Any:
    """Recursively redact strings inside dicts/lists; secret-named keys lose their values.

    Secret *values* (passwords in URLs, ``password=…``, the values of secret environment variables) are masked in
    every string, everywhere. The key-name rule (``password``, ``api_key``, ``GITHUB_TOKEN``… lose their values)
    does not apply to schema identifiers: keys inside :data:`IDENTIFIER_SECTIONS` (or under ``identifiers=True``)
    and qualified/quoted identifiers. A Prisma model ``ApiKey`` or ``VerificationToken``, a column ``password``, are
    names of things in the database, and the evidence must show them (they were masked: "ApiKey" reads as
    api + key, "VerificationToken" ends in "token").
    """
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            is_key = isinstance(k, str)
            if (is_key and not identifiers and not is_identifier_key(k) and is_secret_name(k)
                    and v not in (None, "", [], {})):
                out[k] = MASK
            else:
                out[k] = redact_obj(v, identifiers=identifiers or (is_key and k in IDENTIFIER_SECTIONS))
        return out
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, identifiers=identifiers) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
