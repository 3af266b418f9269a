// A node-postgres service that follows a materialized view with SUBSCRIBE through a cursor
// (node-postgres reads a query's rows only when it completes, so it FETCHes in a loop).
// Phase `setup` creates the view, reads its snapshot and a change; phase `again` (after the
// server restarted) follows the view anew. Prints what it sees.
//
// Usage: node node_subscribe.js '<postgresql:// URL>' setup|again
const { Client } = require('pg');

const [url, phase] = process.argv.slice(2);
const out = (...items) => console.log(items.map((i) => JSON.stringify(i)).join(' '));
const changes = (rows) => rows
  .filter((r) => r.eddy_op !== 'progress')
  .map((r) => [r.eddy_op, r.device, Number(r.alerts)])
  .sort();

async function main() {
  const follower = new Client({ connectionString: url });
  const writer = new Client({ connectionString: url });
  await follower.connect();
  await writer.connect();
  if (phase === 'setup') {
    await writer.query('CREATE SOURCE readings (device int, temp float8)');
    await writer.query(
      'CREATE MATERIALIZED VIEW hot AS SELECT device, count(*) AS alerts FROM readings '
      + 'WHERE temp > 90 GROUP BY device',
    );
    await writer.query('INSERT INTO readings VALUES (1, 95), (2, 20), (3, 99)');
  }
  await follower.query('BEGIN');
  await follower.query('DECLARE follow CURSOR FOR SUBSCRIBE TO hot');
  const snapshot = await follower.query('FETCH ALL follow');
  out(phase, 'snapshot', changes(snapshot.rows));
  out(phase, 'columns', snapshot.fields.map((f) => f.name));
  await writer.query('INSERT INTO readings VALUES ($1, $2), ($3, $4)', [1, 97.5, 4, 91]);
  const seen = [];
  while (seen.length < 2) {
    const { rows } = await follower.query('FETCH ALL FROM follow');
    seen.push(...rows);
  }
  out(phase, 'changes', changes(seen));
  await follower.query('CLOSE follow');
  await follower.query('COMMIT');
  await follower.end();
  await writer.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
