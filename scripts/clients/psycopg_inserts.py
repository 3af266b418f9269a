"""Prepared INSERTs as applications send them (psycopg 3, server-side prepared statements):
parameters, literals, DEFAULT, expressions over parameters, ON CONFLICT DO NOTHING, and the
errors constraints and bad values raise. Prints what the application sees; run against Eddy
and PostgreSQL, the output must be the same (Eddy takes its planner-free path for these)."""
import sys

import psycopg

conn = psycopg.connect(sys.argv[1], autocommit=True)


def run(sql, params=None, fetch=False):
    try:
        cur = conn.execute(sql, params, prepare=True)
        out = cur.statusmessage
        if fetch:
            out = (out, cur.fetchall())
        print("ok ", sql, params, out)
    except psycopg.Error as e:
        print("err", sql, params, e.sqlstate, e.diag.constraint_name, str(e).splitlines()[0])


for table in ["child", "parent", "items", "metrics"]:
    run(f"DROP TABLE IF EXISTS {table}")
run(
    "CREATE TABLE items (id serial PRIMARY KEY, name varchar(5) NOT NULL UNIQUE, "
    "score int DEFAULT 7, f float8, b bool, t timestamp, j jsonb, u uuid, by bytea, "
    "n numeric(6,2))"
)
for params in [("a", 1, 1.5, True), ("b", None, 2, False), ("c", 3, None, None)]:
    run("INSERT INTO items (name, score, f, b) VALUES (%s, %s, %s, %s)", params)
run("INSERT INTO items (name, score) VALUES (%s, %s)", ("toolong", 1))
run("INSERT INTO items (name, score) VALUES (%s, %s)", (None, 1))
run("INSERT INTO items (name, score) VALUES (%s, %s)", ("a", 1))
run("INSERT INTO items (name, score) VALUES (%s, %s) ON CONFLICT DO NOTHING", ("a", 1))
run("INSERT INTO items (name, score) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", ("a", 1))
run("INSERT INTO items (name, score) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", ("d", 2))
run("INSERT INTO items (name, score) VALUES (%s, %s)", ("e", 2**40))
run(
    "INSERT INTO items (name, j, u, by, n, t) VALUES (%s, %s, %s, %s, %s, %s)",
    ("f", '{"b":1, "a":2}', "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", b"\x00\xff", 3.14159,
     "2024-01-02 03:04:05"),
)
run("INSERT INTO items (name, score, f) VALUES ('h', 5, -2.5), ('i', DEFAULT, 3)")
run("INSERT INTO items VALUES (100, 'm')")
run("INSERT INTO items (name, score) VALUES ('n', '12')")
run("INSERT INTO items (id, name) VALUES (DEFAULT, 'p'), (DEFAULT, 'q')")
run("INSERT INTO items (name) VALUES (%s), (%s)", ("r", "r"))
run("SELECT name, score, f, b, t, j, u, by, n FROM items ORDER BY name", fetch=True)

run("CREATE TABLE parent (k int PRIMARY KEY)")
run("CREATE TABLE child (id int PRIMARY KEY, k int REFERENCES parent (k), CHECK (id > 0))")
run("INSERT INTO child VALUES (%s, %s)", (1, 5))
run("INSERT INTO parent VALUES (%s)", (5,))
run("INSERT INTO child VALUES (%s, %s)", (1, 5))
run("INSERT INTO child VALUES (%s, %s)", (-1, 5))
run("SELECT * FROM child", fetch=True)

run("CREATE TABLE metrics (id int PRIMARY KEY, r float8, t timestamptz, s text)")
run("INSERT INTO metrics VALUES (%s, %s * 0.5, now(), upper(%s))", (1, 3, "abc"))
run("INSERT INTO metrics VALUES (%s, 1 / %s, now(), %s || 'x')", (2, 0, "abc"))
run("INSERT INTO metrics VALUES (%s, %s + 1, now() - interval '1 day', %s || 'x')", (3, 2, "a"))
run("INSERT INTO metrics (id, r) VALUES (%s, (SELECT max(r) FROM metrics))", (4,))
# The same prepared statement many times, as a service does.
for i in range(10, 60):
    run("INSERT INTO metrics (id, r, s) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (i % 40 + 10, i * 0.25, f"s{i}"))
run(
    "SELECT id, r, t > now() - interval '2 days', s FROM metrics WHERE id < 12 OR id > 47 "
    "ORDER BY id",
    fetch=True,
)
run("SELECT count(*), sum(r) FROM metrics", fetch=True)
