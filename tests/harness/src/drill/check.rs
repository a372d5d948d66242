//! The checks after a drill: (a) no acknowledged write missing on the primary, unknown ones listed; (b) no read
//! answered by a replica pgsplit held ineligible, none staler than the lag bound, none answered by a primary
//! pgsplit believed a replica; (c) errors only while the fault lasted, by SQLSTATE; (d) exclusion and
//! readmission times against their targets.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use tokio_postgres::NoTls;

use super::ledger::{Ledger, Outcome, Read};
use super::status::{fetch_status, ServerState, Transition};

/// When the fault began and ended, and what pgsplit was told to do.
#[derive(Debug, Clone)]
pub struct Window {
    /// The drill's name (the summary line's first word).
    pub name: String,
    /// The server faulted (pgsplit's name for it), if one.
    pub target: Option<String>,
    /// When the fault was injected, unix ms.
    pub fault_ms: u64,
    /// When recovery began (server restarted, relay restored), unix ms.
    pub restore_ms: u64,
    /// When service was back (e.g. the target eligible again), unix ms.
    pub recovered_ms: u64,
    /// When writes through pgsplit succeeded again after `restore_ms` (a primary fault), unix ms.
    pub writes_back_ms: Option<u64>,
    /// pgsplit's `lag_check_interval`.
    pub probe_interval: Duration,
    /// pgsplit's `probe_timeout`.
    pub probe_timeout: Duration,
    /// pgsplit's `max_lag`.
    pub max_lag: Duration,
    /// The fault makes the target lag (replay paused) rather than fail: it is out once its lag passes max_lag.
    pub lag_fault: bool,
}

impl Window {
    /// Exclusion target: 2 probe intervals + the probe timeout (+ max_lag for a lag fault).
    pub fn exclusion_target(&self) -> Duration {
        let lag = if self.lag_fault {
            self.max_lag
        } else {
            Duration::ZERO
        };
        self.probe_interval * 2 + self.probe_timeout + lag
    }
}

/// What a drill may show and still pass.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Write errors (failed or unknown) allowed during the window (e.g. the primary stopped).
    pub write_errors: bool,
    /// The target must have been excluded (a replica fault that pgsplit must notice).
    pub excluded: bool,
}

/// The outcome of the checks.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The drill's name.
    pub name: String,
    /// Writes sent.
    pub writes: usize,
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Acknowledged writes not on the primary (must be empty).
    pub lost: Vec<i64>,
    /// Writes whose outcome is unknown, and which of them did commit.
    pub unknown: Vec<i64>,
    /// Unknown writes found on the primary.
    pub unknown_committed: usize,
    /// Failed writes that are on the primary nonetheless (must be empty).
    pub failed_committed: Vec<i64>,
    /// Write errors by SQLSTATE (failed and unknown).
    pub write_errors: BTreeMap<String, usize>,
    /// Reads answered.
    pub reads: usize,
    /// Reads answered by the primary.
    pub reads_on_primary: usize,
    /// Read errors by SQLSTATE.
    pub read_errors: BTreeMap<String, usize>,
    /// Reads answered by a replica while pgsplit held it ineligible (descriptions).
    pub ineligible_reads: Vec<String>,
    /// Reads staler than max_lag + detection slack (descriptions).
    pub stale_reads: Vec<String>,
    /// Reads answered by a server not in recovery that pgsplit lists as a replica (descriptions).
    pub misrouted_reads: Vec<String>,
    /// Errors (reads and writes) outside the fault window (descriptions).
    pub errors_outside: Vec<String>,
    /// Time from the fault to the target's exclusion.
    pub exclusion: Option<Duration>,
    /// The exclusion target.
    pub exclusion_target: Duration,
    /// Time from the restore to the target's readmission.
    pub readmission: Option<Duration>,
    /// Time from the restore (primary started, replica promoted) to the first write that succeeded.
    pub writes_back: Option<Duration>,
    /// Latency of answered units: p50 and p99, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Client reconnections.
    pub reconnects: u64,
}

