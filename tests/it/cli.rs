//! The `pgsplit` command line: `check-config`, `demo`, and `run` from a file or from server URLs alone, run as a
//! user would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pgsplit");

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        "[primary]\nhost = \"db\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"hunter2\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pool_mode = \"transaction\""), "{stdout}");
    assert!(stdout.contains("write_pool_size"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "a password was printed");
}

#[test]
fn check_config_names_file_line_and_field_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[primary]\nhost = \"db\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\nauth = \"md5\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:"), "{stderr}");
    assert!(stderr.contains("users[0]"), "{stderr}");
    assert!(
        stderr.contains(":7") || stderr.contains(":5"),
        "no line number: {stderr}"
    );
}

#[test]
fn demo_serves_reads_from_replicas_and_cleans_up_on_ctrl_c() {
    let mut child = Command::new(BIN)
        .args(["demo", "--replicas", "2", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut urls = std::collections::HashMap::new();
    while urls.len() < 3 {
        let line = lines.next().expect("demo printed its URLs").expect("line");
        if let Some((k, v)) = line.split_once('=') {
            urls.insert(k.to_string(), v.to_string());
        }
    }
    let psql = |url: &str, sql: &str| {
        let out = Command::new("psql")
            .args(["-X", "-At", url, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let db = &urls["DATABASE_URL"];
    assert_eq!(
        psql(db, "SELECT pg_is_in_recovery()"),
        "t",
        "a read through pgsplit ran on a replica"
    );
    assert!(psql(
        db,
        "CREATE TABLE demo_t (a int); INSERT INTO demo_t VALUES (1); SELECT 'ok'"
    )
    .ends_with("ok"));
    assert_eq!(
        psql(&urls["PRIMARY_URL"], "SELECT pg_is_in_recovery()"),
        "f"
    );
    let replicas: Vec<&str> = urls["REPLICA_URLS"].split(',').collect();
    assert_eq!(replicas.len(), 2);
    for r in &replicas {
        assert_eq!(psql(r, "SELECT pg_is_in_recovery()"), "t");
    }

    // Ctrl-C stops pgsplit and the servers.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "demo did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("psql")
        .args(["-X", "-At", &urls["PRIMARY_URL"], "-c", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(!out.status.success(), "the primary still runs after Ctrl-C");
}

#[test]
fn run_on_one_thread_routes_and_stops_on_sigterm() {
    let cluster = pgsplit_harness::Cluster::start(pgsplit_harness::ClusterOptions {
        replicas: 1,
        ..Default::default()
    })
    .expect("cluster");
    let port = pgsplit_harness::free_port().expect("free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgsplit.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n\
             [primary]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\n\
             [[replicas]]\nname = \"replica1\"\nhost = \"127.0.0.1\"\nport = {}\n\
             [lag]\nmax_lag = \"60s\"\n\
             [[databases]]\nname = \"postgres\"\n\
             [[users]]\nname = \"postgres\"\nauth = \"trust\"\n",
            cluster.primary().port,
            cluster.replicas()[0].port
        ),
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgsplit");
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let psql = |sql: &str| {
        Command::new("psql")
            .args(["-X", "-At", &url, "-c", sql])
            .output()
            .expect("psql")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !psql("SELECT 1").status.success() {
        assert!(Instant::now() < deadline, "pgsplit did not start serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = |sql: &str| {
        String::from_utf8_lossy(&psql(sql).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(
        out("SELECT pg_is_in_recovery()"),
        "t",
        "a read on the replica"
    );
    assert!(
        out("CREATE TABLE one_thread (a int); INSERT INTO one_thread VALUES (1); SELECT 'ok'")
            .ends_with("ok")
    );
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "pgsplit did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
}

/// Runs the `pgsplit` binary in front of the shared cluster with `top` as top-level settings and `envs` set, its
/// standard error redirected to a file; runs one read (as `postgres`, trust) through it, stops it with SIGTERM,
/// and returns what it wrote to standard error.
fn stderr_of_a_read(top: &str, envs: &[(&str, &str)]) -> String {
    let env = crate::common::env();
    let port = pgsplit_harness::free_port().expect("free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgsplit.toml");
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n{top}\n\
         [primary]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\n",
        env.cluster.primary().port
    );
    for r in env.cluster.replicas() {
        toml.push_str(&format!(
            "[[replicas]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            r.name, r.port
        ));
    }
    toml.push_str(
        "[lag]\nmax_lag = \"60s\"\n[[databases]]\nname = \"postgres\"\n\
         [[users]]\nname = \"postgres\"\nauth = \"trust\"\n",
    );
    std::fs::write(&config, toml).expect("write config");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("PGSPLIT_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start pgsplit");
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let psql = |sql: &str| {
        Command::new("psql")
            .args(["-X", "-At", &url, "-c", sql])
            .output()
            .expect("psql")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !psql("SELECT 1").status.success() {
        assert!(Instant::now() < deadline, "pgsplit did not start serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let read = psql("SELECT 'logged read'");
    assert!(read.status.success(), "{read:?}");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "pgsplit did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    std::fs::read_to_string(&log).expect("read stderr")
}

#[test]
fn json_logs_are_one_object_per_line_with_a_routing_reason() {
    let stderr = stderr_of_a_read("log_format = \"json\"", &[("PGSPLIT_LOG", "debug")]);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert!(value.is_object(), "not an object: {line}");
            for key in ["timestamp", "level", "target"] {
                assert!(value.get(key).is_some(), "no `{key}`: {line}");
            }
            value
        })
        .collect();
    assert!(
        lines.iter().any(|v| v["message"] == "pgsplit listening"),
        "{stderr}"
    );
    let routed: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["message"] == "routed").collect();
    assert!(
        routed.iter().any(|v| v["level"] == "DEBUG"
            && v["reason"] == "read_only_query"
            && v["route"] == "read"
            && v["server"].is_string()
            && v["client"].is_u64()),
        "no routing line with its reason: {stderr}"
    );
    // One line per unit: no separate line before the checkout.
    assert!(!lines.iter().any(|v| v["message"] == "routing"), "{stderr}");
}

#[test]
fn text_logs_to_a_file_have_no_colour_codes() {
    let stderr = stderr_of_a_read("", &[("PGSPLIT_LOG", "debug")]);
    assert!(stderr.contains("pgsplit listening"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("routed") && l.contains("reason=\"read_only_query\"")),
        "no routing line with its reason: {stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "colour codes in a file: {stderr:?}"
    );
}

#[test]
fn log_format_from_the_environment_covers_startup_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "log_format = \"xml\"\n[primary]\nhost = \"db\"\n").expect("write");
    let run = |format: &str| {
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&file)
            .env("PGSPLIT_LOG_FORMAT", format)
            .output()
            .expect("run")
    };
    let out = run("json");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["level"], "ERROR", "{stderr}");
    let message = lines[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("bad.toml:1: log_format: unknown variant `xml`"),
        "{stderr}"
    );
    // Text: the error alone, as before; an unknown format is refused.
    let out = run("text");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:1: log_format", file.display())),
        "{stderr}"
    );
    let out = run("yaml");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("PGSPLIT_LOG_FORMAT must be `text` or `json`"),
        "{:?}",
        out.stderr
    );
}

/// A child process killed when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sidecar start: no file, the servers' URLs as flags, a `PGSPLIT_POOLS__…` override; clients log in as the
/// primary URL's user; reads go to a replica, writes to the primary; SIGHUP is refused (no file) and the proxy
/// keeps serving; `check-config` shows the override and no password.
#[tokio::test]
async fn run_from_urls_and_environment_without_a_file() {
    let env = crate::common::env();
    let primary = env.cluster.primary().port;
    let replicas: Vec<u16> = env.cluster.replicas().iter().map(|r| r.port).collect();
    let port = pgsplit_harness::free_port().expect("free port");
    let dir = tempfile::tempdir().expect("tempdir");
    // `%2D` is `-`: the password is percent-decoded.
    let args = vec![
        "--primary".to_string(),
        format!("postgres://app:app%2Dsecret@127.0.0.1:{primary}/app?sslmode=disable"),
        "--replica".to_string(),
        format!("postgres://127.0.0.1:{}", replicas[0]),
        "--replica".to_string(),
        format!("postgres://app@127.0.0.1:{}/app", replicas[1]),
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--admin-listen".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    let overrides = [
        ("PGSPLIT_POOLS__READ_POOL_SIZE", "3"),
        ("PGSPLIT_LAG__MAX_LAG", "60s"),
        ("PGSPLIT_WORKERS", "1"),
    ];

    let out = Command::new(BIN)
        .arg("check-config")
        .args(&args)
        .envs(overrides)
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("read_pool_size = 3"), "{stdout}");
    assert!(stdout.contains("max_lag = \"1m\""), "{stdout}");
    assert!(stdout.contains("PGSPLIT_POOLS__READ_POOL_SIZE"), "{stdout}");
    assert!(stdout.contains("password = \"<redacted>\""), "{stdout}");
    assert!(
        !stdout.contains("app-secret") && !stdout.contains("app%2Dsecret"),
        "{stdout}"
    );

    let log = dir.path().join("pgsplit.log");
    let mut child = Running(
        Command::new(BIN)
            .arg("run")
            .args(&args)
            .envs(overrides)
            .env("PGSPLIT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start pgsplit"),
    );
    let url = format!("postgres://app:app-secret@127.0.0.1:{port}/app");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                break client;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "pgsplit did not start serving: {e}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let in_recovery = |sql: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(sql, &[]).await.expect(sql);
            row.get::<_, bool>(0)
        }
    };
    assert!(
        in_recovery("SELECT pg_is_in_recovery()").await,
        "a read ran on a replica"
    );
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS sidecar_cli (a int)")
        .await
        .expect("create");
    assert!(
        !in_recovery(
            "WITH w AS (INSERT INTO sidecar_cli VALUES (1) RETURNING a) SELECT pg_is_in_recovery() FROM w"
        )
        .await,
        "a write ran on the primary"
    );
    // A wrong password is refused: clients log in with the URL's.
    let wrong = format!("postgres://app:nope@127.0.0.1:{port}/app");
    assert!(tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .is_err());

    // SIGHUP: nothing to re-read; refused, logged, and pgsplit keeps serving.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("nothing to re-read") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refused reload in the log: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(in_recovery("SELECT pg_is_in_recovery()").await);
    assert!(
        child.0.try_wait().expect("wait").is_none(),
        "pgsplit exited on SIGHUP"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("app-secret"),
        "a password in the log: {text}"
    );
}
