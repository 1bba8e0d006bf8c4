"""The review's Parquet exports (``runbook_lib.evidence.export``) against real PostgreSQL: COPY in the review's
transaction, explicit Arrow types, awkward values, binds, row groups, the never-overwrite rule, the snapshot."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from runbook_lib import db
from runbook_lib.errors import EvidenceError, StatementTimeoutError
from runbook_lib.evidence.export import arrow_type
from runbook_lib.evidence.folders import export_queries  # where ``run`` imports it
from runbook_lib.run import Run

WINDOW = {"since": "2025-12-01T00:00:00Z", "until": "2025-12-03T00:00:00Z"}
UTC = dt.UTC

AWKWARD = """
create type mood as enum ('ok', 'not ok', 'é,"x"');
create table awkward (
  id bigint primary key, t text, vc varchar(10), ch char(3), j jsonb, js json, n numeric(12, 3), nu numeric,
  f8 float8, f4 real, b bool, i2 smallint, i4 int, ts timestamp(6), tz timestamptz, d date, e mood, u uuid,
  arr int[], iv interval
);
insert into awkward values
  (1, 'plain', 'v', 'ab', '{"a": 1, "q": "say \\"hi\\", then\\nbye", "ü": [1, null, "日本"]}', '{"k": "v"}',
   123456789.125, 1.000000000000000000001, 1.5, 0.1, true, -32768, 2147483647, '2025-12-01 00:00:00.123456',
   '2025-12-01 10:00:00.5+02', '2025-12-01', 'ok', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', '1 day 02:00'),
  (2, '', '', '', '"a string"', 'null', -0.001, -12345678901234567890.5, 'NaN', '-Infinity', false, 0, 0,
   '0001-01-01 00:00:00', '1900-01-01 00:00:00+00', '0001-01-01', 'not ok', null, '{}', '-1 mon'),
  (3, null, null, null, null, null, null, null, 'Infinity', null, null, null, null, null, null, null, null, null,
   null, null),
  (4, 'a,b', 'x"y', 'c,d', '[]', '[1,2]', 0, 0, -0.0, 3.4e38, true, 1, 1, '2025-12-31 23:59:59.999999',
   '2025-06-01 12:00:00-07', '2025-12-31', 'é,"x"', '00000000-0000-0000-0000-000000000000', null, '0'),
  (5, E'line\\nbreak\\r\\nand \\"quotes\\" and ''single''', 'NULL', 'NA', 'null', '{}', 999999999.999, 1e-20,
   1e300, -1e-30, false, 32767, -2147483648, '2000-02-29 12:00:00', '2000-02-29 12:00:00+05:30', '2000-02-29',
   'ok', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{-1}', '00:00:00.000001'),
  (6, E'\\\\.', ' padded ', ' x', '{"emoji": "🙂", "nul": null, "tab": "a\\tb"}', '"ünï"', null, -0, 2.5, 1,
   null, null, null, '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '1970-01-01', null, null, '{2,3}', null),
  (9223372036854775807, 'big', 'b', 'b', '1', '2', 1, 2, 3, 4, true, 5, 6, '2025-01-01', '2025-01-01+00',
   '2025-01-01', 'ok', null, null, null),
  (-9223372036854775808, 'small', 's', 's', 'true', 'false', 1, 2, 3, 4, false, 5, 6, '2025-01-01',
   '2025-01-01+00', '2025-01-01', 'ok', null, null, null);
"""


def _make(url: str, ddl: str) -> None:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.exec_driver_sql(ddl)
    eng.dispose()


def _export(url: str, tmp_path: Path, exports: dict[str, tuple[str, dict[str, Any]]], **kw: Any) -> dict[str, Any]:
    eng = db.make_engine(url)
    try:
        with db.read_only(eng) as conn:
            return export_queries(conn, tmp_path, exports, lambda _msg: None, **kw)
    finally:
        eng.dispose()


def test_awkward_values_round_trip_with_explicit_types(fresh_db, tmp_path):
    _make(fresh_db, AWKWARD)
    eng = db.make_engine(fresh_db)
    try:
        with db.read_only(eng) as conn:
            # a session whose zone prints historic offsets with seconds, and non-ISO dates: the export fixes both
            # for the COPY and gives them back to the transaction after it
            conn.exec_driver_sql("set local timezone = 'Europe/Amsterdam'; set local datestyle = 'SQL, DMY'")
            got = export_queries(conn, tmp_path, {"awkward": ("select * from awkward order by id", {})},
                                 lambda _msg: None)
            settings = conn.exec_driver_sql("select current_setting('TimeZone'), current_setting('DateStyle')").one()
            conn.exec_driver_sql("set local datestyle = 'ISO'")  # what psycopg2 parses
            rows = [r._asdict() for r in conn.exec_driver_sql("select * from awkward order by id")]
    finally:
        eng.dispose()
    assert tuple(settings) == ("Europe/Amsterdam", "SQL, DMY")
    assert got == {"awkward": {"file": "awkward.parquet", "rows": 8}}
    table = pq.read_table(tmp_path / "awkward.parquet")
    s = pa.string()
    assert dict(zip(table.schema.names, table.schema.types, strict=True)) == {
        "id": pa.int64(), "t": s, "vc": s, "ch": s, "j": s, "js": s, "n": pa.decimal128(12, 3), "nu": s,
        "f8": pa.float64(), "f4": pa.float64(), "b": pa.bool_(), "i2": pa.int64(), "i4": pa.int64(),
        "ts": pa.timestamp("us"), "tz": pa.timestamp("us", tz="UTC"), "d": pa.date32(), "e": s, "u": s, "arr": s,
        "iv": s}
    out = table.to_pylist()
    assert [r["id"] for r in out] == [-9223372036854775808, 1, 2, 3, 4, 5, 6, 9223372036854775807]
    by_id = {r["id"]: r for r in out}
    # NULL and '' stay apart; quotes, commas, newlines, a lone \. and non-ASCII survive; 'NULL'/'NA' are text
    assert [by_id[i]["t"] for i in (1, 2, 3, 4, 5, 6)] == [
        "plain", "", None, "a,b", "line\nbreak\r\nand \"quotes\" and 'single'", "\\."]
    assert [by_id[i]["vc"] for i in (2, 3, 4, 5, 6)] == ["", None, 'x"y', "NULL", " padded "]
    assert [by_id[i]["ch"] for i in (1, 2, 5, 6)] == ["ab ", "   ", "NA ", " x "]
    assert [by_id[i]["e"] for i in (1, 2, 3, 4)] == ["ok", "not ok", None, 'é,"x"']
    assert by_id[1]["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and by_id[2]["u"] is None
    assert [by_id[i]["arr"] for i in (1, 2, 4)] == ["{1,NULL,3}", "{}", None]
    assert by_id[1]["iv"] == "1 day 02:00:00"
    for r, pg in zip(sorted(out, key=lambda r: r["id"]), rows, strict=True):
        # JSON as the text PostgreSQL prints, parsing back to what psycopg2 reads
        assert (json.loads(r["j"]) if r["j"] is not None else None) == pg["j"]
        assert (json.loads(r["js"]) if r["js"] is not None else None) == pg["js"]
        # numeric(12,3) exact as decimal128; numeric without a declared scale exact as its text
        assert r["n"] == pg["n"] and (Decimal(r["nu"]) if r["nu"] is not None else None) == pg["nu"]
        assert r["b"] == pg["b"] and r["i2"] == pg["i2"] and r["i4"] == pg["i4"]
        assert r["ts"] == pg["ts"] and r["d"] == pg["d"]
        assert r["tz"] == pg["tz"]  # the same instant (aware datetimes compare across zones)
        for c in ("f8", "f4"):
            assert r[c] == pg[c] or (r[c] != r[c] and pg[c] != pg[c]), (r["id"], c, r[c], pg[c])
    assert by_id[2]["tz"] == dt.datetime(1900, 1, 1, tzinfo=UTC)
    assert by_id[1]["tz"] == dt.datetime(2025, 12, 1, 8, 0, 0, 500000, tzinfo=UTC)
    assert json.loads(by_id[1]["j"])["q"] == 'say "hi", then\nbye' and json.loads(by_id[6]["j"])["emoji"] == "🙂"
    assert by_id[2]["j"] == '"a string"' and by_id[5]["j"] == "null" and by_id[3]["j"] is None


def test_zero_rows_is_still_a_file_with_the_columns(fresh_db, tmp_path):
    _make(fresh_db, AWKWARD)
    got = _export(fresh_db, tmp_path, {"none": ("select id, t, tz from awkward where false", {})})
    assert got == {"none": {"file": "none.parquet", "rows": 0}}
    table = pq.read_table(tmp_path / "none.parquet")
    assert table.num_rows == 0
    assert table.schema == pa.schema([("id", pa.int64()), ("t", pa.string()), ("tz", pa.timestamp("us", tz="UTC"))])


def test_binds_with_lists_quotes_and_percent(fresh_db, tmp_path):
    _make(fresh_db, AWKWARD)
    sql = ("select id, t from awkward where t = any(:names) and id = any(:ids) and ts >= :since "
           "and t not like '%zzz%' and vc <> :odd order by id")
    binds = {"names": ["plain", "a,b", "it's", "x'); drop table awkward; --"], "ids": [1, 4, 99],
             "since": dt.datetime(2000, 1, 1), "odd": "'\"%(x)s", "unused": "extra binds are ignored, as execute does"}
    got = _export(fresh_db, tmp_path, {"sel": (sql, binds)})
    assert got["sel"]["rows"] == 2
    assert pq.read_table(tmp_path / "sel.parquet").to_pylist() == [{"id": 1, "t": "plain"}, {"id": 4, "t": "a,b"}]
    empty = _export(fresh_db, tmp_path, {"none": ("select id from awkward where id = any(:ids)", {"ids": []})})
    assert empty["none"]["rows"] == 0
    eng = sa.create_engine(fresh_db, poolclass=sa.pool.NullPool)
    with eng.connect() as c:  # the quoted value stayed a value
        assert c.exec_driver_sql("select count(*) from awkward").scalar_one() == 8
    eng.dispose()


def test_a_file_that_exists_is_refused_never_overwritten(fresh_db, tmp_path):
    _make(fresh_db, AWKWARD)
    (tmp_path / "rows.parquet").write_bytes(b"earlier evidence")
    with pytest.raises(EvidenceError, match="never overwritten"):
        _export(fresh_db, tmp_path, {"rows": ("select * from awkward", {})})
    assert (tmp_path / "rows.parquet").read_bytes() == b"earlier evidence"
    with pytest.raises(EvidenceError, match="bad evidence file name"):
        _export(fresh_db, tmp_path, {"../up": ("select 1", {})})


def test_rows_stream_in_bounded_row_groups(fresh_db, tmp_path):
    _make(fresh_db, "create table many as select g as id, repeat('x', mod(g, 50)) || ',\"' || g as t, "
                    "(mod(g, 3) = 0) as b from generate_series(1, 10500) g")
    eng = db.make_engine(fresh_db)
    lines: list[str] = []
    try:
        with db.read_only(eng) as conn:
            got = export_queries(conn, tmp_path, {"many": ("select * from many order by id", {})}, lines.append,
                                 row_group_rows=1000, block_size=16 * 1024)
    finally:
        eng.dispose()
    assert got["many"]["rows"] == 10500
    f = pq.ParquetFile(tmp_path / "many.parquet")
    sizes = [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)]
    assert sizes == [1000] * 10 + [500]  # one row group in memory at a time, never the whole set
    assert lines[0] == "exporting many: 1000 rows" and lines[-1] == "exporting many: 10500 rows" and len(lines) == 11
    table = f.read()
    assert table.column("id").to_pylist() == list(range(1, 10501))
    assert table.column("t")[41].as_py() == "x" * 42 + ',"42'
    assert list(tmp_path.iterdir()) == [tmp_path / "many.parquet"]  # the temporary file had no name


def test_the_export_reads_the_transactions_snapshot(fresh_db, tmp_path):
    _make(fresh_db, "create table s (id int primary key); insert into s select generate_series(1, 5)")
    eng, other = db.make_engine(fresh_db), sa.create_engine(fresh_db, poolclass=sa.pool.NullPool)
    try:
        with db.read_only(eng) as conn:
            assert conn.exec_driver_sql("select count(*) from s").scalar_one() == 5  # the snapshot starts here
            with other.begin() as c:
                c.exec_driver_sql("insert into s values (6)")
            got = export_queries(conn, tmp_path, {"s": ("select * from s order by id", {})}, lambda _msg: None)
            assert conn.exec_driver_sql("select count(*) from s").scalar_one() == 5  # the transaction goes on
    finally:
        eng.dispose()
        other.dispose()
    assert got["s"]["rows"] == 5
    assert pq.read_table(tmp_path / "s.parquet").column("id").to_pylist() == [1, 2, 3, 4, 5]


def test_a_failed_copy_is_translated_and_leaves_no_file(fresh_db, tmp_path):
    eng = db.make_engine(fresh_db)
    try:
        with pytest.raises(StatementTimeoutError), db.read_only(eng) as conn:
            conn.exec_driver_sql("set local statement_timeout = '100ms'")
            export_queries(conn, tmp_path, {"slow": ("select pg_sleep(5), 1 as x", {})}, lambda _msg: None)
    finally:
        eng.dispose()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("code", "precision", "scale", "expected"), [
    (1700, 12, 2, pa.decimal128(12, 2)), (1700, 50, 3, pa.decimal256(50, 3)), (1700, 65535, 65535, pa.string()),
    (1700, 3, 2046, pa.string()), (1700, 1000, 2, pa.string()), (20, None, None, pa.int64()),
    (700, None, None, pa.float64()), (1184, None, None, pa.timestamp("us", tz="UTC")), (114, None, None, pa.string()),
    (123456, None, None, pa.string()),
])
def test_arrow_types_from_the_description(code, precision, scale, expected):
    # psycopg2 reports numeric without a typmod as 65535/65535, a negative scale (numeric(3,-2)) as 2046
    assert arrow_type(code, precision, scale) == expected


def _same(old: Any, new: Any) -> bool:
    """A value as SQLAlchemy/psycopg2 reads it vs as the export wrote it."""
    if old is None or new is None:
        return old is None and new is None
    if isinstance(old, (dict, list)) and isinstance(new, str):
        return bool(old == json.loads(new))
    if isinstance(old, Decimal) and isinstance(new, str):
        return old == Decimal(new)
    if isinstance(old, uuid.UUID):
        return str(old) == new
    return bool(old == new)


def _matches_the_rows(url: str, plan: Any, tmp_path: Path) -> dict[str, int]:
    """Every export of the plan, written by ``export_queries`` and read back, equals the rows ``conn.execute``
    returns for the same query in the same transaction (what the export held before it went through COPY)."""
    assert plan.exports
    tmp_path.mkdir(parents=True, exist_ok=True)
    eng = db.make_engine(url)
    counts = {}
    try:
        with db.read_only(eng) as conn:
            got = export_queries(conn, tmp_path, plan.exports, lambda _msg: None)
            for name, (sql, binds) in plan.exports.items():
                res = conn.execute(sa.text(sql), binds)
                cols, rows = list(res.keys()), [tuple(r) for r in res]
                table = pq.read_table(tmp_path / f"{name}.parquet")
                assert table.schema.names == cols and table.num_rows == len(rows) == got[name]["rows"]
                for old, new in zip(rows, zip(*(table.column(i).to_pylist() for i in range(len(cols))), strict=True),
                                    strict=True):
                    assert all(_same(o, n) for o, n in zip(old, new, strict=True)), (name, old, new)
                counts[name] = len(rows)
    finally:
        eng.dispose()
    return counts


def test_token_reversal_exports_hold_the_rows(linked_incident_db, target_env, tmp_path):
    target_env(linked_incident_db)
    window = {**WINDOW, "grant_link": "redemption_id"}
    full = Run("token-reversal", window).review()
    counts = _matches_the_rows(linked_incident_db, full, tmp_path / "full")
    assert counts["affected_rows"] > 0 and counts["per_user_before_after"] > 0
    users = list(full.frames["balances"]["userId"].iloc[:2])
    codes = list(full.frames["by_voucher"]["voucher"].iloc[:2])
    narrowed = Run("token-reversal", {**window, "user_ids": users, "voucher_codes": codes}).review()
    assert 0 < _matches_the_rows(linked_incident_db, narrowed, tmp_path / "lists")["affected_rows"] \
        < counts["affected_rows"]


def test_token_reversal_exports_on_the_applications_shape(incident_db, target_env, tmp_path):
    target_env(incident_db)
    assert _matches_the_rows(incident_db, Run("token-reversal", WINDOW).review(), tmp_path)["affected_rows"] > 0


def test_partial_rollback_exports_hold_the_rows(incident_db, target_env, tmp_path):
    target_env(incident_db)
    counts = _matches_the_rows(incident_db, Run("partial-rollback", {"all_vouchers": True}).review(), tmp_path)
    assert set(counts) == {"redemptions_cleared", "vouchers_before_after", "ledger_grants"} and all(counts.values())


def test_full_rollback_exports_hold_the_rows(incident_db, target_env, tmp_path):
    target_env(incident_db)
    plan = Run("full-rollback", {"ledger_policy": "keep", "prisma_side": False}).review()
    counts = _matches_the_rows(incident_db, plan, tmp_path)
    assert counts["ledger_grants_with_redemptions"] > 0 and any(n.startswith("rows_") for n in counts)


def test_ledger_rows_with_json_an_expression_and_an_empty_column(incident_db, tmp_path):
    # what tests/test_cli_cost.py checked of the pandas path, on the explicit types: jsonb as its text, an
    # unconstrained numeric expression as its exact text, a column of NULLs still typed
    sql = ("select id, \"userId\", amount, \"createdAt\", metadata, \"balanceAfter\", amount::numeric / 3 as third, "
           "null::text as nothing from token_transactions order by id")
    counts = _matches_the_rows(incident_db, _Exports({"rows": (sql, {})}), tmp_path)
    assert counts["rows"] > 0
    assert pq.read_schema(tmp_path / "rows.parquet") == pa.schema([
        ("id", pa.string()), ("userId", pa.string()), ("amount", pa.int64()), ("createdAt", pa.timestamp("us")),
        ("metadata", pa.string()), ("balanceAfter", pa.int64()), ("third", pa.string()), ("nothing", pa.string())])


class _Exports:
    def __init__(self, exports: dict[str, tuple[str, dict[str, Any]]]) -> None:
        self.exports = exports


def test_columns_that_share_a_name_are_numbered(fresh_db, tmp_path):
    sql = "select 1 as a, 'x' as a, null::int as b, 2 as a_2, 3 as a"
    assert _export(fresh_db, tmp_path, {"dup": (sql, {})})["dup"]["rows"] == 1
    assert pq.read_table(tmp_path / "dup.parquet").to_pylist() == [{"a": 1, "a_3": "x", "b": None, "a_2": 2, "a_4": 3}]
