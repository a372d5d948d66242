"""Django ORM (standalone, psycopg 3 backend) through pgsplit: `migrate --run-syncdb` creates the model's table
on the primary, writes on the primary, a save then a read that sees it (and 20 rounds of create then get),
autocommit reads on both replicas, transaction.atomic() with a nested atomic (savepoint) rolled back, a read-only
transaction (SET TRANSACTION READ ONLY in atomic()) on a replica whose write fails with 25006, a 1 MB TextField
saved and read back, errors (in and out of a transaction; 25P02 after an error in atomic()) then recovery.
A second alias, "prepared" (OPTIONS server_side_binding + prepare_threshold=0: psycopg prepares every query),
runs ORM reads on both replicas, read-your-writes, and the same prepared query in atomic() on the primary.

The model lives in tests/drivers/django_app/. Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS
(comma-separated). Prints `OK django_test.py`."""

import faulthandler
import hashlib
import os
import random
import string
import time
from urllib.parse import unquote, urlsplit

from driver_common import PRIMARY, REPLICAS, URL, Script

NAME = "django_test.py"
TABLE = f"drv_django_{os.getpid()}"
os.environ["DJANGO_TEST_TABLE"] = TABLE  # read by django_app/models.py

import django  # noqa: E402
from django.conf import settings  # noqa: E402


def database_settings(url):
    u = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(u.path.lstrip("/")),
        "USER": unquote(u.username or ""),
        "PASSWORD": unquote(u.password or ""),
        "HOST": u.hostname or "",
        "PORT": str(u.port or ""),
        "OPTIONS": {"connect_timeout": 10},
    }


def prepared_settings(url):
    """Server-side binding, every query prepared by psycopg at its first execution (Django's default: none).

    The session starts in another time zone than Django's (UTC), so Django sends
    `SELECT set_config('TimeZone', $1, false)` with the zone as a bound parameter, which pgsplit must follow to
    every server (else it would keep the client on its first servers, and the replica checks would fail)."""
    s = database_settings(url)
    s["OPTIONS"] = {**s["OPTIONS"], "server_side_binding": True, "prepare_threshold": 0,
                    "options": "-c TimeZone=America/Chicago"}
    return s


settings.configure(
    DATABASES={"default": database_settings(URL), "prepared": prepared_settings(URL)},
    INSTALLED_APPS=["django_app"],  # tests/drivers is on sys.path as the script's directory
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import DatabaseError, IntegrityError, InternalError, connection, connections, transaction  # noqa: E402
from django.db.models.expressions import RawSQL  # noqa: E402

from django_app.models import Item  # noqa: E402


_script = Script(NAME, DatabaseError)
expect, step = _script.expect, _script.step




def where(conn=connection):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery(), inet_server_port()")
        return cur.fetchone()


def on_primary(what, conn=connection):
    row = where(conn)
    expect(tuple(row) == (False, PRIMARY), f"{what}: should run on the primary {PRIMARY}; got {row}")


def on_replica(what, conn=connection):
    row = where(conn)
    expect(row[0] is True and row[1] in REPLICAS, f"{what}: should run on a replica {sorted(REPLICAS)}; got {row}")
    return row[1]


def table_exists():
    with connection.cursor() as cur:
        cur.execute("/* pgsplit:primary */ SELECT to_regclass(%s) IS NOT NULL", [TABLE])
        return cur.fetchone()[0]


def main():
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails the test instead of blocking it
    with step("migrate --run-syncdb"):
        call_command("migrate", run_syncdb=True, verbosity=0, interactive=False)
        expect(table_exists(), f"migrate should have created {TABLE} on the primary")
    try:
        run()
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Item)
        expect(not table_exists(), f"table {TABLE} should be dropped")
        connections.close_all()
    print(f"OK {NAME}")


class Undo(Exception):
    """Raised to roll back an atomic() block."""


