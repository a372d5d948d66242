//! Pools of server connections, one per (server, user, database).
//!
//! A semaphore caps the connections (checked out + idle ≤ size) and queues waiters fairly; idle connections sit on
//! a stack. A connection is only handed out after a liveness check, and only taken back when it is idle, holds
//! no unread bytes and is not marked broken; anything else is closed, which makes Postgres roll back.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
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

/// What a pool connects with: swapped whole on reload (a changed password is used by new connections).
struct PoolSettings {
    target: ServerTarget,
    timeouts: PoolTimeouts,
}

struct PoolInner {
    settings: ArcSwap<PoolSettings>,
    size: AtomicUsize,
    /// Its server was removed from the configuration: connections close as they come back.
    retired: AtomicBool,
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
            settings: ArcSwap::from_pointee(PoolSettings { target, timeouts }),
            size: AtomicUsize::new(size),
            retired: AtomicBool::new(false),
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
                let wait = inner.settings.load().timeouts.wait;
                inner.waiting.fetch_add(1, Ordering::Relaxed);
                let waited = tokio::time::timeout(wait, inner.slots.clone().acquire_owned()).await;
                inner.waiting.fetch_sub(1, Ordering::Relaxed);
                match waited {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(Error::PoolTimeout {
                            server: inner.settings.load().target.server.clone(),
                            waited_ms: wait.as_millis(),
                            size: inner.size.load(Ordering::Relaxed),
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
        let settings = inner.settings.load_full();
        let conn = Box::pin(ServerConn::connect(
            &settings.target,
            settings.timeouts.connect,
        ))
        .await?;
        inner.active.fetch_add(1, Ordering::Relaxed);
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        let t = self.0.settings.load().timeouts;
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
            size: self.0.size.load(Ordering::Relaxed),
        }
    }

    /// Uses `target` and `timeouts` from now on: new connections log in with them; open ones stay as they are.
    pub fn update(&self, target: ServerTarget, timeouts: PoolTimeouts) {
        self.0
            .settings
            .store(Arc::new(PoolSettings { target, timeouts }));
    }

    /// Changes the size live: growing adds free slots at once; shrinking closes idle connections over the new
    /// size and takes the other slots away as the connections holding them come back.
    pub fn resize(&self, size: usize) {
        let size = size.max(1);
        let old = self.0.size.swap(size, Ordering::Relaxed);
        resize_semaphore(&self.0.slots, old, size);
        if size < old {
            let keep = size.saturating_sub(self.0.active.load(Ordering::Relaxed));
            lock(&self.0.idle).truncate(keep);
        }
    }

    /// Its server left the configuration: idle connections close now, busy ones when they come back.
    pub fn retire(&self) {
        self.0.retired.store(true, Ordering::Relaxed);
        self.close_idle();
    }

    fn checkin(&self, mut conn: ServerConn) {
        let now = Instant::now();
        if conn.broken
            || self.0.retired.load(Ordering::Relaxed)
            || conn.needs_reset
            || conn.status != backend::IDLE
            || !conn.rbuf.is_empty()
            || self.expired(&conn, now)
        {
            return;
        }
        conn.last_used = now;
        let mut idle = lock(&self.0.idle);
        // Open connections (idle, and checked out counting this one) over the size: it shrank while they were
        // out, and this one is closed.
        let open = idle.len() + self.0.active.load(Ordering::Relaxed);
        if open <= self.0.size.load(Ordering::Relaxed) {
            idle.push(conn);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes a semaphore of `old` permits to `new`: growing adds permits at once; shrinking forgets the free ones now
/// and, for the rest, queues one waiter (the semaphore is fair: nobody gets a slot past it) that forgets the
/// permits as their holders return them. A grow meanwhile pays that waiter first. Needs a tokio runtime.
pub fn resize_semaphore(slots: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        slots.add_permits(new - old);
        return;
    }
    let remove = old - new;
    let owed = remove - slots.forget_permits(remove);
    let Ok(owed) = u32::try_from(owed) else {
        return;
    };
    if owed == 0 {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            owed,
            "no runtime to shrink a semaphore on: the old size stays"
        );
        slots.add_permits(remove - owed as usize);
        return;
    };
    let slots = slots.clone();
    runtime.spawn(async move {
        if let Ok(p) = slots.acquire_many_owned(owed).await {
            p.forget();
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: usize) -> Pool {
        let target = ServerTarget {
            server: "s".into(),
            address: "127.0.0.1:1".into(),
            user: "u".into(),
            credential: Default::default(),
            database: "d".into(),
            tls: Arc::new(crate::tls::ServerTls::disabled()),
        };
        let t = Duration::from_secs(1);
        let timeouts = PoolTimeouts {
            connect: t,
            wait: t,
            idle: t,
            lifetime: t,
        };
        Pool::new(target, size, timeouts)
    }

    #[tokio::test]
    async fn growing_adds_free_slots_at_once() {
        let p = pool(2);
        p.resize(5);
        assert_eq!(p.stats().size, 5);
        assert_eq!(p.0.slots.available_permits(), 5);
    }

    #[tokio::test]
    async fn shrinking_takes_free_slots_now_and_busy_ones_as_they_return() {
        let sem = Arc::new(Semaphore::new(4));
        let busy: Vec<_> = (0..3)
            .map(|_| sem.clone().try_acquire_owned().expect("free"))
            .collect();
        // 4 → 1: the one free slot goes now; two more must go as the busy ones come back.
        resize_semaphore(&sem, 4, 1);
        assert_eq!(sem.available_permits(), 0);
        drop(busy);
        tokio::task::yield_now().await;
        for _ in 0..10 {
            if sem.available_permits() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            sem.available_permits(),
            1,
            "the new size, once all came back"
        );
        assert!(sem.clone().try_acquire_many_owned(2).is_err());
    }

    #[tokio::test]
    async fn a_grow_after_a_pending_shrink_pays_it_first() {
        let sem = Arc::new(Semaphore::new(2));
        let busy: Vec<_> = (0..2)
            .map(|_| sem.clone().try_acquire_owned().expect("free"))
            .collect();
        resize_semaphore(&sem, 2, 1);
        tokio::task::yield_now().await;
        resize_semaphore(&sem, 1, 3);
        drop(busy);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(sem.available_permits(), 3);
    }

    #[tokio::test]
    async fn a_retired_or_shrunk_pool_reports_its_size() {
        let p = pool(4);
        p.resize(1);
        assert_eq!(p.stats().size, 1);
        p.retire();
        assert_eq!(p.stats().idle, 0);
        p.resize(0);
        assert_eq!(p.stats().size, 1, "never below one slot");
    }
}
