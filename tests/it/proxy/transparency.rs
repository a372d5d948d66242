//! As transparent as PostgreSQL itself: what a client sees through pgsplit is what it would see on a direct
//! connection — large messages, atomic transactions, pipelines across servers, any encoding, the server's own
//! errors, startup oddities.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::common::wire::{bind_execute, parse, query, sync, terminate, Msg, Raw};
use crate::common::*;

/// A raw protocol client logged in as `trustclient` (trust auth; postgres on the servers).
fn raw(proxy: std::net::SocketAddr, extra: &[(&str, &str)]) -> Raw {
    Raw::login(proxy, Duration::from_secs(20), extra)
}

/// The SQLSTATE of an ErrorResponse body.
fn code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

fn codes(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.0 == b'E')
        .map(|m| code(&m.1))
        .collect()
}

/// The first column of each DataRow, as bytes.
fn first_column(msgs: &[Msg]) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter(|m| m.0 == b'D')
        .filter_map(|m| {
            let b = &m.1;
            let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
            (len >= 0).then(|| b[6..6 + len as usize].to_vec())
        })
        .collect()
}

async fn direct() -> tokio_postgres::Client {
    let url = env().cluster.url("primary", "postgres", "app");
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.expect("direct");
    tokio::spawn(conn);
    c
}

#[tokio::test]
async fn large_query_texts_and_parameters_round_trip() {
    let c = connect().await;
    // 300 KB of query text: a literal the server echoes back.
    let big = "x".repeat(300_000);
    let rows = c
        .simple_query(&format!("SELECT length('{big}')"))
        .await
        .expect("300 KB query");
    let n = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(n.as_deref(), Some("300000"));
    for size in [300_000usize, 4 << 20, 40 << 20] {
        let param = vec![7u8; size];
        let row = c
            .query_one("SELECT length($1::bytea)::int8", &[&param])
            .await
            .unwrap_or_else(|e| panic!("{size}-byte parameter: {e}"));
        assert_eq!(row.get::<_, i64>(0), size as i64);
    }
}

#[tokio::test]
async fn a_client_killed_while_sending_a_large_message_frees_its_server_at_once() {
    let proxy = spawn_proxy(config(&env().cluster, 1, 1, ""));
    let mut a = raw(proxy, &[]);
    // A holds the only primary connection (a transaction), then starts a 40 MB Query and vanishes.
    a.send(&query(
        b"BEGIN; CREATE TEMP TABLE IF NOT EXISTS never (a int)",
    ));
    a.until_ready();
    let mut head = vec![b'Q'];
    head.extend_from_slice(&((40u32 << 20) + 4).to_be_bytes());
    a.send(&head);
    a.send(&vec![b' '; 1 << 20]);
    drop(a);
    let started = Instant::now();
    let b = connect_to(proxy, TRUST).await.expect("B");
    b.simple_query("/* pgsplit:primary */ SELECT 1")
        .await
        .expect("B gets the connection");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "B waited {:?} for the connection A left",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_begin_postgres_rejects_is_rejected_and_a_serializable_one_stays_serializable() {
    let c = connect().await;
    let err = c
        .simple_query("BEGIN DEFERRED")
        .await
        .expect_err("BEGIN DEFERRED is a syntax error");
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    // Not in a transaction: a ROLLBACK says so (a warning), and nothing is pending.
    c.simple_query("CREATE TABLE IF NOT EXISTS tr_atomic (id int)")
        .await
        .expect("table");
    let n_before: i64 = c
        .query_one("/* pgsplit:primary */ SELECT count(*) FROM tr_atomic", &[])
        .await
        .expect("count")
        .get(0);
    let _ = c.simple_query("BEGIN DEFERRED").await;
    let _ = c.simple_query("ROLLBACK").await;
    let n_after: i64 = c
        .query_one("/* pgsplit:primary */ SELECT count(*) FROM tr_atomic", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n_before, n_after);
    c.simple_query("BEGIN ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY")
        .await
        .expect("serializable read only");
    let rows = c
        .simple_query("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), pg_is_in_recovery()::text")
        .await
        .expect("in the transaction");
    c.simple_query("COMMIT").await.expect("commit");
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).map(str::to_string),
                r.get(1).map(str::to_string),
                r.get(2).map(str::to_string),
            )),
            _ => None,
        })
        .expect("row");
    assert_eq!(
        row,
        (
            Some("serializable".into()),
            Some("on".into()),
            Some("false".into())
        )
    );
    // A deferred BEGIN READ WRITE cannot start on a replica: SET TRANSACTION READ ONLY after it stays on the
    // primary, in the transaction.
    for sql in ["BEGIN READ WRITE", "SET TRANSACTION READ ONLY", "SELECT 1"] {
        c.simple_query(sql).await.expect(sql);
    }
    let rows = c
        .simple_query("SELECT current_setting('transaction_read_only'), pg_is_in_recovery()::text")
        .await
        .expect("in the transaction");
    c.simple_query("COMMIT").await.expect("commit");
    let row = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => {
            Some((r.get(0).map(str::to_string), r.get(1).map(str::to_string)))
        }
        _ => None,
    });
    assert_eq!(row, Some((Some("on".into()), Some("false".into()))));
}

