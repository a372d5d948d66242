//! Fault drills under load (short versions for CI): a mixed load through pgsplit records every write and read
//! in a ledger while a fault is injected and recovered from; then the checks (no acknowledged write lost, no read
//! on an ineligible or stale replica, errors only while the fault lasted, exclusion/readmission times). One
//! cluster for all drills, run in sequence; replica1 sits behind a fault-injecting relay. The full versions and
//! the soak: `cargo run --release -p pgsplit-bench --bin drills`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use pgsplit::config::Config;
use pgsplit::proxy::Proxy;
use pgsplit_harness::drill::{self, now_ms, Drills, Expect, Load, LoadOptions, Report, Timing};
use pgsplit_harness::relay::Relay;
use pgsplit_harness::Cluster;

const INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_LAG: Duration = Duration::from_secs(1);
const CLIENTS: usize = 8;

/// pgsplit in front of the cluster, replica1 through the relay; `listen_port` 0 picks one.
fn drill_config(cluster: &Cluster, relay: &Relay, listen_port: u16, extra: &str) -> Config {
    Config::from_toml_str(
        &drill_toml(cluster, relay, listen_port, 0, extra),
        "<drills>",
    )
    .expect("drill config")
}

/// [`drill_config`]'s text, with the admin port too (0 picks one).
fn drill_toml(
    cluster: &Cluster,
    relay: &Relay,
    listen_port: u16,
    admin_port: u16,
    extra: &str,
) -> String {
    let mut toml = format!(
        "listen = \"127.0.0.1:{listen_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n{extra}\n\
         [lag]\nlag_check_interval = \"{}ms\"\nprobe_timeout = \"{}ms\"\nmax_lag = \"{}ms\"\n\
         [pools]\nwrite_pool_size = 8\nread_pool_size = 8\n\
         [timeouts]\nshutdown = \"2s\"\n\
         [primary]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\n",
        INTERVAL.as_millis(),
        PROBE_TIMEOUT.as_millis(),
        MAX_LAG.as_millis(),
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
    toml.push_str(
        "[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"app-secret\"\n",
    );
    toml
}

/// pgsplit as its own process (the binary), so a drill can send it SIGTERM or give it its own open-file limit.
struct BinProxy {
    child: std::process::Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _file: tempfile::NamedTempFile,
}

impl BinProxy {
    /// Starts the binary on `port` (0: a free one) and waits until its admin endpoint answers. Free ports are
    /// picked, then bound by the binary: on a race with another test it starts again with other ports.
    async fn start(cluster: &Cluster, relay: &Relay, port: u16, extra: &str) -> BinProxy {
        for _ in 0..5 {
            let listen = if port == 0 { free_port() } else { port };
            let admin_port = free_port();
            let file = tempfile::NamedTempFile::new().expect("config file");
            std::fs::write(
                file.path(),
                drill_toml(cluster, relay, listen, admin_port, extra),
            )
            .expect("write config");
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
                .arg("run")
                .arg("--config")
                .arg(file.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start pgsplit");
            let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
            let addr = SocketAddr::from(([127, 0, 0, 1], listen));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline && child.try_wait().ok().flatten().is_none()
            {
                if drill::fetch_status(admin).await.is_ok()
                    && tokio::net::TcpStream::connect(addr).await.is_ok()
                {
                    return BinProxy {
                        child,
                        addr,
                        admin,
                        _file: file,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("pgsplit did not start");
    }

    /// SIGTERM, then waits for the drain to end and the process to exit.
    async fn terminate(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgsplit did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BinProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    pgsplit_harness::free_port().expect("free port")
}

/// Points the drills at another pgsplit.
fn point_at(d: &mut Drills<'_>, addr: SocketAddr, admin: SocketAddr) {
    d.url = url(addr, APP);
    d.admin = admin;
}

/// Runs the checks' verdict as a test assertion; prints the summary line.
fn passed(result: Result<Report, String>) -> Report {
    match result {
        Ok(r) => {
            println!("{}", r.summary());
            r
        }
        Err(e) => panic!("drill failed: {e}"),
    }
}

/// pgsplit (the binary) gets SIGTERM under load and drains; a new pgsplit starts on the same port and the
/// clients reconnect. No acknowledged write may be lost.
async fn sigterm_drill(d: &mut Drills<'_>) -> Report {
    let (url0, admin0) = (d.url.clone(), d.admin);
    let old = BinProxy::start(d.cluster, d.relay, 0, "").await;
    point_at(d, old.addr, old.admin);
    d.wait_eligible("replica1", true)
        .await
        .expect("replicas eligible");
    let load = d.load();
    tokio::time::sleep(d.settle).await;
    let mut window = d.window("pgsplit-sigterm", None, false);
    window.fault_ms = now_ms();
    let port = old.addr.port();
    old.terminate().await;
    window.restore_ms = now_ms();
    let new = BinProxy::start(d.cluster, d.relay, port, "").await;
    assert_eq!(new.addr.port(), port, "the new pgsplit took the same port");
    d.admin = new.admin;
    window.recovered_ms = d.writes_flow().await.expect("writes flow");
    d.wait_eligible("replica1", true)
        .await
        .expect("replicas eligible");
    let expect = Expect {
        write_errors: true,
        excluded: false,
    };
    let report = passed(d.finish(load, &window, &expect).await);
    drop(new);
    d.url = url0;
    d.admin = admin0;
    report
}

/// 10,000 idle client connections held open while the load runs, on a pgsplit (its own process) whose limit
/// is 10,000 + the load's clients: the next connection gets 53300; the load's latency with and without them is
/// printed.
async fn idle_connections_drill(d: &mut Drills<'_>) -> Report {
    let idle = raise_fd_limit(IDLE);
    let limit = idle + d.clients;
    let extra = format!(
        "max_client_connections = {limit}\n\
         [[users]]\nname = \"idle\"\nauth = \"trust\"\nserver_user = \"postgres\"\n"
    );
    let (url0, admin0) = (d.url.clone(), d.admin);
    let proxy = BinProxy::start(d.cluster, d.relay, 0, &extra).await;
    point_at(d, proxy.addr, proxy.admin);
    d.wait_eligible("replica1", true)
        .await
        .expect("replicas eligible");
    let quiet = |d: &Drills<'_>, name: &str| {
        let mut w = d.window(name, None, false);
        w.fault_ms = now_ms();
        w.restore_ms = w.fault_ms;
        w.recovered_ms = w.fault_ms;
        w
    };
    let load = d.load();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = quiet(d, "baseline");
    let baseline = passed(d.finish(load, &window, &Expect::default()).await);

    let opened = std::time::Instant::now();
    let held = open_idle(proxy.addr, idle).await;
    let took = opened.elapsed();
    let load = d.load();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every slot is taken (idle + the load's clients): one more is refused with 53300.
    let refused = connect_to(proxy.addr, APP)
        .await
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_string()));
    let window = quiet(d, &format!("idle-{idle}"));
    let report = passed(d.finish(load, &window, &Expect::default()).await);
    assert_eq!(
        refused.as_deref(),
        Some("53300"),
        "the connection over max_client_connections"
    );
    println!(
        "drill idle-{idle}: {} idle connections opened in {:.1} s; load p50/p99 {:.1}/{:.1} ms with them, \
         {:.1}/{:.1} ms without; the next connection got {refused:?}",
        held.len(),
        took.as_secs_f64(),
        report.p50_ms,
        report.p99_ms,
        baseline.p50_ms,
        baseline.p99_ms
    );
    drop(held);
    drop(proxy);
    d.url = url0;
    d.admin = admin0;
    report
}

/// A control: reads straight to replica1 (not through pgsplit) while its replay is paused must be caught by
/// the checks as reads on an ineligible replica and as stale reads (the checks are not vacuous).
async fn control_drill(d: &mut Drills<'_>) {
    let mut window = d.window("control", Some("replica1"), true);
    let direct = format!(
        "postgres://postgres@127.0.0.1:{}/app",
        d.cluster.server("replica1").port
    );
    window.fault_ms = now_ms();
    tokio::task::block_in_place(|| d.cluster.pause_replay("replica1").expect("pause"));
    let writer = d.load();
    d.wait_eligible("replica1", false)
        .await
        .expect("replica1 excluded");
    let bypass = Load::start(&LoadOptions {
        url: direct,
        primary_url: None,
        clients: 2,
        think: Duration::from_millis(5),
        first_id: 1_000_000_000,
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ledger = bypass.stop().await;
    window.restore_ms = now_ms();
    tokio::task::block_in_place(|| d.cluster.resume_replay("replica1").expect("resume"));
    window.recovered_ms = now_ms();
    let written = writer.stop().await;
    d.next_id = written.next_id;
    ledger.primary_lsn = written.primary_lsn;
    let report = drill::check(&ledger, &window, &d.primary_url, d.admin, &d.ports)
        .await
        .expect("checks");
    println!("control (must show violations): {}", report.summary());
    assert!(
        !report.ineligible_reads.is_empty() && !report.stale_reads.is_empty(),
        "reads straight to a paused, excluded replica were not caught: {}",
        report.summary()
    );
}

/// Straight to whichever server is the primary (the drills promote one), as `postgres` in `app`.
fn primary_url(cluster: &Cluster) -> String {
    let hosts: Vec<String> = cluster
        .servers()
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    format!(
        "postgres://postgres@{}/app?target_session_attrs=read-write",
        hosts.join(",")
    )
}

/// Idle client connections the 10k drill holds.
const IDLE: usize = 10_000;

/// Raises this process's open-file limit (soft up to hard) so it holds `want` client sockets (pgsplit runs as
/// its own process and raises its own); returns how many idle connections fit.
fn raise_fd_limit(want: usize) -> usize {
    let need = (want + 4096) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read a plain struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < need {
            let raised = libc::rlimit {
                rlim_cur: need,
                rlim_max: need.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    let fit = (lim.rlim_cur as usize).saturating_sub(4096);
    if fit < want {
        eprintln!(
            "open-file limit {}: holding {fit} idle connections, not {want}",
            lim.rlim_cur
        );
    }
    want.min(fit)
}

/// Opens `n` client connections through pgsplit as the trust user `idle` and leaves them idle after login, 100
/// at a time (under the listen backlog of 128: a full accept queue drops SYNs, retried only after 1 s).
async fn open_idle(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(100);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            set.spawn(login_idle(addr));
        }
        while let Some(s) = set.join_next().await {
            held.push(s.expect("login task").expect("idle login"));
        }
        left -= batch;
    }
    held
}

/// One raw login: the startup packet, then everything up to ReadyForQuery.
async fn login_idle(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&startup_packet("idle")).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await??;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed during login: {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_under_load_lose_no_acknowledged_write_and_serve_nothing_stale() {
    let cluster = tokio::task::block_in_place(start_cluster);
    let relay = Relay::start(cluster.server("replica1").port).expect("relay");
    let cfg = drill_config(&cluster, &relay, 0, "");
    let proxy = Proxy::bind(cfg)
        .await
        .expect("bind")
        .spawn()
        .expect("spawn");
    let c = connect_to(proxy.addr, APP).await.expect("connect");
    c.batch_execute(drill::TABLE_SQL)
        .await
        .expect("ledger table");
    drop(c);
    let mut d = Drills {
        cluster: &cluster,
        relay: &relay,
        target: "replica1".into(),
        url: url(proxy.addr, APP),
        admin: proxy.admin_addr,
        primary_url: primary_url(&cluster),
        ports: cluster
            .servers()
            .iter()
            .map(|s| (s.port, s.name.clone()))
            .collect(),
        timing: Timing {
            probe_interval: INTERVAL,
            probe_timeout: PROBE_TIMEOUT,
            max_lag: MAX_LAG,
        },
        clients: CLIENTS,
        think: Duration::from_millis(2),
        settle: Duration::from_secs(1),
        next_id: 1,
    };
    tokio::task::block_in_place(|| d.synchronous()).expect("synchronous replication");
    let mut reports: Vec<Report> = d
        .standard(Duration::from_secs(2))
        .await
        .into_iter()
        .map(passed)
        .collect();
    reports.push(sigterm_drill(&mut d).await);
    reports.push(idle_connections_drill(&mut d).await);
    control_drill(&mut d).await;
    // Last: the roles stay changed.
    reports.push(passed(d.promote_drill(Duration::from_secs(1)).await));
    for r in &reports {
        eprintln!("{}", r.summary());
    }
    drop(proxy);
}
