"""psycopg 3 through pgsplit, every statement server-side prepared (prepare_threshold=0): CREATE TABLE on the
primary, autocommit reads on both replicas, writes and transactions on the primary, read-your-writes (20 rounds
of insert then select), a transaction with a savepoint rolled back, a read-only transaction (conn.read_only) on
a replica whose write fails with 25006, pipeline mode, executemany, prepared statements that follow the client
from one server to another then run in a transaction on the primary (seen in pg_prepared_statements), a 1 MB
text stored and read back, an error in a transaction then 25P02 then rollback and recovery, large messages.

Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK psycopg3_test.py`."""

import faulthandler
import hashlib
import random
import string
import time
import uuid

import psycopg

from driver_common import PRIMARY, REPLICAS, URL, Script

NAME = "psycopg3_test.py"
TABLE = f"drv_psycopg3_{uuid.uuid4().hex[:12]}"

READ = "SELECT %s::int, pg_is_in_recovery(), inet_server_port()"
WRITE = f"INSERT INTO {TABLE} (v) VALUES (%s) RETURNING inet_server_port()"
PRIMARY_COUNT = f"/* pgsplit:primary */ SELECT count(*) FROM {TABLE}"


_script = Script(NAME, psycopg.Error)
expect, step = _script.expect, _script.step




def check_read(row, i, what):
    expect(row is not None and row[0] == i and row[1] is True and row[2] in REPLICAS,
           f"{what}: read {i} should run on a replica {sorted(REPLICAS)}; got (value, in_recovery, port) = {row}")
    return row[2]


def check_write(row, what):
    expect(row is not None and row[0] == PRIMARY,
           f"{what}: write should run on the primary {PRIMARY}; got port {row}")


def main():
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails the test instead of blocking it
    with psycopg.connect(URL, autocommit=True, prepare_threshold=0, connect_timeout=10) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, v int NOT NULL, t text)")
        try:
            run(conn)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    print(f"OK {NAME}")


