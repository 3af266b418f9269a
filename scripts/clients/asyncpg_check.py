"""asyncpg against a running Eddy: binary format for every type in both directions (asyncpg
encodes parameters by the types the server describes), arrays (which asyncpg introspects
through pg_type first), NULLs, errors with SQLSTATE,
transactions, prepared statements, and a pool, which resets each connection it gets back
with `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`.

Usage: asyncpg_check.py DSN. Exits non-zero (with a traceback) on any mismatch.
"""
import asyncio
import datetime
import decimal
import json
import sys
import uuid

import asyncpg

dsn = sys.argv[1]

TS = datetime.datetime(2024, 5, 1, 12, 30, 15, 250000)
ROW = [
    ("b", "boolean", True),
    ("i2", "smallint", -12),
    ("i4", "integer", 123456),
    ("i8", "bigint", 9_000_000_000),
    ("f4", "real", 1.5),
    ("f8", "double precision", 2.718281828459045),
    ("num", "numeric(10,3)", decimal.Decimal("12345.678")),
    ("t", "text", "héllo, wörld"),
    ("vc", "varchar(20)", "short"),
    ("ba", "bytea", b"\x00\x01\xfe\xff"),
    ("d", "date", datetime.date(2024, 2, 29)),
    ("ts", "timestamp", TS),
    ("tsz", "timestamptz", TS.replace(tzinfo=datetime.timezone.utc)),
    ("iv", "interval", datetime.timedelta(days=3, hours=4, minutes=5, seconds=6)),
    ("u", "uuid", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("j", "jsonb", json.dumps({"a": [1, 2, {"b": None}], "c": "x"})),
]
NAMES = [n for n, _, _ in ROW]


async def main():
    conn = await asyncpg.connect(dsn, ssl=None if "sslmode=disable" in dsn else "require")
    await conn.execute("DROP TABLE IF EXISTS apg_types")
    columns = ", ".join(f"{n} {t}" for n, t, _ in ROW)
    await conn.execute(f"CREATE TABLE apg_types (id int PRIMARY KEY, {columns})")
    marks = ", ".join(f"${i + 2}" for i in range(len(ROW)))
    insert = f"INSERT INTO apg_types (id, {', '.join(NAMES)}) VALUES ($1, {marks})"
    await conn.execute(insert, 1, *[v for _, _, v in ROW])
    await conn.execute(insert, 2, *[None] * len(ROW))
    record = await conn.fetchrow(f"SELECT {', '.join(NAMES)} FROM apg_types WHERE id = $1", 1)
    got = [record[n] for n in NAMES]
    got[NAMES.index("j")] = json.loads(got[NAMES.index("j")])
    want = [v for _, _, v in ROW]
    want[NAMES.index("j")] = json.loads(want[NAMES.index("j")])
    assert got == want, list(zip(NAMES, got, want))
    nulls = await conn.fetchrow(f"SELECT {', '.join(NAMES)} FROM apg_types WHERE id = $1", 2)
    assert list(nulls.values()) == [None] * len(ROW), nulls

    # A prepared statement: its parameter and result types as the server describes them.
    stmt = await conn.prepare("SELECT i8 + $1, t || $2 FROM apg_types WHERE id = $3")
    assert [p.name for p in stmt.get_parameters()] == ["int8", "text", "int4"], stmt.get_parameters()
    assert await stmt.fetchrow(1, "!", 1) == (9_000_000_001, "héllo, wörld!")
    assert await conn.fetchval("SELECT $1::text IS NULL", None) is True

    # Arrays: asyncpg learns their types with its pg_type introspection query, then reads
    # and writes them in binary.
    assert await conn.fetchval("SELECT ARRAY[1, 2, 3]") == [1, 2, 3]
    assert await conn.fetchval("SELECT ARRAY['a', NULL]") == ["a", None]
    assert await conn.fetchval("SELECT $1::int[]", [4, None, 5]) == [4, None, 5]
    rows = await conn.fetch("SELECT typname FROM pg_type WHERE oid = any($1::oid[]) ORDER BY 1", [20, 25])
    assert [r[0] for r in rows] == ["int8", "text"], rows

    # Errors carry their SQLSTATE.
    try:
        await conn.execute("INSERT INTO apg_types (id) VALUES (1)")
        raise AssertionError("duplicate key accepted")
    except asyncpg.UniqueViolationError as e:
        assert e.sqlstate == "23505"
    try:
        await conn.fetch("SELECT * FROM no_such_table")
        raise AssertionError("missing table accepted")
    except asyncpg.UndefinedTableError as e:
        assert e.sqlstate == "42P01"

    # Transactions.
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO apg_types (id, t) VALUES (3, 'gone')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert await conn.fetchval("SELECT count(*) FROM apg_types WHERE id = 3") == 0
    async with conn.transaction():
        await conn.execute("INSERT INTO apg_types (id, t) VALUES (3, 'kept')")
    assert await conn.fetchval("SELECT t FROM apg_types WHERE id = 3") == "kept"
    await conn.close()

    # A pool resets connections it gets back; a lock taken on one is released then.
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, ssl=None if "sslmode=disable" in dsn else "require")
    async with pool.acquire() as c:
        assert await c.fetchval("SELECT pg_try_advisory_lock(42)") is True
        await c.execute("SET application_name = 'pooled'")
    async with pool.acquire() as c:
        assert await c.fetchval("SELECT current_setting('application_name')") != "pooled"
        other = await asyncpg.connect(dsn, ssl=None if "sslmode=disable" in dsn else "require")
        assert await other.fetchval("SELECT pg_try_advisory_lock(42)") is True
        await other.close()
        await c.execute("DROP TABLE apg_types")
    await pool.close()
    print("asyncpg ok")


asyncio.run(main())
