"""Catalog discovery on the real application's shape: every dependency orders the DROPs, with or without a DEFAULT.

Each case adds one kind of dependency to a database built here in the shape of the real application
(``@@map``-ped snake_case tables, camelCase columns, ``vouchers.type`` typed with ``VoucherType`` and **no
default**), then runs the full rollback twice: once with a failure injected after every DROP ran (just before
COMMIT), which must leave the catalog and every table's rows exactly as they were, and once for real.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from conftest import schema_snapshot, table_checksums

from runbook_lib import catalog
from runbook_lib.faults import InjectedFault
from runbook_lib.run import Run

NO_BACKUP = "test database built by the test itself: no backup needed"
TABLES, ENUMS = ["vouchers", "voucher_redemptions"], ["VoucherType", "VoucherStatus"]

#: the real application's five tables as Prisma 7.3 creates them (REAL_APP.md), and a kept table with a cascade
REAL_SHAPE = """
CREATE TYPE "VoucherType" AS ENUM ('FIXED_TOKENS', 'PERCENTAGE_BONUS', 'SUBSCRIPTION_TRIAL');
CREATE TYPE "VoucherStatus" AS ENUM ('ACTIVE', 'INACTIVE', 'EXPIRED', 'DEPLETED');
CREATE TYPE "TokenTransactionType" AS ENUM ('EARN_REGENERATION', 'EARN_PURCHASE', 'EARN_BONUS',
    'EARN_ADMIN_ADJUSTMENT', 'SPEND_ENHANCEMENT', 'SPEND_MCP_GENERATION', 'SPEND_BOX_CREATION', 'SPEND_APP_MESSAGE',
    'REFUND');
CREATE TYPE "SubscriptionTier" AS ENUM ('FREE', 'PRO');
CREATE TABLE "users" ("id" TEXT NOT NULL, "email" TEXT, CONSTRAINT "users_pkey" PRIMARY KEY ("id"));
CREATE UNIQUE INDEX "users_email_key" ON "users"("email");
CREATE TABLE "vouchers" (
    "id" TEXT NOT NULL, "code" TEXT NOT NULL, "type" "VoucherType" NOT NULL, "value" INTEGER NOT NULL,
    "maxUses" INTEGER, "currentUses" INTEGER NOT NULL DEFAULT 0, "expiresAt" TIMESTAMP(3),
    "status" "VoucherStatus" NOT NULL DEFAULT 'ACTIVE', "metadata" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "vouchers_pkey" PRIMARY KEY ("id"));