#[tokio::test]
async fn a_pipeline_stops_at_a_replica_error_and_runs_nothing_after_it() {
    let proxy = spawn_proxy(config(&env().cluster, 2, 2, ""));
    let mut c = raw(proxy, &[]);
    let table = format!("tr_pipeline_{}", std::process::id());
    // A read that fails (on a replica), then a write, then Sync: PostgreSQL skips the write.
    let mut batch = parse("", "SELECT 1/0", &[]);
    batch.extend(bind_execute(""));
    batch.extend(parse("", format!("CREATE TABLE {table} (a int)"), &[]));
    batch.extend(bind_execute(""));
    batch.extend(sync());
    c.send(&batch);
    let got = c.until_ready();
    assert_eq!(codes(&got), ["22012"], "{got:?}");
    assert_eq!(got.last().map(|m| m.1.clone()), Some(vec![b'I']));
    // The connection is usable, and the table was never created.
    c.send(&query(
        format!("/* pgsplit:primary */ SELECT to_regclass('{table}') IS NULL").as_bytes(),
    ));
    let got = c.until_ready();
    assert_eq!(first_column(&got), [b"t".to_vec()], "{got:?}");
}

#[tokio::test]
async fn non_utf8_client_encodings_round_trip_on_primary_and_replicas_in_both_pool_modes() {
    for mode in ["transaction", "session"] {
        let proxy = spawn_proxy(config(
            &env().cluster,
            2,
            2,
            &format!("pool_mode = \"{mode}\""),
        ));
        for (encoding, text) in [
            ("LATIN1", &b"caf\xe9"[..]),
            ("LATIN9", &b"\xa4uro"[..]),
            ("WIN1252", &b"\x80 \x93q\x94"[..]),
            ("SJIS", &b"\x83\x5c\x83\x74\x83\x67"[..]),
        ] {
            let mut c = raw(proxy, &[("client_encoding", encoding)]);
            for hint in ["/* pgsplit:primary */", "/* pgsplit:replica */", ""] {
                // Simple protocol.
                let mut sql = format!("{hint} SELECT '").into_bytes();
                sql.extend_from_slice(text);
                sql.extend_from_slice(b"'::text");
                c.send(&query(&sql));
                let got = c.until_ready();
                assert_eq!(
                    first_column(&got),
                    [text.to_vec()],
                    "{mode} {encoding} {hint}: {got:?}"
                );
                // Extended protocol.
                let mut batch = parse("", &sql, &[]);
                batch.extend(bind_execute(""));
                batch.extend(sync());
                c.send(&batch);
                let got = c.until_ready();
                assert_eq!(
                    first_column(&got),
                    [text.to_vec()],
                    "{mode} {encoding} {hint} extended: {got:?}"
                );
            }
        }
        // A change of client encoding reaches the servers the client already holds (session pooling).
        let mut c = raw(proxy, &[]);
        c.send(&query(b"/* pgsplit:replica */ SELECT 1"));
        c.until_ready();
        c.send(&query(b"SET client_encoding TO 'LATIN1'"));
        c.until_ready();
        c.send(&query(b"SELECT 'caf\xe9'::text"));
        let got = c.until_ready();
        assert_eq!(first_column(&got), [b"caf\xe9".to_vec()], "{mode}: {got:?}");
    }
}

