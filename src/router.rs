//! Which server a routed unit goes to: the primary for writes; for reads, a replica chosen by the configured
//! balancer among the eligible ones, the primary when none is (or when it is part of the read set), or an error.
//!
//! Which server is the primary, and which replicas are eligible for reads, is the monitor's to set (it probes
//! every server); on top of that a replica that refused a connection is skipped for a short back-off.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{
    Balancer, Config, DatabaseConfig, Fallback, PrimaryReads, ServerConfig, UserConfig,
};
use crate::pool::{Pool, PoolTimeouts};
use crate::server::ServerTarget;
use crate::stats::PrimaryRead;

/// How long a replica that refused a connection is skipped.
const DOWN_BACKOFF: Duration = Duration::from_secs(2);

/// One configured server. Its read eligibility is the monitor's to set.
#[derive(Debug)]
pub struct Backend {
    /// Position in the configuration (0: the configured primary, then the replicas).
    pub index: usize,
    /// Configured name.
    pub name: String,
    /// host:port.
    pub address: String,
    /// Balancer weight.
    pub weight: u32,
    /// Units in flight on it (server connections held by clients).
    pub outstanding: AtomicUsize,
    eligible: AtomicBool,
    down_until_ms: AtomicU64,
    epoch: Instant,
    /// The highest WAL position it is known to have replayed (a replica) or written (the primary): from the
    /// monitor's probes and on-demand checks (`freshness`).
    position: AtomicU64,
    /// In which role that position was read: 0 not yet, 1 primary, 2 replica. A change of role starts afresh.
    position_role: std::sync::atomic::AtomicU8,
    /// When the query that read the newest position was sent (µs since `epoch`).
    position_us: AtomicU64,
    /// Asks its on-demand checker for a fresh position (coalesced: one check at a time).
    pub check: tokio::sync::Notify,
}

