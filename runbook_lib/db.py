"""The target database: connection from the environment, transactions with timeouts, server facts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from .errors import (
    ConcurrentRunError,
    LockTimeoutError,
    ParameterError,
    RunbookError,
    SessionInterruptedError,
    StatementTimeoutError,
    TargetError,
)
from .redact import redact_text, redact_url

ENV_VAR = "DATABASE_URL"


def database_url(env_var: str = ENV_VAR) -> str:
    """The target's connection URL, read from the environment (never from parameters), normalized
    (:func:`normalize_url`: Prisma-only parameters removed; use :func:`url_schema` for Prisma's ``?schema=``)."""
    value = os.environ.get(env_var, "").strip()
    if not value:
        raise TargetError(
            f"{env_var} is not set: export the target database URL, e.g. "
            f"postgresql://user@host:5432/dbname (the password from PGPASSWORD or ~/.pgpass)"
        )
    return normalize_url(value)


#: URL parameters that only Prisma understands: never given to libpq (psycopg2 and libpq refuse unknown ones).
#: ``schema`` names the database schema: see :func:`url_schema`.
PRISMA_ONLY = frozenset({"schema", "connection_limit", "pool_timeout", "pgbouncer", "statement_cache_size",
                         "socket_timeout", "sslaccept"})
#: Prisma parameters libpq has no equivalent for: refused with the fix instead of silently ignored
PRISMA_UNSUPPORTED = {"sslidentity": "give the client certificate as sslcert and sslkey (PEM files) instead",
                      "sslpassword": "use an unencrypted sslkey file (permissions 0600) with sslcert instead"}
#: libpq connection keywords a URL may carry as query parameters (they go to the driver and to the tools alike)
LIBPQ_KEYWORDS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "connect_timeout", "client_encoding",
    "options", "application_name", "fallback_application_name", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "sslmode", "sslcompression", "sslcert", "sslkey",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "sslcertmode", "sslnegotiation", "requirepeer",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode", "krbsrvname", "gsslib", "gssdelegation",
    "service", "target_session_attrs", "channel_binding", "require_auth", "load_balance_hosts"})
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def normalize_url(value: str) -> str:
    """The SQLAlchemy form of a PostgreSQL URL in any form Prisma documents, holding only what libpq understands.

    ``postgres://`` and ``postgresql://`` become ``postgresql+psycopg2://``; Prisma-only parameters
    (:data:`PRISMA_ONLY`) are removed; a ``host`` query parameter (a socket folder) replaces the URL's host, as
    in libpq and Prisma; an unknown parameter or ``sslmode`` is a one-line :class:`TargetError`.
    """
    value = value.strip()
    if value.startswith("postgres://"):
        value = "postgresql://" + value[len("postgres://") :]
    if value.startswith("postgresql://"):
        value = "postgresql+psycopg2://" + value[len("postgresql://") :]
    try:
        u = sa.engine.make_url(value)
    except Exception:
        raise TargetError(f"the database URL is not valid: {redact_url(value)}") from None
    if not u.drivername.startswith("postgresql"):
        raise TargetError(f"the target must be PostgreSQL, got {u.drivername!r}")
    query: dict[str, str] = {}
    for key, raw in u.query.items():
        val = str(raw[-1] if isinstance(raw, tuple) else raw)
        if key in PRISMA_ONLY:
            continue
        if key in PRISMA_UNSUPPORTED:
            raise TargetError(f"the database URL's {key} (Prisma's PKCS12 client identity) cannot be used by libpq: "
                              f"{PRISMA_UNSUPPORTED[key]}")
        if key not in LIBPQ_KEYWORDS:
            raise TargetError(f"the database URL has the parameter {key!r}, which neither libpq nor Prisma knows: "
                              "remove it (libpq keywords: sslmode, sslcert, sslkey, sslrootcert, connect_timeout, "
                              "application_name, options, host, …)")
        if key == "sslmode" and val not in SSLMODES:
            raise TargetError(f"the database URL's sslmode={val!r} is not one of {', '.join(SSLMODES)}")
        query[key] = val
    host = u.host
    if "host" in query:  # ?host=/var/run/postgresql overrides the host part (libpq and Prisma agree)
        host = None
    return u.set(host=host, query=query).render_as_string(hide_password=False)


def url_schema(url: str | None = None, env_var: str = ENV_VAR) -> str | None:
    """Prisma's ``?schema=NAME`` of ``url`` (default: the raw ``DATABASE_URL``), or None when it has none.

    :func:`normalize_url` drops it from the URL (libpq does not know it); the driver uses it as ``db_schema``
    when that parameter is left at its default ``public``."""
    from urllib.parse import parse_qs, urlsplit

    raw = (url if url is not None else os.environ.get(env_var, "")).strip()
    try:
        values = parse_qs(urlsplit(raw).query).get("schema")
    except ValueError:
        return None
    if not values:
        return None
    name = values[-1]
    if not _SCHEMA_NAME.fullmatch(name):
        raise TargetError(f"the database URL's schema={name!r} is not a plain schema name (letters, digits, _)")
    return name


