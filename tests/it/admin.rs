//! The admin endpoint and SQL console against a real cluster: health follows the primary, status and SHOW LAG
//! follow a paused replica, metrics parse with the Prometheus client's OpenMetrics parser, the token guards every
//! request, and the dashboard renders in headless Chromium.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use pgsplit::config::Config;
use pgsplit::proxy::Proxy;
use pgsplit_harness::StopMode;
use tokio_postgres::SimpleQueryMessage;

/// A minimal HTTP/1.1 GET: (status code, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Bodies may come chunked; callers only look for substrings or parse JSON after de-chunking.
    (code, dechunk(&text, body))
}

fn dechunk(head: &str, body: String) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, path, None);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

fn server<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .expect("server in /status")
}

fn lag_config(cluster: &pgsplit_harness::Cluster) -> Config {
    config(
        cluster,
        4,
        4,
        "[lag]\nlag_check_interval = \"250ms\"\nmax_lag = \"1s\"",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_metrics_and_console_follow_the_cluster() {
    let cluster = start_cluster();
    let proxy = Proxy::bind(lag_config(&cluster))
        .await
        .expect("bind")
        .spawn()
        .expect("spawn");
    let admin = proxy.admin_addr;

    // Health follows the primary (503 until the first probe has seen it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::task::spawn_blocking(move || http_get(admin, "/health", None))
        .await
        .expect("get")
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "/health never became 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster
        .stop("primary", StopMode::Fast)
        .expect("stop primary");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = tokio::task::spawn_blocking(move || http_get(admin, "/health", None))
            .await
            .expect("get");
        if code == 503 {
            assert!(body.contains("\"primary\""), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health stayed {code} with the primary stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.start_server("primary").expect("start primary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::task::spawn_blocking(move || http_get(admin, "/health", None))
        .await
        .expect("get")
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "/health did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .wait_streaming(Duration::from_secs(20))
        .expect("replicas stream again");

    // A paused replica: its lag grows in /status and SHOW LAG, and it becomes ineligible with the reason.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server(&json(admin, "/status"), "replica1")["eligible"]
        .as_bool()
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "replica1 never eligible");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.pause_replay("replica1").expect("pause");
    let app = connect_to(proxy.addr, APP).await.expect("connect");
    app.batch_execute("CREATE TABLE IF NOT EXISTS fill (pad text)")
        .await
        .expect("create");
    let mut lags = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        app.batch_execute("INSERT INTO fill SELECT repeat('x', 200) FROM generate_series(1, 500)")
            .await
            .expect("write");
        let st = json(admin, "/status");
        let r1 = server(&st, "replica1").clone();
        if let Some(l) = r1["lag_seconds"].as_f64() {
            lags.push(l);
        }
        if !r1["eligible"].as_bool().unwrap_or(true) {
            assert!(
                r1["reason"].as_str().unwrap_or("").contains("threshold"),
                "{r1}"
            );
            assert!(r1["lag_bytes"].as_u64().unwrap_or(0) > 0, "{r1}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica1 never left the eligible set: {r1}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        lags.windows(2).any(|w| w[1] > w[0]),
        "lag did not grow: {lags:?}"
    );
    let console = connect_to_db(proxy.addr, TRUST, "pgsplit").await;
    let rows = console.simple_query("SHOW LAG").await.expect("SHOW LAG");
    let r1 = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get(0) == Some("replica1") => Some(r),
            _ => None,
        })
        .expect("replica1 in SHOW LAG");
    assert_eq!(r1.get("eligible"), Some("false"));
    assert!(
        r1.get("lag_seconds")
            .and_then(|l| l.parse::<f64>().ok())
            .unwrap_or(0.0)
            > 1.0
    );
    assert!(r1.get("reason").unwrap_or("").contains("threshold"));
    for cmd in [
        "SHOW SERVERS",
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW STATS",
        "SHOW CONFIG",
        "SHOW VERSION",
    ] {
        let rows = console
            .simple_query(cmd)
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        assert!(
            rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))),
            "{cmd} returned no row"
        );
    }
    let err = try_connect_db(proxy.addr, APP, "pgsplit")
        .await
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("admin"),
        "a non-admin user is refused the console: {err}"
    );

    // The dashboard in headless Chromium: no console errors, and replica1's lag line above the threshold line.
    let root = env!("CARGO_MANIFEST_DIR");
    let shot = format!("{root}/target/dashboard.png");
    let page = format!("http://{admin}/dashboard");
    let browser = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args([
                "tests/browser/dashboard.mjs",
                &page,
                &shot,
                "replica1",
                "30",
            ])
            .current_dir(root)
            .output()
    })
    .await
    .expect("join")
    .expect("run node (npm ci --prefix tests/browser, and Debian's chromium: see .ci/run)");
    let summary = String::from_utf8_lossy(&browser.stdout);
    assert!(
        browser.status.success(),
        "dashboard check failed: {summary}{}",
        String::from_utf8_lossy(&browser.stderr)
    );
    assert!(
        summary.contains("\"aboveThreshold\":true") && summary.contains("\"consoleErrors\":[]"),
        "{summary}"
    );
    cluster.resume_replay("replica1").expect("resume");

    // Metrics after a pgbench run parse with a real OpenMetrics parser and carry the series with sane values.
    let url = url(proxy.addr, APP);
    let out = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", &url])
        .output()
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("pgbench")
        .args(["-S", "-c", "4", "-t", "200", &url])
        .output()
        .expect("pgbench -S");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        app.batch_execute("SELECT 1/0").await.is_err(),
        "division by zero counts as an error of class 22"
    );
    let (code, metrics) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics", None))
        .await
        .expect("get");
    assert_eq!(code, 200);
    let parsed = Command::new("python3")
        .args(["-c", PARSE_METRICS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(metrics.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run python3 (pip install prometheus_client: see .ci/run)");
    let report = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let values: serde_json::Value = serde_json::from_str(&report).expect("parser report");
    for family in [
        "pgsplit_replica_lag_seconds",
        "pgsplit_replica_lag_bytes",
        "pgsplit_server_up",
        "pgsplit_server_eligible",
        "pgsplit_server_probe_age_seconds",
        "pgsplit_pool_connections",
        "pgsplit_clients",
        "pgsplit_statements_routed",
        "pgsplit_query_duration_seconds",
        "pgsplit_errors",
        "pgsplit_classifier_cache",
    ] {
        assert!(values.get(family).is_some(), "missing {family}: {report}");
    }
    let routed_replica = values["pgsplit_statements_routed"]["replica"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        routed_replica >= 800.0,
        "pgbench -S reads routed to replicas: {routed_replica}"
    );
    assert!(
        values["pgsplit_query_duration_seconds"]["count"]
            .as_f64()
            .unwrap_or(0.0)
            >= 800.0
    );
    assert!(values["pgsplit_server_up"]["sum"].as_f64().unwrap_or(0.0) >= 3.0);
    assert!(values["pgsplit_errors"]["sum"].as_f64().unwrap_or(0.0) >= 1.0);
    proxy.shutdown().await;
}

/// Parses OpenMetrics text from stdin with prometheus_client and prints per-family figures as JSON.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    entry = out.setdefault(fam.name, {"sum": 0.0})
    for s in fam.samples:
        if s.name.endswith("_count"):
            entry["count"] = entry.get("count", 0) + s.value
        if s.name.endswith("_total") or s.name == fam.name:
            entry["sum"] += s.value
            dest = s.labels.get("destination")
            if dest:
                entry[dest] = entry.get(dest, 0) + s.value
print(json.dumps(out))
"#;

async fn connect_to_db(proxy: SocketAddr, user: (&str, &str), db: &str) -> tokio_postgres::Client {
    try_connect_db(proxy, user, db)
        .await
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

async fn try_connect_db(
    proxy: SocketAddr,
    user: (&str, &str),
    db: &str,
) -> Result<tokio_postgres::Client, String> {
    let url = format!("postgres://{}:{}@{}/{db}", user.0, user.1, proxy);
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{e:?}"))?;
    tokio::spawn(conn);
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_endpoint_and_non_loopback_needs_one() {
    let env = env();
    let mut cfg = config(&env.cluster, 2, 2, "");
    cfg.admin_token = Some("s3cret".into());
    let proxy = Proxy::bind(cfg)
        .await
        .expect("bind")
        .spawn()
        .expect("spawn");
    let admin = proxy.admin_addr;
    let (without, with, wrong) = tokio::task::spawn_blocking(move || {
        (
            http_get(admin, "/status", None).0,
            http_get(admin, "/status", Some("s3cret")).0,
            http_get(admin, "/metrics", Some("nope")).0,
        )
    })
    .await
    .expect("requests");
    assert_eq!((without, with, wrong), (401, 200, 401));
    proxy.shutdown().await;

    let toml = "admin_listen = \"0.0.0.0:9930\"\n[primary]\nhost = \"db\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"x\"\n";
    let err = Config::from_toml_str(toml, "pgsplit.toml")
        .expect_err("a non-loopback admin endpoint needs a token");
    assert!(err.to_string().contains("admin_token"), "{err}");
    assert!(Config::from_toml_str(&format!("admin_token = \"t\"\n{toml}"), "pgsplit.toml").is_ok());
}
