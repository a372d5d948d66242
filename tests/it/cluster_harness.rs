//! Integration tests of the local-cluster harness (`pgsplit-harness`, in `tests/harness`). They need the
//! PostgreSQL server binaries (see `Cluster::find_bindir`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pgsplit_harness::*;

const T: Duration = Duration::from_secs(20);

/// Set in the environment of a re-executed copy of this test binary to run one of the `child_*` helpers.
const CHILD_ENV: &str = "PGSPLIT_CLUSTER_HARNESS_CHILD";

fn count(c: &Cluster, name: &str) -> String {
    c.psql(name, "SELECT count(*) FROM t").unwrap()
}

#[test]
fn replication_pause_restart_and_failover() {
    let started = Instant::now();
    let mut c = Cluster::start(ClusterOptions::default()).expect("cluster starts");
    eprintln!(
        "primary + 2 replicas streaming after {:?}",
        started.elapsed()
    );

    let names: Vec<&str> = c.servers().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["primary", "replica1", "replica2"]);
    assert_eq!(c.primary().name, "primary");
    assert_eq!(c.replicas().len(), 2);
    assert!(c.dir().exists());
    assert!(c.bindir().join("initdb").exists());
    assert_eq!(
        c.url("replica1", "alice", "app"),
        format!(
            "postgres://alice@127.0.0.1:{}/app",
            c.server("replica1").port
        )
    );
    for s in c.servers() {
        assert!(c.is_running(&s.name), "{} running", s.name);
        assert!(s.data_dir.join("server.log").exists());
    }
    assert!(!c.is_running("nope"));
    assert!(matches!(
        c.psql("nope", "SELECT 1"),
        Err(ClusterError::UnknownServer { .. })
    ));

    // Replication.
    c.psql(
        "primary",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');",
    )
    .unwrap();
    for r in ["replica1", "replica2"] {
        c.wait_replayed(r, T).unwrap();
        assert_eq!(count(&c, r), "1", "{r} sees the row");
        assert_eq!(c.psql(r, "SELECT pg_is_in_recovery()").unwrap(), "t");
    }
    assert_eq!(
        c.psql("primary", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert!(matches!(
        c.wait_replayed("primary", T),
        Err(ClusterError::NotReplica(_))
    ));
    let err = c.psql("primary", "SELECT nope()").unwrap_err();
    assert!(
        err.to_string().contains("does not exist"),
        "psql error is reported: {err}"
    );

    // Paused replay.
    c.pause_replay("replica1").unwrap();
    c.psql("primary", "INSERT INTO t VALUES (2, 'b')").unwrap();
    c.wait_replayed("replica2", T).unwrap();
    assert_eq!(count(&c, "replica2"), "2");
    assert_eq!(count(&c, "replica1"), "1", "paused replica lags");
    let err = c
        .wait_replayed("replica1", Duration::from_millis(300))
        .unwrap_err();
    assert!(err.to_string().contains("paused"), "{err}");
    c.resume_replay("replica1").unwrap();
    c.wait_replayed("replica1", T).unwrap();
    assert_eq!(count(&c, "replica1"), "2");

    // Stop and start a replica.
    c.stop("replica2", StopMode::Fast).unwrap();
    assert!(!c.is_running("replica2"));
    c.stop("replica2", StopMode::Fast).unwrap(); // no-op
    c.psql("primary", "INSERT INTO t VALUES (3, 'c')").unwrap();
    c.start_server("replica2").unwrap();
    assert!(c.is_running("replica2"));
    c.wait_streaming(T).unwrap();
    c.wait_replayed("replica2", T).unwrap();
    assert_eq!(count(&c, "replica2"), "3");

    // Immediate stop + restart.
    c.stop("replica2", StopMode::Immediate).unwrap();
    c.restart("replica2").unwrap();
    c.wait_streaming(T).unwrap();
    c.restart("replica1").unwrap();
    c.wait_streaming(T).unwrap();

    // Crash the primary, promote replica1, repoint replica2.
    c.wait_replayed("replica1", T).unwrap();
    c.wait_replayed("replica2", T).unwrap();
    let primary_port = c.primary().port;
    c.kill("primary").unwrap();
    assert!(!c.is_running("primary"));
    assert!(TcpStream::connect(("127.0.0.1", primary_port)).is_err());
    c.promote("replica1").unwrap();
    assert_eq!(
        c.psql("replica1", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    c.psql("replica1", "INSERT INTO t VALUES (4, 'd')").unwrap();
    assert_eq!(count(&c, "replica1"), "4");
    c.follow("replica2", "replica1").unwrap();
    c.wait_streaming(T).unwrap();
    c.wait_replayed("replica2", T).unwrap();
    assert_eq!(count(&c, "replica2"), "4");

    // The killed primary can come back (as a second primary: nothing rewinds it).
    c.start_server("primary").unwrap();
    assert_eq!(count(&c, "primary"), "3");

    let dir = c.dir().to_path_buf();
    c.shutdown();
    c.shutdown();
    assert!(!dir.exists(), "cluster directory removed");
    eprintln!("whole scenario took {:?}", started.elapsed());
}

#[test]
fn options_hba_conf_and_setup_sql() {
    let c = Cluster::start(ClusterOptions {
        replicas: 1,
        hba: vec!["host all alice 127.0.0.1/32 scram-sha-256".into()],
        conf: vec!["work_mem = '7MB'".into()],
        setup_sql: vec![
            "CREATE ROLE alice LOGIN PASSWORD 'secret'".into(),
            "CREATE DATABASE app OWNER alice".into(),
        ],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.servers().len(), 2);
    for name in ["primary", "replica1"] {
        assert_eq!(c.psql(name, "SHOW work_mem").unwrap(), "7MB");
        assert_eq!(
            c.psql(name, "SELECT rolname FROM pg_roles WHERE rolname = 'alice'")
                .unwrap(),
            "alice"
        );
        assert_eq!(
            c.psql(
                name,
                "SELECT datname FROM pg_database WHERE datname = 'app'"
            )
            .unwrap(),
            "app"
        );
        // Our line comes first, before the trust defaults.
        assert_eq!(
            c.psql(
                name,
                "SELECT auth_method FROM pg_hba_file_rules ORDER BY line_number LIMIT 1"
            )
            .unwrap(),
            "scram-sha-256"
        );
    }
    // Password auth through the extra hba line.
    let out = Command::new(c.bindir().join("psql"))
        .args(["-X", "-At", "-w", "-c", "SELECT current_user"])
        .arg(c.url("replica1", "alice", "app"))
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
    let out = Command::new(c.bindir().join("psql"))
        .args(["-X", "-At", "-w", "-c", "SELECT 1"])
        .arg(c.url("primary", "alice", "app"))
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success(), "wrong password is refused");
}

/// Polls `sql` on `name` until it prints `want`; returns how long that took.
fn until(c: &Cluster, name: &str, sql: &str, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if c.psql(name, sql).ok().as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{name}: `{sql}` did not return {want} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn one_replica_can_be_started_with_its_own_settings_such_as_a_replay_delay() {
    let c = Cluster::start(ClusterOptions {
        replica_conf: [(
            "replica2".to_string(),
            vec![
                "recovery_min_apply_delay = '300ms'".to_string(),
                "work_mem = '5MB'".to_string(),
            ],
        )]
        .into(),
        conf: vec!["work_mem = '7MB'".into()],
        ..Default::default()
    })
    .expect("cluster starts");
    assert_eq!(
        c.psql("replica2", "SHOW recovery_min_apply_delay").unwrap(),
        "300ms"
    );
    assert_eq!(
        c.psql("replica2", "SHOW work_mem").unwrap(),
        "5MB",
        "replica_conf wins over conf"
    );
    for name in ["primary", "replica1"] {
        assert_eq!(
            c.psql(name, "SHOW recovery_min_apply_delay").unwrap(),
            "0",
            "{name}"
        );
        assert_eq!(c.psql(name, "SHOW work_mem").unwrap(), "7MB", "{name}");
    }
    c.psql("primary", "CREATE TABLE t (id int)").unwrap();
    for r in ["replica1", "replica2"] {
        c.wait_replayed(r, T).unwrap();
    }
    // A commit becomes visible on the delayed replica no sooner than 300 ms after it was made, and later than
    // on the other one.
    let written = Instant::now();
    c.psql(
        "primary",
        "SET synchronous_commit = on; INSERT INTO t VALUES (1);",
    )
    .unwrap();
    let seen = |name: &str| {
        until(&c, name, "SELECT count(*) FROM t", "1", T);
        written.elapsed()
    };
    let (fast, slow) = std::thread::scope(|s| {
        let fast = s.spawn(|| seen("replica1"));
        let slow = s.spawn(|| seen("replica2"));
        (fast.join().unwrap(), slow.join().unwrap())
    });
    eprintln!(
        "the row became visible on replica1 after {fast:?}, on the delayed replica2 after {slow:?}"
    );
    assert!(slow >= Duration::from_millis(300), "{slow:?}");
    assert!(fast < slow, "replica1 {fast:?}, replica2 {slow:?}");

    // A name that is not a replica is refused before anything starts.
    let err = Cluster::start(ClusterOptions {
        replicas: 1,
        replica_conf: [("replica2".to_string(), vec!["work_mem = '5MB'".to_string()])].into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(&err, ClusterError::UnknownServer { name, .. } if name == "replica2"),
        "{err}"
    );
}

#[test]
fn a_setting_can_be_changed_and_reloaded_on_a_running_server() {
    let c = Cluster::start(ClusterOptions {
        replicas: 1,
        ..Default::default()
    })
    .expect("cluster starts");
    c.psql("primary", "CREATE TABLE t (id int)").unwrap();
    c.wait_replayed("replica1", T).unwrap();

    c.set_config("replica1", "recovery_min_apply_delay", Some("300ms"))
        .unwrap();
    assert_eq!(
        c.psql("replica1", "SHOW recovery_min_apply_delay").unwrap(),
        "300ms"
    );
    let written = Instant::now();
    c.psql(
        "primary",
        "SET synchronous_commit = on; INSERT INTO t VALUES (1);",
    )
    .unwrap();
    until(&c, "replica1", "SELECT count(*) FROM t", "1", T);
    let delayed = written.elapsed();
    assert!(delayed >= Duration::from_millis(300), "{delayed:?}");
    c.set_config("replica1", "recovery_min_apply_delay", None)
        .unwrap();
    assert_eq!(
        c.psql("replica1", "SHOW recovery_min_apply_delay").unwrap(),
        "0"
    );

    // An empty primary_conninfo stops the WAL receiver: nothing written from then on arrives...
    c.set_config("replica1", "primary_conninfo", Some(""))
        .unwrap();
    until(
        &c,
        "replica1",
        "SELECT count(*) FROM pg_stat_wal_receiver",
        "0",
        T,
    );
    c.psql("primary", "INSERT INTO t VALUES (2)").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&c, "replica1"),
        "1",
        "a detached replica receives nothing"
    );
    // ...until `follow` points it at a primary again.
    c.follow("replica1", "primary").unwrap();
    c.wait_replayed("replica1", T).unwrap();
    assert_eq!(count(&c, "replica1"), "2");

    // A parameter that needs a restart, and names that are not parameters, are errors.
    let err = c
        .set_config("primary", "max_connections", Some("301"))
        .unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
    c.set_config("primary", "max_connections", None).unwrap();
    assert!(c
        .set_config("primary", "no_such_setting", Some("1"))
        .is_err());
    assert!(c.set_config("primary", "x; DROP", Some("1")).is_err());
    assert!(matches!(
        c.set_config("nope", "work_mem", Some("1MB")),
        Err(ClusterError::UnknownServer { .. })
    ));
}

#[test]
fn bogus_bindir_env_gives_helpful_error() {
    // Setting the variable in this multi-threaded process would race with other tests: use a child process.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cluster_harness::child_find_bindir",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "find_bindir")
        .env("PGSPLIT_PG_BINDIR", "/nonexistent/pg/bin")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("BINDIR-ERROR: "), "{text}");
}

#[test]
fn child_find_bindir() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("find_bindir") {
        return;
    }
    let err = Cluster::find_bindir().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("PGSPLIT_PG_BINDIR"), "{msg}");
    assert!(msg.contains("/nonexistent/pg/bin"), "{msg}");
    assert!(msg.contains("apt-get install postgresql"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(matches!(
        Cluster::start(ClusterOptions::default()),
        Err(ClusterError::BinariesNotFound(_))
    ));
    println!("BINDIR-ERROR: {msg}");
}

#[test]
fn watchdog_cleans_up_after_the_process_dies() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cluster_harness::child_leak_cluster",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "leak")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("LEAKED ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "child did not report its cluster:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut parts = line.split_whitespace();
    let dir = PathBuf::from(parts.next().unwrap());
    let ports: Vec<u16> = parts.map(|p| p.parse().unwrap()).collect();
    assert_eq!(ports.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists()
        || ports
            .iter()
            .any(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
    {
        assert!(
            Instant::now() < deadline,
            "watchdog did not clean up {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "watchdog cleaned up {} within {:?} after the child exited",
        dir.display(),
        Instant::now() + Duration::from_secs(10) - deadline
    );
}

#[test]
fn child_leak_cluster() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("leak") {
        return;
    }
    let c = Cluster::start(ClusterOptions {
        replicas: 1,
        ..Default::default()
    })
    .unwrap();
    let ports: Vec<String> = c.servers().iter().map(|s| s.port.to_string()).collect();
    println!("LEAKED {} {}", c.dir().display(), ports.join(" "));
    // Exit without running Drop, like a killed test binary.
    std::process::exit(0);
}

#[test]
fn cluster_can_live_in_a_static() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
    assert_send_sync::<ClusterError>();
}

/// The fault-injecting relay in front of the shared cluster's primary: pass, an added delay, a stall that holds
/// the connection open and answers nothing until passed again, and a cut that closes connections and refuses new
/// ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_passes_delays_stalls_and_cuts() {
    use pgsplit_harness::relay::{Fault, Relay};
    let env = crate::common::env();
    let relay = Relay::start(env.cluster.primary().port).expect("relay");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", relay.port());
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect through the relay");
    let conn = tokio::spawn(conn);
    c.simple_query("SELECT 1").await.expect("pass");

    relay.set(Fault::Delay(Duration::from_millis(100)));
    let started = Instant::now();
    c.simple_query("SELECT 1").await.expect("delayed");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "a round trip under a 100 ms delay each way took {:?}",
        started.elapsed()
    );

    relay.set(Fault::Stall);
    let stalled = tokio::time::timeout(Duration::from_millis(500), c.simple_query("SELECT 2"));
    assert!(stalled.await.is_err(), "a stalled relay answered");
    let fresh = tokio::time::timeout(
        Duration::from_millis(500),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    );
    assert!(
        fresh.await.is_err(),
        "a new connection was answered during a stall"
    );
    relay.set(Fault::Pass);
    // The statement sent during the stall was held, not dropped: the connection still works.
    c.simple_query("SELECT 3").await.expect("after the stall");

    relay.set(Fault::Cut);
    assert!(
        c.simple_query("SELECT 4").await.is_err(),
        "a cut connection answered"
    );
    let _ = conn.await;
    assert!(
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err(),
        "a new connection got through a cut"
    );
    relay.set(Fault::Pass);
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect after the cut");
    tokio::spawn(conn);
    c.simple_query("SELECT 5").await.expect("pass again");
}
