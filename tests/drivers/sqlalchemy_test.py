"""SQLAlchemy 2 ORM (psycopg 3 dialect) through pgsplit: DDL by metadata.create_all and ORM writes on the
primary, read-your-writes after a commit (and 20 rounds of autocommit insert then select), autocommit reads on
both replicas, a rolled-back savepoint, a read-only transaction on a replica whose write fails with 25006, an
error in a transaction then 25P02 then rollback and recovery, a 1 MB parameter (stored and read back) and a
statement psycopg prepares (on both replicas, then in a transaction on the primary).

Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK sqlalchemy_test.py`."""

import faulthandler
import hashlib
import os
import random
import string
import time

import sqlalchemy
from sqlalchemy import Integer, String, Text, create_engine, func, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from driver_common import PRIMARY, REPLICAS, URL, Script

NAME = "sqlalchemy_test.py"
TABLE = f"drv_sqlalchemy_{os.getpid()}"

WHERE = text("SELECT pg_is_in_recovery(), inet_server_port()")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    v: Mapped[int] = mapped_column(Integer)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)


_script = Script(NAME, sqlalchemy.exc.SQLAlchemyError)
expect, step = _script.expect, _script.step




def on_primary(row, what):
    expect(tuple(row) == (False, PRIMARY), f"{what}: should run on the primary {PRIMARY}; got {tuple(row)}")


def on_replica(row, what):
    expect(row[0] is True and row[1] in REPLICAS,
           f"{what}: should run on a replica {sorted(REPLICAS)}; got {tuple(row)}")
    return row[1]


def main():
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails the test instead of blocking it
    url = URL.replace("postgresql://", "postgresql+psycopg://", 1).replace("postgres://", "postgresql+psycopg://", 1)
    engine = create_engine(url, connect_args={"connect_timeout": 10})
    try:
        with step("metadata.create_all"):
            Base.metadata.create_all(engine)
        try:
            run(engine)
        finally:
            Base.metadata.drop_all(engine)
            with engine.connect() as conn:
                gone = conn.execute(text(f"/* pgsplit:primary */ SELECT to_regclass('{TABLE}') IS NULL")).scalar()
            expect(gone is True, f"table {TABLE} should be dropped")
    finally:
        engine.dispose()
    print(f"OK {NAME}")