#[tokio::test]
async fn the_servers_own_fatal_errors_reach_the_client() {
    let proxy = spawn_proxy(config(&env().cluster, 2, 2, ""));
    // idle_in_transaction_session_timeout: PostgreSQL sends FATAL 25P03 and closes.
    let mut c = raw(proxy, &[]);
    c.send(&query(
        b"SET idle_in_transaction_session_timeout = '300ms'; BEGIN; SELECT 1",
    ));
    c.until_ready();
    std::thread::sleep(Duration::from_millis(900));
    let mut got = Vec::new();
    while let Some(m) = c.read() {
        got.push(m);
    }
    assert_eq!(codes(&got), ["25P03"], "{got:?}");
    // Terminated by an administrator: FATAL 57P01.
    let mut c = raw(proxy, &[]);
    c.send(&query(b"SELECT pg_terminate_backend(pg_backend_pid())"));
    let mut got = Vec::new();
    while let Some(m) = c.read() {
        got.push(m);
    }
    assert_eq!(codes(&got), ["57P01"], "{got:?}");
}

#[tokio::test]
async fn side_effect_builtins_and_unlogged_tables_go_to_the_primary() {
    let d = direct().await;
    d.batch_execute("CREATE UNLOGGED TABLE IF NOT EXISTS tr_unlogged (a int); INSERT INTO tr_unlogged VALUES (1)")
        .await
        .expect("unlogged table");
    let proxy = spawn_proxy(config(&env().cluster, 2, 2, ""));
    let c = connect_to(proxy, TRUST).await.expect("connect");
    // The catalog is read in the background; give it a moment to list the new table.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c
            .simple_query("SELECT a, inet_server_port() FROM tr_unlogged")
            .await
        {
            Ok(rows) => {
                let port = rows.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
                    _ => None,
                });
                assert_eq!(port, Some(primary_port().to_string()));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("unlogged read not routed yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("unlogged table read: {e}"),
        }
    }
    for sql in [
        "SELECT pg_cancel_backend(0)",
        "SELECT pg_stat_reset()",
        "SELECT pg_reload_conf()",
    ] {
        let port = server_port(
            &c,
            &format!("SELECT inet_server_port() FROM (SELECT {}) x", &sql[7..]),
        )
        .await;
        assert_eq!(port, primary_port(), "{sql}");
    }
    // Terminating its own backend runs on the primary: the replicas stay eligible, the client is closed.
    let victim = connect_to(proxy, TRUST).await.expect("victim");
    let err = victim
        .simple_query("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .err();
    assert!(err.is_some());
    let replicas = replica_ports();
    for _ in 0..4 {
        let port = server_port(&c, "SELECT inet_server_port()").await;
        assert!(replicas.contains(&port), "reads still on replicas: {port}");
    }
}

