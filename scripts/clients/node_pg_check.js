// node-postgres (pg) against a running Eddy: untyped parameters (pg sends every parameter
// as text with type OID 0, so the server infers the types), every type back as text, NULLs,
// errors with SQLSTATE, transactions. Usage: node node_pg_check.js CONNECTION_STRING
const assert = require("assert");
const { Client } = require("pg");

async function main() {
  const client = new Client({ connectionString: process.argv[2] });
  await client.connect();
  await client.query("DROP TABLE IF EXISTS node_types");
  await client.query(`CREATE TABLE node_types (id int PRIMARY KEY, b boolean, i2 smallint,
      i4 integer, i8 bigint, f4 real, f8 double precision, num numeric(10,3), t text,
      vc varchar(20), ba bytea, d date, ts timestamp, tsz timestamptz, iv interval, u uuid,
      j jsonb)`);
  const values = [1, true, -12, 123456, "9000000000", 1.5, 2.718281828459045, "12345.678",
    "héllo, wörld", "short", Buffer.from([0, 1, 254, 255]), "2024-02-29",
    "2024-05-01 12:30:15.25", new Date(Date.UTC(2024, 4, 1, 12, 30, 15, 250)),
    "3 days 04:05:06", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", { a: [1, 2, { b: null }], c: "x" }];
  const marks = values.map((_, i) => `$${i + 1}`).join(", ");
  await client.query(`INSERT INTO node_types VALUES (${marks})`, values);
  await client.query(`INSERT INTO node_types VALUES (${marks})`,
    [2, ...new Array(values.length - 1).fill(null)]);
  const row = (await client.query("SELECT * FROM node_types WHERE id = $1", [1])).rows[0];
  assert.strictEqual(row.b, true);
  assert.strictEqual(row.i2, -12);
  assert.strictEqual(row.i4, 123456);
  assert.strictEqual(row.i8, "9000000000");
  assert.strictEqual(row.f4, 1.5);
  assert.strictEqual(row.f8, 2.718281828459045);
  assert.strictEqual(row.num, "12345.678");
  assert.strictEqual(row.t, "héllo, wörld");
  assert.strictEqual(row.vc, "short");
  assert.deepStrictEqual([...row.ba], [0, 1, 254, 255]);
  assert.strictEqual(row.tsz.toISOString(), "2024-05-01T12:30:15.250Z");
  assert.deepStrictEqual({ ...row.iv }, { days: 3, hours: 4, minutes: 5, seconds: 6 });
  assert.strictEqual(row.u, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  assert.deepStrictEqual(row.j, { a: [1, 2, { b: null }], c: "x" });
  const text = (await client.query(
    "SELECT d::text AS d, ts::text AS ts FROM node_types WHERE id = 1")).rows[0];
  assert.deepStrictEqual(text, { d: "2024-02-29", ts: "2024-05-01 12:30:15.25" });
  const nulls = (await client.query("SELECT * FROM node_types WHERE id = $1", [2])).rows[0];
  assert.ok(Object.entries(nulls).every(([k, v]) => k === "id" || v === null), nulls);

  // Untyped parameters in expressions and comparisons.
  const r = await client.query(
    "SELECT i4 + $1 AS n, t || $2 AS s, tsz > $3 AS later FROM node_types WHERE vc = $4",
    [1, "!", "2024-01-01T00:00:00Z", "short"]);
  assert.deepStrictEqual(r.rows, [{ n: 123457, s: "héllo, wörld!", later: true }]);
  assert.deepStrictEqual((await client.query("SELECT ARRAY[1, 2, 3]::int[] AS a")).rows[0].a, [1, 2, 3]);

  // Errors carry their SQLSTATE; a failed transaction refuses statements until ROLLBACK.
  await assert.rejects(client.query("INSERT INTO node_types (id) VALUES (1)"), { code: "23505" });
  await client.query("BEGIN");
  await assert.rejects(client.query("SELECT * FROM no_such_table"), { code: "42P01" });
  await assert.rejects(client.query("SELECT 1"), { code: "25P02" });
  await client.query("ROLLBACK");
  await client.query("BEGIN");
  await client.query("INSERT INTO node_types (id, t) VALUES (3, 'gone')");
  await client.query("ROLLBACK");
  assert.strictEqual((await client.query("SELECT count(*) AS n FROM node_types WHERE id = 3")).rows[0].n, "0");
  await client.query("DROP TABLE node_types");
  await client.end();
  console.log("node-postgres ok");
}

main().catch((e) => { console.error(e); process.exit(1); });
