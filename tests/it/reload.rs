//! Live reload against real clusters: under pgbench load a reload resizes pools, adds a replica, retires another,
//! changes `max_lag` and rotates a password without a failed transaction; a broken file is refused whole with its
//! file:line:field message; SIGHUP reloads the real binary.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::file_proxy::{console_reload, http_json, FileProxy};
use crate::common::*;
use pgsplit_harness::{Cluster, ClusterOptions};

/// A configuration file in front of `cluster` listing `replicas` (by harness name).
fn file(cluster: &Cluster, replicas: &[&str], pools: (usize, usize), extra: &str) -> String {
    let mut toml = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra}\n\
         [primary]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\n",
        cluster.primary().port
    );
    for r in cluster.replicas() {
        if replicas.contains(&r.name.as_str()) {
            toml.push_str(&format!(
                "[[replicas]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
                r.name, r.port
            ));
        }
    }
    toml.push_str(&format!(
        "[pools]\nwrite_pool_size = {}\nread_pool_size = {}\n\
         [timeouts]\npool_wait = \"20s\"\n\
         [[databases]]\nname = \"app\"\n\
         [[users]]\nname = \"app\"\npassword = \"app-secret\"\n\
         [[users]]\nname = \"trustclient\"\nauth = \"trust\"\nserver_user = \"postgres\"\nadmin = true\n",
        pools.0, pools.1
    ));
    toml
}

/// A user whose pgsplit password is `password`; it logs in to the servers as `app`.
fn rot_user(password: &str) -> String {
    format!(
        "[[users]]\nname = \"rot\"\npassword = \"{password}\"\nserver_user = \"app\"\nserver_password = \"app-secret\"\n"
    )
}

fn port_of(cluster: &Cluster, name: &str) -> u16 {
    cluster
        .replicas()
        .into_iter()
        .find(|r| r.name == name)
        .expect("replica")
        .port
}

