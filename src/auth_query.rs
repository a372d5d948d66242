//! auth_query: the password hashes of users not listed in the file, looked up in PostgreSQL through the
//! `auth_user`'s server login on a side connection to the primary, and cached for `auth_query_ttl`.
//!
//! One side connection per (server, database) is kept and reused; concurrent logins of one user wait for one
//! query (a lock per user name). "No such user" is cached too, for at most [`MISSING_TTL`], so a flood of
//! unknown names costs one query per name and period. Nothing here logs a hash.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::ScramVerifier;
use crate::config::{Config, ServerConfig};
use crate::side;

/// Longest "no such user" is cached.
pub const MISSING_TTL: Duration = Duration::from_secs(5);

/// A cached hash at least this old is looked up again at the next login after a failed one, so that a password
/// changed in PostgreSQL works at once (younger ones are not, so failures cannot flood the primary).
pub const REFRESH_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// After a failed connect, lookups fail at once for this long.
pub const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(1);

/// Past this many cached names, expired ones are dropped at the next insert.
const PRUNE_ABOVE: usize = 10_000;

/// A looked-up password hash. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A SCRAM-SHA-256 verifier: the client authenticates with SCRAM, pgsplit passes its key through.
    Scram(ScramVerifier),
    /// An `md5…` hash: md5 both ways.
    Md5(String),
    /// A plaintext password (a custom query may return one): SCRAM against a verifier derived once.
    Plain {
        /// The password, for the server login.
        password: String,
        /// Derived from it for the client's SCRAM exchange.
        verifier: ScramVerifier,
    },
}

impl Secret {
    /// Reads a `pg_authid.rolpassword`-style value; `None` for an empty one (no password: refused).
    pub fn parse(stored: &str) -> Option<Secret> {
        if stored.is_empty() {
            return None;
        }
        if let Ok(v) = ScramVerifier::parse(stored) {
            return Some(Secret::Scram(v));
        }
        if stored.starts_with("SCRAM-SHA-256$") {
            return None; // a malformed verifier matches no password
        }
        let md5_hex = stored
            .strip_prefix("md5")
            .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if md5_hex.is_some() {
            return Some(Secret::Md5(stored.to_string()));
        }
        Some(Secret::Plain {
            password: stored.to_string(),
            verifier: ScramVerifier::from_password(stored),
        })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Secret::Scram(_) => "Secret::Scram(<redacted>)",
            Secret::Md5(_) => "Secret::Md5(<redacted>)",
            Secret::Plain { .. } => "Secret::Plain(<redacted>)",
        })
    }
}

/// What a lookup found, and when.
#[derive(Debug, Clone)]
pub struct Found {
    /// The user's hash; `None`: no such user, or no (usable) password.
    pub secret: Option<Arc<Secret>>,
    /// When it was read from the server.
    pub at: Instant,
}

/// Why a lookup could not be made (the primary is down, the query is wrong, …). The text has no secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(String);

type Slot = Arc<tokio::sync::Mutex<Option<Found>>>;

/// The auth_query cache and its side connections.
#[derive(Default)]
pub struct AuthQuery {
    /// Per user name: the last lookup, behind the lock concurrent logins of that user queue on.
    cache: Mutex<HashMap<String, Slot>>,
    /// Side connections by (server address, database): open, or the last failure to open one.
    conns: Arc<tokio::sync::Mutex<HashMap<ConnKey, Conn>>>,
}

type ConnKey = (String, String);

/// A side connection, or why the last attempt to open one failed and when.
enum Conn {
    Open(Arc<tokio_postgres::Client>),
    Failed(Instant, String),
}

impl AuthQuery {
    /// The hash of `user`, from the cache when fresh, else from `server` (the primary) in `dbname` through
    /// `config.auth_user`. `Err` when there is no auth_user or the lookup failed.
    pub async fn lookup(
        &self,
        config: &Config,
        server: &ServerConfig,
        dbname: &str,
        user: &str,
    ) -> Result<Found, LookupError> {
        let slot = self.slot(user);
        let mut entry = slot.lock().await;
        if let Some(found) = entry.as_ref() {
            let ttl = match found.secret {
                Some(_) => config.auth_query_ttl,
                None => config.auth_query_ttl.min(MISSING_TTL),
            };
            if found.at.elapsed() < ttl {
                return Ok(found.clone());
            }
        }
        let at = Instant::now();
        let secret = self.query(config, server, dbname, user).await?;
        let found = Found {
            secret: secret.map(Arc::new),
            at,
        };
        *entry = Some(found.clone());
        Ok(found)
    }

    /// Forgets `user`'s cached hash if it was read at `at` and is at least [`REFRESH_AFTER_FAILURE`] old: a
    /// client failed against it, and the password may have changed.
    pub fn failed_against(&self, user: &str, at: Instant) {
        if at.elapsed() < REFRESH_AFTER_FAILURE {
            return;
        }
        let slot = lock(&self.cache).get(user).cloned();
        if let Some(slot) = slot {
            if let Ok(mut entry) = slot.try_lock() {
                if entry.as_ref().is_some_and(|f| f.at == at) {
                    *entry = None;
                }
            }
        }
    }

