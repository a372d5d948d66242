"""asyncpg through pgsplit: its statement cache and explicit prepared statements on replicas, writes and
transactions on the primary, COPY (copy_records_to_table) and executemany.

Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK asyncpg_test.py`."""

import asyncio
import faulthandler
import uuid

import asyncpg

from driver_common import PRIMARY, REPLICAS, URL, Script

NAME = "asyncpg_test.py"
TABLE = f"drv_asyncpg_{uuid.uuid4().hex[:12]}"

READ = "SELECT $1::int AS v, pg_is_in_recovery() AS r, inet_server_port() AS p"
WRITE = f"INSERT INTO {TABLE} (v) VALUES ($1) RETURNING inet_server_port()"
PRIMARY_COUNT = f"/* pgsplit:primary */ SELECT count(*) FROM {TABLE}"


_script = Script(NAME, asyncpg.PostgresError)
expect, step = _script.expect, _script.step




def check_read(row, i, what):
    expect(row is not None and tuple(row) in {(i, True, p) for p in REPLICAS},
           f"{what}: read {i} should run on a replica {sorted(REPLICAS)}; got (v, in_recovery, port) = {row}")
    return row["p"]


async def main():
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails the test instead of blocking it
    conn = await asyncpg.connect(URL, timeout=10)
    await conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, v int NOT NULL)")
    try:
        await run(conn)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()
    print(f"OK {NAME}")


async def run(conn):
    with step("statement cache: one parametrised read, 50 times"):  # on replicas, both of them
        seen = {check_read(await conn.fetchrow(READ, i), i, "cached read") for i in range(50)}
    expect(seen == REPLICAS, f"50 reads should reach both replicas {sorted(REPLICAS)}; saw {sorted(seen)}")

    with step("writes"):
        for i in range(10):
            port = await conn.fetchval(WRITE, i)
            expect(port == PRIMARY, f"write {i} should run on the primary {PRIMARY}; got port {port}")

    with step("conn.prepare() of a read, then a (cached) write"):
        # prepare() sends Parse/Describe/Flush and no Sync; the write that follows must still reach the primary.
        stmt = await conn.prepare(READ)
        port = await conn.fetchval(WRITE, -1)
        expect(port == PRIMARY, f"write after prepare() should run on the primary {PRIMARY}; got port {port}")

    with step("prepared statement fetched 50 times"):
        for i in range(50):
            rows = await stmt.fetch(i)
            expect(len(rows) == 1, f"prepared fetch {i}: {rows}")
            check_read(rows[0], i, "prepared statement")

    with step("transaction"):  # on the primary, its reads included
        async with conn.transaction():
            row = await conn.fetchrow(READ, 1)
            expect(tuple(row) == (1, False, PRIMARY), f"read in a transaction should run on the primary; got {row}")
            port = await conn.fetchval(WRITE, 1)
            expect(port == PRIMARY, f"write in a transaction should run on the primary; got {port}")

    # asyncpg reads the table's columns with a SELECT first, which is a read and may go to a replica: wait
    # until the replicas have the table (pgsplit has no read-your-writes).
    for _ in range(100):
        if all([await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE) for _ in range(4)]):
            break
        await asyncio.sleep(0.1)
    with step("copy_records_to_table of 10,000 records"):
        before = await conn.fetchval(PRIMARY_COUNT)
        result = await conn.copy_records_to_table(TABLE, records=[(i,) for i in range(10_000)], columns=["v"])
        expect(result == "COPY 10000", f"copy_records_to_table: {result}")
        after = await conn.fetchval(PRIMARY_COUNT)
    expect(after == before + 10_000, f"COPY inserted 10000 rows: count {before} -> {after}")

    with step("executemany of 1000 rows"):
        await conn.executemany(f"INSERT INTO {TABLE} (v) VALUES ($1)", [(i,) for i in range(1000)])
        final = await conn.fetchval(PRIMARY_COUNT)
    expect(final == after + 1000, f"executemany inserted 1000 rows: count {after} -> {final}")


if __name__ == "__main__":
    asyncio.run(main())
