//! `pgsplit demo`: a local primary and streaming replicas from the installed PostgreSQL binaries, with pgsplit
//! in front, for a first look. Ctrl-C stops everything and removes the temporary directory.

use std::io::Write;
use std::process::ExitCode;

use pgsplit_harness::{Cluster, ClusterOptions};

use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;

/// The demo's login through pgsplit and on the servers.
const DEMO_USER: &str = "app";
const DEMO_PASSWORD: &str = "app";
const DEMO_DB: &str = "app";

/// The one pgsplit configuration for a local cluster, used by the demo, the integration tests and the
/// benchmark programs: pgsplit on `127.0.0.1:listen_port` (0: any free port), the cluster's primary and every
/// replica as servers, and `extra` for the rest (databases, users, pools, …). `extra` comes first, right after
/// `listen`, so it may start with top-level keys (`admin_listen = …`) before its tables. `origin` names the
/// configuration in parse errors.
///
/// It lives here rather than in the harness because the harness knows nothing about pgsplit; the demo is its
/// first user and every other caller already links pgsplit.
pub fn local_config(
    cluster: &Cluster,
    listen_port: u16,
    extra: &str,
    origin: &str,
) -> Result<Config, ConfigError> {
    let mut toml = format!(
        "listen = \"127.0.0.1:{listen_port}\"\n{extra}\n\
         [primary]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\n",
        cluster.primary().port
    );
    for r in cluster.replicas() {
        toml.push_str(&format!(
            "[[replicas]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            r.name, r.port
        ));
    }
    Config::from_toml_str(&toml, origin)
}

/// The configuration pgsplit runs with in the demo.
pub fn demo_config(cluster: &Cluster, listen_port: u16) -> Result<Config, ConfigError> {
    local_config(
        cluster,
        listen_port,
        &format!(
            "[[databases]]\nname = \"{DEMO_DB}\"\n\
             [[users]]\nname = \"{DEMO_USER}\"\npassword = \"{DEMO_PASSWORD}\"\nadmin = true\n"
        ),
        "<demo>",
    )
}

/// The demo's messages on standard error: plain lines, or log events when the logs are JSON (`json`), so that
/// every line of standard error is then JSON.
#[derive(Clone, Copy)]
struct Say {
    json: bool,
}

impl Say {
    fn info(self, msg: &str) {
        if self.json {
            tracing::info!("{msg}");
        } else {
            eprintln!("pgsplit demo: {msg}");
        }
    }

    fn fail(self, msg: &str) -> ExitCode {
        if self.json {
            tracing::error!("{msg}");
        } else {
            eprintln!("pgsplit demo: {msg}");
        }
        ExitCode::FAILURE
    }
}

/// Runs the demo until `stop` completes. `json_logs`: logging writes JSON lines, and so do the demo's messages.
pub async fn run(
    replicas: usize,
    port: Option<u16>,
    json_logs: bool,
    stop: impl std::future::Future<Output = ()>,
) -> ExitCode {
    let say = Say { json: json_logs };
    if let Err(e) = Cluster::find_bindir() {
        return say.fail(&e.to_string());
    }
    say.info(&format!(
        "starting a primary and {replicas} streaming replica(s)…"
    ));
    let options = ClusterOptions {
        replicas,
        setup_sql: vec![
            format!("CREATE ROLE {DEMO_USER} LOGIN PASSWORD '{DEMO_PASSWORD}'"),
            format!("CREATE DATABASE {DEMO_DB} OWNER {DEMO_USER}"),
        ],
        hba: vec![format!("host all {DEMO_USER} 127.0.0.1/32 scram-sha-256")],
        // PostgreSQL's default (the harness turns it off for speed): a commit is on disk, and streamed, when the
        // client hears of it, so a read right after it can be served by a replica that has replayed it.
        conf: vec!["synchronous_commit = on".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = match tokio::task::spawn_blocking(move || Cluster::start(options)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return say.fail(&e.to_string()),
        Err(e) => return say.fail(&e.to_string()),
    };
    let wanted = port.unwrap_or(6432);
    let config = match demo_config(&cluster, wanted) {
        Ok(c) => c,
        Err(e) => return say.fail(&e.to_string()),
    };
    let proxy = match Proxy::bind(config.clone()).await {
        Ok(p) => p,
        Err(_) => {
            // A port is taken (another pgsplit?): fall back to free ones, keeping an explicit --port.
            let mut c = config;
            c.listen.set_port(port.unwrap_or(0));
            c.admin_listen.set_port(0);
            match Proxy::bind(c).await {
                Ok(p) => p,
                Err(e) => return say.fail(&format!("cannot listen: {e}")),
            }
        }
    };
    let addr = match proxy.local_addr() {
        Ok(a) => a,
        Err(e) => return say.fail(&e.to_string()),
    };
    let url =
        |port: u16| format!("postgres://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/{DEMO_DB}");
    let replica_urls: Vec<String> = cluster.replicas().iter().map(|r| url(r.port)).collect();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "DATABASE_URL={}", url(addr.port()));
    let _ = writeln!(out, "PRIMARY_URL={}", url(cluster.primary().port));
    let _ = writeln!(out, "REPLICA_URLS={}", replica_urls.join(","));
    if let Ok(admin) = proxy.admin_addr() {
        let _ = writeln!(out, "ADMIN_URL=http://{admin}");
        let _ = writeln!(out, "DASHBOARD_URL=http://{admin}/dashboard");
    }
    let _ = out.flush();
    say.info(&format!(
        "ready. Try: psql \"{}\" -c 'SELECT inet_server_port(), pg_is_in_recovery()'",
        url(addr.port())
    ));
    say.info("press Ctrl-C to stop and remove everything.");
    proxy.run(stop).await;
    say.info("stopping…");
    let _ = tokio::task::spawn_blocking(move || cluster.shutdown()).await;
    ExitCode::SUCCESS
}
