// node-postgres (pg) through pgsplit, as named steps: DDL and writes on the primary, autocommit reads on both
// replicas, read-your-writes (20 rounds), named prepared statements moved between replicas and reused in a
// transaction on the primary, a named statement on a missing table that works once the table exists, a savepoint
// rolled back inside a committed transaction, a read-only transaction on a replica (a write in it fails with 25006),
// a 1 MB parameter, an error in a transaction (25P02 after it, a named Parse included; ROLLBACK; recovery).
// Modes: simple queries (step 3), unnamed parameterized queries (step 4), named statements (step 7), and a pool of
// 4 connections: 20 named reads at once until both replicas are seen, read-your-writes on a pooled client.
//
// Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK node_pg_test.js`.
'use strict';

const crypto = require('crypto');
const pg = require('pg');

const { URL, PRIMARY, REPLICAS, Failed, expect, step, show, onPrimary, onReplica, readUntilBothReplicas, failAfter } =
  require('./driver_common');

const NAME = 'node_pg_test.js';
const TABLE = `drv_node_pg_${crypto.randomBytes(6).toString('hex')}`;

const WHERE = 'pg_is_in_recovery() AS r, inet_server_port() AS p';
const READ = `SELECT $1::int AS v, ${WHERE}`;
const WRITE = `INSERT INTO ${TABLE} (v, note) VALUES ($1, 'named') RETURNING v, ${WHERE}`;

// The SQLSTATE a query fails with (null when it succeeds).
async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return err.code || String(err);
  }
}

async function one(client, query, values) {
  const res = await client.query(query, values);
  expect(res.rows.length === 1, `one row expected from ${show(query)}; got ${show(res.rows)}`);
  return res.rows[0];
}

const primaryCount = async (client, cond) =>
  (await one(client, `/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${TABLE} WHERE ${cond}`)).n;

