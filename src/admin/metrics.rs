//! `/metrics`: Prometheus (OpenMetrics) text rendered by the prometheus-client crate from a fresh registry built
//! at each scrape out of the same state `/status` reads.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::classify::Reason;
use crate::state::Shared;
use crate::stats::{CausalOutcome, ClientState, Destination, FailoverOutcome, PrimaryRead};

type Labels = Vec<(&'static str, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type CounterFamily = Family<Labels, Counter>;

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> GaugeFamily {
    let f = GaugeFamily::default();
    registry.register(name, help, f.clone());
    f
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> CounterFamily {
    let f = CounterFamily::default();
    registry.register(name, help, f.clone());
    f
}

/// Renders every metric.
pub fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("pgsplit");
    servers(&mut r, shared);
    pools(&mut r, shared);
    clients(&mut r, shared);
    routing(&mut r, shared);
    reloads(&mut r, shared);
    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

/// Every server: lag, health, role, probe age.
fn servers(r: &mut Registry, shared: &Shared) {
    let lag_seconds = gauge_family(
        r,
        "replica_lag_seconds",
        "Replica lag on pgsplit's clock (absent when unknown)",
    );
    let lag_bytes = gauge_family(
        r,
        "replica_lag_bytes",
        "Replica lag in bytes of WAL (absent when unknown)",
    );
    let up = gauge_family(r, "server_up", "1 when the server answers probes");
    let eligible = gauge_family(r, "server_eligible", "1 when the server may take reads");
    let is_primary = gauge_family(r, "server_primary", "1 for the server that takes writes");
    let probe_age = gauge_family(
        r,
        "server_probe_age_seconds",
        "Age of the last successful probe",
    );
    let primary = router_primary(shared);
    let backends = shared.router.servers.snapshot();
    let live = backends.iter().map(|b| !b.is_drained());
    for ((i, s), _) in shared
        .monitor
        .snapshot()
        .into_iter()
        .enumerate()
        .zip(live)
        .filter(|(_, l)| *l)
    {
        let l: Labels = vec![("server", s.name.clone())];
        if let Some(lag) = s.lag {
            lag_seconds.get_or_create(&l).set(lag.as_secs_f64());
        }
        if let Some(b) = s.lag_bytes {
            lag_bytes.get_or_create(&l).set(b as f64);
        }
        up.get_or_create(&l).set(f64::from(u8::from(s.up)));
        eligible
            .get_or_create(&l)
            .set(f64::from(u8::from(s.eligible)));
        is_primary
            .get_or_create(&l)
            .set(f64::from(u8::from(primary == Some(i))));
        if let Some(t) = s.last_ok {
            probe_age.get_or_create(&l).set(t.elapsed().as_secs_f64());
        }
    }
}

/// Every pool: connections by state, waiting clients.
fn pools(r: &mut Registry, shared: &Shared) {
    let pool_conns = gauge_family(
        r,
        "pool_connections",
        "Server connections by pool and state",
    );
    let pool_waiting = gauge_family(
        r,
        "pool_waiting_clients",
        "Clients waiting for a connection, by pool",
    );
    let backends = shared.router.servers.snapshot();
    for ((user, database), set) in shared.all_pools() {
        for (kind, list) in [("write", set.write_pools()), ("read", set.read_pools())] {
            for (pool, b) in list.iter().zip(backends.iter()) {
                if b.is_drained() {
                    continue;
                }
                let st = pool.stats();
                let server = b.name.clone();
                let base: Labels = vec![
                    ("user", user.clone()),
                    ("database", database.clone()),
                    ("server", server),
                    ("pool", kind.into()),
                ];
                for (state, n) in [("active", st.active), ("idle", st.idle)] {
                    let mut l = base.clone();
                    l.push(("state", state.into()));
                    pool_conns.get_or_create(&l).set(n as f64);
                }
                pool_waiting.get_or_create(&base).set(st.waiting as f64);
            }
        }
    }
}

/// Clients by state.
fn clients(r: &mut Registry, shared: &Shared) {
    let clients = gauge_family(r, "clients", "Client connections by state");
    let list = shared.stats.clients.list();
    clients
        .get_or_create(&vec![("state", "connected".into())])
        .set(list.len() as f64);
    for s in [ClientState::Active, ClientState::Waiting, ClientState::Idle] {
        let n = list.iter().filter(|c| c.state() == s).count();
        clients
            .get_or_create(&vec![("state", s.label().into())])
            .set(n as f64);
    }
}

/// Routing counters, latency, errors by class, classifier cache.
fn routing(r: &mut Registry, shared: &Shared) {
    let stats = &shared.stats;
    let routed = counter_family(
        r,
        "statements_routed",
        "Units of work routed, by destination and reason",
    );
    for (dest, label) in [
        (Destination::Primary, "primary"),
        (Destination::Replica, "replica"),
    ] {
        for reason in Reason::ALL {
            let n = stats.count(dest, reason);
            routed
                .get_or_create(&vec![
                    ("destination", label.into()),
                    ("reason", reason.label().into()),
                ])
                .inc_by(n);
        }
        routed
            .get_or_create(&vec![
                ("destination", label.into()),
                ("reason", "transaction_pinned".into()),
            ])
            .inc_by(stats.pinned_count(dest));
    }
    let primary_reads = counter_family(
        r,
        "reads_on_primary",
        "Reads that ran on the primary, by why",
    );
    for w in PrimaryRead::ALL {
        primary_reads
            .get_or_create(&vec![("reason", w.label().into())])
            .inc_by(stats.primary_reads(w));
    }
    let refused = Counter::<u64>::default();
    refused.inc_by(stats.refused_reads());
    r.register(
        "reads_refused",
        "Reads refused because no server could take them",
        refused,
    );

    let causal = counter_family(
        r,
        "causal_reads",
        "Reads that had to see the client's own writes (or a given LSN), by how they were served",
    );
    for o in CausalOutcome::ALL {
        causal
            .get_or_create(&vec![("outcome", o.label().into())])
            .inc_by(stats.causal.count(o));
    }
    r.register(
        "causal_wait_seconds",
        "How long reads waited for a replica to reach their floor (those that waited)",
        stats.causal.waits.clone(),
    );

    let failover = counter_family(
        r,
        "failover_waits",
        "Units that found no primary and waited for one (timeouts.failover_wait), by how the wait ended",
    );
    for o in FailoverOutcome::ALL {
        failover
            .get_or_create(&vec![("outcome", o.label().into())])
            .inc_by(stats.failover.count(o));
    }
    r.register(
        "failover_wait_seconds",
        "How long units waited for a primary during a failover",
        stats.failover.waits.clone(),
    );

    r.register(
        "query_duration_seconds",
        "Time a unit of work held a server connection, by destination",
        stats.latency.prometheus(),
    );

    let errors = counter_family(
        r,
        "errors",
        "ErrorResponses sent to clients, by SQLSTATE class",
    );
    for (class, n) in stats.errors.snapshot() {
        errors.get_or_create(&vec![("class", class)]).inc_by(n);
    }
    let (hits, misses) = shared.classifier.cache_counts();
    let cache = counter_family(r, "classifier_cache", "Classifier decision cache lookups");
    cache
        .get_or_create(&vec![("result", "hit".into())])
        .inc_by(hits);
    cache
        .get_or_create(&vec![("result", "miss".into())])
        .inc_by(misses);
}

/// Configuration reloads by result.
fn reloads(r: &mut Registry, shared: &Shared) {
    let log = shared.reload_log();
    let reloads = counter_family(r, "reloads", "Configuration reloads, by result");
    for (result, n) in [("ok", log.ok), ("refused", log.refused)] {
        reloads
            .get_or_create(&vec![("result", result.into())])
            .inc_by(n);
    }
}

fn router_primary(shared: &Shared) -> Option<usize> {
    shared.router.primary().ok()
}
