//! The listener: accepts clients up to the configured limit, runs one session task per client, and shuts down
//! gracefully (stop accepting, let running transactions finish up to a timeout, close).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::auth::ScramVerifier;
use crate::cancel::CancelRegistry;
use crate::classify::Classifier;
use crate::config::{AuthMethod, Config, VolatileFunctions};
use crate::router::{PoolSet, Router};

/// State shared by every session.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// Statement classifier.
    pub classifier: Classifier,
    /// Servers and the balancer.
    pub router: Router,
    /// Client cancel keys.
    pub cancels: CancelRegistry,
    /// Routing counters.
    pub stats: crate::stats::RoutingStats,
    /// Server health and lag.
    pub monitor: crate::monitor::Monitor,
    /// When pgsplit started.
    pub started: std::time::Instant,
    paused: tokio::sync::watch::Sender<bool>,
    /// SCRAM verifiers per user, derived once at start.
    pub verifiers: HashMap<String, ScramVerifier>,
    /// Random per process: seeds the mock SCRAM salts of unknown users.
    pub mock_secret: [u8; 32],
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
            classifier: match config.routing.volatile_functions {
                VolatileFunctions::Catalog => {
                    Classifier::new(&config.write_functions).require_catalog()
                }
                VolatileFunctions::List => Classifier::new(&config.write_functions),
            },
            router: Router::new(&config),
            cancels: CancelRegistry::default(),
            stats: crate::stats::RoutingStats::default(),
            monitor: crate::monitor::Monitor::new(&config),
            started: std::time::Instant::now(),
            paused: tokio::sync::watch::channel(false).0,
            verifiers,
            mock_secret: rand::random(),
            pools: Mutex::new(HashMap::new()),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            config,
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

/// A bound, not yet running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: TcpListener,
}

/// A proxy running in the background (tests, `demo`).
pub struct ProxyHandle {
    /// The address clients connect to.
    pub addr: SocketAddr,
    /// The admin endpoint's address.
    pub admin_addr: SocketAddr,
    /// The shared state (for inspection).
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyHandle {
    /// Starts graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Proxy {
    /// Binds the client listener.
    pub async fn bind(config: Config) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(config.listen).await?;
        let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin endpoint {}: {e}", config.admin_listen),
            )
        })?;
        Ok(Proxy {
            shared: Arc::new(Shared::new(config)),
            listener,
            admin,
        })
    }

    /// The bound admin endpoint address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Runs in the background until [`ProxyHandle::shutdown`].
    pub fn spawn(self) -> std::io::Result<ProxyHandle> {
        let addr = self.local_addr()?;
        let admin_addr = self.admin_addr()?;
        let shared = self.shared.clone();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            self.run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        });
        Ok(ProxyHandle {
            addr,
            admin_addr,
            shared,
            stop,
            task,
        })
    }

    /// Accepts clients until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Proxy {
            shared,
            listener,
            admin,
        } = self;
        let admin = tokio::spawn(crate::admin::serve(shared.clone(), admin));
        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(shared.config.max_client_connections));
        // Connections still logging in have their own cap: silent or slow sockets cannot take client slots.
        let logins = Arc::new(Semaphore::new(shared.config.limits.max_logins_in_progress));
        let mut sessions = JoinSet::new();
        let reaper = tokio::spawn(reap_pools(shared.clone()));
        // Read the primary's function catalog before taking clients (bounded by the connect timeout); until it
        // is read, function calls route to the primary.
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let catalog = tokio::spawn(crate::catalog::maintain(shared.clone(), loaded_tx));
        let _ = tokio::time::timeout(shared.config.timeouts.server_connect, loaded_rx).await;
        // Probe every server once before taking clients (until then no replica takes reads).
        let monitor = tokio::spawn(crate::monitor::run(shared.clone()));
        let deadline = tokio::time::Instant::now() + shared.config.lag.probe_timeout * 2;
        while !shared.monitor.all_probed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::pin!(shutdown);
        loop {
            while sessions.try_join_next().is_some() {}
            let (socket, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(login) = logins.clone().try_acquire_owned() else {
                turn_away(socket);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let shared = shared.clone();
            let stop = stop_rx.clone();
            let slots = slots.clone();
            sessions.spawn(async move {
                shared.clients.fetch_add(1, Ordering::Relaxed);
                crate::client::serve(shared.clone(), socket, peer, stop, login, slots).await;
                shared.clients.fetch_sub(1, Ordering::Relaxed);
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let grace = shared.config.timeouts.shutdown;
        tracing::info!(
            clients = sessions.len(),
            grace_ms = grace.as_millis() as u64,
            "shutting down"
        );
        let drained = tokio::time::timeout(grace, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                clients = sessions.len(),
                "shutdown timeout: closing the remaining clients"
            );
            sessions.shutdown().await;
        }
        reaper.abort();
        catalog.abort();
        monitor.abort();
        admin.abort();
        for (_, set) in shared.all_pools() {
            set.all().for_each(|p| p.close_idle());
        }
    }
}

/// Over `limits.max_logins_in_progress`: FATAL 53300 if the socket takes it at once, then closed; no task and
/// no wait for a startup packet.
fn turn_away(socket: TcpStream) {
    tracing::debug!(
        peer = ?socket.peer_addr().ok(),
        "too many connections logging in: turned away"
    );
    let error = crate::protocol::messages::error_bytes(
        crate::protocol::messages::Severity::Fatal,
        crate::protocol::sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many connections are logging in (limits.max_logins_in_progress)",
    );
    let _ = socket.try_write(&error);
}

async fn reap_pools(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for (_, set) in shared.all_pools() {
            set.all().for_each(|p| p.reap());
        }
    }
}
