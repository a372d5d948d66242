//! Counters shared by the session tasks and (later) the admin endpoint: every routing decision by destination
//! and reason.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::classify::Reason;

/// Why a read ran on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryRead {
    /// No replica is configured.
    NoReplicas,
    /// Every replica is down or excluded.
    NoEligibleReplica,
    /// `primary_reads = "include"` and the balancer chose the primary.
    Included,
    /// `read_write_split = false`.
    SplitOff,
    /// No replica had replayed the client's own writes (its floor) within `causal_wait`.
    NotCaughtUp,
}

impl PrimaryRead {
    /// Every variant, in counter order.
    pub const ALL: [PrimaryRead; 5] = [
        PrimaryRead::NoReplicas,
        PrimaryRead::NoEligibleReplica,
        PrimaryRead::Included,
        PrimaryRead::SplitOff,
        PrimaryRead::NotCaughtUp,
    ];

    /// A stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            PrimaryRead::NoReplicas => "no_replicas",
            PrimaryRead::NoEligibleReplica => "no_eligible_replica",
            PrimaryRead::Included => "primary_included",
            PrimaryRead::SplitOff => "split_off",
            PrimaryRead::NotCaughtUp => "not_caught_up",
        }
    }
}

/// Where a unit of work went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The primary.
    Primary,
    /// A replica.
    Replica,
}

/// Routing decisions counted by destination and reason.
#[derive(Default)]
pub struct RoutingStats {
    /// Unit latencies.
    pub latency: Latency,
    /// Errors by SQLSTATE class.
    pub errors: ErrorCounts,
    /// Connected clients.
    pub clients: Clients,
    /// Reads that had to see a WAL position (read-your-writes), by outcome.
    pub causal: CausalReads,
    /// Units that waited for a primary during a failover (`timeouts.failover_wait`), by outcome.
    pub failover: FailoverWaits,
    by_reason: [[AtomicU64; Reason::ALL.len()]; 2],
    primary_reads: [AtomicU64; PrimaryRead::ALL.len()],
    pinned: [AtomicU64; 2],
    refused_reads: AtomicU64,
}

fn dest_index(d: Destination) -> usize {
    match d {
        Destination::Primary => 0,
        Destination::Replica => 1,
    }
}

impl RoutingStats {
    /// A unit routed afresh.
    pub fn routed(&self, dest: Destination, reason: Reason) {
        self.by_reason[dest_index(dest)][reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A read that went to the primary, and why.
    pub fn primary_read(&self, why: PrimaryRead) {
        self.primary_reads[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A unit that followed the server its transaction (or pipeline) is pinned to.
    pub fn pinned(&self, dest: Destination) {
        self.pinned[dest_index(dest)].fetch_add(1, Ordering::Relaxed);
    }

    /// A read refused because no server could take it (`fallback = "error"`).
    pub fn refused_read(&self) {
        self.refused_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Units routed to `dest` for `reason`.
    pub fn count(&self, dest: Destination, reason: Reason) -> u64 {
        self.by_reason[dest_index(dest)][reason as usize].load(Ordering::Relaxed)
    }

    /// Reads that went to the primary for `why`.
    pub fn primary_reads(&self, why: PrimaryRead) -> u64 {
        self.primary_reads[why as usize].load(Ordering::Relaxed)
    }

    /// Units that followed a pinned server.
    pub fn pinned_count(&self, dest: Destination) -> u64 {
        self.pinned[dest_index(dest)].load(Ordering::Relaxed)
    }

    /// Reads refused.
    pub fn refused_reads(&self) -> u64 {
        self.refused_reads.load(Ordering::Relaxed)
    }
}

/// How a read that had to see a WAL position (its floor) was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CausalOutcome {
    /// A replica was already known to be at the floor.
    CaughtUp,
    /// A replica got there while the read waited (up to `causal_wait`).
    Waited,
    /// None got there in time: the primary served it.
    Primary,
}

impl CausalOutcome {
    /// Every outcome, in counter order.
    pub const ALL: [CausalOutcome; 3] = [
        CausalOutcome::CaughtUp,
        CausalOutcome::Waited,
        CausalOutcome::Primary,
    ];

    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            CausalOutcome::CaughtUp => "replica_caught_up",
            CausalOutcome::Waited => "replica_after_wait",
            CausalOutcome::Primary => "primary_fallback",
        }
    }
}

/// Reads with a floor, by outcome, and how long they waited for a replica (µs).
pub struct CausalReads {
    outcomes: [AtomicU64; CausalOutcome::ALL.len()],
    waits_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    /// The Prometheus histogram of waits (seconds).
    pub waits: prometheus_client::metrics::histogram::Histogram,
}

impl Default for CausalReads {
    fn default() -> Self {
        let hdr = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
            hdrhistogram::Histogram::new(3).unwrap_or_else(|_| unreachable!("valid bounds"))
        });
        CausalReads {
            outcomes: Default::default(),
            waits_us: std::sync::Mutex::new(hdr),
            waits: duration_histogram(),
        }
    }
}

