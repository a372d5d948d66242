//! Real drivers through pgsplit: psycopg 3, asyncpg and node-postgres run their own scripts
//! (tests/drivers/) against the shared proxy, with prepared statements, pipelining, COPY and transactions,
//! and check on which server every statement ran. Two ORMs on psycopg 3 (SQLAlchemy 2 and Django) do the
//! same with their own sessions, savepoints and schema creation.
//!
//! The drivers are installed by `bash .ci/run`. A missing one fails the test, it is never skipped.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const DIR: &str = env!("CARGO_MANIFEST_DIR");
const TIMEOUT: Duration = Duration::from_secs(300);
const PIP_INSTALL: &str =
    "python3 -m pip install --root-user-action=ignore --break-system-packages \
     'psycopg[binary]==3.3.9' 'asyncpg==0.32.0' 'SQLAlchemy==2.0.58' 'Django==5.2.19'";
const NPM_INSTALL: &str = "npm ci --prefix tests/drivers";

/// Fails with install instructions when `probe` (a command line) does not succeed.
fn require(what: &str, program: &str, args: &[&str], install: &str) {
    let ok = Command::new(program)
        .args(args)
        .current_dir(DIR)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{what} is missing: run `bash .ci/run`, or install it with `{install}` (from {DIR})"
    );
}

/// Runs a driver script with the proxy's URL and the servers' ports, and fails with its output unless it
/// exits 0 and prints `OK <script>`.
fn run_script(program: &str, script: &str) {
    let env = env();
    let replicas: Vec<String> = replica_ports().iter().map(u16::to_string).collect();
    let mut child = Command::new(program)
        .arg(Path::new("tests/drivers").join(script))
        .current_dir(DIR)
        .env("DATABASE_URL", url(env.proxy, APP))
        .env("PRIMARY_PORT", primary_port().to_string())
        .env("REPLICA_PORTS", replicas.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} {script}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let outcome = match status {
        None => format!("timed out after {TIMEOUT:?}"),
        Some(s) => s.to_string(),
    };
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains(&format!("OK {script}")),
        "{program} tests/drivers/{script}: {outcome}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
}

#[test]
fn psycopg3_prepared_pipelined_and_transactions() {
    require(
        "python3 with psycopg 3 (module psycopg)",
        "python3",
        &["-c", "import psycopg"],
        PIP_INSTALL,
    );
    run_script("python3", "psycopg3_test.py");
}

#[test]
fn asyncpg_statement_cache_copy_and_transactions() {
    require(
        "python3 with asyncpg",
        "python3",
        &["-c", "import asyncpg"],
        PIP_INSTALL,
    );
    run_script("python3", "asyncpg_test.py");
}

#[test]
fn node_pg_named_statements_transactions_and_pool() {
    require(
        "node with node-postgres (tests/drivers/node_modules/pg)",
        "node",
        &["-e", "require('./tests/drivers/node_modules/pg')"],
        NPM_INSTALL,
    );
    run_script("node", "node_pg_test.js");
}

#[test]
fn sqlalchemy_orm_session_savepoint_and_read_your_writes() {
    require(
        "python3 with SQLAlchemy 2 and psycopg 3 (modules sqlalchemy, psycopg)",
        "python3",
        &[
            "-c",
            "import sqlalchemy, psycopg; assert sqlalchemy.__version__.startswith('2.')",
        ],
        PIP_INSTALL,
    );
    run_script("python3", "sqlalchemy_test.py");
}

#[test]
fn django_orm_migrate_save_and_read() {
    require(
        "python3 with Django 5 and psycopg 3 (modules django, psycopg)",
        "python3",
        &[
            "-c",
            "import django, psycopg; assert django.VERSION[0] >= 5",
        ],
        PIP_INSTALL,
    );
    run_script("python3", "django_test.py");
}
