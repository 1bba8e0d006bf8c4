"""The second fixture: the same incident on a schema with model-named tables and a dedicated link column.

``tests/fixtures/prisma_linked`` is the schema this project first invented (tables named like the models, a
``reversalOfId`` column linking a reversal to its original, a ``REVERSAL`` ledger type, a ``DISABLED``
voucher status, grants whose ``sourceId`` is the redemption's id). The real application has none of these
(``runbook_lib.seed`` and ``demo/prisma`` have its shape); this fixture keeps the runbooks honest on
schemas that do have a link column and other conventions.

``seed_incident`` writes a small, deterministic incident (a few hundred users) into a database that has
the ``tests/fixtures/prisma_linked`` migrations applied (the benchmark's bulk data has the real shape:
``runbook_lib.seed.seed_bulk``). It keeps the app's invariants: every
balance equals the sum of its user's ledger, ``balanceAfter`` is the running balance, voucher use counters
equal the redemption counts, depleted vouchers are at their limit.

The incident: between 2025-12-01 and 2025-12-03 a bug in the redemption path granted voucher tokens twice
or three times for some redemptions, and some users redeemed several vouchers in the window. Some users
spent the granted tokens afterwards (reversing leaves them below zero). Grants outside the window, and
purchases, spends and refunds, must not be touched.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import sqlalchemy as sa

from .seed import WINDOW_END, WINDOW_START, IncidentFacts, _ts  # the same incident window and figures

# code, type, status, tokenAmount, maxUses, expiresAt
VOUCHERS: list[tuple[str, str, str, int, int | None, str | None]] = [
    ("WELCOME50", "TOKEN_GRANT", "ACTIVE", 50, None, None),
    ("BLACKFRIDAY100", "TOKEN_GRANT", "ACTIVE", 100, None, "2026-01-01"),
    ("CYBERMONDAY200", "TOKEN_GRANT", "ACTIVE", 200, 400, "2025-12-31"),
    ("HOLIDAY25", "TOKEN_GRANT", "DISABLED", 25, None, None),
    ("SPRING10", "TOKEN_GRANT", "EXPIRED", 10, None, "2025-06-01"),
    ("LIMITED500", "TOKEN_GRANT", "DEPLETED", 500, 12, None),
    ("PARTNER75", "TOKEN_GRANT", "ACTIVE", 75, 1000, None),
    ("TRIAL30", "SUBSCRIPTION_TRIAL", "ACTIVE", 0, None, None),
    ("UNUSED5", "TOKEN_GRANT", "ACTIVE", 5, 100, None),
]


# long: one deterministic script of the incident's story on the linked schema, sharing one random stream
# (see seed.seed_incident)
def seed_incident(engine: sa.engine.Engine, seed: int = 42, users: int = 300) -> IncidentFacts:
    """Seed the incident into a migrated, empty database; deterministic for a given ``seed``."""
    rng = random.Random(seed)
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    user_rows: list[dict[str, Any]] = [{"id": f"user_{i:04d}", "email": f"user{i:04d}@example.test", "name": f"User {i}",
                  "ts": base + dt.timedelta(days=i % 200)} for i in range(1, users + 1)]
    uids: list[str] = [str(u["id"]) for u in user_rows]
    vouchers: list[dict[str, Any]] = [{"id": f"v_{code.lower()}", "code": code, "type": typ, "status": st, "amt": amt, "mx": mx,
                 "exp": exp} for code, typ, st, amt, mx, exp in VOUCHERS]
    by_code = {v["code"]: v for v in vouchers}
    ledger: list[dict[str, Any]] = []
    redemptions: list[dict[str, Any]] = []
    taken: set[tuple[str, str]] = set()

    def tx(uid: str, amount: int, typ: str, source: str, when: dt.datetime, source_id: str | None = None,
           desc: str | None = None) -> None:
        ledger.append({"id": f"tx_{len(ledger) + 1:06d}", "u": uid, "amt": amount, "type": typ, "src": source,
                       "sid": source_id, "desc": desc, "ts": when})

    def redeem(uid: str, code: str, when: dt.datetime, grants: int = 1) -> None:
        v = by_code[code]
        if (v["id"], uid) in taken:
            return
        taken.add((v["id"], uid))
        rid = f"r_{len(redemptions) + 1:05d}"
        redemptions.append({"id": rid, "v": v["id"], "u": uid, "ts": when})
        if v["type"] != "TOKEN_GRANT":
            return  # a subscription trial grants no tokens
        for g in range(grants):  # the bug: one redemption, several grants a few milliseconds apart
            tx(uid, v["amt"], "CREDIT", "voucher_redemption", when + dt.timedelta(milliseconds=7 * g), rid,
               f"Voucher {code}")

    for uid in uids:  # history before the incident: purchases, spends, old grants
        tx(uid, rng.choice([100, 200, 500]), "CREDIT", "purchase", _ts(base, rng, 24 * 200))
        if rng.random() < 0.5:
            tx(uid, -rng.randrange(5, 60), "DEBIT", "spend", _ts(base + dt.timedelta(days=200), rng, 24 * 60))
        if rng.random() < 0.25:
            redeem(uid, "SPRING10", _ts(dt.datetime(2025, 3, 1, tzinfo=dt.UTC), rng, 24 * 60))
        if rng.random() < 0.2:
            redeem(uid, "WELCOME50", _ts(dt.datetime(2025, 11, 1, tzinfo=dt.UTC), rng, 24 * 29))
        if rng.random() < 0.05:
            tx(uid, rng.randrange(10, 50), "REFUND", "refund", _ts(dt.datetime(2025, 10, 1, tzinfo=dt.UTC), rng, 500))
    for i, uid in enumerate(uids):  # the incident window
        r = rng.random()
        if r < 0.55:
            code = rng.choice(["BLACKFRIDAY100", "WELCOME50", "PARTNER75", "CYBERMONDAY200", "HOLIDAY25"])
            redeem(uid, code, _ts(WINDOW_START, rng, 47), grants=rng.choice([1, 1, 2, 3]))
            if rng.random() < 0.35:  # a second voucher in the window
                redeem(uid, rng.choice(["BLACKFRIDAY100", "PARTNER75", "WELCOME50"]), _ts(WINDOW_START, rng, 47))
            if rng.random() < 0.05:
                redeem(uid, "TRIAL30", _ts(WINDOW_START, rng, 47))
        if i < 12:  # the depleted voucher: exactly maxUses redemptions, all in the window
            redeem(uid, "LIMITED500", _ts(WINDOW_START, rng, 40), grants=1 + (i % 3 == 0))
    # grants just outside the window (edges): must not be reversed
    tx(uids[-1], 100, "CREDIT", "voucher_redemption", WINDOW_END, None, "grant exactly at the window's end")
    tx(uids[-2], 100, "CREDIT", "voucher_redemption", WINDOW_START - dt.timedelta(milliseconds=1), None,
       "grant just before the window")
    redemptions_by_user: dict[str, int] = {}
    for t in ledger:
        if t["src"] == "voucher_redemption" and WINDOW_START <= t["ts"] < WINDOW_END:
            redemptions_by_user[t["u"]] = redemptions_by_user.get(t["u"], 0) + t["amt"]
    spenders = sorted(redemptions_by_user)[::4]  # a quarter of the affected users spent the granted tokens
    for uid in spenders:
        own = sum(t["amt"] for t in ledger if t["u"] == uid)
        spend = int(own * rng.uniform(0.6, 0.98))
        if spend > 0:
            tx(uid, -spend, "DEBIT", "spend", _ts(WINDOW_END + dt.timedelta(hours=2), rng, 72), None, "AI credits")
    for uid in rng.sample(uids, 40):  # the app keeps running after the incident
        tx(uid, rng.choice([50, 100]), "CREDIT", "purchase", _ts(dt.datetime(2025, 12, 5, tzinfo=dt.UTC), rng, 200))

    counts = {v["id"]: 0 for v in vouchers}
    for red in redemptions:
        counts[red["v"]] += 1
    for vrow in vouchers:
        vrow["n"] = counts[vrow["id"]]
    with engine.begin() as c:
        c.execute(sa.text('insert into "User"(id, email, name, "createdAt") values (:id, :email, :name, :ts)'),
                  user_rows)
        c.execute(sa.text(
            'insert into "Voucher"(id, code, type, status, "tokenAmount", "maxUses", "currentUses", "expiresAt", '
            '"createdAt", "updatedAt") values (:id, :code, cast(:type as "VoucherType"), '
            'cast(:status as "VoucherStatus"), :amt, :mx, :n, cast(:exp as timestamp), '
            "timestamp '2025-01-01', timestamp '2025-12-04')"), vouchers)
        c.execute(sa.text('insert into "VoucherRedemption"(id, "voucherId", "userId", "redeemedAt") '
                          "values (:id, :v, :u, :ts)"), _naive(redemptions))
        c.execute(sa.text(
            'insert into "TokenTransaction"(id, "userId", amount, type, source, "sourceId", description, '
            '"createdAt") values (:id, :u, :amt, cast(:type as "TokenTransactionType"), :src, :sid, :desc, :ts)'),
            _naive(ledger))
        finish_ledger(c)
    return incident_facts(engine)


def _naive(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prisma's DateTime columns are ``timestamp(3)`` holding UTC: store the UTC wall time."""
    return [{**r, "ts": r["ts"].astimezone(dt.UTC).replace(tzinfo=None)} for r in rows]


