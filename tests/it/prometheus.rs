//! Prometheus for real: Debian's `prometheus` scrapes a live pgsplit (with an admin token) using the shipped
//! alert rules (`docker/prometheus/alerts.yml`, `for:` durations shortened in a copy); under load its HTTP API
//! answers the routing rate, the latency p99 and each replica's lag, and with a replica's replay paused the lag and
//! ineligibility alerts fire. `promtool` checks the shipped rules and scrape configuration, and runs the rules' unit
//! tests (`docker/prometheus/alerts_test.yml`).
//!
//! Needs `prometheus` and `promtool` on `PATH` (`apt-get install prometheus`): without them the test fails, it is
//! never skipped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin::http_get;
use crate::common::*;
use pgsplit::proxy::Proxy;

const TOKEN: &str = "prom-test-token";

/// Alerts that must not fire in this test: the primary stays up, the pools are as large as the load, and no
/// statement fails.
const NEVER_HERE: [&str; 3] = [
    "PgsplitNoPrimary",
    "PgsplitPoolSaturated",
    "PgsplitHighErrorRate",
];

fn shipped(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker/prometheus")
        .join(file)
}

/// Runs a tool from Debian's `prometheus` package; fails the test with what to install when it is missing.
fn tool(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{name}` ({e}): install Prometheus (Debian: `apt-get install prometheus`, which brings \
             `prometheus` and `promtool`; `bash .ci/run` installs it)"
        )
    })
}

fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped rules with every `for:` shortened to 2 s (the expressions and thresholds unchanged).
fn rules_for_test() -> String {
    let text =
        std::fs::read_to_string(shipped("alerts.yml")).expect("read docker/prometheus/alerts.yml");
    let mut shortened = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => {
                shortened += 1;
                format!("{indent}for: 2s")
            }
            _ => line.to_string(),
        })
        .collect();
    assert_eq!(shortened, 5, "every shipped rule has a `for:`");
    out.join("\n") + "\n"
}

/// A Prometheus server on loopback, killed (and its data directory removed) on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).expect("write token");
        std::fs::write(dir.path().join("alerts.yml"), rules_for_test()).expect("write rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: pgsplit\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n    \
             authorization:\n      type: Bearer\n      credentials_file: {}\n",
            token_file.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        assert_ok(
            "promtool check config (test copy)",
            &tool(
                "promtool",
                &["check", "config", &config_file.to_string_lossy()],
            ),
        );
        // A free port: bound, then released for Prometheus (which takes it within milliseconds).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `prometheus` ({e}): install it (Debian: `apt-get install prometheus`)")
            });
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` on Prometheus's API, parsed as JSON (blocking: call from `spawn_blocking`).
    fn get(&self, path: &str) -> Value {
        let (code, body) = http_get(self.addr, path, None);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} ({e}): {body}"))
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let v = self.get(&format!("/api/v1/query?query={}", encode(promql)));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sample's value (`[time, "value"]`).
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Polls `check` (run off the runtime) every 500 ms until it returns `Some`, or fails after `timeout` with the
/// last state and Prometheus's log.
async fn poll<T: Send + 'static>(
    prom: &Arc<Prometheus>,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Prometheus) -> Result<T, String> + Send + Sync + 'static,
) -> T {
    let check = Arc::new(check);
    let deadline = Instant::now() + timeout;
    loop {
        let (p, c) = (prom.clone(), check.clone());
        let last = match tokio::task::spawn_blocking(move || c(&p))
            .await
            .expect("poll")
        {
            Ok(t) => return t,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}; last: {last}\nprometheus log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Alerts in `state` (`firing` or `pending`) as (name, server label).
fn alerts(prom: &Prometheus, state: &str) -> Vec<(String, String)> {
    let v = prom.get("/api/v1/alerts");
    v["data"]["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["state"] == state)
                .map(|x| {
                    (
                        x["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                        x["labels"]["server"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn promtool_accepts_the_shipped_rules_and_scrape_config() {
    let rules = shipped("alerts.yml");
    let out = tool("promtool", &["check", "rules", &rules.to_string_lossy()]);
    assert_ok("promtool check rules docker/prometheus/alerts.yml", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("5 rules found"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The rules' unit tests: every alert on synthetic series, firing and quiet.
    let tests = shipped("alerts_test.yml");
    assert_ok(
        "promtool test rules docker/prometheus/alerts_test.yml",
        &tool("promtool", &["test", "rules", &tests.to_string_lossy()]),
    );
    let config = shipped("prometheus.yml");
    assert_ok(
        "promtool check config docker/prometheus/prometheus.yml",
        &tool("promtool", &["check", "config", &config.to_string_lossy()]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_pgsplit_answers_rate_latency_lag_and_fires_the_lag_alerts() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(start_cluster)
            .await
            .expect("cluster"),
    );
    // A short max_lag, so a replica with replay paused leaves the eligible set within seconds.
    let mut cfg = config(
        &cluster,
        4,
        4,
        "[lag]\nlag_check_interval = \"250ms\"\nmax_lag = \"1s\"",
    );
    cfg.admin_token = Some(TOKEN.into());
    let proxy = Proxy::bind(cfg)
        .await
        .expect("bind")
        .spawn()
        .expect("spawn");
    let shared = proxy.shared.clone();
    wait_for("both replicas eligible", Duration::from_secs(20), || {
        status(&shared, "replica1").eligible && status(&shared, "replica2").eligible
    })
    .await;

    let started = Instant::now();
    let prom = Arc::new(
        tokio::task::spawn_blocking({
            let admin = proxy.admin_addr;
            move || Prometheus::start(admin)
        })
        .await
        .expect("start prometheus"),
    );
    // The scrape succeeds only with the token from `credentials_file` (pgsplit answers 401 without it).
    poll(&prom, "pgsplit's target up", Duration::from_secs(30), |p| {
        if std::net::TcpStream::connect(p.addr).is_err() {
            return Err("prometheus not listening yet".into());
        }
        let (code, _) = http_get(p.addr, "/-/ready", None);
        if code != 200 {
            return Err(format!("/-/ready {code}"));
        }
        let up = p.query("up{job=\"pgsplit\"}");
        match up.first().map(value) {
            Some(1.0) => Ok(()),
            _ => Err(format!(
                "up = {up:?}; targets: {}",
                p.get("/api/v1/targets")["data"]["activeTargets"]
            )),
        }
    })
    .await;
    eprintln!("prometheus up and scraping after {:?}", started.elapsed());

    // Load: writes and reads from four clients for ~5 s.
    let app = connect_to(proxy.addr, APP).await.expect("connect");
    app.batch_execute("CREATE TABLE IF NOT EXISTS prom_load (id serial PRIMARY KEY, pad text)")
        .await
        .expect("create");
    tokio::task::spawn_blocking({
        let c = cluster.clone();
        move || {
            for r in ["replica1", "replica2"] {
                c.wait_replayed(r, Duration::from_secs(30))
                    .expect("replicas replayed");
            }
        }
    })
    .await
    .expect("replayed");
    let mut load = Vec::new();
    for _ in 0..4 {
        let addr = proxy.addr;
        load.push(tokio::spawn(async move {
            let c = connect_to(addr, APP).await.expect("connect");
            let until = Instant::now() + Duration::from_secs(5);
            let mut n = 0u64;
            while Instant::now() < until {
                if n.is_multiple_of(5) {
                    c.batch_execute("INSERT INTO prom_load (pad) VALUES ('x')")
                        .await
                        .expect("insert");
                } else {
                    c.simple_query("SELECT count(*) FROM prom_load")
                        .await
                        .expect("select");
                }
                n += 1;
            }
            n
        }));
    }
    let mut units = 0;
    for l in load {
        units += l.await.expect("load task");
    }
    eprintln!("load: {units} statements through pgsplit");

    // Routing rate, per destination: both primary (writes) and replicas (reads) took units.
    let rates = poll(&prom, "routing rates > 0", Duration::from_secs(20), |p| {
        let r = p.query("sum by (destination) (rate(pgsplit_statements_routed_total[30s]))");
        let get = |d: &str| {
            r.iter()
                .find(|s| s["metric"]["destination"] == d)
                .map(value)
                .unwrap_or(0.0)
        };
        let (primary, replica) = (get("primary"), get("replica"));
        if primary > 0.0 && replica > 0.0 {
            Ok((primary, replica))
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    eprintln!(
        "routed/s over 30s: primary {:.1}, replica {:.1}",
        rates.0, rates.1
    );
    assert!(
        rates.1 > rates.0,
        "reads (4 of 5 statements) should outnumber writes: {rates:?}"
    );

    // Latency p99 from the histogram: finite, positive, and under the top bucket (5 s).
    let p99 = poll(&prom, "latency p99", Duration::from_secs(20), |p| {
        let r = p.query(
            "histogram_quantile(0.99, sum by (le) (rate(pgsplit_query_duration_seconds_bucket[30s])))",
        );
        match r.first().map(value) {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err(format!("{r:?}")),
        }
    })
    .await;
    eprintln!("p99 unit latency: {:.2} ms", p99 * 1000.0);
    assert!(p99 < 5.0, "p99 {p99} s");
    // Per destination too.
    let by_dest = prom_query(
        &prom,
        "histogram_quantile(0.99, sum by (le, destination) (rate(pgsplit_query_duration_seconds_bucket[30s])))",
    )
    .await;
    for d in ["primary", "replica"] {
        let v = by_dest
            .iter()
            .find(|s| s["metric"]["destination"] == d)
            .map(value)
            .unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "p99 on {d}: {by_dest:?}");
    }

    // The lag series, one per replica, small while they keep up; nothing alerting yet.
    poll(&prom, "lag per replica", Duration::from_secs(10), |p| {
        let r = p.query("pgsplit_replica_lag_seconds");
        let servers: Vec<&str> = r
            .iter()
            .filter_map(|s| s["metric"]["server"].as_str())
            .collect();
        if ["replica1", "replica2"].iter().all(|s| servers.contains(s)) {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    let firing = tokio::task::spawn_blocking({
        let p = prom.clone();
        move || alerts(&p, "firing")
    })
    .await
    .expect("alerts");
    // Not the eligibility alerts: with a 1 s max_lag and a 2 s `for:`, a busy machine may briefly push a replica out.
    assert!(
        !firing.iter().any(|(a, _)| NEVER_HERE.contains(&a.as_str())),
        "alerts firing before the pause: {firing:?}"
    );

    // Pause replica1's replay and keep writing: its lag passes max_lag (ineligible) and the alert threshold (10 s).
    tokio::task::spawn_blocking({
        let c = cluster.clone();
        move || c.pause_replay("replica1").expect("pause replay")
    })
    .await
    .expect("pause");
    let paused_at = Instant::now();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (writing, addr) = (writing.clone(), proxy.addr);
        async move {
            let c = connect_to(addr, APP).await.expect("connect");
            while writing.load(Ordering::Relaxed) {
                c.batch_execute("INSERT INTO prom_load (pad) VALUES ('paused')")
                    .await
                    .expect("write");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let mut fired = Vec::new();
    for alert in ["PgsplitReplicaIneligible", "PgsplitReplicaLagHigh"] {
        poll(
            &prom,
            &format!("{alert} firing for replica1"),
            Duration::from_secs(60),
            move |p| {
                let firing = alerts(p, "firing");
                if firing.contains(&(alert.to_string(), "replica1".to_string())) {
                    Ok(())
                } else {
                    Err(format!(
                        "firing: {firing:?}; pending: {:?}",
                        alerts(p, "pending")
                    ))
                }
            },
        )
        .await;
        fired.push((alert, paused_at.elapsed()));
    }
    eprintln!("after pausing replay: {fired:?}");
    let firing = tokio::task::spawn_blocking({
        let p = prom.clone();
        move || alerts(&p, "firing")
    })
    .await
    .expect("alerts");
    assert!(
        !firing.iter().any(|(a, _)| NEVER_HERE.contains(&a.as_str())),
        "a paused replica fires only replica alerts: {firing:?}"
    );
    let lag = prom_query(&prom, "pgsplit_replica_lag_seconds{server=\"replica1\"}").await;
    assert!(
        lag.first().map(value).is_some_and(|v| v > 10.0),
        "replica1's lag in Prometheus: {lag:?}"
    );

    // Resume: replica1 catches up, and is eligible again.
    writing.store(false, Ordering::Relaxed);
    writer.await.expect("writer");
    tokio::task::spawn_blocking({
        let c = cluster.clone();
        move || c.resume_replay("replica1").expect("resume replay")
    })
    .await
    .expect("resume");
    wait_for("replica1 eligible again", Duration::from_secs(30), || {
        status(&shared, "replica1").eligible
    })
    .await;
    eprintln!(
        "test took {:?} after the cluster started",
        started.elapsed()
    );
    proxy.shutdown().await;
}

async fn prom_query(prom: &Arc<Prometheus>, promql: &str) -> Vec<Value> {
    let (p, q) = (prom.clone(), promql.to_string());
    tokio::task::spawn_blocking(move || p.query(&q))
        .await
        .expect("query")
}
