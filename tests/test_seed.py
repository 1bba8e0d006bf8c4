"""The seeded data keeps the app's invariants and holds the incident the runbooks are tested on."""

from __future__ import annotations

import sqlalchemy as sa
from conftest import MIGRATIONS

from runbook_lib import seed
from runbook_lib.prisma.migrate import deploy


def _invariants(eng: sa.engine.Engine) -> dict[str, int]:
    with eng.connect() as c:
        return {
            "balance_drift": c.exec_driver_sql(
                'select count(*) from "UserTokenBalance" b left join (select "userId", sum(amount) s from '
                '"TokenTransaction" group by 1) l on l."userId" = b."userId" where b.balance <> coalesce(l.s, 0)'
            ).scalar_one(),
            "running_balance_wrong": c.exec_driver_sql(
                'select count(*) from (select "balanceAfter", sum(amount) over (partition by "userId" '
                'order by "createdAt", id) r from "TokenTransaction") t where "balanceAfter" <> r').scalar_one(),
            "counter_wrong": c.exec_driver_sql(
                'select count(*) from "Voucher" v where "currentUses" <> (select count(*) from "VoucherRedemption" r '
                'where r."voucherId" = v.id)').scalar_one(),
            "depleted_not_at_limit": c.exec_driver_sql(
                "select count(*) from \"Voucher\" where status = 'DEPLETED' and \"currentUses\" < \"maxUses\""
            ).scalar_one(),
            "users_without_balance": c.exec_driver_sql(
                'select count(*) from "User" u where not exists (select 1 from "UserTokenBalance" b '
                'where b."userId" = u.id)').scalar_one(),
        }


def test_incident_has_what_the_runbooks_must_handle(incident_db, engine_for):
    eng = engine_for(incident_db)
    facts = seed.incident_facts(eng)
    assert facts.users == 300 and facts.vouchers == len(seed.VOUCHERS)
    assert facts.affected_rows > facts.affected_users > 0  # several grants per user in the window
    assert facts.multi_grant_users > 20
    assert facts.users_negative_if_reversed > 0  # some already spent the granted tokens
    with eng.connect() as c:
        statuses = {r[0] for r in c.exec_driver_sql('select distinct status::text from "Voucher"')}
        sources = {r[0] for r in c.exec_driver_sql('select distinct source from "TokenTransaction"')}
        outside = c.exec_driver_sql(
            "select count(*) from \"TokenTransaction\" where source = 'voucher_redemption' and "
            "(\"createdAt\" < '2025-12-01' or \"createdAt\" >= '2025-12-03')").scalar_one()
    assert statuses == {"ACTIVE", "DISABLED", "EXPIRED", "DEPLETED"}
    assert {"purchase", "spend", "refund", "voucher_redemption"} <= sources
    assert outside > 0  # grants outside the window must stay untouched
    assert all(v == 0 for v in _invariants(eng).values()), _invariants(eng)


def test_seed_is_deterministic(schema_db, engine_for, pg_server):
    other = pg_server.create("rb_seed_again", template=None)
    try:
        a, b = engine_for(schema_db), engine_for(other)
        with b.begin() as c:
            deploy(c, MIGRATIONS)
        seed.seed_incident(a)
        seed.seed_incident(b)
        q = 'select md5(string_agg(t::text, \'|\' order by t.id)) from "TokenTransaction" t'
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
