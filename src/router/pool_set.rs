//! The pools of one (user, database), one write pool and one read pool per server index; the list grows with
//! the router's.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Backend, Target};
use crate::config::{AuthMethod, Config, DatabaseConfig, UserConfig};
use crate::pool::{Pool, PoolTimeouts};
use crate::server::{Credential, ServerTarget, SharedCredential};

/// Both pools of one server in a [`PoolSet`].
pub struct ServerPools {
    /// Used while it is the primary.
    pub write: Pool,
    /// Used while it is a replica, or for reads on the primary.
    pub read: Pool,
}

/// The pools of one (user, database): per server index, a write pool and a read pool. Pools open connections
/// only when used. The list grows when a reload adds a server (sessions keep their `Arc<PoolSet>`); a retired
/// server's pools stay at their index and close their connections as they come back.
pub struct PoolSet {
    servers: ArcSwap<Vec<ServerPools>>,
    /// The user and database entries it was last built from (kept for a set whose user or database a reload
    /// removed: its sessions go on, and it still follows the server list).
    owner: std::sync::Mutex<Option<(UserConfig, DatabaseConfig)>>,
    /// The ParameterStatus values a server reported at the last greeting (for logins while the pools are busy).
    pub greeting:
        std::sync::Mutex<Option<std::sync::Arc<std::collections::HashMap<String, String>>>>,
    /// What every pool here logs in with: the user's configured server password, or what a client's login gave
    /// (SCRAM pass-through keys, a looked-up md5 hash), which then replaces it (see [`Credential`]).
    pub credential: Arc<SharedCredential>,
}

impl PoolSet {
    /// Creates the pools for a user and database, one pair per server index.
    pub fn new(
        config: &Config,
        user: &UserConfig,
        db: &DatabaseConfig,
        servers: &[Arc<Backend>],
    ) -> PoolSet {
        let credential = Credential::from_password(user.server_password());
        let set = PoolSet {
            servers: ArcSwap::from_pointee(Vec::new()),
            owner: std::sync::Mutex::new(None),
            greeting: std::sync::Mutex::new(None),
            credential: Arc::new(SharedCredential::new(credential)),
        };
        set.apply(config, user, db, servers);
        set
    }

    /// Brings the pools in line with a configuration (start and reload): new connections use the user's
    /// current server password (when one is configured; else what the last client's login gave) and the timeouts; sizes change live; added servers get pools; retired ones
    /// close their connections as they come back. The caller serializes calls.
    pub fn apply(
        &self,
        config: &Config,
        user: &UserConfig,
        db: &DatabaseConfig,
        servers: &[Arc<Backend>],
    ) {
        let t = &config.timeouts;
        let timeouts = PoolTimeouts {
            connect: t.server_connect,
            wait: t.pool_wait,
            idle: t.server_idle,
            lifetime: t.server_lifetime,
        };
        let target = |b: &Backend| ServerTarget {
            server: b.name.clone(),
            address: b.address.clone(),
            user: user.server_user().to_string(),
            credential: self.credential.clone(),
            database: db.server_database().to_string(),
            tls: Arc::new(crate::tls::ServerTls::for_server(config, &b.config)),
        };
        if user.server_password().is_some() {
            self.credential
                .set(Credential::from_password(user.server_password()));
        }
        if let Ok(mut owner) = self.owner.lock() {
            *owner = Some((user.clone(), db.clone()));
        }
        let (write_size, read_size) = (config.pools.write_pool_size, config.pools.read_pool_size);
        let current = self.servers.load_full();
        for (b, pools) in servers.iter().zip(current.iter()) {
            if b.is_retired() {
                pools.write.retire();
                pools.read.retire();
                continue;
            }
            pools.write.update(target(b), timeouts);
            pools.read.update(target(b), timeouts);
            pools.write.resize(write_size);
            pools.read.resize(read_size);
        }
        if servers.len() > current.len() {
            let mut grown: Vec<ServerPools> = current
                .iter()
                .map(|p| ServerPools {
                    write: p.write.clone(),
                    read: p.read.clone(),
                })
                .collect();
            for b in &servers[current.len()..] {
                let pools = ServerPools {
                    write: Pool::new(target(b), write_size, timeouts),
                    read: Pool::new(target(b), read_size, timeouts),
                };
                if b.is_retired() {
                    pools.write.retire();
                    pools.read.retire();
                }
                grown.push(pools);
            }
            self.servers.store(Arc::new(grown));
        }
    }

    /// Like [`PoolSet::apply`] with the user and database entries it was last built from: for a set whose user or
    /// database left the configuration, so that its running sessions still find a pool at every server index.
    pub fn keep_up(&self, config: &Config, servers: &[Arc<Backend>]) {
        let owner = self.owner.lock().ok().and_then(|o| o.clone());
        if let Some((user, db)) = owner {
            self.apply(config, &user, &db, servers);
        }
    }

    /// Whether its user is one auth_query found (no password or verifier of its own; never trust).
    pub fn looked_up(&self) -> bool {
        let owner = self
            .owner
            .lock()
            .ok()
            .and_then(|o| o.as_ref().map(|(u, _)| u.clone()));
        owner.is_some_and(|u| {
            u.password.is_none() && u.scram_verifier.is_none() && u.auth != AuthMethod::Trust
        })
    }

    /// The pool behind a target (`None` for an index this set has no pools for: never, when built and updated
    /// from the router's list).
    pub fn pool(&self, target: Target) -> Option<Pool> {
        let servers = self.servers.load();
        let pools = servers.get(target.index())?;
        Some(match target {
            Target::Primary(_) => pools.write.clone(),
            Target::Replica(_) => pools.read.clone(),
        })
    }

    /// Both pools of one server.
    pub fn of_server(&self, index: usize) -> Vec<Pool> {
        let servers = self.servers.load();
        servers
            .get(index)
            .map(|p| vec![p.write.clone(), p.read.clone()])
            .unwrap_or_default()
    }

    /// Every pool.
    pub fn all(&self) -> Vec<Pool> {
        let servers = self.servers.load();
        let write = servers.iter().map(|p| p.write.clone());
        write
            .chain(servers.iter().map(|p| p.read.clone()))
            .collect()
    }

    /// The write pools, by server index.
    pub fn write_pools(&self) -> Vec<Pool> {
        self.servers
            .load()
            .iter()
            .map(|p| p.write.clone())
            .collect()
    }

    /// The read pools, by server index.
    pub fn read_pools(&self) -> Vec<Pool> {
        self.servers.load().iter().map(|p| p.read.clone()).collect()
    }
}