/// Runs the checks. `primary_url` connects straight to the (new) primary; `ports` maps each server's real port
/// to pgsplit's name for it.
pub async fn check(
    ledger: &Ledger,
    window: &Window,
    primary_url: &str,
    admin: SocketAddr,
    ports: &HashMap<u16, String>,
) -> Result<Report, String> {
    let servers = fetch_status(admin).await?;
    let mut r = Report {
        name: window.name.clone(),
        exclusion_target: window.exclusion_target(),
        p50_ms: ledger.latency_ms(50.0),
        p99_ms: ledger.latency_ms(99.0),
        reconnects: ledger.reconnects,
        writes_back: window
            .writes_back_ms
            .map(|at| Duration::from_millis(at.saturating_sub(window.restore_ms))),
        ..Report::default()
    };
    check_writes(ledger, primary_url, &mut r).await?;
    check_reads(ledger, window, &servers, ports, &mut r);
    check_errors(ledger, window, &mut r);
    if let Some(target) = servers
        .iter()
        .find(|s| Some(&s.name) == window.target.as_ref())
    {
        r.exclusion = first_after(&target.transitions, false, window.fault_ms);
        r.readmission = first_after(&target.transitions, true, window.restore_ms);
    }
    Ok(r)
}

fn first_after(ts: &[Transition], eligible: bool, from_ms: u64) -> Option<Duration> {
    ts.iter()
        .find(|t| t.eligible == eligible && t.at_ms >= from_ms)
        .map(|t| Duration::from_millis(t.at_ms - from_ms))
}

async fn check_writes(ledger: &Ledger, primary_url: &str, r: &mut Report) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(primary_url, NoTls)
        .await
        .map_err(|e| format!("connect to the primary: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let ids: Vec<i64> = ledger.writes.iter().map(|w| w.id).collect();
    let rows = client
        .query("SELECT id FROM drill_writes WHERE id = ANY($1)", &[&ids])
        .await
        .map_err(|e| format!("read the ledger's rows: {e}"))?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|row| row.get(0)).collect();
    r.writes = ledger.writes.len();
    for w in &ledger.writes {
        match &w.outcome {
            Outcome::Acknowledged => {
                r.acknowledged += 1;
                if !present.contains(&w.id) {
                    r.lost.push(w.id);
                }
            }
            Outcome::Unknown(code) => {
                r.unknown.push(w.id);
                r.unknown_committed += usize::from(present.contains(&w.id));
                *r.write_errors.entry(code.clone()).or_default() += 1;
            }
            Outcome::Failed(code) => {
                if present.contains(&w.id) {
                    r.failed_committed.push(w.id);
                }
                *r.write_errors.entry(code.clone()).or_default() += 1;
            }
        }
    }
    Ok(())
}

/// Was the server eligible at `at_ms`, by its transitions? Before the oldest one kept (or before this pgsplit
/// started): unknown, taken as eligible (not counted against pgsplit).
fn eligible_at(s: &ServerState, at_ms: u64) -> bool {
    known_eligible_at(s, at_ms).unwrap_or(true)
}

/// [`eligible_at`], `None` when unknown. No transition at all: never eligible. Both times are whole
/// milliseconds, so a transition in the same millisecond as `at_ms` may have come after it: only transitions in
/// an earlier millisecond count.
fn known_eligible_at(s: &ServerState, at_ms: u64) -> Option<bool> {
    match s.transitions.iter().rev().find(|t| t.at_ms < at_ms) {
        Some(t) => Some(t.eligible),
        None if s.transitions.is_empty() => Some(s.eligible),
        None => None,
    }
}

