//! The state every session shares: the configuration, the classifier, the router and its monitor, the pools,
//! the cancel keys and the counters. It knows nothing of the listener, the admin endpoint or the client loop;
//! they hold it (`Arc<Shared>`), and the background tasks (monitor, catalog) take only the pieces they read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::auth::ScramVerifier;
use crate::auth_query::{AuthQuery, LookupError, Secret};
use crate::cancel::CancelRegistry;
use crate::classify::Classifier;
use crate::config::{AuthMethod, Config, UserConfig, VolatileFunctions};
use crate::monitor::Monitor;
use crate::router::{PoolSet, Router};
use crate::server::Credential;
use crate::stats::RoutingStats;

/// Who a client's user name is.
#[derive(Debug)]
pub enum Known {
    /// A `[[users]]` entry.
    Listed(Arc<UserConfig>),
    /// Found by `auth_query`: server role of the same name, not an admin.
    LookedUp {
        /// The user as pools see it.
        user: Arc<UserConfig>,
        /// The password hash the client is checked against.
        secret: Arc<Secret>,
        /// When it was read (see [`AuthQuery::failed_against`]).
        at: Instant,
    },
    /// Neither: refused as a wrong password is, after a mock exchange.
    Unknown,
}

/// The user a looked-up one is for pools: its own name on the servers, no secrets (the login supplies the
/// credential), how the client authenticates (md5 for an md5 hash, else SCRAM), never an admin.
fn looked_up_user(name: &str, secret: &Secret) -> UserConfig {
    UserConfig {
        name: name.to_string(),
        password: None,
        scram_verifier: None,
        auth: match secret {
            Secret::Md5(_) => AuthMethod::Md5,
            Secret::Scram(_) | Secret::Plain { .. } => AuthMethod::ScramSha256,
        },
        server_user: None,
        server_password: None,
        admin: false,
    }
}

/// State shared by every session.
pub struct Shared {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Statement classifier (the catalog task keeps its function catalog current).
    pub classifier: Arc<Classifier>,
    /// Servers and the balancer (the monitor sets the primary and who may take reads).
    pub router: Arc<Router>,
    /// Client cancel keys.
    pub cancels: CancelRegistry,
    /// Routing counters.
    pub stats: RoutingStats,
    /// Server health and lag.
    pub monitor: Arc<Monitor>,
    /// When pgsplit started.
    pub started: Instant,
    paused: watch::Sender<bool>,
    /// SCRAM verifiers per user, derived once at start.
    pub verifiers: HashMap<String, ScramVerifier>,
    /// Random per process: seeds the mock SCRAM salts of unknown users.
    pub mock_secret: [u8; 32],
    /// Users not in the file, looked up with `auth_query` (cached).
    pub auth_query: AuthQuery,
    pools: Mutex<HashMap<(String, String), Arc<PoolSet>>>,
    /// Clients connected now.
    pub clients: AtomicUsize,
    next_client_id: AtomicU64,
}

impl Shared {
    /// Builds the shared state from a validated configuration.
    pub fn new(config: Config) -> Shared {
        let mut verifiers = HashMap::new();
        for u in &config.users {
            if u.auth != AuthMethod::ScramSha256 {
                continue;
            }
            let v = match (&u.scram_verifier, &u.password) {
                (Some(v), _) => ScramVerifier::parse(v).ok(),
                (None, Some(p)) => Some(ScramVerifier::from_password(p)),
                (None, None) => None,
            };
            if let Some(v) = v {
                verifiers.insert(u.name.clone(), v);
            }
        }
        Shared {
            classifier: Arc::new(match config.routing.volatile_functions {
                VolatileFunctions::Catalog => {
                    Classifier::new(&config.write_functions).require_catalog()
                }
                VolatileFunctions::List => Classifier::new(&config.write_functions),
            }),
            router: Arc::new(Router::new(&config)),
            cancels: CancelRegistry::default(),
            stats: RoutingStats::default(),
            monitor: Arc::new(Monitor::new(&config)),
            started: Instant::now(),
            paused: watch::channel(false).0,
            verifiers,
            mock_secret: rand::random(),
            auth_query: AuthQuery::default(),
            pools: Mutex::new(HashMap::new()),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            config: Arc::new(config),
        }
    }

    /// Who `name` is: a listed user (always first), else, with `auth_user` set, the user `auth_query` finds
    /// on the primary (in `database`'s server database, or `auth_database`), else nobody.
    pub async fn resolve_user(&self, name: &str, database: &str) -> Result<Known, LookupError> {
        if let Some(u) = self.config.user(name) {
            return Ok(Known::Listed(Arc::new(u.clone())));
        }
        if self.config.auth_user.is_none() {
            return Ok(Known::Unknown);
        }
        let config = &self.config;
        let index = self.router.primary().unwrap_or(0);
        let server = config.servers().nth(index).unwrap_or(&config.primary);
        let dbname = match (&config.auth_database, config.database(database)) {
            (Some(db), _) => db.as_str(),
            (None, Some(db)) => db.server_database(),
            (None, None) => config
                .databases
                .first()
                .map_or(database, |d| d.server_database()),
        };
        let found = self.auth_query.lookup(config, server, dbname, name).await?;
        let Some(secret) = found.secret else {
            return Ok(Known::Unknown);
        };
        Ok(Known::LookedUp {
            user: Arc::new(looked_up_user(name, &secret)),
            secret,
            at: found.at,
        })
    }

    /// The pools of a (user, database) pair, created on first use. `credential`: what the client's login gave
    /// pgsplit to log in with (SCRAM pass-through, a looked-up hash); it replaces the pools' credential, so
    /// connections opened from now on use the newest.
    pub fn pools(
        &self,
        user: &UserConfig,
        database: &str,
        credential: Option<Credential>,
    ) -> Option<Arc<PoolSet>> {
        let d = self.config.database(database)?;
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let set = pools
            .entry((user.name.clone(), database.to_string()))
            .or_insert_with(|| Arc::new(PoolSet::new(&self.config, user, d)))
            .clone();
        drop(pools);
        if let Some(credential) = credential {
            set.credential.set(credential);
        }
        Some(set)
    }

    /// Every pool set, for stats and reaping.
    pub fn all_pools(&self) -> Vec<((String, String), Arc<PoolSet>)> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Closes the idle connections of every pool to server `index` (the monitor has just marked it down).
    pub fn close_idle_of(&self, index: usize) {
        for (_, set) in self.all_pools() {
            set.of_server(index).for_each(|p| p.close_idle());
        }
    }

    /// Closes every idle connection (shutdown).
    pub fn close_all_idle(&self) {
        for (_, set) in self.all_pools() {
            set.all().for_each(|p| p.close_idle());
        }
    }

    /// Closes idle connections past their idle time or lifetime, or that their server closed.
    pub fn reap_pools(&self) {
        for (_, set) in self.all_pools() {
            set.all().for_each(|p| p.reap());
        }
    }

    /// Whether new units of work are held back (admin `PAUSE`).
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Pauses or resumes new units of work.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Waits until not paused.
    pub async fn wait_resumed(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// A fresh client id.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}
