//! Real drivers through pgsplit, each running its own program (tests/drivers/) against the shared proxy and
//! checking on which server every statement ran: psycopg 3, asyncpg, node-postgres and postgres.js, pgjdbc, pgx,
//! ruby-pg with ActiveRecord, and PHP's PDO, with their prepared statements (named, unnamed, cached, emulated),
//! pipelining, COPY, transactions, savepoints and read-only transactions; and two ORMs on psycopg 3 (SQLAlchemy
//! 2 and Django) with their own sessions and schema steps. sqlx, in Rust, is `sqlx_driver`.
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
/// Debian's packages for the Java, Go, Ruby and PHP drivers (`.ci/run` installs the missing ones).
const APT_INSTALL: &str =
    "apt-get install --no-install-recommends default-jdk-headless libpostgresql-jdbc-java \
     golang-go golang-github-jackc-pgx-v4-dev ruby-activerecord ruby-pg php-cli php-pgsql";
/// pgjdbc as Debian installs it.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// Go in GOPATH mode over Debian's Go sources (pgx and its dependencies): nothing is downloaded.
const GOPATH: &str = "/usr/share/gocode";

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

/// Runs `program tests/drivers/<script>` as [`run_driver`] does.
fn run_script(program: &str, script: &str) {
    let mut command = Command::new(program);
    command.arg(Path::new("tests/drivers").join(script));
    run_driver(command, script);
}

/// Runs a driver program (from the repository's root) with the proxy's URL and the servers' ports, and fails
/// with its output unless it exits 0 and prints `OK <name>`.
fn run_driver(mut command: Command, name: &str) {
    let env = env();
    let replicas: Vec<String> = replica_ports().iter().map(u16::to_string).collect();
    let program = format!("{command:?}");
    let mut child = command
        .current_dir(DIR)
        .env("DATABASE_URL", url(env.proxy, APP))
        .env("PRIMARY_PORT", primary_port().to_string())
        .env("REPLICA_PORTS", replicas.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
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
        status.is_some_and(|s| s.success()) && stdout.contains(&format!("OK {name}")),
        "{program}: {outcome}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
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

#[test]
fn postgresjs_pipelined_named_and_unnamed_statements() {
    require(
        "node with postgres.js (tests/drivers/node_modules/postgres)",
        "node",
        &["-e", "require('./tests/drivers/node_modules/postgres')"],
        NPM_INSTALL,
    );
    run_script("node", "postgresjs_test.js");
}

#[test]
fn pgjdbc_prepare_thresholds_batches_and_transactions() {
    require(
        "a JDK (java with its compiler module) and pgjdbc (/usr/share/java/postgresql.jar)",
        "sh",
        &[
            "-c",
            "test -r /usr/share/java/postgresql.jar && java --describe-module jdk.compiler",
        ],
        APT_INSTALL,
    );
    let mut java = Command::new("java");
    // Java's single-file source launcher: compiled in memory, no build step.
    java.args(["-cp", PGJDBC_JAR, "tests/drivers/PgJdbcTest.java"]);
    run_driver(java, "PgJdbcTest.java");
}

/// `go` in GOPATH mode over Debian's sources, with a build cache under `target/`.
fn go(args: &[&str]) -> Command {
    let mut go = Command::new("go");
    go.args(args)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOFLAGS", "")
        .env("GOCACHE", Path::new(DIR).join("target/go-cache"));
    go
}

#[test]
fn pgx_statement_cache_describe_and_simple_protocol_modes() {
    let probe = go(&[
        "list",
        "github.com/jackc/pgx/v4",
        "github.com/jackc/pgx/v4/pgxpool",
    ])
    .current_dir(DIR)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .is_ok_and(|s| s.success());
    assert!(
        probe,
        "Go with pgx v4 is missing: run `bash .ci/run`, or install it with `{APT_INSTALL}`"
    );
    run_driver(go(&["run", "./tests/drivers/pgx"]), "pgx");
}

#[test]
fn activerecord_migration_models_and_ruby_pg_prepared_statements() {
    require(
        "ruby with ActiveRecord 6.1 and ruby-pg",
        "ruby",
        &[
            "-e",
            "require 'active_record'; require 'pg'; \
             exit(ActiveRecord::VERSION::STRING.start_with?('6.1') ? 0 : 1)",
        ],
        APT_INSTALL,
    );
    run_script("ruby", "activerecord_test.rb");
}

#[test]
fn pdo_pgsql_emulated_unprepared_and_native_prepares() {
    require(
        "php with PDO pgsql",
        "php",
        &["-r", "exit(extension_loaded('pdo_pgsql') ? 0 : 1);"],
        APT_INSTALL,
    );
    run_script("php", "pdo_test.php");
}
