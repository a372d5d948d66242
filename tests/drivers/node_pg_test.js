// node-postgres (pg) through pgsplit: named prepared queries on replicas, a named write and a transaction on the
// primary, and a pool running 20 queries at once.
//
// Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK node_pg_test.js`.
'use strict';

const crypto = require('crypto');
const pg = require('pg');

const NAME = 'node_pg_test.js';
const URL = process.env.DATABASE_URL;
const PRIMARY = Number(process.env.PRIMARY_PORT);
const REPLICAS = process.env.REPLICA_PORTS.split(',').map(Number);
const TABLE = `drv_node_pg_${crypto.randomBytes(6).toString('hex')}`;

const READ = 'SELECT $1::int AS v, pg_is_in_recovery() AS r, inet_server_port() AS p';
const WRITE = `INSERT INTO ${TABLE} (v) VALUES ($1) RETURNING inet_server_port() AS p`;

class Failed extends Error {}

function expect(cond, what) {
  if (!cond) throw new Failed(what);
}

function checkRead(row, i, what) {
  expect(row && row.v === i && row.r === true && REPLICAS.includes(row.p),
    `${what}: read ${i} should run on a replica ${REPLICAS}; got ${JSON.stringify(row)}`);
  return row.p;
}

async function run(client) {
  // A named prepared read, 50 times: all on replicas.
  const seen = new Set();
  for (let i = 0; i < 50; i++) {
    const res = await client.query({ name: 'by-id', text: READ, values: [i] });
    seen.add(checkRead(res.rows[0], i, 'named prepared read'));
  }
  expect(seen.size === REPLICAS.length, `50 reads should reach both replicas ${REPLICAS}; saw ${[...seen]}`);

  // A named write: on the primary.
  for (let i = 0; i < 10; i++) {
    const res = await client.query({ name: 'insert-v', text: WRITE, values: [i] });
    expect(res.rows[0].p === PRIMARY, `named write ${i} should run on the primary ${PRIMARY}; got ${res.rows[0].p}`);
  }

  // A transaction: everything on the primary, the named read included.
  await client.query('BEGIN');
  const inTx = (await client.query({ name: 'by-id', text: READ, values: [1] })).rows[0];
  expect(inTx.r === false && inTx.p === PRIMARY, `read in a transaction should run on the primary; got ${JSON.stringify(inTx)}`);
  const w = (await client.query({ name: 'insert-v', text: WRITE, values: [1] })).rows[0];
  expect(w.p === PRIMARY, `write in a transaction should run on the primary; got ${w.p}`);
  await client.query('COMMIT');
  const count = (await client.query(`/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${TABLE}`)).rows[0].n;
  expect(count === 11, `10 writes and 1 committed in a transaction: count should be 11, got ${count}`);

  // A named query whose table does not exist fails; once the table exists the same name works (the failed Parse
  // left nothing behind, as on PostgreSQL).
  const later = `${TABLE}_later`;
  const byLater = { name: 'later', text: `/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${later}` };
  let missing = null;
  try {
    await client.query(byLater);
  } catch (e) {
    missing = e.code;
  }
  expect(missing === '42P01', `named query on a missing table: 42P01, got ${missing}`);
  await client.query(`CREATE TABLE ${later} (a int)`);
  try {
    const n = (await client.query(byLater)).rows[0].n;
    expect(n === 0, `the same named query after CREATE TABLE: 0 rows counted, got ${n}`);
  } finally {
    await client.query(`DROP TABLE ${later}`);
  }

  // A named Parse inside an aborted transaction fails; after ROLLBACK the same name works.
  await client.query('BEGIN');
  await client.query('SELECT 1/0').catch(() => {});
  let aborted = null;
  try {
    await client.query({ name: 'in-aborted', text: 'SELECT 1 AS one' });
  } catch (e) {
    aborted = e.code;
  }
  expect(aborted === '25P02', `named query in an aborted transaction: 25P02, got ${aborted}`);
  await client.query('ROLLBACK');
  const one = (await client.query({ name: 'in-aborted', text: 'SELECT 1 AS one' })).rows[0].one;
  expect(one === 1, `the same name after ROLLBACK: got ${one}`);

  // A pool of 4 connections running 20 reads at once.
  const pool = new pg.Pool({ connectionString: URL, max: 4 });
  try {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => pool.query({ name: 'pooled', text: READ, values: [i] })));
    results.forEach((res, i) => checkRead(res.rows[0], i, 'pooled read'));
  } finally {
    await pool.end();
  }
}

async function main() {
  const timer = setTimeout(() => {
    console.error(`${NAME}: FAILED: timed out (a hang)`);
    process.exit(1);
  }, 240000);
  timer.unref();

  const client = new pg.Client({ connectionString: URL, connectionTimeoutMillis: 10000 });
  await client.connect();
  await client.query(`CREATE TABLE ${TABLE} (id serial PRIMARY KEY, v int NOT NULL)`);
  try {
    await run(client);
  } finally {
    await client.query(`DROP TABLE IF EXISTS ${TABLE}`);
    await client.end();
  }
  console.log(`OK ${NAME}`);
}

main().catch((err) => {
  console.error(err instanceof Failed ? `${NAME}: FAILED: ${err.message}` : err);
  process.exit(1);
});
