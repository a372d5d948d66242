//! The JSON document `/status` serves (and the dashboard charts): servers, pools, clients, routing counters,
//! latency percentiles.

use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::classify::Reason;
use crate::state::Shared;
use crate::stats::{
    CausalOutcome, ClientState, Destination, FailoverOutcome, Percentiles, PrimaryRead,
};

/// The whole status document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_seconds: f64,
    pub primary: Option<String>,
    pub primary_error: Option<String>,
    pub max_lag_seconds: f64,
    pub max_lag_bytes: u64,
    pub readmit_lag_seconds: f64,
    pub paused: bool,
    pub servers: Vec<ServerView>,
    pub pools: Vec<PoolView>,
    pub clients: ClientsView,
    pub routing: RoutingView,
    pub latency: LatencyView,
    pub classifier: ClassifierView,
    pub errors: Vec<ErrorView>,
    pub reload: ReloadView,
}

/// Configuration reloads: how many, the last one put in force, the last one refused and why.
#[derive(Debug, Serialize)]
pub struct ReloadView {
    pub config_file: Option<String>,
    pub reloads_ok: u64,
    pub reloads_refused: u64,
    pub last_reload_unix_ms: Option<u128>,
    pub last_refused_unix_ms: Option<u128>,
    pub last_refused_error: Option<String>,
}

/// One server.
#[derive(Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    pub address: String,
    pub role: &'static str,
    pub up: bool,
    pub eligible: bool,
    pub reason: String,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub last_probe_age_seconds: Option<f64>,
    pub probe_latency_ms: Option<f64>,
    pub replay_paused: bool,
    pub weight: u32,
    /// Removed by a reload, with units still running on it.
    pub draining: bool,
    pub outstanding: usize,
    pub transitions: Vec<TransitionView>,
}

/// One eligibility change.
#[derive(Debug, Serialize)]
pub struct TransitionView {
    pub at_unix_ms: u128,
    pub eligible: bool,
    pub reason: String,
}

/// One pool.
#[derive(Debug, Serialize)]
pub struct PoolView {
    pub user: String,
    pub database: String,
    pub server: String,
    pub kind: &'static str,
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
    pub size: usize,
}

/// Clients by state.
#[derive(Debug, Serialize)]
pub struct ClientsView {
    pub connected: usize,
    pub active: usize,
    pub waiting: usize,
    pub idle: usize,
}

/// Routing counters.
#[derive(Debug, Serialize)]
pub struct RoutingView {
    /// Units routed afresh, by destination and reason.
    pub routed: Vec<RoutedView>,
    /// Reads that ran on the primary, by why.
    pub primary_reads: Vec<CountView>,
    /// Units that followed a pinned server, by destination.
    pub pinned_primary: u64,
    pub pinned_replica: u64,
    /// Reads refused (no server could take them).
    pub refused_reads: u64,
    /// Reads that had to see a WAL position (read-your-writes), by outcome, and their waits for a replica.
    pub causal_reads: CausalView,
    /// Units that found no primary and waited for one (`timeouts.failover_wait`), by outcome (`primary`,
    /// `timeout`, `cancelled`), and the longest wait (µs).
    pub failover_waits: FailoverView,
    /// All units by destination (routed + pinned).
    pub total_primary: u64,
    pub total_replica: u64,
}

/// Reads with a floor, by outcome (`replica_caught_up`, `replica_after_wait`, `primary_fallback`), and the
/// waits of those that waited (µs).
#[derive(Debug, Serialize)]
pub struct CausalView {
    pub outcomes: Vec<CountView>,
    pub wait_p50_us: u64,
    pub wait_p99_us: u64,
}

/// Waits for a primary by outcome, and the longest (µs).
#[derive(Debug, Serialize)]
pub struct FailoverView {
    pub outcomes: Vec<CountView>,
    pub longest_us: u64,
}

/// One counter by destination and reason.
#[derive(Debug, Serialize)]
pub struct RoutedView {
    pub destination: &'static str,
    pub reason: &'static str,
    pub count: u64,
}

/// One labelled counter.
#[derive(Debug, Serialize)]
pub struct CountView {
    pub reason: &'static str,
    pub count: u64,
}

/// Unit latency by destination.
#[derive(Debug, Serialize)]
pub struct LatencyView {
    pub primary: Percentiles,
    pub replica: Percentiles,
}

/// Classifier cache.
#[derive(Debug, Serialize)]
pub struct ClassifierView {
    pub cache_hits: u64,
    pub cache_misses: u64,
}

/// Errors by SQLSTATE class.
#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub class: String,
    pub count: u64,
}

