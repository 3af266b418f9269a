"""psycopg 3 or psycopg2 against a running Eddy: every supported type as a parameter and as
a result (text, and binary for psycopg 3), NULLs, errors with SQLSTATE, transactions, and
the catalog queries the drivers make.

Usage: dbapi_check.py psycopg|psycopg2 CONNINFO. Exits non-zero (with a traceback) on any
mismatch.
"""
import datetime
import decimal
import json
import sys
import uuid

driver, conninfo = sys.argv[1], sys.argv[2]

TS = datetime.datetime(2024, 5, 1, 12, 30, 15, 250000)
TSZ = TS.replace(tzinfo=datetime.timezone.utc)
ROW = {
    "b": True,
    "i2": -12,
    "i4": 123456,
    "i8": 9_000_000_000,
    "f4": 1.5,
    "f8": 2.718281828459045,
    "num": decimal.Decimal("12345.678"),
    "t": "héllo, wörld",
    "vc": "short",
    "ba": b"\x00\x01\xfe\xff",
    "d": datetime.date(2024, 2, 29),
    "ts": TS,
    "tsz": TSZ,
    "iv": datetime.timedelta(days=3, hours=4, minutes=5, seconds=6),
    "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "j": {"a": [1, 2, {"b": None}], "c": "x"},
}
COLUMNS = list(ROW)
DDL = """CREATE TABLE drv_types (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer,
    i8 bigint, f4 real, f8 double precision, num numeric(10,3), t text, vc varchar(20),
    ba bytea, d date, ts timestamp, tsz timestamptz, iv interval, u uuid, j jsonb)"""


def normalise(name, value):
    """What each driver hands back, as the values above."""
    if value is None:
        return None
    if name == "ba":
        return bytes(value)
    if name == "u":
        return uuid.UUID(str(value))
    if name == "j" and isinstance(value, str):
        return json.loads(value)
    return value


def check_row(got, binary=False):
    got = [normalise(n, v) for n, v in zip(COLUMNS, got)]
    want = [ROW[n] for n in COLUMNS]
    assert got == want, f"{'binary' if binary else 'text'}: {list(zip(COLUMNS, got, want))}"


if driver == "psycopg":
    import psycopg as db
    from psycopg import errors

    conn = db.connect(conninfo)
    state = lambda e: e.sqlstate
    placeholders = ", ".join(["%s"] * (len(COLUMNS) + 1))
    wrap = lambda v: db.types.json.Jsonb(v) if isinstance(v, dict) else v
else:
    import psycopg2 as db
    import psycopg2.extras
    from psycopg2 import errors

    psycopg2.extras.register_uuid()
    conn = db.connect(conninfo)
    state = lambda e: e.pgcode
    placeholders = ", ".join(["%s"] * (len(COLUMNS) + 1))
    wrap = lambda v: psycopg2.extras.Json(v) if isinstance(v, dict) else v

cur = conn.cursor()
cur.execute("DROP TABLE IF EXISTS drv_types")
cur.execute(DDL)
conn.commit()
cur.execute(
    f"INSERT INTO drv_types (id, {', '.join(COLUMNS)}) VALUES ({placeholders})",
    [1] + [wrap(ROW[c]) for c in COLUMNS],
)
cur.execute(
    f"INSERT INTO drv_types (id, {', '.join(COLUMNS)}) VALUES ({placeholders})",
    [2] + [None] * len(COLUMNS),
)
conn.commit()
cur.execute(f"SELECT {', '.join(COLUMNS)} FROM drv_types WHERE id = %s", (1,))
check_row(cur.fetchone())
cur.execute(f"SELECT {', '.join(COLUMNS)} FROM drv_types WHERE id = %s", (2,))
assert cur.fetchone() == tuple([None] * len(COLUMNS))
if driver == "psycopg":
    bcur = conn.cursor(binary=True)
    bcur.execute(f"SELECT {', '.join(COLUMNS)} FROM drv_types WHERE id = %s", (1,))
    check_row(bcur.fetchone(), binary=True)
    bcur.execute(f"SELECT {', '.join(COLUMNS)} FROM drv_types WHERE id = %s", (2,))
    assert bcur.fetchone() == tuple([None] * len(COLUMNS))
# Parameters in expressions and comparisons, arrays as results.
cur.execute("SELECT i4 + %s, t || %s, tsz > %s FROM drv_types WHERE id = %s", (1, "!", TSZ, 1))
assert cur.fetchone() == (123457, "héllo, wörld!", False)
cur.execute("SELECT ARRAY[1, 2, 3], ARRAY['a', NULL]")
assert cur.fetchone() == ([1, 2, 3], ["a", None])
conn.commit()

# Errors carry their SQLSTATE; the transaction is failed until ROLLBACK.
try:
    cur.execute("INSERT INTO drv_types (id) VALUES (1)")
    raise AssertionError("duplicate key accepted")
except errors.UniqueViolation as e:
    assert state(e) == "23505"
try:
    cur.execute("SELECT 1")
    raise AssertionError("statement accepted in a failed transaction")
except errors.InFailedSqlTransaction as e:
    assert state(e) == "25P02"
conn.rollback()
try:
    cur.execute("SELECT 1 / 0")
    raise AssertionError("division by zero accepted")
except errors.DivisionByZero as e:
    assert state(e) == "22012"
conn.rollback()

# Transactions: rollback discards, commit keeps.
cur.execute("INSERT INTO drv_types (id, t) VALUES (3, 'gone')")
conn.rollback()
cur.execute("SELECT count(*) FROM drv_types WHERE id = 3")
assert cur.fetchone() == (0,)
cur.execute("INSERT INTO drv_types (id, t) VALUES (3, 'kept')")
conn.commit()
cur.execute("SELECT t FROM drv_types WHERE id = 3")
assert cur.fetchone() == ("kept",)

# What the drivers and their users look up in the catalog.
cur.execute("SELECT typname FROM pg_type WHERE oid = %s", (3802,))
assert cur.fetchone() == ("jsonb",)
cur.execute(
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_name = %s ORDER BY ordinal_position",
    ("drv_types",),
)
cols = cur.fetchall()
assert cols[1] == ("b", "boolean") and cols[-1] == ("j", "jsonb"), cols
cur.execute("SELECT current_database(), current_schema(), version() LIKE 'PostgreSQL 16%%'")
assert cur.fetchone()[1:] == ("public", True)
conn.commit()
cur.execute("DROP TABLE drv_types")
conn.commit()
conn.close()
print(f"{driver} ok")
