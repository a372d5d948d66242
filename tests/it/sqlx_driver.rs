//! sqlx (Rust, crates.io) through pgsplit: its own migrations (up, then undone), its prepared-statement cache
//! (named statements reused as the client moves between replicas), `persistent(false)` (unnamed statements), its
//! simple-protocol `raw_sql`, its transactions with a savepoint rolled back, a read-only transaction, an error
//! and recovery, a 1 MB parameter, read-your-writes, and a pool running queries at once. Every check says on
//! which server the statement ran.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::common::*;

/// The reversible migrations the test applies and undoes: one table with an index.
const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/sqlx_migrations");
const TABLE: &str = "drv_sqlx_items";
const WHERE: &str = "SELECT pg_is_in_recovery(), inet_server_port()";
const READ: &str = "SELECT $1::int4, pg_is_in_recovery(), inet_server_port()";

fn options(statement_cache: usize) -> PgConnectOptions {
    PgConnectOptions::from_str(&url(env().proxy, APP))
        .expect("pgsplit's URL")
        .statement_cache_capacity(statement_cache)
}

/// `(in recovery, port)` of the server that ran `WHERE` on `conn`.
async fn server<'c>(conn: impl Executor<'c, Database = sqlx::Postgres>) -> (bool, u16) {
    let row = sqlx::query(WHERE).fetch_one(conn).await.expect(WHERE);
    (row.get(0), port(&row, 1))
}

fn port(row: &sqlx::postgres::PgRow, i: usize) -> u16 {
    u16::try_from(row.get::<i32, _>(i)).expect("a port")
}

/// Runs `READ` (persistent: a named statement from sqlx's cache, else unnamed) at least 30 times, and until it
/// has run on both replicas (at most 10 s: right after the client's own writes only the replicas known to have
/// them take its reads, the others once the monitor sees them caught up); each run on a replica. Returns the
/// servers it ran on.
async fn reads_on_replicas(conn: &mut PgConnection, persistent: bool) -> BTreeSet<u16> {
    let mut seen = BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 0.. {
        if i >= 30 && (seen.len() == 2 || std::time::Instant::now() > deadline) {
            break;
        }
        let row = sqlx::query(READ)
            .bind(i)
            .persistent(persistent)
            .fetch_one(&mut *conn)
            .await
            .expect("a prepared read");
        let (v, recovery, at) = (row.get::<i32, _>(0), row.get::<bool, _>(1), port(&row, 2));
        assert!(
            v == i && recovery && replica_ports().contains(&at),
            "read {i} (persistent {persistent}) should run on a replica {:?}: got ({v}, {recovery}, {at})",
            replica_ports()
        );
        seen.insert(at);
    }
    seen
}

/// An autocommit insert, then at once a read of the row: never stale, 20 times.
async fn read_your_writes(conn: &mut PgConnection, persistent: bool, round: &str) {
    for i in 0..20 {
        let name = format!("ryw-{round}-{i}");
        let at: i32 = sqlx::query_scalar(&format!(
            "INSERT INTO {TABLE} (name, v) VALUES ($1, $2) RETURNING inet_server_port()"
        ))
        .bind(&name)
        .bind(i)
        .persistent(persistent)
        .fetch_one(&mut *conn)
        .await
        .expect("an autocommit insert");
        assert_eq!(
            at,
            i32::from(primary_port()),
            "the insert runs on the primary"
        );
        let row = sqlx::query(&format!("SELECT v FROM {TABLE} WHERE name = $1"))
            .bind(&name)
            .persistent(persistent)
            .fetch_optional(&mut *conn)
            .await
            .expect("the read after the write");
        let v = row.map(|r| r.get::<i32, _>(0));
        assert_eq!(
            v,
            Some(i),
            "a read right after its own write sees it ({name})"
        );
    }
}

#[test]
fn sqlx_migrations_statement_cache_transactions_and_pool() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(240), run())
            .await
            .expect("the sqlx test timed out");
    });
}

