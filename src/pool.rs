//! Pools of server connections, one per (server, user, database).
//!
//! A semaphore caps the connections (checked out + idle ≤ size) and queues waiters fairly; idle connections sit on
//! a stack. A connection is only handed out after a liveness check, and only taken back when it is idle, holds
//! no unread bytes and is not marked broken; anything else is closed, which makes Postgres roll back.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::protocol::backend;
use crate::server::{ServerConn, ServerTarget};

/// Longest a session reset may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeouts a pool applies.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    /// TCP connect + login.
    pub connect: Duration,
    /// Waiting for a free slot.
    pub wait: Duration,
    /// Close idle connections unused this long (zero: never).
    pub idle: Duration,
    /// Close connections older than this at check-in (zero: never).
    pub lifetime: Duration,
}

/// A point-in-time view of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections checked out.
    pub active: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Maximum size.
    pub size: usize,
}

struct PoolInner {
    target: ServerTarget,
    size: usize,
    timeouts: PoolTimeouts,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
    active: AtomicUsize,
    waiting: AtomicUsize,
}

/// A pool of connections to one server as one user to one database.
#[derive(Clone)]
pub struct Pool(Arc<PoolInner>);

impl Pool {
    /// Creates an empty pool; connections open on demand.
    pub fn new(target: ServerTarget, size: usize, timeouts: PoolTimeouts) -> Pool {
        let size = size.max(1);
        Pool(Arc::new(PoolInner {
            target,
            size,
            timeouts,
            slots: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::with_capacity(size)),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }))
    }

    /// Takes a connection: an idle one that passes its checks, or a new one. Waits at most the pool-wait
    /// timeout for a free slot.
    pub async fn checkout(&self) -> Result<PooledConn> {
        let inner = &self.0;
        let permit = match inner.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                inner.waiting.fetch_add(1, Ordering::Relaxed);
                let waited =
                    tokio::time::timeout(inner.timeouts.wait, inner.slots.clone().acquire_owned())
                        .await;
                inner.waiting.fetch_sub(1, Ordering::Relaxed);
                match waited {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(Error::PoolTimeout {
                            server: inner.target.server.clone(),
                            waited_ms: inner.timeouts.wait.as_millis(),
                            size: inner.size,
                        })
                    }
                }
            }
        };
        self.with_permit(permit).await
    }

    /// Like [`Pool::checkout`], but only if a slot is free right now (`None` otherwise).
    pub async fn try_checkout(&self) -> Option<Result<PooledConn>> {
        let permit = self.0.slots.clone().try_acquire_owned().ok()?;
        Some(self.with_permit(permit).await)
    }

    async fn with_permit(&self, permit: OwnedSemaphorePermit) -> Result<PooledConn> {
        let inner = &self.0;
        let now = Instant::now();
        loop {
            let candidate = lock(&inner.idle).pop();
            let Some(mut conn) = candidate else { break };
            if self.expired(&conn, now) || !conn.is_reusable() {
                continue; // dropped: the socket closes
            }
            inner.active.fetch_add(1, Ordering::Relaxed);
            return Ok(PooledConn {
                conn: Some(conn),
                pool: self.clone(),
                _permit: permit,
            });
        }
        // Boxed: a login's state is large and would otherwise be part of every client's task.
        let conn = Box::pin(ServerConn::connect(&inner.target, inner.timeouts.connect)).await?;
        inner.active.fetch_add(1, Ordering::Relaxed);
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        let t = &self.0.timeouts;
        (!t.lifetime.is_zero() && now.duration_since(conn.created) >= t.lifetime)
            || (!t.idle.is_zero() && now.duration_since(conn.last_used) >= t.idle)
    }

    /// Closes idle connections past their idle time or lifetime, or that the server closed.
    pub fn reap(&self) {
        let now = Instant::now();
        let mut idle = lock(&self.0.idle);
        idle.retain_mut(|c| !self.expired(c, now) && c.is_reusable());
    }

    /// Closes every idle connection (used at shutdown and when a server is marked down).
    pub fn close_idle(&self) {
        lock(&self.0.idle).clear();
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            active: self.0.active.load(Ordering::Relaxed),
            idle: lock(&self.0.idle).len(),
            waiting: self.0.waiting.load(Ordering::Relaxed),
            size: self.0.size,
        }
    }

    fn checkin(&self, mut conn: ServerConn) {
        let now = Instant::now();
        if conn.broken
            || conn.needs_reset
            || conn.status != backend::IDLE
            || !conn.rbuf.is_empty()
            || self.expired(&conn, now)
        {
            return;
        }
        conn.last_used = now;
        lock(&self.0.idle).push(conn);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A checked-out connection. [`PooledConn::release`] returns it; dropping it closes it.
pub struct PooledConn {
    conn: Option<ServerConn>,
    pool: Pool,
    _permit: OwnedSemaphorePermit,
}

impl PooledConn {
    /// Returns the connection to its pool if it is clean; closes it otherwise. One that may carry session state
    /// (`needs_reset`) is reset first, in the background: it holds its pool slot until the reset is done, and is
    /// closed if the reset fails or takes longer than [`RESET_TIMEOUT`].
    pub fn release(mut self) {
        let needs_reset = self.conn.as_ref().is_some_and(|c| {
            c.needs_reset && !c.broken && c.status == backend::IDLE && c.rbuf.is_empty()
        });
        if needs_reset {
            tokio::spawn(async move {
                let reset = match self.conn.as_mut() {
                    Some(conn) => tokio::time::timeout(RESET_TIMEOUT, conn.reset_session()).await,
                    None => return,
                };
                match reset {
                    Ok(Ok(())) => self.release(),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "closing a server connection whose session reset failed")
                    }
                    Err(_) => {
                        tracing::warn!("closing a server connection whose session reset timed out")
                    }
                }
            });
            return;
        }
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.pool.0.active.fetch_sub(1, Ordering::Relaxed);
        // A connection not released explicitly is closed with the socket: Postgres rolls back whatever it held.
    }
}

impl Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        // Present from checkout until release/drop, which consume self.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled connection used after release"))
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("pooled connection used after release"))
    }
}
