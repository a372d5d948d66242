//! Bounded resources: per-client caps on prepared statements and on messages before a Sync, logins with their own
//! cap, long texts classified off the runtime, a mock SCRAM exchange for unknown users, cancels that reach only the
//! statement they were meant for, and server statement names no client can reach.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::common::wire::{self, error_field, first_value, Raw};
use crate::common::*;

/// A raw protocol client logged in as the trust user.
fn raw(proxy: SocketAddr) -> Raw {
    Raw::login(proxy, Duration::from_secs(30), &[])
}

/// Close (`b'C'`) or Describe (`b'D'`) of statement `name`.
fn target(c: &mut Raw, tag: u8, name: &str) {
    let mut body = vec![b'S'];
    wire::cstr(&mut body, name.as_bytes());
    c.send(&wire::msg(tag, &body));
}

fn tags(replies: &[(u8, Vec<u8>)]) -> String {
    replies.iter().map(|(t, _)| *t as char).collect()
}

/// (SQLSTATE, message) of every ErrorResponse.
fn errors(replies: &[(u8, Vec<u8>)]) -> Vec<(String, String)> {
    replies
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| {
            (
                error_field(b, b'C').unwrap_or_default(),
                error_field(b, b'M').unwrap_or_default(),
            )
        })
        .collect()
}

/// Resident set size of this process (the proxies run in it), in KiB.
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn proxy_with(write_pool: usize, read_pool: usize, extra: &str) -> SocketAddr {
    spawn_proxy(config(&env().cluster, write_pool, read_pool, extra))
}

#[tokio::test]
async fn a_client_past_its_prepared_statement_cap_gets_53400_and_carries_on() {
    let proxy = proxy_with(2, 2, "[limits]\nmax_prepared_statements_per_client = 100");
    tokio::task::spawn_blocking(move || {
        let mut c = raw(proxy);
        // 5,000 named statements (PQprepare: Parse + Sync), sent 100 at a time.
        let (mut prepared, mut refused) = (0, 0);
        for chunk in 0..50 {
            let mut batch = Vec::new();
            for i in 0..100 {
                let n = chunk * 100 + i;
                batch.extend(wire::parse(&format!("s{n}"), format!("SELECT {n}"), &[]));
                batch.extend(wire::sync());
            }
            c.send(&batch);
            for _ in 0..100 {
                let replies = c.until_ready();
                match tags(&replies).as_str() {
                    "1Z" => prepared += 1,
                    "EZ" => {
                        let (code, message) = &errors(&replies)[0];
                        assert_eq!(code, "53400", "{message}");
                        assert!(
                            message.contains("max_prepared_statements_per_client"),
                            "{message}"
                        );
                        refused += 1;
                    }
                    other => panic!("unexpected replies {other}"),
                }
            }
        }
        assert_eq!((prepared, refused), (100, 4900));
        // The client goes on: its statements work, and closing one makes room for another.
        c.bind_execute("s99");
        c.sync();
        assert_eq!(first_value(&c.until_ready()).as_deref(), Some("99"));
        target(&mut c, b'C', "s0");
        c.parse("another", "SELECT 'another'::text");
        c.bind_execute("another");
        c.sync();
        let replies = c.until_ready();
        assert_eq!(
            first_value(&replies).as_deref(),
            Some("another"),
            "{}",
            tags(&replies)
        );
        // Inside a transaction, on a server: refused there, and the transaction fails as after any error.
        c.query("BEGIN");
        c.until_ready();
        c.query("SELECT 1");
        c.until_ready();
        c.parse("one_too_many", "SELECT 2");
        c.bind_execute("one_too_many");
        c.sync();
        let replies = c.until_ready();
        assert_eq!(tags(&replies), "EZ");
        assert_eq!(errors(&replies)[0].0, "53400");
        assert_eq!(replies.last().map(|(_, b)| b.clone()), Some(b"E".to_vec()));
        c.query("ROLLBACK");
        c.until_ready();
        c.bind_execute("s1");
        c.sync();
        assert_eq!(first_value(&c.until_ready()).as_deref(), Some("1"));
    })
    .await
    .expect("raw client");
}

