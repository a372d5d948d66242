// postgres.js (npm `postgres`) through pgsplit: DDL and writes on the primary, autocommit reads on both replicas,
// read-your-writes, a savepoint rolled back after an error, a read-only transaction on a replica, prepared
// statements moved between servers and reused in a transaction, a 1 MB parameter, an error in a transaction.
// Reads, read-your-writes and prepared statements run in both modes: `prepare: true` (the default: named
// statements cached per connection) and `prepare: false` (unnamed statements). Then pipelining: 50 queries at
// once on one connection, reads mixed with writes, and a pipelined transaction; a socket tap counts the Syncs
// and Queries sent and the ReadyForQuery received to prove they were in flight together. A debug hook counts how
// often each query was built, so a statement postgres.js silently re-prepared and retried (after 26000) is caught.
//
// Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK postgresjs_test.js`.
'use strict';

const crypto = require('crypto');
const net = require('net');
const postgres = require('postgres');

const { URL, PRIMARY, REPLICAS, Failed, expect, step, show, onPrimary, onReplica, readUntilBothReplicas, failAfter } =
  require('./driver_common');

const NAME = 'postgresjs_test.js';
const TABLE = `drv_postgresjs_${crypto.randomBytes(6).toString('hex')}`;

// The error a promise rejects with (null when it resolves).
async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return err;
  }
}

// Counts, on one connection, the Syncs and simple Queries sent and the ReadyForQuery messages received: their
// difference is the number of batches in flight. The first message sent (the startup packet) has no type byte.
class Tap {
  constructor() {
    this.syncs = 1; // the login ends with a ReadyForQuery too
    this.readies = 0;
    this.maxInFlight = 0;
  }

  reset() {
    this.maxInFlight = this.syncs - this.readies;
  }

  // A postgres.js `socket` option: a connected socket whose traffic is counted.
  socket(options) {
    return new Promise((resolve, reject) => {
      const s = net.connect(Number(options.port[0]), options.host[0]);
      s.once('error', reject);
      s.once('connect', () => {
        s.removeListener('error', reject);
        resolve(s);
      });
      const out = this.parser(true, (type) => {
        if (type === 0x53 || type === 0x51) this.syncs++; // Sync, or a simple Query
        this.maxInFlight = Math.max(this.maxInFlight, this.syncs - this.readies);
      });
      const write = s.write.bind(s);
      s.write = (chunk, ...rest) => {
        out(chunk);
        return write(chunk, ...rest);
      };
      s.on('data', this.parser(false, (type) => {
        if (type === 0x5a) this.readies++; // Z
      }));
    });
  }

  parser(startup, onMessage) {
    let buf = Buffer.alloc(0);
    return (chunk) => {
      buf = Buffer.concat([buf, Buffer.from(chunk)]);
      for (;;) {
        const head = startup ? 4 : 5;
        if (buf.length < head) return;
        const len = buf.readUInt32BE(head - 4) + (startup ? 0 : 1);
        if (buf.length < len) return;
        if (!startup) onMessage(buf[0]);
        startup = false;
        buf = buf.subarray(len);
      }
    };
  }
}

// One client of pgsplit on one connection (max: 1), counting how often each query text was built.
function connect(options) {
  const builds = new Map();
  const sql = postgres(URL, {
    max: 1,
    connect_timeout: 10,
    onnotice: () => {},
    debug: (_conn, text) => builds.set(text, (builds.get(text) || 0) + 1),
    ...options,
  });
  return { sql, builds };
}

const where = 'pg_is_in_recovery() AS r, inet_server_port() AS p';

