//! Fault drills, full versions, and the soak.
//!
//! `cargo run --release -p pgsplit-bench --bin drills` starts a local primary and two streaming replicas (the
//! harness), a fault-injecting relay in front of `replica1`, and pgsplit in this process pointed at the relay.
//! Then, each while a mixed load runs (16 clients: autocommit INSERTs, BEGIN/INSERT/UPDATE/COMMIT, reads,
//! BEGIN READ ONLY reads, prepared INSERTs; every write in a ledger): replica1 killed (SIGKILL) and restarted,
//! its replay paused 10 s, black-holed 10 s, 50 ms and 500 ms delay for 10 s, the primary stopped (fast) for
//! 2.5 s and started, pgsplit drained (graceful shutdown, as on SIGTERM) and a new pgsplit bound to the same port,
//! and last the primary killed, the replica with the most WAL promoted 1 s later, the other re-pointed at it and
//! the old primary rebuilt as its replica. Commits wait for one replica (`synchronous_standby_names = 'ANY 1
//! (…)'`): with asynchronous replication a failover loses acknowledged writes that were not streamed yet.
//! Each drill prints a one-line summary and the checks' verdict (`pgsplit_harness::drill`); the program fails
//! when one fails.
//!
//! `--soak 30m` instead runs the load for that long with a replica fault (kill, replay pause, stall, 500 ms
//! delay, in turn, 10 s each) every `--every` (default 3m), and reports RSS, open file descriptors and live
//! tokio tasks before and after (load stopped both times) and the p99 latency per phase (before, during and
//! after each fault), then the checks over the whole run. `--clients N` sets the load's clients.

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgsplit::config::Config;
use pgsplit::proxy::{Proxy, ProxyHandle};
use pgsplit_harness::drill::{self, now_ms, Drills, Expect, ReplicaFault, Report, Timing};
use pgsplit_harness::relay::Relay;
use pgsplit_harness::{Cluster, ClusterOptions};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const TIMING: Timing = Timing {
    probe_interval: Duration::from_millis(250),
    probe_timeout: Duration::from_secs(1),
    max_lag: Duration::from_secs(1),
};

struct Args {
    soak: Option<Duration>,
    every: Duration,
    clients: usize,
}

fn duration(text: &str) -> Result<Duration> {
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = n.parse()?;
    Ok(match unit {
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("unknown unit in {text:?} (s, m, h)").into()),
    })
}

fn args() -> Result<Args> {
    let mut a = Args {
        soak: None,
        every: Duration::from_secs(180),
        clients: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--soak" => a.soak = Some(duration(&value)?),
            "--every" => a.every = duration(&value)?,
            "--clients" => a.clients = value.parse()?,
            _ => {
                return Err(
                    format!("unknown option {flag} (--soak D, --every D, --clients N)").into(),
                )
            }
        }
    }
    Ok(a)
}

fn config(cluster: &Cluster, relay: &Relay, port: u16) -> Result<Config> {
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [lag]\nlag_check_interval = \"250ms\"\nprobe_timeout = \"1s\"\nmax_lag = \"1s\"\n\
         [timeouts]\nshutdown = \"5s\"\n\
         [primary]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\n",
        cluster.primary().port
    );
    for r in cluster.replicas() {
        let port = if r.name == "replica1" {
            relay.port()
        } else {
            r.port
        };
        toml.push_str(&format!(
            "[[replicas]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {port}\n",
            r.name
        ));
    }
    toml.push_str("[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"app\"\n");
    Ok(Config::from_toml_str(&toml, "<drills>")?)
}

async fn spawn(cluster: &Cluster, relay: &Relay, port: u16) -> Result<ProxyHandle> {
    Ok(Proxy::bind(config(cluster, relay, port)?).await?.spawn()?)
}

