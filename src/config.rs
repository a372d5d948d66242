//! The TOML configuration: schema, defaults, validation and rendering of the effective configuration.
//!
//! [`Config::load`] / [`Config::from_toml_str`] parse a file, fill in defaults and validate it. Every error is a
//! [`ConfigError`] naming the file, the line (when it can be found) and the dotted path of the offending field,
//! e.g. `pgsplit.toml:12: users[1].auth: md5 needs `password` (a SCRAM verifier cannot answer md5)`.
//! Array indices in field paths count from 0, in file order.
//!
//! Durations are written as strings: `"0"`, `"250ms"`, `"5s"`, `"1.5s"`, `"10m"`, `"1h"`, `"1h30m"`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What secrets are replaced with in [`Config::effective_toml`] and in `Debug` output.
pub const REDACTED: &str = "<redacted>";

/// Database name reserved for pgsplit's own SQL admin console.
pub const ADMIN_DATABASE: &str = "pgsplit";

/// Smallest accepted `max_message_bytes`.
pub const MIN_MESSAGE_BYTES: usize = 8192;

/// Largest accepted `max_message_bytes`: the wire length field is a signed 32-bit integer.
pub const MAX_MESSAGE_BYTES: usize = i32::MAX as usize;

/// The whole pgsplit configuration, with defaults filled in and validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to. Default `127.0.0.1:6432`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP endpoint. Default `127.0.0.1:9930`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Bearer token the admin endpoint requires; mandatory when `admin_listen` is not a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Transaction (default) or session pooling.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Most client connections accepted at once. Default 1000.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Runtime worker threads; 0 (default) means one per CPU core.
    #[serde(default)]
    pub workers: usize,
    /// Largest client message accepted, in bytes. Default 256 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Extra function names the classifier treats as writing. Default none.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// The primary server (required).
    pub primary: ServerConfig,
    /// Streaming replicas (`[[replicas]]`). Default none.
    #[serde(default)]
    pub replicas: Vec<ServerConfig>,
    /// Pool sizes (`[pools]`).
    #[serde(default)]
    pub pools: PoolsConfig,
    /// How statements are routed (`[routing]`).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Replica health and lag (`[lag]`).
    #[serde(default)]
    pub lag: LagConfig,
    /// Timeouts (`[timeouts]`).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Per-client resource limits (`[limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Databases clients may connect to (`[[databases]]`); at least one.
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    /// Users who may connect (`[[users]]`); at least one.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

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
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            balancer: Balancer::default(),
            primary_reads: PrimaryReads::default(),
            fallback: Fallback::default(),
            volatile_functions: VolatileFunctions::default(),
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
}

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

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9930))
}

fn default_max_client_connections() -> usize {
    1000
}

fn default_max_message_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_port() -> u16 {
    5432
}

fn default_weight() -> u32 {
    1
}

