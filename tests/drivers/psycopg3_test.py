"""psycopg 3 through pgsplit, every statement server-side prepared (prepare_threshold=0): reads on replicas,
writes and transactions on the primary, pipeline mode, executemany, and prepared statements that follow the
client from one server to another.

Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK psycopg3_test.py`."""

import faulthandler
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
        conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, v int NOT NULL)")
        try:
            run(conn)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    print(f"OK {NAME}")


def run(conn):
    with step("reads"):  # all on replicas, spread over both of them
        seen = {check_read(conn.execute(READ, (i,)).fetchone(), i, "plain reads") for i in range(100)}
    expect(seen == REPLICAS, f"100 reads should reach both replicas {sorted(REPLICAS)}; saw {sorted(seen)}")

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
    expect(seen == REPLICAS, f"alternating reads should reach both replicas; saw {sorted(seen)}")

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