def finish_ledger(conn: sa.engine.Connection) -> None:
    """Fill ``balanceAfter`` with the running balance and write every user's balance as its ledger sum."""
    conn.exec_driver_sql(
        'UPDATE "TokenTransaction" t SET "balanceAfter" = r.running FROM ('
        '  SELECT id, sum(amount) OVER (PARTITION BY "userId" ORDER BY "createdAt", id) AS running'
        '  FROM "TokenTransaction") r WHERE r.id = t.id')
    conn.exec_driver_sql(
        'INSERT INTO "UserTokenBalance"(id, "userId", balance, "updatedAt") '
        "SELECT 'bal_' || u.id, u.id, coalesce(s.total, 0), timestamp '2025-12-06' FROM \"User\" u "
        'LEFT JOIN (SELECT "userId", sum(amount) AS total FROM "TokenTransaction" GROUP BY 1) s '
        'ON s."userId" = u.id '
        'ON CONFLICT ("userId") DO UPDATE SET balance = excluded.balance')


def incident_facts(engine: sa.engine.Engine, since: dt.datetime = WINDOW_START,
                   until: dt.datetime = WINDOW_END) -> IncidentFacts:
    """The incident's figures as the database holds them (used by the demo and the tests)."""
    sql = """
    WITH aff AS (
      SELECT "userId", count(*) AS n, sum(amount) AS tokens FROM "TokenTransaction"
      WHERE source = 'voucher_redemption' AND "createdAt" >= :since AND "createdAt" < :until GROUP BY 1)
    SELECT (SELECT count(*) FROM "User"), (SELECT count(*) FROM "Voucher"), (SELECT count(*) FROM "VoucherRedemption"),
           (SELECT count(*) FROM "TokenTransaction"), coalesce(sum(aff.n), 0), count(aff."userId"),
           count(*) FILTER (WHERE aff.n > 1), coalesce(sum(aff.tokens), 0),
           count(*) FILTER (WHERE b.balance - aff.tokens < 0)
    FROM aff LEFT JOIN "UserTokenBalance" b ON b."userId" = aff."userId"
    """
    naive = {"since": since.astimezone(dt.UTC).replace(tzinfo=None), "until": until.astimezone(dt.UTC).replace(tzinfo=None)}
    with engine.connect() as c:
        row = c.execute(sa.text(sql), naive).one()
    return IncidentFacts(*(int(x) for x in row))