def libpq_params(url: str | sa.engine.URL) -> dict[str, str]:
    """The libpq connection keywords of ``url``: what the driver connects with and what pg_dump, pg_restore and
    psql get (as a conninfo string, the password only in their environment), so the two cannot disagree.

    A keyword missing here (the password, say) is left to libpq's own defaults in both: ``PGPASSWORD``,
    ``PGPASSFILE`` / ``~/.pgpass``, ``PGHOST``, ``PGSSLMODE`` …"""
    text = url.render_as_string(hide_password=False) if isinstance(url, sa.engine.URL) else url
    u = sa.engine.make_url(normalize_url(text))
    out: dict[str, str] = {}
    if u.host:
        out["host"] = u.host.strip("[]")
    if u.port:
        out["port"] = str(u.port)
    if u.username:
        out["user"] = u.username
    if u.password is not None and str(u.password) != "":
        out["password"] = str(u.password)
    if u.database:
        out["dbname"] = u.database
    out.update({k: str(v[-1] if isinstance(v, tuple) else v) for k, v in u.query.items()})
    return out


def conninfo(params: dict[str, str]) -> str:
    """A libpq conninfo string (``key='value' …``) of ``params``, never with the password."""
    def quote(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in params.items() if k != "password")


def create_engine(url: str | sa.engine.URL, *, application_name: str | None = None, **kw: Any) -> Engine:
    """A SQLAlchemy engine that connects with exactly :func:`libpq_params` of ``url`` (``connect_timeout`` 10 s
    unless the URL says otherwise; ``application_name`` given here wins, so the runbook's sessions are named)."""
    text = url.render_as_string(hide_password=False) if isinstance(url, sa.engine.URL) else url
    params = libpq_params(text)
    params.setdefault("connect_timeout", "10")
    if application_name:
        params["application_name"] = application_name
    eng = sa.create_engine(normalize_url(text), **kw)

    def _connect(dialect: Any, conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        cargs.clear()
        cparams.clear()
        cparams.update(params)

    sa.event.listen(eng, "do_connect", _connect)
    return eng


def make_engine(url: str | None = None, application_name: str = "runbook") -> Engine:
    """An engine for the target; nothing connects until first use."""
    return create_engine(url or database_url(), application_name=application_name, pool_pre_ping=True)


#: driver texts of a connection that was open and is gone (terminated, server restart, network)
_LOST = ("terminating connection", "server closed the connection", "connection already closed",
         "could not receive data from server", "could not send data to server", "ssl syscall error",
         "connection has been closed unexpectedly", "no connection to the server")


def translate_error(exc: BaseException, url: str | None = None, *, connected: bool = False,
                    committing: bool = False) -> RunbookError:
    """Map a driver error to the matching RunbookError, its text redacted and on one line.

    ``connected``: the session was open (inside a transaction), so losing it is an interruption of the run,
    not an unreachable target; ``committing``: it happened during COMMIT, whose outcome is then unknown.
    """
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "pgcode", None)
    text = redact_text(" ".join(str(orig).split()))
    where = f" ({redact_url(url)})" if url else ""
    lost = code in ("57P01", "57P02", "57P03") or getattr(exc, "connection_invalidated", False) or any(
        m in text.lower() for m in _LOST)
    if connected and (lost or (code == "57014" and "user request" in text)):
        how = "its statement was canceled by another session" if code == "57014" else \
            "the database session was terminated or the connection lost"
        outcome = ("during COMMIT: whether the change landed is unknown; review again to see which state the "
                   "database is in (a second execute is a no-op if it landed)") if committing else \
            "before COMMIT: the server rolled the transaction back, nothing was changed; review again"
        return SessionInterruptedError(f"{how} {outcome}: {text}")
    if code == "55P03":
        return LockTimeoutError(f"could not lock the rows within lock_timeout: another session holds them; nothing was changed: {text}")
    if code == "40P01":
        return LockTimeoutError(f"deadlock with another session (PostgreSQL chose this transaction to abort); it was "
                                f"rolled back, nothing was changed; run again: {text}")
    if code == "57014":
        return StatementTimeoutError(f"statement_timeout reached; the transaction was rolled back, nothing was "
                                     f"changed: raise statement_timeout or narrow the scope: {text}")
    if code == "25006":
        return TargetError(f"the database is read-only (a standby or default_transaction_read_only): {text}")
    if code in ("28P01", "28000") or "password authentication failed" in text or "no password supplied" in text:
        return TargetError(f"authentication failed for the target database{where}: check the user and password")
    if code == "3D000" or ("database" in text and "does not exist" in text):
        return TargetError(f"the target database does not exist{where}: {text}")
    if isinstance(exc, OperationalError) or code is None and "could not connect" in text:
        return TargetError(f"cannot reach the target database{where}: {text}")
    return RunbookError(text)


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise translate_error(exc, engine.url.render_as_string(hide_password=True)) from None
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A REPEATABLE READ, READ ONLY transaction: one consistent snapshot, no writes possible.

    It is always rolled back: review mode cannot write even by mistake.
    """
    with connect(engine) as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        tx = conn.begin()
        try:
            yield conn
        except DBAPIError as exc:
            raise translate_error(exc, connected=True) from None
        finally:
            if tx.is_active:
                with contextlib.suppress(DBAPIError):
                    tx.rollback()


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min|h)?\s*$")


def duration_ms(value: str | int | float, name: str) -> int:
    """'5s', '500ms', '2min', 3000 -> milliseconds; 0 and garbage are refused."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = int(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ParameterError(f"parameter {name!r}: {value!r} is not a duration such as '5s', '500ms' or '2min'", name)
        ms = int(m.group(1)) * {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, None: 1}[m.group(2)]
    if ms <= 0 or ms > 24 * 3_600_000:
        raise ParameterError(f"parameter {name!r}: {value!r} must be between 1ms and 24h", name)
    return ms