impl CausalReads {
    /// A read with a floor was placed; `waited` is how long it waited for a replica (zero when it did not).
    pub fn record(&self, outcome: CausalOutcome, waited: std::time::Duration) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if outcome != CausalOutcome::CaughtUp {
            let us = (waited.as_micros() as u64).max(1);
            if let Ok(mut h) = self.waits_us.lock() {
                let _ = h.record(us);
            }
            self.waits.observe(waited.as_secs_f64());
        }
    }

    /// Reads with this outcome so far.
    pub fn count(&self, outcome: CausalOutcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// A percentile (0–100) of the waits, in µs (0 when none).
    pub fn wait_percentile_us(&self, p: f64) -> u64 {
        self.waits_us
            .lock()
            .map(|h| h.value_at_percentile(p))
            .unwrap_or(0)
    }
}

/// How a unit's wait for a primary (`timeouts.failover_wait`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverOutcome {
    /// A primary was found (a promoted replica, or the old primary back): the unit ran there.
    Primary,
    /// None within the wait: the unit failed with 57P03.
    Timeout,
    /// The client cancelled it, or pgsplit began to shut down.
    Cancelled,
}

impl FailoverOutcome {
    /// Every outcome, in counter order.
    pub const ALL: [FailoverOutcome; 3] = [
        FailoverOutcome::Primary,
        FailoverOutcome::Timeout,
        FailoverOutcome::Cancelled,
    ];

    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            FailoverOutcome::Primary => "primary",
            FailoverOutcome::Timeout => "timeout",
            FailoverOutcome::Cancelled => "cancelled",
        }
    }
}

/// Units that waited for a primary, by outcome, and how long they waited.
pub struct FailoverWaits {
    outcomes: [AtomicU64; FailoverOutcome::ALL.len()],
    longest_us: AtomicU64,
    /// The Prometheus histogram of waits (seconds).
    pub waits: prometheus_client::metrics::histogram::Histogram,
}

impl Default for FailoverWaits {
    fn default() -> Self {
        FailoverWaits {
            outcomes: Default::default(),
            longest_us: AtomicU64::new(0),
            waits: duration_histogram(),
        }
    }
}

impl FailoverWaits {
    /// A unit's wait for a primary ended with `outcome` after `waited`.
    pub fn record(&self, outcome: FailoverOutcome, waited: std::time::Duration) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.longest_us
            .fetch_max(waited.as_micros() as u64, Ordering::Relaxed);
        self.waits.observe(waited.as_secs_f64());
    }

    /// Waits with this outcome so far.
    pub fn count(&self, outcome: FailoverOutcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// The longest wait so far, in µs.
    pub fn longest_us(&self) -> u64 {
        self.longest_us.load(Ordering::Relaxed)
    }
}

/// The destination label of the query duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DestinationLabel {
    /// `primary` or `replica`.
    pub destination: &'static str,
}

/// The Prometheus histogram family of unit durations.
pub type DurationFamily = prometheus_client::metrics::family::Family<
    DestinationLabel,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

fn duration_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(BUCKETS)
}