async function main() {
  failAfter(NAME, 240000);

  const { sql, builds } = connect({});
  const t = sql(TABLE);
  try {
    await step('1. CREATE TABLE (DDL on the primary)', async () => {
      await sql`CREATE TABLE ${t} (id serial PRIMARY KEY, v int NOT NULL, note text)`;
      const [row] = await sql`/* pgsplit:primary */
                              SELECT to_regclass(${TABLE}) IS NOT NULL AS made, ${sql.unsafe(where)}`;
      expect(row.made === true, `the new table exists on the primary: ${show(row)}`);
      onPrimary(row, 'a forced-primary check');
    });
    await run(sql, builds);
    await step('1. DROP TABLE', async () => {
      await sql`DROP TABLE ${t}`;
      const [row] = await sql`/* pgsplit:primary */ SELECT to_regclass(${TABLE}) IS NULL AS gone`;
      expect(row.gone === true, `the table is dropped: ${show(row)}`);
    });
  } catch (err) {
    await sql`DROP TABLE IF EXISTS ${t}`.catch(() => {}); // best effort: the first failure is what is reported
    throw err;
  } finally {
    await sql.end();
  }
  console.log(`OK ${NAME}`);
}

// Steps 1 to 10 after CREATE TABLE, on the client `sql` (prepare: true) and two more clients.
async function run(sql, builds) {
  const t = sql(TABLE);

  await step('2. INSERT and UPDATE run on the primary', async () => {
    for (let i = 1; i <= 5; i++) {
      const [row] = await sql`INSERT INTO ${t} (v, note) VALUES (${i}, 'base') RETURNING v, inet_server_port() AS p`;
      expect(row.v === i && row.p === PRIMARY, `INSERT ${i} on the primary ${PRIMARY}: ${show(row)}`);
    }
    const rows = await sql`UPDATE ${t} SET v = v * 10 WHERE note = 'base' RETURNING v, inet_server_port() AS p`;
    expect(rows.count === 5 && rows.every((r) => r.p === PRIMARY && r.v % 10 === 0),
      `UPDATE of 5 rows on the primary: ${show(rows)}`);
  });

  await modeSteps('prepare: true', sql, builds, true);

  await step('5. savepoint: an error in it, ROLLBACK TO SAVEPOINT, more work, COMMIT', async () => {
    await sql.begin(async (sql) => {
      const [w] = await sql`INSERT INTO ${t} (v, note) VALUES (500, 'sp') RETURNING id, ${sql.unsafe(where)}`;
      onPrimary(w, 'INSERT before the savepoint');
      const err = await failure(sql.savepoint(async (sql) => {
        await sql`INSERT INTO ${t} (v, note) VALUES (501, 'sp')`;
        const [n] = await sql`SELECT count(*)::int AS n FROM ${t} WHERE v = 501`;
        expect(n.n === 1, `the row inserted in the savepoint is visible in it: ${show(n)}`);
        await sql`INSERT INTO ${t} (id, v, note) VALUES (${w.id}, 0, 'dup')`;
      }));
      expect(err && err.code === '23505', `a duplicate key in the savepoint fails with 23505: ${err}`);
      const [n] = await sql`SELECT count(*)::int AS n, ${sql.unsafe(where)} FROM ${t} WHERE v = 501`;
      expect(n.n === 0, `after ROLLBACK TO SAVEPOINT its row is gone: ${show(n)}`);
      onPrimary(n, 'a read after ROLLBACK TO SAVEPOINT');
      await sql`INSERT INTO ${t} (v, note) VALUES (502, 'sp')`;
    });
    const rows = await sql`SELECT v FROM ${t} WHERE note IN ('sp', 'dup') ORDER BY v`;
    expect(show(rows.map((r) => r.v)) === '[500,502]', `committed: 500 and 502, not 501; got ${show(rows)}`);
  });

  await step('6. read-only transaction on a replica; a write in it fails with 25006', async () => {
    const [before] = await sql`/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${t}`;
    const ports = [];
    const err = await failure(sql.begin('read only', async (sql) => {
      const [first] = await sql`SELECT ${sql.unsafe(where)}`;
      ports.push(onReplica(first, 'first statement of a read-only transaction'));
      const [n] = await sql`SELECT count(*)::int AS n, ${sql.unsafe(where)} FROM ${t}`;
      expect(n.n === before.n, `the read-only transaction counts ${before.n} rows: ${show(n)}`);
      ports.push(onReplica(n, 'later statement of a read-only transaction'));
      expect(ports[0] === ports[1], `a read-only transaction stays on one replica: ${ports}`);
      await sql`INSERT INTO ${t} (v, note) VALUES (600, 'ro')`;
    }));
    expect(err && err.code === '25006', `INSERT in a read-only transaction fails with 25006: ${err}`);
    const [n] = await sql`/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${t} WHERE note = 'ro'`;
    expect(n.n === 0, `no row from the read-only transaction: ${show(n)}`);
  });

  await step('8. a 1 MB parameter written and read back', async () => {
    const big = crypto.randomBytes(1 << 19).toString('hex');
    const md5 = crypto.createHash('md5').update(big).digest('hex');
    const [w] = await sql`INSERT INTO ${t} (v, note) VALUES (800, ${big})
                          RETURNING id, length(note) AS len, md5(note) AS md5, inet_server_port() AS p`;
    expect(w.len === 1 << 20 && w.md5 === md5 && w.p === PRIMARY, `1 MB INSERT on the primary: ${show(w)}`);
    const [r] = await sql`SELECT note, ${sql.unsafe(where)} FROM ${t} WHERE id = ${w.id}`;
    expect(r && r.note === big, `the 1 MB value read back equal (got ${r && r.note.length} chars)`);
    const [e] = await sql`SELECT length(${big}::text) AS len, md5(${big}::text) AS md5, ${sql.unsafe(where)}`;
    expect(e.len === 1 << 20 && e.md5 === md5, `a 1 MB parameter echoed: ${show({ ...e })}`);
    onReplica(e, 'a read with a 1 MB parameter');
  });

  await step('9. an error in a transaction: 25P02 after it, ROLLBACK, then the connection works', async () => {
    const [first] = await sql`/* pgsplit:primary */ SELECT min(id) AS id FROM ${t}`;
    const seen = {};
    const err = await failure(sql.begin(async (sql) => {
      await sql`INSERT INTO ${t} (v, note) VALUES (900, 'doomed')`;
      seen.dup = (await failure(sql`INSERT INTO ${t} (id, v) VALUES (${first.id}, 0)`)).code;
      seen.next = (await failure(sql`SELECT 1 AS one`)).code;
    }));
    expect(seen.dup === '23505' && seen.next === '25P02',
      `duplicate key 23505, then 25P02 for the next statement; got ${show(seen)}`);
    expect(err && err.code === '23505', `sql.begin rolls back and rejects with the first error: ${err}`);
    const [n] = await sql`SELECT count(*)::int AS n, ${sql.unsafe(where)} FROM ${t} WHERE note = 'doomed'`;
    expect(n.n === 0, `the rolled-back row is gone: ${show(n)}`);
    const [r] = await sql`SELECT ${sql.unsafe(where)}`;
    onReplica(r, 'a read after the rollback');
    const [w] = await sql`INSERT INTO ${t} (v, note) VALUES (901, 'after') RETURNING inet_server_port() AS p`;
    expect(w.p === PRIMARY, `a write after the rollback on the primary: ${show(w)}`);
  });

  const unnamed = connect({ prepare: false });
  try {
    await modeSteps('prepare: false', unnamed.sql, unnamed.builds, false);
  } finally {
    await unnamed.sql.end();
  }

  const tap = new Tap();
  const piped = connect({ socket: (options) => tap.socket(options) });
  try {
    await pipelining(piped.sql, piped.builds, tap);
  } finally {
    await piped.sql.end();
  }
}