@contextlib.contextmanager
def write_transaction(
    engine: Engine,
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    exclusive_key: str | None = None,
) -> Iterator[Connection]:
    """One READ COMMITTED transaction with lock/statement timeouts, committed only if the body returns.

    ``exclusive_key`` takes a transaction-level advisory lock so that two operators cannot execute
    the same procedure on the same database at once: the second gets ConcurrentRunError.
    Any exception rolls back; driver errors are translated to RunbookErrors.
    """
    with connect(engine) as raw:
        conn = raw.execution_options(isolation_level="READ COMMITTED")
        tx = conn.begin()
        try:
            ro = conn.exec_driver_sql("select current_setting('default_transaction_read_only') = 'on', "
                                      "pg_is_in_recovery()").one()
            if ro[0] or ro[1]:
                # the driver would open a READ WRITE transaction anyway; an operator's read-only mark is respected
                raise TargetError("the database is read-only (" + ("a standby in recovery" if ro[1] else
                                  "default_transaction_read_only is on") + "): execute refused, nothing was changed; "
                                  "point DATABASE_URL at the primary")
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
            if exclusive_key:
                got = conn.execute(
                    sa.text("select pg_try_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": exclusive_key}
                ).scalar_one()
                if not got:
                    raise ConcurrentRunError(
                        f"another operator is executing {exclusive_key!r} on this database right now; "
                        "wait for it to finish, then review again"
                    )
            yield conn
        except BaseException as exc:
            if tx.is_active:
                with contextlib.suppress(Exception):
                    tx.rollback()
            if isinstance(exc, DBAPIError):
                raise translate_error(exc, connected=True) from None
            raise
        else:
            try:
                tx.commit()
            except DBAPIError as exc:
                raise translate_error(exc, connected=True, committing=True) from None


@dataclass(frozen=True)
class ServerInfo:
    database: str
    server_version: str
    user: str
    fingerprint: str

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database, "server_version": self.server_version, "user": self.user,
                "fingerprint": self.fingerprint}


def server_info(conn: Connection) -> ServerInfo:
    """Database name, server version, user, and a non-secret fingerprint of the target.

    The fingerprint hashes the cluster's system identifier (when readable), the database's oid and
    name, so evidence can show two runs hit the same database without revealing where it is.
    """
    row = conn.execute(
        sa.text(
            "select current_database(), current_setting('server_version'), current_user, "
            "(select oid from pg_database where datname = current_database())"
        )
    ).one()
    ident = ""
    try:
        with conn.begin_nested():
            ident = str(conn.execute(sa.text("select system_identifier from pg_control_system()")).scalar_one())
    except DBAPIError:
        ident = str(conn.execute(sa.text("select coalesce(inet_server_addr()::text,'socket') || ':' || "
                                         "current_setting('port')")).scalar_one())
    fp = hashlib.sha256(f"{ident}/{row[3]}/{row[0]}".encode()).hexdigest()[:16]
    return ServerInfo(database=row[0], server_version=row[1], user=row[2], fingerprint=fp)


def run_autocommit(url: str | sa.engine.URL, *statements: str) -> None:
    """Run statements outside any transaction (CREATE/DROP DATABASE, …) on their own short connection."""
    eng = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            for stmt in statements:
                c.exec_driver_sql(stmt)
    except DBAPIError as exc:
        raise translate_error(exc) from None
    finally:
        eng.dispose()


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (names come from schema.prisma or the catalog, never raw input)."""
    return '"' + name.replace('"', '""') + '"'
