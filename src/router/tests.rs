//! The read balancers, without servers: the monitor's verdicts are set by hand and `choose_read` is asked.

use super::*;

/// A router over a primary and replicas of the given weights, every replica eligible.
fn router(routing: &str, weights: &[u32]) -> Router {
    let mut toml =
        String::from("listen = \"127.0.0.1:0\"\n[primary]\nhost = \"127.0.0.1\"\nport = 5432\n");
    for (i, w) in weights.iter().enumerate() {
        toml.push_str(&format!(
            "[[replicas]]\nhost = \"127.0.0.1\"\nport = {}\nweight = {w}\n",
            5433 + i
        ));
    }
    toml.push_str(
        "[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"secret\"\n",
    );
    toml.push_str(&format!("[routing]\n{routing}\n"));
    let config = Config::from_toml_str(&toml, "<test>").expect("config");
    let router = Router::new(&config);
    for b in &router.servers.load()[1..] {
        b.set_eligible(true);
    }
    router
}

/// How many of `n` reads each server takes (index 0: the primary).
fn spread(router: &Router, n: usize) -> Vec<usize> {
    let mut counts = vec![0; router.servers.len()];
    for _ in 0..n {
        match router.choose_read(None) {
            ReadTarget::Replica(i) => counts[i] += 1,
            ReadTarget::Primary(_) => counts[0] += 1,
            ReadTarget::Refused(m) => panic!("refused: {m}"),
            ReadTarget::Behind => panic!("no floor was asked for"),
        }
    }
    counts
}

#[test]
fn round_robin_alternates_between_equal_replicas() {
    let r = router("balancer = \"round_robin\"", &[1, 1]);
    let picks: Vec<ReadTarget> = (0..6).map(|_| r.choose_read(None)).collect();
    for pair in picks.windows(2) {
        assert_ne!(pair[0], pair[1], "equal weights alternate: {picks:?}");
    }
    assert_eq!(spread(&r, 100), vec![0, 50, 50]);
}

#[test]
fn round_robin_honours_weights_smoothly() {
    let r = router("balancer = \"round_robin\"", &[1, 3]);
    assert_eq!(spread(&r, 400), vec![0, 100, 300]);
    // Smooth: the light replica is never starved for more than one cycle of 4.
    let picks: Vec<ReadTarget> = (0..16).map(|_| r.choose_read(None)).collect();
    for cycle in picks.chunks(4) {
        assert_eq!(
            cycle
                .iter()
                .filter(|t| **t == ReadTarget::Replica(1))
                .count(),
            1,
            "{picks:?}"
        );
    }
}

#[test]
fn round_robin_skips_ineligible_failed_and_excluded_replicas() {
    let r = router("balancer = \"round_robin\"", &[1, 1, 1]);
    r.servers.load()[2].set_eligible(false);
    assert_eq!(spread(&r, 60), vec![0, 30, 0, 30]);
    r.servers.load()[3].mark_failed();
    assert_eq!(spread(&r, 10), vec![0, 10, 0, 0]);
    r.servers.load()[3].mark_ok();
    for _ in 0..10 {
        assert_eq!(r.choose_read(Some(1)), ReadTarget::Replica(3));
    }
}

#[test]
fn least_connections_picks_the_least_loaded_per_weight() {
    let r = router("balancer = \"least_connections\"", &[1, 1]);
    let _busy = Load::new(&r.servers.load()[1]);
    for _ in 0..20 {
        assert_eq!(r.choose_read(None), ReadTarget::Replica(2));
    }
    // Weight 2 with two in flight is as loaded as weight 1 with one: ties.
    let r = router("balancer = \"least_connections\"", &[1, 2]);
    let _a = Load::new(&r.servers.load()[1]);
    let _b = Load::new(&r.servers.load()[2]);
    assert_eq!(r.choose_read(None), ReadTarget::Replica(2), "1/2 < 1/1");
    let _c = Load::new(&r.servers.load()[2]);
    let counts = spread(&r, 400);
    assert!(
        counts[1] > 100 && counts[2] > 100,
        "ties spread: {counts:?}"
    );
}

#[test]
fn least_connections_spreads_ties_and_counts_only_live_loads() {
    let r = router("balancer = \"least_connections\"", &[1, 1, 1]);
    // Uniform: each of 3 takes 1000 of 3000 (sd 26); the primary at index 0 must not give replica 1 a double share.
    let counts = spread(&r, 3000);
    assert!(
        counts[1..].iter().all(|&n| (850..1150).contains(&n)),
        "{counts:?}"
    );
    {
        let _a = Load::new(&r.servers.load()[1]);
        let _b = Load::new(&r.servers.load()[2]);
        assert_eq!(r.choose_read(None), ReadTarget::Replica(3));
    }
    assert!(r
        .servers
        .load()
        .iter()
        .all(|b| b.outstanding.load(Ordering::Relaxed) == 0));
    r.servers.load()[3].set_eligible(false);
    let counts = spread(&r, 400);
    assert_eq!(
        counts[3], 0,
        "an ineligible replica takes nothing: {counts:?}"
    );
}