fn names(status: &serde_json::Value) -> Vec<String> {
    status["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn pool_sizes(status: &serde_json::Value, kind: &str) -> Vec<u64> {
    status["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .filter(|p| p["user"] == "app" && p["kind"] == kind)
        .map(|p| p["size"].as_u64().unwrap_or_default())
        .collect()
}

fn pgbench_child(url: &str, args: &[&str]) -> Child {
    Command::new("pgbench")
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench")
}

#[track_caller]
fn assert_no_failures(child: Child, what: &str) {
    let out = child.wait_with_output().expect("pgbench ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {stdout}{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{what}: {stdout}{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_pgbench_load_applies_servers_pools_lag_passwords_and_certificates() {
    let cluster = start_cluster_with(ClusterOptions {
        replicas: 3,
        ..ClusterOptions::default()
    });
    let (r1, r3) = (port_of(&cluster, "replica1"), port_of(&cluster, "replica3"));
    // Clients on TLS (pgbench's default `sslmode=prefer` takes it); the reload rotates the certificate.
    let pki = crate::common::pki::pki();
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "\n[tls]\nclient_mode = \"prefer\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            cert.display(),
            key.display()
        )
    };
    let before = file(
        &cluster,
        &["replica1", "replica2"],
        (4, 4),
        &(String::from("[lag]\nmax_lag = \"60s\"")
            + &tls(&pki.server_cert_file, &pki.server_key_file)),
    ) + &rot_user("rot-old");
    let proxy = FileProxy::start(&before);
    let url = url(proxy.addr, APP);
    let init = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", &url])
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "{init:?}");
    for r in ["replica1", "replica2", "replica3"] {
        cluster
            .wait_replayed(r, Duration::from_secs(30))
            .expect("replayed");
    }
    // A session of `rot` opened with the old password: it must go on untouched.
    let old_session = connect_to(proxy.addr, ("rot", "rot-old"))
        .await
        .expect("old password before the reload");

    let reads = pgbench_child(&url, &["-c", "8", "-j", "2", "-T", "10", "-S", "-n"]);
    let writes = pgbench_child(&url, &["-c", "4", "-j", "2", "-T", "10", "-N", "-n"]);
    // A new connection (TLS handshake, login) per transaction, across the certificate rotation.
    let reconnects = pgbench_child(&url, &["-c", "2", "-j", "1", "-T", "10", "-S", "-n", "-C"]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let after = file(
        &cluster,
        &["replica2", "replica3"],
        (6, 3),
        &(String::from("[lag]\nmax_lag = \"30s\"")
            + &tls(&pki.other_server_cert_file, &pki.other_server_key_file)),
    ) + &rot_user("rot-new");
    proxy.write(&after);
    let notice = proxy.reload().await.expect("reload accepted");
    assert!(notice.contains("configuration reloaded"), "{notice}");
    let reloaded_at = Instant::now();

    // Passwords: the new one logs in, the old one is refused, the running session goes on.
    connect_to(proxy.addr, ("rot", "rot-new"))
        .await
        .expect("new password");
    let refused = connect_to(proxy.addr, ("rot", "rot-old"))
        .await
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(refused.as_deref(), Some("28P01"));
    old_session
        .simple_query("SELECT 1")
        .await
        .expect("the running session is untouched");

    // The rotated certificate (signed by the other CA) serves new handshakes.
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(proxy.addr.port())
        .user(APP.0)
        .password(APP.1)
        .dbname("app")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (rotated, conn) = pg
        .connect(pki.pg_tls_trusting(&pki.other_ca_file, "localhost"))
        .await
        .expect("a TLS login verified against the new certificate's CA");
    tokio::spawn(conn);
    rotated
        .simple_query("SELECT 1")
        .await
        .expect("query over the new certificate");

    // Reads reach the added replica once probed, and never the removed one.
    let reader = connect_to(proxy.addr, APP).await.expect("reader");
    let mut seen = std::collections::HashSet::new();
    while !seen.contains(&r3) {
        assert!(
            reloaded_at.elapsed() < Duration::from_secs(20),
            "no read on replica3: {seen:?}"
        );
        let port = server_port(&reader, "SELECT inet_server_port()").await;
        assert_ne!(port, r1, "a read went to the removed replica");
        seen.insert(port);
    }
    for _ in 0..50 {
        let port = server_port(&reader, "SELECT inet_server_port()").await;
        assert_ne!(port, r1, "a read went to the removed replica");
    }

    assert_no_failures(reads, "pgbench -S");
    assert_no_failures(writes, "pgbench -N");
    assert_no_failures(reconnects, "pgbench -S -C");

    // /status: the servers (replica1 gone once drained), the pool sizes, max_lag, one reload counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = proxy.status_document();
        if !names(&s).contains(&"replica1".to_string()) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(names(&status), ["primary", "replica2", "replica3"]);
    assert_eq!(status["max_lag_seconds"], 30.0);
    assert!(
        pool_sizes(&status, "write").iter().all(|&s| s == 6),
        "{status}"
    );
    assert!(
        pool_sizes(&status, "read").iter().all(|&s| s == 3),
        "{status}"
    );
    for p in status["pools"].as_array().expect("pools") {
        let (active, idle, size) = (p["active"].as_u64(), p["idle"].as_u64(), p["size"].as_u64());
        assert!(
            active
                .zip(idle)
                .zip(size)
                .is_some_and(|((a, i), s)| a + i <= s),
            "a pool over its size once the load is over: {p}"
        );
    }
    assert_eq!(status["reload"]["reloads_ok"], 1);
    assert!(status["reload"]["last_reload_unix_ms"].is_u64());
    assert!(status["reload"]["last_refused_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_whole_with_its_line_and_field() {
    let e = env();
    let good = file(&e.cluster, &["replica1", "replica2"], (3, 3), "");
    let proxy = FileProxy::start(&good);
    let name = proxy.path.display().to_string();

    // A syntax error: F0000 naming the file and line; nothing changes.
    let broken = good.replace(
        "[pools]\nwrite_pool_size = 3",
        "[pools]\nwrite_pool_size = = 9",
    );
    proxy.write(&broken);
    let err = proxy.reload().await.expect_err("refused");
    assert_eq!(err.code().code(), "F0000", "{err:?}");
    let line = broken
        .lines()
        .position(|l| l.contains("= = 9"))
        .expect("line")
        + 1;
    assert!(
        err.message().contains(&format!("{name}:{line}")),
        "{}",
        err.message()
    );

    // Valid TOML, invalid value: the field is named too.
    let invalid = good.replace(
        "read_pool_size = 3",
        "read_pool_size = 9\n[routing]\nbalancer = \"fastest\"",
    );
    proxy.write(&invalid);
    let err = proxy.reload().await.expect_err("refused");
    assert_eq!(err.code().code(), "F0000");
    assert!(
        err.message().contains("routing.balancer"),
        "{}",
        err.message()
    );
    assert!(err.message().contains(&name), "{}", err.message());

    let status = proxy.status();
    assert_eq!(status["reload"]["reloads_ok"], 0);
    assert_eq!(status["reload"]["reloads_refused"], 2);
    let last = status["reload"]["last_refused_error"]
        .as_str()
        .expect("the last refusal");
    assert!(last.contains("routing.balancer"), "{last}");
    assert!(!last.contains("app-secret"));
    // Nothing changed: the sizes of the first file, and clients are served.
    let config = proxy.shared.config();
    assert_eq!(
        (config.pools.read_pool_size, config.pools.write_pool_size),
        (3, 3)
    );
    let client = connect_to(proxy.addr, APP).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("served");

    // SHOW CONFIG carries the reload log.
    let url = format!("postgres://trustclient@{}/pgsplit", proxy.addr);
    let (console, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("console");
    tokio::spawn(conn);
    let rows = console.simple_query("SHOW CONFIG").await.expect("show");
    let text: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(
        text.iter().any(|l| l == "# reload.reloads_refused = 2"),
        "{text:?}"
    );

    // A proxy built from a Config in code has no file to reload.
    let err = console_reload(e.proxy).await.expect_err("no file");
    assert_eq!(err.code().code(), "55000");
    assert!(err.message().contains("no file"), "{}", err.message());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn sighup_reloads_the_running_binary() {
    let e = env();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgsplit.toml");
    let text = |max_lag: &str, port: u16, admin: u16| {
        file(
            &e.cluster,
            &["replica1", "replica2"],
            (2, 2),
            &format!("[lag]\nmax_lag = \"{max_lag}\""),
        )
        .replace(
            "127.0.0.1:0\"\nadmin",
            &format!("127.0.0.1:{port}\"\nadmin"),
        )
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
        )
    };
    // The ports are picked free, then bound by the binary: another test may take one in between. The binary then
    // exits, and what answers on the admin port is someone else's pgsplit: start again with other ports until
    // the admin endpoint that answers is this binary's (its /status names this file).
    let (mut child, admin_addr, ports) = 'started: {
        for _ in 0..5 {
            let (port, admin) = (free_port(), free_port());
            std::fs::write(&path, text("60s", port, admin)).expect("write");
            let log = std::fs::File::create(dir.path().join("pgsplit.log")).expect("log file");
            let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
                .arg("run")
                .arg("--config")
                .arg(&path)
                .env("PGSPLIT_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start pgsplit");
            let admin_addr: std::net::SocketAddr =
                format!("127.0.0.1:{admin}").parse().expect("addr");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && child.try_wait().expect("child").is_none() {
                if std::net::TcpStream::connect(admin_addr).is_ok() {
                    let status = http_json(admin_addr, "/status");
                    if status["reload"]["config_file"] == path.display().to_string() {
                        break 'started (child, admin_addr, (port, admin));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("pgsplit did not start");
    };
    assert_eq!(http_json(admin_addr, "/status")["max_lag_seconds"], 60.0);

    std::fs::write(&path, text("42s", ports.0, ports.1)).expect("rewrite");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = serde_json::Value::Null;
    while Instant::now() < deadline {
        status = http_json(admin_addr, "/status");
        if status["max_lag_seconds"] == 42.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive = child.try_wait().expect("child").is_none();
    let _ = child.kill();
    let _ = child.wait();
    // What the binary logged (its reloads), shown if an assertion fails.
    let log = std::fs::read_to_string(dir.path().join("pgsplit.log")).unwrap_or_default();
    assert!(alive, "SIGHUP ended pgsplit\n{log}");
    assert_eq!(status["max_lag_seconds"], 42.0, "{status}\n{log}");
    assert!(
        status["reload"]["reloads_ok"].as_u64() >= Some(1),
        "{status}\n{log}"
    );
}

/// GET `path` on an admin endpoint as text (HTTP/1.0: no chunking).
fn http_text(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_routing_passwords_users_and_databases_refuses_removing_the_primary_and_names_restarts(
) {
    let e = env();
    let user = |server_password: &str| {
        format!(
            "[[users]]\nname = \"sp\"\npassword = \"sp-pass\"\nserver_user = \"app\"\nserver_password = \"{server_password}\"\n"
        )
    };
    let gone = "[[users]]\nname = \"gone\"\npassword = \"gone-pass\"\nserver_user = \"app\"\nserver_password = \"app-secret\"\n";
    let first = file(&e.cluster, &["replica1", "replica2"], (2, 2), "") + &user("wrong") + gone;
    let proxy = FileProxy::start(&first);
    // The server refuses the wrong server password: no connection for `sp`.
    assert!(connect_to(proxy.addr, ("sp", "sp-pass")).await.is_err());
    let gone_session = connect_to(proxy.addr, ("gone", "gone-pass"))
        .await
        .expect("gone logs in before the reload");
    let other_db = format!(
        "postgres://app:app-secret@{}:{}/postgres",
        proxy.addr.ip(),
        proxy.addr.port()
    );
    let unknown = tokio_postgres::connect(&other_db, tokio_postgres::NoTls)
        .await
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(unknown.as_deref(), Some("3D000"));

    // A changed server password, reads kept on the primary, a new listen address.
    let second = file(
        &e.cluster,
        &["replica1", "replica2"],
        (2, 2),
        "[routing]\nread_write_split = false",
    )
    .replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1)
        + &user("app-secret")
        + "[[databases]]\nname = \"postgres\"\n";
    proxy.write(&second);
    let notice = proxy.reload().await.expect("reloaded");
    assert!(
        notice.contains("listen changed: takes effect after a restart"),
        "{notice}"
    );
    assert_eq!(
        proxy.shared.config().listen.port(),
        0,
        "the configuration in force keeps the running listen address"
    );
    let sp = connect_to(proxy.addr, ("sp", "sp-pass"))
        .await
        .expect("the new server password is used");
    // An added database takes logins.
    let (db, conn) = tokio_postgres::connect(&other_db, tokio_postgres::NoTls)
        .await
        .expect("the added database");
    tokio::spawn(conn);
    db.simple_query("SELECT 1").await.expect("served");
    // A removed user: its session goes on, a new login is refused.
    for _ in 0..5 {
        gone_session
            .simple_query("SELECT inet_server_port()")
            .await
            .expect("the removed user's session goes on");
    }
    let refused = connect_to(proxy.addr, ("gone", "gone-pass"))
        .await
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(refused.as_deref(), Some("28P01"));
    for _ in 0..10 {
        let port = server_port(&sp, "SELECT inet_server_port()").await;
        assert_eq!(port, e.cluster.primary().port, "read_write_split = false");
    }

    // A file whose servers no longer include the one taking writes is refused (55000); nothing changes.
    let replica1 = port_of(&e.cluster, "replica1");
    let without_primary = second.replace(
        &format!(
            "name = \"primary\"\nhost = \"127.0.0.1\"\nport = {}",
            e.cluster.primary().port
        ),
        &format!("name = \"other\"\nhost = \"127.0.0.1\"\nport = {replica1}"),
    );
    assert_ne!(without_primary, second);
    proxy.write(&without_primary);
    let err = proxy.reload().await.expect_err("refused");
    assert_eq!(err.code().code(), "55000", "{err:?}");
    assert!(err.message().contains("\"primary\""), "{}", err.message());
    assert_eq!(proxy.shared.config().primary.display_name(), "primary");

    let metrics = http_text(proxy.admin, "/metrics");
    assert!(
        metrics.contains("pgsplit_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgsplit_reloads_total{result=\"refused\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_connections_grows_at_once_and_shrinks_as_clients_leave() {
    let e = env();
    let with_max = |n: usize| {
        file(
            &e.cluster,
            &["replica1", "replica2"],
            (2, 2),
            &format!("max_client_connections = {n}"),
        )
    };
    let proxy = FileProxy::start(&with_max(2));
    let code = |r: Result<tokio_postgres::Client, tokio_postgres::Error>| {
        r.err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()))
    };
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(connect_to(proxy.addr, APP).await.expect("within the limit"));
    }
    assert_eq!(
        code(connect_to(proxy.addr, APP).await).as_deref(),
        Some("53300")
    );
    // Every slot is taken (the console could not log in either): reload in process.
    proxy.write(&with_max(4));
    proxy.shared.reload().expect("reloaded");
    for _ in 0..2 {
        clients.push(connect_to(proxy.addr, APP).await.expect("grown at once"));
    }
    assert_eq!(
        code(connect_to(proxy.addr, APP).await).as_deref(),
        Some("53300")
    );
    // Down to 1 with 4 connected: nobody is dropped, and nobody new gets in until all four have left.
    proxy.write(&with_max(1));
    proxy.shared.reload().expect("reloaded");
    for c in &clients {
        c.simple_query("SELECT 1").await.expect("nobody is dropped");
    }
    clients.truncate(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        code(connect_to(proxy.addr, APP).await).as_deref(),
        Some("53300"),
        "one client left: at the new limit"
    );
    clients.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect_to(proxy.addr, APP).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no slot after all left: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_functions_and_weights_apply_live() {
    let e = env();
    let settings = "[routing]\nbalancer = \"round_robin\"\nconsistency = \"eventual\"\n[lag]\nmax_lag = \"60s\"";
    let first = file(&e.cluster, &["replica1", "replica2"], (2, 2), settings);
    let proxy = FileProxy::start(&first);
    let (r1, r2) = (
        port_of(&e.cluster, "replica1"),
        port_of(&e.cluster, "replica2"),
    );
    wait_for("both replicas eligible", Duration::from_secs(20), || {
        ["replica1", "replica2"]
            .iter()
            .all(|n| status(&proxy.shared, n).eligible)
    })
    .await;
    let client = connect_to(proxy.addr, APP).await.expect("connect");
    let abs = "SELECT inet_server_port(), abs(-1)";
    assert_ne!(server_port(&client, abs).await, e.cluster.primary().port);

    let second = first
        .replacen("[routing]", "write_functions = [\"abs\"]\n[routing]", 1)
        .replace(
            &format!("name = \"replica1\"\nhost = \"127.0.0.1\"\nport = {r1}"),
            &format!("name = \"replica1\"\nhost = \"127.0.0.1\"\nport = {r1}\nweight = 9"),
        );
    proxy.write(&second);
    proxy.reload().await.expect("reloaded");
    assert_eq!(
        server_port(&client, abs).await,
        e.cluster.primary().port,
        "abs is a write function now"
    );
    let mut on = std::collections::HashMap::new();
    for _ in 0..100 {
        let port = server_port(&client, "SELECT inet_server_port()").await;
        *on.entry(port).or_insert(0) += 1;
    }
    let (n1, n2) = (
        on.get(&r1).copied().unwrap_or(0),
        on.get(&r2).copied().unwrap_or(0),
    );
    assert!(n1 >= 75 && (3..=20).contains(&n2), "weights 9:1 → {on:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_finishes_its_running_transaction_then_disappears() {
    let e = env();
    let lag = "[lag]\nmax_lag = \"60s\"";
    let first = file(&e.cluster, &["replica1", "replica2"], (2, 2), lag);
    let proxy = FileProxy::start(&first);
    wait_for("both replicas eligible", Duration::from_secs(20), || {
        ["replica1", "replica2"]
            .iter()
            .all(|n| status(&proxy.shared, n).eligible)
    })
    .await;
    let client = connect_to(proxy.addr, APP).await.expect("connect");
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .expect("begin");
    let port = server_port(&client, "SELECT inet_server_port()").await;
    let (name, kept) = if port == port_of(&e.cluster, "replica1") {
        ("replica1", "replica2")
    } else {
        ("replica2", "replica1")
    };
    assert_ne!(
        port,
        e.cluster.primary().port,
        "a read-only transaction on a replica"
    );

    proxy.write(&file(&e.cluster, &[kept], (2, 2), lag));
    proxy.reload().await.expect("reloaded");
    let draining = |s: &serde_json::Value| {
        s["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == name))
            .map(|v| v["draining"] == true)
    };
    assert_eq!(draining(&proxy.status()), Some(true), "shown as draining");
    // The running transaction goes on there, to its end.
    assert_eq!(
        server_port(&client, "SELECT inet_server_port()").await,
        port
    );
    client.batch_execute("COMMIT").await.expect("commit");
    wait_for(
        "the drained server to disappear",
        Duration::from_secs(5),
        || draining(&proxy.status()).is_none(),
    )
    .await;
    for _ in 0..10 {
        assert_ne!(
            server_port(&client, "SELECT inet_server_port()").await,
            port
        );
    }
}

/// (current_user, server port) of a hinted-to-primary statement and of a plain read.
async fn who_where(client: &tokio_postgres::Client) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for sql in [
        "/* pgsplit:primary */ SELECT current_user, inet_server_port()",
        "SELECT current_user, inet_server_port()",
    ] {
        for m in client.simple_query(sql).await.expect("query") {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                let port = r.get(1).expect("port").parse().expect("port");
                out.push((r.get(0).expect("user").to_string(), port));
            }
        }
    }
    out
}

#[tokio::test]
async fn looked_up_and_pass_through_users_keep_working_across_a_reload() {
    let e = env();
    // pg_hba requires SCRAM for members of scram_login: pgsplit holds no password for either role, so every new
    // server connection logs in with the key the client's login gave (pass-through).
    e.cluster
        .psql(
            "primary",
            "CREATE ROLE rl_looked LOGIN PASSWORD 'looked-pw' IN ROLE scram_login; \
             CREATE ROLE rl_listed LOGIN PASSWORD 'listed-pw' IN ROLE scram_login",
        )
        .expect("roles");
    let verifier = e
        .cluster
        .psql(
            "primary",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'rl_listed'",
        )
        .expect("verifier");
    let verifier = verifier.trim().to_string();
    let text = |pool: usize| {
        file(
            &e.cluster,
            &["replica1", "replica2"],
            (pool, pool),
            "auth_user = \"trustclient\"",
        ) + &format!("[[users]]\nname = \"rl_listed\"\nscram_verifier = \"{verifier}\"\n")
    };
    let proxy = FileProxy::start(&text(2));
    let looked = connect_to(proxy.addr, ("rl_looked", "looked-pw"))
        .await
        .expect("looked-up login");
    let listed = connect_to(proxy.addr, ("rl_listed", "listed-pw"))
        .await
        .expect("pass-through login");
    assert_eq!(
        who_where(&looked).await[0],
        ("rl_looked".into(), primary_port())
    );
    assert_eq!(
        who_where(&listed).await[0],
        ("rl_listed".into(), primary_port())
    );

    // Bigger pools: the reload rebuilds every pool set's targets. The servers then drop every connection of both
    // roles, so the next statements of the clients already logged in need new server connections, opened with
    // the keys their logins gave (no new login has given them again).
    proxy.write(&text(4));
    proxy.reload().await.expect("reload");
    for server in ["primary", "replica1", "replica2"] {
        e.cluster
            .psql(
                server,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename IN ('rl_looked', 'rl_listed')",
            )
            .expect("terminate");
    }
    for (client, user) in [(&looked, "rl_looked"), (&listed, "rl_listed")] {
        for (who, port) in who_where(client).await {
            assert_eq!(who, user);
            assert!(port == primary_port() || replica_ports().contains(&port));
        }
    }
    // New logins of both users still work.
    for (user, pw) in [("rl_looked", "looked-pw"), ("rl_listed", "listed-pw")] {
        let fresh = connect_to(proxy.addr, (user, pw))
            .await
            .expect("login after the reload");
        assert_eq!(who_where(&fresh).await[0].0, user);
    }
}