def run(engine):
    with step("the table created by create_all is on the primary"):
        with engine.connect() as conn:
            exists = conn.execute(text(f"SELECT to_regclass('{TABLE}') IS NOT NULL, inet_server_port()")).one()
        expect(tuple(exists) == (True, PRIMARY), f"create_all's table seen in a transaction on the primary: {exists}")

    with step("ORM insert and commit"):
        with Session(engine) as session:
            session.add(Item(id=1, name="first", v=10))
            session.flush()
            on_primary(session.execute(WHERE).one(), "a statement in the ORM write transaction")
            session.commit()

    with step("read-your-writes: a new transaction, then an autocommit read right after the commit"):
        with Session(engine) as session:
            item = session.get(Item, 1)
            expect(item is not None and item.name == "first" and item.v == 10, f"new session reads the row: {item}")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            row = conn.execute(select(Item.name, Item.v).where(Item.id == 1)).one_or_none()
            expect(row is not None and tuple(row) == ("first", 10), f"autocommit read after the commit: {row}")

    with step("autocommit reads go to replicas"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            expect(conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is True,
                   "SELECT pg_is_in_recovery() outside a transaction should run on a replica")
            seen = set()
            for i in range(400):  # right after the writes above only replicas that replayed them take reads
                seen.add(on_replica(conn.execute(WHERE).one(), "autocommit read"))
                if seen == REPLICAS and i >= 40:
                    break
                if seen != REPLICAS:
                    time.sleep(0.02)
        expect(seen == REPLICAS, f"autocommit reads should reach both replicas {sorted(REPLICAS)}; saw {seen}")

    with step("read-your-writes: autocommit insert then select it at once, 20 rounds"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for i in range(20):
                row = conn.execute(insert(Item).values(id=100 + i, name=f"ryw{i}", v=i)
                                   .returning(func.inet_server_port())).one()
                expect(row[0] == PRIMARY, f"round {i}: autocommit insert on the primary; got {tuple(row)}")
                got = conn.execute(select(Item.name, Item.v).where(Item.id == 100 + i)).one_or_none()
                expect(got is not None and tuple(got) == (f"ryw{i}", i), f"round {i}: the row just inserted: {got}")
            conn.execute(sqlalchemy.delete(Item).where(Item.id >= 100))

    with step("a savepoint rolled back inside a committed transaction"):
        with Session(engine) as session:
            with session.begin():
                session.add(Item(id=2, name="outer", v=20))
                nested = session.begin_nested()
                session.add(Item(id=3, name="inner", v=30))
                session.flush()
                expect(session.scalar(select(func.count()).select_from(Item).where(Item.id == 3)) == 1,
                       "the row inserted in the savepoint is visible before its rollback")
                nested.rollback()
                on_primary(session.execute(WHERE).one(), "a statement after the savepoint's rollback")
        with Session(engine) as session:
            ids = session.scalars(select(Item.id).order_by(Item.id)).all()
        expect(ids == [1, 2], f"after the savepoint's rollback the table holds ids [1, 2]; got {ids}")

    with step("a read-only transaction runs on a replica"):
        with engine.connect().execution_options(postgresql_readonly=True) as conn:
            with conn.begin():
                on_replica(conn.execute(WHERE).one(), "first statement of a read-only transaction")
                n = conn.execute(select(func.count()).select_from(Item)).scalar()
                expect(n == 2, f"read-only transaction counts 2 rows; got {n}")
                on_replica(conn.execute(WHERE).one(), "later statement of a read-only transaction")
        sqlstate = None
        try:
            with engine.connect().execution_options(postgresql_readonly=True) as conn:
                with conn.begin():
                    on_replica(conn.execute(WHERE).one(), "a read-only transaction that writes")
                    conn.execute(insert(Item).values(id=90, name="ro", v=0))
        except sqlalchemy.exc.DBAPIError as e:
            sqlstate = getattr(e.orig, "sqlstate", None)
        expect(sqlstate == "25006", f"a write in a read-only transaction fails with 25006; got {sqlstate}")

    with step("an error inside a transaction, rollback, recovery"):
        with Session(engine) as session:
            session.add(Item(id=4, name="doomed", v=40))
            session.flush()
            failed = False
            try:
                session.execute(text("SELECT 1/0"))
            except sqlalchemy.exc.DBAPIError as e:
                failed = "division by zero" in str(e)
            expect(failed, "division by zero reaches the session")
            sqlstate = None
            try:
                session.execute(text("SELECT 1"))
            except sqlalchemy.exc.DBAPIError as e:
                sqlstate = getattr(e.orig, "sqlstate", None)
            expect(sqlstate == "25P02", f"a statement after the error fails with 25P02; got {sqlstate}")
            session.rollback()
            expect(session.get(Item, 4) is None, "the row inserted before the error was rolled back")
            session.add(Item(id=5, name="after", v=50))
            session.commit()
            on_primary(session.execute(WHERE).one(), "the session after its recovery")
            session.commit()
        with Session(engine) as session:
            ids = session.scalars(select(Item.id).order_by(Item.id)).all()
        expect(ids == [1, 2, 5], f"after the error and recovery the table holds ids [1, 2, 5]; got {ids}")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            on_replica(conn.execute(WHERE).one(), "an autocommit read after the recovery")

    with step("a 1 MB parameter round trip"):
        big = "x" * (1 << 20)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            row = conn.execute(text("SELECT length(:b), md5(:b) = md5(repeat('x', 1048576)), pg_is_in_recovery()"),
                               {"b": big}).one()
        expect(tuple(row) == (1 << 20, True, True), f"1 MB parameter read on a replica: {tuple(row)}")
        with Session(engine) as session:
            session.add(Item(id=6, name="big", v=len(big)))
            session.commit()
            back = session.execute(text(f"SELECT length(name || :b) FROM {TABLE} WHERE id = 6"), {"b": big}).scalar()
        expect(back == len("big") + (1 << 20), f"1 MB parameter in a write transaction: {back}")
        body = "".join(random.choice(string.ascii_letters) for _ in range(1 << 20))
        with Session(engine) as session:
            session.add(Item(id=7, name="body", v=0, body=body))
            session.commit()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            row = conn.execute(select(func.length(Item.body), func.md5(Item.body), Item.body).where(Item.id == 7)).one()
        expect((row[0], row[1]) == (1 << 20, hashlib.md5(body.encode()).hexdigest()) and row[2] == body,
               f"1 MB text stored and read back (length, md5): {(row[0], row[1])}")

    with step("one statement executed many times (psycopg prepares it after 5)"):
        query = select(Item.name, func.pg_is_in_recovery(), func.inet_server_port()).where(Item.id == 1)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            seen = set()
            for i in range(400):  # right after the writes above only replicas that replayed them take reads
                row = conn.execute(query).one()
                expect(row[0] == "first", f"prepared read {i}: {tuple(row)}")
                seen.add(on_replica(row[1:], f"prepared autocommit read {i}"))
                if seen == REPLICAS and i >= 30:
                    break
                if seen != REPLICAS:
                    time.sleep(0.02)
        expect(seen == REPLICAS, f"the prepared read should reach both replicas; saw {sorted(seen)}")
        with Session(engine) as session:
            for i in range(30):
                row = session.execute(query).one()
                expect(row[0] == "first", f"prepared read {i} in a transaction: {tuple(row)}")
                on_primary(row[1:], f"prepared read {i} in a transaction")
                session.execute(sqlalchemy.update(Item).where(Item.id == 1).values(v=Item.v + 1))
            session.commit()
        with Session(engine) as session:
            v = session.scalar(select(Item.v).where(Item.id == 1))
        expect(v == 40, f"30 prepared updates: v should be 40; got {v}")


if __name__ == "__main__":
    main()