def run():
    expect(connection.get_autocommit(), "Django runs in autocommit outside atomic()")

    with step("autocommit reads go to replicas"):
        seen = set()
        for i in range(400):  # right after migrate only replicas that replayed it take this client's reads
            seen.add(on_replica("autocommit read"))
            if seen == REPLICAS and i >= 40:
                break
            if seen != REPLICAS:
                time.sleep(0.02)
    expect(seen == REPLICAS, f"autocommit reads should reach both replicas {sorted(REPLICAS)}; saw {seen}")

    with step("save, then read it back"):
        first = Item(name="first", v=1)
        first.save()
        got = Item.objects.get(pk=first.pk)  # outside a transaction: a replica that has replayed the save
        expect((got.name, got.v) == ("first", 1), f"read after the save: {got.name}, {got.v}")
        got.v = 2
        got.save(update_fields=["v"])
        expect(Item.objects.values_list("v", flat=True).get(pk=first.pk) == 2, "read after an update sees it")
        expect(Item.objects.filter(name="first").count() == 1, "count after the save")

    with step("atomic() with a nested atomic (savepoint) rolled back"):
        with transaction.atomic():
            on_primary("a statement in atomic()")
            outer = Item.objects.create(name="outer", v=10)
            try:
                with transaction.atomic():  # a savepoint
                    Item.objects.create(name="inner", v=20)
                    expect(Item.objects.filter(name="inner").exists(), "inner row visible inside the savepoint")
                    raise Undo()
            except Undo:
                pass
            expect(not Item.objects.filter(name="inner").exists(), "inner row gone after the savepoint's rollback")
            on_primary("a statement after the savepoint's rollback")
        names = sorted(Item.objects.values_list("name", flat=True))
        expect(names == ["first", "outer"], f"after the atomic block: {names}")
        expect(Item.objects.get(pk=outer.pk).v == 10, "outer row committed")

    with step("an error inside atomic(), rollback, recovery"):
        failed = False
        try:
            with transaction.atomic():
                Item.objects.create(name="doomed", v=30)
                with connection.cursor() as cur:
                    cur.execute("SELECT 1/0")
        except DatabaseError as e:
            failed = "division by zero" in str(e)
        expect(failed, "division by zero reaches Django")
        expect(not Item.objects.filter(name="doomed").exists(), "the row created before the error was rolled back")
        with transaction.atomic():
            Item.objects.create(name="after", v=40)
            on_primary("atomic() after the failed one")
        expect(Item.objects.filter(name="after").count() == 1, "write after the recovery is visible")

    with step("an error in autocommit (duplicate key), then recovery"):
        failed = False
        try:
            Item.objects.create(pk=first.pk, name="dup", v=50)
        except IntegrityError:
            failed = True
        expect(failed, "duplicate primary key raises IntegrityError")
        on_replica("a read after the failed insert")
        names = sorted(Item.objects.values_list("name", flat=True))
        expect(names == ["after", "first", "outer"], f"rows at the end: {names}")

    run_more()
    run_prepared()


def write_port(pk):
    """A raw autocommit UPDATE of row `pk` that returns the port it ran on."""
    with connection.cursor() as cur:
        cur.execute(f"UPDATE {TABLE} SET v = v WHERE id = %s RETURNING inet_server_port()", [pk])
        return cur.fetchone()[0]