    /// Forgets every cached lookup at once, and the lookup connections as soon as no lookup uses them (reload,
    /// when how users are looked up changed).
    pub fn forget(&self) {
        lock(&self.cache).clear();
        match self.conns.try_lock() {
            Ok(mut conns) => conns.clear(),
            Err(_) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let conns = self.conns.clone();
                    runtime.spawn(async move { conns.lock().await.clear() });
                }
            }
        }
    }

    fn slot(&self, user: &str) -> Slot {
        let mut cache = lock(&self.cache);
        if let Some(slot) = cache.get(user) {
            return slot.clone();
        }
        if cache.len() >= PRUNE_ABOVE {
            // Drop entries nobody is using whose lookup is older than the longest TTL worth keeping.
            cache.retain(|_, slot| match slot.try_lock() {
                Ok(e) => e.as_ref().is_some_and(|f| f.at.elapsed() < MISSING_TTL),
                Err(_) => true,
            });
        }
        let slot = Slot::default();
        cache.insert(user.to_string(), slot.clone());
        slot
    }

    /// Runs the query once, on a reused side connection (opened again if it was closed; forgotten if the query
    /// fails or times out, so that a dead connection is not tried twice).
    async fn query(
        &self,
        config: &Config,
        server: &ServerConfig,
        dbname: &str,
        user: &str,
    ) -> Result<Option<Secret>, LookupError> {
        let timeout = config.timeouts.server_connect;
        let key = (server.address(), dbname.to_string());
        let client = self.client(config, server, &key).await?;
        let rows =
            match tokio::time::timeout(timeout, client.query(config.auth_query.as_str(), &[&user]))
                .await
            {
                Ok(Ok(rows)) => rows,
                failed => {
                    let mut conns = self.conns.lock().await;
                    if matches!(conns.get(&key), Some(Conn::Open(c)) if Arc::ptr_eq(c, &client)) {
                        conns.remove(&key);
                    }
                    return Err(LookupError(match failed {
                        Ok(Err(e)) => format!("auth_query failed: {}", side::describe(&e)),
                        _ => format!("auth_query timed out after {timeout:?}"),
                    }));
                }
            };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let stored: Option<String> = row
            .try_get(1)
            .map_err(|e| LookupError(format!("auth_query must return (name, password): {e}")))?;
        Ok(stored.as_deref().and_then(Secret::parse))
    }

    /// The open side connection for `key`, or a new one. After a failure to open one, lookups fail at once for
    /// [`RETRY_CONNECT_AFTER`] instead of each waiting up to `timeouts.server_connect` in turn.
    async fn client(
        &self,
        config: &Config,
        server: &ServerConfig,
        key: &ConnKey,
    ) -> Result<Arc<tokio_postgres::Client>, LookupError> {
        let mut conns = self.conns.lock().await;
        match conns.get(key) {
            Some(Conn::Open(c)) if !c.is_closed() => return Ok(c.clone()),
            Some(Conn::Failed(at, why)) if at.elapsed() < RETRY_CONNECT_AFTER => {
                return Err(LookupError(why.clone()))
            }
            _ => {}
        }
        let auth_user = config
            .auth_user
            .as_deref()
            .and_then(|name| config.user(name))
            .ok_or_else(|| LookupError("no auth_user configured".into()))?;
        let timeout = config.timeouts.server_connect;
        let opened = side::connect_as(
            config,
            auth_user,
            server,
            &key.1,
            "pgsplit auth_query",
            timeout,
        )
        .await;
        match opened {
            Ok(side) => {
                drop(side.task); // the task runs on until the client is dropped
                let client = Arc::new(side.client);
                conns.insert(key.clone(), Conn::Open(client.clone()));
                Ok(client)
            }
            Err(e) => {
                let why = format!(
                    "cannot connect to {} as auth_user: {}",
                    server.display_name(),
                    side::describe(&e)
                );
                conns.insert(key.clone(), Conn::Failed(Instant::now(), why.clone()));
                Err(LookupError(why))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_passwords_are_read_by_kind() {
        let v = ScramVerifier::from_password("pw").to_string();
        assert!(matches!(Secret::parse(&v), Some(Secret::Scram(_))));
        let m = crate::auth::md5::hash_password("bob", "pw");
        assert!(matches!(Secret::parse(&m), Some(Secret::Md5(_))));
        assert!(matches!(
            Secret::parse("plain-text"),
            Some(Secret::Plain { .. })
        ));
        assert!(Secret::parse("").is_none());
        assert!(Secret::parse("SCRAM-SHA-256$broken").is_none());
        assert!(!format!("{:?}", Secret::parse(&m)).contains(&m[3..]));
    }
}