async fn run() {
    let migrator = Migrator::new(Path::new(MIGRATIONS))
        .await
        .expect("the migrations");
    // sqlx's own schema step, on a connection of its own as at an application's start: it holds a session
    // advisory lock around the migrations (each in a transaction), which pins that client to its connections
    // until it releases the lock.
    let mut migrating = PgConnection::connect_with(&options(100))
        .await
        .expect("connect with sqlx");
    migrator
        .run(&mut migrating)
        .await
        .expect("sqlx migrate run");
    let exists: bool = sqlx::query_scalar(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"))
        .fetch_one(&mut migrating)
        .await
        .expect("the migrated table");
    assert!(exists, "the table exists");
    // The lock is released: the migrating client's reads are split again.
    let seen = reads_on_replicas(&mut migrating, true).await;
    assert_eq!(
        seen.len(),
        2,
        "after the migrations, reads reach both replicas: {seen:?}"
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut migrating)
        .await
        .expect("sqlx's migrations table");
    assert_eq!(applied, 1, "one migration recorded");
    migrating.close().await.expect("close");

    let mut conn = PgConnection::connect_with(&options(100))
        .await
        .expect("connect with sqlx");
    // The statement cache: named statements, prepared once per server connection and reused after moves.
    let seen = reads_on_replicas(&mut conn, true).await;
    assert_eq!(seen.len(), 2, "cached reads reach both replicas: {seen:?}");
    read_your_writes(&mut conn, true, "cached").await;
    // persistent(false): unnamed statements.
    let seen = reads_on_replicas(&mut conn, false).await;
    assert_eq!(seen.len(), 2, "unnamed reads reach both replicas: {seen:?}");
    read_your_writes(&mut conn, false, "unnamed").await;
    // raw_sql: the simple protocol, several statements in one message.
    let rows = sqlx::raw_sql(&format!(
        "SELECT count(*) FROM {TABLE}; SELECT pg_is_in_recovery(), inet_server_port()"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("raw_sql");
    assert_eq!(rows.len(), 2, "two statements, one row each");
    assert_eq!(rows[0].get::<i64, _>(0), 40, "40 rows written so far");
    assert!(
        rows[1].get::<bool, _>(0) && replica_ports().contains(&port(&rows[1], 1)),
        "a simple-protocol read runs on a replica"
    );

    transactions(&mut conn).await;
    large_parameter(&mut conn).await;
    error_then_recovery(&mut conn).await;
    pool().await;

    migrator
        .undo(&mut conn, 0)
        .await
        .expect("sqlx migrate undo");
    let gone: bool = sqlx::query_scalar(&format!(
        "/* pgsplit:primary */ SELECT to_regclass('{TABLE}') IS NULL"
    ))
    .fetch_one(&mut conn)
    .await
    .expect("the table after undo");
    assert!(gone, "the down migration dropped {TABLE}");
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(&mut conn)
        .await
        .expect("drop sqlx's table");
    conn.close().await.expect("close");
}

/// A transaction on the primary with a savepoint rolled back (sqlx's nested `begin`), and a read-only
/// transaction on a replica that refuses a write.
async fn transactions(conn: &mut PgConnection) {
    let mut tx = conn.begin().await.expect("BEGIN");
    assert_eq!(server(&mut *tx).await, (false, primary_port()));
    sqlx::query(&format!("INSERT INTO {TABLE} (name, v) VALUES ('kept', 1)"))
        .execute(&mut *tx)
        .await
        .expect("insert before the savepoint");
    let mut nested = tx.begin().await.expect("SAVEPOINT");
    sqlx::query(&format!(
        "INSERT INTO {TABLE} (name, v) VALUES ('rolled back', 2)"
    ))
    .execute(&mut *nested)
    .await
    .expect("insert after the savepoint");
    nested.rollback().await.expect("ROLLBACK TO SAVEPOINT");
    // The prepared read of the statement cache, now inside the transaction: on the primary.
    let row = sqlx::query(READ)
        .bind(7)
        .fetch_one(&mut *tx)
        .await
        .expect("a cached read in the transaction");
    assert_eq!(
        (row.get::<i32, _>(0), row.get::<bool, _>(1), port(&row, 2)),
        (7, false, primary_port())
    );
    tx.commit().await.expect("COMMIT");
    let names: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM {TABLE} WHERE name IN ('kept', 'rolled back') ORDER BY name"
    ))
    .fetch_all(&mut *conn)
    .await
    .expect("after the commit");
    assert_eq!(
        names,
        ["kept"],
        "the savepoint's insert is rolled back, the rest committed"
    );

    let mut ro = conn
        .begin_with("BEGIN READ ONLY")
        .await
        .expect("BEGIN READ ONLY");
    let (recovery, at) = server(&mut *ro).await;
    assert!(
        recovery && replica_ports().contains(&at),
        "a read-only transaction runs on a replica: ({recovery}, {at})"
    );
    let err = sqlx::query(&format!("INSERT INTO {TABLE} (name, v) VALUES ('ro', 3)"))
        .execute(&mut *ro)
        .await
        .expect_err("a write in a read-only transaction");
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");
    ro.rollback().await.expect("ROLLBACK");
}

/// A 1 MB text parameter, written and read back.
async fn large_parameter(conn: &mut PgConnection) {
    let big: String = (0..1 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO {TABLE} (name, v, body) VALUES ('big', 0, $1)"
    ))
    .bind(&big)
    .execute(&mut *conn)
    .await
    .expect("insert 1 MB");
    let back: String = sqlx::query_scalar(&format!("SELECT body FROM {TABLE} WHERE name = 'big'"))
        .fetch_one(&mut *conn)
        .await
        .expect("read 1 MB back");
    assert!(
        back == big,
        "1 MB read back equal (got {} bytes)",
        back.len()
    );
}

