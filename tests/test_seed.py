"""The seeded data keeps the application's invariants and holds the incident the runbooks are tested on."""

from __future__ import annotations

import sqlalchemy as sa
from conftest import MIGRATIONS

from runbook_lib import seed, seed_linked
from runbook_lib.prisma.migrate import deploy


def _invariants(eng: sa.engine.Engine) -> dict[str, int]:
    """The real application's invariants, on its own tables (opening balances counted in)."""
    with eng.connect() as c:
        return {
            "balance_drift": c.exec_driver_sql(
                'select count(*) from user_token_balances b left join (select distinct on ("userId") "userId", '
                '"balanceAfter" - amount as opening from token_transactions order by "userId", "createdAt", id) o '
                'on o."userId" = b."userId" left join (select "userId", sum(amount) s from token_transactions '
                'group by 1) l on l."userId" = b."userId" '
                "where b.balance <> coalesce(o.opening, 0) + coalesce(l.s, 0)").scalar_one(),
            "last_balance_after_differs": c.exec_driver_sql(
                'select count(*) from user_token_balances b join (select distinct on ("userId") "userId", '
                '"balanceAfter" from token_transactions order by "userId", "createdAt" desc, id desc) l '
                'on l."userId" = b."userId" where l."balanceAfter" <> b.balance').scalar_one(),
            "counter_wrong": c.exec_driver_sql(
                'select count(*) from vouchers v where "currentUses" <> (select count(*) from voucher_redemptions r '
                'where r."voucherId" = v.id)').scalar_one(),
            "depleted_not_at_limit": c.exec_driver_sql(
                "select count(*) from vouchers where status = 'DEPLETED' and \"currentUses\" < \"maxUses\""
            ).scalar_one(),
            "grant_without_redemption": c.exec_driver_sql(
                "select count(*) from token_transactions t where source = 'voucher_redemption' and not exists "
                '(select 1 from voucher_redemptions r where r."voucherId" = t."sourceId" and r."userId" = t."userId")'
            ).scalar_one(),
            "grant_code_wrong": c.exec_driver_sql(
                "select count(*) from token_transactions t join vouchers v on v.id = t.\"sourceId\" "
                "where t.source = 'voucher_redemption' and t.metadata->>'voucherCode' <> v.code").scalar_one(),
            "grant_not_earn_bonus": c.exec_driver_sql(
                "select count(*) from token_transactions where source = 'voucher_redemption' and type <> 'EARN_BONUS'"
            ).scalar_one(),
        }


def test_incident_has_the_real_applications_shape(incident_db, engine_for):
    eng = engine_for(incident_db)
    facts = seed.incident_facts(eng)
    assert facts.users == 300 and facts.vouchers == len(seed.VOUCHERS)
    assert facts.affected_rows > facts.affected_users > 0  # several grants per user in the window
    assert facts.multi_grant_users > 20
    assert facts.users_negative_if_reversed > 0  # some already spent the granted tokens
    with eng.connect() as c:
        statuses = {r[0] for r in c.exec_driver_sql("select distinct status::text from vouchers")}
        types = {r[0] for r in c.exec_driver_sql("select distinct type::text from token_transactions")}
        sources = {r[0] for r in c.exec_driver_sql("select distinct source from token_transactions")}
        openings = c.exec_driver_sql(
            'select count(*) from (select distinct on ("userId") "balanceAfter" - amount as o from token_transactions '
            'order by "userId", "createdAt", id) x where o <> 0').scalar_one()
        cascades = c.exec_driver_sql(
            "select count(*) from pg_constraint where contype = 'f' and confdeltype = 'c' "
            "and confrelid = 'users'::regclass").scalar_one()
        link_column = c.exec_driver_sql(
            "select count(*) from information_schema.columns where table_name = 'token_transactions' "
            "and position('reversal' in lower(column_name)) > 0").scalar_one()
    assert statuses == {"ACTIVE", "INACTIVE", "EXPIRED", "DEPLETED"}
    assert "REVERSAL" not in types and {"EARN_BONUS", "EARN_PURCHASE", "EARN_REGENERATION"} <= types
    assert None in sources and {"purchase", "voucher_redemption", "regeneration"} <= sources
    assert openings > 0  # some ledgers start from an opening balance
    assert cascades >= 7  # accounts, sessions, api keys, albums, ledger, balances, redemptions
    assert link_column == 0
    assert all(v == 0 for v in _invariants(eng).values()), _invariants(eng)


def test_linked_fixture_keeps_its_own_conventions(linked_incident_db, engine_for):
    eng = engine_for(linked_incident_db)
    with eng.connect() as c:
        statuses = {r[0] for r in c.exec_driver_sql('select distinct status::text from "Voucher"')}
        linked = c.exec_driver_sql(
            'select count(*) from "TokenTransaction" t join "VoucherRedemption" r on r.id = t."sourceId"').scalar_one()
    assert statuses == {"ACTIVE", "DISABLED", "EXPIRED", "DEPLETED"}
    assert linked > 0
    assert seed_linked.incident_facts(eng).affected_rows > 0


def test_seed_is_deterministic(schema_db, engine_for, pg_server):
    other = pg_server.create("rb_seed_again", template=None)
    try:
        a, b = engine_for(schema_db), engine_for(other)
        with b.begin() as c:
            deploy(c, MIGRATIONS)
        seed.seed_incident(a)
        seed.seed_incident(b)
        q = "select md5(string_agg(t::text, '|' order by t.id)) from token_transactions t"
        with a.connect() as ca, b.connect() as cb:
            assert ca.exec_driver_sql(q).scalar_one() == cb.exec_driver_sql(q).scalar_one()
        b.dispose()
    finally:
        pg_server.drop("rb_seed_again")


def test_bulk_generator_keeps_the_invariants_at_small_scale(schema_db, engine_for):
    eng = engine_for(schema_db)
    info = seed.seed_bulk(eng, users=2_000, ledger_rows=12_000)
    facts = seed.incident_facts(eng)
    assert facts.users == 2_000 and facts.ledger_rows == 12_000
    assert facts.affected_rows > facts.affected_users > 0 and facts.users_negative_if_reversed > 0
    assert info["users"] == 2_000
    assert all(v == 0 for v in _invariants(eng).values()), _invariants(eng)
    with eng.connect() as c:  # written once, in creation order, as the application writes its ledger
        order = c.exec_driver_sql(
            "select correlation from pg_stats where tablename = 'token_transactions' and attname = 'createdAt'"
        ).scalar_one()
    assert order > 0.99, order