#[test]
fn random_honours_weights_and_skips_ineligible_replicas() {
    let r = router("balancer = \"random\"", &[1, 3]);
    let counts = spread(&r, 4000);
    assert!(
        (700..1300).contains(&counts[1]) && (2700..3300).contains(&counts[2]),
        "{counts:?}"
    );
    r.servers.load()[2].set_eligible(false);
    assert_eq!(spread(&r, 100), vec![0, 100, 0]);
}

#[test]
fn the_primary_is_never_read_as_a_replica() {
    let r = router("balancer = \"round_robin\"", &[1, 1]);
    // After a failover replica 1 takes writes; a stale eligibility flag must not send it reads as a replica.
    r.set_primary(Ok(1));
    assert_eq!(spread(&r, 10), vec![0, 0, 10]);
}

#[test]
fn without_an_eligible_replica_reads_fall_back_or_are_refused() {
    let r = router("", &[1]);
    r.servers.load()[1].set_eligible(false);
    assert_eq!(
        r.choose_read(None),
        ReadTarget::Primary(PrimaryRead::NoEligibleReplica)
    );
    let r = router("fallback = \"error\"", &[1]);
    r.servers.load()[1].set_eligible(false);
    assert_eq!(
        r.choose_read(None),
        ReadTarget::Refused(NoReadServer::NoneEligible(vec!["replica1".into()]))
    );
    let r = router("primary_reads = \"never\"", &[]);
    let refused = r.choose_read(None);
    assert_eq!(
        refused,
        ReadTarget::Refused(NoReadServer::NoReplicaConfigured)
    );
    let ReadTarget::Refused(e) = refused else {
        unreachable!()
    };
    assert_eq!(
        e.to_string(),
        "pgsplit cannot serve this read: no replica is configured, and reads may not fall back to the primary"
    );
    let r = router("", &[]);
    assert_eq!(
        r.choose_read(None),
        ReadTarget::Primary(PrimaryRead::NoReplicas)
    );
}

#[test]
fn included_primary_takes_its_weighted_share_and_split_off_sends_all_to_it() {
    let r = router(
        "balancer = \"round_robin\"\nprimary_reads = \"include\"",
        &[1],
    );
    let picks: Vec<ReadTarget> = (0..4).map(|_| r.choose_read(None)).collect();
    assert_eq!(
        picks
            .iter()
            .filter(|t| **t == ReadTarget::Primary(PrimaryRead::Included))
            .count(),
        2,
        "{picks:?}"
    );
    let r = router("read_write_split = false", &[1]);
    assert_eq!(
        r.choose_read(None),
        ReadTarget::Primary(PrimaryRead::SplitOff)
    );
}

#[test]
fn no_primary_says_why() {
    let r = router("", &[1]);
    assert_eq!(r.primary(), Ok(0));
    r.set_primary(Err(NoPrimary::SplitBrain(vec!["a".into(), "b".into()])));
    let e = r.primary().unwrap_err();
    assert_eq!(
        e.to_string(),
        "split brain: a and b are all out of recovery; writes are refused until only one is"
    );
    r.set_primary(Ok(1));
    assert_eq!(r.primary(), Ok(1));
}

#[test]
fn a_read_with_a_floor_goes_only_to_replicas_known_to_have_replayed_it() {
    let r = router("balancer = \"round_robin\"", &[1, 1]);
    let at = Instant::now();
    r.servers.load()[1].note_position(true, 100, at);
    r.servers.load()[2].note_position(true, 300, at);
    for _ in 0..4 {
        assert_eq!(r.choose_read_from(None, 200), ReadTarget::Replica(2));
    }
    // None there yet: behind (the caller may wait); an excluded or failed one does not count.
    assert_eq!(r.choose_read_from(None, 400), ReadTarget::Behind);
    assert_eq!(r.choose_read_from(Some(2), 200), ReadTarget::Behind);
    r.servers.load()[1].set_eligible(false);
    r.servers.load()[2].set_eligible(false);
    assert_eq!(
        r.choose_read_from(None, 200),
        ReadTarget::Primary(PrimaryRead::NoEligibleReplica)
    );
}