/// A configuration error: which file, which line (when known), which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The file, as given to [`Config::load`] or [`Config::from_toml_str`].
    pub file: String,
    /// 1-based line number, when the error can be tied to one.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `users[1].auth` (indices from 0).
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(": ");
        if let Some(field) = &self.field {
            out.push_str(field);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

impl Config {
    /// Parses, fills in defaults and validates a configuration; `file` names it in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let locator = Locator::new(text, file);
        let mut config: Config = toml::from_str(text).map_err(|e| locator.toml_error(&e))?;
        config.fill_names();
        config.validate(&locator)?;
        Ok(config)
    }

    /// Reads `path` and parses it with [`Config::from_toml_str`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            field: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::from_toml_str(&text, &file)
    }

    /// The effective configuration as TOML: every default filled in, secrets replaced by [`REDACTED`].
    pub fn effective_toml(&self) -> String {
        self.render(true)
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The database called `name` (as clients name it).
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// Every server: the primary first, then the replicas in file order.
    pub fn servers(&self) -> impl Iterator<Item = &ServerConfig> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }

    fn fill_names(&mut self) {
        if self.primary.name.is_none() {
            self.primary.name = Some("primary".to_string());
        }
        for (i, replica) in self.replicas.iter_mut().enumerate() {
            if replica.name.is_none() {
                replica.name = Some(format!("replica{}", i + 1));
            }
        }
    }

    fn render(&self, redact: bool) -> String {
        let mut shown = self.clone();
        if redact && shown.admin_token.is_some() {
            shown.admin_token = Some(REDACTED.to_string());
        }
        for db in &mut shown.databases {
            db.server_database = Some(db.server_database().to_string());
        }
        for user in &mut shown.users {
            user.server_user = Some(user.server_user().to_string());
            user.server_password = user.server_password().map(str::to_string);
            if redact {
                for secret in [
                    &mut user.password,
                    &mut user.scram_verifier,
                    &mut user.server_password,
                ] {
                    if secret.is_some() {
                        *secret = Some(REDACTED.to_string());
                    }
                }
            }
        }
        let header = if redact {
            "# pgsplit effective configuration: defaults filled in, secrets redacted.\n\n"
        } else {
            "# pgsplit effective configuration: defaults filled in.\n\n"
        };
        match toml::to_string(&shown) {
            Ok(body) => format!("{header}{body}"),
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        }
    }

    fn validate(&self, loc: &Locator<'_>) -> Result<(), ConfigError> {
        let root = FieldPath::root();

        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(loc.error(
                &root.key("admin_listen"),
                format!("must differ from `listen` ({})", self.listen),
            ));
        }
        if !self.admin_listen.ip().is_loopback()
            && self.admin_token.as_deref().is_none_or(str::is_empty)
        {
            return Err(loc.error(
                &root.key("admin_listen"),
                format!(
                    "{} is not a loopback address: set `admin_token` so that the admin endpoint requires it",
                    self.admin_listen
                ),
            ));
        }
        if self.max_client_connections < 1 {
            return Err(loc.error(&root.key("max_client_connections"), "must be at least 1"));
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(loc.error(
                &root.key("max_message_bytes"),
                format!(
                    "must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES} bytes, got {}",
                    self.max_message_bytes
                ),
            ));
        }
        for (i, name) in self.write_functions.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(loc.error(&root.key("write_functions").index(i), "must not be empty"));
            }
        }

        // Servers.
        let primary_path = root.key("primary");
        let replica_paths: Vec<FieldPath> = (0..self.replicas.len())
            .map(|i| root.key("replicas").index(i))
            .collect();
        let servers: Vec<(&ServerConfig, &FieldPath)> =
            std::iter::once((&self.primary, &primary_path))
                .chain(self.replicas.iter().zip(replica_paths.iter()))
                .collect();
        for (n, (server, path)) in servers.iter().enumerate() {
            if server.host.trim().is_empty() {
                return Err(loc.error(&path.key("host"), "must not be empty"));
            }
            if server.port == 0 {
                return Err(loc.error(&path.key("port"), "must not be 0"));
            }
            if server.weight < 1 {
                return Err(loc.error(&path.key("weight"), "must be at least 1"));
            }
            let name = server.name.as_deref().unwrap_or_default();
            if name.trim().is_empty() {
                return Err(loc.error(&path.key("name"), "must not be empty"));
            }
            if let Some((_, other)) = servers[..n]
                .iter()
                .find(|(s, _)| s.name.as_deref() == Some(name))
            {
                return Err(loc.error(
                    &path.key("name"),
                    format!(
                        "server name `{name}` is already used by {other}; server names must be unique"
                    ),
                ));
            }
        }

        // Pools.
        let pools = root.key("pools");
        for (key, value) in [
            ("write_pool_size", self.pools.write_pool_size),
            ("read_pool_size", self.pools.read_pool_size),
            (
                "prepared_statements_per_server",
                self.pools.prepared_statements_per_server,
            ),
        ] {
            if value < 1 {
                return Err(loc.error(&pools.key(key), "must be at least 1"));
            }
        }

        // Limits.
        let limits = root.key("limits");
        for (key, value) in [
            (
                "max_prepared_statements_per_client",
                self.limits.max_prepared_statements_per_client,
            ),
            ("max_batch_messages", self.limits.max_batch_messages),
            ("max_logins_in_progress", self.limits.max_logins_in_progress),
        ] {
            if value < 1 {
                return Err(loc.error(&limits.key(key), "must be at least 1"));
            }
        }

        // Timeouts.
        let timeouts = root.key("timeouts");
        for (key, value) in [
            ("server_connect", self.timeouts.server_connect),
            ("pool_wait", self.timeouts.pool_wait),
            ("client_login", self.timeouts.client_login),
        ] {
            if value.is_zero() {
                return Err(loc.error(&timeouts.key(key), "must be greater than 0"));
            }
        }

        // Lag.
        let lag = root.key("lag");
        if self.lag.lag_check_interval < Duration::from_millis(50) {
            return Err(loc.error(&lag.key("lag_check_interval"), "must be at least 50ms"));
        }
        if self.lag.probe_timeout.is_zero() {
            return Err(loc.error(&lag.key("probe_timeout"), "must be greater than 0"));
        }
        if self.lag.max_lag.is_zero() {
            return Err(loc.error(&lag.key("max_lag"), "must be greater than 0"));
        }
        if self.lag.readmit_lag() > self.lag.max_lag {
            return Err(loc.error(&lag.key("readmit_lag"), "must not exceed max_lag"));
        }
        if self.lag.down_after < 1 {
            return Err(loc.error(&lag.key("down_after"), "must be at least 1"));
        }

        // Databases.
        if self.databases.is_empty() {
            return Err(loc.error(
                &root.key("databases"),
                "at least one [[databases]] entry is required",
            ));
        }
        for (i, db) in self.databases.iter().enumerate() {
            let path = root.key("databases").index(i);
            if db.name.is_empty() {
                return Err(loc.error(&path.key("name"), "must not be empty"));
            }
            if db.name == ADMIN_DATABASE {
                return Err(loc.error(
                    &path.key("name"),
                    format!("`{ADMIN_DATABASE}` is reserved for the admin console"),
                ));
            }
            if db.server_database.as_deref() == Some("") {
                return Err(loc.error(&path.key("server_database"), "must not be empty"));
            }
            if let Some(j) = self.databases[..i].iter().position(|d| d.name == db.name) {
                return Err(loc.error(
                    &path.key("name"),
                    format!(
                        "database `{}` is already defined at databases[{j}]",
                        db.name
                    ),
                ));
            }
        }

        // Users.
        if self.users.is_empty() {
            return Err(loc.error(
                &root.key("users"),
                "at least one [[users]] entry is required",
            ));
        }
        for (i, user) in self.users.iter().enumerate() {
            let path = root.key("users").index(i);
            if user.name.is_empty() {
                return Err(loc.error(&path.key("name"), "must not be empty"));
            }
            if let Some(j) = self.users[..i].iter().position(|u| u.name == user.name) {
                return Err(loc.error(
                    &path.key("name"),
                    format!("user `{}` is already defined at users[{j}]", user.name),
                ));
            }
            if user.server_user.as_deref() == Some("") {
                return Err(loc.error(&path.key("server_user"), "must not be empty"));
            }
            if let Some(verifier) = &user.scram_verifier {
                // The verifier is a secret: never echo it back.
                if let Err(why) = crate::auth::ScramVerifier::parse(verifier) {
                    return Err(loc.error(
                        &path.key("scram_verifier"),
                        format!(
                            "not a valid SCRAM verifier ({why}); expected \
                             SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> \
                             as stored in pg_authid.rolpassword"
                        ),
                    ));
                }
            }
            match user.auth {
                AuthMethod::ScramSha256 => {
                    if user.password.is_none() && user.scram_verifier.is_none() {
                        return Err(loc.error(
                            &path.key("auth"),
                            "scram-sha-256 needs `password` or `scram_verifier`",
                        ));
                    }
                }
                AuthMethod::Md5 => {
                    if user.password.is_none() {
                        let why = if user.scram_verifier.is_some() {
                            " (a SCRAM verifier cannot answer md5)"
                        } else {
                            ""
                        };
                        return Err(
                            loc.error(&path.key("auth"), format!("md5 needs `password`{why}"))
                        );
                    }
                }
                AuthMethod::Trust => {}
            }
        }
        Ok(())
    }
}

