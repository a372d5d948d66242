//! Probes every server on its own side connection each `lag_check_interval`: its role (in recovery or not), its
//! WAL positions, whether replay is paused and whether its WAL receiver runs. From that it decides which server
//! takes writes, each replica's lag in bytes and in time, and which replicas may take reads (docs/ARCHITECTURE.md §5).
//!
//! Time lag is measured on pgsplit's own clock: the monitor keeps recent (time, primary LSN) samples, and a
//! replica's lag is how long ago the primary was first seen past the position the replica has replayed — zero
//! when it has replayed everything, so an idle primary means no lag, and no clock synchronisation is needed.
//! While the primary cannot be probed, a replica's lag is bounded by its lag at the last sample plus the time
//! since (`lag.rs`), and every server is probed more often until a primary is found.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::causal::Lsn;
use arc_swap::ArcSwap;

use crate::config::{Config, LagConfig, LiveConfig};
use crate::router::{Backend, NoPrimary, Router};
use crate::side::SideError;

mod lag;
use lag::{LsnHistory, PrimaryView, Verdict};

/// How long primary LSN samples are kept.
const HISTORY: Duration = Duration::from_secs(600);
/// Eligibility transitions kept per server.
const TRANSITIONS: usize = 32;
/// While no server is the primary, servers are probed this many times as often as `lag_check_interval` says.
const FAILOVER_SPEEDUP: u32 = 5;
/// Longest back-off between probes of a server that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const PROBE: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
     EXISTS (SELECT 1 FROM pg_stat_wal_receiver)";

/// A server's role as last probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not probed yet, or the probe failed.
    Unknown,
    /// Out of recovery: takes writes.
    Primary,
    /// In recovery: a streaming replica.
    Replica,
}