fn check_reads(
    ledger: &Ledger,
    window: &Window,
    servers: &[ServerState],
    ports: &HashMap<u16, String>,
    r: &mut Report,
) {
    let slack =
        (window.max_lag + window.probe_interval * 2 + window.probe_timeout).as_millis() as u64;
    r.reads = ledger.reads.len();
    for read in &ledger.reads {
        let server = ports
            .get(&read.port)
            .and_then(|name| servers.iter().find(|s| &s.name == name));
        let Some(server) = server else { continue };
        if !read.in_recovery {
            r.reads_on_primary += 1;
            // Taking reads as a replica (eligible) while out of recovery. Not counted: a read on the server
            // that is the primary now, placed while it was being promoted and pgsplit had not probed it since
            // (a promotion happens outside pgsplit; such a read sees everything the new primary has, so it is
            // never stale). A server out of recovery that did not become the primary is what this catches.
            if known_eligible_at(server, read.start_ms) == Some(true) && server.role != "primary" {
                r.misrouted_reads.push(describe(read, &server.name));
            }
            continue;
        }
        let became_eligible = server
            .transitions
            .iter()
            .any(|t| t.eligible && t.at_ms >= read.start_ms && t.at_ms <= read.end_ms);
        if !eligible_at(server, read.start_ms) && !became_eligible {
            let since = server
                .transitions
                .iter()
                .rev()
                .find(|t| t.at_ms < read.start_ms)
                .map_or(0, |t| t.at_ms);
            r.ineligible_reads.push(format!(
                "{} (ineligible since {since} ms)",
                describe(read, &server.name)
            ));
        }
        if let Some(stale_ms) = staleness_ms(&ledger.primary_lsn, read) {
            if stale_ms > slack {
                r.stale_reads.push(format!(
                    "{} ({stale_ms} ms behind)",
                    describe(read, &server.name)
                ));
            }
        }
    }
}

/// How long before the read began the primary had already written past what the replica had replayed.
fn staleness_ms(samples: &[(u64, u64)], read: &Read) -> Option<u64> {
    let replayed = read.replay_lsn?;
    let (at, _) = samples.iter().find(|(_, l)| *l > replayed)?;
    read.start_ms.checked_sub(*at)
}

fn describe(read: &Read, name: &str) -> String {
    format!(
        "read at {}..{} ms on {name} (port {}, in recovery {}, replay {:?})",
        read.start_ms, read.end_ms, read.port, read.in_recovery, read.replay_lsn
    )
}

fn check_errors(ledger: &Ledger, window: &Window, r: &mut Report) {
    for e in &ledger.read_errors {
        *r.read_errors.entry(e.code.clone()).or_default() += 1;
    }
    let grace = window.exclusion_target().as_millis() as u64;
    let outside =
        |start: u64, end: u64| end < window.fault_ms || start > window.recovered_ms + grace;
    for e in &ledger.read_errors {
        if outside(e.start_ms, e.end_ms) {
            r.errors_outside
                .push(format!("read {}..{} ms: {}", e.start_ms, e.end_ms, e.code));
        }
    }
    for w in &ledger.writes {
        if w.outcome != Outcome::Acknowledged && outside(w.start_ms, w.end_ms) {
            r.errors_outside.push(format!(
                "write {} {}..{} ms: {:?}",
                w.id, w.start_ms, w.end_ms, w.outcome
            ));
        }
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| d.as_millis().to_string())
}

impl Report {
    /// One line: the numbers the README's table takes.
    pub fn summary(&self) -> String {
        let errors: usize = self.read_errors.values().sum();
        let write_errors: usize = self.write_errors.values().sum();
        format!(
            "drill {}: writes {} acked/{} sent, {} lost, {} unknown ({} committed), {} write errors {:?}; \
             reads {} ({} on primary), {} errors {:?}, {} on ineligible, {} stale, {} misrouted; \
             {} errors outside the fault; excluded in {} ms (target {} ms), readmitted in {} ms, \
             writes back in {} ms; p50 {:.1} ms, p99 {:.1} ms; {} reconnects",
            self.name,
            self.acknowledged,
            self.writes,
            self.lost.len(),
            self.unknown.len(),
            self.unknown_committed,
            write_errors,
            self.write_errors,
            self.reads,
            self.reads_on_primary,
            errors,
            self.read_errors,
            self.ineligible_reads.len(),
            self.stale_reads.len(),
            self.misrouted_reads.len(),
            self.errors_outside.len(),
            ms(self.exclusion),
            self.exclusion_target.as_millis(),
            ms(self.readmission),
            ms(self.writes_back),
            self.p50_ms,
            self.p99_ms,
            self.reconnects,
        )
    }

