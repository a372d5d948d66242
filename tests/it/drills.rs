//! Fault drills under load (short versions for CI): a mixed load through pgsplit records every write and read
//! in a ledger while a fault is injected and recovered from; then the checks (no acknowledged write lost, no read
//! on an ineligible or stale replica, errors only while the fault lasted, exclusion/readmission times). One
//! cluster for all drills, run in sequence; replica1 sits behind a fault-injecting relay. The full versions and
//! the soak: `cargo run --release -p pgsplit-bench --bin drills`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use pgsplit::config::Config;
use pgsplit::proxy::{Proxy, ProxyHandle};
use pgsplit_harness::drill::{self, now_ms, Expect, Load, LoadOptions, Report, Window};
use pgsplit_harness::relay::{Fault, Relay};
use pgsplit_harness::{Cluster, StopMode};

const INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_LAG: Duration = Duration::from_secs(1);
const CLIENTS: usize = 8;

/// Everything the drills share.
struct Ctx {
    cluster: Cluster,
    relay: Relay,
    /// The in-process pgsplit most drills use (dropping its handle would stop it).
    _proxy: ProxyHandle,
    /// Where the load connects and the checks read `/status`: the in-process proxy, or a binary's.
    addr: SocketAddr,
    admin: SocketAddr,
    next_id: i64,
    ports: HashMap<u16, String>,
}

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

impl Ctx {
    fn admin(&self) -> SocketAddr {
        self.admin
    }

    fn load(&self) -> Load {
        Load::start(&LoadOptions {
            url: url(self.addr, APP),
            primary_url: Some(self.primary_url()),
            clients: CLIENTS,
            think: Duration::from_millis(2),
            first_id: self.next_id,
        })
    }

