//! The state every session shares: the configuration, the classifier, the router and its monitor, the pools,
//! the cancel keys and the counters. It knows nothing of the listener, the admin endpoint or the client loop;
//! they hold it (`Arc<Shared>`), and the background tasks (monitor, catalog) take only the pieces they read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::auth::ScramVerifier;
use crate::cancel::CancelRegistry;
use crate::classify::Classifier;
use crate::config::{AuthMethod, Config, VolatileFunctions};
use crate::monitor::Monitor;
use crate::router::{PoolSet, Router};
use crate::stats::RoutingStats;
use crate::tls::ClientTls;

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
    pools: Mutex<HashMap<(String, String), Arc<PoolSet>>>,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// pgsplit's TLS towards clients (`None`: `tls.client_mode = "disable"`, or the files could not be used).
    /// Swapped whole on reload ([`ClientTls::from_config`]); a handshake takes the one in force when it starts.
    pub client_tls: arc_swap::ArcSwapOption<ClientTls>,
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
        let client_tls = ClientTls::from_config(&config.tls).unwrap_or_else(|e| {
            // Checked at load: only a file changed since gets here. TLS is then not offered (fail closed:
            // `require` still refuses plain text).
            tracing::error!(error = %e, "TLS towards clients is not available");
            None
        });
        Shared {
            client_tls: arc_swap::ArcSwapOption::new(client_tls),
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
            pools: Mutex::new(HashMap::new()),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            config: Arc::new(config),
        }
    }

    /// The pools of a (user, database) pair, created on first use.
    pub fn pools(&self, user: &str, database: &str) -> Option<Arc<PoolSet>> {
        let u = self.config.user(user)?;
        let d = self.config.database(database)?;
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let set = pools
            .entry((user.to_string(), database.to_string()))
            .or_insert_with(|| Arc::new(PoolSet::new(&self.config, u, d)));
        Some(set.clone())
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
