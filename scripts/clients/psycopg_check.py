"""psycopg 3 against a running Eddy: parameters, types, NULLs, transactions, errors.

Usage: psycopg_check.py CONNINFO. Exits non-zero (with a traceback) on any mismatch.
"""
import datetime
import decimal
import sys
import uuid

import psycopg
from psycopg import errors

conninfo = sys.argv[1]

with psycopg.connect(conninfo, autocommit=True) as conn:
    conn.execute("DROP TABLE IF EXISTS py_items")
    conn.execute(
        "CREATE TABLE py_items (id bigint PRIMARY KEY, name text NOT NULL, price numeric(8,2),"
        " seen timestamptz, tag uuid, ok boolean)"
    )
    ts = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    tag = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO py_items VALUES (%s, %s, %s, %s, %s, %s)",
            [(1, "alpha", decimal.Decimal("9.99"), ts, tag, True), (2, "beta", None, None, None, None)],
        )
        cur.execute("SELECT id, name, price, seen, tag, ok FROM py_items WHERE id = %s", (1,))
        row = cur.fetchone()
        assert row == (1, "alpha", decimal.Decimal("9.99"), ts, tag, True), row
        cur.execute("SELECT name, price FROM py_items WHERE id = %(id)s", {"id": 2})
        assert cur.fetchone() == ("beta", None)
        # Binary results, as asyncpg-style clients use them.
        cur.execute("SELECT id, name FROM py_items ORDER BY id", binary=True)
        assert cur.fetchall() == [(1, "alpha"), (2, "beta")]
        # A string parameter compared with a text column (psycopg sends strings untyped).
        cur.execute("SELECT count(*) FROM py_items WHERE name = %s", ("beta",))
        assert cur.fetchone() == (1,)

    try:
        conn.execute("INSERT INTO py_items (id, name) VALUES (%s, %s)", (1, "dup"))
        raise AssertionError("duplicate key accepted")
    except errors.UniqueViolation as e:
        assert e.sqlstate == "23505", e.sqlstate

    try:
        conn.execute("SELECT * FROM no_such_table")
        raise AssertionError("missing table accepted")
    except errors.UndefinedTable:
        pass

# psycopg's default: every statement inside a transaction until commit/rollback. The
# transaction status comes from ReadyForQuery: idle, in transaction, failed.
TS = psycopg.pq.TransactionStatus
with psycopg.connect(conninfo) as conn:
    assert conn.info.transaction_status == TS.IDLE
    conn.execute("INSERT INTO py_items (id, name) VALUES (%s, %s)", (3, "gamma"))
    assert conn.info.transaction_status == TS.INTRANS
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM py_items WHERE id = 3").fetchone() == (0,)
    conn.execute("INSERT INTO py_items (id, name) VALUES (%s, %s)", (3, "gamma"))
    conn.commit()
    assert conn.execute("SELECT name FROM py_items WHERE id = %s", (3,)).fetchone() == ("gamma",)
    try:
        conn.execute("INSERT INTO py_items (id, name) VALUES (3, 'dup')")
    except errors.UniqueViolation:
        pass
    assert conn.info.transaction_status == TS.INERROR
    try:
        conn.execute("SELECT 1")
        raise AssertionError("statement accepted in failed transaction")
    except errors.InFailedSqlTransaction:
        pass
    conn.rollback()
    assert conn.info.transaction_status == TS.IDLE
    conn.execute("DROP TABLE py_items")
    conn.commit()

print("psycopg ok")
