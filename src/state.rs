//! The state every session shares: the configuration in force, the classifier, the router and its monitor, the
//! pools, the cancel keys and the counters. It knows nothing of the listener, the admin endpoint or the client loop;
//! they hold it (`Arc<Shared>`), and the background tasks (monitor, catalog) take only the pieces they read.
//!
//! The configuration is swappable (reload, `reload.rs`): [`Shared::config`] is read at use time, and
//! [`Shared::apply`] is the one place where what is derived from it is rebuilt.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};

use crate::auth::ScramVerifier;
use crate::auth_query::{AuthQuery, LookupError, Secret};
use crate::cancel::CancelRegistry;
use crate::classify::Classifier;
use crate::config::{
    AuthMethod, Config, ConfigDiff, LiveConfig, Source, UserConfig, VolatileFunctions,
};
use crate::monitor::Monitor;
use crate::router::{PoolSet, Router};
use crate::server::Credential;
use crate::stats::RoutingStats;
use crate::tls::ClientTls;

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

/// What the reloads so far did (`reload.rs` records them; `SHOW CONFIG`, `/status` and the metrics show them).
#[derive(Debug, Clone, Default)]
pub struct ReloadLog {
    /// Reloads put in force.
    pub ok: u64,
    /// Reloads refused.
    pub refused: u64,
    /// When the last reload was put in force.
    pub last_ok: Option<std::time::SystemTime>,
    /// When the last reload was refused, and why (the loader's file:line:field message; never a secret).
    pub last_refused: Option<(std::time::SystemTime, String)>,
}

/// State shared by every session.
pub struct Shared {
    live: LiveConfig,
    /// The file the configuration was read from (`None`: built in code or from command-line flags; `RELOAD` then
    /// has nothing to read).
    pub config_path: Option<PathBuf>,
    /// Where the configuration came from (`None`: built in code): what `RELOAD` re-reads and merges again.
    pub source: Option<Source>,
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
    verifiers: ArcSwap<HashMap<String, ScramVerifier>>,
    /// Random per process: seeds the mock SCRAM salts of unknown users.
    pub mock_secret: [u8; 32],
    /// Users not in the file, looked up with `auth_query` (cached).
    pub auth_query: AuthQuery,
    pools: Mutex<HashMap<(String, String), Arc<PoolSet>>>,
    /// Pool sets whose user or database a reload removed, while sessions still hold them.
    orphans: Mutex<Vec<Weak<PoolSet>>>,
    /// Client slots (`max_client_connections`): a session holds one while it lives.
    pub(crate) client_slots: Arc<Semaphore>,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// pgsplit's TLS towards clients (`None`: `tls.client_mode = "disable"`, or the files could not be used).
    /// Swapped whole on reload ([`ClientTls::from_config`]); a handshake takes the one in force when it starts.
    pub client_tls: arc_swap::ArcSwapOption<ClientTls>,
    next_client_id: AtomicU64,
    /// Reloads so far: when, how many, the last refused one. Its lock also serializes reloads.
    pub(crate) reloads: Mutex<ReloadLog>,
}

