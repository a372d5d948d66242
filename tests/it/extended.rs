//! The extended query protocol in transaction pooling: pgbench in extended and prepared modes, pipelining,
//! portals with a row limit, an error mid-pipeline, statements re-prepared on other servers, and a name reused
//! for another text after Close.

use std::time::Duration;

use crate::common::wire::{self, first_value, Raw};
use crate::common::*;
use futures_util::future::join_all;
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_and_prepared_with_32_clients_over_pools_of_4() {
    let env = env();
    let proxy = spawn_proxy(config(&env.cluster, 4, 4, ""));
    let u = url(proxy, APP);
    tokio::task::spawn_blocking(move || {
        let _tables = pgbench_tables();
        pgbench_init(&env.cluster, &u);
        for mode in ["extended", "prepared"] {
            for script in [&["-S"][..], &[][..]] {
                let mut args = vec!["-M", mode, "-c", "32", "-j", "2", "-t", "50"];
                args.extend_from_slice(script);
                let (_, stderr) = pgbench(&u, &args);
                assert!(
                    !stderr.contains("already exists"),
                    "pgbench {args:?}: {stderr}"
                );
            }
        }
    })
    .await
    .expect("pgbench runs");
}

/// A standalone prepare (Parse + Sync outside a transaction, libpq's PQprepare) never waits for a pool slot: a
/// synchronous client whose other connection holds the slot would wait for itself (pgbench prepares on one thread
/// for all its clients, and starved for 20 s under load). The slot here is taken by a connection still logging
/// in through a slow relay: the pool does not look full, yet nothing is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_prepare_never_waits_for_a_pool_slot() {
    use pgsplit_harness::relay::{Fault, Relay};
    let env = env();
    let relay = Relay::start(env.cluster.primary().port).expect("relay");
    let mut cfg = config(&env.cluster, 1, 1, "");
    cfg.primary.port = relay.port();
    cfg.timeouts.pool_wait = Duration::from_secs(3);
    // An idle server connection is not reused after 100 ms: the next write logs in afresh.
    cfg.timeouts.server_idle = Duration::from_millis(100);
    let proxy = spawn_proxy(cfg);
    // Both as `trustclient`: one pool.
    let a = connect_to(proxy, TRUST).await.expect("a");
    let mut b = tokio::task::block_in_place(|| Raw::login(proxy, Duration::from_secs(10), &[]));
    a.batch_execute(
        "DROP TABLE IF EXISTS standalone_prepare; CREATE TABLE standalone_prepare (id int)",
    )
    .await
    .expect("table");
    tokio::time::sleep(Duration::from_millis(300)).await;

    relay.set(Fault::Delay(Duration::from_millis(200)));
    let a = tokio::spawn(async move {
        a.batch_execute("BEGIN; INSERT INTO standalone_prepare VALUES (1)")
            .await
            .map(|()| a)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The write holds the primary pool's only slot while it logs in, then stays in its transaction until this
    // prepare has been answered, as a synchronous client's would.
    let prepared = tokio::task::block_in_place(|| {
        // In one write, as libpq sends it.
        b.send(
            &[
                wire::parse("insert", "INSERT INTO standalone_prepare VALUES (2)", &[]),
                wire::sync(),
            ]
            .concat(),
        );
        b.until_ready()
    });
    relay.set(Fault::Pass);
    let a = a.await.expect("task").expect("the first write");
    let tags: Vec<u8> = prepared.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        tags,
        b"1Z",
        "ParseComplete while the pool's only slot is taken: {:?}",
        prepared
            .iter()
            .map(|(t, body)| (*t as char, String::from_utf8_lossy(body).into_owned()))
            .collect::<Vec<_>>()
    );
    a.batch_execute("COMMIT").await.expect("commit");
    // Prepared on the server the Bind went to.
    let executed = tokio::task::block_in_place(|| {
        b.bind_execute("insert");
        b.sync();
        b.until_ready()
    });
    assert!(executed.iter().any(|(t, _)| *t == b'C'), "{executed:?}");
    let rows = a
        .query_one(
            "/* pgsplit:primary */ SELECT count(*)::int4 FROM standalone_prepare WHERE id IN (1, 2)",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(rows.get::<_, i32>(0), 2);
    a.batch_execute("DROP TABLE standalone_prepare")
        .await
        .expect("drop");
}

#[tokio::test]
async fn pipelined_queries_and_an_error_mid_pipeline() {
    let c = connect().await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS pipe_t (id int PRIMARY KEY)")
        .await
        .expect("create");
    let read = c
        .prepare("SELECT $1::int4 + 1, pg_is_in_recovery()")
        .await
        .expect("prepare");
    // Many queries in flight at once on one connection (tokio-postgres pipelines them).
    let futures = (0..50).map(|i| {
        let c = &c;
        let read = &read;
        async move { c.query_one(read, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
    });
    let results = join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("pipelined query"), i as i32 + 1);
    }
    // An error in the middle of a pipeline fails that query only; the ones around it behave as with Postgres.
    let ok1 = c.query_one("SELECT 1::int4", &[]);
    let bad = c.query_one("SELECT 1/0", &[]);
    let ok2 = c.query_one("SELECT 2::int4", &[]);
    let (ok1, bad, ok2) = futures_util::join!(ok1, bad, ok2);
    assert_eq!(ok1.expect("before the error").get::<_, i32>(0), 1);
    assert_eq!(
        bad.expect_err("division by zero").code(),
        Some(&SqlState::DIVISION_BY_ZERO)
    );
    assert_eq!(ok2.expect("after the error").get::<_, i32>(0), 2);
}

#[tokio::test]
async fn a_portal_with_a_row_limit_suspends_and_resumes() {
    let mut c = connect().await;
    let tx = c.transaction().await.expect("begin");
    let stmt = tx
        .prepare("SELECT g FROM generate_series(1, 100) g")
        .await
        .expect("prepare");
    let portal = tx.bind(&stmt, &[]).await.expect("bind");
    let mut seen = Vec::new();
    loop {
        let rows = tx
            .query_portal(&portal, 10)
            .await
            .expect("execute with max_rows 10");
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 10);
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(seen, (1..=100).collect::<Vec<i32>>());
    tx.commit().await.expect("commit");
}

/// A raw protocol client logged in as the trust user on the default proxy.
fn raw() -> Raw {
    Raw::login(env().proxy, Duration::from_secs(10), &[])
}

#[test]
fn a_statement_name_reused_for_another_text_after_close() {
    let mut c = raw();
    c.parse("s1", "SELECT 'first'::text");
    c.sync();
    let tags: Vec<u8> = c.until_ready().iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"1Z");
    c.bind_execute("s1");
    c.sync();
    assert_eq!(first_value(&c.until_ready()).as_deref(), Some("first"));
    c.send(&wire::close(b'S', "s1"));
    c.sync();
    let tags: Vec<u8> = c.until_ready().iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"3Z", "CloseComplete then ReadyForQuery");
    c.parse("s1", "SELECT 'second'::text");
    c.bind_execute("s1");
    c.sync();
    let replies = c.until_ready();
    assert_eq!(first_value(&replies).as_deref(), Some("second"));
    // Many more executions, moved over servers between units: always the second text.
    for _ in 0..10 {
        c.bind_execute("s1");
        c.sync();
        assert_eq!(first_value(&c.until_ready()).as_deref(), Some("second"));
    }
    // A duplicate name is reported as Postgres does.
    c.parse("s1", "SELECT 3");
    c.sync();
    let replies = c.until_ready();
    let err = replies
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("duplicate statement error");
    assert!(
        String::from_utf8_lossy(&err.1).contains("42P05"),
        "{:?}",
        String::from_utf8_lossy(&err.1)
    );
}

