//! TLS through pgsplit, on the shared cluster (its servers run `ssl = on` with the test PKI's certificate):
//! clients with psql and tokio-postgres (sslmode require, verify-full with the right and a wrong name,
//! channel_binding=require, client certificates, direct TLS), `client_mode = "require"` refusing plain text,
//! and pgsplit connecting to `hostssl`-only servers in verify-full (and refusing a server signed by another CA).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pgsplit::config::Config;
use pgsplit::proxy::{Proxy, ProxyHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::pki::pki;
use crate::common::{self, env, APP, TLS_ONLY};

/// `[tls]` with pgsplit's certificate and `client_mode`, plus `more` lines.
fn client_tls(mode: &str, more: &str) -> String {
    let pki = pki();
    format!(
        "[tls]\nclient_mode = \"{mode}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{more}\n",
        pki.server_cert_file.display(),
        pki.server_key_file.display()
    )
}

/// A proxy in front of the shared cluster with `tls` (a `[tls]` table), running on the background runtime.
fn proxy_with(tls: &str) -> ProxyHandle {
    start(common::config(&env().cluster, 4, 4, tls))
}

fn start(config: Config) -> ProxyHandle {
    let (tx, rx) = std::sync::mpsc::channel();
    common::runtime().spawn(async move {
        let proxy = Proxy::bind(config).await.expect("bind");
        tx.send(proxy.spawn().expect("spawn")).expect("send");
    });
    rx.recv().expect("proxy")
}

/// psql through `proxy` as `app` with extra connection-string `options`: (success, stdout, stderr).
fn psql(proxy: &ProxyHandle, options: &str, sql: &str) -> (bool, String, String) {
    let conninfo = format!(
        "hostaddr=127.0.0.1 port={} user=app dbname=app connect_timeout=10 {options}",
        proxy.addr.port()
    );
    let out = Command::new("psql")
        .args(["-X", "-At", "-d", &conninfo, "-c", sql])
        .env("PGPASSWORD", APP.1)
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// tokio-postgres through `addr` as `user`, over TLS checking the name `name` (verify-full).
async fn connect_tls(
    addr: std::net::SocketAddr,
    user: (&str, &str),
    tls: pgsplit::tls::PgTls,
) -> Result<Client, tokio_postgres::Error> {
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(addr.port())
        .user(user.0)
        .password(user.1)
        .dbname("app")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = pg.connect(tls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn one_value(client: &Client, sql: &str) -> String {
    for m in client.simple_query(sql).await.expect("query") {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("").to_string();
        }
    }
    panic!("no row from {sql}");
}

#[test]
fn psql_require_verify_full_and_channel_binding() {
    let proxy = proxy_with(&client_tls("prefer", ""));
    let ca = pki().ca_file.display().to_string();

    let (ok, out, err) = psql(&proxy, "host=localhost sslmode=require", "\\conninfo");
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");

    let (ok, out, err) = psql(
        &proxy,
        &format!("host=localhost sslmode=verify-full sslrootcert={ca}"),
        "SELECT 40 + 2",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");

    let (ok, _, err) = psql(
        &proxy,
        &format!("host=wrong.example sslmode=verify-full sslrootcert={ca}"),
        "SELECT 1",
    );
    assert!(!ok, "a certificate for localhost accepted as wrong.example");
    assert!(err.contains("does not match host name"), "{err}");

    // SCRAM-SHA-256-PLUS with tls-server-end-point: libpq refuses to go on without it.
    let (ok, out, err) = psql(
        &proxy,
        "host=localhost sslmode=require channel_binding=require",
        "SELECT current_user",
    );
    assert!(ok, "channel_binding=require through pgsplit: {err}");
    assert_eq!(out.trim(), "app");

    // prefer still takes plain-text clients, and binding is then not possible.
    let (ok, out, err) = psql(&proxy, "host=localhost sslmode=disable", "\\conninfo");
    assert!(ok, "{err}");
    assert!(!out.contains("SSL connection"), "{out}");
    let (ok, _, err) = psql(
        &proxy,
        "host=localhost sslmode=disable channel_binding=require",
        "SELECT 1",
    );
    assert!(!ok && err.contains("channel binding"), "{err}");
}

#[tokio::test]
async fn tokio_postgres_verify_full_right_and_wrong_name() {
    let proxy = proxy_with(&client_tls("allow", ""));
    let client = connect_tls(proxy.addr, APP, pki().pg_tls("localhost"))
        .await
        .expect("TLS with the right name");
    assert_eq!(one_value(&client, "SELECT 'over tls'").await, "over tls");
    let refused = connect_tls(proxy.addr, APP, pki().pg_tls("wrong.example")).await;
    let err = refused.expect_err("the wrong name is refused");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
}

#[tokio::test]
async fn require_refuses_plain_text_with_28000() {
    let proxy = proxy_with(&client_tls("require", ""));
    let err = common::connect_to(proxy.addr, APP)
        .await
        .expect_err("plain text refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert!(db.message().contains("SSL required"), "{db:?}");
    let client = connect_tls(proxy.addr, APP, pki().pg_tls("localhost"))
        .await
        .expect("TLS accepted");
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
}

#[tokio::test]
async fn client_certificates_accepted_and_refused() {
    let pki = pki();
    let proxy = proxy_with(&client_tls(
        "require",
        &format!(
            "client_ca_file = \"{}\"\nclient_cert_user = true",
            pki.ca_file.display()
        ),
    ));
    let with_cert = |cert: &Path, key: &Path| {
        pgsplit::tls::PgTls::new(
            pki.client_config(&pki.ca_file, Some((cert, key))),
            Some("localhost".try_into().expect("name")),
        )
    };
    let client = connect_tls(
        proxy.addr,
        APP,
        with_cert(&pki.client_cert_file, &pki.client_key_file),
    )
    .await
    .expect("a certificate signed by client_ca_file");
    assert_eq!(one_value(&client, "SELECT 1").await, "1");

    let stranger = connect_tls(
        proxy.addr,
        APP,
        with_cert(&pki.stranger_cert_file, &pki.stranger_key_file),
    )
    .await;
    assert!(stranger.is_err(), "a certificate of another CA accepted");
    let none = connect_tls(proxy.addr, APP, pki.pg_tls("localhost")).await;
    assert!(none.is_err(), "no client certificate accepted");

    // The certificate names `app`: another user may not use it (client_cert_user).
    let err = connect_tls(
        proxy.addr,
        ("md5client", "md5-secret"),
        with_cert(&pki.client_cert_file, &pki.client_key_file),
    )
    .await
    .expect_err("CN app used for md5client");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{db:?}");
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() {
    let proxy = proxy_with(&client_tls("require", ""));
    let pki = pki();
    let open = |alpn: bool| {
        let mut config = (*pki.client_config(&pki.ca_file, None)).clone();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        let addr = proxy.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().expect("name"), tcp)
                .await
                .expect("handshake");
            tls.write_all(&common::startup_packet("app"))
                .await
                .expect("startup");
            tls.flush().await.expect("flush");
            let mut first = [0u8; 1];
            match tls.read(&mut first).await {
                Ok(1) => Some(first[0]),
                _ => None,
            }
        }
    };
    assert_eq!(
        open(true).await,
        Some(b'R'),
        "AuthenticationRequest expected"
    );
    assert_eq!(
        open(false).await,
        None,
        "direct TLS without ALPN must be closed"
    );
}

/// pgsplit in front of the shared cluster logging in as `TLS_ONLY` (admitted by `hostssl` lines only), with
/// `server_mode` and `server_ca_file` as given.
fn server_tls_proxy(mode: &str, ca: &Path) -> ProxyHandle {
    let rest = format!(
        "admin_listen = \"127.0.0.1:0\"\n\
         [tls]\nserver_mode = \"{mode}\"\nserver_ca_file = \"{}\"\n\
         [lag]\nmax_lag = \"60s\"\nlag_check_interval = \"100ms\"\n\
         [routing]\ncausal_wait = \"2s\"\n\
         [[databases]]\nname = \"app\"\n\
         [[users]]\nname = \"{user}\"\npassword = \"{password}\"\n",
        ca.display(),
        user = TLS_ONLY.0,
        password = TLS_ONLY.1,
    );
    start(pgsplit::demo::local_config(&env().cluster, 0, &rest, "<test>").expect("config"))
}

#[tokio::test]
async fn servers_in_verify_full_with_hostssl_only() {
    let proxy = server_tls_proxy("verify-full", &pki().ca_file);
    // Replicas take reads only once the monitor, over TLS too, has seen them.
    let shared = proxy.shared.clone();
    common::wait_for("replicas eligible", Duration::from_secs(30), || {
        common::status(&shared, "replica1").eligible && common::status(&shared, "replica2").eligible
    })
    .await;
    let client = common::connect_to(proxy.addr, TLS_ONLY)
        .await
        .expect("log in through pgsplit");
    let replicas = common::replica_ports();
    let read = "SELECT pg_is_in_recovery(), inet_server_port(), \
                (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())";
    let row = client.query_one(read, &[]).await.expect("read");
    assert!(row.get::<_, bool>(0), "the read ran on a replica");
    assert!(replicas.contains(&(row.get::<_, i32>(1) as u16)));
    assert!(
        row.get::<_, bool>(2),
        "pgsplit's server connection uses TLS"
    );

    let tx = client.simple_query("BEGIN").await;
    assert!(tx.is_ok());
    let row = client.query_one(read, &[]).await.expect("on the primary");
    assert!(!row.get::<_, bool>(0), "a transaction runs on the primary");
    assert!(
        row.get::<_, bool>(2),
        "pgsplit's primary connection uses TLS"
    );
    client.simple_query("COMMIT").await.expect("commit");

    // Every connection pgsplit holds to the primary as this role is encrypted, the monitor's included.
    let row = client
        .query_one(
            "/* pgsplit:primary */ SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&TLS_ONLY.0],
        )
        .await
        .expect("pg_stat_ssl");
    let (all, ssl): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 2 && all == ssl, "{ssl} of {all} connections use TLS");

    // A cancel goes to the server over TLS too, and works.
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        client
            .simple_query("/* pgsplit:primary */ SELECT pg_sleep(30)")
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled in time")
        .expect("task");
    let err = result.expect_err("the sleep was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn server_signed_by_another_ca_is_refused() {
    let proxy = server_tls_proxy("verify-full", &pki().other_ca_file);
    // The client hears of it at login or at its first statement, depending on whether the monitor has already
    // marked the primary down (57P03) or the pool tried first (08001): either way naming the server and why.
    let err = match common::connect_to(proxy.addr, TLS_ONLY).await {
        Err(e) => e,
        Ok(client) => client
            .simple_query("/* pgsplit:primary */ SELECT 1")
            .await
            .expect_err("no server to run it"),
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert!(["08001", "57P03"].contains(&db.code().code()), "{db:?}");
    assert!(
        db.message().contains("\"primary\"") && db.message().contains("certificate"),
        "{db:?}"
    );
    let shared = proxy.shared.clone();
    common::wait_for("the monitor's TLS error", Duration::from_secs(10), || {
        let s = common::status(&shared, "primary");
        !s.up
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("certificate"))
    })
    .await;
    // /status says it too.
    let mut http = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .expect("admin");
    http.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    let _ = http.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    let status: serde_json::Value = serde_json::from_str(body).expect("json");
    let primary = status["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "primary"))
        .expect("primary in /status");
    assert_eq!(primary["up"], false, "{primary}");
    let reason = primary["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("invalid peer certificate"), "{reason}");
    proxy.shutdown().await;
}

/// Extended protocol and 20 MB COPY both ways give through TLS what they give in plain text.
#[tokio::test]
async fn copy_and_extended_protocol_over_tls_match_plain() {
    use futures_util::{SinkExt, StreamExt};
    let proxy = proxy_with(&client_tls("prefer", ""));
    let tls = connect_tls(proxy.addr, APP, pki().pg_tls("localhost"))
        .await
        .expect("tls");
    let plain = common::connect_to(proxy.addr, APP).await.expect("plain");
    let copy_out = "COPY (SELECT g, md5(g::text), repeat('x', 150) FROM generate_series(1, 110000) g) TO STDOUT";
    let mut outputs = Vec::new();
    for client in [&tls, &plain] {
        let stream = client.copy_out(copy_out).await.expect("copy out");
        let chunks: Vec<_> = stream.collect().await;
        let mut data = Vec::new();
        for c in chunks {
            data.extend_from_slice(&c.expect("chunk"));
        }
        assert!(data.len() > 19_000_000, "{} bytes", data.len());
        let rows = client
            .query(
                "SELECT $1::int + g, $2::text || g FROM generate_series(1, 1000) g",
                &[&1i32, &"n"],
            )
            .await
            .expect("extended");
        let rows: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        outputs.push((data, rows));
    }
    assert!(outputs[0] == outputs[1], "TLS and plain text differ");

    tls.batch_execute("DROP TABLE IF EXISTS tls_copy_in; CREATE TABLE tls_copy_in (n int, t text)")
        .await
        .expect("table");
    let data = outputs[0].0.clone();
    let sink = tls
        .copy_in::<_, bytes::Bytes>("COPY tls_copy_in (n, t) FROM STDIN")
        .await
        .expect("copy in");
    futures_util::pin_mut!(sink);
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(3, |&b| b == b'\t');
        let n = fields.next().expect("n");
        let t = fields.next().expect("t");
        let mut row = Vec::with_capacity(n.len() + t.len() + 200);
        row.extend_from_slice(n);
        row.push(b'\t');
        row.extend_from_slice(t);
        row.extend_from_slice(&[b'y'; 160]);
        row.push(b'\n');
        sink.feed(bytes::Bytes::from(row)).await.expect("feed");
    }
    let copied = sink.finish().await.expect("finish");
    assert_eq!(copied, 110_000);
    let row = tls
        .query_one(
            "/* pgsplit:primary */ SELECT count(*), sum(length(t))::bigint FROM tls_copy_in",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 110_000);
    assert_eq!(row.get::<_, i64>(1), 110_000 * (32 + 160));
    tls.batch_execute("DROP TABLE tls_copy_in")
        .await
        .expect("drop");
}

#[tokio::test]
async fn admin_endpoint_over_tls() {
    let proxy = proxy_with(&client_tls("prefer", ""));
    let pki = pki();
    let mut config = (*pki.client_config(&pki.ca_file, None)).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("admin TLS handshake with pgsplit's certificate");
    tls.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"servers\""), "{response}");

    // Plain HTTP gets no answer.
    let mut plain = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut response)).await;
    assert!(
        !String::from_utf8_lossy(&response).contains("HTTP/1.1 200"),
        "plain HTTP answered"
    );
}

/// Cancel requests reach pgsplit over TLS (tokio-postgres cancels the way it connected) and in plain text (libpq
/// 15 sends them so, whatever sslmode), even under `client_mode = "require"`.
#[tokio::test]
async fn cancel_over_tls_and_plain_text() {
    let proxy = proxy_with(&client_tls("require", ""));
    let client = connect_tls(proxy.addr, APP, pki().pg_tls("localhost"))
        .await
        .expect("tls");
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token
        .cancel_query(pki().pg_tls("localhost"))
        .await
        .expect("cancel over TLS");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled in time")
        .expect("task");
    let err = result.expect_err("the sleep was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err:?}");

    // psql on TLS, interrupted: libpq 15 sends the CancelRequest on a plain socket.
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=app dbname=app sslmode=require",
        proxy.addr.port()
    );
    let child = Command::new("psql")
        .args(["-X", "-d", &conninfo, "-c", "SELECT pg_sleep(30)"])
        .env("PGPASSWORD", APP.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id() as i32;
    // SIGINT to the psql this test started, by its pid: psql then sends the cancel.
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("psql output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
}

/// pgsplit in front of the shared cluster as [`TLS_ONLY`] with every server's `tls_mode`, `tls_ca_file` and
/// `tls_server_name` set.
fn server_override_proxy(mode: &str, ca: &Path, name: &str) -> ProxyHandle {
    let rest = format!(
        "admin_listen = \"127.0.0.1:0\"\n\
         [lag]\nmax_lag = \"60s\"\nlag_check_interval = \"100ms\"\n\
         [[databases]]\nname = \"app\"\n\
         [[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        TLS_ONLY.0, TLS_ONLY.1,
    );
    let mut config =
        pgsplit::demo::local_config(&env().cluster, 0, &rest, "<test>").expect("config");
    use pgsplit::config::ServerTlsMode as M;
    let mode = match mode {
        "prefer" => M::Prefer,
        "require" => M::Require,
        "verify-ca" => M::VerifyCa,
        _ => M::VerifyFull,
    };
    for server in std::iter::once(&mut config.primary).chain(config.replicas.iter_mut()) {
        server.tls_mode = Some(mode);
        server.tls_ca_file = Some(ca.to_path_buf());
        server.tls_server_name = Some(name.into());
    }
    start(config)
}

/// Each server mode checks what libpq's sslmode of the same name checks, per server.
#[tokio::test]
async fn server_modes_check_what_they_say() {
    let pki = pki();
    for (mode, ca, name, works) in [
        ("require", &pki.other_ca_file, "wrong.example", true),
        ("prefer", &pki.other_ca_file, "wrong.example", true),
        ("verify-ca", &pki.ca_file, "wrong.example", true),
        ("verify-ca", &pki.other_ca_file, "localhost", false),
        ("verify-full", &pki.ca_file, "localhost", true),
        ("verify-full", &pki.ca_file, "wrong.example", false),
    ] {
        let proxy = server_override_proxy(mode, ca, name);
        let outcome = match common::connect_to(proxy.addr, TLS_ONLY).await {
            Ok(client) => client
                .query_one(
                    "/* pgsplit:primary */ SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map(|row| row.get::<_, bool>(0)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(ssl) => {
                assert!(works, "{mode} with {name} accepted");
                assert!(ssl, "{mode}: the server connection is encrypted");
            }
            Err(e) => {
                assert!(!works, "{mode} with {name}: {e:?}");
                let db = e.as_db_error().expect("an ErrorResponse");
                assert!(db.message().contains("\"primary\""), "{db:?}");
            }
        }
        proxy.shutdown().await;
    }
}

/// A server without TLS (its own one-server cluster, `ssl = off`): `prefer` falls back to plain text; `require`
/// refuses, naming the server and why.
#[tokio::test]
async fn a_server_without_tls_prefer_falls_back_require_refuses() {
    let cluster = common::start_cluster_with(pgsplit_harness::ClusterOptions {
        replicas: 0,
        ..Default::default()
    });
    for (mode, works) in [("prefer", true), ("require", false)] {
        let proxy = start(common::config(
            &cluster,
            2,
            2,
            &format!("[tls]\nserver_mode = \"{mode}\"\n"),
        ));
        let outcome = match common::connect_to(proxy.addr, APP).await {
            Ok(client) => client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map(|row| row.get::<_, bool>(0)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(ssl) => {
                assert!(works, "{mode} accepted a server without TLS");
                assert!(!ssl, "plain text after the server's N");
            }
            Err(e) => {
                assert!(!works, "{mode}: {e:?}");
                let db = e.as_db_error().expect("an ErrorResponse");
                assert!(
                    db.message().contains("\"primary\"")
                        && db.message().contains("server does not support TLS"),
                    "{db:?}"
                );
            }
        }
        proxy.shutdown().await;
    }
}

/// A reload that rotates the certificate: the new one serves the next handshakes, while connections made before
/// keep going; SCRAM-PLUS binds to the certificate each saw. A reload naming a key that cannot be read is refused
/// whole, and the certificate in force stays.
#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes() {
    let pki = pki();
    let proxy = proxy_with(&client_tls("prefer", ""));
    let before = connect_tls(proxy.addr, APP, pki.pg_tls("localhost"))
        .await
        .expect("the first certificate");
    let mut broken = (*proxy.shared.config()).clone();
    broken.tls.cert_file = Some(pki.other_server_cert_file.clone());
    broken.tls.key_file = Some(pki.other_server_cert_file.with_extension("missing"));
    let refused = proxy
        .shared
        .reload_with(broken)
        .expect_err("an unreadable key");
    assert_eq!(refused.sqlstate, "F0000", "{}", refused.message);
    assert!(
        refused.message.contains("private key"),
        "{}",
        refused.message
    );
    connect_tls(proxy.addr, APP, pki.pg_tls("localhost"))
        .await
        .expect("the certificate in force stays");

    let mut rotated = (*proxy.shared.config()).clone();
    rotated.tls.cert_file = Some(pki.other_server_cert_file.clone());
    rotated.tls.key_file = Some(pki.other_server_key_file.clone());
    proxy.shared.reload_with(rotated).expect("reload");

    assert!(
        connect_tls(proxy.addr, APP, pki.pg_tls("localhost"))
            .await
            .is_err(),
        "the old CA no longer matches"
    );
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(proxy.addr.port())
        .user(APP.0)
        .password(APP.1)
        .dbname("app")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let (after, conn) = pg
        .connect(pki.pg_tls_trusting(&pki.other_ca_file, "localhost"))
        .await
        .expect("the rotated certificate, with channel binding");
    tokio::spawn(conn);
    assert_eq!(one_value(&after, "SELECT 2").await, "2");
    assert_eq!(one_value(&before, "SELECT 1").await, "1");
}
