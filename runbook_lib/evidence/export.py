"""Query exports: a review's full affected set, streamed into the run folder as Parquet at the speed of the query.

``export_queries`` runs each export query with ``COPY (<query>) TO STDOUT (FORMAT csv)`` on the caller's DBAPI
connection, in the caller's transaction (so it reads the review's snapshot; COPY TO is allowed in a READ ONLY
transaction), into an unnamed temporary file (never the whole set in memory, no named file left behind), then
reads that file back with pyarrow's streaming CSV reader, every column with an explicit Arrow type taken from the
query's result description (``arrow_type``), and writes zstd Parquet in row groups. The bind values of the
``text()`` SQL (``:name``, lists too) are rendered by the dialect's compiler and psycopg2's ``mogrify``, the same
client-side interpolation psycopg2 applies to any statement. ``parquet_path`` is the evidence-file rule shared with
``folders.write_frame``: a safe name, and a file that exists already is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import EvidenceError

#: rows per Parquet row group (and per progress line); the batches pyarrow's CSV reader yields are ~1 MiB
ROW_GROUP_ROWS = 50_000
BLOCK_SIZE = 1 << 20

# PostgreSQL type OIDs (pg_type.oid, fixed for the built-in types) -> Arrow type name
_BOOL, _INT8, _INT2, _INT4, _OID, _FLOAT4, _FLOAT8, _NUMERIC = 16, 20, 21, 23, 26, 700, 701, 1700
_DATE, _TIMESTAMP, _TIMESTAMPTZ = 1082, 1114, 1184
#: the session settings the CSV text of dates and times depends on, fixed for the COPY and restored after it:
#: ISO dates, and timestamptz in UTC (so every offset is "+00", which Arrow parses; a zone such as
#: Europe/Amsterdam prints historic offsets with seconds, "+00:19:32", which it does not)
_COPY_SETTINGS = (("DateStyle", "ISO, YMD"), ("TimeZone", "UTC"))


def parquet_path(run_dir: Path, name: str) -> Path:
    """``run_dir/<name>.parquet`` for a new evidence file: a safe name, and never one that exists already."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
        raise EvidenceError(f"bad evidence file name {name!r}")
    path = Path(run_dir) / f"{name}.parquet"
    if path.exists():
        raise EvidenceError(f"{path} exists already; evidence files are never overwritten")
    return path


def arrow_type(type_code: int, precision: int | None = None, scale: int | None = None) -> Any:
    """The Arrow type of a result column from its psycopg2 description (type OID, numeric precision and scale).

    bool; int2/int4/int8/oid -> int64; float4/float8 -> float64 (psycopg2 read both as a Python float);
    numeric(p, s) -> decimal128(p, s) (decimal256 for p up to 76), numeric without a declared precision (e.g. an
    expression such as sum(), whose scale differs row by row) -> string, its exact text; date -> date32;
    timestamp -> timestamp[us]; timestamptz -> timestamp[us, UTC]; everything else (text, varchar, char, name,
    enums, uuid, json, jsonb, arrays, intervals, bytea as its hex text…) -> string, the value as psql shows it.
    """
    import pyarrow as pa

    fixed = {_BOOL: pa.bool_(), _INT2: pa.int64(), _INT4: pa.int64(), _INT8: pa.int64(), _OID: pa.int64(),
             _FLOAT4: pa.float64(), _FLOAT8: pa.float64(), _DATE: pa.date32(), _TIMESTAMP: pa.timestamp("us"),
             _TIMESTAMPTZ: pa.timestamp("us", tz="UTC")}
    if type_code in fixed:
        return fixed[type_code]
    if type_code == _NUMERIC and precision is not None and scale is not None and 0 <= scale <= precision:
        if precision <= 38:
            return pa.decimal128(precision, scale)
        if precision <= 76:
            return pa.decimal256(precision, scale)
    return pa.string()


def export_queries(conn: Any, run_dir: Path, exports: dict[str, tuple[str, dict[str, Any]]],
                   progress: Callable[[str], None], *, row_group_rows: int = ROW_GROUP_ROWS,
                   block_size: int = BLOCK_SIZE) -> dict[str, Any]:
    """Stream each export query (name -> (sql, binds)) to ``run_dir/<name>.parquet`` in the transaction of
    ``conn`` (a SQLAlchemy connection on psycopg2); returns name -> {file, rows}.

    Memory holds one row group (``row_group_rows`` rows) and one CSV block (``block_size`` bytes) at a time; the
    rows wait in an unnamed temporary file between the COPY and the Parquet writer. An empty result is still a
    file (with the query's columns), so the evidence shows the empty set.
    """
    out: dict[str, Any] = {}
    with _cursor(conn) as cur, _copy_settings(cur):
        for name, (sql, binds) in exports.items():
            path = parquet_path(run_dir, name)
            query = _render(conn, cur, sql, binds)
            columns = _columns(cur, query)
            with tempfile.TemporaryFile() as f:
                cur.copy_expert(b"COPY (\n" + query + b"\n) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')", f)
                rows = _write_parquet(path, f, columns, row_group_rows, block_size,
                                      functools.partial(_progress, progress, name))
            out[name] = {"file": path.name, "rows": rows}
    return out


def _progress(progress: Callable[[str], None], name: str, rows: int) -> None:
    progress(f"exporting {name}: {rows} rows")


