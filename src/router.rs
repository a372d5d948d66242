//! Which server a routed unit goes to: the primary for writes; for reads, a replica chosen by the configured
//! balancer among the eligible ones, the primary when none is (or when it is part of the read set), or an error.
//!
//! Eligibility is the monitor's seam: today a replica is skipped for a short back-off after pgsplit fails to
//! connect to it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{
    Balancer, Config, DatabaseConfig, Fallback, PrimaryReads, ServerConfig, UserConfig,
};
use crate::pool::{Pool, PoolTimeouts};
use crate::server::ServerTarget;
use crate::stats::PrimaryRead;

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
    /// Units in flight on it (server connections held by clients).
    pub outstanding: AtomicUsize,
    /// Set by the monitor: whether reads may go here.
    pub eligible: AtomicBool,
    down_until_ms: AtomicU64,
    epoch: Instant,
}

impl Backend {
    fn new(s: &ServerConfig, epoch: Instant) -> Backend {
        Backend {
            name: s.display_name(),
            address: s.address(),
            weight: s.weight.max(1),
            outstanding: AtomicUsize::new(0),
            eligible: AtomicBool::new(true),
            down_until_ms: AtomicU64::new(0),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether routing may pick it for a read now.
    pub fn is_usable(&self) -> bool {
        self.eligible.load(Ordering::Relaxed)
            && self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
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

/// A server a unit is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary.
    Primary,
    /// Replica by index in the configuration.
    Replica(usize),
}

/// Where a read goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadTarget {
    /// A replica chosen by the balancer.
    Replica(usize),
    /// The primary, and why.
    Primary(PrimaryRead),
    /// Nowhere: the message for the client.
    Refused(String),
}

/// The servers pgsplit fronts and the read balancer.
pub struct Router {
    /// The primary.
    pub primary: Arc<Backend>,
    /// The replicas, in configuration order.
    pub replicas: Vec<Arc<Backend>>,
    balancer: Balancer,
    primary_reads: PrimaryReads,
    fallback: Fallback,
    split: bool,
    /// Weighted round-robin schedule over the read set (`None` stands for the primary).
    schedule: Vec<Option<usize>>,
    next: AtomicUsize,
}

impl Router {
    /// Builds the server list and balancer from the configuration.
    pub fn new(config: &Config) -> Router {
        let epoch = Instant::now();
        let primary = Arc::new(Backend::new(&config.primary, epoch));
        let replicas: Vec<Arc<Backend>> = config
            .replicas
            .iter()
            .map(|r| Arc::new(Backend::new(r, epoch)))
            .collect();
        let mut members: Vec<(Option<usize>, u32)> = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (Some(i), r.weight))
            .collect();
        if config.routing.primary_reads == PrimaryReads::Include {
            members.push((None, primary.weight));
        }
        Router {
            schedule: smooth_weighted_schedule(&members),
            primary,
            replicas,
            balancer: config.routing.balancer,
            primary_reads: config.routing.primary_reads,
            fallback: config.routing.fallback,
            split: config.routing.read_write_split,
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

    /// Whether reads are split off to replicas at all.
    pub fn splits_reads(&self) -> bool {
        self.split
    }

    /// Chooses the server for a read, skipping replica `exclude` (one that just failed).
    pub fn choose_read(&self, exclude: Option<usize>) -> ReadTarget {
        if !self.split {
            return ReadTarget::Primary(PrimaryRead::SplitOff);
        }
        let usable = |i: usize| Some(i) != exclude && self.replicas[i].is_usable();
        let include_primary = self.primary_reads == PrimaryReads::Include;
        let pick = match self.balancer {
            Balancer::RoundRobin => self.pick_round_robin(&usable),
            Balancer::LeastConnections => self.pick_least_loaded(&usable, include_primary),
            Balancer::Random => self.pick_random(&usable, include_primary),
        };
        match pick {
            Some(Some(i)) => ReadTarget::Replica(i),
            Some(None) => ReadTarget::Primary(PrimaryRead::Included),
            None => self.no_replica(),
        }
    }

    fn no_replica(&self) -> ReadTarget {
        let why = if self.replicas.is_empty() {
            PrimaryRead::NoReplicas
        } else {
            PrimaryRead::NoEligibleReplica
        };
        if self.fallback == Fallback::Error || self.primary_reads == PrimaryReads::Never {
            let reason = if self.replicas.is_empty() {
                "no replica is configured".to_string()
            } else {
                let names: Vec<&str> = self.replicas.iter().map(|r| r.name.as_str()).collect();
                format!(
                    "no replica can take reads now (down or excluded: {})",
                    names.join(", ")
                )
            };
            return ReadTarget::Refused(format!("pgsplit cannot serve this read: {reason}, and reads may not fall back to the primary"));
        }
        ReadTarget::Primary(why)
    }

    /// Weighted round robin: walks the precomputed schedule from a shared counter, skipping unusable members.
    fn pick_round_robin(&self, usable: &dyn Fn(usize) -> bool) -> Option<Option<usize>> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.schedule[(start + k) % n])
            .find(|m| m.is_none_or(usable))
    }

    /// Fewest units in flight per unit of weight; ties rotate.
    fn pick_least_loaded(
        &self,
        usable: &dyn Fn(usize) -> bool,
        include_primary: bool,
    ) -> Option<Option<usize>> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let load = |b: &Backend| {
            b.outstanding.load(Ordering::Relaxed) as u64 * 1_000_000 / b.weight as u64
        };
        let mut best: Option<(u64, Option<usize>)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !usable(i) {
                continue;
            }
            let l = load(&self.replicas[i]);
            if best.is_none_or(|(b, _)| l < b) {
                best = Some((l, Some(i)));
            }
        }
        if include_primary {
            let l = load(&self.primary);
            if best.is_none_or(|(b, _)| l < b) {
                best = Some((l, None));
            }
        }
        best.map(|(_, m)| m)
    }

    /// Weighted random choice among the usable members.
    fn pick_random(
        &self,
        usable: &dyn Fn(usize) -> bool,
        include_primary: bool,
    ) -> Option<Option<usize>> {
        let mut members: Vec<(Option<usize>, u32)> = (0..self.replicas.len())
            .filter(|&i| usable(i))
            .map(|i| (Some(i), self.replicas[i].weight))
            .collect();
        if include_primary {
            members.push((None, self.primary.weight));
        }
        let total: u64 = members.iter().map(|(_, w)| *w as u64).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::random::<u64>() % total;
        for (m, w) in members {
            if ticket < w as u64 {
                return Some(m);
            }
            ticket -= w as u64;
        }
        None
    }
}

/// The smooth weighted round-robin order (as nginx computes it) of one full cycle over `members`.
fn smooth_weighted_schedule(members: &[(Option<usize>, u32)]) -> Vec<Option<usize>> {
    let total: i64 = members.iter().map(|(_, w)| *w as i64).sum();
    let cycle = total.min(10_000);
    let mut current = vec![0i64; members.len()];
    let mut out = Vec::with_capacity(cycle as usize);
    for _ in 0..cycle {
        for (c, (_, w)) in current.iter_mut().zip(members) {
            *c += *w as i64;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
        else {
            break;
        };
        current[best] -= total;
        out.push(members[best].0);
    }
    out
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
        let target = |s: &ServerConfig| ServerTarget {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        let s = smooth_weighted_schedule(&[(Some(0), 2), (Some(1), 1)]);
        assert_eq!(s, vec![Some(0), Some(1), Some(0)]);
        let s = smooth_weighted_schedule(&[(Some(0), 1), (Some(1), 1), (None, 1)]);
        assert_eq!(s.len(), 3);
        assert!(s.contains(&None));
    }
}
