"""psycopg 3's copy API in text and binary, both directions, as a bulk-loading service uses it:
write_row into a table (all or nothing, in and out of a transaction), binary rows of every
common type with NULLs, rows() out of a table and a query, and the errors bad data raises.
Prints what the application sees; run against Eddy and PostgreSQL, the output must be the
same."""
import datetime
import decimal
import sys
import uuid

import psycopg
from psycopg.types.json import Jsonb

conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("SET TimeZone = 'UTC'")
conn.execute("DROP TABLE IF EXISTS readings")
conn.execute("DROP TABLE IF EXISTS kinds")
conn.execute(
    "CREATE TABLE readings (id int PRIMARY KEY, device text NOT NULL, temp float8, "
    "note text DEFAULT 'none')"
)
conn.execute(
    "CREATE TABLE kinds (id int PRIMARY KEY, big bigint, small smallint, name text, "
    "flag bool, price numeric(10,2), at timestamp, at_tz timestamptz, day date, "
    "raw bytea, doc jsonb, uid uuid, ratio float4)"
)
TYPES = [
    "int4", "int8", "int2", "text", "bool", "numeric", "timestamp", "timestamptz",
    "date", "bytea", "jsonb", "uuid", "float4",
]
KIND_ROWS = [
    (
        1, 2**40, -7, "plain", True, decimal.Decimal("12.50"),
        datetime.datetime(2024, 1, 1, 10, 0, 0, 123456),
        datetime.datetime(2024, 1, 1, 10, 0, tzinfo=datetime.timezone.utc),
        datetime.date(2024, 2, 29), b"\x00\xffabc", Jsonb({"a": [1, 2]}),
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), 0.5,
    ),
    (2,) + (None,) * 12,
    (
        3, -1, 32767, "tab\there\nnew line \\ back, \"q\"", False, decimal.Decimal("-0.01"),
        datetime.datetime(1999, 12, 31, 23, 59, 59), datetime.datetime(
            2030, 6, 15, 8, 30, tzinfo=datetime.timezone.utc),
        datetime.date(1970, 1, 1), b"", Jsonb([]), uuid.UUID(int=0), -1.25,
    ),
]


def show(what, fn):
    try:
        print("ok ", what, fn())
    except psycopg.Error as e:
        print("err", what, e.sqlstate, type(e).__name__)


def text_rows():
    with conn.cursor() as cur:
        with cur.copy("COPY readings (id, device, temp) FROM STDIN") as copy:
            for i in range(1, 2001):
                copy.write_row((i, f"dev-{i % 7}", i / 4 if i % 5 else None))
        return cur.rowcount


def table_summary():
    return conn.execute(
        "SELECT count(*), count(temp), sum(temp), min(note), max(device) FROM readings"
    ).fetchone()


def failing_copy():
    with conn.cursor() as cur:
        with cur.copy("COPY readings (id, device) FROM STDIN") as copy:
            copy.write_row((5001, "ok"))
            copy.write_row((1, "duplicate key"))


def copy_in_transaction(commit):
    with conn.transaction() as tx:
        with conn.cursor() as cur:
            with cur.copy("COPY readings (id, device) FROM STDIN (FORMAT csv)") as copy:
                copy.write(b"6001,in-tx\n6002,\"quoted, device\"\n")
        seen = conn.execute("SELECT count(*) FROM readings WHERE id > 6000").fetchone()
        if not commit:
            raise psycopg.Rollback(tx)
    return seen


def binary_in():
    with conn.cursor() as cur:
        with cur.copy("COPY kinds FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(TYPES)
            for row in KIND_ROWS:
                copy.write_row(row)
        return cur.rowcount


def binary_out(sql):
    with conn.cursor() as cur:
        with cur.copy(sql) as copy:
            copy.set_types(TYPES)
            return [row for row in copy.rows()]


def text_out(sql):
    with conn.cursor() as cur:
        with cur.copy(sql) as copy:
            return [row for row in copy.rows()]


def raw_out(sql):
    with conn.cursor() as cur:
        with cur.copy(sql) as copy:
            return b"".join(bytes(chunk) for chunk in copy), cur.rowcount


def binary_garbage():
    with conn.cursor() as cur:
        with cur.copy("COPY kinds (id) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(b"not a binary copy header at all")


def binary_wrong_width():
    with conn.cursor() as cur:
        with cur.copy("COPY kinds (id) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8"])
            copy.write_row((99,))


show("text write_row", text_rows)
show("after text copy", table_summary)
show("failing copy", failing_copy)
show("after the failed copy", table_summary)
show("copy in a committed transaction", lambda: copy_in_transaction(True))
show("copy in a rolled back transaction", lambda: copy_in_transaction(False))
show("after the transactions", table_summary)
show("binary write_row", binary_in)
show("binary rows out", lambda: binary_out("COPY kinds TO STDOUT (FORMAT BINARY)"))
show("text rows out", lambda: text_out("COPY (SELECT id, device, temp FROM readings WHERE id % 500 = 0 ORDER BY id) TO STDOUT"))
show("csv bytes out", lambda: raw_out("COPY (SELECT id, name, price, doc FROM kinds ORDER BY id) TO STDOUT (FORMAT csv, HEADER)"))
show("binary bytes of no rows", lambda: raw_out("COPY (SELECT id FROM kinds WHERE id < 0) TO STDOUT (FORMAT binary)"))
show("binary garbage", binary_garbage)
show("binary int8 into int4", binary_wrong_width)
show("still", lambda: conn.execute("SELECT count(*) FROM kinds").fetchone())