// Steps 3, 4 and 7 in one mode (`prepare` is the postgres.js option).
async function modeSteps(mode, sql, builds, prepare) {
  const t = sql(TABLE);

  await step(`3. [${mode}] autocommit reads on both replicas`, async () => {
    const [expected] = await sql`/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${t}`;
    await readUntilBothReplicas(30, async (i) => {
      const [row] = await sql`SELECT count(*)::int AS n, ${sql.unsafe(where)} FROM ${t}`;
      expect(row.n === expected.n, `read ${i} counts ${expected.n} rows: ${show(row)}`);
      return onReplica(row, `autocommit read ${i}`);
    }, 'autocommit reads');
  });

  await step(`4. [${mode}] read-your-writes: INSERT then SELECT it at once, 20 rounds`, async () => {
    const note = `ryw ${mode}`;
    for (let i = 0; i < 20; i++) {
      const [w] = await sql`INSERT INTO ${t} (v, note) VALUES (${i}, ${note}) RETURNING id, inet_server_port() AS p`;
      expect(w.p === PRIMARY, `INSERT ${i} on the primary: ${show(w)}`);
      const rows = await sql`SELECT v, note, ${sql.unsafe(where)} FROM ${t} WHERE id = ${w.id}`;
      expect(rows.length === 1 && rows[0].v === i && rows[0].note === note,
        `round ${i}: the row just written (id ${w.id}) is read back; got ${show(rows)}`);
      expect(rows[0].p === PRIMARY || REPLICAS.includes(rows[0].p), `round ${i}: ran on a known server: ${show(rows)}`);
    }
  });

  await step(`7. [${mode}] one statement executed 30 times on replicas, then in a transaction`, async () => {
    builds.clear();
    const names = new Set();
    let text;
    const runs = await readUntilBothReplicas(30, async (i) => {
      const res = await sql`SELECT ${i}::int AS v, ${'s' + i}::text AS s, ${sql.unsafe(where)}`;
      expect(res.length === 1 && res[0].v === i && res[0].s === `s${i}`, `execution ${i}: ${show(res)}`);
      names.add(res.statement.name);
      text = res.statement.string;
      return onReplica(res[0], `execution ${i}`);
    }, 'executions of one statement');
    const [name] = names;
    expect(names.size === 1 && (prepare ? name !== '' : name === ''),
      `${prepare ? 'one named statement, cached' : 'the unnamed statement'}; got names ${show([...names])}`);
    await sql.begin(async (sql) => {
      for (let i = 0; i < 5; i++) {
        const res = await sql`SELECT ${i}::int AS v, ${'s' + i}::text AS s, ${sql.unsafe(where)}`;
        expect(res[0].v === i && res[0].s === `s${i}`, `in a transaction, execution ${i}: ${show(res)}`);
        onPrimary(res[0], `the statement in a transaction, execution ${i}`);
        expect(res.statement.name === name, `the same statement in the transaction: ${res.statement.name} vs ${name}`);
        await sql`INSERT INTO ${t} (v, note) VALUES (${i}, ${'tx ' + mode})`;
      }
    });
    expect(builds.get(text) === runs + 5,
      `${runs + 5} executions built as often (no silent re-prepare and retry): ${builds.get(text)}`);
    const [n] = await sql`SELECT count(*)::int AS n FROM ${t} WHERE note = ${'tx ' + mode}`;
    expect(n.n === 5, `the transaction's 5 rows are committed: ${show(n)}`);
  });
}

