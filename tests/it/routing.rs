//! Routing rules end to end (docs/ARCHITECTURE.md §3–§4): writes never reach a replica, read-only transactions run on
//! replicas, session settings follow the client across pooled servers, hints, balancers and fallback.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The first value of the first row.
async fn value(c: &Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}

async fn setup_schema() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let c = connect().await;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
             INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 100) g ON CONFLICT DO NOTHING;
             CREATE SEQUENCE IF NOT EXISTS routing_seq;
             CREATE TABLE IF NOT EXISTS audit (at timestamptz DEFAULT now(), what text);
             CREATE SCHEMA IF NOT EXISTS tenant_a;
             CREATE TABLE IF NOT EXISTS tenant_a.marker (name text);
             INSERT INTO tenant_a.marker SELECT 'tenant_a' WHERE NOT EXISTS (SELECT 1 FROM tenant_a.marker);
             CREATE OR REPLACE FUNCTION record_visit(who text) RETURNS int LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO audit (what) VALUES (who); RETURN 1; END $$;",
        )
        .await
        .expect("schema");
        for r in ["replica1", "replica2"] {
            env().cluster.wait_replayed(r, Duration::from_secs(30)).expect("replicated");
        }
    })
    .await;
}

#[tokio::test]
async fn writes_and_locking_reads_never_reach_a_replica() {
    setup_schema().await;
    let c = connect().await;
    let superuser = connect_to(env().proxy, TRUST).await.expect("superuser");
    let primary = primary_port().to_string();
    for sql in [
        "SELECT inet_server_port() FROM nextval('routing_seq')",
        "SELECT inet_server_port(), setval('routing_seq', 10)",
        "SELECT inet_server_port() FROM accounts WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT inet_server_port() FROM accounts WHERE id = 2 FOR UPDATE SKIP LOCKED",
        "SELECT inet_server_port() FROM accounts WHERE id = 3 FOR SHARE",
        "SELECT inet_server_port() FROM accounts WHERE id = 4 FOR KEY SHARE NOWAIT",
        "WITH moved AS (UPDATE accounts SET balance = balance + 1 WHERE id = 5 RETURNING id) SELECT inet_server_port() FROM moved",
        "SELECT inet_server_port() FROM (SELECT record_visit('plpgsql')) f",
        "SELECT inet_server_port(), record_visit('again')",
        "SELECT inet_server_port(), pg_advisory_xact_lock(42)",
        "SELECT inet_server_port(), txid_current()",
        "/* pgsplit:primary */ SELECT inet_server_port()",
    ] {
        assert_eq!(value(&c, sql).await, primary, "{sql}");
    }
    // Statements classified as writes all succeed (on a replica each would fail with 25006).
    for sql in [
        "INSERT INTO audit (what) VALUES ('x')",
        "UPDATE accounts SET balance = balance WHERE id = 1",
        "DELETE FROM audit WHERE what = 'nothing'",
        "MERGE INTO accounts a USING (SELECT 1 AS id) s ON a.id = s.id WHEN MATCHED THEN UPDATE SET balance = a.balance",
        "CREATE TABLE IF NOT EXISTS ddl_t (a int)",
        "ALTER TABLE ddl_t ADD COLUMN IF NOT EXISTS b int",
        "CREATE INDEX IF NOT EXISTS ddl_t_a ON ddl_t (a)",
        "TRUNCATE ddl_t",
        "DO $$ BEGIN PERFORM 1; END $$",
        "VACUUM (ANALYZE) ddl_t",
        "ANALYZE ddl_t",
        "CHECKPOINT",
        "BEGIN; LOCK TABLE ddl_t IN SHARE MODE; COMMIT",
        "SELECT * INTO TEMP TABLE tmp_copy FROM accounts",
        "NOTIFY some_channel",
        "COMMENT ON TABLE ddl_t IS 'x'",
        "DROP TABLE IF EXISTS ddl_t",
    ] {
        superuser.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test]
async fn a_read_only_transaction_runs_on_a_replica_and_refuses_writes() {
    setup_schema().await;
    let c = connect().await;
    let replicas: HashSet<String> = replica_ports().iter().map(u16::to_string).collect();
    c.batch_execute("BEGIN READ ONLY")
        .await
        .expect("begin read only");
    let port = value(&c, "SELECT inet_server_port()").await;
    assert!(replicas.contains(&port), "BEGIN READ ONLY ran on {port}");
    assert_eq!(
        value(&c, "SELECT inet_server_port()").await,
        port,
        "the transaction stays on its replica"
    );
    let err = c
        .batch_execute("INSERT INTO audit (what) VALUES ('ro')")
        .await
        .expect_err("write in a read-only tx");
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    c.batch_execute("ROLLBACK").await.expect("rollback");

    // SET TRANSACTION READ ONLY as the first statement after a plain BEGIN.
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("SET TRANSACTION READ ONLY")
        .await
        .expect("set transaction");
    assert!(replicas.contains(&value(&c, "SELECT inet_server_port()").await));
    assert_eq!(value(&c, "SELECT pg_is_in_recovery()").await, "t");
    c.batch_execute("COMMIT").await.expect("commit");

    // A plain BEGIN followed by a read still runs on the primary (it may write later).
    c.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(
        value(&c, "SELECT inet_server_port()").await,
        primary_port().to_string()
    );
    c.batch_execute("INSERT INTO audit (what) VALUES ('rw')")
        .await
        .expect("write");
    c.batch_execute("COMMIT").await.expect("commit");
    // An empty transaction needs no server at all.
    c.batch_execute("BEGIN; ").await.expect("begin");
    c.batch_execute("COMMIT")
        .await
        .expect("commit of an empty transaction");
    // A write hinted to a replica fails there; it is not moved.
    let err = c
        .batch_execute("/* pgsplit:replica */ INSERT INTO audit (what) VALUES ('h')")
        .await
        .expect_err("hinted");
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
}

#[tokio::test]
async fn route_setting_overrides_the_classifier_for_the_session() {
    setup_schema().await;
    let c = connect().await;
    c.batch_execute("SET pgsplit.route TO primary")
        .await
        .expect("set route");
    for _ in 0..5 {
        assert_eq!(value(&c, "SELECT pg_is_in_recovery()").await, "f");
    }
    c.batch_execute("SET pgsplit.route = 'replica'")
        .await
        .expect("set route");
    let err = c
        .batch_execute("INSERT INTO audit (what) VALUES ('r')")
        .await
        .expect_err("write on a replica");
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    c.batch_execute("SET pgsplit.route TO auto")
        .await
        .expect("auto");
    c.batch_execute("INSERT INTO audit (what) VALUES ('auto')")
        .await
        .expect("write goes to the primary again");
    assert_eq!(value(&c, "SELECT pg_is_in_recovery()").await, "t");
}

#[tokio::test]
async fn search_path_set_once_holds_over_100_transactions_on_three_servers() {
    setup_schema().await;
    let env = env();
    let proxy = spawn_proxy(config(
        &env.cluster,
        2,
        2,
        "[routing]\nbalancer = \"round_robin\"\nprimary_reads = \"include\"\nvolatile_functions = \"list\"",
    ));
    let c = connect_to(proxy, APP).await.expect("connect");
    c.batch_execute("SET search_path TO tenant_a, public")
        .await
        .expect("set search_path");
    c.batch_execute("SET statement_timeout = '42s'")
        .await
        .expect("set statement_timeout");
    c.batch_execute("SET application_name TO 'tenant-app'")
        .await
        .expect("set application_name");
    let mut ports = HashSet::new();
    for i in 0..100 {
        let sql = if i % 10 == 0 {
            "BEGIN; SELECT name || ',' || current_setting('statement_timeout') || ',' || current_setting('application_name') || ',' || inet_server_port() FROM marker; COMMIT"
        } else {
            "SELECT name || ',' || current_setting('statement_timeout') || ',' || current_setting('application_name') || ',' || inet_server_port() FROM marker"
        };
        let v = value(&c, sql).await;
        let parts: Vec<&str> = v.split(',').collect();
        assert_eq!(
            &parts[..3],
            &["tenant_a", "42s", "tenant-app"],
            "transaction {i}: {v}"
        );
        ports.insert(parts[3].to_string());
    }
    assert_eq!(
        ports.len(),
        3,
        "spread over the primary and both replicas: {ports:?}"
    );
    // SET LOCAL stays inside its transaction; RESET goes back.
    c.batch_execute("BEGIN; SET LOCAL statement_timeout = '1s'; COMMIT")
        .await
        .expect("set local");
    c.batch_execute("RESET statement_timeout")
        .await
        .expect("reset");
    for _ in 0..6 {
        assert_eq!(
            value(&c, "SELECT current_setting('statement_timeout')").await,
            "0"
        );
    }
    // Another client on the same pools sees none of it.
    let other = connect_to(proxy, APP).await.expect("other");
    for _ in 0..6 {
        let v = value(
            &other,
            "SELECT current_setting('search_path') || ',' || current_setting('application_name')",
        )
        .await;
        assert!(
            !v.contains("tenant"),
            "settings leaked to another client: {v}"
        );
    }
    // set_config(…, false) is remembered as well.
    c.batch_execute("SELECT set_config('search_path', 'public', false)")
        .await
        .expect("set_config");
    for _ in 0..6 {
        assert_eq!(
            value(&c, "SELECT current_setting('search_path')").await,
            "public"
        );
    }
}

#[tokio::test]
async fn round_robin_spreads_reads_evenly_over_the_replicas() {
    let env = env();
    let proxy = spawn_proxy(config(
        &env.cluster,
        2,
        2,
        "[routing]\nbalancer = \"round_robin\"",
    ));
    let c = connect_to(proxy, APP).await.expect("connect");
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        *counts
            .entry(value(&c, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    for n in counts.values() {
        assert!((80..=120).contains(n), "uneven spread: {counts:?}");
    }
}

#[tokio::test]
async fn weights_and_least_connections_shape_the_spread() {
    let env = env();
    let mut cfg = config(&env.cluster, 2, 2, "[routing]\nbalancer = \"round_robin\"");
    cfg.replicas[0].weight = 3;
    let proxy = spawn_proxy(cfg);
    let c = connect_to(proxy, APP).await.expect("connect");
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        *counts
            .entry(value(&c, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    let heavy = counts[&replica_ports()[0].to_string()];
    assert!(
        (140..=160).contains(&heavy),
        "weight 3:1 should give ~150 of 200: {counts:?}"
    );

    // least_connections: with replica1 busy in a long read, new reads go to replica2.
    let proxy = spawn_proxy(config(&env.cluster, 2, 2, ""));
    let busy = connect_to(proxy, APP).await.expect("busy");
    let c = connect_to(proxy, APP).await.expect("c");
    let first = value(&busy, "BEGIN READ ONLY; SELECT inet_server_port()").await;
    for _ in 0..10 {
        assert_ne!(
            value(&c, "SELECT inet_server_port()").await,
            first,
            "a read went to the busier replica"
        );
    }
    busy.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test]
async fn with_no_reachable_replica_reads_fall_back_or_fail_as_configured() {
    setup_schema().await;
    let env = env();
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    for (fallback, expect_error) in [("primary", false), ("error", true)] {
        let mut cfg = config(
            &env.cluster,
            2,
            2,
            &format!("[routing]\nfallback = \"{fallback}\""),
        );
        cfg.replicas.truncate(1);
        cfg.replicas[0].port = dead_port;
        let proxy = spawn_proxy(cfg);
        let c = connect_to(proxy, APP).await.expect("connect");
        let res = c.simple_query("SELECT pg_is_in_recovery()").await;
        if expect_error {
            let err = res.expect_err("no replica, no fallback");
            assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW));
            let msg = err
                .as_db_error()
                .map(|e| e.message().to_string())
                .unwrap_or_default();
            assert!(msg.contains("replica"), "{msg}");
        } else {
            assert_eq!(value(&c, "SELECT pg_is_in_recovery()").await, "f");
        }
        c.batch_execute("INSERT INTO audit (what) VALUES ('fallback')")
            .await
            .expect("writes still work");
    }
}

#[tokio::test]
async fn a_function_created_after_start_is_read_from_the_catalog() {
    setup_schema().await;
    let c = connect().await;
    c.batch_execute(
        "CREATE OR REPLACE FUNCTION late_writer() RETURNS int LANGUAGE sql AS $$ INSERT INTO audit (what) VALUES ('late') RETURNING 1 $$",
    )
    .await
    .expect("create function");
    env()
        .cluster
        .wait_replayed("replica1", Duration::from_secs(30))
        .expect("replayed");
    env()
        .cluster
        .wait_replayed("replica2", Duration::from_secs(30))
        .expect("replayed");
    for _ in 0..5 {
        assert_eq!(
            value(&c, "SELECT inet_server_port() FROM late_writer()").await,
            primary_port().to_string()
        );
        assert_eq!(
            value(&c, "SELECT late_writer(), inet_server_port()").await,
            "1"
        );
    }
    // A user function that only reads (STABLE) still runs on replicas.
    c.batch_execute("CREATE OR REPLACE FUNCTION reads_only() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM accounts $$")
        .await
        .expect("create");
    env()
        .cluster
        .wait_replayed("replica1", Duration::from_secs(30))
        .expect("replayed");
    env()
        .cluster
        .wait_replayed("replica2", Duration::from_secs(30))
        .expect("replayed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut on_replica = false;
    for _ in 0..5 {
        on_replica |= value(&c, "SELECT pg_is_in_recovery() FROM reads_only()").await == "t";
    }
    assert!(
        on_replica,
        "a STABLE user function should be allowed on replicas"
    );
}

/// `(default_transaction_read_only, transaction_isolation, pg_is_in_recovery(), inet_server_port())` of a read.
async fn read_with_defaults(c: &Client) -> (String, String, bool, u16) {
    let row = value(
        c,
        "SELECT concat_ws('|', current_setting('default_transaction_read_only'), \
         current_setting('transaction_isolation'), pg_is_in_recovery(), inet_server_port())",
    )
    .await;
    let mut parts = row.split('|');
    let mut next = || parts.next().unwrap_or_default().to_string();
    let (read_only, isolation, recovery, port) = (next(), next(), next(), next());
    (
        read_only,
        isolation,
        recovery == "t",
        port.parse().expect("a port"),
    )
}

#[tokio::test]
async fn session_characteristics_follow_the_client_and_serializable_reads_stay_on_the_primary() {
    setup_schema().await;
    let c = connect().await;
    let primary = primary_port();
    // pgjdbc's readOnlyMode=always and setTransactionIsolation send these: tracked, not pinned. (No statement
    // routed to the primary comes before the reads on replicas: its read-your-writes floor could hold them.)
    c.simple_query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await
        .expect("read only");
    let mut replicas = HashSet::new();
    for _ in 0..20 {
        let (read_only, isolation, recovery, port) = read_with_defaults(&c).await;
        assert_eq!(
            (read_only.as_str(), isolation.as_str(), recovery),
            ("on", "read committed", true),
            "followed to every server; reads still on replicas"
        );
        replicas.insert(port);
    }
    assert_eq!(replicas.len(), 2, "both replicas: the client is not pinned");
    c.simple_query(
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE, ISOLATION LEVEL REPEATABLE READ",
    )
    .await
    .expect("read write, repeatable read");
    for _ in 0..10 {
        let (read_only, isolation, recovery, _) = read_with_defaults(&c).await;
        assert_eq!(
            (read_only.as_str(), isolation.as_str(), recovery),
            ("off", "repeatable read", true)
        );
    }
    // A hot standby refuses SERIALIZABLE transactions: the client's reads run on the primary, and succeed as on
    // a direct connection, in autocommit and in a read-only transaction.
    for set in [
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET default_transaction_isolation = 'SERIALIZABLE'",
    ] {
        c.simple_query(set).await.expect(set);
        for _ in 0..10 {
            let (_, isolation, recovery, port) = read_with_defaults(&c).await;
            assert_eq!(
                (isolation.as_str(), recovery, port),
                ("serializable", false, primary),
                "{set}"
            );
        }
        c.simple_query("BEGIN READ ONLY")
            .await
            .expect("begin read only");
        let (_, isolation, recovery, _) = read_with_defaults(&c).await;
        assert_eq!(
            (isolation.as_str(), recovery),
            ("serializable", false),
            "{set}"
        );
        c.simple_query("COMMIT").await.expect("commit");
        c.simple_query("RESET default_transaction_isolation")
            .await
            .expect("reset");
    }
    c.simple_query("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .expect("read committed");
    assert_eq!(read_with_defaults(&c).await.1, "read committed");
    // Writes: refused under a read-only default, as PostgreSQL does, and run once it is lifted.
    c.simple_query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await
        .expect("read only");
    let refused = c
        .simple_query("UPDATE accounts SET balance = balance WHERE id = 1")
        .await
        .expect_err("a write in a read-only default transaction");
    assert_eq!(refused.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    c.simple_query("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        .await
        .expect("read write");
    c.simple_query("UPDATE accounts SET balance = balance WHERE id = 1")
        .await
        .expect("writes run again");
}