CREATE UNIQUE INDEX "vouchers_code_key" ON "vouchers"("code");
CREATE INDEX "vouchers_code_idx" ON "vouchers"("code");
CREATE INDEX "vouchers_status_expiresAt_idx" ON "vouchers"("status", "expiresAt");
CREATE TABLE "voucher_redemptions" (
    "id" TEXT NOT NULL, "voucherId" TEXT NOT NULL, "userId" TEXT NOT NULL, "tokensGranted" INTEGER NOT NULL,
    "redeemedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, CONSTRAINT "voucher_redemptions_pkey" PRIMARY KEY ("id"));
CREATE UNIQUE INDEX "voucher_redemptions_voucherId_userId_key" ON "voucher_redemptions"("voucherId", "userId");
CREATE INDEX "voucher_redemptions_userId_redeemedAt_idx" ON "voucher_redemptions"("userId", "redeemedAt");
CREATE INDEX "voucher_redemptions_voucherId_idx" ON "voucher_redemptions"("voucherId");
CREATE TABLE "token_transactions" (
    "id" TEXT NOT NULL, "userId" TEXT NOT NULL, "amount" INTEGER NOT NULL, "type" "TokenTransactionType" NOT NULL,
    "source" TEXT, "sourceId" TEXT, "balanceAfter" INTEGER NOT NULL, "metadata" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, CONSTRAINT "token_transactions_pkey" PRIMARY KEY ("id"));
CREATE TABLE "user_token_balances" (
    "id" TEXT NOT NULL, "userId" TEXT NOT NULL, "balance" INTEGER NOT NULL DEFAULT 0,
    "lastRegeneration" TIMESTAMP(3) NOT NULL, "tier" "SubscriptionTier" NOT NULL DEFAULT 'FREE',
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "user_token_balances_pkey" PRIMARY KEY ("id"));
CREATE UNIQUE INDEX "user_token_balances_userId_key" ON "user_token_balances"("userId");
CREATE TABLE "sessions" ("id" TEXT NOT NULL, "userId" TEXT NOT NULL, CONSTRAINT "sessions_pkey" PRIMARY KEY ("id"));
ALTER TABLE "voucher_redemptions" ADD CONSTRAINT "voucher_redemptions_voucherId_fkey" FOREIGN KEY ("voucherId")
    REFERENCES "vouchers"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "voucher_redemptions" ADD CONSTRAINT "voucher_redemptions_userId_fkey" FOREIGN KEY ("userId")
    REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "token_transactions" ADD CONSTRAINT "token_transactions_userId_fkey" FOREIGN KEY ("userId")
    REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "user_token_balances" ADD CONSTRAINT "user_token_balances_userId_fkey" FOREIGN KEY ("userId")
    REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "sessions" ADD CONSTRAINT "sessions_userId_fkey" FOREIGN KEY ("userId")
    REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;
INSERT INTO "users" VALUES ('u1', 'u1@example.test'), ('u2', 'u2@example.test');
INSERT INTO "sessions" VALUES ('s1', 'u1');
INSERT INTO "vouchers" ("id", "code", "type", "value", "maxUses", "currentUses", "status", "updatedAt") VALUES
    ('v1', 'WELCOME', 'FIXED_TOKENS', 100, 10, 2, 'ACTIVE', now()),
    ('v2', 'LIMITED', 'PERCENTAGE_BONUS', 50, 1, 1, 'DEPLETED', now());
INSERT INTO "voucher_redemptions" VALUES ('r1', 'v1', 'u1', 100, '2025-12-01'), ('r2', 'v1', 'u2', 100, '2025-12-01'),
    ('r3', 'v2', 'u1', 50, '2025-12-02');
INSERT INTO "user_token_balances" ("id", "userId", "balance", "lastRegeneration", "updatedAt") VALUES
    ('b1', 'u1', 150, now(), now()), ('b2', 'u2', 100, now(), now());
INSERT INTO "token_transactions" ("id", "userId", "amount", "type", "source", "sourceId", "balanceAfter") VALUES
    ('t1', 'u1', 100, 'EARN_BONUS', 'voucher_redemption', 'v1', 100),
    ('t2', 'u2', 100, 'EARN_BONUS', 'voucher_redemption', 'v1', 100),
    ('t3', 'u1', 50, 'EARN_BONUS', 'voucher_redemption', 'v2', 150);
"""

#: name -> (extra DDL, the unexpected dependents the operator must name, or [] when Prisma's own shape)
CASES: dict[str, tuple[str, list[str]]] = {
    "enum_column_with_default": ("", []),  # vouchers.status VoucherStatus DEFAULT 'ACTIVE'
    "enum_column_without_default": ('ALTER TABLE "vouchers" ALTER COLUMN "status" DROP DEFAULT', []),  # and .type
    "enum_array_column_in_voucher_table": (
        'ALTER TABLE "vouchers" ADD COLUMN "allowed" "VoucherStatus"[] NOT NULL DEFAULT ARRAY[]::"VoucherStatus"[];'
        'ALTER TABLE "vouchers" ADD COLUMN "kinds" "VoucherType"[]', []),
    "enum_array_column_in_kept_table": (
        'ALTER TABLE "users" ADD COLUMN "voucherKinds" "VoucherType"[];'
        "UPDATE \"users\" SET \"voucherKinds\" = '{FIXED_TOKENS}'", ['table column public.users."voucherKinds"']),
    "domain_over_enum_in_kept_table": (
        'CREATE DOMAIN vs_dom AS "VoucherStatus"; ALTER TABLE "users" ADD COLUMN "vs" vs_dom',
        ["type public.vs_dom", "table column public.users.vs"]),
    "view_over_voucher_table": (
        'CREATE VIEW voucher_codes AS SELECT code, "currentUses" FROM "vouchers"', ["view public.voucher_codes"]),
    "view_over_enum_column_of_kept_table": (
        'ALTER TABLE "users" ADD COLUMN "lastVoucherType" "VoucherType";'
        'CREATE VIEW user_voucher_kind AS SELECT id, "lastVoucherType" FROM "users";'
        'CREATE MATERIALIZED VIEW user_kind_counts AS SELECT "lastVoucherType", count(*) FROM "users" GROUP BY 1',
        ['table column public.users."lastVoucherType"', "view public.user_voucher_kind",
         "materialized view public.user_kind_counts"]),
    "fk_from_kept_table_into_voucher_table": (
        'CREATE TABLE "orders" ("id" TEXT PRIMARY KEY, "voucherId" TEXT REFERENCES "vouchers"("id") ON DELETE SET NULL,'
        ' "redemptionId" TEXT REFERENCES "voucher_redemptions"("id") ON DELETE CASCADE);'
        "INSERT INTO \"orders\" VALUES ('o1', 'v1', 'r1'), ('o2', NULL, NULL)",
        ['table constraint "orders_voucherId_fkey" on public.orders',
         'table constraint "orders_redemptionId_fkey" on public.orders']),
    "fk_from_voucher_table_to_users": (  # Prisma's own: voucher_redemptions.userId -> users, ON DELETE CASCADE
        'ALTER TABLE "vouchers" ADD COLUMN "createdById" TEXT REFERENCES "users"("id") ON DELETE RESTRICT;'
        "UPDATE \"vouchers\" SET \"createdById\" = 'u2'", []),
}


@pytest.fixture
def real_db(fresh_db: str, engine_for: Callable[[str], sa.engine.Engine], target_env: Callable[[str], str]) -> str:
    with engine_for(fresh_db).begin() as c:
        c.exec_driver_sql(REAL_SHAPE)
    target_env(fresh_db)
    return fresh_db


def fingerprint(eng: sa.engine.Engine) -> tuple[list[tuple], dict[str, str]]:
    with eng.connect() as c:
        return schema_snapshot(c, "public"), table_checksums(c, "public")


def test_enum_column_without_default_orders_its_table_first(real_db, engine_for):
    """The reported failure: `cannot drop type "VoucherType" … column type of table vouchers depends on it`."""
    with engine_for(real_db).connect() as c:
        disc = catalog.discover(c, "public", TABLES, ENUMS)
    labels = [u.label for u in disc.order]
    assert labels.index("table public.vouchers") < labels.index('type public."VoucherType"')
    assert labels.index("table public.vouchers") < labels.index('type public."VoucherStatus"')
    assert labels.index("table public.voucher_redemptions") < labels.index("table public.vouchers")
    assert 'table public.vouchers' in units_dependents(disc, 'type public."VoucherType"')
    assert catalog.unacknowledged(disc, []) == []  # Prisma's own shape: nothing unexpected


def units_dependents(disc: catalog.Discovery, label: str) -> set[str]:
    return next(u.dependents for u in disc.order if u.label == label)


def test_typed_columns_are_read_from_pg_attribute(real_db, engine_for):
    with engine_for(real_db).begin() as c:
        c.exec_driver_sql('CREATE DOMAIN d2 AS "VoucherType"[]; CREATE TABLE t2 (a d2, b "VoucherStatus"[])')
        oids = [int(r[0]) for r in c.execute(sa.text(
            "select oid from pg_type where typname in ('VoucherType', 'VoucherStatus') order by 1"))]
        cols = {tuple(r) for r in c.execute(sa.text(
            "select attrelid::regclass::text, attname::text from pg_attribute where (attrelid, attnum) in "
            "(select x.r, x.n from unnest(cast(:r as oid[]), cast(:n as int[])) x(r, n))"),
            {"r": [x[0] for x in catalog._typed_columns(c, oids)], "n": [x[1] for x in catalog._typed_columns(c, oids)]})}
    assert {("vouchers", "type"), ("vouchers", "status"), ("t2", "a"), ("t2", "b")} <= cols


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_dependency_rolls_back_on_failure_and_drops_on_execute(case, real_db, engine_for, monkeypatch):
    eng = engine_for(real_db)
    extra, unexpected = CASES[case]
    if extra:
        with eng.begin() as c:
            c.exec_driver_sql(extra)
    kept_tables = ["users", "sessions", "token_transactions", "user_token_balances"] + (["orders"] if "orders" in extra
                                                                                        else [])
    before = fingerprint(eng)
    params = {"ledger_policy": "keep", "prisma_side": False, "drop_dependents": unexpected}
    plan = Run("full-rollback", params).review()
    assert sorted(plan.details["unacknowledged"]) == [], plan.details["unacknowledged"]
    assert sorted(catalog.unacknowledged(plan.details["discovery"], [])) == sorted(unexpected)
    execute = {**params, "mode": "execute", "backup_override_reason": NO_BACKUP, "approved_plan": plan.plan_id}
    # every DROP runs, then a failure before COMMIT: nothing may remain changed
    monkeypatch.setenv("RUNBOOK_FAULT", "before_commit:raise")
    run = Run("full-rollback", execute)
    with pytest.raises(InjectedFault):
        run.execute()
    assert run.state["rolled_back"]["rolled_back"] is True
    assert fingerprint(eng) == before
    monkeypatch.delenv("RUNBOOK_FAULT")
    result = Run("full-rollback", execute).execute()
    assert result is not None and result.changed
    schema_after, sums_after = fingerprint(eng)
    with eng.connect() as c:
        assert catalog.find_seeds(c, "public", TABLES, ENUMS)[0] == {}
        left = c.execute(sa.text("select count(*) from pg_type where typname in ('VoucherType', 'VoucherStatus', "
                                 "'_VoucherType', '_VoucherStatus', 'vs_dom')")).scalar()
        assert left == 0
        assert c.execute(sa.text("select count(*) from users")).scalar() == 2  # kept rows survive every FK
        assert c.execute(sa.text("select count(*) from sessions")).scalar() == 1
    for t in kept_tables:
        if not any(t in u for u in unexpected):  # a table that lost a named column has other checksums
            assert sums_after[f"public.{t}"] == before[1][f"public.{t}"], t
    again = Run("full-rollback", {**execute, "backup_override_reason": None}).execute()
    assert again is not None and not again.changed


def test_migration_statements_are_schema_relative(real_db, engine_for):
    """Prisma's migrations name objects without the schema (Prisma sets the search_path from ``?schema=``)."""
    with engine_for(real_db).begin() as c:
        c.exec_driver_sql(CASES["view_over_enum_column_of_kept_table"][0] + ";"
                          + CASES["fk_from_kept_table_into_voucher_table"][0]
                          + ';CREATE SCHEMA other; CREATE VIEW other."Codes" AS SELECT code FROM public.vouchers;'
                          'CREATE FUNCTION public.rank(s "VoucherStatus") RETURNS int LANGUAGE sql AS $$ SELECT 1 $$')
        disc = catalog.discover(c, "public", TABLES, ENUMS)
    recorded = {u.label: u.migration_sql for u in disc.order}
    assert recorded["table public.vouchers"] == 'DROP TABLE "vouchers"'
    assert recorded['type public."VoucherType"'] == 'DROP TYPE "VoucherType"'
    assert recorded['table column public.users."lastVoucherType"'] == 'ALTER TABLE "users" DROP COLUMN "lastVoucherType"'
    assert recorded['table constraint "orders_voucherId_fkey" on public.orders'] == \
        'ALTER TABLE "orders" DROP CONSTRAINT "orders_voucherId_fkey"'
    assert recorded["view public.user_voucher_kind"] == 'DROP VIEW "user_voucher_kind"'
    assert recorded['view other."Codes"'] == 'DROP VIEW "other"."Codes"'  # another schema stays qualified
    assert recorded['function public.rank(public."VoucherStatus")'] == 'DROP FUNCTION "rank"("VoucherStatus")'
    assert not any("public." in (sql or "") for sql in recorded.values())
    # the statements that run stay schema-qualified (independent of the session's search_path)
    assert next(u.drop_sql for u in disc.order if u.label == "table public.vouchers") == "DROP TABLE public.vouchers"
