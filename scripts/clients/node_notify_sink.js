// A node-postgres service that receives a stream's alerts through LISTEN: a sink with
// connector = 'notify' sends each row as JSON on a channel once its checkpoint commits.
//
// Usage: node node_notify_sink.js '<postgresql:// URL of Eddy>'
const { Client } = require('pg');

const url = process.argv[2];

async function main() {
  const service = new Client({ connectionString: url });
  await service.connect();
  const got = [];
  service.on('notification', (n) => got.push([n.channel, JSON.parse(n.payload)]));
  await service.query('LISTEN alerts');
  const admin = new Client({ connectionString: url });
  await admin.connect();
  await admin.query('CREATE SOURCE readings (device int, temp double precision)');
  await admin.query(
    "CREATE SINK hot FROM (SELECT device, temp FROM readings WHERE temp > 90) " +
      "WITH (connector = 'notify', channel = 'alerts', checkpoint_interval = '100ms')"
  );
  await admin.query('INSERT INTO readings VALUES (1, 50), (2, 95.5), (3, 99)');
  await admin.query('INSERT INTO readings VALUES (4, 91)');
  const deadline = Date.now() + 20000;
  while (got.length < 3 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  got.sort((a, b) => a[1].device - b[1].device);
  for (const g of got) console.log(JSON.stringify(g));
  const sinks = await admin.query("SELECT name, connector, target FROM eddy_catalog.sinks");
  console.log(JSON.stringify(sinks.rows));
  await service.end();
  await admin.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
