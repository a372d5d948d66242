// What the Node driver scripts share: the environment the test hands them (pgsplit's URL, the servers' ports),
// named steps whose failures say which step failed, and the checks of where a statement ran.
//
// Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated).
'use strict';

const URL = process.env.DATABASE_URL;
const PRIMARY = Number(process.env.PRIMARY_PORT);
const REPLICAS = process.env.REPLICA_PORTS.split(',').map(Number);

class Failed extends Error {}

function expect(cond, what) {
  if (!cond) throw new Failed(what);
}

// Runs one named step; any failure in it (a check or a driver error) becomes a Failed naming the step.
async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    if (!(err instanceof Failed)) console.error(err);
    const what = err instanceof Failed ? err.message : `${err.name} ${err.code || ''}: ${err.message}`;
    throw new Failed(`step "${name}": ${what}`);
  }
}

const show = (row) => JSON.stringify(row);

// Checks a row's `r` (pg_is_in_recovery()) and `p` (inet_server_port()).
function onPrimary(row, what) {
  expect(row && row.r === false && row.p === PRIMARY, `${what}: should run on the primary ${PRIMARY}; got ${show(row)}`);
}

function onReplica(row, what) {
  expect(row && row.r === true && REPLICAS.includes(row.p),
    `${what}: should run on a replica ${REPLICAS}; got ${show(row)}`);
  return row.p;
}

function sameSet(seen, ports) {
  return seen.size === ports.length && ports.every((p) => seen.has(p));
}

// Runs `read(i)` (which returns the replica or replicas it ran on) at least `min` times, and on until both
// replicas have been seen, for at most 5 s: right after this client's writes, pgsplit sends its reads only to a
// replica known to have replayed them, which for a moment may be one of the two. Returns the number of calls.
async function readUntilBothReplicas(min, read, what) {
  const seen = new Set();
  const deadline = Date.now() + 5000;
  let i = 0;
  for (; i < min || (!sameSet(seen, REPLICAS) && Date.now() < deadline); i++) {
    [].concat(await read(i)).forEach((p) => seen.add(p));
  }
  expect(sameSet(seen, REPLICAS), `${what}: ${i} runs should reach both replicas ${REPLICAS}; saw ${[...seen]}`);
  return i;
}

// Fails the script `name` if it is still running after `ms` (a hang fails the test instead of blocking it).
function failAfter(name, ms) {
  const timer = setTimeout(() => {
    console.error(`${name}: FAILED: timed out (a hang)`);
    process.exit(1);
  }, ms);
  timer.unref();
}

module.exports = {
  URL, PRIMARY, REPLICAS, Failed, expect, step, show, onPrimary, onReplica, sameSet, readUntilBothReplicas, failAfter,
};
