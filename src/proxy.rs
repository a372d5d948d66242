//! The listener: accepts clients up to the configured limit, runs one session task per client, and shuts down
//! gracefully (stop accepting, let running transactions finish up to a timeout, close).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::Opened;
use crate::config::Config;

/// The shared state, re-exported where tests and benches have always found it (`pgsplit::proxy::Shared`).
pub use crate::state::Shared;

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
    /// Binds the listeners for a configuration read from `path` (`RELOAD` and SIGHUP re-read it).
    pub async fn bind_file(config: Config, path: std::path::PathBuf) -> std::io::Result<Proxy> {
        Proxy::bind_shared(Shared::from_file(config, path)).await
    }

    /// Binds the listeners for a configuration merged from `source` (`RELOAD` and SIGHUP merge it again when it has
    /// a file, and are refused when it has none).
    pub async fn bind_source(
        config: Config,
        source: crate::config::Source,
    ) -> std::io::Result<Proxy> {
        Proxy::bind_shared(Shared::from_source(config, source)).await
    }

    /// The shared state (for the SIGHUP handler).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Binds the client listener.
    pub async fn bind(config: Config) -> std::io::Result<Proxy> {
        Proxy::bind_shared(Shared::new(config)).await
    }

    async fn bind_shared(shared: Shared) -> std::io::Result<Proxy> {
        let config = shared.config();
        let listener = TcpListener::bind(config.listen).await?;
        let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin endpoint {}: {e}", config.admin_listen),
            )
        })?;
        Ok(Proxy {
            shared: Arc::new(shared),
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
        let background = Background::start(&shared, admin).await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = shared.client_slots.clone();
        // Connections still logging in have their own cap: silent or slow sockets cannot take client slots.
        let logins = Arc::new(Semaphore::new(
            shared.config().limits.max_logins_in_progress,
        ));
        let mut sessions = JoinSet::new();
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
                serve_client(&shared, socket, peer, stop, login, slots).await;
                shared.clients.fetch_sub(1, Ordering::Relaxed);
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        drain(&shared, sessions).await;
        background.stop();
        shared.close_all_idle();
    }
}

/// The tasks that run beside the listener: the admin endpoint, the pool reaper, the catalog reader and the
/// monitor.
struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts them, and waits (bounded) for a first catalog read and a first probe of every server before
    /// clients are taken.
    async fn start(shared: &Arc<Shared>, admin: TcpListener) -> Background {
        let admin = tokio::spawn(crate::admin::serve(shared.clone(), admin));
        let reaper = tokio::spawn(reap_pools(shared.clone()));
        // Read the primary's function catalog before taking clients (bounded by the connect timeout); until it
        // is read, function calls route to the primary.
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let catalog = tokio::spawn(crate::catalog::maintain(
            shared.live_config(),
            shared.router.clone(),
            shared.classifier.clone(),
            loaded_tx,
        ));
        let config = shared.config();
        let _ = tokio::time::timeout(config.timeouts.server_connect, loaded_rx).await;
        // Probe every server once before taking clients (until then no replica takes reads). A server marked
        // down loses its idle pooled connections.
        let on_down = {
            let shared = shared.clone();
            move |index| shared.close_idle_of(index)
        };
        let monitor = tokio::spawn(crate::monitor::run(
            shared.live_config(),
            shared.monitor.clone(),
            shared.router.clone(),
            on_down,
        ));
        let deadline = tokio::time::Instant::now() + config.lag.probe_timeout * 2;
        while !shared.monitor.all_probed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let checkers = tokio::spawn(crate::freshness::run_checkers(
            shared.live_config(),
            shared.router.clone(),
        ));
        Background {
            tasks: vec![reaper, catalog, monitor, checkers, admin],
        }
    }

    fn stop(self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// Lets running sessions finish up to `timeouts.shutdown`, then closes the rest.
async fn drain(shared: &Shared, mut sessions: JoinSet<()>) {
    let grace = shared.config().timeouts.shutdown;
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
}

/// One client connection: what its login opened runs here, a session or the admin console.
async fn serve_client(
    shared: &Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    login: tokio::sync::OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) {
    match crate::client::serve(shared.clone(), socket, peer, stop, login, slots).await {
        Opened::Session(session) => session.run().await,
        Opened::Console(request) => {
            let (socket, buf, _slot) = request.into_parts();
            Box::pin(crate::admin::console::serve(shared.clone(), socket, buf)).await;
        }
        Opened::Nothing => {}
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
        shared.reap_pools();
    }
}
