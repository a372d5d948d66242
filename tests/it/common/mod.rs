//! What the integration tests share: one real local cluster (primary + 2 streaming replicas) for the whole test
//! binary, pgsplit proxies running on a background runtime in front of it, and raw frontend messages ([`wire`]).
#![allow(dead_code)]

pub mod file_proxy;
pub mod pki;
pub mod wire;

use std::net::SocketAddr;
use std::sync::OnceLock;

use pgsplit::config::Config;
use pgsplit::demo::local_config;
use pgsplit::proxy::Proxy;
use pgsplit_harness::{Cluster, ClusterOptions};
use tokio_postgres::{Client, NoTls};

/// The shared cluster and the default proxy in front of it.
pub struct Env {
    pub cluster: Cluster,
    pub proxy: SocketAddr,
}

static ENV: OnceLock<Env> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The background runtime the tests' proxies run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime")
    })
}

/// Users the cluster and proxies know: (client name, password, auth method through pgsplit).
pub const APP: (&str, &str) = ("app", "app-secret");
pub const MD5: (&str, &str) = ("md5client", "md5-secret");
pub const TRUST: (&str, &str) = ("trustclient", "");

/// The shared environment, started on first use.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("PGSPLIT_LOG").unwrap_or_else(|_| "warn".into()))
            .try_init();
        let cluster = start_cluster_with(shared_options());
        // Round robin: tests that check reads spread over both replicas do not depend on other tests' load.
        let proxy = spawn_proxy(config(
            &cluster,
            8,
            8,
            "[routing]\nbalancer = \"round_robin\"",
        ));
        Env { cluster, proxy }
    })
}

/// A role the shared cluster lets in over TLS only (`hostssl`), with a password: (name, password).
pub const TLS_ONLY: (&str, &str) = ("tlsonly", "tls-only-secret");

/// The shared cluster's options: TLS on every server with the test PKI's server certificate, and a role
/// ([`TLS_ONLY`]) that `pg_hba.conf` admits over TLS only. Plain connections of other roles work as before.
fn shared_options() -> ClusterOptions {
    let pki = pki::pki();
    ClusterOptions {
        ssl: Some(pgsplit_harness::SslFiles {
            cert_pem: pki.server_cert_pem.clone(),
            key_pem: pki.server_key_pem.clone(),
        }),
        hba: vec![
            format!("hostssl all {} 127.0.0.1/32 scram-sha-256", TLS_ONLY.0),
            format!("host all {} 127.0.0.1/32 reject", TLS_ONLY.0),
        ],
        setup_sql: vec![format!(
            "CREATE ROLE {} LOGIN PASSWORD '{}'",
            TLS_ONLY.0, TLS_ONLY.1
        )],
        ..ClusterOptions::default()
    }
}

/// A new cluster (primary + 2 streaming replicas) with the test users; for tests that stop, kill or promote.
pub fn start_cluster() -> Cluster {
    start_cluster_with(ClusterOptions::default())
}

/// [`start_cluster`] with other options (e.g. a replica's own settings); the test users, their `pg_hba.conf`
/// lines and the `app` database are added to what `opts` holds.
pub fn start_cluster_with(mut opts: ClusterOptions) -> Cluster {
    // PostgreSQL's default (the harness turns it off for speed): a commit is flushed, and streamed, when the
    // client hears of it, so a read right after a write can be served by a replica (read-your-writes). Cheap with
    // the harness's `fsync = off`. Listed first: a test's own `conf` lines win.
    opts.conf.insert(0, "synchronous_commit = on".into());
    opts.hba.extend([
        "host all app 127.0.0.1/32 scram-sha-256".into(),
        "host all md5user 127.0.0.1/32 md5".into(),
    ]);
    opts.setup_sql.extend([
        "CREATE ROLE app LOGIN PASSWORD 'app-secret'".into(),
        "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5-server-secret'"
            .into(),
        "CREATE DATABASE app OWNER app".into(),
    ]);
    // Roles tests create later (auth_query) that must log in with a password: members of these groups.
    opts.hba.extend([
        "host all +scram_login 127.0.0.1/32 scram-sha-256".into(),
        "host all +md5_login 127.0.0.1/32 md5".into(),
    ]);
    opts.setup_sql.extend([
        "CREATE ROLE scram_login NOLOGIN".into(),
        "CREATE ROLE md5_login NOLOGIN".into(),
    ]);
    Cluster::start(opts).expect("start the local cluster")
}