#[test]
fn a_function_call_message_runs_on_the_primary() {
    let mut c = raw();
    // FunctionCall: pg_is_in_recovery (oid 3810), no arguments, text result.
    let mut b = 3810u32.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    c.send(&wire::msg(b'F', &b));
    let replies = c.until_ready();
    let (_, v) = replies
        .iter()
        .find(|(t, _)| *t == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(
        &v[4..],
        b"f",
        "pg_is_in_recovery() via FunctionCall ran on the primary"
    );
}

#[test]
fn a_statement_prepared_first_in_a_transaction_reads_on_replicas_after_it() {
    let mut c = raw();
    c.query("BEGIN");
    c.until_ready();
    // The Parse decides the deferred transaction's server (the primary); the statement itself is a read.
    c.parse("inside", "SELECT pg_is_in_recovery()::text");
    c.sync();
    c.until_ready();
    c.bind_execute("inside");
    c.sync();
    assert_eq!(
        first_value(&c.until_ready()).as_deref(),
        Some("false"),
        "in the transaction: the primary"
    );
    c.query("COMMIT");
    c.until_ready();
    for i in 0..4 {
        c.bind_execute("inside");
        c.sync();
        assert_eq!(
            first_value(&c.until_ready()).as_deref(),
            Some("true"),
            "execution {i} after the transaction: a replica"
        );
    }
}

#[test]
fn set_config_with_a_bound_parameter_is_followed_to_every_server() {
    let mut c = raw();
    // As Django sends it with server-side binding: the value is a text parameter.
    c.send(&wire::parse(
        "",
        "SELECT set_config('TimeZone', $1, false)",
        &[],
    ));
    c.send(&wire::bind("", "", &[Some(b"America/Chicago")]));
    c.send(&wire::execute("", 0));
    c.sync();
    assert_eq!(
        first_value(&c.until_ready()).as_deref(),
        Some("America/Chicago")
    );
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        c.query("SELECT current_setting('TimeZone') || ' ' || inet_server_port()");
        let row = first_value(&c.until_ready()).expect("a row");
        let (zone, port) = row.split_once(' ').expect("zone and port");
        assert_eq!(zone, "America/Chicago", "read {i} on {port}");
        seen.insert(port.to_string());
    }
    assert!(
        seen.len() >= 2,
        "the client is not kept on its first server: reads ran on {seen:?}"
    );
}
