// A knex service, run against Eddy and against PostgreSQL: its output must be the same on
// both. Migrations (createTable with increments, unique, foreign key, timestamps; then
// alterTable), migrate.latest twice, the query builder (insert ... returning, first(),
// where, join, count, update, delete), rollback.
//
// Usage: node knex_app.js 'postgresql://user:password@host:port/db?sslmode=no-verify'
const fs = require('fs');
const os = require('os');
const path = require('path');
const knex = require('knex');

const url = process.argv[2];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'knex-'));
fs.writeFileSync(path.join(dir, '20240101000000_create.js'), `
exports.up = (knex) => knex.schema
  .createTable('customers', (t) => {
    t.increments('id');
    t.string('email', 120).notNullable().unique();
    t.string('name').defaultTo('anon');
    t.timestamps(true, true);
  })
  .createTable('orders', (t) => {
    t.increments('id');
    t.integer('customer_id').unsigned().references('id').inTable('customers').onDelete('CASCADE');
    t.decimal('total', 10, 2).notNullable().defaultTo(0);
    t.boolean('paid').notNullable().defaultTo(false);
  });
exports.down = (knex) => knex.schema.dropTable('orders').dropTable('customers');
`);
fs.writeFileSync(path.join(dir, '20240102000000_alter.js'), `
exports.up = (knex) => knex.schema.alterTable('customers', (t) => {
  t.string('phone', 30);
  t.index(['name'], 'customers_name_idx');
});
exports.down = (knex) => knex.schema.alterTable('customers', (t) => {
  t.dropIndex(['name'], 'customers_name_idx');
  t.dropColumn('phone');
});
`);

const db = knex({ client: 'pg', connection: url, migrations: { directory: dir } });
const out = (...items) => console.log(items.map((i) => JSON.stringify(i)).join(' '));

async function main() {
  await db.schema.dropTableIfExists('orders');
  await db.schema.dropTableIfExists('customers');
  await db.schema.dropTableIfExists('knex_migrations');
  await db.schema.dropTableIfExists('knex_migrations_lock');
  out('latest', await db.migrate.latest());
  out('latest again', await db.migrate.latest());
  out('one', await db.raw('select 1 as one').then((r) => r.rows));
  const [ada] = await db('customers').insert({ email: 'ada@example.com' }).returning(['id', 'name']);
  out('inserted', ada);
  const ids = await db('customers')
    .insert([{ email: 'bob@example.com', name: 'Bob' }, { email: 'cy@example.com', phone: '555' }])
    .returning('id');
  out('inserted many', ids);
  await db('orders').insert([
    { customer_id: ada.id, total: '12.50' },
    { customer_id: ada.id, total: '7.25', paid: true },
    { customer_id: ids[0].id, total: '1.00' },
  ]);
  out('first', await db('customers').where({ email: 'bob@example.com' }).first('id', 'name', 'phone'));
  out('first none', await db('customers').where('email', 'nobody@example.com').first());
  out('join', await db('orders')
    .join('customers', 'orders.customer_id', 'customers.id')
    .select('customers.email', 'orders.total', 'orders.paid')
    .orderBy(['customers.email', 'orders.total']));
  out('count', await db('orders').count('* as n').first());
  out('sum', await db('orders').where('paid', false).sum('total as total').first());
  out('updated', await db('customers').where('id', ids[1].id).update({ name: 'Cy' }, ['id', 'name']));
  out('limit', await db('customers').select('email').orderBy('id').limit(2).offset(1));
  try {
    await db('customers').insert({ email: 'ada@example.com' });
  } catch (e) {
    out('duplicate', e.code, e.constraint);
  }
  try {
    await db('orders').insert({ customer_id: 999 });
  } catch (e) {
    out('orphan', e.code, e.constraint);
  }
  await db.transaction(async (trx) => {
    await trx('customers').where('id', ada.id).del();
  });
  out('orders left', await db('orders').select('total').orderBy('total'));
  out('rollback', await db.migrate.rollback());
  out('columns', Object.keys(await db('customers').columnInfo()).sort());
  out('rollback all', await db.migrate.rollback(undefined, true));
  out('tables', (await db.raw(
    "select table_name from information_schema.tables where table_schema = 'public' order by 1"
  )).rows.map((r) => r.table_name));
}

main()
  .then(() => db.destroy())
  .catch(async (e) => {
    console.error(e);
    await db.destroy();
    process.exit(1);
  })
  .finally(() => fs.rmSync(dir, { recursive: true, force: true }));