    /// The violations of the checks under `expect` (empty: the drill passed).
    pub fn violations(&self, expect: &Expect) -> Vec<String> {
        let mut v = Vec::new();
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                v.push(format!(
                    "{} {what}: {:?}",
                    items.len(),
                    &items[..items.len().min(5)]
                ));
            }
        };
        let lost: Vec<String> = self.lost.iter().map(i64::to_string).collect();
        list("acknowledged writes lost", &lost);
        let failed: Vec<String> = self.failed_committed.iter().map(i64::to_string).collect();
        list("writes answered with an error but committed", &failed);
        list("reads on an ineligible replica", &self.ineligible_reads);
        list("stale reads", &self.stale_reads);
        list(
            "reads on a primary believed a replica",
            &self.misrouted_reads,
        );
        list("errors outside the fault window", &self.errors_outside);
        if !expect.write_errors && !self.write_errors.is_empty() {
            v.push(format!("write errors {:?}", self.write_errors));
        }
        if expect.excluded && self.exclusion.is_none() {
            v.push("the target was never excluded".into());
        }
        if self.acknowledged == 0 || self.reads == 0 {
            v.push(format!(
                "the load did nothing: {} writes acknowledged, {} reads",
                self.acknowledged, self.reads
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(transitions: &[(u64, bool)], eligible: bool) -> ServerState {
        ServerState {
            name: "replica1".into(),
            role: "replica".into(),
            up: true,
            eligible,
            transitions: transitions
                .iter()
                .map(|&(at_ms, eligible)| Transition {
                    at_ms,
                    eligible,
                    reason: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn eligibility_at_a_time_follows_the_transitions_and_is_unknown_before_them() {
        let s = server(&[(100, true), (200, false), (300, true)], true);
        assert!(s.transitions.len() == 3);
        assert!(eligible_at(&s, 150));
        assert!(eligible_at(&s, 100), "unknown before the first transition");
        assert!(!eligible_at(&s, 250));
        assert!(eligible_at(&s, 301));
        // In the same millisecond as a transition: it may have come after, so the state before it holds.
        assert!(!eligible_at(&s, 300));
        assert!(eligible_at(&s, 200));
        // Before the oldest transition kept: unknown, not counted against pgsplit.
        assert!(eligible_at(&s, 50));
        // Never eligible: no transition at all.
        assert!(!eligible_at(&server(&[], false), 50));
    }

    fn read(start_ms: u64, replay_lsn: u64) -> Read {
        Read {
            start_ms,
            end_ms: start_ms + 1,
            port: 1,
            in_recovery: true,
            replay_lsn: Some(replay_lsn),
            in_transaction: false,
        }
    }

    #[test]
    fn staleness_is_how_long_before_the_read_the_primary_was_past_its_replay_position() {
        let samples = [(1_000, 10), (2_000, 20), (3_000, 30)];
        assert_eq!(staleness_ms(&samples, &read(5_000, 15)), Some(3_000));
        assert_eq!(staleness_ms(&samples, &read(5_000, 30)), None);
        assert_eq!(staleness_ms(&samples, &read(1_500, 25)), None);
    }

    #[test]
    fn a_read_on_an_ineligible_replica_is_flagged_unless_it_became_eligible_meanwhile() {
        let servers = [server(&[(100, true), (200, false), (400, true)], true)];
        let ports = HashMap::from([(1u16, "replica1".to_string())]);
        let window = Window {
            name: "t".into(),
            target: None,
            fault_ms: 0,
            restore_ms: 0,
            recovered_ms: 0,
            writes_back_ms: None,
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_secs(1),
            max_lag: Duration::from_secs(1),
            lag_fault: false,
        };
        let ledger = Ledger {
            reads: vec![read(150, 0), read(250, 0), read(399, 0)],
            ..Ledger::default()
        };
        let mut r = Report::default();
        check_reads(&ledger, &window, &servers, &ports, &mut r);
        // 250..251 is inside the exclusion; 399..400 ends as it is readmitted.
        assert_eq!(r.ineligible_reads.len(), 1, "{:?}", r.ineligible_reads);
        assert!(r.ineligible_reads[0].contains("250..251"));
    }
}