/// Unit latency (server connection held, from checkout to the unit's last ReadyForQuery), per destination.
pub struct Latency {
    hdr: [std::sync::Mutex<hdrhistogram::Histogram<u64>>; 2],
    prom: DurationFamily,
    /// The family's two histograms, resolved once (no label lookup per unit).
    prom_by_destination: [prometheus_client::metrics::histogram::Histogram; 2],
}

/// Bucket bounds (seconds) of the Prometheus query duration histogram.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Default for Latency {
    fn default() -> Self {
        let hdr = || {
            let h =
                hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
                    hdrhistogram::Histogram::new(3).unwrap_or_else(|_| unreachable!("valid bounds"))
                });
            std::sync::Mutex::new(h)
        };
        let prom = DurationFamily::new_with_constructor(duration_histogram);
        let resolve = |destination| {
            prom.get_or_create(&DestinationLabel { destination })
                .clone()
        };
        let prom_by_destination = [resolve("primary"), resolve("replica")];
        Latency {
            hdr: [hdr(), hdr()],
            prom,
            prom_by_destination,
        }
    }
}

/// Percentiles of one route kind, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    /// Units measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl Latency {
    /// Records one unit on `dest`.
    pub fn record(&self, dest: Destination, took: std::time::Duration) {
        let i = dest_index(dest);
        let micros = (took.as_micros() as u64).clamp(1, 600_000_000);
        if let Ok(mut h) = self.hdr[i].lock() {
            let _ = h.record(micros);
        }
        self.prom_by_destination[i].observe(took.as_secs_f64());
    }

    /// Percentiles so far on `dest`.
    pub fn percentiles(&self, dest: Destination) -> Percentiles {
        let Ok(h) = self.hdr[dest_index(dest)].lock() else {
            return Percentiles::default();
        };
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
        }
    }

    /// The Prometheus histogram family (shares its data).
    pub fn prometheus(&self) -> DurationFamily {
        self.prom.clone()
    }
}

/// ErrorResponses seen, by SQLSTATE class (first two characters).
#[derive(Default)]
pub struct ErrorCounts(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl ErrorCounts {
    /// Counts one error with SQLSTATE `code`.
    pub fn count(&self, code: &str) {
        let class = code.get(..2).unwrap_or("??").to_string();
        if let Ok(mut m) = self.0.lock() {
            *m.entry(class).or_default() += 1;
        }
    }

    /// Counts by class.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

/// What a connected client is doing.
#[derive(Debug)]
pub struct ClientInfo {
    /// Client id.
    pub id: u64,
    /// User name.
    pub user: String,
    /// Database.
    pub database: String,
    /// Remote address.
    pub peer: std::net::SocketAddr,
    /// When it connected.
    pub connected_at: std::time::SystemTime,
    state: std::sync::atomic::AtomicU8,
}

/// A client's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Between units, no server held.
    Idle,
    /// Waiting for a server connection.
    Waiting,
    /// Holding a server connection.
    Active,
}

impl ClientState {
    /// A stable label.
    pub fn label(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

impl ClientInfo {
    /// A new idle client.
    pub fn new(id: u64, user: String, database: String, peer: std::net::SocketAddr) -> ClientInfo {
        ClientInfo {
            id,
            user,
            database,
            peer,
            connected_at: std::time::SystemTime::now(),
            state: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Sets the state.
    pub fn set_state(&self, s: ClientState) {
        let v = match s {
            ClientState::Idle => 0,
            ClientState::Waiting => 1,
            ClientState::Active => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// The state.
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }
}

/// Connected clients by id.
#[derive(Default)]
pub struct Clients(std::sync::Mutex<std::collections::BTreeMap<u64, std::sync::Arc<ClientInfo>>>);

impl Clients {
    /// Registers a client.
    pub fn add(&self, info: std::sync::Arc<ClientInfo>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(info.id, info);
        }
    }

    /// Forgets a client.
    pub fn remove(&self, id: u64) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&id);
        }
    }

    /// Every client.
    pub fn list(&self) -> Vec<std::sync::Arc<ClientInfo>> {
        self.0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
