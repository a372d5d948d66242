//! Which server a routed unit goes to: the primary for writes; for reads, a replica chosen by the configured
//! balancer among the eligible ones, the primary when none is (or when it is part of the read set), or an error.
//!
//! Which server is the primary, and which replicas are eligible for reads, is the monitor's to set (it probes
//! every server); on top of that a replica that refused a connection is skipped for a short back-off.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Balancer, Config, Fallback, PrimaryReads, RoutingConfig, ServerConfig};
use crate::stats::PrimaryRead;

/// How long a replica that refused a connection is skipped.
const DOWN_BACKOFF: Duration = Duration::from_secs(2);

/// One configured server. Its read eligibility is the monitor's to set.
#[derive(Debug)]
pub struct Backend {
    /// Its index, stable for the life of the process (0: the primary of the first configuration, then its
    /// replicas, then servers added by reloads).
    pub index: usize,
    /// Configured name.
    pub name: String,
    /// Its `[primary]` / `[[replicas]]` entry (a reload that changes anything in it but the weight retires this
    /// backend and adds a new one).
    pub config: ServerConfig,
    /// host:port.
    pub address: String,
    /// Balancer weight (a reload may change it).
    weight: AtomicU32,
    /// Removed from the configuration: it takes no new units; its running ones finish.
    retired: AtomicBool,
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
            config: s.clone(),
            address: s.address(),
            weight: AtomicU32::new(s.weight.max(1)),
            retired: AtomicBool::new(false),
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