/// Parses a duration: `"0"`, `"250ms"`, `"5s"`, `"1.5s"`, `"10m"`, `"1h"`, or a sum such as `"1h30m"`.
/// Units: `ns`, `us`, `ms`, `s`, `m`, `h`. A number without a unit is only accepted when it is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ns, us, ms, s, m, h";
    let text = s.trim();
    if text.is_empty() {
        return Err(format!(
            "empty duration; write e.g. \"5s\" or \"250ms\" (units: {UNITS})"
        ));
    }
    if text.starts_with('-') {
        return Err(format!("`{text}`: a duration cannot be negative"));
    }
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0;
    while pos < bytes.len() {
        // Number: digits, optionally `.` and more digits.
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let int_part = &text[start..pos];
        let mut frac_part = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            frac_part = &text[frac_start..pos];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!(
                "`{text}` is not a duration; write e.g. \"5s\" or \"250ms\" (units: {UNITS})"
            ));
        }
        while pos < bytes.len() && bytes[pos] == b' ' {
            pos += 1;
        }
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit = &text[unit_start..pos];
        while pos < bytes.len() && bytes[pos] == b' ' {
            pos += 1;
        }
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" if pos < bytes.len() => {
                return Err(format!(
                    "`{text}` is not a duration; write e.g. \"5s\" or \"250ms\" (units: {UNITS})"
                ));
            }
            "" => {
                let is_zero = int_part.chars().chain(frac_part.chars()).all(|c| c == '0');
                if is_zero && start == 0 && pos == bytes.len() {
                    return Ok(Duration::ZERO);
                }
                return Err(format!(
                    "`{text}` has no unit; write e.g. \"{}s\" or \"{}ms\" (units: {UNITS})",
                    &text[start..unit_start].trim_end(),
                    &text[start..unit_start].trim_end()
                ));
            }
            other => return Err(format!("`{text}`: unknown unit `{other}` (units: {UNITS})")),
        };
        let too_large = || format!("`{text}` is too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut nanos = int.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
        if !frac_part.is_empty() {
            let digits = frac_part.trim_end_matches('0');
            if digits.len() > 30 {
                return Err(format!("`{text}` is more precise than a nanosecond"));
            }
            let frac: u128 = if digits.is_empty() {
                0
            } else {
                digits.parse().map_err(|_| too_large())?
            };
            let scale = 10u128.pow(digits.len() as u32);
            let scaled = frac.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
            if !scaled.is_multiple_of(scale) {
                return Err(format!("`{text}` is more precise than a nanosecond"));
            }
            nanos = nanos.checked_add(scaled / scale).ok_or_else(too_large)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("`{text}` is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly: `"0"`, `"250ms"`, `"90s"`, `"10m"`, `"1h"`.
/// Uses the largest unit that divides the duration exactly.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0".to_string();
    }
    const UNITS: [(&str, u128); 6] = [
        ("h", 3600 * 1_000_000_000),
        ("m", 60 * 1_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    for (unit, size) in UNITS {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

/// Serde adapter: durations as strings.
mod opt_duration_serde {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_serde::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration_serde::deserialize(d).map(Some)
    }
}

mod duration_serde {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration string such as \"5s\", \"250ms\", \"10m\" or \"0\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                super::parse_duration(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::ZERO)
                } else {
                    Err(E::custom(format!(
                        "a duration needs a unit and quotes: write \"{v}s\" or \"{v}ms\""
                    )))
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted field path such as `users[1].auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldPath(Vec<Seg>);

impl FieldPath {
    fn root() -> Self {
        FieldPath(Vec::new())
    }

    fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        FieldPath(segs)
    }

    fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        FieldPath(segs)
    }

    fn last_key(&self) -> Option<&str> {
        self.0.iter().rev().find_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// Keys whose values are secrets and must never appear in a message.
const SECRET_KEYS: [&str; 3] = ["password", "server_password", "scram_verifier"];

/// Maps between field paths and lines of the source text, using toml's spanned parse tree.
struct Locator<'a> {
    text: &'a str,
    file: &'a str,
    tree: Spanned<DeTable<'a>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, file: &'a str) -> Self {
        // Recoverable: even a file with syntax errors yields a partial tree for locating fields.
        let (tree, _errors) = DeTable::parse_recoverable(text);
        Locator { text, file, tree }
    }

    fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// An error about `path`, on the line of its key, or of its nearest ancestor present in the file.
    fn error(&self, path: &FieldPath, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: self.line_of(path),
            field: Some(path.to_string()),
            message: message.into(),
        }
    }

    fn line_of(&self, path: &FieldPath) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut value: Option<&Spanned<DeValue<'a>>> = None;
        for seg in &path.0 {
            match seg {
                Seg::Key(k) => {
                    let table = match value {
                        None => self.tree.get_ref(),
                        Some(v) => match v.get_ref().as_table() {
                            Some(t) => t,
                            None => break,
                        },
                    };
                    match table.iter().find(|(key, _)| key.get_ref() == k) {
                        Some((key, v)) => {
                            best = Some(key.span().start);
                            value = Some(v);
                        }
                        None => break,
                    }
                }
                Seg::Index(i) => match value
                    .and_then(|v| v.get_ref().as_array())
                    .and_then(|a| a.get(*i))
                {
                    Some(elem) => {
                        best = Some(elem.span().start);
                        value = Some(elem);
                    }
                    None => break,
                },
            }
        }
        best.map(|offset| self.line_at(offset))
    }

    /// The deepest field whose key or value covers `offset`.
    fn path_at(&self, offset: usize) -> Option<FieldPath> {
        fn in_table(table: &DeTable<'_>, offset: usize, path: &FieldPath) -> Option<FieldPath> {
            for (key, value) in table.iter() {
                let here = path.key(key.get_ref());
                if let Some(found) = in_value(value, offset, &here) {
                    return Some(found);
                }
                if key.span().contains(&offset) || value.span().contains(&offset) {
                    return Some(here);
                }
            }
            None
        }
        fn in_value(
            value: &Spanned<DeValue<'_>>,
            offset: usize,
            path: &FieldPath,
        ) -> Option<FieldPath> {
            match value.get_ref() {
                DeValue::Table(t) => in_table(t, offset, path),
                DeValue::Array(a) => {
                    for (i, elem) in a.iter().enumerate() {
                        let here = path.index(i);
                        if let Some(found) = in_value(elem, offset, &here) {
                            return Some(found);
                        }
                        if elem.span().contains(&offset) {
                            return Some(here);
                        }
                    }
                    None
                }
                _ => None,
            }
        }
        in_table(self.tree.get_ref(), offset, &FieldPath::root())
    }

    /// Converts a toml parse/deserialize error, adding the line and the field path.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = e.message().trim().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
            .map(str::to_string);
        // A missing top-level field comes with an empty span at 0: there is no line to show.
        let span = e
            .span()
            .filter(|span| !(missing.is_some() && span.is_empty()));
        let mut field = span
            .clone()
            .filter(|span| !span.is_empty())
            .and_then(|span| self.path_at(span.start));
        // "missing field `x`" points at the enclosing table: name the missing field itself.
        if let Some(missing) = missing {
            let parent = field.clone().unwrap_or_default();
            field = Some(parent.key(&missing));
        }
        // Never echo a secret's value: a mistyped password would otherwise appear in the message.
        if let Some(path) = &field {
            if path.last_key().is_some_and(|k| SECRET_KEYS.contains(&k))
                && message.starts_with("invalid")
            {
                message = "must be a string (value not shown: it is a secret)".to_string();
            }
        }
        ConfigError {
            file: self.file.to_string(),
            line: span.map(|span| self.line_at(span.start)),
            field: field.map(|p| p.to_string()),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$4096:cGdzcGxpdC1leGFtcGxlIQ==$0n3xoMfihxm6HAUYzcDtHn5hY1AlNojFvbT/6iwzr0k=:VBmfeFF6msyoSLcz1rb44+oXsdPL/ijsCslBraQTV4w=";

    const MINIMAL: &str = r#"[primary]
host = "localhost"

[[databases]]
name = "app"

[[users]]
name = "app"
password = "hunter2"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "config.toml")
    }

    /// Asserts that `text` fails with the given line, field and a message containing `needle`.
    #[track_caller]
    fn expect_err(
        text: &str,
        line: Option<usize>,
        field: Option<&str>,
        needle: &str,
    ) -> ConfigError {
        let err = match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        };
        assert_eq!(err.file, "config.toml", "{err}");
        assert_eq!(err.line, line, "line of: {err}");
        assert_eq!(err.field.as_deref(), field, "field of: {err}");
        assert!(
            err.message.contains(needle),
            "message `{}` lacks `{needle}`",
            err.message
        );
        let shown = err.to_string();
        if let Some(line) = line {
            assert!(
                shown.starts_with(&format!("config.toml:{line}: ")),
                "{shown}"
            );
        }
        if let Some(field) = field {
            assert!(shown.contains(&format!(": {field}: ")), "{shown}");
        }
        err
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9930".parse().unwrap());
        assert_eq!(c.pool_mode, PoolMode::Transaction);
        assert_eq!(c.max_client_connections, 1000);
        assert_eq!(c.max_message_bytes, 268_435_456);
        assert!(c.write_functions.is_empty());
        assert_eq!(c.primary.name.as_deref(), Some("primary"));
        assert_eq!(c.primary.port, 5432);
        assert_eq!(c.primary.weight, 1);
        assert_eq!(c.primary.address(), "localhost:5432");
        assert!(c.replicas.is_empty());
        assert_eq!(c.pools, PoolsConfig::default());
        assert_eq!(c.pools.write_pool_size, 20);
        assert_eq!(c.pools.read_pool_size, 20);
        assert_eq!(c.pools.prepared_statements_per_server, 500);
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.limits.max_prepared_statements_per_client, 10_000);
        assert_eq!(c.limits.max_batch_messages, 100_000);
        assert_eq!(c.limits.max_logins_in_progress, 1000);
        let t = &c.timeouts;
        assert_eq!(t.server_connect, Duration::from_secs(5));
        assert_eq!(t.pool_wait, Duration::from_secs(5));
        assert_eq!(t.client_login, Duration::from_secs(15));
        assert_eq!(t.client_idle, Duration::ZERO);
        assert_eq!(t.server_idle, Duration::from_secs(600));
        assert_eq!(t.server_lifetime, Duration::from_secs(3600));
        assert_eq!(t.shutdown, Duration::from_secs(30));
        let db = c.database("app").unwrap();
        assert_eq!(db.server_database(), "app");
        let u = c.user("app").unwrap();
        assert_eq!(u.auth, AuthMethod::ScramSha256);
        assert_eq!(u.server_user(), "app");
        assert_eq!(u.server_password(), Some("hunter2"));
        assert!(!u.admin);
        assert!(c.user("nobody").is_none());
        assert!(c.database("nope").is_none());
        assert_eq!(c.servers().count(), 1);
    }

    #[test]
    fn server_names_are_filled_in() {
        let text = format!(
            "{MINIMAL}\n[[replicas]]\nhost = \"r1\"\n\n[[replicas]]\nname = \"east\"\nhost = \"r2\"\n\n[[replicas]]\nhost = \"::1\"\nport = 5433\n"
        );
        let c = parse(&text).unwrap();
        let names: Vec<String> = c.servers().map(|s| s.display_name()).collect();
        assert_eq!(names, ["primary", "replica1", "east", "replica3"]);
        assert_eq!(c.replicas[2].address(), "[::1]:5433");
        let unnamed = ServerConfig {
            name: None,
            host: "h".into(),
            port: 1,
            weight: 1,
        };
        assert_eq!(unnamed.display_name(), "h:1");
    }

    #[test]
    fn example_file_parses_and_validates() {
        let c = Config::from_toml_str(
            include_str!("../config.example.toml"),
            "config.example.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.replicas.len(), 2);
        assert_eq!(c.primary.display_name(), "db1");
        assert_eq!(
            c.database("app").unwrap().server_database(),
            "app_production"
        );
        let auths: Vec<AuthMethod> = c.users.iter().map(|u| u.auth).collect();
        assert_eq!(
            auths,
            [
                AuthMethod::ScramSha256,
                AuthMethod::ScramSha256,
                AuthMethod::Md5,
                AuthMethod::Trust
            ]
        );
        assert!(c.user("reporting").unwrap().scram_verifier.is_some());
        assert!(c.user("monitor").unwrap().admin);
        // Every option appears in the example.
        let effective = toml::from_str::<toml::Table>(&c.effective_toml()).unwrap();
        let example =
            toml::from_str::<toml::Table>(include_str!("../config.example.toml")).unwrap();
        for key in effective.keys() {
            assert!(example.contains_key(key), "example lacks `{key}`");
        }
        for table in ["pools", "limits", "timeouts", "primary", "routing", "lag"] {
            let eff = effective[table].as_table().unwrap();
            let ex = example[table].as_table().unwrap();
            for key in eff.keys() {
                assert!(ex.contains_key(key), "example lacks `{table}.{key}`");
            }
        }
        let mut user_keys: Vec<&String> = example["users"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|u| u.as_table().unwrap().keys())
            .collect();
        user_keys.sort();
        user_keys.dedup();
        assert_eq!(
            user_keys,
            [
                "admin",
                "auth",
                "name",
                "password",
                "scram_verifier",
                "server_password",
                "server_user"
            ]
        );
    }

    fn normalized(mut c: Config) -> Config {
        for db in &mut c.databases {
            db.server_database = Some(db.server_database().to_string());
        }
        for u in &mut c.users {
            u.server_user = Some(u.server_user().to_string());
            u.server_password = u.server_password().map(str::to_string);
        }
        c
    }

    #[test]
    fn effective_toml_redacts_and_round_trips() {
        let c = Config::from_toml_str(include_str!("../config.example.toml"), "x").unwrap();
        let shown = c.effective_toml();
        for secret in [
            "change-me",
            "reporting-secret",
            "legacy-password",
            "monitor-password",
            VERIFIER,
        ] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
        assert!(shown.contains(REDACTED));
        assert!(shown.contains("server_connect = \"5s\""), "{shown}");

        // The redacted text is valid TOML of the same schema; only the secrets differ.
        let mut back: Config = toml::from_str(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
        let mut expected = normalized(c.clone());
        for u in expected.users.iter_mut().chain(back.users.iter_mut()) {
            u.password = u.password.as_ref().map(|_| String::new());
            u.scram_verifier = u.scram_verifier.as_ref().map(|_| String::new());
            u.server_password = u.server_password.as_ref().map(|_| String::new());
        }
        assert_eq!(back, expected);

        // Unredacted, it re-parses and validates into an equal configuration.
        let full = c.render(false);
        let back =
            Config::from_toml_str(&full, "effective").unwrap_or_else(|e| panic!("{e}\n{full}"));
        assert_eq!(normalized(back), normalized(c));

        // A minimal config (no replicas, defaults everywhere) round-trips too.
        let c = parse(MINIMAL).unwrap();
        let back = Config::from_toml_str(&c.render(false), "effective").unwrap();
        assert_eq!(normalized(back), normalized(c.clone()));
        assert!(!c.effective_toml().contains("hunter2"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config::from_toml_str(include_str!("../config.example.toml"), "x").unwrap();
        let debug = format!("{c:?}");
        for secret in ["change-me", "reporting-secret", "legacy-password", VERIFIER] {
            assert!(!debug.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn durations_parse_and_round_trip() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("0.0", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("2m 5s", Duration::from_secs(125)),
            (" 5 s ", Duration::from_secs(5)),
            ("7us", Duration::from_micros(7)),
            ("3ns", Duration::from_nanos(3)),
            ("0.001ms", Duration::from_micros(1)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(250),
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(600),
            Duration::from_secs(7200),
            Duration::new(3, 7),
            Duration::MAX,
        ] {
            let s = format_duration(d);
            assert_eq!(parse_duration(&s), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::ZERO), "0");
        for (bad, needle) in [
            ("", "empty"),
            ("-5s", "negative"),
            ("5", "no unit"),
            ("5x", "unknown unit `x`"),
            ("abc", "not a duration"),
            ("5s!", "not a duration"),
            ("1.5.2s", "not a duration"),
            ("s", "not a duration"),
            ("0.5ns", "more precise"),
            ("99999999999999999999999999h", "too large"),
            ("999999999999999999999999999999999999999999s", "too large"),
        ] {
            match parse_duration(bad) {
                Ok(d) => panic!("`{bad}` parsed as {d:?}"),
                Err(e) => assert!(e.contains(needle), "`{bad}`: `{e}` lacks `{needle}`"),
            }
        }
    }

    #[test]
    fn syntax_and_type_errors_name_line_and_field() {
        // Unknown keys, at several depths.
        let e = expect_err(
            &format!("{MINIMAL}bogus = 1\n"),
            Some(10),
            Some("users[0].bogus"),
            "unknown field `bogus`",
        );
        assert!(e
            .to_string()
            .starts_with("config.toml:10: users[0].bogus: unknown field `bogus`"));
        expect_err(
            &format!("colour = 1\n{MINIMAL}"),
            Some(1),
            Some("colour"),
            "unknown field `colour`",
        );
        expect_err(
            "[primary]\nhost = \"h\"\nhots = \"x\"\n",
            Some(3),
            Some("primary.hots"),
            "unknown field `hots`",
        );
        expect_err(
            &format!("{MINIMAL}\n[timeouts]\npool_wait = \"1s\"\nidle = \"1s\"\n"),
            Some(13),
            Some("timeouts.idle"),
            "unknown field `idle`",
        );
        // Bad types and values.
        expect_err(
            &format!("{MINIMAL}\n[pools]\nread_pool_size = \"ten\"\n"),
            Some(12),
            Some("pools.read_pool_size"),
            "invalid type",
        );
        expect_err(
            &format!("max_client_connections = -1\n{MINIMAL}"),
            Some(1),
            Some("max_client_connections"),
            "invalid value",
        );
        expect_err(
            "[primary]\nhost = \"h\"\nport = 70000\n",
            Some(3),
            Some("primary.port"),
            "u16",
        );
        expect_err(
            &format!("listen = \"localhost\"\n{MINIMAL}"),
            Some(1),
            Some("listen"),
            "address",
        );
        expect_err(
            &format!("pool_mode = \"statement\"\n{MINIMAL}"),
            Some(1),
            Some("pool_mode"),
            "unknown variant `statement`",
        );
        expect_err(
            &format!("{MINIMAL}auth = \"sha\"\n"),
            Some(10),
            Some("users[0].auth"),
            "unknown variant `sha`",
        );
        // Durations.
        expect_err(
            &format!("{MINIMAL}\n[timeouts]\nshutdown = \"soon\"\n"),
            Some(12),
            Some("timeouts.shutdown"),
            "`soon` is not a duration",
        );
        expect_err(
            &format!("{MINIMAL}\n[timeouts]\nshutdown = \"-1s\"\n"),
            Some(12),
            Some("timeouts.shutdown"),
            "negative",
        );
        expect_err(
            &format!("{MINIMAL}\n[timeouts]\nshutdown = 30\n"),
            Some(12),
            Some("timeouts.shutdown"),
            "\"30s\"",
        );
        assert_eq!(
            parse(&format!("{MINIMAL}\n[timeouts]\nclient_idle = 0\n"))
                .unwrap()
                .timeouts
                .client_idle,
            Duration::ZERO
        );
        // Missing required fields.
        expect_err(
            "[[databases]]\nname = \"app\"\n",
            None,
            Some("primary"),
            "missing field `primary`",
        );
        expect_err(
            &format!("{MINIMAL}\n[[users]]\npassword = \"x\"\n"),
            Some(11),
            Some("users[1].name"),
            "missing field `name`",
        );
        expect_err(
            "[primary]\nport = 5432\n",
            Some(1),
            Some("primary.host"),
            "missing field `host`",
        );
        // TOML syntax errors.
        expect_err(&format!("{MINIMAL}name = \n"), Some(10), None, "");
        expect_err(
            &format!("{MINIMAL}\n[primary]\nhost = \"b\"\n"),
            Some(11),
            Some("primary"),
            "",
        );
        // A mistyped secret is not echoed.
        let e = expect_err(
            &format!("{MINIMAL}server_password = 123456789\n"),
            Some(10),
            Some("users[0].server_password"),
            "secret",
        );
        assert!(!e.to_string().contains("123456789"), "{e}");
    }

    #[test]
    fn semantic_errors_name_line_and_field() {
        let base_head = "[primary]\nhost = \"p\"\n\n[[databases]]\nname = \"app\"\n\n";
        let user = "[[users]]\nname = \"app\"\npassword = \"x\"\n";
        // At least one database and one user.
        expect_err(
            "[primary]\nhost = \"p\"\n",
            None,
            Some("databases"),
            "at least one [[databases]]",
        );
        expect_err(
            &format!("databases = []\n[primary]\nhost = \"p\"\n{}", user),
            Some(1),
            Some("databases"),
            "at least one",
        );
        expect_err(base_head, None, Some("users"), "at least one [[users]]");
        // Unique names.
        expect_err(
            &format!("{base_head}{user}\n[[users]]\nname = \"app\"\npassword = \"y\"\n"),
            Some(12),
            Some("users[1].name"),
            "user `app` is already defined at users[0]",
        );
        expect_err(
            &format!("{base_head}[[databases]]\nname = \"app\"\n{user}"),
            Some(8),
            Some("databases[1].name"),
            "database `app` is already defined",
        );
        expect_err(
            &format!("{base_head}{user}[[replicas]]\nname = \"a\"\nhost = \"r\"\n[[replicas]]\nhost = \"r2\"\nname = \"a\"\n"),
            Some(15),
            Some("replicas[1].name"),
            "server name `a` is already used by replicas[0]",
        );
        expect_err(
            &format!("{base_head}{user}[[replicas]]\nname = \"primary\"\nhost = \"r\"\n"),
            Some(11),
            Some("replicas[0].name"),
            "already used by primary",
        );
        // A defaulted name that collides points at the replica's table.
        expect_err(
            &format!("{base_head}{user}[[replicas]]\nname = \"replica2\"\nhost = \"r\"\n[[replicas]]\nhost = \"r2\"\n"),
            Some(13),
            Some("replicas[1].name"),
            "`replica2` is already used by replicas[0]",
        );
        expect_err(
            &format!("{base_head}{user}[[replicas]]\nname = \"\"\nhost = \"r\"\n"),
            Some(11),
            Some("replicas[0].name"),
            "empty",
        );
        // Auth requirements.
        let head_user = format!("{base_head}{user}\n");
        let e = expect_err(
            &format!("{head_user}[[users]]\nname = \"old\"\nscram_verifier = \"{VERIFIER}\"\nauth = \"md5\"\n"),
            Some(14),
            Some("users[1].auth"),
            "md5 needs `password`",
        );
        assert_eq!(
            e.to_string(),
            "config.toml:14: users[1].auth: md5 needs `password` (a SCRAM verifier cannot answer md5)"
        );
        expect_err(
            &format!("{head_user}[[users]]\nname = \"old\"\nauth = \"md5\"\n"),
            Some(13),
            Some("users[1].auth"),
            "md5 needs `password`",
        );
        // No `auth` key: the default (scram-sha-256) applies; the line is the user's table header.
        expect_err(
            &format!("{head_user}[[users]]\nname = \"nopw\"\nadmin = true\n"),
            Some(11),
            Some("users[1].auth"),
            "scram-sha-256 needs `password` or `scram_verifier`",
        );
        expect_err(
            &format!("{head_user}[[users]]\nname = \"nopw\"\nauth = \"scram-sha-256\"\n"),
            Some(13),
            Some("users[1].auth"),
            "scram-sha-256 needs",
        );
        // Inline tables work too.
        expect_err(
            &format!("users = [\n  {{ name = \"a\", password = \"x\" }},\n  {{ name = \"b\" }},\n]\n{base_head}"),
            Some(3),
            Some("users[1].auth"),
            "scram-sha-256 needs",
        );
        let ok = parse(&format!(
            "{head_user}[[users]]\nname = \"t\"\nauth = \"trust\"\n"
        ))
        .unwrap();
        assert_eq!(ok.user("t").unwrap().auth, AuthMethod::Trust);
        assert_eq!(ok.user("t").unwrap().server_password(), None);
        let ok = parse(&format!(
            "{head_user}[[users]]\nname = \"v\"\nscram_verifier = \"{VERIFIER}\"\n"
        ))
        .unwrap();
        assert!(ok.user("v").unwrap().scram_verifier.is_some());
        // A verifier that does not parse; its text is not echoed.
        let e = expect_err(
            &format!(
                "{head_user}[[users]]\nname = \"v\"\n\nscram_verifier = \"SCRAM-SHA-256$x:abc\"\n"
            ),
            Some(14),
            Some("users[1].scram_verifier"),
            "not a valid SCRAM verifier",
        );
        assert!(!e.to_string().contains("$x:abc"), "{e}");
        expect_err(
            &format!("{head_user}[[users]]\nname = \"v\"\nserver_user = \"\"\ntrust = 1\n"),
            Some(14),
            Some("users[1].trust"),
            "unknown field",
        );
        expect_err(
            &format!("{head_user}[[users]]\nname = \"v\"\nauth = \"trust\"\nserver_user = \"\"\n"),
            Some(14),
            Some("users[1].server_user"),
            "empty",
        );
        expect_err(
            &format!("{base_head}[[users]]\nname = \"\"\nauth = \"trust\"\n"),
            Some(8),
            Some("users[0].name"),
            "empty",
        );

        // Sizes, ports, weights.
        let ok_tail = format!("{base_head}{user}");
        expect_err(
            &format!("max_client_connections = 0\n{ok_tail}"),
            Some(1),
            Some("max_client_connections"),
            "at least 1",
        );
        expect_err(
            &format!("max_message_bytes = 8191\n{ok_tail}"),
            Some(1),
            Some("max_message_bytes"),
            "between 8192",
        );
        expect_err(
            &format!("max_message_bytes = 4294967296\n{ok_tail}"),
            Some(1),
            Some("max_message_bytes"),
            "between 8192",
        );
        assert_eq!(
            parse(&format!("max_message_bytes = 8192\n{ok_tail}"))
                .unwrap()
                .max_message_bytes,
            8192
        );
        for key in [
            "write_pool_size",
            "read_pool_size",
            "prepared_statements_per_server",
        ] {
            expect_err(
                &format!("{ok_tail}\n[pools]\n{key} = 0\n"),
                Some(12),
                Some(&format!("pools.{key}")),
                "at least 1",
            );
        }
        for key in [
            "max_prepared_statements_per_client",
            "max_batch_messages",
            "max_logins_in_progress",
        ] {
            expect_err(
                &format!("{ok_tail}\n[limits]\n{key} = 0\n"),
                Some(12),
                Some(&format!("limits.{key}")),
                "at least 1",
            );
        }
        expect_err(
            &format!("{ok_tail}[[replicas]]\nhost = \"r\"\nport = 0\n"),
            Some(12),
            Some("replicas[0].port"),
            "must not be 0",
        );
        expect_err(
            "[primary]\nhost = \"p\"\nweight = 0\n",
            Some(3),
            Some("primary.weight"),
            "at least 1",
        );
        expect_err(
            &format!("{ok_tail}[[replicas]]\nhost = \"r\"\n\nweight = 0\n"),
            Some(13),
            Some("replicas[0].weight"),
            "at least 1",
        );
        expect_err(
            "[primary]\nhost = \"\"\n",
            Some(2),
            Some("primary.host"),
            "empty",
        );
        for key in ["server_connect", "pool_wait", "client_login"] {
            expect_err(
                &format!("{ok_tail}\n[timeouts]\n{key} = \"0\"\n"),
                Some(12),
                Some(&format!("timeouts.{key}")),
                "greater than 0",
            );
        }
        for key in ["client_idle", "server_idle", "server_lifetime", "shutdown"] {
            parse(&format!("{ok_tail}\n[timeouts]\n{key} = \"0\"\n")).unwrap();
        }
        // Misc.
        expect_err(
            &format!("listen = \"0.0.0.0:7000\"\nadmin_listen = \"0.0.0.0:7000\"\n{ok_tail}"),
            Some(2),
            Some("admin_listen"),
            "must differ",
        );
        parse(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{ok_tail}"
        ))
        .unwrap();
        expect_err(
            &format!("write_functions = [\"ok\", \"\"]\n{ok_tail}"),
            Some(1),
            Some("write_functions[1]"),
            "empty",
        );
        expect_err(
            &format!("{base_head}[[databases]]\nname = \"pgsplit\"\n{user}"),
            Some(8),
            Some("databases[1].name"),
            "reserved",
        );
        expect_err(
            &format!("{ok_tail}[[databases]]\nname = \"x\"\nserver_database = \"\"\n"),
            Some(12),
            Some("databases[1].server_database"),
            "empty",
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.toml");
        let e = Config::load(&missing).unwrap_err();
        assert_eq!(e.file, missing.display().to_string());
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read", missing.display())),
            "{e}"
        );

        let path = dir.path().join("pgsplit.toml");
        std::fs::write(
            &path,
            format!(
                "[primary]\nhost = \"h\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\n\
                 scram_verifier = \"{VERIFIER}\"\nauth = \"md5\"\n"
            ),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:8: users[0].auth: md5 needs `password` (a SCRAM verifier cannot answer md5)",
                path.display()
            )
        );
        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(Config::load(&path).unwrap().users.len(), 1);
    }

    #[test]
    fn error_display_without_line_or_field() {
        let e = ConfigError {
            file: "f.toml".into(),
            line: None,
            field: None,
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "f.toml: boom");
        let e = ConfigError {
            file: "f.toml".into(),
            line: Some(3),
            field: None,
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "f.toml:3: boom");
        let e = ConfigError {
            file: "f.toml".into(),
            line: None,
            field: Some("users".into()),
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "f.toml: users: boom");
    }
}