/// A pgsplit configuration in front of the cluster; `extra` is appended at top level (before tables).
pub fn config(cluster: &Cluster, write_pool: usize, read_pool: usize, extra: &str) -> Config {
    // Tests that are not about lag tolerate replicas slowed down by other tests' bulk writes.
    let lag = if extra.contains("[lag]") {
        ""
    } else {
        "[lag]\nmax_lag = \"60s\"\n"
    };
    // Read-your-writes: reads right after a write wait for a replica up to 2 s (not the default 20 ms), so tests
    // that expect such reads on replicas do not depend on how busy the machine is.
    let extra = if extra.contains("causal_wait") {
        extra.to_string()
    } else if extra.contains("[routing]") {
        extra.replacen("[routing]", "[routing]\ncausal_wait = \"2s\"", 1)
    } else {
        format!("{extra}\n[routing]\ncausal_wait = \"2s\"")
    };
    let rest = format!(
        "admin_listen = \"127.0.0.1:0\"\n{extra}\n\
         [pools]\nwrite_pool_size = {write_pool}\nread_pool_size = {read_pool}\n\
         [timeouts]\npool_wait = \"20s\"\n\
         {lag}\
         [[databases]]\nname = \"app\"\n\
         [[users]]\nname = \"app\"\npassword = \"app-secret\"\n\
         [[users]]\nname = \"md5client\"\npassword = \"md5-secret\"\nauth = \"md5\"\nserver_user = \"md5user\"\nserver_password = \"md5-server-secret\"\n\
         [[users]]\nname = \"trustclient\"\nauth = \"trust\"\nserver_user = \"postgres\"\nadmin = true\n"
    );
    local_config(cluster, 0, &rest, "<test>").expect("test config")
}

/// Starts a proxy on the background runtime; returns its address.
pub fn spawn_proxy(config: Config) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        let proxy = Proxy::bind(config).await.expect("bind proxy");
        tx.send(proxy.local_addr().expect("addr"))
            .expect("send addr");
        proxy.run(std::future::pending()).await;
    });
    rx.recv().expect("proxy address")
}

/// A connection string through `proxy`.
pub fn url(proxy: SocketAddr, user: (&str, &str)) -> String {
    format!(
        "postgres://{}:{}@{}:{}/app",
        user.0,
        user.1,
        proxy.ip(),
        proxy.port()
    )
}

/// A tokio-postgres client through `proxy`.
pub async fn connect_to(
    proxy: SocketAddr,
    user: (&str, &str),
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&url(proxy, user), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A tokio-postgres client through the default proxy as `app`.
pub async fn connect() -> Client {
    connect_to(env().proxy, APP)
        .await
        .expect("connect through pgsplit")
}

/// Port of the server that ran a statement.
pub async fn server_port(client: &Client, sql: &str) -> u16 {
    let rows = client.simple_query(sql).await.expect("query");
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).expect("value").parse().expect("port");
        }
    }
    panic!("no row from {sql}");
}

/// The primary's port.
pub fn primary_port() -> u16 {
    env().cluster.primary().port
}

/// The replicas' ports.
pub fn replica_ports() -> Vec<u16> {
    env().cluster.replicas().iter().map(|r| r.port).collect()
}

/// `pgbench -i -s 1` through `url`, then waits until both replicas have replayed it.
/// The shared cluster's pgbench tables: a test that (re)creates and runs them holds this for as long, so two such
/// tests never drop the tables under each other (one test binary, one cluster).
pub fn pgbench_tables() -> std::sync::MutexGuard<'static, ()> {
    static TABLES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TABLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn pgbench_init(cluster: &Cluster, url: &str) {
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", url])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    for r in ["replica1", "replica2"] {
        cluster
            .wait_replayed(r, std::time::Duration::from_secs(30))
            .expect("replicas caught up");
    }
}

/// Runs pgbench with `args` through `url`; asserts it succeeded with 0 failed transactions and returns
/// (stdout, stderr).
pub fn pgbench(url: &str, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("pgbench")
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pgbench {args:?}: {stdout}{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "pgbench {args:?}: {stdout}{stderr}"
    );
    (stdout, stderr)
}

/// A v3 StartupMessage for `user` on database `app`, for tests that speak raw protocol.
pub fn startup_packet(user: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    pgsplit::protocol::startup::encode_startup(&mut out, &[("user", user), ("database", "app")]);
    out.to_vec()
}

/// A server's status as the proxy's monitor sees it.
pub fn status(
    shared: &std::sync::Arc<pgsplit::proxy::Shared>,
    name: &str,
) -> pgsplit::monitor::ServerStatus {
    shared
        .monitor
        .snapshot()
        .into_iter()
        .find(|s| s.name == name)
        .expect("server status")
}

/// Polls `cond` every 20 ms until it holds (then returns when) or `timeout` passes (then fails the test).
pub async fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) -> std::time::Instant {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return std::time::Instant::now();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
