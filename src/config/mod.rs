//! The TOML configuration: schema, defaults, validation and rendering of the effective configuration.
//!
//! [`Config::load`] / [`Config::from_toml_str`] parse a file, fill in defaults and validate it. Every error is a
//! [`ConfigError`] naming the file, the line (when it can be found) and the dotted path of the offending field,
//! e.g. `pgsplit.toml:12: users[1].auth: md5 needs `password` (a SCRAM verifier cannot answer md5)`.
//! Array indices in field paths count from 0, in file order.
//!
//! Durations are written as strings: `"0"`, `"250ms"`, `"5s"`, `"1.5s"`, `"10m"`, `"1h"`, `"1h30m"`.
//!
//! Here: [`Config`] and its rendering. `sections`: the tables of the file and their defaults. `load`: reading a
//! file and the `Locator` that ties an error to its line and field. `validate`: the checks serde cannot make.
//! `duration`: duration strings. `diff`: what a reload changes. `source`: a file, command-line flags (`flags`,
//! with `url` parsing `postgres://` URLs) and `PGSPLIT_*` environment overrides (`env`) merged into one
//! configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod diff;
mod duration;
pub mod env;
mod flags;
mod load;
mod sections;
mod source;
#[cfg(test)]
mod tests;
mod tls;
mod url;
mod validate;

pub use diff::{diff, keeping_restart_settings, ConfigDiff};
pub use duration::{format_duration, parse_duration};
pub use flags::Flags;
pub use load::ConfigError;
pub use sections::{
    AuthMethod, Balancer, DatabaseConfig, Fallback, LagConfig, LimitsConfig, LogFormat, PoolMode,
    PoolsConfig, PrimaryReads, PrimaryUnknown, RoutingConfig, ServerConfig, Timeouts, UserConfig,
    VolatileFunctions,
};
pub use source::{Source, NO_FILE};
pub use tls::{
    check_pair, read_certs, read_key, ClientTlsMode, PemError, ServerTlsMode, TlsConfig,
};
pub use url::{PgUrl, DEFAULT_PORT};

/// The configuration in force, swappable (reload): sessions read it at unit boundaries, background tasks each
/// tick.
pub type LiveConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

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
    /// `text` (default) or `json` log lines on standard error; `PGSPLIT_LOG_FORMAT` overrides it. Read at
    /// start only.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Largest client message accepted, in bytes. Default 256 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Extra function names the classifier treats as writing. Default none.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// A `[[users]]` entry whose server login looks up clients not listed in the file with `auth_query`.
    /// Default none: only listed users may log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// The lookup: takes the client's user name as `$1`, returns (name, password hash) — a SCRAM verifier or an
    /// md5 hash. Default PgBouncer's `SELECT usename, passwd FROM pg_shadow WHERE usename=$1` (needs a superuser).
    #[serde(default = "default_auth_query")]
    pub auth_query: String,
    /// How long a looked-up password hash is cached (a missing user: at most 5s). Default 60s; 0: every login
    /// looks up.
    #[serde(default = "default_auth_query_ttl", with = "duration::duration_serde")]
    pub auth_query_ttl: Duration,
    /// Server database `auth_query` runs in. Default: the client's database's `server_database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_database: Option<String>,
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
    /// TLS towards clients and servers (`[tls]`).
    #[serde(default)]
    pub tls: TlsConfig,
}

impl Config {
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

    /// The TLS mode towards `server`: its own `tls_mode`, else `tls.server_mode`.
    pub fn server_tls_mode(&self, server: &ServerConfig) -> ServerTlsMode {
        server.tls_mode.unwrap_or(self.tls.server_mode)
    }

    /// Every server: the primary first, then the replicas in file order.
    pub fn servers(&self) -> impl Iterator<Item = &ServerConfig> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
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
}

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";

fn default_auth_query() -> String {
    DEFAULT_AUTH_QUERY.to_string()
}

fn default_auth_query_ttl() -> Duration {
    Duration::from_secs(60)
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
