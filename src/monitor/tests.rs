//! The monitor's decisions from made-up probe results: time lag, eligibility with hysteresis,
//! the primary's election (down, split brain, failover).

use super::*;
use crate::config::PrimaryUnknown;

#[test]
fn time_lag_is_zero_when_caught_up_and_grows_from_when_the_primary_moved_on() {
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    for k in 0..8 {
        h.push(t0 + Duration::from_millis(250 * k), 100);
    }
    assert_eq!(h.samples.len(), 2, "an idle primary is stored compactly");
    assert_eq!(
        h.lag(100, t0 + Duration::from_secs(5)),
        Duration::ZERO,
        "idle primary: no lag"
    );
    h.push(t0 + Duration::from_millis(2000), 200);
    h.push(t0 + Duration::from_millis(2250), 300);
    let now = t0 + Duration::from_millis(3000);
    assert_eq!(h.lag(100, now), Duration::from_millis(1000));
    assert_eq!(h.lag(250, now), Duration::from_millis(750));
    assert_eq!(h.lag(300, now), Duration::ZERO);
}

fn setup(lag: &str) -> (Monitor, Router) {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[primary]\nhost = \"h\"\n[[replicas]]\nhost = \"h\"\n\
         [[replicas]]\nhost = \"h\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\n\
         password = \"p\"\n[lag]\n{lag}\n"
    );
    let config = Config::from_toml_str(&toml, "<test>").expect("config");
    (Monitor::new(&config), Router::new(&config))
}

fn primary_at(lsn: u64) -> Result<Probe, ProbeError> {
    Ok(Probe {
        current_lsn: Some(lsn),
        ..Probe::default()
    })
}

fn replica_at(lsn: u64) -> Result<Probe, ProbeError> {
    Ok(Probe {
        in_recovery: true,
        receive_lsn: Some(lsn),
        replay_lsn: Some(lsn),
        receiver_up: true,
        ..Probe::default()
    })
}

fn record(m: &Monitor, r: &Router, index: usize, p: Result<Probe, ProbeError>) -> bool {
    m.record(index, p, Duration::from_millis(1), r)
}

#[test]
fn replicas_that_caught_up_take_reads_and_the_primary_takes_writes() {
    let (m, r) = setup("");
    record(&m, &r, 0, primary_at(1000));
    record(&m, &r, 1, replica_at(1000));
    record(&m, &r, 2, replica_at(1000));
    assert!(m.all_probed());
    assert_eq!(r.primary(), Ok(0));
    let s = m.snapshot();
    assert!(!s[0].eligible && s[0].reason == "primary");
    assert!(s[1].eligible && s[2].eligible, "{s:?}");
    assert_eq!(s[1].lag_bytes, Some(0));
    assert!(r.servers.load()[1].is_usable() && r.servers.load()[2].is_usable());
}

#[test]
fn a_replica_too_far_behind_is_excluded_and_readmitted_under_half_the_threshold() {
    let (m, r) = setup("max_lag = \"1h\"\nmax_lag_bytes = 1000\nreadmit_hold = \"0\"");
    record(&m, &r, 0, primary_at(10_000));
    record(&m, &r, 1, replica_at(10_000));
    record(&m, &r, 2, replica_at(8_000));
    let s = m.snapshot();
    assert!(s[1].eligible);
    assert!(
        !s[2].eligible && s[2].reason.contains("over the threshold"),
        "{:?}",
        s[2]
    );
    assert!(!r.servers.load()[2].is_usable());
    record(&m, &r, 2, replica_at(9_400));
    let s = m.snapshot();
    assert!(
        !s[2].eligible,
        "600 bytes behind is above the re-admit mark (500)"
    );
    assert!(
        s[2].reason.starts_with("waiting to be re-admitted"),
        "{:?}",
        s[2].reason
    );
    record(&m, &r, 2, replica_at(9_900));
    let s = m.snapshot();
    assert!(
        s[2].eligible && r.servers.load()[2].is_usable(),
        "{:?}",
        s[2]
    );
    // Out from its first probe (no transition), then admitted.
    assert_eq!(s[2].transitions.len(), 1);
    assert!(s[2].transitions[0].eligible);
}

