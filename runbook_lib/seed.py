"""Seeded data for the demo, the tests and the benchmark: a voucher incident in the real application's shape.

The schema is ``demo/prisma`` (the real application's five voucher-related models, field for field, as
``shared/reference/REAL_APP.md`` describes them: tables ``@@map``-ped to snake_case, camelCase columns, no
column linking ledger rows, no ``REVERSAL`` ledger type, voucher status ``INACTIVE``). Every redemption is
written the way the application writes it, in one transaction: the ``voucher_redemptions`` row
(``tokensGranted``), ``currentUses`` + 1 (``DEPLETED`` at the limit), the balance moved, and one
``token_transactions`` row: ``type = EARN_BONUS``, ``source = 'voucher_redemption'``, ``sourceId`` = **the
voucher's id**, ``balanceAfter`` = the balance after it, ``metadata = {"voucherCode": CODE}``.

``seed_incident`` writes a small, deterministic incident (a few hundred users) into a migrated database;
``seed_bulk`` the same shape at benchmark scale with set-based ``generate_series`` statements. Both keep
the application's invariants: every balance equals its user's opening balance plus the ledger sum,
``balanceAfter`` is the running balance, use counters equal the redemption counts, depleted vouchers are at
their limit, every grant belongs to a redemption through ``(userId, sourceId = voucherId)``.

The incident: between 2025-12-01 and 2025-12-03 a bug in the redemption path granted voucher tokens twice
or three times for some redemptions, and some users redeemed several vouchers in the window. Some users
spent the granted tokens afterwards (reversing leaves them below zero). Grants outside the window, and
regenerations, purchases, spends, refunds and admin adjustments, must not be touched. Some users' ledgers
start from an opening balance (history the ledger does not hold), as in the application.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

WINDOW_START = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
WINDOW_END = dt.datetime(2025, 12, 3, tzinfo=dt.UTC)

# code, type, status, value, maxUses, expiresAt
VOUCHERS: list[tuple[str, str, str, int, int | None, str | None]] = [
    ("WELCOME50", "FIXED_TOKENS", "ACTIVE", 50, None, None),
    ("BLACKFRIDAY100", "FIXED_TOKENS", "ACTIVE", 100, None, "2026-01-01"),
    ("CYBERMONDAY200", "FIXED_TOKENS", "ACTIVE", 200, 400, "2025-12-31"),
    ("HOLIDAY25", "FIXED_TOKENS", "INACTIVE", 25, None, None),
    ("SPRING10", "FIXED_TOKENS", "EXPIRED", 10, None, "2025-06-01"),
    ("LIMITED500", "FIXED_TOKENS", "DEPLETED", 500, 12, None),
    ("PARTNER75", "FIXED_TOKENS", "ACTIVE", 75, 1000, None),
    ("BONUS20", "PERCENTAGE_BONUS", "ACTIVE", 20, None, None),
    ("TRIAL30", "SUBSCRIPTION_TRIAL", "ACTIVE", 30, None, None),
    ("UNUSED5", "FIXED_TOKENS", "ACTIVE", 5, 100, None),
]
#: a percentage bonus is granted on this many tokens (the application's base grant)
PERCENTAGE_BASE = 250

#: tables of the real application's models (``@@map``)
TABLES = {"User": "users", "UserTokenBalance": "user_token_balances", "TokenTransaction": "token_transactions",
          "Voucher": "vouchers", "VoucherRedemption": "voucher_redemptions"}


def voucher_id(code: str) -> str:
    return f"cmv{code.lower()}"


def tokens_for(vtype: str, value: int) -> int:
    """What one redemption grants: the value for FIXED_TOKENS, a percentage of the base, nothing for a trial."""
    if vtype == "FIXED_TOKENS":
        return value
    if vtype == "PERCENTAGE_BONUS":
        return PERCENTAGE_BASE * value // 100
    return 0


@dataclass(frozen=True)
class IncidentFacts:
    """What was seeded, computed from the database after seeding (not from the generator's intentions)."""

    users: int
    vouchers: int
    redemptions: int
    ledger_rows: int
    affected_rows: int
    affected_users: int
    multi_grant_users: int
    tokens_in_window: int
    users_negative_if_reversed: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.users} users, {self.vouchers} vouchers, {self.redemptions} redemptions, "
                f"{self.ledger_rows} ledger rows; in the window: {self.affected_rows} grants to "
                f"{self.affected_users} users ({self.multi_grant_users} with several), {self.tokens_in_window} "
                f"tokens, {self.users_negative_if_reversed} users would go below zero")


