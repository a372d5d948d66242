//! End-to-end behaviour of the proxy against a real primary and two streaming replicas: authentication,
//! routing, transactions, COPY, errors, cancel, concurrency, disconnects, bad input and pgbench.

mod bounded;
mod differential;
mod isolation;
mod transparency;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, SimpleQueryMessage};

fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("run psql")
}

#[tokio::test]
async fn every_auth_method_works_and_bad_logins_are_refused() {
    let env = env();
    for user in [APP, MD5, TRUST] {
        let c = connect_to(env.proxy, user)
            .await
            .unwrap_or_else(|e| panic!("{} cannot log in: {e}", user.0));
        let rows = c.query("SELECT 1::int4", &[]).await.expect("query");
        assert_eq!(rows[0].get::<_, i32>(0), 1);
        let out = psql(&url(env.proxy, user), "SELECT 42");
        assert!(
            out.status.success(),
            "psql as {}: {}",
            user.0,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    }

    let code = |r: Result<tokio_postgres::Client, tokio_postgres::Error>| {
        r.err().and_then(|e| e.code().cloned())
    };
    assert_eq!(
        code(connect_to(env.proxy, ("app", "wrong")).await),
        Some(SqlState::INVALID_PASSWORD)
    );
    assert_eq!(
        code(connect_to(env.proxy, ("md5client", "wrong")).await),
        Some(SqlState::INVALID_PASSWORD)
    );
    assert_eq!(
        code(connect_to(env.proxy, ("nobody", "x")).await),
        Some(SqlState::INVALID_PASSWORD),
        "an unknown user fails like a wrong password (mock SCRAM exchange)"
    );
    let bad_db = format!("postgres://app:app-secret@{}/nosuchdb", env.proxy);
    let err = tokio_postgres::connect(&bad_db, NoTls)
        .await
        .err()
        .expect("unknown database refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME));
    let out = psql(&url(env.proxy, ("app", "wrong")), "SELECT 1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

#[tokio::test]
async fn reads_go_to_replicas_and_writes_to_the_primary() {
    // The table is made by another client: this one's reads have no write of its own to wait for, and may go to
    // either replica (after its own DDL, only replicas known to have replayed it would do).
    connect()
        .await
        .batch_execute("CREATE TABLE IF NOT EXISTS routing_t (id serial PRIMARY KEY, v text)")
        .await
        .expect("DDL");
    let c = connect().await;
    let replicas: HashSet<u16> = replica_ports().into_iter().collect();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let port = server_port(&c, "SELECT inet_server_port()").await;
        assert!(
            replicas.contains(&port),
            "a read ran on {port}, not a replica"
        );
        seen.insert(port);
        let row = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("extended read");
        assert!(
            row.get::<_, bool>(0),
            "an extended-protocol read ran on the primary"
        );
    }
    assert_eq!(seen.len(), 2, "reads should spread over both replicas");

    let p = primary_port();
    assert_eq!(
        server_port(
            &c,
            "INSERT INTO routing_t (v) VALUES ('a') RETURNING inet_server_port()"
        )
        .await,
        p
    );
    assert_eq!(
        server_port(
            &c,
            "UPDATE routing_t SET v = 'b' RETURNING inet_server_port()"
        )
        .await,
        p
    );
    let row = c
        .query_one(
            "INSERT INTO routing_t (v) VALUES ($1) RETURNING inet_server_port()::int4",
            &[&"c"],
        )
        .await
        .expect("extended insert");
    assert_eq!(row.get::<_, i32>(0) as u16, p);
    c.batch_execute("ALTER TABLE routing_t ADD COLUMN IF NOT EXISTS w int")
        .await
        .expect("DDL on the primary");
    assert_eq!(
        server_port(
            &c,
            "SELECT inet_server_port() FROM nextval('routing_t_id_seq')"
        )
        .await,
        p
    );
}

#[tokio::test]
async fn a_transaction_runs_entirely_on_the_primary() {
    let mut c = connect().await;
    let tx = c.transaction().await.expect("begin");
    for _ in 0..5 {
        let row = tx
            .query_one("SELECT inet_server_port()::int4, pg_is_in_recovery()", &[])
            .await
            .expect("select");
        assert_eq!(row.get::<_, i32>(0) as u16, primary_port());
        assert!(!row.get::<_, bool>(1));
    }
    tx.commit().await.expect("commit");

    let msgs = c
        .simple_query("BEGIN; SELECT inet_server_port(); SELECT pg_is_in_recovery(); COMMIT")
        .await
        .expect("multi-statement transaction");
    let values: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec![primary_port().to_string(), "f".to_string()]);
}

#[tokio::test]
async fn copy_in_and_out_round_trips_100k_rows() {
    let c = connect().await;
    c.batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (id int, payload text)")
        .await
        .expect("create");
    let mut data = String::new();
    for i in 0..100_000 {
        data.push_str(&format!(
            "{i}\tpayload line {i} with tab-free text \\\\ and unicode é\n"
        ));
    }
    let sink = c.copy_in("COPY copy_t FROM STDIN").await.expect("copy in");
    futures_util::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .expect("send");
    }
    let n = sink.finish().await.expect("finish copy");
    assert_eq!(n, 100_000);

    let stream = c
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(out.len(), data.len());
    assert!(out == data.as_bytes(), "COPY OUT differs from what went in");
}

#[tokio::test]
async fn an_error_in_a_transaction_holds_until_rollback_and_the_connection_is_reused() {
    let env = env();
    // One write connection only: whoever comes next gets the very same server connection.
    let proxy = spawn_proxy(config(&env.cluster, 1, 1, ""));
    let c = connect_to(proxy, APP).await.expect("connect");
    c.batch_execute("BEGIN").await.expect("begin");
    let err = c
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = c
        .batch_execute("SELECT 1")
        .await
        .expect_err("aborted transaction");
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    c.batch_execute("ROLLBACK").await.expect("rollback");

    let other = connect_to(proxy, APP).await.expect("second client");
    other
        .batch_execute("BEGIN")
        .await
        .expect("begin on the reused connection");
    let row = other.query_one("SELECT 7::int4", &[]).await.expect("works");
    assert_eq!(row.get::<_, i32>(0), 7);
    other.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test]
async fn a_cancel_request_stops_pg_sleep() {
    let c = connect().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.expect("send cancel");
    let res = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancel took effect")
        .expect("join");
    let err = res.expect_err("statement cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn two_hundred_clients_share_a_pool_of_four() {
    let env = env();
    let proxy = spawn_proxy(config(&env.cluster, 4, 4, ""));
    let setup = connect_to(proxy, APP).await.expect("setup");
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS many_t (client int, n int)")
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let c = connect_to(proxy, TRUST).await?;
            for n in 0..3 {
                c.query_one("SELECT $1::int4 + 1", &[&n]).await?;
                c.execute("INSERT INTO many_t VALUES ($1, $2)", &[&i, &n])
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("client completed");
    }
    let n: i64 = setup
        .query_one("/* pgsplit:primary */ SELECT count(*) FROM many_t", &[])
        .await
        .expect("count")
        .get(0);
    assert!(n >= 600);
}

#[tokio::test]
async fn a_client_vanishing_mid_transaction_leaves_no_open_transaction() {
    let env = env();
    let c = connect().await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS vanish_t (v text)")
        .await
        .expect("create");
    c.batch_execute("BEGIN; INSERT INTO vanish_t VALUES ('never committed')")
        .await
        .expect("begin + insert");
    drop(c); // the socket closes without Terminate or COMMIT

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = env
            .cluster
            .psql("primary", "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND datname = 'app'")
            .expect("pg_stat_activity");
        if open == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} transaction(s) still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = connect().await;
    let n: i64 = c
        .query_one(
            "/* pgsplit:primary */ SELECT count(*) FROM vanish_t WHERE v = 'never committed'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn session_settings_follow_the_client_across_pooled_servers() {
    let env = env();
    // Round robin, so that the reads alternate between the replicas whatever load other tests put on them.
    let proxy = spawn_proxy(config(
        &env.cluster,
        4,
        4,
        "[routing]\nbalancer = \"round_robin\"",
    ));
    let url = format!(
        "{}?application_name=settings-test&options=-c%20search_path%3Dpg_catalog",
        url(proxy, APP)
    );
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    let mut ports = HashSet::new();
    for _ in 0..10 {
        let rows = c.simple_query("SELECT current_setting('application_name'), current_setting('search_path'), inet_server_port()").await.expect("q");
        let r = rows
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        assert_eq!(r.get(0), Some("settings-test"));
        assert_eq!(r.get(1), Some("pg_catalog"));
        ports.insert(r.get(2).map(str::to_string));
    }
    assert!(ports.len() >= 2, "{ports:?}");
    // Another client on the same pools does not inherit them.
    let other = connect_to(proxy, APP).await.expect("other client");
    for _ in 0..10 {
        let row = other
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .expect("q");
        assert_ne!(row.get::<_, String>(0), "settings-test");
    }
}

#[tokio::test]
async fn prepared_statements_follow_the_client_to_other_servers() {
    let c = connect().await;
    let stmt = c
        .prepare("SELECT inet_server_port()::int4, $1::int4")
        .await
        .expect("prepare");
    let mut ports = HashSet::new();
    for i in 0..20 {
        let row = c
            .query_one(&stmt, &[&i])
            .await
            .expect("execute prepared statement");
        assert_eq!(row.get::<_, i32>(1), i);
        ports.insert(row.get::<_, i32>(0));
    }
    assert_eq!(ports.len(), 2, "the statement ran on both replicas");
    c.batch_execute("CREATE SEQUENCE IF NOT EXISTS prep_seq")
        .await
        .expect("seq");
    let write = c
        .prepare("SELECT inet_server_port()::int4 FROM nextval('prep_seq')")
        .await
        .expect("prepare write");
    for _ in 0..5 {
        let row = c.query_one(&write, &[]).await.expect("run");
        assert_eq!(row.get::<_, i32>(0) as u16, primary_port());
    }
}

/// Sends raw bytes, returns what came back until the server closed (or 2 s passed).
fn raw_exchange(bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(env().proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn error_code(reply: &[u8]) -> Option<String> {
    let start = reply.iter().position(|&b| b == b'E')?;
    let body = &reply[start + 5..];
    let at = body.windows(2).position(|w| w[0] == b'C')?;
    let code = &body[at + 1..at + 6];
    Some(String::from_utf8_lossy(code).to_string())
}

#[tokio::test]
async fn bad_input_gets_an_error_or_a_clean_close_and_others_carry_on() {
    let bystander = connect().await;
    tokio::task::spawn_blocking(|| {
        // Garbage instead of a startup packet.
        let reply = raw_exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(reply.is_empty() || reply[0] == b'E', "garbage: {reply:?}");
        // A startup length of 3 and of 2^31-1: closed without a word, as PostgreSQL does.
        assert!(raw_exchange(&[0, 0, 0, 3]).is_empty());
        assert!(raw_exchange(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).is_empty());
        // Truncated startup packet: the client goes away; nothing to answer.
        let reply = raw_exchange(&[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's']);
        assert!(reply.is_empty());
        // Protocol 2: refused in protocol 2's own error format, as PostgreSQL refuses it.
        assert!(raw_exchange(&[0, 0, 0, 8, 0, 2, 0, 0]).starts_with(
            b"EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n\0"
        ));
        // Protocol 4.
        assert_eq!(
            error_code(&raw_exchange(&[0, 0, 0, 8, 0, 4, 0, 0])).as_deref(),
            Some("0A000")
        );
        // A Query before authentication.
        let mut bytes = startup_packet("app");
        bytes.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
        assert_eq!(error_code(&raw_exchange(&bytes)).as_deref(), Some("08P01"));
        // Message lengths of 3 and 2^31-1 after logging in (trust user).
        for len in [3u32, 0x7fff_ffff] {
            let mut bytes = startup_packet("trustclient");
            bytes.push(b'Q');
            bytes.extend_from_slice(&len.to_be_bytes());
            let reply = raw_exchange(&bytes);
            assert_eq!(reply[0], b'R', "login first");
            assert!(
                reply.windows(5).any(|w| w[0] == b'E'),
                "length {len}: no error in {reply:?}"
            );
            assert!(String::from_utf8_lossy(&reply).contains("08P01"));
        }
        // An unknown message type after login.
        let mut bytes = startup_packet("trustclient");
        bytes.extend_from_slice(b"\x01\0\0\0\x04");
        assert!(String::from_utf8_lossy(&raw_exchange(&bytes)).contains("08P01"));
    })
    .await
    .expect("raw exchanges");
    let row = bystander
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("the other client is unharmed");
    assert_eq!(row.get::<_, i32>(0), 1);
    connect()
        .await
        .simple_query("SELECT 1")
        .await
        .expect("new clients still served");
}

#[tokio::test]
async fn pgbench_runs_with_no_failed_transactions() {
    let env = env();
    let proxy = spawn_proxy(config(&env.cluster, 8, 8, ""));
    let u = url(proxy, APP);
    tokio::task::spawn_blocking(move || {
        let _tables = pgbench_tables();
        pgbench_init(&env.cluster, &u);
        pgbench(
            &u,
            &["-S", "-M", "simple", "-c", "16", "-j", "2", "-t", "300"],
        );
        pgbench(&u, &["-M", "simple", "-c", "8", "-j", "2", "-t", "100"]);
    })
    .await
    .expect("pgbench runs");
}

#[tokio::test]
async fn a_cancel_with_a_wrong_key_cancels_nothing() {
    let c = connect().await;
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(0.7)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(150)).await;
    tokio::task::spawn_blocking(|| {
        let mut s = TcpStream::connect(env().proxy).expect("connect");
        let mut req = 16u32.to_be_bytes().to_vec();
        req.extend_from_slice(&80877102u32.to_be_bytes());
        req.extend_from_slice(&12345i32.to_be_bytes());
        req.extend_from_slice(&67890i32.to_be_bytes());
        s.write_all(&req).expect("send cancel");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "a cancel request gets no answer");
    })
    .await
    .expect("bogus cancel");
    sleeper
        .await
        .expect("join")
        .expect("the statement was not cancelled");
}

#[tokio::test]
async fn a_pooled_connection_the_server_killed_is_never_handed_out() {
    let env = env();
    let proxy = spawn_proxy(config(&env.cluster, 1, 1, ""));
    let c = connect_to(proxy, APP).await.expect("connect");
    let pid = |rows: Vec<SimpleQueryMessage>| -> String {
        rows.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .expect("pid")
    };
    let before = pid(c
        .simple_query("/* pgsplit:primary */ SELECT pg_backend_pid()")
        .await
        .expect("pid"));
    env.cluster
        .psql(
            "primary",
            &format!("SELECT pg_terminate_backend({before}, 5000)"),
        )
        .expect("terminate the pooled server connection");
    for _ in 0..3 {
        let after = pid(c
            .simple_query("/* pgsplit:primary */ SELECT pg_backend_pid()")
            .await
            .expect("still served"));
        assert_ne!(after, before, "the dead connection was reused");
    }
}

#[tokio::test]
async fn waiting_for_a_pool_slot_times_out_with_an_error() {
    let env = env();
    let mut cfg = config(&env.cluster, 1, 1, "");
    cfg.timeouts.pool_wait = Duration::from_millis(300);
    let proxy = spawn_proxy(cfg);
    let a = connect_to(proxy, APP).await.expect("a");
    let b = connect_to(proxy, APP).await.expect("b");
    a.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("a holds the only write connection");
    let started = Instant::now();
    let err = b
        .batch_execute("/* pgsplit:primary */ SELECT 1")
        .await
        .expect_err("no slot");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("became free"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
    a.batch_execute("COMMIT").await.expect("commit");
    b.batch_execute("/* pgsplit:primary */ SELECT 1")
        .await
        .expect("b is served once the slot frees");
}

#[tokio::test]
async fn an_idle_client_is_closed_after_client_idle_and_a_busy_one_is_not() {
    let env = env();
    let mut cfg = config(&env.cluster, 2, 2, "");
    cfg.timeouts.client_idle = Duration::from_millis(400);
    let proxy = spawn_proxy(cfg);
    let busy = connect_to(proxy, APP).await.expect("busy");
    let idle = connect_to(proxy, APP).await.expect("idle");
    idle.batch_execute("SELECT 1")
        .await
        .expect("idle's first query");
    // Statements every 150 ms for 1.2 s, and one that runs longer than the timeout: never idle that long.
    for _ in 0..8 {
        busy.batch_execute("SELECT 1")
            .await
            .expect("busy stays open");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    busy.batch_execute("SELECT pg_sleep(0.6)")
        .await
        .expect("a statement longer than client_idle is not idleness");
    busy.batch_execute("SELECT 1")
        .await
        .expect("still open right after it");
    // Meanwhile the other client said nothing for 1.2 s.
    let err = idle
        .batch_execute("SELECT 1")
        .await
        .expect_err("closed for idleness");
    assert!(idle.is_closed(), "{err}");
}

#[tokio::test]
async fn shutdown_lets_running_transactions_finish_and_closes_idle_clients() {
    let env = env();
    let proxy = pgsplit::proxy::Proxy::bind(config(&env.cluster, 2, 2, ""))
        .await
        .expect("bind");
    let handle = proxy.spawn().expect("spawn");
    let addr = handle.addr;
    let busy = connect_to(addr, APP).await.expect("busy client");
    let idle = connect_to(addr, APP).await.expect("idle client");
    busy.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open transaction");
    let stopping = tokio::spawn(handle.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(
        connect_to(addr, APP).await.is_err(),
        "new clients are refused while shutting down"
    );
    let err = idle
        .simple_query("SELECT 1")
        .await
        .expect_err("idle client is closed");
    assert!(
        err.is_closed() || err.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{err}"
    );
    let row = busy
        .query_one("SELECT 5::int4", &[])
        .await
        .expect("the transaction goes on");
    assert_eq!(row.get::<_, i32>(0), 5);
    busy.batch_execute("COMMIT").await.expect("and commits");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes")
        .expect("join");
}

#[tokio::test]
async fn listen_receives_notifications_while_idle() {
    let env = env();
    let (listener, mut conn) = tokio_postgres::connect(&url(env.proxy, APP), NoTls)
        .await
        .expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("LISTEN pgsplit_events")
        .await
        .expect("listen");
    let notifier = connect().await;
    notifier
        .batch_execute("NOTIFY pgsplit_events, 'hello'")
        .await
        .expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification arrives")
        .expect("open");
    assert_eq!(got, ("pgsplit_events".to_string(), "hello".to_string()));
}

#[tokio::test]
async fn session_pooling_still_splits_reads_and_writes() {
    let env = env();
    let proxy = spawn_proxy(config(&env.cluster, 2, 2, "pool_mode = \"session\""));
    let c = connect_to(proxy, APP).await.expect("connect");
    c.batch_execute("SET statement_timeout = '7s'")
        .await
        .expect("set");
    for _ in 0..4 {
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), current_setting('statement_timeout')",
                &[],
            )
            .await
            .expect("read");
        assert!(
            row.get::<_, bool>(0),
            "a read in session pooling ran on the primary"
        );
    }
    let port = server_port(
        &c,
        "CREATE TEMP TABLE IF NOT EXISTS s_t (a int); SELECT inet_server_port()",
    )
    .await;
    assert_eq!(port, primary_port());
    let row = c
        .query_one(
            "/* pgsplit:primary */ SELECT current_setting('statement_timeout')",
            &[],
        )
        .await
        .expect("q");
    assert_eq!(row.get::<_, String>(0), "7s");
}
