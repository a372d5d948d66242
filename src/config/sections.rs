//! The sections of the configuration file and their defaults: servers, pools, routing, lag, timeouts, limits,
//! databases and users.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{duration_serde, opt_duration_serde};
use super::REDACTED;
use crate::causal::Consistency;

/// How long a client holds a server connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// From the first statement of a transaction until it ends.
    #[default]
    Transaction,
    /// For the client's whole session.
    Session,
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

impl LogFormat {
    /// The format named `text` or `json` (as in the file and `PGSPLIT_LOG_FORMAT`).
    pub fn parse(name: &str) -> Option<LogFormat> {
        match name.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// One PostgreSQL server (the primary or a replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Name used in logs and the admin endpoint. After loading it is always set:
    /// `primary`, `replica1`, `replica2`, … when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host name or IP address.
    pub host: String,
    /// TCP port. Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Relative share of reads (balancer weight). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// TLS towards this server; default `tls.server_mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<super::tls::ServerTlsMode>,
    /// CA file for this server's certificate; default `tls.server_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Name sent as SNI and checked in `verify-full`; default `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

/// How statements are routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Classify statements and send reads to replicas (true, default), or send everything to the primary.
    pub read_write_split: bool,
    /// How a replica is chosen for a read. Default `least_connections`.
    pub balancer: Balancer,
    /// Whether the primary takes reads: `fallback` (default: only when no replica can), `include` (it joins the
    /// read set with its weight), `never` (a read no replica can take gets an error, whatever `fallback` says).
    pub primary_reads: PrimaryReads,
    /// What a read gets when no replica can take it and the primary may not: `primary` (default) or `error`.
    pub fallback: Fallback,
    /// `catalog` (default): calls of non-built-in VOLATILE functions, read from the primary's `pg_proc`, go to
    /// the primary; `list`: only the built-in list and `write_functions`.
    pub volatile_functions: VolatileFunctions,
    /// What a read may miss: `session` (default: the session's own writes are always seen), `eventual` (no
    /// floor) or `strict` (every write committed before the read began). A session may change it with
    /// `SET pgsplit.consistency`.
    pub consistency: Consistency,
    /// How long a read waits for a replica to replay up to the session's floor before it goes to the primary.
    /// Default 20ms; 0: do not wait. At most 10s.
    #[serde(with = "duration_serde")]
    pub causal_wait: Duration,
}

/// Largest accepted `routing.causal_wait`: a read waits at most this long before it runs anywhere.
pub const MAX_CAUSAL_WAIT: Duration = Duration::from_secs(10);

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            balancer: Balancer::default(),
            primary_reads: PrimaryReads::default(),
            fallback: Fallback::default(),
            volatile_functions: VolatileFunctions::default(),
            consistency: Consistency::default(),
            causal_wait: Duration::from_millis(20),
        }
    }
}

/// Replica health and lag monitoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagConfig {
    /// How often every server is probed. Default 250ms, at least 50ms.
    #[serde(with = "duration_serde")]
    pub lag_check_interval: Duration,
    /// A probe that takes longer has failed. Default 1s.
    #[serde(with = "duration_serde")]
    pub probe_timeout: Duration,
    /// A replica further behind than this (on pgsplit's clock) takes no new reads. Default 1s.
    #[serde(with = "duration_serde")]
    pub max_lag: Duration,
    /// A replica further behind than this many bytes of WAL takes no new reads. Default 0 (off).
    pub max_lag_bytes: u64,
    /// An excluded replica is re-admitted once its lag stays under this mark for `readmit_hold`. Default half
    /// of `max_lag`.
    #[serde(
        default,
        with = "opt_duration_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub readmit_lag: Option<Duration>,
    /// How long a replica must stay under `readmit_lag` before it takes reads again. Default 1s.
    #[serde(with = "duration_serde")]
    pub readmit_hold: Duration,
    /// Consecutive failed probes before a server counts as down (a refused connection counts at once). Default 3.
    pub down_after: u32,
    /// While the primary's position is unknown (primary down): `ineligible` (default: replicas' lag is unknown,
    /// so they take no reads) or `serve` (replicas that are up keep serving reads).
    pub primary_unknown: PrimaryUnknown,
}

impl LagConfig {
    /// The re-admit mark.
    pub fn readmit_lag(&self) -> Duration {
        self.readmit_lag.unwrap_or(self.max_lag / 2)
    }
}

impl Default for LagConfig {
    fn default() -> Self {
        LagConfig {
            lag_check_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_secs(1),
            max_lag: Duration::from_secs(1),
            max_lag_bytes: 0,
            readmit_lag: None,
            readmit_hold: Duration::from_secs(1),
            down_after: 3,
            primary_unknown: PrimaryUnknown::default(),
        }
    }
}

/// What replicas do while the primary's WAL position is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimaryUnknown {
    /// Their lag is unknown: no reads.
    #[default]
    Ineligible,
    /// Replicas that are up and streaming-capable keep serving reads.
    Serve,
}

/// Read balancing strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Fewest requests in flight relative to weight.
    #[default]
    LeastConnections,
    /// Weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
}

/// Whether the primary serves reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimaryReads {
    /// Only when no replica can take the read.
    #[default]
    Fallback,
    /// Always a member of the read set.
    Include,
    /// Never: a read with no replica gets an error.
    Never,
}

/// What happens to a read no replica can take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Run it on the primary.
    #[default]
    Primary,
    /// Answer with an error naming the reason.
    Error,
}