def _ts(base: dt.datetime, rng: random.Random, span_hours: float) -> dt.datetime:
    return base + dt.timedelta(seconds=rng.randrange(int(span_hours * 3600)))


def _naive(when: dt.datetime) -> dt.datetime:
    """Prisma's DateTime columns are ``timestamp(3)`` holding UTC: store the UTC wall time (milliseconds)."""
    w = when.astimezone(dt.UTC).replace(tzinfo=None)
    return w.replace(microsecond=w.microsecond // 1000 * 1000)


class _App:
    """Writes rows the way the application does; kept in memory, inserted at the end (small data only)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ledger: list[dict[str, Any]] = []
        self.redemptions: list[dict[str, Any]] = []
        self.taken: set[tuple[str, str]] = set()
        self.vouchers: dict[str, dict[str, Any]] = {code: {"id": voucher_id(code), "code": code, "type": typ, "status": st, "value": val,
                                "mx": mx, "exp": exp} for code, typ, st, val, mx, exp in VOUCHERS}

    def tx(self, uid: str, amount: int, typ: str, source: str | None, when: dt.datetime,
           source_id: str | None = None, metadata: dict[str, Any] | None = None) -> None:
        self.ledger.append({"id": f"cmt{len(self.ledger) + 1:07d}", "u": uid, "amt": amount, "type": typ,
                            "src": source, "sid": source_id, "meta": json.dumps(metadata) if metadata else None,
                            "ts": _naive(when)})

    def redeem(self, uid: str, code: str, when: dt.datetime, grants: int = 1) -> None:
        """One redemption; ``grants`` > 1 is the incident's bug (the grant written several times)."""
        v = self.vouchers[code]
        if (v["id"], uid) in self.taken:  # unique (voucherId, userId): the app refuses a second redemption
            return
        self.taken.add((v["id"], uid))
        tokens = tokens_for(v["type"], v["value"])
        self.redemptions.append({"id": f"cmr{len(self.redemptions) + 1:06d}", "v": v["id"], "u": uid,
                                 "tok": tokens, "ts": _naive(when)})
        if tokens == 0:
            return  # a subscription trial grants no tokens: no ledger row
        for g in range(grants):  # a few milliseconds apart
            self.tx(uid, tokens, "EARN_BONUS", "voucher_redemption", when + dt.timedelta(milliseconds=7 * g),
                    v["id"], {"voucherCode": code})


# long: one deterministic script of the incident's story (vouchers, redemptions, grants, spends in time
# order, sharing one random stream); split, its steps would pass a dozen lists between them
def seed_incident(engine: sa.engine.Engine, seed: int = 42, users: int = 300) -> IncidentFacts:
    """Seed the incident into a migrated, empty database (``demo/prisma``); deterministic for a given ``seed``."""
    rng = random.Random(seed)
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    uids = [f"cmu{i:05d}" for i in range(1, users + 1)]
    user_rows = [{"id": uid, "email": f"user{i:04d}@example.test" if i % 17 else None, "name": f"User {i}",
                  "ts": _naive(base + dt.timedelta(days=i % 200))} for i, uid in enumerate(uids, start=1)]
    app = _App(rng)
    tx, redeem = app.tx, app.redeem
    #: some ledgers start from an opening balance (the app's history before its ledger existed)
    opening = {uid: rng.choice([100, 250]) for uid in uids if rng.random() < 0.1}
    for uid in uids:  # history before the incident: regeneration, purchases, spends, old grants
        tx(uid, 20, "EARN_REGENERATION", "regeneration", _ts(base, rng, 24 * 30))
        tx(uid, rng.choice([100, 200, 500]), "EARN_PURCHASE", "purchase", _ts(base + dt.timedelta(days=31), rng, 24 * 150),
           f"pi_{rng.randrange(10**9):09d}")
        if rng.random() < 0.5:
            tx(uid, -rng.randrange(5, 60), rng.choice(["SPEND_ENHANCEMENT", "SPEND_MCP_GENERATION"]), "enhancement",
               _ts(base + dt.timedelta(days=200), rng, 24 * 60))
        if rng.random() < 0.2:
            tx(uid, -rng.randrange(1, 5), "SPEND_APP_MESSAGE", None, _ts(base + dt.timedelta(days=250), rng, 24 * 30))
        if rng.random() < 0.25:
            redeem(uid, "SPRING10", _ts(dt.datetime(2025, 3, 1, tzinfo=dt.UTC), rng, 24 * 60))
        if rng.random() < 0.2:
            redeem(uid, "WELCOME50", _ts(dt.datetime(2025, 11, 1, tzinfo=dt.UTC), rng, 24 * 29))
        if rng.random() < 0.05:
            tx(uid, rng.randrange(10, 50), "REFUND", "refund", _ts(dt.datetime(2025, 10, 1, tzinfo=dt.UTC), rng, 500))
        if rng.random() < 0.03:
            tx(uid, rng.randrange(10, 30), "EARN_ADMIN_ADJUSTMENT", "admin", _ts(dt.datetime(2025, 9, 1, tzinfo=dt.UTC), rng, 500),
               None, {"reason": "support ticket"})
    for i, uid in enumerate(uids):  # the incident window
        if rng.random() < 0.55:
            code = rng.choice(["BLACKFRIDAY100", "WELCOME50", "PARTNER75", "CYBERMONDAY200", "HOLIDAY25"])
            redeem(uid, code, _ts(WINDOW_START, rng, 47), grants=rng.choice([1, 1, 2, 3]))
            if rng.random() < 0.35:  # a second voucher in the window
                redeem(uid, rng.choice(["BLACKFRIDAY100", "PARTNER75", "WELCOME50", "BONUS20"]),
                       _ts(WINDOW_START, rng, 47))
            if rng.random() < 0.05:
                redeem(uid, "TRIAL30", _ts(WINDOW_START, rng, 47))
        if i < 12:  # the depleted voucher: exactly maxUses redemptions, all in the window
            redeem(uid, "LIMITED500", _ts(WINDOW_START, rng, 40), grants=1 + (i % 3 == 0))
    # redemptions just outside the window (edges): their grants must not be reversed
    redeem(uids[-1], "PARTNER75", WINDOW_END)
    redeem(uids[-2], "PARTNER75", WINDOW_START - dt.timedelta(milliseconds=1))
    in_window: dict[str, int] = {}
    for t in app.ledger:
        if t["src"] == "voucher_redemption" and _naive(WINDOW_START) <= t["ts"] < _naive(WINDOW_END):
            in_window[t["u"]] = in_window.get(t["u"], 0) + t["amt"]
    for uid in sorted(in_window)[::4]:  # a quarter of the affected users spent the granted tokens
        own = opening.get(uid, 0) + sum(t["amt"] for t in app.ledger if t["u"] == uid)
        spend = int(own * rng.uniform(0.6, 0.98))
        if spend > 0:
            tx(uid, -spend, "SPEND_BOX_CREATION", "box", _ts(WINDOW_END + dt.timedelta(hours=2), rng, 72))
    for uid in rng.sample(uids, 40):  # the app keeps running after the incident
        tx(uid, rng.choice([50, 100]), "EARN_PURCHASE", "purchase", _ts(dt.datetime(2025, 12, 5, tzinfo=dt.UTC), rng, 200),
           f"pi_{rng.randrange(10**9):09d}")
    _running_balances(app.ledger, opening)
    balances = _balances(uids, app.ledger, opening)
    counts = {v["id"]: 0 for v in app.vouchers.values()}
    for red in app.redemptions:
        counts[red["v"]] += 1
    vouchers = [{**v, "n": counts[v["id"]]} for v in app.vouchers.values()]
    extras = _user_extras(uids, rng)
    with engine.begin() as c:
        c.execute(sa.text('insert into users(id, email, name, "createdAt", "updatedAt") '
                          "values (:id, :email, :name, :ts, :ts)"), user_rows)
        for table, rows in extras.items():
            cols = list(rows[0])
            c.execute(sa.text(f"insert into {table}({', '.join(chr(34) + k + chr(34) for k in cols)}) "
                              f"values ({', '.join(':' + k for k in cols)})"), rows)
        c.execute(sa.text(
            'insert into vouchers(id, code, type, value, "maxUses", "currentUses", "expiresAt", status, metadata, '
            '"createdAt", "updatedAt") values (:id, :code, cast(:type as "VoucherType"), :value, :mx, :n, '
            'cast(:exp as timestamp), cast(:status as "VoucherStatus"), null, '
            "timestamp '2025-01-01', timestamp '2025-12-04')"), vouchers)
        c.execute(sa.text('insert into voucher_redemptions(id, "voucherId", "userId", "tokensGranted", "redeemedAt") '
                          "values (:id, :v, :u, :tok, :ts)"), app.redemptions)
        c.execute(sa.text(
            'insert into token_transactions(id, "userId", amount, type, source, "sourceId", "balanceAfter", metadata, '
            '"createdAt") values (:id, :u, :amt, cast(:type as "TokenTransactionType"), :src, :sid, :ba, '
            "cast(:meta as jsonb), :ts)"), app.ledger)
        c.execute(sa.text(
            'insert into user_token_balances(id, "userId", balance, "lastRegeneration", tier, "createdAt", '
            "\"updatedAt\") values (:id, :u, :bal, timestamp '2025-12-06', cast(:tier as \"SubscriptionTier\"), "
            "timestamp '2025-01-01', timestamp '2025-12-06')"), balances)
    return incident_facts(engine)


def _running_balances(ledger: list[dict[str, Any]], opening: dict[str, int]) -> None:
    """``balanceAfter`` of every row: the opening balance plus the running sum, in (createdAt, id) order."""
    running: dict[str, int] = {}
    for t in sorted(ledger, key=lambda r: (r["u"], r["ts"], r["id"])):
        running[t["u"]] = running.get(t["u"], opening.get(t["u"], 0)) + t["amt"]
        t["ba"] = running[t["u"]]


def _balances(uids: list[str], ledger: list[dict[str, Any]], opening: dict[str, int]) -> list[dict[str, Any]]:
    total: dict[str, int] = {}
    for t in ledger:
        total[t["u"]] = total.get(t["u"], 0) + t["amt"]
    return [{"id": f"cmb{uid[3:]}", "u": uid, "bal": opening.get(uid, 0) + total.get(uid, 0),
             "tier": "PRO" if i % 10 == 0 else "FREE"} for i, uid in enumerate(uids)]


def _user_extras(uids: list[str], rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Rows of the other user-referencing tables (all ``onDelete: Cascade``): a careless delete would show."""
    accounts = [{"id": f"cma{uid[3:]}", "userId": uid, "type": "oauth", "provider": "github",
                 "providerAccountId": f"gh{uid[3:]}"} for uid in uids if rng.random() < 0.6]
    sessions = [{"id": f"cms{uid[3:]}", "sessionToken": f"st_{uid}", "userId": uid,
                 "expires": dt.datetime(2026, 1, 1)} for uid in uids if rng.random() < 0.4]
    keys = [{"id": f"cmk{uid[3:]}", "userId": uid, "name": "cli", "keyHash": f"h_{uid}"}
            for uid in uids if rng.random() < 0.1]
    albums = [{"id": f"cmal{uid[3:]}{k}", "userId": uid, "title": f"Album {k}"}
              for uid in uids for k in range(rng.choice([0, 0, 1, 2]))]
    return {"accounts": accounts, "sessions": sessions, "api_keys": keys, "albums": albums}


def incident_facts(engine: sa.engine.Engine, since: dt.datetime = WINDOW_START,
                   until: dt.datetime = WINDOW_END) -> IncidentFacts:
    """The incident's figures as the database holds them (used by the demo and the tests)."""
    sql = """
    WITH aff AS (
      SELECT "userId", count(*) AS n, sum(amount) AS tokens FROM token_transactions
      WHERE source = 'voucher_redemption' AND "createdAt" >= :since AND "createdAt" < :until GROUP BY 1)
    SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM vouchers), (SELECT count(*) FROM voucher_redemptions),
           (SELECT count(*) FROM token_transactions), coalesce(sum(aff.n), 0), count(aff."userId"),
           count(*) FILTER (WHERE aff.n > 1), coalesce(sum(aff.tokens), 0),
           count(*) FILTER (WHERE b.balance - aff.tokens < 0)
    FROM aff LEFT JOIN user_token_balances b ON b."userId" = aff."userId"
    """
    naive = {"since": since.astimezone(dt.UTC).replace(tzinfo=None), "until": until.astimezone(dt.UTC).replace(tzinfo=None)}
    with engine.connect() as c:
        row = c.execute(sa.text(sql), naive).one()
    return IncidentFacts(*(int(x) for x in row))


#: seed_bulk's statements, in order (binds :users, :nv, :ledger_rows): the ledger's rows go to the temp table
#: bulk_ledger first and into the ledger in one statement, in creation order, with their running balances
BULK_STATEMENTS: list[tuple[str, str]] = [
    ("users", 'INSERT INTO users(id, email, "createdAt", "updatedAt") SELECT \'u\' || g, \'u\' || g || '
              "'@bench.test', timestamp '2025-01-01' + (g % 200) * interval '1 day', timestamp '2025-12-06' "
              "FROM generate_series(1::bigint, :users) g"),
    ("vouchers", 'INSERT INTO vouchers(id, code, type, value, "maxUses", "currentUses", status, "updatedAt") '
                 "SELECT 'v' || g, 'BULK' || g, 'FIXED_TOKENS', 10 * (1 + g % 20), NULL, 0, "
                 "(ARRAY['ACTIVE','ACTIVE','INACTIVE','EXPIRED']::\"VoucherStatus\"[])[1 + g % 4], "
                 "timestamp '2025-12-04' FROM generate_series(1::bigint, :nv) g"),
    ("redemptions", 'INSERT INTO voucher_redemptions(id, "voucherId", "userId", "tokensGranted", "redeemedAt") '
                    "SELECT 'r' || g, 'v' || (1 + g % :nv), 'u' || g, 10 * (1 + (1 + g % :nv) % 20), "
                    "CASE WHEN g % 4 = 0 THEN timestamp '2025-12-01' + ((g * 7919) % 172800) * interval '1 second' "
                    "ELSE timestamp '2025-11-01' + ((g * 104729) % 2500000) * interval '1 second' END "
                    "FROM generate_series(1::bigint, :users) g WHERE g % 2 = 0"),
    ("voucher counters", 'UPDATE vouchers v SET "currentUses" = r.n FROM (SELECT "voucherId", count(*) n '
                         'FROM voucher_redemptions GROUP BY 1) r WHERE r."voucherId" = v.id'),
    ("grants", 'INSERT INTO bulk_ledger(id, "userId", amount, type, source, "sourceId", '
               'metadata, "createdAt") SELECT \'g\' || r.id || \'_\' || k, r."userId", r."tokensGranted", '
               "'EARN_BONUS', 'voucher_redemption', r.\"voucherId\", jsonb_build_object('voucherCode', v.code), "
               'r."redeemedAt" + k * interval \'7 milliseconds\' FROM voucher_redemptions r '
               'JOIN vouchers v ON v.id = r."voucherId" CROSS JOIN LATERAL generate_series(0, '
               "CASE WHEN substr(r.id, 2)::int % 12 = 0 THEN 1 ELSE 0 END) k"),
    ("other ledger rows", 'INSERT INTO bulk_ledger(id, "userId", amount, type, source, "createdAt") '
                          "SELECT 't' || g, 'u' || (1 + (g * 2654435761::bigint) % :users), "
                          "CASE WHEN g % 3 = 0 THEN -(1 + g % 40) ELSE 10 * (1 + g % 50) END, "
                          "CASE WHEN g % 3 = 0 THEN 'SPEND_ENHANCEMENT' ELSE 'EARN_PURCHASE' END"
                          "::\"TokenTransactionType\", CASE WHEN g % 3 = 0 THEN 'enhancement' ELSE 'purchase' END, "
                          "CASE WHEN g % 30 = 0 THEN timestamp '2025-12-03 01:00' + (g % 300000) * interval '1 second' "
                          "ELSE timestamp '2025-01-01' + (g % 28000000) * interval '1 second' END "
                          "FROM generate_series(1::bigint, greatest(:ledger_rows - (SELECT count(*) FROM bulk_ledger), "
                          "0)) g"),
    ("ledger, in creation order, with running balances",
     'INSERT INTO token_transactions(id, "userId", amount, type, source, "sourceId", "balanceAfter", metadata, '
     '"createdAt") SELECT id, "userId", amount, type, source, "sourceId", '
     'sum(amount) OVER (PARTITION BY "userId" ORDER BY "createdAt", id), metadata, "createdAt" '
     'FROM bulk_ledger ORDER BY "createdAt", id'),
    ("balances", 'INSERT INTO user_token_balances(id, "userId", balance, "lastRegeneration", "updatedAt") '
                 "SELECT 'bal_' || u.id, u.id, coalesce(s.total, 0), timestamp '2025-12-06', timestamp '2025-12-06' "
                 'FROM users u LEFT JOIN (SELECT "userId", sum(amount) AS total FROM token_transactions GROUP BY 1) s '
                 'ON s."userId" = u.id'),
]


def seed_bulk(engine: sa.engine.Engine, users: int = 200_000, ledger_rows: int = 1_000_000) -> dict[str, Any]:
    """Benchmark-scale data in the application's shape, set-based (``generate_series``, :data:`BULK_STATEMENTS`);
    deterministic.

    Half the users redeem a voucher (a quarter in the incident window, one in twelve of those granted
    twice), the rest of ``ledger_rows`` are purchases and spends spread over the year, some spends after
    the window so that reversing leaves balances negative. Only the application's own indexes exist.

    The ledger is written as the application writes it: each row once, in the order of ``createdAt``, with its
    ``balanceAfter`` (the rows are generated into a temp table, then inserted in one ordered statement). An
    incident window's rows therefore lie together in the table's pages, as in the application's own database,
    and the table holds no dead row versions (filling ``balanceAfter`` by a later UPDATE rewrote every row:
    twice the pages, and a window's rows scattered over half of them). Analysed at the end (committed).
    """
    info: dict[str, Any] = {}
    with engine.begin() as c:
        c.exec_driver_sql('CREATE TEMP TABLE bulk_ledger ON COMMIT DROP AS SELECT id, "userId", amount, type, source, '
                          '"sourceId", metadata, "createdAt" FROM token_transactions WITH NO DATA')
        for label, sql in BULK_STATEMENTS:
            n = c.execute(sa.text(sql), {"users": users, "nv": 100, "ledger_rows": ledger_rows}).rowcount
            info[label] = n
            print(f"  seed_bulk: {label}: {n} rows", flush=True)
    with engine.begin() as c:  # committed: the column statistics are rows of pg_statistic
        c.exec_driver_sql("ANALYZE")
    return info


def apply_mapped_names(conn: sa.engine.Connection) -> None:
    """Rename the linked fixture's tables and columns to ``tests/fixtures/prisma_mapped`` (see ``seed_linked``)."""
    from .seed_linked import apply_mapped_names as rename

    rename(conn)