@contextlib.contextmanager
def _cursor(conn: Any) -> Iterator[Any]:
    """A psycopg2 cursor on the SQLAlchemy connection's own DBAPI connection (its open transaction); driver errors
    come out wrapped as SQLAlchemy's (``DBAPIError``), as from ``conn.execute``, for ``db``'s error translation."""
    import sqlalchemy as sa

    dbapi = conn.dialect.loaded_dbapi
    cur = conn.connection.dbapi_connection.cursor()
    try:
        yield cur
    except dbapi.Error as exc:
        statement = cur.query.decode(errors="replace") if isinstance(cur.query, bytes) else None
        raise sa.exc.DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cur.close()


def _render(conn: Any, cur: Any, sql: str, binds: dict[str, Any]) -> bytes:
    """The export SQL with its bind values in place, as the server will read it: the dialect's compiler turns the
    ``text()`` ``:name`` binds into psycopg2's ``%(name)s`` (escaping literal ``%``), psycopg2 quotes the values
    (lists become ARRAY[…]); values are never formatted into the string here."""
    import sqlalchemy as sa

    compiled = sa.text(sql).compile(dialect=conn.dialect)
    params = compiled.construct_params(binds)
    statement = str(compiled).strip().rstrip(";")
    rendered: bytes = cur.mogrify(statement, params)  # also with no binds: it undoes the compiler's %% escapes
    return rendered


def _columns(cur: Any, query: bytes) -> list[tuple[str, Any]]:
    """(name, Arrow type) of each result column: the description of the same query with ``limit 0`` (planned,
    not run)."""
    cur.execute(b"select * from (\n" + query + b"\n) as export_query limit 0")
    return [(n, arrow_type(c.type_code, c.precision, c.scale))
            for n, c in zip(_unique([c.name for c in cur.description]), cur.description, strict=True)]


def _unique(names: list[str]) -> list[str]:
    """Result column names made unique for Parquet readers (pyarrow's ``read_table``, pandas refuse duplicates): a
    repeated name gets ``_2``, ``_3``… in column order."""
    taken, out = set(names), []
    seen: set[str] = set()
    for n in names:
        new, i = n, 1
        while new in seen or (new != n and new in taken):
            i += 1
            new = f"{n}_{i}"
        seen.add(new)
        out.append(new)
    return out


@contextlib.contextmanager
def _copy_settings(cur: Any) -> Iterator[None]:
    """The date/time settings the CSV text depends on, fixed (``set_config(…, true)``: this transaction only) for
    the exports and restored after them, so the transaction's later statements see the session as it was."""
    names = [n for n, _ in _COPY_SETTINGS]
    # the materialized CTE reads the old values before the outer select list sets the new ones
    cur.execute("with old as materialized (select " + ", ".join(f"current_setting(%s) as s{i}" for i in range(len(names)))
                + ") select old.*, " + ", ".join("set_config(%s, %s, true)" for _ in names) + " from old",
                [*names, *(v for s in _COPY_SETTINGS for v in s)])
    before = cur.fetchone()[: len(names)]
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # after an error the transaction is aborted; its end resets them
            cur.execute("select " + ", ".join("set_config(%s, %s, true)" for _ in names),
                        [v for pair in zip(names, before, strict=True) for v in pair])


def _write_parquet(path: Path, f: IO[bytes], columns: list[tuple[str, Any]], row_group_rows: int,
                   block_size: int, progress: Callable[[int], None]) -> int:
    """The CSV in ``f`` -> zstd Parquet at ``path`` (created here, exclusively), ``row_group_rows`` rows per row
    group; returns the row count. A file left half-written by an error is removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field(n, t) for n, t in columns])
    rows = 0
    try:
        with path.open("xb") as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            for table in _row_groups(f, schema, row_group_rows, block_size):
                writer.write_table(table, row_group_size=row_group_rows)
                rows += table.num_rows
                progress(rows)
    except FileExistsError:
        raise EvidenceError(f"{path} exists already; evidence files are never overwritten") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return rows


def _row_groups(f: IO[bytes], schema: Any, row_group_rows: int, block_size: int) -> Iterator[Any]:
    """Tables of ``row_group_rows`` rows (the last one shorter) read from PostgreSQL's CSV in ``f``: NULL is an
    empty unquoted field, '' a quoted one; t/f are booleans; values may hold newlines, quotes and commas."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if f.seek(0, 2) == 0:
        return  # no rows: pyarrow refuses an empty CSV
    f.seek(0)
    positional = [f"c{i}" for i in range(len(schema))]  # the CSV has no header; names may look like anything
    reader = pcsv.open_csv(
        f, read_options=pcsv.ReadOptions(column_names=positional, block_size=block_size),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types=dict(zip(positional, schema.types, strict=True)), null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"]))
    pending: list[Any] = []
    waiting = 0
    for batch in reader:
        pending.append(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
        waiting += batch.num_rows
        if waiting >= row_group_rows:
            table = pa.Table.from_batches(pending, schema=schema)
            full = waiting - waiting % row_group_rows
            yield table.slice(0, full)
            rest = table.slice(full)
            pending, waiting = rest.to_batches(), rest.num_rows
    if waiting:
        yield pa.Table.from_batches(pending, schema=schema)