MAPPED_TABLES = {"User": "users", "UserTokenBalance": "token_balances", "TokenTransaction": "token_ledger",
                 "Voucher": "vouchers", "VoucherRedemption": "voucher_redemptions"}
MAPPED_COLUMNS = {
    "token_balances": {"userId": "user_id", "updatedAt": "updated_at"},
    "token_ledger": {"userId": "user_id", "sourceId": "source_id", "balanceAfter": "balance_after",
                     "reversalOfId": "reversal_of_id", "createdAt": "created_at"},
    "voucher_redemptions": {"voucherId": "voucher_id", "userId": "user_id", "redeemedAt": "redeemed_at"},
    "vouchers": {"tokenAmount": "token_amount", "maxUses": "max_uses", "currentUses": "current_uses",
                 "expiresAt": "expires_at", "createdAt": "created_at", "updatedAt": "updated_at"},
    "users": {"createdAt": "created_at"},
}


def apply_mapped_names(conn: sa.engine.Connection) -> None:
    """Rename the demo tables and columns to those of ``tests/fixtures/prisma_mapped/schema.prisma`` (@@map/@map)."""
    for model, table in MAPPED_TABLES.items():
        conn.exec_driver_sql(f'ALTER TABLE "{model}" RENAME TO "{table}"')
    for table, cols in MAPPED_COLUMNS.items():
        for old, new in cols.items():
            conn.exec_driver_sql(f'ALTER TABLE "{table}" RENAME COLUMN "{old}" TO "{new}"')