#[test]
fn a_primary_down_after_its_failures_leaves_no_primary_and_says_why() {
    let (m, r) = setup("down_after = 2");
    record(&m, &r, 0, primary_at(1));
    let timeout = || Err(ProbeError::TimedOut(Duration::from_secs(1)));
    assert!(!record(&m, &r, 0, timeout()), "one failure is not down yet");
    assert!(record(&m, &r, 0, timeout()), "the second marks it down");
    assert!(!record(&m, &r, 0, timeout()), "already down");
    match r.primary() {
        Err(NoPrimary::Down { name, error, .. }) => {
            assert_eq!(name, "primary");
            assert_eq!(error, "probe timed out after 1s");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_servers_out_of_recovery_refuse_writes_and_a_new_primary_takes_over() {
    let (m, r) = setup("");
    record(&m, &r, 0, primary_at(1));
    record(&m, &r, 1, primary_at(1));
    assert_eq!(
        r.primary(),
        Err(NoPrimary::SplitBrain(vec![
            "primary".into(),
            "replica1".into()
        ]))
    );
    record(&m, &r, 0, replica_at(1));
    assert_eq!(r.primary(), Ok(1), "failover: replica1 takes writes");
    record(&m, &r, 2, replica_at(1));
    assert!(
        !m.snapshot()[2].eligible,
        "the new primary's position is not known yet"
    );
    record(&m, &r, 1, primary_at(1));
    record(&m, &r, 2, replica_at(1));
    assert!(m.snapshot()[2].eligible);
    assert!(!m.snapshot()[1].eligible);
}

#[test]
fn while_the_primary_is_unknown_the_lag_is_bounded_by_the_time_since_its_last_sample() {
    let cfg = LagConfig::default(); // max_lag 1s, primary_unknown = "ineligible"
    let t0 = Instant::now();
    let mut h = LsnHistory::default();
    h.push(t0, 100);
    h.push(t0 + Duration::from_millis(500), 200);
    h.push(t0 + Duration::from_millis(1000), 200);
    let last = PrimaryView::Bounded {
        lsn: 200,
        at: t0 + Duration::from_millis(1000),
    };
    let at = |ms: u64| t0 + Duration::from_millis(ms);

    // Caught up at the last sample: the bound is the time since it.
    let v = lag::verdict(&cfg, last, Some(200), &h, at(1400));
    assert!(v.ok_now && v.under_readmit, "{}", v.reason);
    assert_eq!(v.lag, Some(Duration::from_millis(400)));
    assert!(
        v.reason
            .starts_with("primary unknown for 0.4s; lag bound 0.4s"),
        "{}",
        v.reason
    );
    // 100 bytes behind: its lag at the last sample (0.5 s) plus the time since (0.4 s).
    let v = lag::verdict(&cfg, last, Some(100), &h, at(1400));
    assert!(v.ok_now && !v.under_readmit, "{}", v.reason);
    assert_eq!(v.lag, Some(Duration::from_millis(900)));
    assert_eq!(v.lag_bytes, Some(100));
    // Past max_lag: ineligible as configured, saying why.
    let v = lag::verdict(&cfg, last, Some(100), &h, at(1600));
    assert!(!v.ok_now, "{}", v.reason);
    assert!(
        v.reason
            .starts_with("lag unknown: primary unknown for 0.6s; lag bound 1.1s")
            && v.reason.contains("over the threshold"),
        "{}",
        v.reason
    );
    let v = lag::verdict(&cfg, last, Some(200), &h, at(2100));
    assert!(
        !v.ok_now,
        "the caught-up one passes the bound later: {}",
        v.reason
    );
    // ...or serving, with primary_unknown = "serve".
    let serve = LagConfig {
        primary_unknown: PrimaryUnknown::Serve,
        ..LagConfig::default()
    };
    let v = lag::verdict(&serve, last, Some(100), &h, at(1600));
    assert!(
        v.ok_now && v.reason.contains("serving as configured"),
        "{}",
        v.reason
    );
    // Never sampled: unknown, as before.
    let v = lag::verdict(&cfg, PrimaryView::Unknown, Some(200), &h, at(1400));
    assert!(!v.ok_now && v.reason.contains("unknown"), "{}", v.reason);
    // Known: the bound plays no part (an idle primary means no lag).
    let v = lag::verdict(&cfg, PrimaryView::Known(200), Some(200), &h, at(5000));
    assert!(v.ok_now && v.lag == Some(Duration::ZERO), "{}", v.reason);
}

#[test]
fn replicas_keep_serving_after_the_primary_goes_down_until_the_bound_passes_max_lag() {
    let (m, r) = setup("down_after = 1\nmax_lag = \"300ms\"");
    record(&m, &r, 0, primary_at(1000));
    record(&m, &r, 1, replica_at(1000));
    record(&m, &r, 2, replica_at(900));
    assert!(m.snapshot()[1].eligible);
    assert!(record(
        &m,
        &r,
        0,
        Err(ProbeError::TimedOut(Duration::from_secs(1)))
    ));
    assert!(r.primary().is_err(), "no primary");
    // The replicas' WAL receivers stop with the primary: that does not count while it is unknown.
    let orphaned = Ok(Probe {
        receiver_up: false,
        ..replica_at(1000).expect("probe")
    });
    record(&m, &r, 1, orphaned);
    let s = m.snapshot();
    assert!(s[1].eligible, "{}", s[1].reason);
    assert!(
        s[1].reason
            .starts_with("primary unknown for 0.0s; lag bound 0.0s"),
        "{}",
        s[1].reason
    );
    assert!(r.servers.load()[1].is_usable());
    std::thread::sleep(Duration::from_millis(350));
    record(&m, &r, 1, replica_at(1000));
    let s = m.snapshot();
    assert!(
        !s[1].eligible && !r.servers.load()[1].is_usable(),
        "{:?}",
        s[1]
    );
    let last = s[1].transitions.back().expect("a transition");
    assert!(
        !last.eligible && last.reason.contains("over the threshold"),
        "{last:?}"
    );
    // A promoted replica takes writes; the other one is judged against it again.
    record(&m, &r, 1, primary_at(1000));
    assert_eq!(r.primary(), Ok(1));
}

#[test]
fn a_stopped_wal_receiver_excludes_a_replica_after_two_intervals_while_the_primary_answers() {
    let (m, r) = setup("lag_check_interval = \"50ms\"");
    let orphaned = || {
        Ok(Probe {
            receiver_up: false,
            ..replica_at(1000).expect("probe")
        })
    };
    record(&m, &r, 0, primary_at(1000));
    record(&m, &r, 1, orphaned());
    assert!(
        m.snapshot()[1].eligible,
        "not before the primary's own probe could tell: {}",
        m.snapshot()[1].reason
    );
    std::thread::sleep(Duration::from_millis(110));
    record(&m, &r, 0, primary_at(1000));
    record(&m, &r, 1, orphaned());
    let s = m.snapshot();
    assert!(!s[1].eligible, "{:?}", s[1]);
    assert_eq!(s[1].reason, "WAL receiver is not running");
    // Streaming again: the stopped time starts afresh.
    record(&m, &r, 1, replica_at(1000));
    assert_eq!(m.snapshot()[1].receiver_down_since, None);
}