impl Role {
    /// A stable label.
    pub fn label(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// What one probe read.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` (primary).
    pub current_lsn: Option<u64>,
    /// `pg_last_wal_receive_lsn()` (replica).
    pub receive_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()` (replica).
    pub replay_lsn: Option<u64>,
    /// `pg_is_wal_replay_paused()`.
    pub replay_paused: bool,
    /// A WAL receiver process runs.
    pub receiver_up: bool,
}

/// A failed probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The side connection could not be opened.
    #[error(transparent)]
    Connect(#[from] SideError),
    /// The probe query failed.
    #[error("{0}")]
    Query(#[source] tokio_postgres::Error),
    /// No answer within `probe_timeout`.
    #[error("probe timed out after {0:?}")]
    TimedOut(Duration),
}

impl ProbeError {
    /// Whether the server refused the connection (it is down at once, without waiting for `down_after`).
    pub fn refused(&self) -> bool {
        matches!(self, ProbeError::Connect(e) if e.refused())
    }
}

/// One eligibility change.
#[derive(Debug, Clone)]
pub struct Transition {
    /// When.
    pub at: SystemTime,
    /// Eligible after it.
    pub eligible: bool,
    /// Why.
    pub reason: String,
}

/// What the monitor knows of one server.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// Configured name.
    pub name: String,
    /// host:port.
    pub address: String,
    /// Role from the last successful probe (unknown while down).
    pub role: Role,
    /// Reachable.
    pub up: bool,
    /// May take reads.
    pub eligible: bool,
    /// Why it is (not) eligible.
    pub reason: String,
    /// Bytes of WAL behind the primary.
    pub lag_bytes: Option<u64>,
    /// Time behind the primary.
    pub lag: Option<Duration>,
    /// The last probe's readings.
    pub probe: Probe,
    /// When the last probe succeeded.
    pub last_ok: Option<Instant>,
    /// How long the last successful probe took.
    pub probe_latency: Option<Duration>,
    /// Consecutive failed probes.
    pub failures: u32,
    /// The last probe error.
    pub last_error: Option<String>,
    /// Recent eligibility changes, oldest first.
    pub transitions: VecDeque<Transition>,
    /// Removed from the configuration by a reload: no longer probed, takes nothing new (draining).
    pub retired: bool,
    below_since: Option<Instant>,
    /// Since when its probes have found its WAL receiver stopped.
    receiver_down_since: Option<Instant>,
    probed: bool,
}

struct State {
    servers: Vec<ServerStatus>,
    history: LsnHistory,
    /// The server whose LSN the history follows.
    owner: Option<usize>,
    split_brain: bool,
}

/// The shared view of every server's health and lag.
pub struct Monitor {
    config: ArcSwap<LagConfig>,
    state: Mutex<State>,
}

impl Monitor {
    /// A WAL position at or past where the primary was at `at` (from the probes' samples), if one was taken since.
    /// A replica that has replayed it is at most `now - at` behind.
    pub fn primary_position_since(&self, at: Instant) -> Option<u64> {
        self.lock().history.since(at)
    }

    /// A monitor for the configured servers (nothing probed yet).
    pub fn new(config: &Config) -> Monitor {
        let servers = config
            .servers()
            .map(|s| unprobed(s.display_name(), s.address()))
            .collect();
        Monitor {
            config: ArcSwap::from_pointee(config.lag.clone()),
            state: Mutex::new(State {
                servers,
                history: LsnHistory::default(),
                owner: Some(0),
                split_brain: false,
            }),
        }
    }

    /// Uses these lag settings from the next probe on (reload).
    pub fn set_lag(&self, lag: &LagConfig) {
        self.config.store(Arc::new(lag.clone()));
    }

    /// Follows a server a reload added (at the router's next index): not probed yet, so it takes no reads.
    pub fn add_server(&self, b: &Backend) {
        let mut st = self.lock();
        while st.servers.len() < b.index {
            st.servers.push(unprobed(String::new(), String::new()));
        }
        if st.servers.len() == b.index {
            st.servers.push(unprobed(b.name.clone(), b.address.clone()));
        }
    }

    /// Stops following server `index` (reload removed it): it takes nothing new and is no longer probed.
    pub fn retire(&self, index: usize) {
        if let Some(s) = self.lock().servers.get_mut(index) {
            s.retired = true;
            s.eligible = false;
            s.up = false;
            s.role = Role::Unknown;
            s.reason = "removed from the configuration (draining)".into();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of every server's status.
    pub fn snapshot(&self) -> Vec<ServerStatus> {
        self.lock().servers.clone()
    }

    /// Whether every server has been probed at least once.
    pub fn all_probed(&self) -> bool {
        self.lock().servers.iter().all(|s| s.probed || s.retired)
    }

    /// Records a probe of server `index` and re-evaluates roles and eligibility. Returns true when the server
    /// has just been marked down.
    pub fn record(
        &self,
        index: usize,
        result: Result<Probe, ProbeError>,
        latency: Duration,
        router: &Router,
    ) -> bool {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(s) = st.servers.get_mut(index).filter(|s| !s.retired) else {
            return false;
        };
        s.probed = true;
        let was_up = s.up;
        match result {
            Ok(p) => {
                if !s.up && s.failures > 0 {
                    tracing::info!(server = %s.name, "server is up again");
                }
                s.up = true;
                s.failures = 0;
                s.last_error = None;
                s.last_ok = Some(now);
                s.probe_latency = Some(latency);
                s.role = if p.in_recovery {
                    Role::Replica
                } else {
                    Role::Primary
                };
                s.receiver_down_since = if p.in_recovery && !p.receiver_up {
                    Some(s.receiver_down_since.unwrap_or(now))
                } else {
                    None
                };
                s.probe = p;
            }
            Err(e) => {
                s.failures += 1;
                if e.refused() || s.failures >= self.config.load().down_after {
                    if s.up {
                        tracing::warn!(server = %s.name, failures = s.failures, error = %e, "server is down");
                    }
                    s.up = false;
                    s.role = Role::Unknown;
                }
                s.last_error = Some(e.to_string());
            }
        }
        let went_down = was_up && !st.servers[index].up;
        self.evaluate(&mut st, index, now, router);
        went_down
    }

    fn evaluate(&self, st: &mut State, probed: usize, now: Instant, router: &Router) {
        let cfg = self.config.load_full();
        let stale = cfg.lag_check_interval * 4 + cfg.probe_timeout;
        let fresh = |s: &ServerStatus| {
            !s.retired && s.up && s.last_ok.is_some_and(|t| now.duration_since(t) <= stale)
        };

        elect_primary(st, router, &fresh);

        // The primary's position.
        if Some(probed) == st.owner && fresh(&st.servers[probed]) {
            if let Some(lsn) = st.servers[probed].probe.current_lsn {
                st.history.push(now, lsn);
            }
        }
        let owner_fresh = st.owner.is_some_and(|o| fresh(&st.servers[o]));
        let primary = PrimaryView::of(&st.history, owner_fresh, now, stale);

        // Which replicas may take reads.
        let backends = router.servers.load();
        for i in 0..st.servers.len() {
            let s = &st.servers[i];
            if s.retired {
                continue;
            }
            // A WAL receiver that stopped with the primary does not count until the primary's own probe could
            // tell (two intervals); meanwhile the lag, judged against the primary's samples, still bounds it.
            let orphaned = primary.is_known()
                && s.receiver_down_since
                    .is_some_and(|t| now.duration_since(t) >= cfg.lag_check_interval * 2);
            let refused = refusal(s, router.primary() == Ok(i), fresh(s), orphaned);
            let verdict = match refused {
                Some(reason) => Verdict::no(reason),
                None => lag::verdict(&cfg, primary, s.probe.replay_lsn, &st.history, now),
            };
            let eligible = self.admit(&mut st.servers[i], verdict, now, cfg.readmit_hold);
            if let Some(b) = backends.get(i) {
                b.set_eligible(eligible && !b.is_retired());
            }
        }
    }

    /// Applies a verdict with hysteresis: an eligible replica leaves as soon as it fails; one that is out comes
    /// back once under the re-admit threshold for `readmit_hold` (at once if it was never excluded). Returns
    /// whether it is eligible now.
    fn admit(&self, s: &mut ServerStatus, verdict: Verdict, now: Instant, hold: Duration) -> bool {
        let Verdict {
            ok_now,
            under_readmit,
            reason,
            lag,
            lag_bytes,
        } = verdict;
        s.lag = lag;
        s.lag_bytes = lag_bytes;
        let eligible = if s.eligible {
            s.below_since = None;
            ok_now
        } else if under_readmit {
            let since = *s.below_since.get_or_insert(now);
            // A replica that was never excluded is admitted at once; one that was, after the hold time.
            s.transitions.is_empty() || now.duration_since(since) >= hold
        } else {
            s.below_since = None;
            false
        };
        if eligible != s.eligible {
            tracing::info!(server = %s.name, eligible, reason = %reason, "replica eligibility changed");
            s.transitions.push_back(Transition {
                at: SystemTime::now(),
                eligible,
                reason: reason.clone(),
            });
            if s.transitions.len() > TRANSITIONS {
                s.transitions.pop_front();
            }
        }
        s.eligible = eligible;
        s.reason = if eligible || !ok_now {
            reason
        } else {
            format!("waiting to be re-admitted ({reason})")
        };
        eligible
    }
}

/// Decides which server takes writes: the one fresh server out of recovery; none (and why) when there is no
/// such server or more than one (split brain). A new primary restarts the LSN history.
fn elect_primary(st: &mut State, router: &Router, fresh: &dyn Fn(&ServerStatus) -> bool) {
    let primaries: Vec<usize> = (0..st.servers.len())
        .filter(|&i| fresh(&st.servers[i]) && st.servers[i].role == Role::Primary)
        .collect();
    match primaries.as_slice() {
        [p] => {
            let p = *p;
            if st.owner != Some(p) {
                tracing::warn!(server = %st.servers[p].name, "new primary: writes now go to it");
                st.history = LsnHistory::default();
                st.owner = Some(p);
            }
            st.split_brain = false;
            router.set_primary(Ok(p));
        }
        [] => {
            let reason = match st.owner.map(|o| &st.servers[o]) {
                Some(o) if !o.up => NoPrimary::Down {
                    name: o.name.clone(),
                    address: o.address.clone(),
                    error: o.last_error.as_deref().unwrap_or("no answer").to_string(),
                },
                _ => NoPrimary::NoneOutOfRecovery,
            };
            router.set_primary(Err(reason));
        }
        many => {
            let names: Vec<String> = many.iter().map(|&i| st.servers[i].name.clone()).collect();
            if !st.split_brain {
                tracing::error!(servers = ?names, "SPLIT BRAIN: more than one server is out of recovery; refusing writes");
                st.split_brain = true;
            }
            router.set_primary(Err(NoPrimary::SplitBrain(names)));
        }
    }
}

/// Why a server may not take reads whatever its lag, if it may not.
fn refusal(
    s: &ServerStatus,
    is_primary: bool,
    fresh: bool,
    receiver_stopped: bool,
) -> Option<String> {
    let last_error = || s.last_error.as_deref().unwrap_or("no answer");
    if is_primary {
        Some("primary".into())
    } else if !s.up {
        Some(format!("down: {}", last_error()))
    } else if s.failures > 0 {
        Some(format!("last probe failed: {}", last_error()))
    } else if !fresh {
        Some("no fresh probe".into())
    } else if s.role != Role::Replica {
        Some("not in recovery".into())
    } else if receiver_stopped {
        Some("WAL receiver is not running".into())
    } else {
        None
    }
}

/// Runs the probe loops of every server until the process ends (a server a reload adds gets its loop; a retired
/// one's loop ends): each probe is recorded in `monitor`, which sets the primary and the replicas' read
/// eligibility on `router`; `on_down(index)` runs when a server has just been marked down (the listener closes its
/// idle pooled connections). The lag settings are read from `config` at each probe.
pub async fn run(
    config: LiveConfig,
    monitor: Arc<Monitor>,
    router: Arc<Router>,
    on_down: impl Fn(usize) + Send + Sync + 'static,
) {
    let on_down: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(on_down);
    let r = router.clone();
    crate::router::per_server(&r, move |index| {
        probe_loop(
            config.clone(),
            monitor.clone(),
            router.clone(),
            on_down.clone(),
            index,
        )
    })
    .await
}

async fn probe_loop(
    config: LiveConfig,
    monitor: Arc<Monitor>,
    router: Arc<Router>,
    on_down: Arc<dyn Fn(usize) + Send + Sync>,
    index: usize,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut backoff = config.load().lag.lag_check_interval;
    loop {
        let Some(backend) = router.servers.get(index).filter(|b| !b.is_retired()) else {
            return;
        };
        let config = config.load_full();
        let cfg = &config.lag;
        let started = Instant::now();
        let mut result = timed_probe(&config, &backend, &mut client).await;
        if matches!(result, Err(ProbeError::Query(_)))
            && client.as_ref().is_some_and(|c| c.is_closed())
        {
            // The side connection was lost (a server that died closes it): a new one tells at once whether the
            // server is gone (a refused connection marks it down) or was only restarted.
            client = None;
            result = timed_probe(&config, &backend, &mut client).await;
        }
        let failed = result.is_err();
        if failed {
            client = None;
        }
        if let Ok(p) = &result {
            let position = if p.in_recovery {
                p.replay_lsn
            } else {
                p.current_lsn
            };
            if let Some(lsn) = position {
                crate::freshness::probed(&router, index, p.in_recovery, lsn, started);
            }
        }
        if monitor.record(index, result, started.elapsed(), &router) {
            on_down(index);
        }
        // A server that does not answer is probed again with a growing back-off (one interval after the first
        // failure, then twice as long each time).
        let mut wait = if failed {
            let wait = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            wait
        } else {
            backoff = cfg.lag_check_interval;
            cfg.lag_check_interval.saturating_sub(started.elapsed())
        };
        if router.primary().is_err() {
            // No primary (a failover): every server, the old primary included, is probed FAILOVER_SPEEDUP
            // times as often, so writes waiting for one (`failover_wait`) resume soon after it appears.
            backoff = cfg.lag_check_interval;
            wait = wait.min(cfg.lag_check_interval / FAILOVER_SPEEDUP);
        }
        tokio::time::sleep(wait).await;
    }
}

/// One probe within `probe_timeout`.
async fn timed_probe(
    config: &Config,
    backend: &Backend,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Probe, ProbeError> {
    let timeout = config.lag.probe_timeout;
    match tokio::time::timeout(timeout, probe(config, backend, client)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::TimedOut(timeout)),
    }
}

async fn probe(
    config: &Config,
    backend: &Backend,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Probe, ProbeError> {
    let c = match client {
        Some(c) if !c.is_closed() => c,
        _ => client.insert(
            crate::side::connect_server(
                config,
                backend,
                "pgsplit monitor",
                config.lag.probe_timeout,
            )
            .await?,
        ),
    };
    let row = c.query_one(PROBE, &[]).await.map_err(ProbeError::Query)?;
    let lsn = |i: usize| {
        row.get::<_, Option<String>>(i)
            .as_deref()
            .and_then(Lsn::parse)
            .map(|l| l.0)
    };
    Ok(Probe {
        in_recovery: row.get(0),
        current_lsn: lsn(1),
        receive_lsn: lsn(2),
        replay_lsn: lsn(3),
        replay_paused: row.get(4),
        receiver_up: row.get(5),
    })
}

/// A server's status before its first probe.
fn unprobed(name: String, address: String) -> ServerStatus {
    ServerStatus {
        name,
        address,
        role: Role::Unknown,
        up: false,
        eligible: false,
        reason: "not probed yet".into(),
        lag_bytes: None,
        lag: None,
        probe: Probe::default(),
        last_ok: None,
        probe_latency: None,
        failures: 0,
        last_error: None,
        transitions: VecDeque::new(),
        retired: false,
        below_since: None,
        receiver_down_since: None,
        probed: false,
    }
}

#[cfg(test)]
mod tests;