async function run(client) {
  await step('2. INSERT and UPDATE run on the primary', async () => {
    for (let i = 0; i < 10; i++) {
      const row = await one(client, { name: 'insert-v', text: WRITE, values: [i] });
      expect(row.v === i, `named INSERT ${i} returns its row: ${show(row)}`);
      onPrimary(row, `named INSERT ${i}`);
    }
    const res = await client.query(
      `UPDATE ${TABLE} SET v = v * 10 WHERE note = 'named' AND v < 5 RETURNING v, inet_server_port() AS p`);
    expect(res.rowCount === 5 && res.rows.every((r) => r.p === PRIMARY && r.v % 10 === 0),
      `UPDATE of 5 rows on the primary: ${show(res.rows)}`);
  });

  await step('3. [simple query] autocommit reads on both replicas', async () => {
    const expected = await primaryCount(client, 'true');
    await readUntilBothReplicas(30, async (i) => {
      const row = await one(client, `SELECT count(*)::int AS n, ${WHERE} FROM ${TABLE}`);
      expect(row.n === expected, `read ${i} counts ${expected} rows: ${show(row)}`);
      return onReplica(row, `autocommit read ${i}`);
    }, 'autocommit reads');
  });

  await step('4. [unnamed statements] read-your-writes: INSERT then SELECT it at once, 20 rounds', async () => {
    for (let i = 0; i < 20; i++) {
      const w = await one(client, `INSERT INTO ${TABLE} (v, note) VALUES ($1, 'ryw') RETURNING id, ${WHERE}`, [i]);
      onPrimary(w, `INSERT ${i}`);
      const res = await client.query(`SELECT v, note, ${WHERE} FROM ${TABLE} WHERE id = $1`, [w.id]);
      const row = res.rows[0];
      expect(res.rows.length === 1 && row.v === i && row.note === 'ryw',
        `round ${i}: the row just written (id ${w.id}) is read back; got ${show(res.rows)}`);
      expect(row.p === PRIMARY ? row.r === false : row.r === true && REPLICAS.includes(row.p),
        `round ${i}: ran on a known server: ${show(row)}`);
    }
  });

  await step('7. [named statements] a named read 50 times on both replicas, then in a transaction', async () => {
    await readUntilBothReplicas(50, async (i) => {
      const row = await one(client, { name: 'by-id', text: READ, values: [i] });
      expect(row.v === i, `named read ${i} returns ${i}: ${show(row)}`);
      return onReplica(row, `named read ${i}`);
    }, 'named reads');
    // In a transaction everything runs on the primary, the named read and the named write included.
    await client.query('BEGIN');
    for (let i = 0; i < 5; i++) {
      const r = await one(client, { name: 'by-id', text: READ, values: [i] });
      expect(r.v === i, `named read ${i} in a transaction: ${show(r)}`);
      onPrimary(r, `named read ${i} in a transaction`);
      const w = await one(client, { name: 'insert-v', text: WRITE, values: [100 + i] });
      onPrimary(w, `named write ${i} in a transaction`);
    }
    await client.query('COMMIT');
    const n = await primaryCount(client, `note = 'named'`);
    expect(n === 15, `10 named writes and 5 committed in a transaction: 15 rows, got ${n}`);
  });

  await step('7. a named statement on a missing table fails (42P01), then works once the table exists', async () => {
    // The failed Parse leaves nothing behind, as on PostgreSQL.
    const later = `${TABLE}_later`;
    const byLater = { name: 'later', text: `/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${later}` };
    const missing = await failure(client.query(byLater));
    expect(missing === '42P01', `named query on a missing table: 42P01, got ${missing}`);
    await client.query(`CREATE TABLE ${later} (a int)`);
    try {
      const n = (await one(client, byLater)).n;
      expect(n === 0, `the same named query after CREATE TABLE: 0 rows counted, got ${n}`);
    } finally {
      await client.query(`DROP TABLE ${later}`);
    }
  });

  await step('5. savepoint: work, an error in it, ROLLBACK TO SAVEPOINT, more work, COMMIT', async () => {
    await client.query('BEGIN');
    const w = await one(client, `INSERT INTO ${TABLE} (v, note) VALUES (500, 'sp') RETURNING id, ${WHERE}`);
    onPrimary(w, 'INSERT before the savepoint');
    await client.query('SAVEPOINT s1');
    await client.query(`INSERT INTO ${TABLE} (v, note) VALUES (501, 'sp')`);
    const seen = await one(client, `SELECT count(*)::int AS n FROM ${TABLE} WHERE v = 501`);
    expect(seen.n === 1, `the row inserted after the savepoint is visible: ${show(seen)}`);
    const dup = await failure(client.query(`INSERT INTO ${TABLE} (id, v) VALUES ($1, 0)`, [w.id]));
    expect(dup === '23505', `a duplicate key after the savepoint fails with 23505: ${dup}`);
    await client.query('ROLLBACK TO SAVEPOINT s1');
    const gone = await one(client, `SELECT count(*)::int AS n, ${WHERE} FROM ${TABLE} WHERE v = 501`);
    expect(gone.n === 0, `after ROLLBACK TO SAVEPOINT its row is gone: ${show(gone)}`);
    onPrimary(gone, 'a read after ROLLBACK TO SAVEPOINT');
    await client.query(`INSERT INTO ${TABLE} (v, note) VALUES (502, 'sp')`);
    await client.query('COMMIT');
    const res = await client.query(`SELECT v FROM ${TABLE} WHERE note = 'sp' ORDER BY v`);
    expect(show(res.rows.map((r) => r.v)) === '[500,502]', `committed: 500 and 502, not 501; got ${show(res.rows)}`);
  });

  await step('6. read-only transaction on a replica; a write in it fails with 25006', async () => {
    const before = await primaryCount(client, 'true');
    await client.query('BEGIN READ ONLY');
    const first = onReplica(await one(client, `SELECT ${WHERE}`), 'first statement of a read-only transaction');
    const n = await one(client, `SELECT count(*)::int AS n, ${WHERE} FROM ${TABLE}`);
    expect(n.n === before, `the read-only transaction counts ${before} rows: ${show(n)}`);
    const later = onReplica(n, 'later statement of a read-only transaction');
    expect(first === later, `a read-only transaction stays on one replica: ${first}, ${later}`);
    const err = await failure(client.query(`INSERT INTO ${TABLE} (v, note) VALUES (600, 'ro')`));
    expect(err === '25006', `INSERT in a read-only transaction fails with 25006: ${err}`);
    await client.query('ROLLBACK');
    const ro = await primaryCount(client, `note = 'ro'`);
    expect(ro === 0, `no row from the read-only transaction: ${ro}`);
  });

  await step('8. a 1 MB parameter written and read back', async () => {
    const big = crypto.randomBytes(1 << 19).toString('hex');
    const md5 = crypto.createHash('md5').update(big).digest('hex');
    const w = await one(client, `INSERT INTO ${TABLE} (v, note) VALUES (800, $1)
                                 RETURNING id, length(note) AS len, md5(note) AS md5, ${WHERE}`, [big]);
    expect(w.len === 1 << 20 && w.md5 === md5, `1 MB INSERT stored: ${show(w)}`);
    onPrimary(w, '1 MB INSERT');
    const r = await one(client, `SELECT note FROM ${TABLE} WHERE id = $1`, [w.id]);
    expect(r.note === big, `the 1 MB value read back equal (got ${r.note && r.note.length} chars)`);
    const e = await one(client, `SELECT length($1::text) AS len, md5($1::text) AS md5, ${WHERE}`, [big]);
    expect(e.len === 1 << 20 && e.md5 === md5, `a 1 MB parameter echoed: ${show(e)}`);
    onReplica(e, 'a read with a 1 MB parameter');
  });

  await step('9. an error in a transaction: 25P02 after it, ROLLBACK, then the connection works', async () => {
    const first = await one(client, `/* pgsplit:primary */ SELECT min(id) AS id FROM ${TABLE}`);
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${TABLE} (v, note) VALUES (900, 'doomed')`);
    const dup = await failure(client.query(`INSERT INTO ${TABLE} (id, v) VALUES ($1, 0)`, [first.id]));
    const next = await failure(client.query('SELECT 1 AS one'));
    // A named Parse in the aborted transaction fails too; after ROLLBACK the same name works.
    const named = await failure(client.query({ name: 'in-aborted', text: 'SELECT 1 AS one' }));
    expect(show([dup, next, named]) === '["23505","25P02","25P02"]',
      `duplicate key 23505, then 25P02 for a simple and a named statement; got ${show([dup, next, named])}`);
    await client.query('ROLLBACK');
    const again = await one(client, { name: 'in-aborted', text: 'SELECT 1 AS one' });
    expect(again.one === 1, `the same name after ROLLBACK: ${show(again)}`);
    const n = await one(client, `SELECT count(*)::int AS n FROM ${TABLE} WHERE note = 'doomed'`);
    expect(n.n === 0, `the rolled-back row is gone: ${show(n)}`);
    onReplica(await one(client, `SELECT ${WHERE}`), 'a read after the rollback');
    const w = await one(client, `INSERT INTO ${TABLE} (v, note) VALUES (901, 'after') RETURNING v, ${WHERE}`);
    expect(w.v === 901, `a write after the rollback: ${show(w)}`);
    onPrimary(w, 'a write after the rollback');
  });

  const pool = new pg.Pool({ connectionString: URL, max: 4 });
  try {
    await step('10. [pool of 4] 20 named reads at once, on both replicas', async () => {
      await readUntilBothReplicas(2, async () => {
        const results = await Promise.all(
          Array.from({ length: 20 }, (_, i) => pool.query({ name: 'pooled', text: READ, values: [i] })));
        return results.map((res, i) => {
          expect(res.rows.length === 1 && res.rows[0].v === i, `pooled read ${i}: ${show(res.rows)}`);
          return onReplica(res.rows[0], `pooled read ${i}`);
        });
      }, 'batches of 20 pooled reads');
    });

    await step('10. [pool of 4] read-your-writes on a pooled client, 10 rounds', async () => {
      const pooled = await pool.connect();
      try {
        for (let i = 0; i < 10; i++) {
          const w = await one(pooled, { name: 'insert-v', text: WRITE, values: [1000 + i] });
          onPrimary(w, `pooled INSERT ${i}`);
          const res = await pooled.query({ name: 'by-v', text: `SELECT count(*)::int AS n FROM ${TABLE} WHERE v = $1`,
            values: [1000 + i] });
          expect(res.rows[0].n === 1, `round ${i}: the pooled client reads its own row: ${show(res.rows)}`);
        }
      } finally {
        pooled.release();
      }
    });
  } finally {
    await pool.end();
  }
}

async function main() {
  failAfter(NAME, 240000);

  const client = new pg.Client({ connectionString: URL, connectionTimeoutMillis: 10000 });
  await client.connect();
  try {
    await step('1. CREATE TABLE (DDL on the primary)', async () => {
      await client.query(`CREATE TABLE ${TABLE} (id serial PRIMARY KEY, v int NOT NULL, note text)`);
      const row = await one(client,
        `/* pgsplit:primary */ SELECT to_regclass($1) IS NOT NULL AS made, ${WHERE}`, [TABLE]);
      expect(row.made === true, `the new table exists on the primary: ${show(row)}`);
      onPrimary(row, 'a forced-primary check');
    });
    await run(client);
    await step('1. DROP TABLE', async () => {
      await client.query(`DROP TABLE ${TABLE}`);
      const row = await one(client, `/* pgsplit:primary */ SELECT to_regclass($1) IS NULL AS gone`, [TABLE]);
      expect(row.gone === true, `the table is dropped: ${show(row)}`);
    });
  } catch (err) {
    // Best effort: the first failure is what is reported.
    await client.query('ROLLBACK').catch(() => {});
    await client.query(`DROP TABLE IF EXISTS ${TABLE}`).catch(() => {});
    throw err;
  } finally {
    await client.end();
  }
  console.log(`OK ${NAME}`);
}

main().catch((err) => {
  console.error(err instanceof Failed ? `${NAME}: FAILED: ${err.message}` : err);
  process.exit(1);
});