def run(conn):
    with step("CREATE TABLE ran on the primary"):
        row = conn.execute(f"/* pgsplit:primary */ SELECT to_regclass('{TABLE}') IS NOT NULL").fetchone()
        expect(row == (True,), f"table {TABLE} exists on the primary: {row}")

    with step("reads"):  # all on replicas, spread over both of them
        seen = set()
        for i in range(400):  # right after CREATE TABLE only replicas that replayed it take this client's reads
            seen.add(check_read(conn.execute(READ, (i,)).fetchone(), i, "plain reads"))
            if seen == REPLICAS and i >= 100:
                break
            if seen != REPLICAS:
                time.sleep(0.02)
    expect(seen == REPLICAS, f"reads should reach both replicas {sorted(REPLICAS)}; saw {sorted(seen)}")

    with step("writes"):
        for i in range(10):
            check_write(conn.execute(WRITE, (i,)).fetchone(), "plain writes")

    with step("transaction"):  # on the primary from start to end, its reads included
        with conn.transaction():
            row = conn.execute(READ, (1,)).fetchone()
            expect(row == (1, False, PRIMARY), f"read in a transaction should run on the primary; got {row}")
            check_write(conn.execute(WRITE, (1,)).fetchone(), "write in a transaction")
            row = conn.execute(READ, (2,)).fetchone()
            expect(row == (2, False, PRIMARY), f"read after a write in a transaction: primary; got {row}")

    kinds = ["read", "write", "read", "write", "read"]
    with step(f"pipeline of {kinds} (one batch, one Sync)"):
        before = conn.execute(PRIMARY_COUNT).fetchone()[0]
        with conn.pipeline():
            cursors = [(kind, i, conn.cursor()) for i, kind in enumerate(kinds)]
            for kind, i, cur in cursors:
                cur.execute(READ if kind == "read" else WRITE, (i,))
        for kind, i, cur in cursors:
            row = cur.fetchone()
            if kind == "write":
                check_write(row, "write in a pipeline")
            else:
                expect(row is not None and row[0] == i and row[2] in REPLICAS | {PRIMARY},
                       f"read {i} in a pipeline: got {row}")
        after = conn.execute(PRIMARY_COUNT).fetchone()[0]
    expect(after == before + 2, f"pipeline inserted 2 rows: count {before} -> {after}")

    with step("executemany of 1000 rows"):
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {TABLE} (v) VALUES (%s)", [(i,) for i in range(1000)])
        after_many = conn.execute(PRIMARY_COUNT).fetchone()[0]
    expect(after_many == after + 1000, f"executemany inserted 1000 rows: count {after} -> {after_many}")

    with step("one prepared read reused while the client moves between servers"):
        seen = set()
        for i in range(50):
            seen.add(check_read(conn.execute(READ, (i,)).fetchone(), i, "prepared read alternating with writes"))
            check_write(conn.execute(WRITE, (i,)).fetchone(), "write alternating with reads")
        for i in range(400):  # each read follows a write: until the lagging replica rejoins, reads only
            if seen == REPLICAS:
                break
            seen.add(check_read(conn.execute(READ, (i,)).fetchone(), i, "prepared read after the writes"))
            time.sleep(0.02)
    expect(seen == REPLICAS, f"the prepared read should reach both replicas; saw {sorted(seen)}")

    with step("the same prepared read inside a transaction runs on the primary"):
        with conn.transaction():
            for i in range(5):
                row = conn.execute(READ, (i,)).fetchone()
                expect(row == (i, False, PRIMARY), f"prepared read {i} in a transaction: primary; got {row}")
            check_write(conn.execute(WRITE, (i,)).fetchone(), "prepared write in a transaction")
            n = conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement = %s",
                             (READ.replace("%s", "$1"),)).fetchone()[0]
            expect(n >= 1, f"the read is a server-side prepared statement on the primary: {n} found")

    with step("read-your-writes: insert then select it at once, 20 rounds"):
        for i in range(20):
            rid, port = conn.execute(f"INSERT INTO {TABLE} (v) VALUES (%s) RETURNING id, inet_server_port()",
                                     (1000 + i,)).fetchone()
            expect(port == PRIMARY, f"round {i}: insert on the primary; got {port}")
            row = conn.execute(f"SELECT v, pg_is_in_recovery(), inet_server_port() FROM {TABLE} WHERE id = %s",
                               (rid,)).fetchone()
            expect(row is not None and row[0] == 1000 + i and row[2] in REPLICAS | {PRIMARY},
                   f"round {i}: the row just inserted (id {rid}) is read back; got {row}")

    with step("after writes, autocommit reads reach both replicas again"):
        seen = set()
        for i in range(400):
            seen.add(check_read(conn.execute(READ, (i,)).fetchone(), i, "read after writes"))
            if seen == REPLICAS and i >= 20:
                break
            if seen != REPLICAS:
                time.sleep(0.02)
    expect(seen == REPLICAS, f"reads after writes should reach both replicas; saw {sorted(seen)}")

    with step("a savepoint rolled back inside a committed transaction"):
        with conn.transaction():
            check_write(conn.execute(WRITE, (-100,)).fetchone(), "write before the savepoint")
            with conn.transaction():  # SAVEPOINT
                check_write(conn.execute(WRITE, (-200,)).fetchone(), "write in the savepoint")
                row = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE v = -200").fetchone()
                expect(row == (1,), f"the savepoint's row is visible inside it: {row}")
                raise psycopg.Rollback()  # ROLLBACK TO SAVEPOINT; the outer transaction goes on
            check_write(conn.execute(WRITE, (-300,)).fetchone(), "write after the savepoint's rollback")
        rows = conn.execute(f"SELECT v FROM {TABLE} WHERE v IN (-100, -200, -300) ORDER BY v").fetchall()
    expect(rows == [(-300,), (-100,)], f"after commit: the rows before/after the savepoint only; got {rows}")

    with step("a read-only transaction runs on a replica and refuses writes (25006)"):
        conn.read_only = True  # conn.transaction() sends BEGIN READ ONLY
        try:
            sqlstate = None
            try:
                with conn.transaction():
                    check_read(conn.execute(READ, (7,)).fetchone(), 7, "first read of a read-only transaction")
                    n = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE v = -100").fetchone()
                    expect(n == (1,), f"read-only transaction sees the committed row: {n}")
                    check_read(conn.execute(READ, (8,)).fetchone(), 8, "later read of a read-only transaction")
                    conn.execute(WRITE, (-400,))
            except psycopg.errors.ReadOnlySqlTransaction as e:
                sqlstate = e.sqlstate
            expect(sqlstate == "25006", f"a write in a read-only transaction fails with 25006; got {sqlstate}")
        finally:
            conn.read_only = None
        check_write(conn.execute(WRITE, (-500,)).fetchone(), "write after the read-only transaction")

    with step("a 1 MB text parameter stored and read back"):
        big = "".join(random.choice(string.ascii_letters) for _ in range(1 << 20))
        rid, port = conn.execute(f"INSERT INTO {TABLE} (v, t) VALUES (-600, %s) RETURNING id, inet_server_port()",
                                 (big,)).fetchone()
        expect(port == PRIMARY, f"1 MB insert on the primary; got {port}")
        row = conn.execute(f"SELECT length(t), md5(t) FROM {TABLE} WHERE id = %s", (rid,)).fetchone()
        expect(row == (1 << 20, hashlib.md5(big.encode()).hexdigest()), f"1 MB text read back (length, md5): {row}")
        back = conn.execute(f"SELECT t FROM {TABLE} WHERE id = %s", (rid,)).fetchone()[0]
        expect(back == big, "1 MB text read back equal")

    with step("an error in a transaction, then 25P02, rollback and recovery"):
        sqlstate = None
        with conn.transaction():
            check_write(conn.execute(WRITE, (-700,)).fetchone(), "write before the error")
            try:
                conn.execute("SELECT 1/0")
                expect(False, "SELECT 1/0 should fail")
            except psycopg.errors.DivisionByZero:
                pass
            try:
                conn.execute("SELECT 1")
            except psycopg.errors.InFailedSqlTransaction as e:
                sqlstate = e.sqlstate
            raise psycopg.Rollback()
        expect(sqlstate == "25P02", f"a statement after the error fails with 25P02; got {sqlstate}")
        row = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE v = -700").fetchone()
        expect(row == (0,), f"the write before the error was rolled back: {row}")
        check_read(conn.execute(READ, (9,)).fetchone(), 9, "read after the rollback")
        check_write(conn.execute(WRITE, (-800,)).fetchone(), "write after the rollback")

    with step("large messages: a 300 KB query text, 4 MB and 40 MB parameters"):
        big = "x" * 300_000
        row = conn.execute(f"SELECT length('{big}')").fetchone()
        expect(row == (300_000,), f"300 KB query: {row}")
        for size in (4 << 20, 40 << 20):
            row = conn.execute("SELECT length(%s::bytea)", (b"\x07" * size,)).fetchone()
            expect(row == (size,), f"{size}-byte parameter: {row}")

    with step("a pipeline whose read fails on a replica runs nothing after it"):
        created = f"{TABLE}_never"
        failed = False
        try:
            with conn.pipeline() as p:
                conn.execute("SELECT 1/0")
                conn.execute(f"CREATE TABLE {created} (a int)")
                p.sync()
        except psycopg.errors.DivisionByZero:
            failed = True
        expect(failed, "the read's division by zero reaches the client")
        row = conn.execute(f"/* pgsplit:primary */ SELECT to_regclass('{created}') IS NULL").fetchone()
        expect(row == (True,), f"the CREATE TABLE after the error must not have run: {row}")
        expect(conn.execute("SELECT 1").fetchone() == (1,), "the connection is usable afterwards")


if __name__ == "__main__":
    main()