/// An error in a transaction: the next statement fails with 25P02; after the rollback the connection reads
/// on a replica and writes on the primary.
async fn error_then_recovery(conn: &mut PgConnection) {
    let mut tx = conn.begin().await.expect("BEGIN");
    let err = sqlx::query("SELECT 1 / $1")
        .bind(0)
        .execute(&mut *tx)
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err}");
    let err = sqlx::query(READ)
        .bind(1)
        .execute(&mut *tx)
        .await
        .expect_err("a statement in a failed transaction");
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err}");
    tx.rollback().await.expect("ROLLBACK");
    let (recovery, at) = server(&mut *conn).await;
    assert!(
        recovery && replica_ports().contains(&at),
        "a read after the rollback runs on a replica"
    );
    read_your_writes(conn, true, "after the rollback").await;
}

/// A pool of 4 connections running 40 queries at once: reads on replicas, writes on the primary.
async fn pool() {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options(100))
        .await
        .expect("a sqlx pool");
    let queries = (0..40).map(|i| {
        let pool = pool.clone();
        async move {
            if i % 4 == 0 {
                let at: i32 = sqlx::query_scalar(&format!(
                    "INSERT INTO {TABLE} (name, v) VALUES ($1, $2) RETURNING inet_server_port()"
                ))
                .bind(format!("pool-{i}"))
                .bind(i)
                .fetch_one(&pool)
                .await
                .expect("a pooled write");
                assert_eq!(
                    at,
                    i32::from(primary_port()),
                    "a pooled write on the primary"
                );
            } else {
                let row = sqlx::query(READ)
                    .bind(i)
                    .fetch_one(&pool)
                    .await
                    .expect("a pooled read");
                assert!(
                    row.get::<i32, _>(0) == i
                        && row.get::<bool, _>(1)
                        && replica_ports().contains(&port(&row, 2)),
                    "a pooled read on a replica"
                );
            }
        }
    });
    futures_util::future::join_all(queries).await;
    let written: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {TABLE} WHERE name LIKE 'pool-%'"
    ))
    .fetch_one(&pool)
    .await
    .expect("count the pooled writes");
    assert_eq!(written, 10);
    pool.close().await;
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}