fn url(addr: SocketAddr) -> String {
    format!("postgres://app:app@127.0.0.1:{}/app", addr.port())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("PGSPLIT_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("drills: {e}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<bool> {
    let args = args()?;
    eprintln!("drills: starting a primary and 2 replicas…");
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start(ClusterOptions {
            conf: vec!["synchronous_commit = on".into()],
            hba: vec!["host all app 127.0.0.1/32 scram-sha-256".into()],
            setup_sql: vec![
                "CREATE ROLE app LOGIN PASSWORD 'app'".into(),
                "CREATE DATABASE app OWNER app".into(),
            ],
            ..ClusterOptions::default()
        })
    })?;
    let relay = Relay::start(cluster.server("replica1").port)?;
    let mut proxy = spawn(&cluster, &relay, 0).await?;
    let (c, conn) = tokio_postgres::connect(&url(proxy.addr), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(drill::TABLE_SQL).await?;
    drop(c);
    let mut d = Drills {
        cluster: &cluster,
        relay: &relay,
        target: "replica1".into(),
        url: url(proxy.addr),
        admin: proxy.admin_addr,
        primary_url: format!(
            "postgres://postgres@127.0.0.1:{}/app",
            cluster.primary().port
        ),
        ports: cluster
            .servers()
            .iter()
            .map(|s| (s.port, s.name.clone()))
            .collect::<HashMap<_, _>>(),
        timing: TIMING,
        clients: args.clients,
        think: Duration::from_millis(1),
        settle: Duration::from_secs(3),
        next_id: 1,
    };
    tokio::task::block_in_place(|| d.synchronous())?;
    if let Some(length) = args.soak {
        return soak(&mut d, length, args.every).await;
    }
    let mut results = d.standard(Duration::from_secs(10)).await;
    let (result, new_proxy) = drain_drill(&mut d, proxy).await?;
    proxy = new_proxy;
    results.push(result);
    // Last: the roles stay changed.
    results.push(d.promote_drill(Duration::from_secs(1)).await);
    let mut ok = true;
    for r in &results {
        match r {
            Ok(report) => println!("PASS {}", report.summary()),
            Err(e) => {
                ok = false;
                println!("FAIL {e}");
            }
        }
    }
    proxy.shutdown().await;
    Ok(ok)
}

/// pgsplit drained under load (graceful shutdown, the SIGTERM path), a new pgsplit on the same port.
async fn drain_drill(
    d: &mut Drills<'_>,
    proxy: ProxyHandle,
) -> Result<(Result<Report, String>, ProxyHandle)> {
    let load = d.load();
    tokio::time::sleep(d.settle).await;
    let mut window = d.window("pgsplit-drain", None, false);
    window.fault_ms = now_ms();
    let port = proxy.addr.port();
    proxy.shutdown().await;
    window.restore_ms = now_ms();
    let proxy = spawn(d.cluster, d.relay, port).await?;
    d.admin = proxy.admin_addr;
    window.recovered_ms = d.writes_flow().await?;
    d.wait_eligible("replica1", true).await?;
    let expect = Expect {
        write_errors: true,
        excluded: false,
    };
    Ok((d.finish(load, &window, &expect).await, proxy))
}

/// What the process holds: RSS (kB), open descriptors, live tokio tasks.
fn footprint() -> (u64, usize, usize) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    (rss, fds, tasks)
}

async fn soak(d: &mut Drills<'_>, length: Duration, every: Duration) -> Result<bool> {
    let faults = [
        ReplicaFault::Kill,
        ReplicaFault::PauseReplay,
        ReplicaFault::Stall,
        ReplicaFault::Delay(Duration::from_millis(500)),
    ];
    let hold = Duration::from_secs(10).min(every / 3);
    // Warm up (pools filled), then measure with the load stopped and its ledger freed.
    let warm = d.load();
    tokio::time::sleep(d.settle).await;
    d.next_id = warm.stop().await.next_id;
    let before = quiet_footprint().await;
    let start = Instant::now();
    let load = d.load();
    let mut phases: Vec<(String, u64, u64)> = Vec::new();
    let mut mark = now_ms();
    let mut n = 0;
    while start.elapsed() + every <= length + Duration::from_secs(1) {
        tokio::time::sleep(every.saturating_sub(hold)).await;
        let fault = faults[n % faults.len()];
        n += 1;
        let at = now_ms();
        phases.push(("steady".into(), mark, at));
        let result = soak_fault(d, fault, hold).await;
        mark = now_ms();
        phases.push((format!("{fault:?}"), at, mark));
        if let Err(e) = result {
            eprintln!("soak: fault {fault:?}: {e}");
        }
    }
    tokio::time::sleep(length.saturating_sub(start.elapsed())).await;
    phases.push(("steady".into(), mark, now_ms()));
    let mut window = d.window("soak", None, false);
    window.fault_ms = 0;
    window.restore_ms = 0;
    window.recovered_ms = u64::MAX / 2;
    let ledger = load.stop().await;
    d.next_id = ledger.next_id;
    let report = drill::check(&ledger, &window, &d.primary_url, d.admin, &d.ports).await?;
    let phase_lines: Vec<String> = phases
        .iter()
        .map(|(name, from, to)| {
            format!(
                "soak phase {name:<24} {:>6.1} s  p50 {:>7.1} ms  p99 {:>7.1} ms",
                (to - from) as f64 / 1000.0,
                ledger.latency_ms_between(50.0, *from, *to),
                ledger.latency_ms_between(99.0, *from, *to)
            )
        })
        .collect();
    drop(ledger);
    let after = quiet_footprint().await;
    for line in phase_lines {
        println!("{line}");
    }
    println!(
        "soak {:.0} s, {n} faults: RSS {} → {} kB, fds {} → {}, tokio tasks {} → {} (pools warm, load stopped, \
         its ledger freed and malloc_trim'd both times)",
        length.as_secs_f64(),
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    let violations = report.violations(&Expect {
        write_errors: false,
        excluded: false,
    });
    println!("{}", report.summary());
    if !violations.is_empty() {
        println!("FAIL soak: {violations:#?}");
    }
    Ok(violations.is_empty())
}

/// [`footprint`] after freed memory is handed back (`malloc_trim`) and 2 s of quiet (idle buffers released).
async fn quiet_footprint() -> (u64, usize, usize) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SAFETY: glibc's malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    footprint()
}

/// One fault inside the soak: injected, held, recovered, waited out.
async fn soak_fault(d: &Drills<'_>, fault: ReplicaFault, hold: Duration) -> Result<(), String> {
    tokio::task::block_in_place(|| d.apply(fault))?;
    tokio::time::sleep(hold).await;
    tokio::task::block_in_place(|| d.restore(fault))?;
    d.wait_eligible("replica1", true).await.map(drop)
}
