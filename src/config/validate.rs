//! Checks of a parsed configuration that serde cannot express; each error names its field and line.

use std::time::Duration;

use super::load::{FieldPath, Locator};
use super::sections::{MAX_CAUSAL_WAIT, MAX_FAILOVER_WAIT};
use super::{
    format_duration, AuthMethod, Config, ConfigError, ServerConfig, ADMIN_DATABASE,
    MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES,
};

impl Config {
    pub(super) fn validate(&self, loc: &Locator<'_>) -> Result<(), ConfigError> {
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
        if self.timeouts.failover_wait > MAX_FAILOVER_WAIT {
            return Err(loc.error(
                &timeouts.key("failover_wait"),
                format!(
                    "must be at most {} (a unit that needs the primary waits this long for one), got {}",
                    format_duration(MAX_FAILOVER_WAIT),
                    format_duration(self.timeouts.failover_wait)
                ),
            ));
        }

        // Routing.
        if self.routing.causal_wait > MAX_CAUSAL_WAIT {
            return Err(loc.error(
                &root.key("routing").key("causal_wait"),
                format!(
                    "must be at most {} (a read waits this long for a replica that has replayed the \
                     session's writes, then goes to the primary), got {}",
                    format_duration(MAX_CAUSAL_WAIT),
                    format_duration(self.routing.causal_wait)
                ),
            ));
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
        self.validate_auth_query(loc)?;
        self.validate_tls(loc)
    }

    fn validate_auth_query(&self, loc: &Locator<'_>) -> Result<(), ConfigError> {
        let root = FieldPath::root();
        if self.auth_query.trim().is_empty() || !self.auth_query.contains("$1") {
            return Err(loc.error(
                &root.key("auth_query"),
                "must be a query taking the user name as $1 and returning (name, password hash)",
            ));
        }
        if self.auth_database.as_deref() == Some("") {
            return Err(loc.error(&root.key("auth_database"), "must not be empty"));
        }
        let Some(name) = &self.auth_user else {
            // A lookup set up without anyone to run it is a mistake, not a default.
            if self.auth_query != super::DEFAULT_AUTH_QUERY {
                return Err(loc.error(&root.key("auth_query"), "needs `auth_user` to run it"));
            }
            if self.auth_database.is_some() {
                return Err(loc.error(&root.key("auth_database"), "needs `auth_user`"));
            }
            return Ok(());
        };
        let Some(user) = self.user(name) else {
            return Err(loc.error(
                &root.key("auth_user"),
                format!("`{name}` is not a [[users]] entry; auth_user must name a listed user"),
            ));
        };
        if user.server_password().is_none() && user.scram_verifier.is_some() {
            return Err(loc.error(
                &root.key("auth_user"),
                format!(
                    "user `{name}` has only a `scram_verifier`: the lookup logs in to the primary on a side \
                     connection and needs `server_password` (or `password`)"
                ),
            ));
        }
        Ok(())
    }
}