#[tokio::test]
async fn messages_past_the_batch_cap_before_sync_are_refused_and_memory_stays_bounded() {
    let proxy = proxy_with(2, 2, "[limits]\nmax_batch_messages = 100");
    tokio::task::spawn_blocking(move || {
        let mut c = raw(proxy);
        // An implicit transaction the refusal must roll back, then 5,000 Parses of 20 KB each without a Sync:
        // 100 MB that pgsplit would keep (each named statement's text) without the cap.
        c.query("CREATE TABLE IF NOT EXISTS bounded_batch (n int)");
        c.until_ready();
        c.parse("", "INSERT INTO bounded_batch VALUES (1)");
        c.bind_execute("");
        let padding = "x".repeat(20 * 1024);
        let before = rss_kib();
        for chunk in 0..50 {
            let mut batch = Vec::new();
            for i in 0..100 {
                let sql = format!("SELECT {i} /* {padding} */");
                batch.extend(wire::parse(&format!("big{chunk}_{i}"), &sql, &[]));
            }
            c.send(&batch);
        }
        c.sync();
        let replies = c.until_ready();
        let after = rss_kib();
        let t = tags(&replies);
        // ParseComplete for the first, BindComplete, CommandComplete, then ParseComplete for the Parses up to
        // the cap (100 messages in all), one error, and ReadyForQuery.
        assert_eq!(t, format!("12C{}EZ", "1".repeat(97)), "replies");
        let errs = errors(&replies);
        assert_eq!(errs[0].0, "53400");
        assert!(
            errs[0].1.contains("limits.max_batch_messages"),
            "{}",
            errs[0].1
        );
        let grown_mb = after.saturating_sub(before) / 1024;
        println!("RSS before {before} KiB, after {after} KiB: grew {grown_mb} MiB");
        assert!(grown_mb < 50, "RSS grew by {grown_mb} MiB");
        // The client goes on, and the insert before the refusal was rolled back with its batch.
        c.query("/* pgsplit:primary */ SELECT count(*) FROM bounded_batch");
        assert_eq!(first_value(&c.until_ready()).as_deref(), Some("0"));
        c.parse("small", "SELECT 'still here'::text");
        c.bind_execute("small");
        c.sync();
        assert_eq!(first_value(&c.until_ready()).as_deref(), Some("still here"));
        c.query("DROP TABLE bounded_batch");
        c.until_ready();
    })
    .await
    .expect("raw client");
}

#[tokio::test]
async fn silent_sockets_neither_take_client_slots_nor_stop_a_real_login() {
    // 200 silent sockets, more than max_client_connections: they count as logins in progress only.
    let proxy = proxy_with(2, 2, "max_client_connections = 50");
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(proxy).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let c = tokio::time::timeout(Duration::from_secs(10), connect_to(proxy, APP))
        .await
        .expect("login in time")
        .expect("a real client logs in");
    c.simple_query("SELECT 1").await.expect("query");
    println!(
        "logged in past 200 silent sockets in {:?}",
        started.elapsed()
    );
    drop(silent);

    // Past limits.max_logins_in_progress, sockets are closed at once (53300 when it fits), with no wait for
    // a startup packet.
    let proxy = proxy_with(2, 2, "[limits]\nmax_logins_in_progress = 20");
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(proxy).expect("connect"))
        .collect();
    let turned_away = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut turned_away = 0;
        let mut kept = Vec::new();
        for mut s in silent {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut buf = Vec::new();
            match s.read_to_end(&mut buf) {
                Ok(_) => {
                    assert!(
                        buf.is_empty() || String::from_utf8_lossy(&buf).contains("53300"),
                        "{buf:?}"
                    );
                    turned_away += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => turned_away += 1,
                Err(_) => kept.push(s), // still open: logging in
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        (turned_away, kept)
    })
    .await
    .expect("silent sockets");
    let (turned_away, kept) = turned_away;
    assert_eq!(turned_away, 180, "closed at once");
    assert_eq!(kept.len(), 20, "logging in");
    drop(kept);
    // Once they are gone, logins go through again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect_to(proxy, APP).await {
            Ok(c) => {
                c.simple_query("SELECT 1").await.expect("query");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                println!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot log in: {e}"),
        }
    }
}