impl Shared {
    /// Builds the shared state from a validated configuration.
    pub fn new(config: Config) -> Shared {
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
            verifiers: ArcSwap::from_pointee(verifiers(&config, &config, &HashMap::new())),
            mock_secret: rand::random(),
            auth_query: AuthQuery::default(),
            pools: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
            client_slots: Arc::new(Semaphore::new(config.max_client_connections)),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            reloads: Mutex::new(ReloadLog::default()),
            config_path: None,
            source: None,
            live: Arc::new(ArcSwap::from_pointee(config)),
        }
    }

    /// Who `name` is: a listed user (always first), else, with `auth_user` set, the user `auth_query` finds
    /// on the primary (in `database`'s server database, or `auth_database`), else nobody.
    pub async fn resolve_user(&self, name: &str, database: &str) -> Result<Known, LookupError> {
        let config = self.config();
        if let Some(u) = config.user(name) {
            return Ok(Known::Listed(Arc::new(u.clone())));
        }
        if config.auth_user.is_none() {
            return Ok(Known::Unknown);
        }
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
        let found = self
            .auth_query
            .lookup(&config, server, dbname, name)
            .await?;
        let Some(secret) = found.secret else {
            return Ok(Known::Unknown);
        };
        Ok(Known::LookedUp {
            user: Arc::new(looked_up_user(name, &secret)),
            secret,
            at: found.at,
        })
    }

    /// Like [`Shared::new`], remembering the file it came from (for `RELOAD` and SIGHUP).
    pub fn from_file(config: Config, path: PathBuf) -> Shared {
        Shared::from_source(config, Source::file(path))
    }

    /// Like [`Shared::new`], remembering the sources it was merged from (a file, flags, the environment): `RELOAD`
    /// and SIGHUP merge them again when there is a file, and are refused when there is none.
    pub fn from_source(config: Config, source: Source) -> Shared {
        Shared {
            config_path: source.file.clone(),
            source: Some(source),
            ..Shared::new(config)
        }
    }

    /// The configuration in force now (one atomic load; read it at use time, do not keep it across units).
    pub fn config(&self) -> Arc<Config> {
        self.live.load_full()
    }

    /// The configuration in force, for the data path: like [`Shared::config`] without touching a reference count
    /// shared by every session (read a setting and drop it; do not hold it across an await).
    pub fn config_now(&self) -> arc_swap::Guard<Arc<Config>> {
        self.live.load()
    }

    /// The swappable configuration, for the background tasks that read it each tick.
    pub fn live_config(&self) -> LiveConfig {
        self.live.clone()
    }

    /// The SCRAM verifier of a configured user (rebuilt on reload).
    pub fn verifier(&self, user: &str) -> Option<ScramVerifier> {
        self.verifiers.load().get(user).cloned()
    }

    /// Puts `new` in force and rebuilds everything derived from the configuration, without dropping clients.
    /// `diff` is [`crate::config::diff`] of the configuration in force and `new`; the caller (`reload`) has
    /// checked that it can be applied and serializes calls. **Every piece of state derived from the
    /// configuration is rebuilt here, one step each.**
    pub fn apply(&self, new: Arc<Config>, diff: &ConfigDiff, client_tls: Option<Arc<ClientTls>>) {
        // 1. The configuration itself: sessions and background tasks read it from here on.
        let old = self.live.swap(new.clone());
        // The servers' TLS client configurations are rebuilt from their CA files as they are next needed.
        crate::tls::clear_cache();
        // 2. Classification: `write_functions`, `volatile_functions` (the decision cache is dropped if they changed).
        let mode = new.routing.volatile_functions;
        if old.write_functions != new.write_functions || old.routing.volatile_functions != mode {
            let catalog = mode == VolatileFunctions::Catalog;
            self.classifier.configure(&new.write_functions, catalog);
        }
        // 3. Logins: SCRAM verifiers (a removed user's sessions go on; new logins are refused).
        self.verifiers
            .store(Arc::new(verifiers(&new, &old, &self.verifiers.load())));
        // 4. Routing settings and servers: retire removed ones, add new ones, reweight.
        self.router.set_routing(&new.routing);
        self.apply_servers(&new, diff);
        // 5. Lag settings.
        self.monitor.set_lag(&new.lag);
        // 6. Pools: sizes, timeouts, server passwords, added and retired servers.
        self.apply_pools(&new);
        // 7. Client slots.
        let (was, now) = (old.max_client_connections, new.max_client_connections);
        crate::pool::resize_semaphore(&self.client_slots, was, now);
        // 8. TLS towards clients: the certificate and settings (built by the caller: reading them can fail).
        //    Handshakes under way finish with what they started with. (The servers' CA files are read again
        //    by the pools' new targets, step 6, and by side connections, which follow `new`.)
        self.client_tls.store(client_tls);
        // 9. auth_query: looked-up verifiers are forgotten when how they are looked up changed.
        if (&old.auth_user, &old.auth_query, &old.auth_database)
            != (&new.auth_user, &new.auth_query, &new.auth_database)
        {
            self.auth_query.forget();
        }
    }

    fn apply_servers(&self, new: &Config, diff: &ConfigDiff) {
        for name in &diff.removed {
            if let Some(b) = self.router.servers.by_name(name) {
                tracing::info!(server = %b.name, address = %b.address, "server removed: draining (no new units)");
                self.router.retire(b.index);
                self.monitor.retire(b.index);
            }
        }
        for s in &diff.added {
            let b = self.router.add_server(s);
            tracing::info!(server = %b.name, address = %b.address, "server added: takes reads after its first good probe");
            self.monitor.add_server(&b);
        }
        for s in new.servers() {
            if let Some(b) = self.router.servers.by_name(&s.display_name()) {
                b.set_weight(s.weight);
            }
        }
    }

    fn apply_pools(&self, new: &Config) {
        let servers = self.router.servers.snapshot();
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|(user, db), set| match (new.user(user), new.database(db)) {
            (Some(u), Some(d)) => {
                set.apply(new, u, d, &servers);
                true
            }
            // A user auth_query found (not in the file): still found while auth_query is on.
            (None, Some(_)) if new.auth_user.is_some() && set.looked_up() => {
                set.keep_up(new, &servers);
                true
            }
            // Its sessions go on with the pools they hold; new logins are refused.
            _ => {
                orphans.push(Arc::downgrade(set));
                false
            }
        });
        orphans.retain(|set| match set.upgrade() {
            Some(set) => {
                set.keep_up(new, &servers);
                true
            }
            None => false,
        });
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
        // The configuration is read under the lock a reload takes to update the pools: never a stale set.
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.config();
        let d = config.database(database)?;
        let set = pools
            .entry((user.name.clone(), database.to_string()))
            .or_insert_with(|| {
                Arc::new(PoolSet::new(
                    &config,
                    user,
                    d,
                    &self.router.servers.snapshot(),
                ))
            })
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
            set.of_server(index).iter().for_each(|p| p.close_idle());
        }
    }

    /// Closes every idle connection (shutdown).
    pub fn close_all_idle(&self) {
        for (_, set) in self.all_pools() {
            set.all().iter().for_each(|p| p.close_idle());
        }
    }

    /// Closes idle connections past their idle time or lifetime, or that their server closed.
    pub fn reap_pools(&self) {
        for (_, set) in self.all_pools() {
            set.all().iter().for_each(|p| p.reap());
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

/// The SCRAM verifier of every user of `config` that logs in with SCRAM and has a password or a verifier; one
/// whose entry is the same in `old` keeps its verifier from `kept` (no new salt, no key derivation).
fn verifiers(
    config: &Config,
    old: &Config,
    kept: &HashMap<String, ScramVerifier>,
) -> HashMap<String, ScramVerifier> {
    let mut verifiers = HashMap::new();
    for u in &config.users {
        if u.auth != AuthMethod::ScramSha256 {
            continue;
        }
        let same = old.user(&u.name) == Some(u);
        if let Some(v) = kept.get(&u.name).filter(|_| same) {
            verifiers.insert(u.name.clone(), v.clone());
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
    verifiers
}
