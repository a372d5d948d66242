//! Memory benchmark: what an idle client connection costs pgsplit.
//!
//! `cargo run --release -p pgsplit-bench --bin memory` (a program, not a `cargo bench` target). It starts a
//! local primary and two streaming replicas, runs pgsplit in this process (its own 2-worker tokio runtime,
//! `max_client_connections = 20000`, a trust user), raises RLIMIT_NOFILE to its hard limit and then, from a
//! small raw-protocol client in the same process (TCP connect, StartupMessage, read until ReadyForQuery), opens
//! N idle client connections (`PGSPLIT_BENCH_CONNECTIONS`, default 10,000), in concurrent batches that stay
//! under the listen backlog.
//!
//! The clients live in this process too, so their own cost is measured first and subtracted:
//!
//! 1. baseline: N connections (connect + StartupMessage, exactly as in step 2) to a dummy listener that only
//!    accepts and holds the raw sockets on a plain thread. The RSS delta is the client side's own cost.
//! 2. all closed, freed memory handed back to the kernel (`malloc_trim`), then N connections to pgsplit, each
//!    logged in and idle; 2 s later (sessions release their buffers after 1 s idle; no `malloc_trim` this
//!    time, so the RSS is what a running pgsplit keeps) the RSS delta minus the baseline's is pgsplit's.
//!
//! RSS is `VmRSS` of /proc/self/status. Alongside, glibc's `mallinfo2` gives the heap bytes in use, which does
//! not depend on what the allocator keeps or returns. Kernel socket memory is in neither.
//!
//! In one process every connection takes two descriptors (the client's and pgsplit's), so N is capped at about
//! half the RLIMIT_NOFILE hard limit; the report says so when it is.
//!
//! Output: a table on standard output and `target/bench/memory.json` under the repository's directory. As root the
//! servers run as the `postgres` OS user; a non-root user needs nothing more than for the tests (and a hard
//! RLIMIT_NOFILE of at least 2 N + 200 to reach N).