/// Runs a proxy alone on a single-threaded runtime of its own (anything that blocks that thread stalls every
/// client), with replicas that cannot be reached and reads that may not fall back to the primary: a read is
/// classified, then refused by pgsplit itself (57P03), without a server.
fn spawn_single_threaded_proxy_refusing_reads() -> SocketAddr {
    let mut config = config(
        &env().cluster,
        4,
        4,
        "[routing]\nprimary_reads = \"never\"\nfallback = \"error\"",
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    for r in &mut config.replicas {
        r.port = closed_port;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let proxy = pgsplit::proxy::Proxy::bind(config).await.expect("bind");
            tx.send(proxy.local_addr().expect("addr")).expect("send");
            proxy.run(std::future::pending()).await;
        });
    });
    rx.recv().expect("proxy address")
}

#[tokio::test]
async fn a_long_query_being_classified_does_not_stall_other_clients() {
    let proxy = spawn_single_threaded_proxy_refusing_reads();
    let big = connect_to(proxy, APP).await.expect("connect");
    let small = connect_to(proxy, APP).await.expect("connect");
    // Over 256 KiB, and slow to classify (a long OR chain the classifier parses and walks). It is a read: once
    // classified, pgsplit refuses it itself, so its whole cost is pgsplit's.
    let terms: Vec<String> = (0..25_000).map(|i| format!("x = {i}")).collect();
    let sql = format!("SELECT x FROM t WHERE {}", terms.join(" OR "));
    assert!(sql.len() > 256 * 1024, "{}", sql.len());
    let done = Arc::new(AtomicBool::new(false));
    let (small_done, counted) = (done.clone(), Arc::new(AtomicUsize::new(0)));
    let count = counted.clone();
    let selects = tokio::spawn(async move {
        while !small_done.load(Ordering::Relaxed) {
            small
                .simple_query("/* pgsplit:primary */ SELECT 1")
                .await
                .expect("small select");
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Progress of the small client while each big query is outstanding.
    let mut during = Vec::new();
    for _ in 0..3 {
        let before = counted.load(Ordering::Relaxed);
        let t = Instant::now();
        let Err(err) = big.simple_query(&sql).await else {
            panic!("the read was not refused");
        };
        assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
        during.push((counted.load(Ordering::Relaxed) - before, t.elapsed()));
    }
    done.store(true, Ordering::Relaxed);
    selects.await.expect("small client");
    println!("small SELECTs completed while each big query was outstanding: {during:?}");
    // Classifying the big query takes tens of milliseconds or more, a small SELECT a fraction of one: on the
    // runtime thread, it would let almost none through.
    let total: usize = during.iter().map(|(n, _)| n).sum();
    assert!(
        total >= 30,
        "only {total} small SELECTs during 3 big queries: {during:?}"
    );
}

/// A SCRAM login attempt with a wrong proof; returns the reply types in order, the salt and iteration count of
/// the server-first-message, and the final error's SQLSTATE.
fn scram_attempt(proxy: SocketAddr, user: &str) -> (String, String, String, String) {
    let mut c = Raw::open(proxy, Duration::from_secs(30));
    c.send(&startup_packet(user));
    let mut seen = String::new();
    let (tag, body) = c.read().expect("a message");
    seen.push(tag as char);
    assert_eq!(tag, b'R');
    assert_eq!(&body[..4], &10u32.to_be_bytes(), "AuthenticationSASL");
    assert!(String::from_utf8_lossy(&body).contains("SCRAM-SHA-256"));
    let client_first = b"n,,n=,r=clientnonce";
    let mut b = b"SCRAM-SHA-256\0".to_vec();
    b.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    b.extend_from_slice(client_first);
    c.send(&wire::msg(b'p', &b));
    let (tag, body) = c.read().expect("a message");
    seen.push(tag as char);
    assert_eq!(
        &body[..4],
        &11u32.to_be_bytes(),
        "AuthenticationSASLContinue"
    );
    let server_first = String::from_utf8_lossy(&body[4..]).to_string();
    let attr = |name: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(name))
            .unwrap_or_default()
            .to_string()
    };
    let (nonce, salt, iterations) = (attr("r="), attr("s="), attr("i="));
    assert!(nonce.starts_with("clientnonce"));
    let proof = STANDARD.encode([7u8; 32]);
    let client_final = format!("c=biws,r={nonce},p={proof}");
    c.send(&wire::msg(b'p', client_final.as_bytes()));
    let (tag, body) = c.read().expect("a message");
    seen.push(tag as char);
    let code = error_field(&body, b'C').unwrap_or_default();
    assert_eq!(
        error_field(&body, b'M').unwrap_or_default(),
        format!("password authentication failed for user \"{user}\"")
    );
    (seen, salt, iterations, code)
}

#[tokio::test]
async fn unknown_users_get_a_mock_scram_exchange_that_fails_like_a_wrong_password() {
    let proxy = env().proxy;
    let (real, nobody, nobody_again, other) = tokio::task::spawn_blocking(move || {
        (
            scram_attempt(proxy, "app"),
            scram_attempt(proxy, "nobody"),
            scram_attempt(proxy, "nobody"),
            scram_attempt(proxy, "somebody_else"),
        )
    })
    .await
    .expect("attempts");
    // Same messages, same point of failure, same SQLSTATE as a real user's wrong password.
    assert_eq!(real.0, "RRE");
    assert_eq!(nobody.0, real.0);
    assert_eq!(real.3, "28P01");
    assert_eq!(nobody.3, real.3);
    assert_eq!(nobody.2, real.2, "iteration count");
    assert_eq!(
        STANDARD.decode(&nobody.1).expect("salt").len(),
        STANDARD.decode(&real.1).expect("salt").len()
    );
    // The mock salt is stable for a user (a changing one would give the mock away) and differs across users.
    assert_eq!(nobody.1, nobody_again.1);
    assert_ne!(nobody.1, other.1);
    // Through a driver: the same error as a wrong password.
    let Err(err) = connect_to(proxy, ("nobody", "x")).await else {
        panic!("an unknown user logged in");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
}

#[tokio::test]
async fn a_late_cancel_never_cancels_another_clients_statement_on_a_pool_of_one() {
    let proxy = proxy_with(1, 1, "[routing]\nread_write_split = false");
    let a = Arc::new(connect_to(proxy, APP).await.expect("a"));
    let b = Arc::new(connect_to(proxy, APP).await.expect("b"));
    let token = a.cancel_token();
    for round in 0..10 {
        // A runs a statement; B queues for the only server connection behind it; A's cancels keep coming while
        // A's statement ends and B's runs on that pool.
        let a2 = a.clone();
        let a_stmt = tokio::spawn(async move { a2.simple_query("SELECT pg_sleep(0.05)").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let b2 = b.clone();
        let b_stmt = tokio::spawn(async move { b2.simple_query("SELECT pg_sleep(0.15)").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let sprayers: Vec<_> = (0..2)
            .map(|_| {
                let (token, stop) = (token.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = token.cancel_query(NoTls).await;
                    }
                })
            })
            .collect();
        if let Err(e) = a_stmt.await.expect("join a") {
            assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "a: {e}");
        }
        let b_result = b_stmt.await.expect("join b");
        stop.store(true, Ordering::Relaxed);
        for s in sprayers {
            s.await.expect("sprayer");
        }
        if let Err(e) = b_result {
            panic!("round {round}: A's cancel reached B's statement: {e}");
        }
    }
    // A itself is cancelled only while its statement runs: idle in a transaction, its cancels go nowhere.
    a.batch_execute("BEGIN").await.expect("begin");
    a.simple_query("SELECT 1").await.expect("select");
    for _ in 0..20 {
        token.cancel_query(NoTls).await.expect("cancel");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.simple_query("SELECT pg_sleep(0.1)")
        .await
        .expect("the next statement is not cancelled");
    a.batch_execute("COMMIT").await.expect("commit");
    let _ = (a, b);
}

#[tokio::test]
async fn clients_cannot_reach_each_others_server_statements_on_a_pool_of_one() {
    let proxy = proxy_with(1, 1, "[routing]\nread_write_split = false");
    let a = connect_to(proxy, TRUST).await.expect("a");
    let mine = a.prepare("SELECT 'mine'::text").await.expect("prepare");
    let kept = a.prepare("SELECT 'kept'::text").await.expect("prepare");
    let value = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, String>(0);
    assert_eq!(value(a.query(&mine, &[]).await.expect("run")), "mine");
    // Another client on the same (only) server connection sees pgsplit's names for A's statements there.
    let b_sql = connect_to(proxy, TRUST).await.expect("b");
    let mut names = Vec::new();
    for m in b_sql
        .simple_query(
            "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgsplit%' ORDER BY name",
        )
        .await
        .expect("list")
    {
        if let SimpleQueryMessage::Row(r) = m {
            names.push(r.get(0).expect("name").to_string());
        }
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let (first, second) = (names[0].clone(), names[1].clone());

    let (f, s) = (first.clone(), second.clone());
    tokio::task::spawn_blocking(move || {
        let mut b = raw(proxy);
        // A statement of its own under A's server name is B's own.
        b.parse(&f, "SELECT 'yours'::text");
        b.bind_execute(&f);
        b.sync();
        assert_eq!(first_value(&b.until_ready()).as_deref(), Some("yours"));
        // A name B does not hold never reaches the server: Bind and Describe fail as in PostgreSQL...
        b.bind_execute(&s);
        b.sync();
        let replies = b.until_ready();
        assert_eq!(tags(&replies), "EZ");
        assert_eq!(
            errors(&replies)[0],
            (
                "26000".to_string(),
                format!("prepared statement \"{s}\" does not exist")
            )
        );
        target(&mut b, b'D', &s);
        b.sync();
        assert_eq!(errors(&b.until_ready())[0].0, "26000");
        // ...and so does the unnamed statement, which B never prepared.
        b.bind_execute("");
        b.sync();
        let replies = b.until_ready();
        assert_eq!(errors(&replies)[0].0, "26000", "{}", tags(&replies));
        // A Close of it is answered, and closes nothing on the server (here with the server held).
        b.query("BEGIN");
        b.until_ready();
        b.query("SELECT 1");
        b.until_ready();
        target(&mut b, b'C', &s);
        b.sync();
        assert_eq!(tags(&b.until_ready()), "3Z");
        b.query("COMMIT");
        b.until_ready();
        // SQL-level EXECUTE and DEALLOCATE of pgsplit's names are refused.
        for sql in [
            format!("EXECUTE {s}"),
            format!("DEALLOCATE {s}"),
            format!("deallocate prepare \"{s}\""),
            format!("PREPARE {s} AS SELECT 'hijack'"),
        ] {
            b.query(&sql);
            let replies = b.until_ready();
            assert_eq!(tags(&replies), "EZ", "{sql}");
            assert_eq!(errors(&replies)[0].0, "42939", "{sql}");
        }
        // Extended protocol too.
        b.parse("", &format!("EXECUTE {s}"));
        b.bind_execute("");
        b.sync();
        assert_eq!(errors(&b.until_ready())[0].0, "42939");
    })
    .await
    .expect("raw client");
    // A's statements are intact.
    assert_eq!(value(a.query(&mine, &[]).await.expect("run")), "mine");
    assert_eq!(value(a.query(&kept, &[]).await.expect("run")), "kept");
    let _ = (first, b_sql);
}
