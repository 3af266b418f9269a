// A node-postgres service that receives alerts through LISTEN, run against Eddy and against
// PostgreSQL: what it prints must be the same on both.
//
// One client LISTENs on two channels; another sends NOTIFY and pg_notify in autocommit, in a
// committed transaction (delivered once per distinct payload, at commit), in a rolled-back
// transaction (never delivered), and after UNLISTEN (not delivered).
//
// Usage: node node_listen.js '<postgresql:// URL>'
const { Client } = require('pg');

const url = process.argv[2];
const out = (...items) => console.log(items.map((i) => JSON.stringify(i)).join(' '));

async function main() {
  const listener = new Client({ connectionString: url });
  const sender = new Client({ connectionString: url });
  await listener.connect();
  await sender.connect();
  const received = [];
  let waiting = null;
  listener.on('notification', (n) => {
    received.push([n.channel, n.payload, n.processId === sender.processID]);
    if (waiting && received.length >= waiting.count) waiting.resolve();
  });
  const until = (count) => new Promise((resolve, reject) => {
    if (received.length >= count) return resolve();
    waiting = { count, resolve };
    setTimeout(() => reject(new Error(`only ${received.length} of ${count} notifications`)), 10000);
  });
  await listener.query('LISTEN alerts');
  await listener.query('LISTEN "Other Channel"');
  await sender.query("NOTIFY alerts, 'plain'");
  await sender.query("SELECT pg_notify('alerts', $1)", [JSON.stringify({ device: 7, score: 0.93 })]);
  await sender.query('BEGIN');
  await sender.query("NOTIFY alerts, 'in a transaction'");
  await sender.query("NOTIFY alerts, 'in a transaction'");
  await sender.query("NOTIFY \"Other Channel\", 'second channel'");
  await sender.query('COMMIT');
  await sender.query('BEGIN');
  await sender.query("NOTIFY alerts, 'rolled back'");
  await sender.query('ROLLBACK');
  await sender.query("NOTIFY nobody_listens, 'lost'");
  await until(4);
  await listener.query('UNLISTEN alerts');
  await sender.query("NOTIFY alerts, 'after unlisten'");
  await sender.query("NOTIFY \"Other Channel\", 'last'");
  await until(5);
  for (const r of received) out(...r);
  try {
    await sender.query("NOTIFY alerts, '" + 'x'.repeat(9000) + "'");
  } catch (e) {
    out('too long', e.code, e.message);
  }
  await listener.end();
  await sender.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
