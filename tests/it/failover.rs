//! Replica health and lag, and following a failover (docs/ARCHITECTURE.md §5). Each test stops, pauses or promotes servers,
//! so each starts its own cluster and pgsplit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use pgsplit::proxy::{Proxy, ProxyHandle};
use pgsplit::stats::FailoverOutcome;
use pgsplit_harness::{Cluster, StopMode};
use tokio_postgres::{Client, SimpleQueryMessage};

const INTERVAL: Duration = Duration::from_millis(250);

async fn start(cluster: &Cluster, lag: &str) -> ProxyHandle {
    start_waiting(cluster, lag, Duration::from_secs(5)).await
}

/// [`start`] with this `timeouts.failover_wait`.
async fn start_waiting(cluster: &Cluster, lag: &str, failover_wait: Duration) -> ProxyHandle {
    let mut cfg = config(
        cluster,
        4,
        4,
        &format!("[lag]\nlag_check_interval = \"250ms\"\n{lag}"),
    );
    cfg.timeouts.failover_wait = failover_wait;
    Proxy::bind(cfg)
        .await
        .expect("bind")
        .spawn()
        .expect("spawn")
}

async fn value(c: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let rows = c.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

/// Ports that served `n` reads.
async fn read_ports(c: &Client, n: usize) -> HashMap<u16, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let port: u16 = value(c, "SELECT inet_server_port()")
            .await
            .expect("read")
            .parse()
            .expect("port");
        *seen.entry(port).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_excluded_then_readmitted_after_the_hold() {
    let cluster = start_cluster();
    let proxy = start(
        &cluster,
        "max_lag = \"1s\"\nreadmit_lag = \"500ms\"\nreadmit_hold = \"1s\"",
    )
    .await;
    let shared = proxy.shared.clone();
    wait_for("both replicas eligible", Duration::from_secs(10), || {
        status(&shared, "replica1").eligible && status(&shared, "replica2").eligible
    })
    .await;
    let c = connect_to(proxy.addr, APP).await.expect("connect");
    let r1 = cluster.server("replica1").port;

    cluster.pause_replay("replica1").expect("pause");
    c.batch_execute("CREATE TABLE big (id int, pad text); INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g")
        .await
        .expect("write 20 MB");
    let written = Instant::now();
    let excluded = wait_for("replica1 excluded", Duration::from_secs(10), || {
        !status(&shared, "replica1").eligible
    })
    .await;
    let s = status(&shared, "replica1");
    assert!(s.reason.contains("over the threshold"), "{}", s.reason);
    // The byte lag is measured against the primary's last sampled position: on a busy machine the sample that
    // covers the whole 20 MB write may come a probe or two after the exclusion.
    wait_for(
        "replica1's byte lag covers the write",
        Duration::from_secs(5),
        || status(&shared, "replica1").lag_bytes.unwrap_or(0) > 20_000_000,
    )
    .await;
    // Its lag passed max_lag one second after the write; it is out within 2 probe intervals (plus scheduling slack).
    let bound = Duration::from_secs(1) + INTERVAL * 2 + Duration::from_millis(300);
    eprintln!(
        "replica1 excluded {:?} after the write (max_lag 1s)",
        excluded.duration_since(written)
    );
    assert!(
        excluded.duration_since(written) <= bound,
        "excluded after {:?}",
        excluded.duration_since(written)
    );
    let seen = read_ports(&c, 200).await;
    assert!(
        !seen.contains_key(&r1),
        "reads still reached the lagging replica: {seen:?}"
    );

    cluster.resume_replay("replica1").expect("resume");
    let mut under_since: Option<Instant> = None;
    let readmitted = wait_for("replica1 re-admitted", Duration::from_secs(30), || {
        let s = status(&shared, "replica1");
        if under_since.is_none() && s.lag.is_some_and(|l| l <= Duration::from_millis(500)) {
            under_since = Some(Instant::now());
        }
        s.eligible
    })
    .await;
    let under = under_since.expect("lag went under the re-admit mark");
    eprintln!(
        "replica1 re-admitted {:?} after its lag went under the re-admit mark (hold 1s)",
        readmitted.duration_since(under)
    );
    assert!(
        readmitted.duration_since(under) >= Duration::from_millis(800),
        "re-admitted {:?} after going under the mark (hold is 1s)",
        readmitted.duration_since(under)
    );
    let seen = read_ports(&c, 50).await;
    assert!(
        seen.contains_key(&r1),
        "re-admitted replica takes reads again: {seen:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_primary_means_no_lag() {
    let cluster = start_cluster();
    let proxy = start(&cluster, "max_lag = \"1s\"").await;
    let shared = proxy.shared.clone();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in ["replica1", "replica2"] {
        let s = status(&shared, name);
        assert!(s.eligible, "{name}: {}", s.reason);
        assert_eq!(s.lag, Some(Duration::ZERO), "{name}");
        assert_eq!(s.lag_bytes, Some(0), "{name}");
        assert!(
            s.transitions.len() <= 1,
            "{name} flapped: {:?}",
            s.transitions
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_replica_stopping_and_it_returns() {
    let cluster = start_cluster();
    let proxy = start(&cluster, "").await;
    let shared = proxy.shared.clone();
    wait_for("replicas eligible", Duration::from_secs(10), || {
        status(&shared, "replica2").eligible
    })
    .await;
    let addr = proxy.addr;
    let stop_at = Instant::now() + Duration::from_secs(1);
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(tokio::spawn(async move {
            let c = connect_to(addr, APP).await.expect("connect");
            let (mut ok_after, mut errors) = (0, 0);
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                match c
                    .simple_query("SELECT inet_server_port(), pg_sleep(0.01)")
                    .await
                {
                    Ok(_) if Instant::now() > stop_at + Duration::from_millis(500) => ok_after += 1,
                    Ok(_) => {}
                    Err(_) => errors += 1,
                }
            }
            (ok_after, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster
        .stop("replica2", StopMode::Immediate)
        .expect("stop replica2");
    let (mut ok, mut errors) = (0, 0);
    for r in readers {
        let (o, e) = r.await.expect("reader");
        ok += o;
        errors += e;
    }
    eprintln!("replica2 stopped under load: {ok} reads succeeded after the stop, {errors} errors");
    assert!(ok > 50, "reads continued on the others ({ok})");
    assert!(
        errors <= 4,
        "only statements running on replica2 may fail, got {errors} errors"
    );
    let s = status(&shared, "replica2");
    assert!(!s.up && !s.eligible, "{s:?}");

    cluster.start_server("replica2").expect("start replica2");
    wait_for("replica2 back", Duration::from_secs(20), || {
        status(&shared, "replica2").eligible
    })
    .await;
    let c = connect_to(addr, APP).await.expect("connect");
    let seen = read_ports(&c, 40).await;
    assert!(
        seen.contains_key(&cluster.server("replica2").port),
        "replica2 takes reads again: {seen:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica() {
    let cluster = start_cluster();
    // failover_wait = 0: a write that finds no primary fails at once.
    let proxy = start_waiting(&cluster, "", Duration::ZERO).await;
    let shared = proxy.shared.clone();
    let c = connect_to(proxy.addr, APP).await.expect("connect");
    c.batch_execute("CREATE TABLE f (v text)")
        .await
        .expect("create");

    cluster
        .stop("primary", StopMode::Fast)
        .expect("stop primary");
    let started = Instant::now();
    let err = c
        .batch_execute("INSERT INTO f VALUES ('while down')")
        .await
        .expect_err("no primary");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "with failover_wait = 0 a write while the primary is down must not wait"
    );
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(
        msg.contains("primary"),
        "the error names the primary: {msg}"
    );

    cluster.promote("replica1").expect("promote replica1");
    let promoted = Instant::now();
    let new_port = cluster.server("replica1").port.to_string();
    let mut landed = None;
    while promoted.elapsed() < Duration::from_secs(10) {
        if let Ok(port) = value(
            &c,
            "INSERT INTO f VALUES ('after') RETURNING inet_server_port()",
        )
        .await
        {
            landed = Some((port, promoted.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (port, after) = landed.expect("writes resume on the promoted server");
    eprintln!("writes resumed on the promoted replica {after:?} after pg_promote returned");
    assert_eq!(port, new_port);
    assert!(
        after <= INTERVAL * 2 + Duration::from_millis(500),
        "writes resumed {after:?} after the promotion"
    );
    assert_eq!(shared.router.primary(), Ok(1));

    // replica2 still follows the dead primary; once it follows the new one it takes reads.
    cluster.follow("replica2", "replica1").expect("follow");
    wait_for(
        "replica2 eligible under the new primary",
        Duration::from_secs(20),
        || status(&shared, "replica2").eligible,
    )
    .await;
    let seen = read_ports(&c, 20).await;
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![cluster.server("replica2").port],
        "{seen:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_replicas_stop_or_keep_serving_as_configured() {
    let cluster = start_cluster();
    let strict = start(&cluster, "").await;
    let lenient = start(&cluster, "primary_unknown = \"serve\"").await;
    wait_for("eligible", Duration::from_secs(10), || {
        status(&strict.shared, "replica1").eligible
    })
    .await;
    wait_for("eligible", Duration::from_secs(10), || {
        status(&lenient.shared, "replica1").eligible
    })
    .await;
    cluster
        .stop("primary", StopMode::Fast)
        .expect("stop primary");

    // First the replicas keep serving on their bounded lag (lag at the last primary sample + time since)...
    wait_for(
        "replicas serving on their bounded lag",
        Duration::from_secs(5),
        || {
            let s = status(&strict.shared, "replica1");
            s.eligible && s.reason.starts_with("primary unknown for")
        },
    )
    .await;
    assert!(strict.shared.router.primary().is_err());
    // ...then, once the bound passes max_lag (1 s), they are out.
    wait_for(
        "replicas excluded (lag unknown)",
        Duration::from_secs(10),
        || {
            !status(&strict.shared, "replica1").eligible
                && !status(&strict.shared, "replica2").eligible
        },
    )
    .await;
    let s = status(&strict.shared, "replica1");
    assert!(
        s.reason.starts_with("lag unknown: primary unknown for")
            && s.reason.contains("over the threshold"),
        "{}",
        s.reason
    );
    let out = s.transitions.back().expect("an eligibility transition");
    assert!(!out.eligible && out.reason.contains("lag bound"), "{out:?}");
    for name in ["replica1", "replica2"] {
        wait_for(
            "primary_unknown = serve keeps replicas serving",
            Duration::from_secs(10),
            || status(&lenient.shared, name).eligible,
        )
        .await;
    }
    // ...and stays so while the primary remains down.
    tokio::time::sleep(INTERVAL * 8).await;
    assert!(
        status(&lenient.shared, "replica1").eligible,
        "{:?}",
        status(&lenient.shared, "replica1")
    );
    assert!(!status(&strict.shared, "replica1").eligible);
    let c = connect_to(lenient.addr, APP).await.expect("connect");
    assert_eq!(
        value(&c, "SELECT pg_is_in_recovery()").await.expect("read"),
        "t"
    );
    strict.shutdown().await;
    lenient.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_at_once_refuse_writes_but_reads_go_on() {
    let cluster = start_cluster();
    // failover_wait = 0: the refused write answers at once (a waiting one would fail the same, 5 s later).
    let proxy = start_waiting(&cluster, "", Duration::ZERO).await;
    let shared = proxy.shared.clone();
    cluster
        .promote("replica1")
        .expect("promote while the primary runs");
    wait_for("split brain detected", Duration::from_secs(5), || {
        shared.router.primary().is_err()
    })
    .await;
    let c = connect_to(proxy.addr, APP).await.expect("connect");
    let err = c
        .batch_execute("CREATE TABLE sb (a int)")
        .await
        .expect_err("writes refused");
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("split brain"), "{msg}");
    wait_for("replica2 eligible", Duration::from_secs(5), || {
        status(&shared, "replica2").eligible
    })
    .await;
    assert_eq!(
        value(&c, "SELECT inet_server_port()")
            .await
            .expect("reads go on"),
        cluster.server("replica2").port.to_string()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_primary_waits_until_its_timeout_a_cancel_shutdown_or_a_primary() {
    let cluster = start_cluster();
    let short = start_waiting(&cluster, "", Duration::from_secs(1)).await;
    let long = start_waiting(&cluster, "", Duration::from_secs(5)).await;
    let ending = start_waiting(&cluster, "", Duration::from_secs(30)).await;
    for p in [&short, &long, &ending] {
        wait_for("a primary", Duration::from_secs(10), || {
            p.shared.router.primary().is_ok()
        })
        .await;
    }
    let c = connect_to(short.addr, APP).await.expect("connect");
    // Logging in needs a server's parameters: the client of the long wait connects while the primary is up.
    let c2 = connect_to(long.addr, APP).await.expect("connect");
    let c3 = connect_to(ending.addr, APP).await.expect("connect");
    c.batch_execute("CREATE TABLE w (v text)")
        .await
        .expect("create");
    cluster
        .stop("primary", StopMode::Fast)
        .expect("stop primary");
    for p in [&short, &long] {
        wait_for("no primary", Duration::from_secs(10), || {
            p.shared.router.primary().is_err()
        })
        .await;
    }

    // No primary comes: the write fails with 57P03 once failover_wait (1 s) has passed, not at once.
    let started = Instant::now();
    let err = c
        .batch_execute("INSERT INTO w VALUES ('no primary')")
        .await
        .expect_err("no primary");
    let waited = started.elapsed();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P03", "{}", db.message());
    assert!(db.message().contains("no primary"), "{}", db.message());
    assert!(
        waited >= Duration::from_millis(800),
        "failed after {waited:?}"
    );
    eprintln!("a write with no primary failed after {waited:?} (failover_wait 1s)");
    let timeouts = short.shared.stats.failover.count(FailoverOutcome::Timeout);
    assert_eq!(timeouts, 1);

    // The client cancels its waiting write: 57014, and the wait ends.
    let c = c2;
    let cancel = c.cancel_token();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let r = c.batch_execute("INSERT INTO w VALUES ('cancelled')").await;
        (r, c)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    let (r, c) = waiting.await.expect("writer");
    let err = r.expect_err("cancelled");
    let code = err.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(code.as_deref(), Some("57014"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the cancel ended the wait"
    );
    let cancelled = long.shared.stats.failover.count(FailoverOutcome::Cancelled);
    assert_eq!(cancelled, 1);

    // pgsplit shuts down: the wait ends with 57P01 (not after failover_wait, nor the 30 s drain).
    let started = Instant::now();
    let waiting =
        tokio::spawn(async move { c3.batch_execute("INSERT INTO w VALUES ('shutdown')").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ending.shutdown().await;
    let err = waiting.await.expect("writer").expect_err("shut down");
    let code = err.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(code.as_deref(), Some("57P01"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The old primary comes back within the wait: the write runs there, the client sees latency, not an error.
    let started = Instant::now();
    let waiting =
        tokio::spawn(async move { c.batch_execute("INSERT INTO w VALUES ('waited')").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| cluster.start_server("primary")).expect("start primary");
    waiting
        .await
        .expect("writer")
        .expect("the write waited for the primary and ran");
    eprintln!(
        "a write waited {:?} for the primary to come back",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let found = long.shared.stats.failover.count(FailoverOutcome::Primary);
    assert_eq!(found, 1);
    // The waits in /status and /metrics.
    let (code, body) = crate::admin::http_get(long.admin_addr, "/status", None);
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let waits = &status["routing"]["failover_waits"];
    let count = |outcome: &str| {
        waits["outcomes"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["reason"] == outcome))
            .and_then(|o| o["count"].as_u64())
    };
    assert_eq!(
        (count("primary"), count("cancelled")),
        (Some(1), Some(1)),
        "{waits}"
    );
    assert!(waits["longest_us"].as_u64() >= Some(300_000), "{waits}");
    let (_, metrics) = crate::admin::http_get(short.admin_addr, "/metrics", None);
    assert!(
        metrics.contains("pgsplit_failover_waits_total{outcome=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgsplit_failover_wait_seconds_count 1"),
        "{metrics}"
    );
    let c = connect_to(long.addr, APP).await.expect("connect");
    assert_eq!(
        value(&c, "/* pgsplit:primary */ SELECT string_agg(v, ',') FROM w")
            .await
            .expect("read"),
        "waited"
    );
    short.shutdown().await;
    long.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_reads_with_a_floor_use_a_replica_that_has_it_or_wait_then_fail() {
    let cluster = start_cluster();
    let proxy = start_waiting(&cluster, "", Duration::from_secs(1)).await;
    let shared = proxy.shared.clone();
    wait_for("both replicas eligible", Duration::from_secs(10), || {
        status(&shared, "replica1").eligible && status(&shared, "replica2").eligible
    })
    .await;
    let c = connect_to(proxy.addr, APP).await.expect("connect");
    c.batch_execute("CREATE TABLE ryw_down (v int); INSERT INTO ryw_down VALUES (1)")
        .await
        .expect("write");
    // The read settles the session's floor (the primary's position after the write) and sees the row.
    assert_eq!(
        value(&c, "SELECT count(*) FROM ryw_down")
            .await
            .expect("read"),
        "1"
    );
    cluster
        .stop("primary", StopMode::Fast)
        .expect("stop primary");
    wait_for("no primary", Duration::from_secs(5), || {
        shared.router.primary().is_err()
    })
    .await;
    let s = status(&shared, "replica1");
    if s.eligible && s.reason.starts_with("primary unknown for") {
        // A replica known to have the floor serves the session's read on its bounded lag.
        let row = value(
            &c,
            "SELECT count(*)::text || ',' || pg_is_in_recovery()::text FROM ryw_down",
        )
        .await
        .expect("a read with a floor while the primary is down");
        assert_eq!(row, "1,true");
    } else {
        eprintln!(
            "the lag bound had passed already ({}): the replica read is not checked",
            s.reason
        );
    }
    // A floor no replica is known to have: it waits causal_wait (2 s here) for one while replicas may take reads,
    // then failover_wait (1 s) for a primary, then fails with 57P03; it never runs on a replica without the floor.
    let started = Instant::now();
    let err = c
        .simple_query("/* pgsplit:min_lsn=FFFF/0 */ SELECT 1")
        .await
        .expect_err("no server has that floor");
    let waited = started.elapsed();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P03", "{}", db.message());
    assert!(
        waited >= Duration::from_millis(800),
        "failed after {waited:?}"
    );
    eprintln!(
        "a read with an unreachable floor and no primary failed after {waited:?}: {}",
        db.message()
    );
    proxy.shutdown().await;
}