use std::error::Error;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgsplit::config::Config;
use pgsplit::demo::local_config;
use pgsplit::proxy::{Proxy, ProxyHandle};
use pgsplit_harness::{Cluster, ClusterOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const USER: &str = "postgres";
const DB: &str = "postgres";
/// Connections opened concurrently: under the listen backlog, which is 128 for pgsplit's listener (tokio's
/// `TcpListener::bind` default); a fuller accept queue drops SYNs, which clients retry only after 1 s.
const BATCH: usize = 100;
/// Descriptors kept free for everything else (server connections, runtimes, files).
const FD_RESERVE: usize = 128;

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("PGSPLIT_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    if let Err(e) = run() {
        eprintln!("memory bench: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let wanted = match std::env::var("PGSPLIT_BENCH_CONNECTIONS") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("PGSPLIT_BENCH_CONNECTIONS={v:?}: expected a positive integer")
            })?,
        Err(_) => 10_000,
    };
    let (soft, hard) = raise_nofile()?;
    eprintln!("memory bench: RLIMIT_NOFILE raised to {soft} (hard limit {hard})");

    eprintln!("memory bench: starting a primary and 2 streaming replicas…");
    let cluster = Cluster::start(ClusterOptions::default())?;

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pgsplit")
        .enable_all()
        .build()?;
    let config = proxy_config(&cluster)?;
    let proxy: ProxyHandle = server_rt.block_on(async { Proxy::bind(config).await?.spawn() })?;
    let addr = proxy.addr;
    eprintln!("memory bench: pgsplit on {addr}");

    // The clients' runtime: driven by this thread only while it opens or closes connections.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // One login first: pgsplit takes clients once it has probed the servers, and the first login creates the
    // pools and the greeting cache, which are not per-client costs.
    client_rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match connect(addr, true).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("memory bench: first login: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("cannot log in through pgsplit: {e}")),
            }
        }
    })?;
    wait_for(
        || proxy.shared.clients.load(Ordering::Relaxed) == 0,
        Duration::from_secs(10),
    );
    // Login latency, one at a time (logged in, then closed).
    let login_ms = client_rt.block_on(async {
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            connect(addr, true).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok::<_, String>(times[times.len() / 2])
    })?;
    eprintln!("memory bench: one login at a time: median {login_ms:.2} ms");

    let fds_in_use = open_fds();
    let budget = (soft as usize).saturating_sub(fds_in_use + FD_RESERVE) / 2;
    let target = wanted.min(budget);
    let capped = target < wanted;
    if capped {
        eprintln!(
            "memory bench: {wanted} connections need {} descriptors in this process (client + pgsplit side) \
             but RLIMIT_NOFILE allows {soft} ({fds_in_use} in use): opening {target}",
            2 * wanted
        );
    }

    // 1. Baseline: the client side alone, against a listener that only accepts and holds.
    settle();
    let (rss0, heap0) = (rss_bytes()?, heap_in_use());
    let dummy = DummyListener::start(&client_rt)?;
    let started = Instant::now();
    let (clients, failures) = client_rt.block_on(open_many(dummy.addr, target, false));
    let baseline_in = started.elapsed();
    let dummy_n = clients.len();
    wait_for(
        || dummy.accepted.load(Ordering::Relaxed) >= dummy_n,
        Duration::from_secs(30),
    );
    settle();
    let (rss1, heap1) = (rss_bytes()?, heap_in_use());
    eprintln!(
        "memory bench: baseline: {dummy_n} connections to a dummy listener in {:.1} s ({failures} failed): \
         RSS +{} ({:.0} B each), heap +{}",
        baseline_in.as_secs_f64(),
        human(rss1 as i64 - rss0 as i64),
        (rss1 as f64 - rss0 as f64) / dummy_n.max(1) as f64,
        human(heap1 as i64 - heap0 as i64)
    );
    client_rt.block_on(async move { drop(clients) });
    dummy.stop();

    // 2. The same connections to pgsplit, logged in and idle.
    settle();
    let (rss2, heap2) = (rss_bytes()?, heap_in_use());
    let started = Instant::now();
    let (clients, failures) = client_rt.block_on(open_many(addr, target, true));
    let pg_n = clients.len();
    let opened_in = started.elapsed();
    wait_for(
        || proxy.shared.clients.load(Ordering::Relaxed) >= pg_n,
        Duration::from_secs(30),
    );
    // No malloc_trim here: the RSS is what a running pgsplit keeps once its idle clients gave their buffers back.
    std::thread::sleep(IDLE_SETTLE);
    let (rss3, heap3) = (rss_bytes()?, heap_in_use());
    let sessions = proxy.shared.clients.load(Ordering::Relaxed);
    eprintln!(
        "memory bench: {pg_n} idle clients through pgsplit in {:.1} s ({failures} failed; pgsplit counts \
         {sessions}): RSS +{}, heap +{}",
        opened_in.as_secs_f64(),
        human(rss3 as i64 - rss2 as i64),
        human(heap3 as i64 - heap2 as i64)
    );
    client_rt.block_on(async move { drop(clients) });
    wait_for(
        || proxy.shared.clients.load(Ordering::Relaxed) == 0,
        Duration::from_secs(30),
    );

    let per = |after: u64, before: u64, base_after: u64, base_before: u64| -> Option<f64> {
        if pg_n == 0 || dummy_n == 0 {
            return None;
        }
        let client_side = (base_after as f64 - base_before as f64) / dummy_n as f64;
        Some((after as f64 - before as f64) / pg_n as f64 - client_side)
    };
    let rss_per = per(rss3, rss2, rss1, rss0);
    let heap_per = per(heap3, heap2, heap1, heap0);
    // Pages the baseline's clients used may stay resident after they close (rss2 > rss0) and be reused by the
    // clients of step 2, so the subtraction can take off too much: the RSS figure lies between `rss_per` and
    // this bound, which subtracts nothing.
    let rss_per_upper = (pg_n > 0).then(|| (rss3 as f64 - rss2 as f64) / pg_n as f64);
    let client_rss_per = (rss1 as f64 - rss0 as f64) / dummy_n.max(1) as f64;
    let client_heap_per = (heap1 as f64 - heap0 as f64) / dummy_n.max(1) as f64;

    let mut out = String::new();
    out.push_str("\nidle client connections: memory\n");
    out.push_str(&format!("{:<44} {:>14} {:>14}\n", "", "RSS", "heap in use"));
    out.push_str(&format!("{}\n", "-".repeat(74)));
    let line = |label: &str, a: String, b: String| format!("{label:<44} {a:>14} {b:>14}\n");
    out.push_str(&line(
        &format!("before (pgsplit up, {} servers)", cluster.servers().len()),
        human(rss2 as i64),
        human(heap2 as i64),
    ));
    out.push_str(&line(
        &format!("with {pg_n} idle clients"),
        human(rss3 as i64),
        human(heap3 as i64),
    ));
    out.push_str(&line(
        "delta",
        human(rss3 as i64 - rss2 as i64),
        human(heap3 as i64 - heap2 as i64),
    ));
    out.push_str(&line(
        &format!("client side alone ({dummy_n} conns), delta"),
        human(rss1 as i64 - rss0 as i64),
        human(heap1 as i64 - heap0 as i64),
    ));
    out.push_str(&line(
        "client side per connection",
        format!("{client_rss_per:.0} B"),
        format!("{client_heap_per:.0} B"),
    ));
    out.push_str(&line(
        "pgsplit per idle client connection",
        rss_per.map_or("-".into(), |v| format!("{v:.0} B")),
        heap_per.map_or("-".into(), |v| format!("{v:.0} B")),
    ));
    out.push_str(&line(
        "  upper bound (client side not subtracted)",
        rss_per_upper.map_or("-".into(), |v| format!("{v:.0} B")),
        String::new(),
    ));
    out.push_str(&format!(
        "\n(RSS after the baseline's clients closed: {} above where it started; heap in use: {})\n",
        human(rss2 as i64 - rss0 as i64),
        human(heap2 as i64 - heap0 as i64)
    ));
    if capped || pg_n < wanted {
        out.push_str(&format!(
            "\nnote: {pg_n} of the {wanted} connections asked for: in one process each takes 2 descriptors and \
             RLIMIT_NOFILE's hard limit is {hard}{}\n",
            if failures > 0 {
                format!("; {failures} connection attempts failed")
            } else {
                String::new()
            }
        ));
    }
    print!("{out}");

    let report = json!({
        "connections_wanted": wanted,
        "connections_opened": pg_n,
        "connections_failed": failures,
        "capped_by_fd_limit": capped,
        "rlimit_nofile": {"soft": soft, "hard": hard},
        "pgsplit_sessions_counted": sessions,
        "open_seconds": opened_in.as_secs_f64(),
        "baseline_open_seconds": baseline_in.as_secs_f64(),
        "sequential_login_median_ms": login_ms,
        "rss_bytes": {"before": rss2, "after": rss3, "baseline_before": rss0, "baseline_after": rss1},
        "heap_in_use_bytes": {"before": heap2, "after": heap3, "baseline_before": heap0, "baseline_after": heap1},
        "baseline_connections": dummy_n,
        "client_side_rss_bytes_per_connection": client_rss_per,
        "client_side_heap_bytes_per_connection": client_heap_per,
        "pgsplit_rss_bytes_per_idle_client": rss_per,
        "pgsplit_rss_bytes_per_idle_client_upper_bound": rss_per_upper,
        "pgsplit_heap_bytes_per_idle_client": heap_per,
    });
    // The repository's `target/bench/`, where it was when this program was a `cargo bench` target.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = fs::canonicalize(&repo)
        .unwrap_or(repo)
        .join("target/bench/memory.json");
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nwritten: {}", path.display());

    server_rt.block_on(proxy.shutdown());
    server_rt.shutdown_timeout(Duration::from_secs(5));
    drop(cluster);
    Ok(())
}