#[tokio::test]
async fn a_failed_named_parse_is_forgotten_and_duplicates_name_the_clients_statement() {
    let proxy = spawn_proxy(config(&env().cluster, 2, 2, ""));
    let table = format!("tr_named_{}", std::process::id());
    let mut c = raw(proxy, &[]);
    // On the primary: right after CREATE TABLE a replica may not have it yet (read-your-writes is another matter).
    let sql = format!("/* pgsplit:primary */ SELECT count(*) FROM {table}");
    let mut batch = parse("s1", &sql, &[]);
    batch.extend(sync());
    batch.extend(parse("s1", &sql, &[]));
    batch.extend(bind_execute("s1"));
    batch.extend(sync());
    c.send(&batch);
    let got = [c.until_ready(), c.until_ready()].concat();
    assert!(codes(&got).iter().all(|c| c == "42P01"), "{got:?}");
    c.send(&query(format!("CREATE TABLE {table} (a int)").as_bytes()));
    c.until_ready();
    let mut batch = parse("s1", &sql, &[]);
    batch.extend(bind_execute("s1"));
    batch.extend(sync());
    c.send(&batch);
    let got = c.until_ready();
    assert!(
        codes(&got).is_empty(),
        "the same name prepares now: {got:?}"
    );
    // A duplicate names the client's statement, as PostgreSQL does.
    let mut batch = parse("s1", "SELECT 2", &[]);
    batch.extend(sync());
    c.send(&batch);
    let got = c.until_ready();
    assert_eq!(codes(&got), ["42P05"], "{got:?}");
    let text = got
        .iter()
        .find(|m| m.0 == b'E')
        .map(|m| String::from_utf8_lossy(&m.1).into_owned())
        .unwrap_or_default();
    assert!(text.contains("\"s1\""), "{text}");
    assert!(!text.contains("pgsplit_"), "{text}");
    // Inside an aborted transaction a Parse fails; after ROLLBACK the same name works.
    c.send(&query(b"BEGIN; SELECT 1/0"));
    c.until_ready();
    let mut batch = parse("s2", "SELECT 1", &[]);
    batch.extend(sync());
    c.send(&batch);
    assert_eq!(codes(&c.until_ready()), ["25P02"]);
    c.send(&query(b"ROLLBACK"));
    c.until_ready();
    let mut batch = parse("s2", "SELECT 1", &[]);
    batch.extend(bind_execute("s2"));
    batch.extend(sync());
    c.send(&batch);
    let got = c.until_ready();
    assert_eq!(first_column(&got), [b"1".to_vec()], "{got:?}");
    c.send(&query(format!("DROP TABLE {table}").as_bytes()));
    c.until_ready();
}

#[tokio::test]
async fn startup_oddities_are_answered_as_postgres_answers_them() {
    let proxy = env().proxy;
    // Terminate before any startup packet: closed without a word.
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&terminate()).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{buf:?}");
    // A multi-byte setting value.
    let c = connect().await;
    c.simple_query("SET x.y = '€€'").await.expect("set");
    let rows = c.simple_query("SHOW x.y").await.expect("show");
    let v = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(v.as_deref(), Some("€€"));
}

#[tokio::test]
async fn a_repeated_parse_in_a_failed_batch_ends_with_the_first_error() {
    let proxy = spawn_proxy(config(&env().cluster, 2, 2, ""));
    let mut c = raw(proxy, &[]);
    // The first Parse of the name fails; PostgreSQL skips the second one up to Sync.
    let mut batch = parse("s1", "SELECT * FROM no_such_table_tr", &[]);
    batch.extend(parse("s1", "SELECT 1", &[]));
    batch.extend(sync());
    c.send(&batch);
    let got = c.until_ready();
    assert_eq!(codes(&got), ["42P01"], "{got:?}");
    assert_eq!(got.last().map(|m| m.0), Some(b'Z'), "{got:?}");
    // An earlier error in the batch: both Parses are skipped.
    let mut batch = parse("", "SELECT 1/0", &[]);
    batch.extend(bind_execute(""));
    batch.extend(parse("s2", "SELECT 1", &[]));
    batch.extend(parse("s2", "SELECT 1", &[]));
    batch.extend(sync());
    c.send(&batch);
    let got = c.until_ready();
    assert_eq!(codes(&got), ["22012"], "{got:?}");
    assert_eq!(got.last().map(|m| m.0), Some(b'Z'), "{got:?}");
}

#[tokio::test]
async fn text_in_an_encoding_pgsplit_cannot_lex_never_leaves_state_for_the_next_client() {
    let proxy = spawn_proxy(config(&env().cluster, 1, 1, ""));
    let mut a = raw(proxy, &[("client_encoding", "SJIS")]);
    // Read as UTF-8, 0x5C would end the E'' string early and hide the set_config from the lexer.
    a.send(&query(
        b"SELECT E'\x83\x5c' AS a, ' || ' AS b; SELECT set_config($$search_path$$, $$evil$$, false) AS c --'",
    ));
    let got = a.until_ready();
    assert!(codes(&got).is_empty(), "{got:?}");
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    let mut b = raw(proxy, &[]);
    b.send(&query(b"/* pgsplit:primary */ SHOW search_path"));
    let got = b.until_ready();
    assert_eq!(
        first_column(&got),
        [b"\"$user\", public".to_vec()],
        "{got:?}"
    );
}