// Pipelining (prepare: true, one connection): 50 queries issued at once, then a pipelined transaction.
async function pipelining(sql, builds, tap) {
  const t = sql(TABLE);
  const read = (i) => sql`SELECT ${i}::int AS v, ${sql.unsafe(where)}`;
  const write = (i) => sql`INSERT INTO ${t} (v, note) VALUES (${i}, 'pipe') RETURNING v, ${sql.unsafe(where)}`;
  const readBack = (i) =>
    sql`SELECT count(*)::int AS n, ${sql.unsafe(where)} FROM ${t} WHERE v = ${i} AND note = 'pipe'`;

  await step('10. [pipelining] 50 reads at once on one connection, on replicas', async () => {
    // Prepare the statement once: a statement postgres.js has not yet described waits for its Describe (Flush)
    // and holds up the pipeline behind it.
    await read(0);
    builds.clear();
    // A pipeline may stay on one replica (pgsplit holds the connection while batches are outstanding); the next
    // pipeline is balanced anew.
    const pipelines = await readUntilBothReplicas(2, async () => {
      tap.reset();
      const results = await Promise.all(Array.from({ length: 50 }, (_, i) => read(i)));
      expect(tap.maxInFlight >= 40, `the 50 reads were pipelined: at most ${tap.maxInFlight} were in flight`);
      return results.map(([row], i) => {
        expect(row.v === i, `pipelined read ${i} gets its own result: ${show(row)}`);
        return onReplica(row, `pipelined read ${i}`);
      });
    }, 'pipelines of 50 reads');
    const total = [...builds.values()].reduce((a, b) => a + b, 0);
    expect(total === 50 * pipelines, `${50 * pipelines} queries built once each (no retry): ${total}`);
  });

  await step('10. [pipelining] 50 queries at once: writes, reads of those writes, other reads', async () => {
    await Promise.all([write(-1), readBack(-1)]);
    builds.clear();
    tap.reset();
    const kinds = Array.from({ length: 50 }, (_, i) => ['write', 'readBack', 'read', 'read', 'read'][i % 5]);
    const results = await Promise.all(kinds.map((k, i) =>
      k === 'write' ? write(1000 + i) : k === 'readBack' ? readBack(1000 + i - 1) : read(i)));
    results.forEach(([row], i) => {
      if (kinds[i] === 'write') {
        expect(row.v === 1000 + i, `pipelined INSERT ${i} returns its own row: ${show(row)}`);
        onPrimary(row, `pipelined INSERT ${i}`);
      } else if (kinds[i] === 'readBack') {
        expect(row.n === 1, `pipelined read ${i} sees the row written just before it in the pipeline: ${show(row)}`);
      } else {
        expect(row.v === i, `pipelined read ${i} gets its own result: ${show(row)}`);
      }
      // A read after a write may run on the primary (read-your-writes), never on an unknown server.
      expect(row.p === PRIMARY ? row.r === false : row.r === true && REPLICAS.includes(row.p),
        `pipelined ${kinds[i]} ${i} ran on a known server: ${show(row)}`);
    });
    expect(tap.maxInFlight >= 40, `the 50 queries were pipelined: at most ${tap.maxInFlight} were in flight`);
    const total = [...builds.values()].reduce((a, b) => a + b, 0);
    expect(total === 50, `50 queries built once each (no retry): ${total}`);
    const [n] = await sql`/* pgsplit:primary */ SELECT count(*)::int AS n FROM ${t} WHERE note = 'pipe'`;
    expect(n.n === 11, `1 + 10 pipelined rows committed: ${show(n)}`);
  });

  await step('10. [pipelining] read-your-writes right after a pipeline of writes', async () => {
    for (let round = 0; round < 5; round++) {
      const base = 2000 + 100 * round;
      await Promise.all(Array.from({ length: 10 }, (_, i) => write(base + i)));
      const rows = await Promise.all(Array.from({ length: 10 }, (_, i) => readBack(base + i)));
      rows.forEach(([row], i) => expect(row.n === 1, `round ${round}: row ${base + i} is read back: ${show(row)}`));
    }
  });

  await step('10. [pipelining] a pipelined transaction: sql.begin(sql => [queries])', async () => {
    tap.reset();
    const [[w], [r], [n]] = await sql.begin((sql) => [
      sql`INSERT INTO ${t} (v, note) VALUES (3000, 'ptx') RETURNING v, ${sql.unsafe(where)}`,
      sql`SELECT ${7}::int AS v, ${sql.unsafe(where)}`,
      sql`SELECT count(*)::int AS n, ${sql.unsafe(where)} FROM ${t} WHERE note = 'ptx'`,
    ]);
    expect(w.v === 3000 && r.v === 7, `the pipelined transaction's results: ${show([w, r])}`);
    onPrimary(w, 'INSERT in the pipelined transaction');
    onPrimary(r, 'SELECT in the pipelined transaction');
    onPrimary(n, 'count in the pipelined transaction');
    expect(n.n === 1, `the transaction sees its own uncommitted row: ${show(n)}`);
    expect(tap.maxInFlight >= 3, `the transaction's 3 queries were pipelined: max ${tap.maxInFlight} in flight`);
    const [c] = await sql`SELECT count(*)::int AS n FROM ${t} WHERE note = 'ptx'`;
    expect(c.n === 1, `the pipelined transaction committed its row: ${show(c)}`);
  });
}

main().catch((err) => {
  console.error(err instanceof Failed ? `${NAME}: FAILED: ${err.message}` : err);
  process.exit(1);
});
