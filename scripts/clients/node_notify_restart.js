// A node-postgres service that receives a stream's alerts through LISTEN from a sink with
// connector = 'notify', across a SIGKILL and restart of the server: phase `setup` creates
// the source and sink and receives the first alerts; phase `again` (a new connection after
// the restart) LISTENs anew and receives the alerts of new readings, and none of the
// alerts delivered before the crash a second time. Prints what it receives.
//
// Usage: node node_notify_restart.js '<postgresql:// URL>' setup|again
const { Client } = require('pg');

const [url, phase] = process.argv.slice(2);

async function main() {
  const service = new Client({ connectionString: url });
  await service.connect();
  const got = [];
  service.on('notification', (n) => got.push(JSON.parse(n.payload)));
  await service.query('LISTEN alerts');
  const writer = new Client({ connectionString: url });
  await writer.connect();
  let expected;
  if (phase === 'setup') {
    await writer.query('CREATE SOURCE readings (device int, temp double precision)');
    await writer.query(
      "CREATE SINK hot FROM (SELECT device, temp FROM readings WHERE temp > 90) "
        + "WITH (connector = 'notify', channel = 'alerts', checkpoint_interval = '100ms')",
    );
    await writer.query('INSERT INTO readings VALUES (1, 50), (2, 95.5), (3, 99)');
    expected = 2;
  } else {
    await writer.query('INSERT INTO readings VALUES ($1, $2), ($3, $4), ($5, $6)', [
      4, 91, 5, 10, 6, 93.25,
    ]);
    expected = 2;
  }
  // Wait for the expected alerts, then a while longer for any that should not come.
  const deadline = Date.now() + 20000;
  while (got.length < expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const settle = Date.now() + 1000;
  while (Date.now() < settle) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  got.sort((a, b) => a.device - b.device);
  console.log(JSON.stringify([phase, got]));
  await service.end();
  await writer.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