/// Builds the status document.
pub fn status(shared: &Shared) -> Status {
    let router = &shared.router;
    let config = shared.config();
    let lag = &config.lag;
    let primary = router.primary();
    let clients = shared.stats.clients.list();
    let count = |s: ClientState| clients.iter().filter(|c| c.state() == s).count();
    let (cache_hits, cache_misses) = shared.classifier.cache_counts();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
        primary: primary
            .as_ref()
            .ok()
            .and_then(|&i| router.servers.get(i))
            .map(|b| b.name.clone()),
        primary_error: primary.err().map(|e| e.to_string()),
        max_lag_seconds: lag.max_lag.as_secs_f64(),
        max_lag_bytes: lag.max_lag_bytes,
        readmit_lag_seconds: lag.readmit_lag().as_secs_f64(),
        paused: shared.is_paused(),
        servers: servers(shared),
        pools: pools(shared),
        clients: ClientsView {
            connected: clients.len(),
            active: count(ClientState::Active),
            waiting: count(ClientState::Waiting),
            idle: count(ClientState::Idle),
        },
        routing: routing(shared),
        latency: LatencyView {
            primary: shared.stats.latency.percentiles(Destination::Primary),
            replica: shared.stats.latency.percentiles(Destination::Replica),
        },
        classifier: ClassifierView {
            cache_hits,
            cache_misses,
        },
        errors: shared
            .stats
            .errors
            .snapshot()
            .into_iter()
            .map(|(class, count)| ErrorView { class, count })
            .collect(),
        reload: reload(shared),
    }
}

/// The reload log.
pub fn reload(shared: &Shared) -> ReloadView {
    let log = shared.reload_log();
    let ms = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    ReloadView {
        config_file: shared.config_path.as_ref().map(|p| p.display().to_string()),
        reloads_ok: log.ok,
        reloads_refused: log.refused,
        last_reload_unix_ms: log.last_ok.map(ms),
        last_refused_unix_ms: log.last_refused.as_ref().map(|(t, _)| ms(*t)),
        last_refused_error: log.last_refused.map(|(_, e)| e),
    }
}

/// Every server as the monitor sees it, with its units in flight; a removed server shows as draining until its
/// last unit ends.
fn servers(shared: &Shared) -> Vec<ServerView> {
    let backends = shared.router.servers.snapshot();
    shared
        .monitor
        .snapshot()
        .into_iter()
        .zip(backends.iter())
        .filter(|(_, b)| !b.is_drained())
        .map(|(s, b)| ServerView {
            role: s.role.label(),
            up: s.up,
            eligible: s.eligible,
            reason: s.reason,
            lag_bytes: s.lag_bytes,
            lag_seconds: s.lag.map(|d| d.as_secs_f64()),
            last_probe_age_seconds: s.last_ok.map(|t| t.elapsed().as_secs_f64()),
            probe_latency_ms: s.probe_latency.map(|d| d.as_secs_f64() * 1000.0),
            replay_paused: s.probe.replay_paused,
            weight: b.weight(),
            draining: b.is_retired(),
            outstanding: b.outstanding.load(std::sync::atomic::Ordering::Relaxed),
            transitions: s
                .transitions
                .iter()
                .map(|t| TransitionView {
                    at_unix_ms: t.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()),
                    eligible: t.eligible,
                    reason: t.reason.clone(),
                })
                .collect(),
            name: s.name,
            address: s.address,
        })
        .collect()
}

/// Every pool of every (user, database), write pools then read pools, by server (a drained server's omitted).
fn pools(shared: &Shared) -> Vec<PoolView> {
    let backends = shared.router.servers.snapshot();
    let mut pools = Vec::new();
    for ((user, database), set) in shared.all_pools() {
        for (kind, list) in [("write", set.write_pools()), ("read", set.read_pools())] {
            for (pool, b) in list.iter().zip(backends.iter()) {
                if b.is_drained() {
                    continue;
                }
                let st = pool.stats();
                pools.push(PoolView {
                    user: user.clone(),
                    database: database.clone(),
                    server: b.name.clone(),
                    kind,
                    active: st.active,
                    idle: st.idle,
                    waiting: st.waiting,
                    size: st.size,
                });
            }
        }
    }
    pools
}

/// Units by destination and reason, reads on the primary by why, pinned units and refused reads.
fn routing(shared: &Shared) -> RoutingView {
    let stats = &shared.stats;
    let mut routed = Vec::new();
    let (mut total_primary, mut total_replica) = (
        stats.pinned_count(Destination::Primary),
        stats.pinned_count(Destination::Replica),
    );
    for (dest, label) in [
        (Destination::Primary, "primary"),
        (Destination::Replica, "replica"),
    ] {
        for reason in Reason::ALL {
            let n = stats.count(dest, reason);
            match dest {
                Destination::Primary => total_primary += n,
                Destination::Replica => total_replica += n,
            }
            if n > 0 {
                routed.push(RoutedView {
                    destination: label,
                    reason: reason.label(),
                    count: n,
                });
            }
        }
    }
    RoutingView {
        routed,
        primary_reads: PrimaryRead::ALL
            .iter()
            .map(|&w| CountView {
                reason: w.label(),
                count: stats.primary_reads(w),
            })
            .collect(),
        pinned_primary: stats.pinned_count(Destination::Primary),
        pinned_replica: stats.pinned_count(Destination::Replica),
        refused_reads: stats.refused_reads(),
        causal_reads: CausalView {
            outcomes: CausalOutcome::ALL
                .iter()
                .map(|&o| CountView {
                    reason: o.label(),
                    count: stats.causal.count(o),
                })
                .collect(),
            wait_p50_us: stats.causal.wait_percentile_us(50.0),
            wait_p99_us: stats.causal.wait_percentile_us(99.0),
        },
        failover_waits: FailoverView {
            outcomes: FailoverOutcome::ALL
                .iter()
                .map(|&o| CountView {
                    reason: o.label(),
                    count: stats.failover.count(o),
                })
                .collect(),
            longest_us: stats.failover.longest_us(),
        },
        total_primary,
        total_replica,
    }
}