    fn primary_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/app",
            self.cluster.primary().port
        )
    }

    fn window(&self, name: &str, target: Option<&str>, lag_fault: bool) -> Window {
        Window {
            name: name.into(),
            target: target.map(str::to_string),
            fault_ms: 0,
            restore_ms: 0,
            recovered_ms: 0,
            probe_interval: INTERVAL,
            probe_timeout: PROBE_TIMEOUT,
            max_lag: MAX_LAG,
            lag_fault,
        }
    }

    /// Ends the load, checks its ledger and prints the summary line; fails the test on a violation.
    async fn finish(&mut self, load: Load, window: &Window, expect: &Expect) -> Report {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.next_id = load.next_id();
        let ledger = load.stop().await;
        let report = drill::check(
            &ledger,
            window,
            &self.primary_url(),
            self.admin(),
            &self.ports,
        )
        .await
        .expect("run the checks");
        println!("{}", report.summary());
        let violations = report.violations(expect);
        assert!(
            violations.is_empty(),
            "drill {}: {violations:#?}\n{}",
            window.name,
            report.summary()
        );
        report
    }

    /// A replica fault: the load runs, `fault` is injected, pgsplit must exclude replica1 (when `excluded`),
    /// `hold` passes, `restore` runs, pgsplit must readmit replica1.
    async fn replica_drill(
        &mut self,
        name: &str,
        lag_fault: bool,
        excluded: bool,
        hold: Duration,
        fault: impl FnOnce(&Ctx),
        restore: impl FnOnce(&Ctx),
    ) -> Report {
        let admin = self.admin();
        drill::wait_eligible(admin, "replica1", true, Duration::from_secs(30))
            .await
            .expect("replica1 eligible before the drill");
        let load = self.load();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut window = self.window(name, Some("replica1"), lag_fault);
        window.fault_ms = now_ms();
        tokio::task::block_in_place(|| fault(self));
        if excluded {
            drill::wait_eligible(admin, "replica1", false, Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("drill {name}: replica1 never excluded"));
        }
        tokio::time::sleep(hold).await;
        window.restore_ms = now_ms();
        tokio::task::block_in_place(|| restore(self));
        window.recovered_ms =
            drill::wait_eligible(admin, "replica1", true, Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("drill {name}: replica1 never readmitted"));
        let expect = Expect {
            write_errors: false,
            excluded,
        };
        self.finish(load, &window, &expect).await
    }

    /// The primary stopped (fast shutdown) and started again, no promotion.
    async fn primary_restart_drill(&mut self) -> Report {
        let load = self.load();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut window = self.window("primary-restart", None, false);
        window.fault_ms = now_ms();
        tokio::task::block_in_place(|| {
            self.cluster
                .stop("primary", StopMode::Fast)
                .expect("stop the primary")
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        window.restore_ms = now_ms();
        tokio::task::block_in_place(|| {
            self.cluster
                .start_server("primary")
                .expect("start the primary")
        });
        window.recovered_ms = self.writes_flow().await;
        for r in ["replica1", "replica2"] {
            drill::wait_eligible(self.admin(), r, true, Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("{r} readmitted after the primary came back"));
        }
        let expect = Expect {
            write_errors: true,
            excluded: false,
        };
        self.finish(load, &window, &expect).await
    }

    /// pgsplit (the binary) gets SIGTERM under load and drains; a new pgsplit starts on the same port and the
    /// clients reconnect.
    async fn sigterm_drill(&mut self) -> Report {
        let old = BinProxy::start(&self.cluster, &self.relay, 0, "").await;
        let (addr, admin) = (self.addr, self.admin);
        (self.addr, self.admin) = (old.addr, old.admin);
        drill::wait_eligible(self.admin, "replica1", true, Duration::from_secs(30))
            .await
            .expect("replicas eligible");
        let load = self.load();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut window = self.window("pgsplit-sigterm", None, false);
        window.fault_ms = now_ms();
        let port = old.addr.port();
        old.terminate().await;
        window.restore_ms = now_ms();
        let new = BinProxy::start(&self.cluster, &self.relay, port, "").await;
        assert_eq!(new.addr.port(), port, "the new pgsplit took the same port");
        self.admin = new.admin;
        window.recovered_ms = self.writes_flow().await;
        drill::wait_eligible(self.admin, "replica1", true, Duration::from_secs(30))
            .await
            .expect("replicas eligible in the new pgsplit");
        let expect = Expect {
            write_errors: true,
            excluded: false,
        };
        let report = self.finish(load, &window, &expect).await;
        drop(new);
        (self.addr, self.admin) = (addr, admin);
        report
    }

    /// 10,000 idle client connections held open while the load runs, on a pgsplit whose limit is 10,000 + the
    /// load's clients: the next connection gets 53300; the load's latency with and without them is printed.
    async fn idle_connections_drill(&mut self) -> Report {
        let idle = raise_fd_limit(IDLE);
        let limit = idle + CLIENTS;
        let extra = format!(
            "max_client_connections = {limit}
             [[users]]
name = \"idle\"
auth = \"trust\"
server_user = \"postgres\"
"
        );
        let proxy = BinProxy::start(&self.cluster, &self.relay, 0, &extra).await;
        let (addr, admin) = (self.addr, self.admin);
        (self.addr, self.admin) = (proxy.addr, proxy.admin);
        drill::wait_eligible(self.admin(), "replica1", true, Duration::from_secs(30))
            .await
            .expect("replicas eligible");
        // Without the idle connections.
        let mut window = self.window("baseline", None, false);
        let load = self.load();
        tokio::time::sleep(Duration::from_secs(2)).await;
        window.fault_ms = now_ms();
        window.restore_ms = window.fault_ms;
        window.recovered_ms = window.fault_ms;
        let baseline = self.finish(load, &window, &Expect::default()).await;

        let opened = std::time::Instant::now();
        let held = open_idle(self.addr, idle).await;
        let took = opened.elapsed();
        let mut window = self.window(&format!("idle-{idle}"), None, false);
        let load = self.load();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Every slot is taken (idle + the load's clients): one more is refused with 53300.
        let refused = connect_to(self.addr, APP)
            .await
            .err()
            .and_then(|e| e.code().map(|c| c.code().to_string()));
        window.fault_ms = now_ms();
        window.restore_ms = window.fault_ms;
        window.recovered_ms = window.fault_ms;
        let report = self.finish(load, &window, &Expect::default()).await;
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
        (self.addr, self.admin) = (addr, admin);
        report
    }

    /// A control: reads straight to replica1 (not through pgsplit) while its replay is paused must be caught by
    /// the checks as reads on an ineligible replica and as stale reads (the checks are not vacuous).
    async fn control_drill(&mut self) {
        let admin = self.admin();
        let mut window = self.window("control", Some("replica1"), true);
        let direct = format!(
            "postgres://postgres@127.0.0.1:{}/app",
            self.cluster.server("replica1").port
        );
        window.fault_ms = now_ms();
        tokio::task::block_in_place(|| self.cluster.pause_replay("replica1").expect("pause"));
        let writer = self.load();
        drill::wait_eligible(admin, "replica1", false, Duration::from_secs(15))
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
        tokio::task::block_in_place(|| self.cluster.resume_replay("replica1").expect("resume"));
        window.recovered_ms = now_ms();
        self.next_id = writer.next_id();
        let written = writer.stop().await;
        ledger.primary_lsn = written.primary_lsn;
        let report = drill::check(&ledger, &window, &self.primary_url(), admin, &self.ports)
            .await
            .expect("checks");
        println!("control (must show violations): {}", report.summary());
        assert!(
            !report.ineligible_reads.is_empty() && !report.stale_reads.is_empty(),
            "reads straight to a paused, excluded replica were not caught: {}",
            report.summary()
        );
    }

    /// Waits until a write through pgsplit succeeds; returns when (unix ms).
    async fn writes_flow(&self) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = connect_to(self.addr, APP).await {
                if c.simple_query("SELECT pg_current_xact_id()").await.is_ok() {
                    return now_ms();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "writes never flowed again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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

/// Opens `n` client connections through pgsplit as the trust user `idle` and leaves them idle after login.
async fn open_idle(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(500);
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
    let ports = cluster
        .servers()
        .iter()
        .map(|s| (s.port, s.name.clone()))
        .collect();
    let mut ctx = Ctx {
        addr: proxy.addr,
        admin: proxy.admin_addr,
        cluster,
        relay,
        _proxy: proxy,
        next_id: 1,
        ports,
    };
    let c = connect_to(ctx.addr, APP).await.expect("connect");
    c.batch_execute(drill::TABLE_SQL)
        .await
        .expect("ledger table");
    drop(c);

    let mut reports = Vec::new();
    reports.push(
        ctx.replica_drill(
            "replica-kill",
            false,
            true,
            Duration::from_millis(500),
            |c| c.cluster.kill("replica1").expect("kill replica1"),
            |c| c.cluster.start_server("replica1").expect("start replica1"),
        )
        .await,
    );
    reports.push(
        ctx.replica_drill(
            "replay-pause-3s",
            true,
            true,
            Duration::from_secs(3),
            |c| c.cluster.pause_replay("replica1").expect("pause"),
            |c| c.cluster.resume_replay("replica1").expect("resume"),
        )
        .await,
    );
    reports.push(
        ctx.replica_drill(
            "replica-stall",
            false,
            true,
            Duration::from_secs(2),
            |c| c.relay.set(Fault::Stall),
            |c| c.relay.set(Fault::Pass),
        )
        .await,
    );
    reports.push(
        ctx.replica_drill(
            "delay-50ms",
            false,
            false,
            Duration::from_secs(2),
            |c| c.relay.set(Fault::Delay(Duration::from_millis(50))),
            |c| c.relay.set(Fault::Pass),
        )
        .await,
    );
    reports.push(
        ctx.replica_drill(
            "delay-500ms",
            false,
            false,
            Duration::from_secs(3),
            |c| c.relay.set(Fault::Delay(Duration::from_millis(500))),
            |c| c.relay.set(Fault::Pass),
        )
        .await,
    );
    reports.push(ctx.primary_restart_drill().await);
    reports.push(ctx.sigterm_drill().await);
    reports.push(ctx.idle_connections_drill().await);
    ctx.control_drill().await;
    for r in &reports {
        eprintln!("{}", r.summary());
    }
}