#[test]
fn positions_grow_within_a_role_and_start_afresh_when_it_changes() {
    let r = router("", &[1]);
    let b = &r.servers.load()[1];
    let before = Instant::now();
    assert!(!b.position_read_since(before));
    std::thread::sleep(Duration::from_millis(2));
    assert!(b.note_position(true, 500, Instant::now()));
    assert!(
        !b.note_position(true, 400, Instant::now()),
        "an older answer does not lower it"
    );
    assert_eq!(b.position(), 500);
    assert!(b.position_read_since(before));
    // Promoted (or rebuilt as a replica of another timeline): its own WAL position from now on.
    assert!(b.note_position(false, 450, Instant::now()));
    assert_eq!(b.position(), 450);
}

#[test]
fn a_retired_server_takes_no_reads_and_an_added_one_gets_the_next_index() {
    let r = router("balancer = \"round_robin\"", &[1, 1]);
    r.retire(1);
    let counts = spread(&r, 100);
    assert_eq!(counts[1], 0, "{counts:?}");
    assert!(r.servers.load()[1].is_retired());
    let added = r.add_server(&ServerConfig {
        name: Some("r3".into()),
        host: "127.0.0.1".into(),
        port: 6000,
        weight: 1,
        tls_mode: None,
        tls_ca_file: None,
        tls_server_name: None,
    });
    assert_eq!(added.index, 3);
    assert_eq!(r.servers.len(), 4);
    assert!(!added.is_usable(), "no reads before its first good probe");
    added.set_eligible(true);
    let counts = spread(&r, 100);
    assert_eq!((counts[1], counts[2], counts[3]), (0, 50, 50), "{counts:?}");
    assert_eq!(r.servers.by_name("r3").map(|b| b.index), Some(3));
    assert!(r.servers.by_name("replica1").is_none(), "retired");
}

#[test]
fn weights_and_routing_settings_change_live() {
    let r = router("balancer = \"round_robin\"", &[1, 1]);
    r.servers.load()[2].set_weight(3);
    let counts = spread(&r, 400);
    assert_eq!((counts[1], counts[2]), (100, 300), "{counts:?}");
    let routing = crate::config::RoutingConfig {
        read_write_split: false,
        ..Default::default()
    };
    r.set_routing(&routing);
    assert_eq!(
        r.choose_read(None),
        ReadTarget::Primary(PrimaryRead::SplitOff)
    );
}

#[tokio::test]
async fn a_pool_set_grows_with_the_servers_and_never_panics_on_an_unknown_index() {
    let r = router("", &[1]);
    let toml =
        "[primary]\nhost = \"h\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\n\
                password = \"secret\"\n[pools]\nread_pool_size = 2\n";
    let config = Config::from_toml_str(toml, "<test>").expect("config");
    let (user, db) = (&config.users[0], &config.databases[0]);
    let set = PoolSet::new(&config, user, db, &r.servers.snapshot());
    assert!(set.pool(Target::Replica(2)).is_none());
    r.add_server(&ServerConfig {
        name: Some("r2".into()),
        host: "127.0.0.1".into(),
        port: 6000,
        weight: 1,
        tls_mode: None,
        tls_ca_file: None,
        tls_server_name: None,
    });
    r.retire(1);
    let config = Config {
        pools: crate::config::PoolsConfig {
            read_pool_size: 5,
            ..config.pools.clone()
        },
        ..config.clone()
    };
    set.apply(&config, user, db, &r.servers.snapshot());
    let pool = set
        .pool(Target::Replica(2))
        .expect("the added server's pool");
    assert_eq!(pool.stats().size, 5);
    assert_eq!(
        set.pool(Target::Replica(0)).map(|p| p.stats().size),
        Some(5)
    );
    assert_eq!(set.all().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_unit_waiting_for_a_primary_wakes_when_one_is_set_or_gives_up_after_its_wait() {
    let r = std::sync::Arc::new(router("", &[1, 1]));
    r.set_primary(Err(NoPrimary::NoneOutOfRecovery));
    let any = |p: &Result<usize, NoPrimary>| p.is_ok();
    let started = tokio::time::Instant::now();
    assert_eq!(
        r.wait_for_primary(Duration::from_secs(2), any).await,
        Err(NoPrimary::NoneOutOfRecovery)
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "waited the whole wait"
    );

    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { r.wait_for_primary(Duration::from_secs(5), any).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let promoted = tokio::time::Instant::now();
    r.set_primary(Ok(1));
    assert_eq!(waiter.await.expect("waiter"), Ok(1));
    assert_eq!(
        promoted.elapsed(),
        Duration::ZERO,
        "woken at once, no polling"
    );

    // Waiting for a primary other than the one that failed: a change to none does not end it.
    let other = |p: &Result<usize, NoPrimary>| matches!(p, Ok(i) if *i != 1);
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { r.wait_for_primary(Duration::from_secs(5), other).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    r.set_primary(Err(NoPrimary::NoneOutOfRecovery));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    r.set_primary(Ok(2));
    assert_eq!(waiter.await.expect("waiter"), Ok(2));
}