impl Backend {
    fn new(index: usize, s: &ServerConfig, epoch: Instant) -> Backend {
        Backend {
            index,
            name: s.display_name(),
            address: s.address(),
            weight: s.weight.max(1),
            outstanding: AtomicUsize::new(0),
            eligible: AtomicBool::new(false),
            down_until_ms: AtomicU64::new(0),
            epoch,
            position: AtomicU64::new(0),
            position_role: std::sync::atomic::AtomicU8::new(0),
            position_us: AtomicU64::new(0),
            check: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the monitor lets it take reads (a replica, up, within the lag threshold).
    pub fn is_eligible(&self) -> bool {
        self.eligible.load(Ordering::Relaxed)
    }

    /// Sets read eligibility (monitor).
    pub fn set_eligible(&self, eligible: bool) {
        self.eligible.store(eligible, Ordering::Relaxed);
    }

    /// Whether routing may pick it for a read now.
    pub fn is_usable(&self) -> bool {
        self.is_eligible() && self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Marks it unusable for a back-off period after a failed connection.
    pub fn mark_failed(&self) {
        let until = self.now_ms() + DOWN_BACKOFF.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// The highest WAL position it is known to have replayed (or, the primary, written).
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Records the position it reported: replayed (`in_recovery`) or written. Positions only grow within a role;
    /// a server that changed role (promoted, or rejoined as a replica, maybe on another timeline) starts afresh.
    /// Returns whether the position grew.
    pub fn note_position(&self, in_recovery: bool, lsn: u64, asked_at: Instant) -> bool {
        let role = if in_recovery { 2 } else { 1 };
        let grew = if self.position_role.swap(role, Ordering::AcqRel) == role {
            self.position.fetch_max(lsn, Ordering::AcqRel) < lsn
        } else {
            self.position.store(lsn, Ordering::Release);
            true
        };
        let asked_us = asked_at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.position_us
            .fetch_max(asked_us.max(1), Ordering::AcqRel);
        grew
    }

    /// Whether its position was read by a query sent after `at` (so it covers everything committed before `at`).
    pub fn position_read_since(&self, at: Instant) -> bool {
        let read = self.position_us.load(Ordering::Acquire);
        read > 0 && self.epoch + Duration::from_micros(read) > at
    }

    /// Marks it usable again (a connection succeeded).
    pub fn mark_ok(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// Counts a unit in flight on a backend for as long as it lives.
#[derive(Debug)]
pub struct Load(Arc<Backend>);

impl Load {
    /// Starts counting.
    pub fn new(backend: &Arc<Backend>) -> Load {
        backend.outstanding.fetch_add(1, Ordering::Relaxed);
        Load(backend.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server a unit is sent to, by index, and in which capacity (write pool or read pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary (server index).
    Primary(usize),
    /// A replica (server index).
    Replica(usize),
}

impl Target {
    /// The server index.
    pub fn index(self) -> usize {
        match self {
            Target::Primary(i) | Target::Replica(i) => i,
        }
    }
}

/// Where a read goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadTarget {
    /// A replica chosen by the balancer (server index).
    Replica(usize),
    /// The primary, and why.
    Primary(PrimaryRead),
    /// Nowhere, and why (the client's error message).
    Refused(NoReadServer),
    /// Replicas could take it, but none is known to have replayed the read's floor yet.
    Behind,
}

/// Why a read can go nowhere: no replica can take it and it may not fall back to the primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoReadServer {
    /// Only a primary is configured.
    #[error("pgsplit cannot serve this read: no replica is configured, and reads may not fall back to the primary")]
    NoReplicaConfigured,
    /// Every replica (their names) is down, lagging or not in recovery.
    #[error("pgsplit cannot serve this read: no replica can take reads now (down, lagging or not in recovery: {}), and reads may not fall back to the primary", .0.join(", "))]
    NoneEligible(Vec<String>),
}

/// No server is the primary.
const NO_PRIMARY: usize = usize::MAX;

/// Why no server takes writes now (the monitor decides; clients get it in their error message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPrimary {
    /// The server that took writes does not answer.
    #[error("the primary \"{name}\" ({address}) is down: {error}")]
    Down {
        /// Its configured name.
        name: String,
        /// host:port.
        address: String,
        /// Its last probe error.
        error: String,
    },
    /// Every server that answers is in recovery.
    #[error("no server is out of recovery")]
    NoneOutOfRecovery,
    /// More than one server is out of recovery (their names): writes are refused.
    #[error("split brain: {} are all out of recovery; writes are refused until only one is", .0.join(" and "))]
    SplitBrain(Vec<String>),
}

/// The servers pgsplit fronts, which one is the primary now, and the read balancer.
pub struct Router {
    /// Every configured server: the configured primary first, then the replicas.
    pub servers: Vec<Arc<Backend>>,
    primary: AtomicUsize,
    no_primary: Mutex<NoPrimary>,
    balancer: Balancer,
    primary_reads: PrimaryReads,
    fallback: Fallback,
    split: bool,
    /// Round-robin credit per server.
    credit: Mutex<Vec<i64>>,
    /// Woken whenever a server's known position grows (readers waiting for a replica to reach their floor).
    pub positions: tokio::sync::Notify,
}

impl Router {
    /// Builds the server list and balancer from the configuration. Until the monitor's first probe the
    /// configured primary takes writes and no replica takes reads.
    pub fn new(config: &Config) -> Router {
        let epoch = Instant::now();
        let servers: Vec<Arc<Backend>> = config
            .servers()
            .enumerate()
            .map(|(i, s)| Arc::new(Backend::new(i, s, epoch)))
            .collect();
        Router {
            credit: Mutex::new(vec![0; servers.len()]),
            servers,
            primary: AtomicUsize::new(0),
            no_primary: Mutex::new(NoPrimary::NoneOutOfRecovery),
            balancer: config.routing.balancer,
            primary_reads: config.routing.primary_reads,
            fallback: config.routing.fallback,
            split: config.routing.read_write_split,
            positions: tokio::sync::Notify::new(),
        }
    }

    /// The backend behind a target.
    pub fn backend(&self, target: Target) -> &Arc<Backend> {
        &self.servers[target.index()]
    }

    /// The server that takes writes now, or why there is none.
    pub fn primary(&self) -> Result<usize, NoPrimary> {
        match self.primary.load(Ordering::Relaxed) {
            NO_PRIMARY => Err(lock(&self.no_primary).clone()),
            i => Ok(i),
        }
    }

    /// Sets the server that takes writes (monitor): an index, or the reason there is none.
    pub fn set_primary(&self, primary: Result<usize, NoPrimary>) {
        match primary {
            Ok(i) => self.primary.store(i, Ordering::Relaxed),
            Err(reason) => {
                *lock(&self.no_primary) = reason;
                self.primary.store(NO_PRIMARY, Ordering::Relaxed);
            }
        }
    }

    /// Whether reads are split off to replicas at all.
    pub fn splits_reads(&self) -> bool {
        self.split
    }

    /// Chooses the server for a read, skipping server `exclude` (one that just failed).
    pub fn choose_read(&self, exclude: Option<usize>) -> ReadTarget {
        self.choose_read_from(exclude, 0)
    }

    /// A read that must see WAL position `floor` (0: any): only replicas known to have replayed it are members.
    /// [`ReadTarget::Behind`] when a replica could take the read but none is known to be there yet.
    pub fn choose_read_from(&self, exclude: Option<usize>, floor: u64) -> ReadTarget {
        if !self.split {
            return ReadTarget::Primary(PrimaryRead::SplitOff);
        }
        let primary = self.primary.load(Ordering::Relaxed);
        let usable = |i: usize| i != primary && Some(i) != exclude && self.servers[i].is_usable();
        let fresh = |i: usize| usable(i) && self.servers[i].position() >= floor;
        let include_primary = self.primary_reads == PrimaryReads::Include && primary != NO_PRIMARY;
        let member = |i: usize| fresh(i) || (include_primary && i == primary);
        let pick = match self.balancer {
            Balancer::RoundRobin => self.pick_round_robin(&member),
            Balancer::LeastConnections => self.pick_least_loaded(&member),
            Balancer::Random => self.pick_random(&member),
        };
        match pick {
            Some(i) if i == primary => ReadTarget::Primary(PrimaryRead::Included),
            Some(i) => ReadTarget::Replica(i),
            None if floor > 0 && (0..self.servers.len()).any(usable) => ReadTarget::Behind,
            None => self.no_replica(primary),
        }
    }

    fn no_replica(&self, primary: usize) -> ReadTarget {
        let others: Vec<&Arc<Backend>> =
            self.servers.iter().filter(|b| b.index != primary).collect();
        let why = if others.is_empty() {
            PrimaryRead::NoReplicas
        } else {
            PrimaryRead::NoEligibleReplica
        };
        if self.fallback == Fallback::Error || self.primary_reads == PrimaryReads::Never {
            return ReadTarget::Refused(if others.is_empty() {
                NoReadServer::NoReplicaConfigured
            } else {
                NoReadServer::NoneEligible(others.iter().map(|r| r.name.clone()).collect())
            });
        }
        ReadTarget::Primary(why)
    }

    /// Smooth weighted round robin (as nginx does it) over the current members: each pick adds every member's
    /// weight to its credit, takes the member with the most credit and charges it the members' total weight.
    fn pick_round_robin(&self, member: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut credit = lock(&self.credit);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, b) in self.servers.iter().enumerate() {
            if !member(i) {
                continue;
            }
            credit[i] += b.weight as i64;
            total += b.weight as i64;
            if best.is_none_or(|j| credit[i] > credit[j]) {
                best = Some(i);
            }
        }
        if let Some(j) = best {
            credit[j] -= total;
        }
        best
    }

    /// Fewest units in flight per unit of weight; ties are broken at random (a rotating start would alias with
    /// clients whose units come in fixed-size groups).
    fn pick_least_loaded(&self, member: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.servers.len();
        let start = rand::random::<u32>() as usize;
        let load = |b: &Backend| {
            b.outstanding.load(Ordering::Relaxed) as u64 * 1_000_000 / b.weight as u64
        };
        let mut best: Option<(u64, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !member(i) {
                continue;
            }
            let l = load(&self.servers[i]);
            if best.is_none_or(|(b, _)| l < b) {
                best = Some((l, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Weighted random choice among the members.
    fn pick_random(&self, member: &dyn Fn(usize) -> bool) -> Option<usize> {
        let members: Vec<&Arc<Backend>> = self.servers.iter().filter(|b| member(b.index)).collect();
        let total: u64 = members.iter().map(|b| b.weight as u64).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::random::<u64>() % total;
        for b in members {
            if ticket < b.weight as u64 {
                return Some(b.index);
            }
            ticket -= b.weight as u64;
        }
        None
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pools of one (user, database): per server, a write pool (used while it is the primary) and a read pool
/// (used while it is a replica, or for reads on the primary). Pools open connections only when used.
pub struct PoolSet {
    /// Write pools, by server index.
    pub write: Vec<Pool>,
    /// Read pools, by server index.
    pub read: Vec<Pool>,
    /// The ParameterStatus values a server reported at the last greeting (for logins while the pools are busy).
    pub greeting:
        std::sync::Mutex<Option<std::sync::Arc<std::collections::HashMap<String, String>>>>,
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
        let target = |s: &ServerConfig| ServerTarget {
            server: s.display_name(),
            address: s.address(),
            user: user.server_user().to_string(),
            password: user.server_password().map(str::to_string),
            database: db.server_database().to_string(),
            tls: std::sync::Arc::new(crate::tls::ServerTls::for_server(config, s)),
        };
        PoolSet {
            write: config
                .servers()
                .map(|s| Pool::new(target(s), config.pools.write_pool_size, timeouts))
                .collect(),
            read: config
                .servers()
                .map(|s| Pool::new(target(s), config.pools.read_pool_size, timeouts))
                .collect(),
            greeting: std::sync::Mutex::new(None),
        }
    }

    /// The pool behind a target.
    pub fn pool(&self, target: Target) -> &Pool {
        match target {
            Target::Primary(i) => &self.write[i],
            Target::Replica(i) => &self.read[i],
        }
    }

    /// Both pools of one server.
    pub fn of_server(&self, index: usize) -> impl Iterator<Item = &Pool> {
        self.write
            .get(index)
            .into_iter()
            .chain(self.read.get(index))
    }

    /// Every pool.
    pub fn all(&self) -> impl Iterator<Item = &Pool> {
        self.write.iter().chain(self.read.iter())
    }
}

#[cfg(test)]
mod tests;