    /// Balancer weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Sets the balancer weight (reload).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Whether it was removed from the configuration (it drains: no new units).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Whether it has been retired and no unit runs on it any more (it no longer shows in the status).
    pub fn is_drained(&self) -> bool {
        self.is_retired() && self.outstanding.load(Ordering::Relaxed) == 0
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
        self.is_eligible()
            && !self.is_retired()
            && self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
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

/// Every server pgsplit has fronted since it started, by index. The list only grows (a reload adds servers at
/// new indices and retires removed ones), so an index once handed out stays valid.
pub struct Servers(ArcSwap<Vec<Arc<Backend>>>);

impl Servers {
    /// The server at `index`.
    pub fn get(&self, index: usize) -> Option<Arc<Backend>> {
        self.0.load().get(index).cloned()
    }

    /// How many indices have been handed out (retired servers included).
    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    /// Whether there is no server at all (never, once built from a configuration).
    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    /// The list now (one atomic load; index it freely).
    pub fn load(&self) -> arc_swap::Guard<Arc<Vec<Arc<Backend>>>> {
        self.0.load()
    }

    /// The list now, to keep.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        self.0.load_full()
    }

    /// The server called `name` that is not retired.
    pub fn by_name(&self, name: &str) -> Option<Arc<Backend>> {
        self.0
            .load()
            .iter()
            .find(|b| b.name == name && !b.is_retired())
            .cloned()
    }
}

/// The servers pgsplit fronts, which one is the primary now, and the read balancer.
pub struct Router {
    /// Every server by its stable index.
    pub servers: Servers,
    primary: AtomicUsize,
    no_primary: Mutex<NoPrimary>,
    /// Routing settings in force (a reload swaps them).
    routing: ArcSwap<RoutingConfig>,
    /// Round-robin credit per server.
    credit: Mutex<Vec<i64>>,
    epoch: Instant,
    /// The number of servers, sent each time a reload adds one (the monitor and the checkers start loops).
    added: tokio::sync::watch::Sender<usize>,
    /// Woken whenever a server's known position grows (readers waiting for a replica to reach their floor).
    pub positions: tokio::sync::Notify,
    /// Woken when the primary changes (units waiting for one during a failover).
    primary_changed: tokio::sync::Notify,
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
            added: tokio::sync::watch::channel(servers.len()).0,
            servers: Servers(ArcSwap::from_pointee(servers)),
            primary: AtomicUsize::new(0),
            no_primary: Mutex::new(NoPrimary::NoneOutOfRecovery),
            routing: ArcSwap::from_pointee(config.routing.clone()),
            epoch,
            positions: tokio::sync::Notify::new(),
            primary_changed: tokio::sync::Notify::new(),
        }
    }

    /// The backend behind a target.
    pub fn backend(&self, target: Target) -> Option<Arc<Backend>> {
        self.servers.get(target.index())
    }

    /// Adds a server at the next index (reload); it takes reads once the monitor has probed it. Returns it.
    pub fn add_server(&self, s: &ServerConfig) -> Arc<Backend> {
        let mut added = None;
        // Under the watch's lock: two adds never race for an index.
        self.added.send_modify(|count| {
            let mut list = Vec::clone(&self.servers.0.load());
            let b = Arc::new(Backend::new(list.len(), s, self.epoch));
            list.push(b.clone());
            *count = list.len();
            self.servers.0.store(Arc::new(list));
            added = Some(b);
        });
        added.unwrap_or_else(|| Arc::new(Backend::new(usize::MAX, s, self.epoch)))
    }

    /// Retires server `index` (reload): no new units; its on-demand checker stops.
    pub fn retire(&self, index: usize) {
        if let Some(b) = self.servers.get(index) {
            b.retired.store(true, Ordering::Relaxed);
            b.set_eligible(false);
            b.check.notify_one();
        }
    }

    /// Watches the number of servers (it grows when a reload adds one).
    pub fn watch_added(&self) -> tokio::sync::watch::Receiver<usize> {
        self.added.subscribe()
    }

    /// Uses these routing settings from the next unit on (reload).
    pub fn set_routing(&self, routing: &RoutingConfig) {
        self.routing.store(Arc::new(routing.clone()));
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
            Ok(i) => {
                if self.primary.swap(i, Ordering::AcqRel) != i {
                    self.primary_changed.notify_waiters();
                }
            }
            Err(reason) => {
                *lock(&self.no_primary) = reason;
                if self.primary.swap(NO_PRIMARY, Ordering::AcqRel) != NO_PRIMARY {
                    self.primary_changed.notify_waiters();
                }
            }
        }
    }

    /// The server that takes writes once `done` holds for it, waiting up to `wait` for that (a failover): the
    /// monitor's probe that changes the primary wakes every waiter at once; no polling.
    pub async fn wait_for_primary(
        &self,
        wait: Duration,
        done: impl Fn(&Result<usize, NoPrimary>) -> bool,
    ) -> Result<usize, NoPrimary> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.primary_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.primary();
            if done(&now) || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.primary();
            }
        }
    }

    /// Whether reads are split off to replicas at all.
    pub fn splits_reads(&self) -> bool {
        self.routing.load().read_write_split
    }

    /// Chooses the server for a read, skipping server `exclude` (one that just failed).
    pub fn choose_read(&self, exclude: Option<usize>) -> ReadTarget {
        self.choose_read_from(exclude, 0)
    }

    /// A read that must see WAL position `floor` (0: any): only replicas known to have replayed it are members.
    /// [`ReadTarget::Behind`] when a replica could take the read but none is known to be there yet.
    pub fn choose_read_from(&self, exclude: Option<usize>, floor: u64) -> ReadTarget {
        let routing = self.routing.load();
        if !routing.read_write_split {
            return ReadTarget::Primary(PrimaryRead::SplitOff);
        }
        let servers = self.servers.load();
        let primary = self.primary.load(Ordering::Relaxed);
        let usable = |i: usize| i != primary && Some(i) != exclude && servers[i].is_usable();
        let fresh = |i: usize| usable(i) && servers[i].position() >= floor;
        let include_primary =
            routing.primary_reads == PrimaryReads::Include && primary != NO_PRIMARY;
        let member = |i: usize| fresh(i) || (include_primary && i == primary);
        let pick = match routing.balancer {
            Balancer::RoundRobin => self.pick_round_robin(&servers, &member),
            Balancer::LeastConnections => pick_least_loaded(&servers, &member),
            Balancer::Random => pick_random(&servers, &member),
        };
        match pick {
            Some(i) if i == primary => ReadTarget::Primary(PrimaryRead::Included),
            Some(i) => ReadTarget::Replica(i),
            None if floor > 0 && (0..servers.len()).any(usable) => ReadTarget::Behind,
            None => no_replica(&servers, &routing, primary),
        }
    }

    /// Smooth weighted round robin (as nginx does it) over the current members: each pick adds every member's
    /// weight to its credit, takes the member with the most credit and charges it the members' total weight.
    fn pick_round_robin(
        &self,
        servers: &[Arc<Backend>],
        member: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut credit = lock(&self.credit);
        if credit.len() < servers.len() {
            credit.resize(servers.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, b) in servers.iter().enumerate() {
            if !member(i) {
                continue;
            }
            credit[i] += b.weight() as i64;
            total += b.weight() as i64;
            if best.is_none_or(|j| credit[i] > credit[j]) {
                best = Some(i);
            }
        }
        if let Some(j) = best {
            credit[j] -= total;
        }
        best
    }
}

