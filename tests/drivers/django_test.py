"""Django ORM (standalone, psycopg 3 backend) through pgsplit: `migrate --run-syncdb` creates the model's table
on the primary, a save then a read that sees it, autocommit reads on replicas, transaction.atomic() with a nested
atomic (savepoint) rolled back, and errors (in and out of a transaction) then recovery.

The model lives in tests/drivers/django_app/. Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS
(comma-separated). Prints `OK django_test.py`."""

import faulthandler
import os
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


settings.configure(
    DATABASES={"default": database_settings(URL)},
    INSTALLED_APPS=["django_app"],  # tests/drivers is on sys.path as the script's directory
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import DatabaseError, IntegrityError, connection, transaction  # noqa: E402

from django_app.models import Item  # noqa: E402


_script = Script(NAME, DatabaseError)
expect, step = _script.expect, _script.step




def where():
    with connection.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery(), inet_server_port()")
        return cur.fetchone()


def on_primary(what):
    row = where()
    expect(tuple(row) == (False, PRIMARY), f"{what}: should run on the primary {PRIMARY}; got {row}")


def on_replica(what):
    row = where()
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
        connection.close()
    print(f"OK {NAME}")


def run():
    expect(connection.get_autocommit(), "Django runs in autocommit outside atomic()")

    with step("autocommit reads go to replicas"):
        seen = {on_replica("autocommit read") for _ in range(40)}
    expect(seen == REPLICAS, f"40 autocommit reads should reach both replicas {sorted(REPLICAS)}; saw {seen}")

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
        class Undo(Exception):
            pass

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


if __name__ == "__main__":
    main()
