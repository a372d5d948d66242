"""asyncpg through pgsplit: CREATE TABLE on the primary, its statement cache and explicit prepared statements
on both replicas (then the prepared statement in a transaction on the primary), writes and transactions on the
primary, read-your-writes (20 rounds of insert then select), a nested transaction() (savepoint) rolled back, a
read-only transaction(readonly=True) on a replica whose write fails with 25006, a 1 MB text parameter stored and
read back, an error in a transaction then 25P02 then rollback and recovery, COPY (copy_records_to_table) and
executemany.

Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK asyncpg_test.py`."""

import asyncio
import faulthandler
import hashlib
import random
import string
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
    await conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, v int NOT NULL, t text)")
    try:
        await run(conn)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()
    print(f"OK {NAME}")


class Undo(Exception):
    """Raised to roll back a transaction() block."""


async def run(conn):
    with step("CREATE TABLE ran on the primary"):
        exists = await conn.fetchval(f"/* pgsplit:primary */ SELECT to_regclass('{TABLE}') IS NOT NULL")
        expect(exists is True, f"table {TABLE} exists on the primary: {exists}")

    with step("statement cache: one parametrised read, at least 50 times"):  # on replicas, both of them
        seen = set()
        for i in range(400):  # right after CREATE TABLE only replicas that replayed it take this client's reads
            seen.add(check_read(await conn.fetchrow(READ, i), i, "cached read"))
            if seen == REPLICAS and i >= 50:
                break
            if seen != REPLICAS:
                await asyncio.sleep(0.02)
    expect(seen == REPLICAS, f"reads should reach both replicas {sorted(REPLICAS)}; saw {sorted(seen)}")

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

    with step("the prepared statement inside a transaction runs on the primary"):
        async with conn.transaction():
            for i in range(5):
                rows = await stmt.fetch(i)
                expect([tuple(r) for r in rows] == [(i, False, PRIMARY)],
                       f"prepared fetch {i} in a transaction should run on the primary: {rows}")
            n = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", READ)
            expect(n >= 1, f"the read is a server-side prepared statement on the primary: {n} found")

    with step("read-your-writes: insert then select it at once, 20 rounds"):
        for i in range(20):
            row = await conn.fetchrow(f"INSERT INTO {TABLE} (v) VALUES ($1) RETURNING id, inet_server_port()", 1000 + i)
            expect(row["inet_server_port"] == PRIMARY, f"round {i}: insert on the primary; got {tuple(row)}")
            back = await conn.fetchrow(f"SELECT v, inet_server_port() AS p FROM {TABLE} WHERE id = $1", row["id"])
            expect(back is not None and back["v"] == 1000 + i and back["p"] in REPLICAS | {PRIMARY},
                   f"round {i}: the row just inserted (id {row['id']}) is read back; got {back}")

    with step("after writes, autocommit reads reach both replicas again"):
        seen = set()
        for i in range(400):
            seen.add(check_read(await stmt.fetchrow(i), i, "prepared read after writes"))
            if seen == REPLICAS and i >= 20:
                break
            if seen != REPLICAS:
                await asyncio.sleep(0.02)
    expect(seen == REPLICAS, f"reads after writes should reach both replicas; saw {sorted(seen)}")

    with step("a nested transaction() (savepoint) rolled back inside a committed transaction"):
        async with conn.transaction():
            expect(await conn.fetchval(WRITE, -100) == PRIMARY, "write before the savepoint on the primary")
            try:
                async with conn.transaction():  # SAVEPOINT
                    expect(await conn.fetchval(WRITE, -200) == PRIMARY, "write in the savepoint on the primary")
                    n = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE v = -200")
                    expect(n == 1, f"the savepoint's row is visible inside it: {n}")
                    raise Undo()  # ROLLBACK TO SAVEPOINT
            except Undo:
                pass
            expect(await conn.fetchval(WRITE, -300) == PRIMARY, "write after the savepoint's rollback on the primary")
        vs = [r["v"] for r in await conn.fetch(f"SELECT v FROM {TABLE} WHERE v IN (-100, -200, -300) ORDER BY v")]
    expect(vs == [-300, -100], f"after commit: the rows before/after the savepoint only; got {vs}")

    with step("a read-only transaction runs on a replica and refuses writes (25006)"):
        sqlstate = None
        try:
            async with conn.transaction(readonly=True):
                check_read(await conn.fetchrow(READ, 7), 7, "first read of a read-only transaction")
                n = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE v = -100")
                expect(n == 1, f"read-only transaction sees the committed row: {n}")
                check_read(await conn.fetchrow(READ, 8), 8, "later read of a read-only transaction")
                await conn.fetchval(WRITE, -400)
        except asyncpg.exceptions.ReadOnlySQLTransactionError as e:
            sqlstate = e.sqlstate
        expect(sqlstate == "25006", f"a write in a read-only transaction fails with 25006; got {sqlstate}")
        expect(await conn.fetchval(WRITE, -500) == PRIMARY, "write after the read-only transaction on the primary")

    with step("a 1 MB text parameter stored and read back"):
        big = "".join(random.choice(string.ascii_letters) for _ in range(1 << 20))
        row = await conn.fetchrow(f"INSERT INTO {TABLE} (v, t) VALUES (-600, $1) RETURNING id, inet_server_port()", big)
        expect(row["inet_server_port"] == PRIMARY, f"1 MB insert on the primary; got {tuple(row)}")
        back = await conn.fetchrow(f"SELECT length(t), md5(t), t FROM {TABLE} WHERE id = $1", row["id"])
        expect(back is not None and (back[0], back[1]) == (1 << 20, hashlib.md5(big.encode()).hexdigest()),
               f"1 MB text read back (length, md5): {back and (back[0], back[1])}")
        expect(back[2] == big, "1 MB text read back equal")

    with step("an error in a transaction, then 25P02, rollback and recovery"):
        sqlstate = None
        try:
            async with conn.transaction():
                expect(await conn.fetchval(WRITE, -700) == PRIMARY, "write before the error on the primary")
                try:
                    await conn.fetchval("SELECT 1/0")
                    expect(False, "SELECT 1/0 should fail")
                except asyncpg.exceptions.DivisionByZeroError:
                    pass
                try:
                    await conn.fetchval("SELECT 1")
                except asyncpg.exceptions.InFailedSQLTransactionError as e:
                    sqlstate = e.sqlstate
                raise Undo()  # ROLLBACK
        except Undo:
            pass
        expect(sqlstate == "25P02", f"a statement after the error fails with 25P02; got {sqlstate}")
        n = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE v = -700")
        expect(n == 0, f"the write before the error was rolled back: {n}")
        check_read(await conn.fetchrow(READ, 9), 9, "read after the rollback")
        expect(await conn.fetchval(WRITE, -800) == PRIMARY, "write after the rollback on the primary")

    # asyncpg reads the table's columns with a SELECT first, which is a read and may go to a replica: wait
    # until the replicas have the table.
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
