//! The monitor's decisions from made-up probe results: time lag, eligibility with hysteresis,
//! the primary's election (down, split brain, failover).

use super::*;

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