fn proxy_config(cluster: &Cluster) -> Result<Config> {
    let extra = format!(
        "admin_listen = \"127.0.0.1:0\"\nmax_client_connections = 20000\n\
         [lag]\nmax_lag = \"60s\"\n\
         [[databases]]\nname = \"{DB}\"\n\
         [[users]]\nname = \"{USER}\"\nauth = \"trust\"\n"
    );
    Ok(local_config(cluster, 0, &extra, "<memory bench>")?)
}

// ---------------------------------------------------------------------------------------------------------------
// The raw-protocol client

fn startup_message() -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    pgsplit::protocol::startup::encode_startup(&mut out, &[("user", USER), ("database", DB)]);
    out.to_vec()
}

/// Connects and sends a StartupMessage; with `login`, reads until ReadyForQuery (an ErrorResponse fails).
async fn connect(addr: SocketAddr, login: bool) -> std::result::Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&startup_message())
        .await
        .map_err(|e| format!("send startup: {e}"))?;
    if !login {
        return Ok(s);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                break;
            }
            match buf[0] {
                b'Z' => return Ok(s),
                b'E' => {
                    let text = String::from_utf8_lossy(&buf[5..1 + len]).replace('\0', " ");
                    return Err(format!("login refused: {}", text.trim()));
                }
                _ => {
                    buf.drain(..1 + len);
                }
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) => return Err("connection closed during login".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Opens `n` connections, `BATCH` at a time; returns the ones that worked and how many failed. Stops at the
/// first batch in which every attempt failed.
async fn open_many(addr: SocketAddr, n: usize, login: bool) -> (Vec<TcpStream>, usize) {
    let mut streams = Vec::with_capacity(n);
    let mut failures = 0;
    let mut first_error = None;
    while streams.len() + failures < n {
        let batch = BATCH.min(n - streams.len() - failures);
        let mut set = JoinSet::new();
        for _ in 0..batch {
            set.spawn(connect(addr, login));
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(s)) => {
                    streams.push(s);
                    ok += 1;
                }
                Ok(Err(e)) => {
                    failures += 1;
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if ok == 0 {
            break;
        }
    }
    if let Some(e) = first_error {
        eprintln!("memory bench: {failures} connection(s) to {addr} failed; first error: {e}");
    }
    (streams, failures)
}

/// A listener that accepts connections on a plain thread and holds the raw sockets.
struct DummyListener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl DummyListener {
    fn start(rt: &tokio::runtime::Runtime) -> Result<DummyListener> {
        // A large backlog (std's default is 128), then a blocking std listener.
        let listener = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("127.0.0.1:0".parse().expect("address"))?;
            socket.listen(4096)?.into_std()
        })?;
        listener.set_nonblocking(false)?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                held.push(s);
                count.store(held.len(), Ordering::Relaxed);
            }
        });
        Ok(DummyListener {
            addr,
            accepted,
            stop,
            thread,
        })
    }

    /// Closes every held connection and ends the thread.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = std::net::TcpStream::connect(self.addr);
        let _ = self.thread.join();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Measuring

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard).
fn raise_nofile() -> Result<(u64, u64)> {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()).into());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()).into());
        }
        Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
    }
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// VmRSS of this process, in bytes.
fn rss_bytes() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

/// Heap bytes in use (all arenas plus mmapped chunks), from glibc.
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// Longer than a session's idle buffer release (1 s).
const IDLE_SETTLE: Duration = Duration::from_millis(2000);

/// Lets background work finish and hands freed memory back to the kernel before a measurement.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    std::thread::sleep(Duration::from_millis(500));
}

fn wait_for(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn human(bytes: i64) -> String {
    let b = bytes.abs() as f64;
    let sign = if bytes < 0 { "-" } else { "" };
    if b >= 1024.0 * 1024.0 {
        format!("{sign}{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{sign}{:.1} KiB", b / 1024.0)
    } else {
        format!("{sign}{b:.0} B")
    }
}
