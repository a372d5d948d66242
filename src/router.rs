//! Which server a routed statement goes to: the primary for writes, a replica chosen round-robin among the
//! usable ones for reads, the primary when none is usable.
//!
//! Whether a replica is usable is a seam for the lag monitor; today a replica is skipped for a short back-off
//! after pgsplit fails to connect to it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, DatabaseConfig, UserConfig};
use crate::pool::{Pool, PoolTimeouts};
use crate::server::ServerTarget;

/// How long a replica that refused a connection is skipped.
const DOWN_BACKOFF: Duration = Duration::from_secs(2);

/// One configured server.
#[derive(Debug)]
pub struct Backend {
    /// Configured name.
    pub name: String,
    /// host:port.
    pub address: String,
    /// Balancer weight.
    pub weight: u32,
    /// Requests in flight on it.
    pub outstanding: AtomicUsize,
    down_until_ms: AtomicU64,
    epoch: Instant,
}

impl Backend {
    fn new(name: String, address: String, weight: u32, epoch: Instant) -> Backend {
        Backend {
            name,
            address,
            weight,
            outstanding: AtomicUsize::new(0),
            down_until_ms: AtomicU64::new(0),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether routing may pick it now.
    pub fn is_usable(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Marks it unusable for a back-off period after a failure.
    pub fn mark_failed(&self) {
        let until = self.now_ms() + DOWN_BACKOFF.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Marks it usable again (a connection succeeded).
    pub fn mark_ok(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// A server a statement is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary.
    Primary,
    /// Replica by index in the configuration.
    Replica(usize),
}

/// The servers pgsplit fronts.
pub struct Router {
    /// The primary.
    pub primary: Arc<Backend>,
    /// The replicas, in configuration order.
    pub replicas: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Router {
    /// Builds the server list from the configuration.
    pub fn new(config: &Config) -> Router {
        let epoch = Instant::now();
        let backend = |s: &crate::config::ServerConfig| {
            Arc::new(Backend::new(s.display_name(), s.address(), s.weight, epoch))
        };
        Router {
            primary: backend(&config.primary),
            replicas: config.replicas.iter().map(backend).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The backend behind a target.
    pub fn backend(&self, target: Target) -> &Arc<Backend> {
        match target {
            Target::Primary => &self.primary,
            Target::Replica(i) => &self.replicas[i],
        }
    }

    /// A replica for a read, round-robin over the usable ones, skipping `exclude`; `None` when none is usable.
    pub fn pick_read(&self, exclude: Option<usize>) -> Option<usize> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| Some(i) != exclude && self.replicas[i].is_usable())
    }
}

/// The pools of one (user, database): one write pool on the primary, one read pool per replica.
pub struct PoolSet {
    /// Write pool (primary).
    pub write: Pool,
    /// Read pools, by replica index.
    pub reads: Vec<Pool>,
}

impl PoolSet {
    /// Creates the pools for a user and database.
    pub fn new(config: &Config, user: &UserConfig, db: &DatabaseConfig) -> PoolSet {
        let t = &config.timeouts;
        let timeouts = PoolTimeouts {
            connect: t.server_connect,
            wait: t.pool_wait,
            idle: t.server_idle,
            lifetime: t.server_lifetime,
        };
        let target = |s: &crate::config::ServerConfig| ServerTarget {
            server: s.display_name(),
            address: s.address(),
            user: user.server_user().to_string(),
            password: user.server_password().map(str::to_string),
            database: db.server_database().to_string(),
        };
        PoolSet {
            write: Pool::new(
                target(&config.primary),
                config.pools.write_pool_size,
                timeouts,
            ),
            reads: config
                .replicas
                .iter()
                .map(|r| Pool::new(target(r), config.pools.read_pool_size, timeouts))
                .collect(),
        }
    }

    /// The pool behind a target.
    pub fn pool(&self, target: Target) -> &Pool {
        match target {
            Target::Primary => &self.write,
            Target::Replica(i) => &self.reads[i],
        }
    }

    /// Every pool, write pool first.
    pub fn all(&self) -> impl Iterator<Item = &Pool> {
        std::iter::once(&self.write).chain(self.reads.iter())
    }
}