def run_more():
    with step("writes run on the primary"):
        item = Item.objects.create(name="w", v=1)
        port = write_port(item.pk)
        expect(port == PRIMARY, f"an autocommit UPDATE should run on the primary {PRIMARY}; got {port}")

    with step("read-your-writes: create then get it at once, 20 rounds"):
        for i in range(20):
            item = Item.objects.create(name=f"ryw{i}", v=100 + i)
            got = Item.objects.filter(pk=item.pk).values_list("name", "v").first()
            expect(got == (f"ryw{i}", 100 + i), f"round {i}: the row just created (id {item.pk}) is read: {got}")

    with step("after writes, autocommit reads reach both replicas again"):
        seen = set()
        for i in range(400):
            seen.add(on_replica("read after writes"))
            if seen == REPLICAS and i >= 20:
                break
            if seen != REPLICAS:
                time.sleep(0.02)
    expect(seen == REPLICAS, f"reads after writes should reach both replicas {sorted(REPLICAS)}; saw {seen}")

    with step("a read-only transaction (SET TRANSACTION READ ONLY) runs on a replica and refuses writes (25006)"):
        sqlstate = None
        try:
            with transaction.atomic():
                with connection.cursor() as cur:
                    cur.execute("SET TRANSACTION READ ONLY")
                on_replica("first read of a read-only transaction")
                n = Item.objects.filter(name="w").count()
                expect(n == 1, f"the read-only transaction sees the committed row: {n}")
                on_replica("later read of a read-only transaction")
                Item.objects.create(name="ro", v=0)
        except InternalError as e:
            sqlstate = getattr(e.__cause__, "sqlstate", None)
        expect(sqlstate == "25006", f"a write in a read-only transaction fails with 25006; got {sqlstate}")
        expect(not Item.objects.filter(name="ro").exists(), "no row from the read-only transaction")
        expect(write_port(item.pk) == PRIMARY, "a write after the read-only transaction runs on the primary")

    with step("a 1 MB TextField saved and read back"):
        big = "".join(random.choice(string.ascii_letters) for _ in range(1 << 20))
        item = Item.objects.create(name="big", v=0, body=big)
        got = Item.objects.get(pk=item.pk).body
        expect(len(got) == 1 << 20 and got == big, f"1 MB body read back equal: length {len(got)}")
        row = Item.objects.filter(pk=item.pk).values_list(RawSQL("md5(body)", []), RawSQL("length(body)", [])).get()
        expect(row == (hashlib.md5(big.encode()).hexdigest(), 1 << 20), f"1 MB body md5, length: {row}")

    with step("an error in atomic(), then 25P02, rollback and recovery"):
        sqlstate = None
        try:
            with transaction.atomic():
                Item.objects.create(name="doomed2", v=0)
                try:
                    with connection.cursor() as cur:
                        cur.execute("SELECT 1/0")
                    expect(False, "SELECT 1/0 should fail")
                except DatabaseError:
                    pass
                try:
                    Item.objects.count()
                except InternalError as e:
                    sqlstate = getattr(e.__cause__, "sqlstate", None)
                raise Undo()
        except Undo:
            pass
        expect(sqlstate == "25P02", f"a query after the error fails with 25P02; got {sqlstate}")
        expect(not Item.objects.filter(name="doomed2").exists(), "the row created before the error was rolled back")
        on_replica("a read after the rollback")
        expect(write_port(item.pk) == PRIMARY, "a write after the rollback runs on the primary")


def run_prepared():
    prepared = connections["prepared"]
    items = Item.objects.using("prepared")
    where_ = {"r": RawSQL("pg_is_in_recovery()", []), "p": RawSQL("inet_server_port()", [])}
    first = items.filter(name="first").values_list("pk", flat=True).get()

    with step('"prepared" alias: one ORM read at least 20 times, until both replicas ran it'):
        prepared.ensure_connection()
        expect(prepared.connection.prepare_threshold == 0, "psycopg prepares every query on this alias")
        seen = set()
        zone = {"z": RawSQL("current_setting('TimeZone')", [])}
        for i in range(400):
            row = items.filter(pk=first).annotate(**where_, **zone).values_list("name", "r", "p", "z").get()
            expect(row[3] == "UTC", f"Django's set_config('TimeZone', $1, false) holds on {row[2]}: {row}")
            expect(row[0] == "first" and row[1] is True and row[2] in REPLICAS,
                   f"prepared read {i} should run on a replica {sorted(REPLICAS)}: {row}")
            seen.add(row[2])
            if seen == REPLICAS and i >= 20:
                break
            if seen != REPLICAS:
                time.sleep(0.02)
        expect(seen == REPLICAS, f"prepared reads should reach both replicas; saw {sorted(seen)}")

    with step('"prepared" alias: read-your-writes, 20 rounds'):
        for i in range(20):
            item = items.create(name=f"prw{i}", v=200 + i)
            got = items.filter(pk=item.pk).values_list("name", "v").first()
            expect(got == (f"prw{i}", 200 + i), f"round {i}: the row just created (id {item.pk}) is read: {got}")

    with step('"prepared" alias: the same prepared read in atomic() on the primary'):
        with transaction.atomic(using="prepared"):
            for i in range(5):
                row = items.filter(pk=first).annotate(**where_).values_list("name", "r", "p").get()
                expect(row == ("first", False, PRIMARY), f"prepared read {i} in atomic() on the primary: {row}")
            items.filter(pk=first).update(v=3)
            with prepared.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_prepared_statements "
                            "WHERE statement LIKE %s AND statement LIKE %s", [f"%{TABLE}%", "%inet_server_port()%"])
                n = cur.fetchone()[0]
            expect(n >= 1, f"the ORM read is a server-side prepared statement on the primary: {n} found")
        expect(items.filter(pk=first).values_list("v", flat=True).get() == 3, "update in atomic() committed")


if __name__ == "__main__":
    main()
