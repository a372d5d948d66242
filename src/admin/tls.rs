//! The admin endpoint over TLS (`tls.client_mode` not `disable`): pgsplit's certificate, ALPN `http/1.1`.
//! Handshakes run in their own tasks (bounded by a timeout), so a slow client does not hold up the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::state::Shared;
use crate::tls::Transport;

/// Longest TLS handshake the admin endpoint waits for.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted, handshaken admin connections, for `axum::serve`.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Transport, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `listener` and runs each handshake with the client TLS settings in force at that moment
    /// (`shared.client_tls`, swapped on reload).
    pub fn new(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Fail closed: TLS turned off since the endpoint started (it then needs a restart).
                let Some(tls) = shared.client_tls.load_full() else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut socket = Transport::plain(tcp);
                    let shaken =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept_admin(&mut socket))
                            .await;
                    match shaken {
                        Ok(Ok(())) => {
                            let _ = tx.send((socket, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Transport;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Transport, SocketAddr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor ended (it never does while the listener lives): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