/// Where the classifier learns which functions write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolatileFunctions {
    /// The built-in list, `write_functions`, and every non-built-in VOLATILE function in `pg_proc`.
    #[default]
    Catalog,
    /// The built-in list and `write_functions` only.
    List,
}

/// Pool sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolsConfig {
    /// Server connections to the primary. Default 20.
    pub write_pool_size: usize,
    /// Server connections to each replica. Default 20.
    pub read_pool_size: usize,
    /// Prepared statements kept per server connection. Default 500.
    pub prepared_statements_per_server: usize,
}

impl Default for PoolsConfig {
    fn default() -> Self {
        PoolsConfig {
            write_pool_size: 20,
            read_pool_size: 20,
            prepared_statements_per_server: 500,
        }
    }
}

/// Per-client resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Named prepared statements one client may hold at once; a Parse past it gets `53400`. Default 10000.
    pub max_prepared_statements_per_client: usize,
    /// Extended-protocol messages (Parse, Bind, Describe, Execute, Close) one client may send between two
    /// Syncs; the message past it gets `53400` and the rest of the batch is skipped. Default 100000.
    pub max_batch_messages: usize,
    /// Connections still logging in (startup packet and authentication) at once; more are closed at once
    /// with `53300`. They do not count against `max_client_connections`. Default 1000.
    pub max_logins_in_progress: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_prepared_statements_per_client: 10_000,
            max_batch_messages: 100_000,
            max_logins_in_progress: 1000,
        }
    }
}

/// Timeouts; in TOML each is a duration string such as `"5s"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting (and logging in) to a server. Default 5s; must be > 0.
    #[serde(with = "duration_serde")]
    pub server_connect: Duration,
    /// Waiting for a free server connection from a pool. Default 5s; must be > 0.
    #[serde(with = "duration_serde")]
    pub pool_wait: Duration,
    /// A client must finish startup and authentication within this. Default 15s; must be > 0.
    #[serde(with = "duration_serde")]
    pub client_login: Duration,
    /// Close a client idle outside a transaction this long. Default 0 (off).
    #[serde(with = "duration_serde")]
    pub client_idle: Duration,
    /// Close pooled server connections idle this long. Default 10m; 0 = never.
    #[serde(with = "duration_serde")]
    pub server_idle: Duration,
    /// Close pooled server connections older than this on check-in. Default 1h; 0 = never.
    #[serde(with = "duration_serde")]
    pub server_lifetime: Duration,
    /// On SIGINT/SIGTERM, how long running transactions may finish. Default 30s; 0 = close at once.
    #[serde(with = "duration_serde")]
    pub shutdown: Duration,
    /// How long a unit that needs the primary (a write, a transaction's first statement, a read that must run
    /// there) waits for one when none is known (a failover), before it fails with 57P03. Default 5s; 0 = fail at
    /// once. At most 60s.
    #[serde(with = "duration_serde")]
    pub failover_wait: Duration,
}

/// Largest accepted `timeouts.failover_wait`.
pub const MAX_FAILOVER_WAIT: Duration = Duration::from_secs(60);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            server_connect: Duration::from_secs(5),
            pool_wait: Duration::from_secs(5),
            client_login: Duration::from_secs(15),
            client_idle: Duration::ZERO,
            server_idle: Duration::from_secs(10 * 60),
            server_lifetime: Duration::from_secs(60 * 60),
            shutdown: Duration::from_secs(30),
            failover_wait: Duration::from_secs(5),
        }
    }
}

/// How a client authenticates to pgsplit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (default); needs `password` or `scram_verifier`.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5; needs `password`.
    #[serde(rename = "md5")]
    Md5,
    /// No password asked.
    #[serde(rename = "trust")]
    Trust,
}

impl AuthMethod {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        }
    }
}

/// A database clients may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Name clients ask for.
    pub name: String,
    /// Name of the database on the servers; default = `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_database: Option<String>,
}

/// A user who may connect. `Debug` output redacts the secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Name the client logs in with.
    pub name: String,
    /// Plaintext password (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, as stored in `pg_authid.rolpassword` (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_verifier: Option<String>,
    /// How the client authenticates to pgsplit. Default scram-sha-256.
    #[serde(default)]
    pub auth: AuthMethod,
    /// Role pgsplit logs in to the servers as; default = `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_user: Option<String>,
    /// Password pgsplit logs in to the servers with; default = `password` (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_password: Option<String>,
    /// May use the admin console. Default false.
    #[serde(default)]
    pub admin: bool,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| REDACTED);
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &secret(&self.password))
            .field("scram_verifier", &secret(&self.scram_verifier))
            .field("auth", &self.auth)
            .field("server_user", &self.server_user)
            .field("server_password", &secret(&self.server_password))
            .field("admin", &self.admin)
            .finish()
    }
}

impl ServerConfig {
    /// The server's name, or `host:port` when it has none.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => self.address(),
        }
    }

    /// `host:port` (IPv6 literals in brackets), suitable for `TcpStream::connect`.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl DatabaseConfig {
    /// Name of the database on the servers.
    pub fn server_database(&self) -> &str {
        self.server_database.as_deref().unwrap_or(&self.name)
    }
}

impl UserConfig {
    /// Role pgsplit logs in to the servers as.
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// Password pgsplit logs in to the servers with, if any.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.password.as_deref())
    }
}

fn default_port() -> u16 {
    5432
}

fn default_weight() -> u32 {
    1
}