/// Where a read goes when no member could take it: the primary, or an error naming why.
fn no_replica(servers: &[Arc<Backend>], routing: &RoutingConfig, primary: usize) -> ReadTarget {
    let others: Vec<&Arc<Backend>> = servers
        .iter()
        .filter(|b| b.index != primary && !b.is_retired())
        .collect();
    let why = if others.is_empty() {
        PrimaryRead::NoReplicas
    } else {
        PrimaryRead::NoEligibleReplica
    };
    if routing.fallback == Fallback::Error || routing.primary_reads == PrimaryReads::Never {
        return ReadTarget::Refused(if others.is_empty() {
            NoReadServer::NoReplicaConfigured
        } else {
            NoReadServer::NoneEligible(others.iter().map(|r| r.name.clone()).collect())
        });
    }
    ReadTarget::Primary(why)
}

/// Fewest units in flight per unit of weight; ties are broken uniformly at random (a rotating start would alias
/// with clients whose units come in fixed-size groups, and a random start would favour the member after a gap).
fn pick_least_loaded(servers: &[Arc<Backend>], member: &dyn Fn(usize) -> bool) -> Option<usize> {
    let load =
        |b: &Backend| b.outstanding.load(Ordering::Relaxed) as u64 * 1_000_000 / b.weight() as u64;
    // (load, index, how many members tie at that load): each tie replaces the pick with chance 1/ties, so every
    // tied member is equally likely whatever non-members (the primary) sit between them.
    let mut best: Option<(u64, usize, u32)> = None;
    for (i, b) in servers.iter().enumerate() {
        if !member(i) {
            continue;
        }
        let l = load(b);
        best = match best {
            Some((bl, _, _)) if l < bl => Some((l, i, 1)),
            None => Some((l, i, 1)),
            Some((bl, bi, ties)) if l == bl => {
                let ties = ties + 1;
                let pick = if rand::random_ratio(1, ties) { i } else { bi };
                Some((bl, pick, ties))
            }
            kept => kept,
        };
    }
    best.map(|(_, i, _)| i)
}

/// Weighted random choice among the members.
fn pick_random(servers: &[Arc<Backend>], member: &dyn Fn(usize) -> bool) -> Option<usize> {
    let members: Vec<&Arc<Backend>> = servers.iter().filter(|b| member(b.index)).collect();
    let total: u64 = members.iter().map(|b| b.weight() as u64).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rand::random::<u64>() % total;
    for b in members {
        if ticket < b.weight() as u64 {
            return Some(b.index);
        }
        ticket -= b.weight() as u64;
    }
    None
}

/// Runs `task(index)` for every server, and for each server a reload adds, until the process ends (a task ends
/// on its own when its server is retired). The monitor's probe loops and the on-demand checkers use it.
pub async fn per_server<F, Fut>(router: &Router, task: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut added = router.watch_added();
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    loop {
        let n = router.servers.len();
        for index in started..n {
            tasks.spawn(task(index));
        }
        started = started.max(n);
        tokio::select! {
            changed = added.changed() => if changed.is_err() { break },
            Some(_) = tasks.join_next() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod pool_set;
#[cfg(test)]
mod tests;

pub use pool_set::{PoolSet, ServerPools};
