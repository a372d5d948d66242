//! Load benchmark: pgbench against the primary directly, through PgBouncer and through pgsplit.
//!
//! `cargo run --release -p pgsplit-bench --bin load` (a program, not a `cargo bench` target). It has two modes.
//!
//! **Capped-host mode** (the default): each PostgreSQL server — a primary and three replicas — gets
//! `PGSPLIT_BENCH_SERVER_CPU` cores (default 0.25) in a cgroup of its own (see [`cgroup`]; a 10 ms CFS period), so
//! that on a small machine a replica adds a server's worth of capacity, as on real hosts. Workloads:
//! `select-simple` (`-S`), `select-prepared`, `mix-90-10` (`-b select-only@9 -b simple-update@1`) and
//! `write-read`; targets: direct, PgBouncer, pgsplit over 1 and 2 replicas (`pgsplit-1r`, `pgsplit-2r`) and over 2
//! with `primary_reads = "include"` (`pgsplit-2r+prim`); `select-simple` adds pgsplit over 0 and 3 replicas for the
//! scaling curve: TPS with 0–3 replicas over PgBouncer, over the 0-replica point and against linear (N servers
//! taking reads × one), and the goals (2 replicas ≥ 1.9 × PgBouncer on `-S`, 2 + primary and 3 replicas ≥ 2.85 ×,
//! the 90/10 mix ≥ 1.8 ×). Each run also shows every server's cores used and throttled periods, and the machine's
//! busy share: keep it under 100 % (4 × 0.25 on 2 cores leaves one for pgbench and the proxy). Where cgroups are
//! not writable it prints `cgroups not writable: running uncapped` and runs the same set without quotas. The
//! database `bench` runs with `synchronous_commit = on` in this mode (PostgreSQL's default, as on real hosts: an
//! asynchronous commit reaches the replicas up to 200 ms later, and every read after a client's write waits for
//! it). Report: `target/bench/load-capped.json`.
//!
//! **Uncapped mode** (`PGSPLIT_BENCH_SERVER_CPU=0`): the bench as it was. It:
//!
//! 1. starts a local primary and two streaming replicas ([`Cluster::start`]),
//! 2. starts pgsplit in this process, on its own tokio runtime of `PGSPLIT_BENCH_WORKERS` threads (`[pools]`
//!    8/8, `[lag] max_lag = "60s"`, a trust user), plus a second pgsplit with `[routing] read_write_split = false`,
//! 3. starts PgBouncer (transaction pooling, pool size 8, in front of the primary only: it does not split),
//! 4. loads `pgbench -i -s 10` on the primary and waits until the replicas have replayed it,
//! 5. runs every workload against every target, alternating targets within each round (the start target rotates
//!    from round to round), and prints per-run rows, medians over rounds and the pgsplit/PgBouncer and
//!    pgsplit/direct ratios. The same goes to `target/bench/load.json` under the repository's directory.
//!
//! The `write-read` workload (read-your-writes, issue 14) is a pgbench script in its own database `ryw` (which has
//! `synchronous_commit = on`, PostgreSQL's default; the harness turns it off cluster-wide, and an asynchronous
//! commit reaches the replicas only when the WAL writer flushes it, up to 200 ms later): insert a row, then select
//! it; a select that does not find the row inserts its id into `ryw_stale`, counted after the run. It runs, 16
//! clients, against pgsplit (default consistency, `session`), a third pgsplit with `consistency = "eventual"` and
//! pgsplit with `read_write_split = false` (everything on the primary); its "to replica" is the share of the
//! SELECTs (one per transaction) that ran on a replica. (In the capped mode it runs against the mode's targets.)
//!
//! Environment: `PGSPLIT_BENCH_SERVER_CPU` (cores per server in the capped mode, default 0.25; 0: uncapped mode),
//! `PGSPLIT_BENCH_ROUNDS` (default 3), `PGSPLIT_BENCH_SECONDS` (pgbench `-T`, default 10),
//! `PGSPLIT_BENCH_WORKLOADS` (comma-separated names among the mode's workloads, default all: e.g. `write-read`),
//! `PGSPLIT_BENCH_WORKERS` (pgsplit runtime threads, default 1: like PgBouncer's one thread, and what a 2-core
//! machine that also runs the servers and pgbench does best with — `workers = 1` in a configuration),
//! `PGSPLIT_LOG` (pgsplit's log filter, default `warn`), `PGSPLIT_BENCH_CLIENT_TLS` (`1`: clients talk TLS to
//! pgsplit and PgBouncer — pgsplit `[tls] client_mode = "require"`, PgBouncer `client_tls_sslmode = require`, with
//! a certificate made here — and pgbench connects with `sslmode=prefer`, so the direct rows stay plain text; run
//! the bench with and without it, e.g. `PGSPLIT_BENCH_WORKLOADS=select-simple`, to compare the TLS cost).
//!
//! Measured per run: the machine's busy share (/proc/stat busy CPU / (elapsed × CPUs)), TPS (pgbench, without
//! connection time), average latency (pgbench's `latency average`), p99 latency (computed here from pgbench's
//! per-transaction logs, `-l`), failed transactions, and the proxy's CPU time per transaction: for pgsplit this
//! process's user+system CPU (getrusage) over the run — the bench itself only waits for pgbench meanwhile — and
//! for PgBouncer its process's `/proc/<pid>/stat` utime+stime.
//!
//! Requirements. As root (what this machine runs): nothing but the PostgreSQL server binaries and pgbench (as for
//! the tests); when `pgbouncer` is missing the bench runs `apt-get update` and `apt-get install -y pgbouncer`
//! itself, and runs PostgreSQL and PgBouncer as the `postgres` OS user (both refuse to run as root).
//! As a non-root user: install PgBouncer yourself (`sudo apt-get install pgbouncer`; it lands in `/usr/sbin`,
//! which is searched too) or the PgBouncer rows are skipped with a message; PostgreSQL and PgBouncer then run as
//! you, in temporary directories you own.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgsplit::classify::Reason;
use pgsplit::config::Config;
use pgsplit::proxy::{Proxy, ProxyHandle, Shared};
use pgsplit::stats::Destination;
use pgsplit_harness::{find_program, free_port, is_root, postgres_owner, Cluster, ClusterOptions};
use serde_json::{json, Value};

mod capped;
mod cgroup;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The database pgbench uses, and the login everywhere (trusted on the servers, in pgsplit and in PgBouncer).
const DB: &str = "bench";
const USER: &str = "postgres";
/// pgbench scale factor.
const SCALE: u32 = 10;
/// Pool sizes of pgsplit (per server) and PgBouncer.
const POOL_SIZE: usize = 8;

// ---------------------------------------------------------------------------------------------------------------
// Targets and workloads

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Direct,
    PgBouncer,
    Pgsplit,
    /// pgsplit with `read_write_split = false` (classification off: everything goes to the primary).
    PgsplitNoSplit,
    /// pgsplit with `[routing] consistency = "eventual"` (no read-your-writes: the behaviour before issue 14).
    PgsplitEventual,
    /// Capped mode: pgsplit over the first N replicas (0 to 3); the primary takes reads only as the fallback.
    PgsplitReplicas(u8),
    /// Capped mode: pgsplit over replicas 1 and 2 with `[routing] primary_reads = "include"`.
    PgsplitWithPrimary,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "pgbouncer",
            Target::Pgsplit => "pgsplit",
            Target::PgsplitNoSplit => "pgsplit-nosplit",
            Target::PgsplitEventual => "pgsplit-eventual",
            Target::PgsplitReplicas(n) => ["pgsplit-0r", "pgsplit-1r", "pgsplit-2r", "pgsplit-3r"]
                .get(usize::from(n))
                .copied()
                .unwrap_or("pgsplit-?r"),
            Target::PgsplitWithPrimary => "pgsplit-2r+prim",
        }
    }

    /// How the bench starts the pgsplit behind this target; `None` for the targets that are not pgsplit.
    fn proxy(self) -> Option<ProxySpec> {
        let spec = |replicas, split, routing, optional| ProxySpec {
            replicas,
            split,
            routing,
            optional,
        };
        match self {
            Target::Direct | Target::PgBouncer => None,
            Target::Pgsplit => Some(spec(None, true, "", false)),
            Target::PgsplitNoSplit => Some(spec(None, false, "", false)),
            Target::PgsplitEventual => Some(spec(None, true, "consistency = \"eventual\"\n", true)),
            Target::PgsplitReplicas(n) => Some(spec(Some(usize::from(n)), true, "", false)),
            Target::PgsplitWithPrimary => {
                Some(spec(Some(2), true, "primary_reads = \"include\"\n", true))
            }
        }
    }
}

/// What a pgsplit target's configuration differs in.
struct ProxySpec {
    /// The first N replicas of the cluster; `None`: all of them.
    replicas: Option<usize>,
    /// `[routing] read_write_split`.
    split: bool,
    /// Lines added to `[routing]`.
    routing: &'static str,
    /// A pgsplit that does not know the setting cannot run these rows: they are skipped, with a message.
    optional: bool,
}

struct Workload {
    name: &'static str,
    /// pgbench arguments besides connection, -T and logging.
    args: &'static [&'static str],
    /// A pgbench script (`-f`), written to a file for the run; `None` for the built-in scripts.
    script: Option<&'static str>,
    /// The database it runs in.
    db: &'static str,
    /// The targets it runs against, in this order (rotated from round to round).
    targets: &'static [Target],
    /// PgBouncer 1.18 in transaction mode cannot run it (protocol-level prepared statements).
    pgbouncer: bool,
    /// Runs `VACUUM` of branches/tellers and truncates history first, as pgbench does without `-n`.
    tpcb: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "select-simple",
        args: &["-S", "-M", "simple", "-c", "16", "-j", "2"],
        script: None,
        db: DB,
        targets: &[
            Target::Direct,
            Target::PgBouncer,
            Target::Pgsplit,
            Target::PgsplitNoSplit,
        ],
        pgbouncer: true,
        tpcb: false,
    },
    Workload {
        name: "select-extended",
        args: &["-S", "-M", "extended", "-c", "16", "-j", "2"],
        script: None,
        db: DB,
        targets: &[Target::Direct, Target::PgBouncer, Target::Pgsplit],
        pgbouncer: true,
        tpcb: false,
    },
    Workload {
        name: "select-prepared",
        args: &["-S", "-M", "prepared", "-c", "16", "-j", "2"],
        script: None,
        db: DB,
        targets: &[Target::Direct, Target::PgBouncer, Target::Pgsplit],
        pgbouncer: false,
        tpcb: false,
    },
    Workload {
        name: "tpcb-simple",
        args: &["-M", "simple", "-c", "16", "-j", "2"],
        script: None,
        db: DB,
        targets: &[Target::Direct, Target::PgBouncer, Target::Pgsplit],
        pgbouncer: true,
        tpcb: true,
    },
    Workload {
        name: "select-1client",
        args: &["-S", "-M", "simple", "-c", "1", "-j", "1"],
        script: None,
        db: DB,
        targets: &[Target::Direct, Target::PgBouncer, Target::Pgsplit],
        pgbouncer: true,
        tpcb: false,
    },
    Workload {
        name: "write-read",
        args: &["-M", "simple", "-c", "16", "-j", "2"],
        script: Some(WRITE_READ_SCRIPT),
        db: RYW_DB,
        targets: &[
            Target::Pgsplit,
            Target::PgsplitEventual,
            Target::PgsplitNoSplit,
        ],
        pgbouncer: false,
        tpcb: false,
    },
];

/// The database of the `write-read` workload, with `synchronous_commit = on`.
const RYW_DB: &str = "ryw";

/// Its setup, run on the primary before the replicas are made.
const RYW_SETUP: &str = "CREATE DATABASE ryw;\n\
     ALTER DATABASE ryw SET synchronous_commit = on;\n\
     \\connect ryw\n\
     CREATE TABLE ryw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, client int NOT NULL);\n\
     CREATE TABLE ryw_stale (id bigint NOT NULL);";

/// Insert a row, then select it; a select that does not see the row records it as stale.
const WRITE_READ_SCRIPT: &str = "\
INSERT INTO ryw (client) VALUES (:client_id) RETURNING id \\gset
SELECT count(*) AS found FROM ryw WHERE id = :id \\gset
\\if :found = 0
INSERT INTO ryw_stale (id) VALUES (:id);
\\endif
";

/// One pgbench run's result.
#[derive(Debug, Clone, Default)]
struct RunResult {
    tps: Option<f64>,
    avg_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu_us_per_txn: Option<f64>,
    /// Busy CPU time of the whole machine (every process: pgbench, the servers, the proxy, the kernel) per
    /// transaction, from /proc/stat: what the proxy costs everything else too.
    machine_us_per_txn: Option<f64>,
    /// The machine's busy share over the run: busy CPU time / (elapsed × CPUs). Near 1: saturated, and the
    /// run measures the machine rather than the target.
    machine_busy: Option<f64>,
    /// Capped mode: each server's CPU over the run.
    servers: Vec<capped::ServerRun>,
    /// pgsplit only: the share of units of work (statements or batches up to Sync) it sent to a replica; for
    /// `write-read`, the share of its SELECTs (one per transaction) that ran on a replica.
    replica_share: Option<f64>,
    /// `write-read` only: SELECTs that did not see the row their transaction had just inserted.
    stale_reads: Option<u64>,
    transactions: u64,
    failed: u64,
    /// pgbench reported aborted clients or exited with an error.
    error: Option<String>,
}

/// One row of the table: `result` is `None` for a target that cannot run the workload.
struct Row {
    workload: &'static str,
    target: Target,
    round: usize,
    result: Option<RunResult>,
}

// ---------------------------------------------------------------------------------------------------------------
// main

fn main() {
    // There are no arguments: the environment variables above are the settings.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("PGSPLIT_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    if let Err(e) = run() {
        eprintln!("load bench: error: {e}");
        std::process::exit(1);
    }
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}={v:?}: expected a positive integer").into()),
        },
        Err(_) => Ok(default),
    }
}

/// The workloads of `all` that `PGSPLIT_BENCH_WORKLOADS` names (comma-separated), or all of them.
fn selected_workloads(all: &'static [Workload]) -> Result<Vec<&'static Workload>> {
    let Ok(list) = std::env::var("PGSPLIT_BENCH_WORKLOADS") else {
        return Ok(all.iter().collect());
    };
    let mut selected = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let w = all.iter().find(|w| w.name == name).ok_or_else(|| {
            format!(
                "PGSPLIT_BENCH_WORKLOADS: no workload {name:?} in this mode; its workloads are {}",
                all.iter().map(|w| w.name).collect::<Vec<_>>().join(", ")
            )
        })?;
        if !selected.iter().any(|s: &&Workload| s.name == w.name) {
            selected.push(w);
        }
    }
    if selected.is_empty() {
        return Err("PGSPLIT_BENCH_WORKLOADS names no workload".into());
    }
    // In the order of `all`.
    selected.sort_by_key(|w| all.iter().position(|x| x.name == w.name));
    Ok(selected)
}

fn run() -> Result<()> {
    let rounds = env_number("PGSPLIT_BENCH_ROUNDS", 3)? as usize;
    let seconds = env_number("PGSPLIT_BENCH_SECONDS", 10)?;
    // Capped-host mode (the default): its own workloads and targets, three replicas, servers in CPU quotas.
    let server_cpu = capped::server_cpu()?;
    let workloads = selected_workloads(if server_cpu.is_some() {
        capped::WORKLOADS
    } else {
        WORKLOADS
    })?;
    let replicas = if server_cpu.is_some() { 3 } else { 2 };
    let bindir = Cluster::find_bindir()?;
    // The versioned bin directory first: /usr/bin/pgbench is Debian's Perl wrapper.
    let pgbench = find_program("pgbench", std::slice::from_ref(&bindir))
        .ok_or("pgbench not found on PATH nor in the PostgreSQL bin directory (install postgresql-contrib)")?;
    let pgbouncer_bin = if workloads.iter().any(|w| w.pgbouncer) {
        ensure_pgbouncer()
    } else {
        None
    };
    eprintln!(
        "load bench: {rounds} round(s) of {seconds} s per run; workloads {}; pgbench {}; PostgreSQL binaries in {}",
        workloads.iter().map(|w| w.name).collect::<Vec<_>>().join(", "),
        pgbench.display(),
        bindir.display()
    );

    eprintln!("load bench: starting a primary and {replicas} streaming replicas…");
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions {
        replicas,
        setup_sql: vec![format!("CREATE DATABASE {DB}"), RYW_SETUP.to_string()],
        ..ClusterOptions::default()
    })?;
    eprintln!(
        "load bench: cluster up in {:.1} s (primary :{}, replicas {})",
        started.elapsed().as_secs_f64(),
        cluster.primary().port,
        cluster
            .replicas()
            .iter()
            .map(|r| format!(":{}", r.port))
            .collect::<Vec<_>>()
            .join(", ")
    );

    eprintln!("load bench: pgbench -i -s {SCALE} on the primary…");
    let started = Instant::now();
    let init = pgbench_command(&pgbench, cluster.primary().port)
        .args(["-i", "-q", "-s", &SCALE.to_string(), DB])
        .output()?;
    if !init.status.success() {
        return Err(format!(
            "pgbench -i failed ({}): {}",
            init.status,
            String::from_utf8_lossy(&init.stderr)
        )
        .into());
    }
    if server_cpu.is_some() {
        // The capped mode's mixes write: with PostgreSQL's default `synchronous_commit = on` (the harness turns
        // it off cluster-wide for the tests' speed), as on the hosts it stands for. An asynchronous commit
        // reaches the replicas only when the WAL writer flushes it, up to 200 ms later, and every read after a
        // client's own write would wait for it. Direct, PgBouncer and pgsplit all run with it alike.
        let primary = cluster.primary().name.clone();
        cluster.psql(
            &primary,
            &format!("ALTER DATABASE {DB} SET synchronous_commit = on"),
        )?;
    }
    for r in cluster.replicas() {
        cluster.wait_replayed(&r.name, Duration::from_secs(300))?;
    }
    eprintln!(
        "load bench: loaded and replayed on every replica in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The servers' CPU quotas, once loaded (the load itself runs uncapped). Dropped before `cluster`, also on
    // an error: the processes go back and the cgroups are removed.
    let cap = server_cpu.map(|cpus| capped::Cap::apply(&cluster, cpus));

    // pgsplit, in this process.
    // Built as the pgsplit binary builds it: one thread runs everything with 1 worker, else a pool.
    let workers = env_number("PGSPLIT_BENCH_WORKERS", 1)? as usize;
    let runtime = Arc::new(if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("pgsplit")
            .enable_all()
            .build()?
    });
    let targets: BTreeSet<Target> = workloads
        .iter()
        .flat_map(|w| w.targets.iter().copied())
        .collect();
    let mut proxies: Vec<(Target, ProxyHandle)> = Vec::new();
    for &target in &targets {
        let Some(spec) = target.proxy() else {
            continue;
        };
        let started = proxy_config(&cluster, &spec)
            .and_then(|config| Ok(runtime.block_on(async { Proxy::bind(config).await?.spawn() })?));
        match started {
            Ok(p) => {
                let mut notes = vec![format!("{} replica(s)", spec.replicas.unwrap_or(replicas))];
                if !spec.split {
                    notes.push("read_write_split = false".into());
                }
                notes.extend(spec.routing.lines().map(str::to_string));
                eprintln!(
                    "load bench: {} on {} ({})",
                    target.label(),
                    p.addr,
                    notes.join(", ")
                );
                proxies.push((target, p));
            }
            // A pgsplit that does not know the setting yet cannot run these rows: they are skipped.
            Err(e) if spec.optional => eprintln!(
                "load bench: cannot start {} ({e}): skipping its rows",
                target.label()
            ),
            Err(e) => return Err(format!("start {}: {e}", target.label()).into()),
        }
    }
    eprintln!(
        "load bench: pgsplit with {} worker thread(s)",
        workers.max(1)
    );
    // A thread that drives the runtime for the whole bench (a single-threaded runtime runs tasks only inside
    // `block_on`); its CPU time is pgsplit's.
    let (driver_stop, driver_stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let runtime = runtime.clone();
        std::thread::Builder::new()
            .name("pgsplit".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = driver_stopped.await;
                })
            })?
    };

    // PgBouncer, in front of the primary.
    let bouncer = match &pgbouncer_bin {
        Some(bin) => Some(PgBouncer::start(bin, cluster.primary().port)?),
        None => None,
    };
    if let Some(b) = &bouncer {
        eprintln!(
            "load bench: {} on 127.0.0.1:{} (pid {}), transaction pooling, pool_size {POOL_SIZE}",
            b.version, b.port, b.pid
        );
    }

    let ports: BTreeMap<Target, u16> = [
        (Target::Direct, Some(cluster.primary().port)),
        (Target::PgBouncer, bouncer.as_ref().map(|b| b.port)),
    ]
    .into_iter()
    .filter_map(|(t, p)| p.map(|p| (t, p)))
    .chain(proxies.iter().map(|(t, p)| (*t, p.addr.port())))
    .filter(|(t, _)| targets.contains(t))
    .collect();

    // Warm-up: fill every pool and the caches, so that the first measured run is not the one that connects.
    eprintln!("load bench: warming up every target…");
    let scripts = tempfile::Builder::new()
        .prefix("pgsplit-load-scripts-")
        .tempdir()?;
    for (&target, &port) in &ports {
        let r = pgbench_run(
            &pgbench,
            port,
            DB,
            &["-S", "-M", "simple", "-c", "16", "-j", "2"],
            1,
        )?;
        if let Some(e) = r.error {
            eprintln!("load bench: warm-up against {}: {e}", target.label());
        }
    }
    // Workloads with their own script and database: their pools too.
    for w in &workloads {
        let Some(script) = w.script else { continue };
        let path = scripts.path().join(format!("{}.sql", w.name));
        fs::write(&path, script)?;
        for target in w.targets {
            let Some(&port) = ports.get(target) else {
                continue;
            };
            if *target == Target::PgBouncer && !w.pgbouncer {
                continue;
            }
            let mut args: Vec<&str> = w.args.to_vec();
            let path = path.to_string_lossy();
            args.extend(["-f", &path]);
            let r = pgbench_run(&pgbench, port, w.db, &args, 1)?;
            if let Some(e) = r.error {
                eprintln!(
                    "load bench: warm-up of {} against {}: {e}",
                    w.name,
                    target.label()
                );
            }
        }
    }

    let cgroups = cap.as_ref().and_then(|c| c.cgroups());
    let cap_start = cgroups.map(|g| (Instant::now(), g.stats()));
    let bench = Bench {
        pgbench: &pgbench,
        cluster: &cluster,
        ports: &ports,
        proxies: proxies
            .iter()
            .map(|(t, p)| (*t, p.shared.clone()))
            .collect(),
        scripts: scripts.path(),
        bouncer_pid: bouncer.as_ref().map(|b| b.pid),
        cgroups,
        seconds,
    };
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for &w in &workloads {
            let mut targets: Vec<Target> = w.targets.to_vec();
            let shift = (round - 1) % targets.len();
            targets.rotate_left(shift);
            for target in targets {
                let runnable =
                    (target != Target::PgBouncer || w.pgbouncer) && ports.contains_key(&target);
                let result = if runnable {
                    let r = bench.run(w, target)?;
                    eprintln!(
                        "load bench: round {round} {:<16} {:<16} {}",
                        w.name,
                        target.label(),
                        brief(&r)
                    );
                    Some(r)
                } else {
                    None
                };
                rows.push(Row {
                    workload: w.name,
                    target,
                    round,
                    result,
                });
            }
        }
    }
    // The servers' counters over every measured run (and the pauses between them).
    let cap_totals = match (cgroups, cap_start) {
        (Some(g), Some((at, before))) => Some(capped::ServerTotals::since(g, at, &before)),
        _ => None,
    };

    let report = Report::new(
        &rows,
        &workloads,
        rounds,
        seconds,
        bouncer.as_ref().map(|b| b.version.clone()),
        cap.as_ref().map(|c| (c, cap_totals)),
    );
    print!("{}", report.table());
    // The repository's `target/bench/`, where it was when this program was a `cargo bench` target.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = if cap.is_some() {
        "load-capped.json"
    } else {
        "load.json"
    };
    let path = fs::canonicalize(&repo)
        .unwrap_or(repo)
        .join("target/bench")
        .join(file);
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")?;
    println!("\nwritten: {}", path.display());

    // Clean up: PgBouncer, the proxies, the cgroups, then the servers (Cluster's Drop).
    drop(bouncer);
    let _ = driver_stop.send(());
    let _ = driver.join();
    runtime.block_on(async {
        for (_, p) in proxies {
            p.shutdown().await;
        }
    });
    if let Ok(runtime) = Arc::try_unwrap(runtime) {
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
    drop(cap);
    drop(cluster);
    Ok(())
}

fn brief(r: &RunResult) -> String {
    let mut s = format!(
        "tps {}  avg {} ms  p99 {} ms  cpu {} µs/txn  failed {}",
        fmt_opt(r.tps, 0),
        fmt_opt(r.avg_ms, 3),
        fmt_opt(r.p99_ms, 3),
        fmt_opt(r.cpu_us_per_txn, 1),
        r.failed
    );
    if let Some(busy) = r.machine_busy {
        let _ = write!(s, "  machine busy {:.0}%", busy * 100.0);
    }
    if !r.servers.is_empty() {
        let _ = write!(s, "  servers {}", capped::ServerRun::brief(&r.servers));
    }
    if let Some(share) = r.replica_share {
        let _ = write!(s, "  to replica {:.1}%", share * 100.0);
    }
    if let Some(stale) = r.stale_reads {
        let _ = write!(s, "  stale reads {stale}");
    }
    if let Some(e) = &r.error {
        let _ = write!(s, "  ERROR: {e}");
    }
    s
}

/// `PGSPLIT_BENCH_CLIENT_TLS=1`: a certificate and key for the proxies' client side, made once (rcgen), in a
/// directory PgBouncer's user can read.
struct ClientTlsFiles {
    cert: PathBuf,
    key: PathBuf,
    dir: tempfile::TempDir,
}

fn client_tls() -> Option<&'static ClientTlsFiles> {
    static FILES: std::sync::OnceLock<Option<ClientTlsFiles>> = std::sync::OnceLock::new();
    FILES
        .get_or_init(|| {
            if std::env::var("PGSPLIT_BENCH_CLIENT_TLS").ok().as_deref() != Some("1") {
                return None;
            }
            match make_client_tls() {
                Ok(files) => Some(files),
                Err(e) => {
                    eprintln!("load bench: cannot make the TLS certificate ({e}): TLS off");
                    None
                }
            }
        })
        .as_ref()
}

fn make_client_tls() -> Result<ClientTlsFiles> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let dir = tempfile::Builder::new()
        .prefix("pgsplit-load-tls-")
        .tempdir()?;
    let files = ClientTlsFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        dir,
    };
    fs::write(&files.cert, cert.pem())?;
    fs::write(&files.key, key.serialize_pem())?;
    if let Some((uid, gid)) = postgres_owner()? {
        for p in [files.dir.path(), &files.cert, &files.key] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
        }
    }
    Ok(files)
}

/// pgsplit's configuration: the local cluster's primary and the replicas `spec` names, with a trust user and the
/// bench's pool and lag settings; `spec.routing` is added to `[routing]`.
fn proxy_config(cluster: &Cluster, spec: &ProxySpec) -> Result<Config> {
    let ProxySpec { split, routing, .. } = spec;
    let tls = client_tls().map_or_else(String::new, |f| {
        format!(
            "[tls]\nclient_mode = \"require\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            f.cert.display(),
            f.key.display()
        )
    });
    let extra = format!(
        "admin_listen = \"127.0.0.1:0\"\n{tls}\
         [routing]\nread_write_split = {split}\n{routing}\
         [pools]\nwrite_pool_size = {POOL_SIZE}\nread_pool_size = {POOL_SIZE}\n\
         [lag]\nmax_lag = \"60s\"\n\
         [[databases]]\nname = \"{DB}\"\n\
         [[databases]]\nname = \"{RYW_DB}\"\n\
         [[users]]\nname = \"{USER}\"\nauth = \"trust\"\n"
    );
    let mut toml = format!(
        "listen = \"127.0.0.1:0\"\n{extra}\n\
         [primary]\nname = \"primary\"\nhost = \"127.0.0.1\"\nport = {}\n",
        cluster.primary().port
    );
    let replicas = cluster.replicas();
    let n = spec.replicas.unwrap_or(replicas.len()).min(replicas.len());
    for r in &replicas[..n] {
        let _ = write!(
            toml,
            "[[replicas]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            r.name, r.port
        );
    }
    Ok(Config::from_toml_str(&toml, "<load bench>")?)
}

// ---------------------------------------------------------------------------------------------------------------
// Running pgbench

struct Bench<'a> {
    pgbench: &'a Path,
    cluster: &'a Cluster,
    ports: &'a BTreeMap<Target, u16>,
    proxies: BTreeMap<Target, Arc<Shared>>,
    bouncer_pid: Option<u32>,
    /// Capped mode: the servers' cgroups, read before and after each run.
    cgroups: Option<&'a cgroup::ServerCgroups>,
    seconds: u64,
    /// Where the workloads' scripts are (`<name>.sql`, written at the warm-up).
    scripts: &'a Path,
}

impl Bench<'_> {
    fn run(&self, w: &Workload, target: Target) -> Result<RunResult> {
        if w.tpcb {
            // What pgbench does before a built-in TPC-B run without -n, done directly so every target gets the
            // same (and the proxy's CPU is not charged for it).
            self.cluster.psql(
                "primary",
                &format!(
                    "\\connect {DB}\nVACUUM pgbench_branches;\nVACUUM pgbench_tellers;\nTRUNCATE pgbench_history;"
                ),
            )?;
        }
        if w.script.is_some() {
            self.cluster.psql(
                "primary",
                &format!("\\connect {}\nTRUNCATE ryw_stale;", w.db),
            )?;
        }
        let script = self.scripts.join(format!("{}.sql", w.name));
        let script = script.to_string_lossy();
        let mut args: Vec<&str> = w.args.to_vec();
        if w.script.is_some() {
            args.extend(["-f", &script]);
        }
        let port = self.ports[&target];
        let units_before = self.proxies.get(&target).map(|s| units(s));
        let cpu_before = self.proxy_cpu(target);
        let servers_before = self.cgroups.map(|g| g.stats());
        let machine_before = machine_busy_us();
        let started = Instant::now();
        let mut r = pgbench_run(self.pgbench, port, w.db, &args, self.seconds)?;
        let elapsed = started.elapsed().as_secs_f64();
        let machine_after = machine_busy_us();
        let servers_after = self.cgroups.map(|g| g.stats());
        let cpu_after = self.proxy_cpu(target);
        if let (Some((a, cores)), Some((b, _))) = (machine_before, machine_after) {
            if r.transactions > 0 {
                r.machine_us_per_txn = Some((b - a) / r.transactions as f64);
            }
            if elapsed > 0.0 && cores > 0 {
                r.machine_busy = Some((b - a) / (elapsed * 1e6 * cores as f64));
            }
        }
        if let (Some(before), Some(after)) = (servers_before, servers_after) {
            r.servers = capped::ServerRun::between(&before, &after, elapsed);
        }
        if let (Some((p0, r0)), Some(shared)) = (units_before, self.proxies.get(&target)) {
            let (p1, r1) = units(shared);
            let total = (p1 - p0) + (r1 - r0);
            if w.script.is_some() {
                // One SELECT per transaction, and only SELECTs can run on a replica.
                if r.transactions > 0 {
                    r.replica_share = Some(((r1 - r0) as f64 / r.transactions as f64).min(1.0));
                }
            } else if total > 0 {
                r.replica_share = Some((r1 - r0) as f64 / total as f64);
            }
        }
        if w.script.is_some() {
            let stale = self.cluster.psql(
                "primary",
                &format!("\\connect {}\nSELECT count(*) FROM ryw_stale;", w.db),
            )?;
            r.stale_reads = Some(
                stale
                    .trim()
                    .parse()
                    .map_err(|_| format!("count of ryw_stale: {stale:?}"))?,
            );
        }
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            if r.transactions > 0 {
                r.cpu_us_per_txn = Some((b - a) / r.transactions as f64);
            }
        }
        Ok(r)
    }

    /// CPU time (µs) the proxy has used so far: this process for pgsplit, PgBouncer's process for PgBouncer.
    fn proxy_cpu(&self, target: Target) -> Option<f64> {
        match target {
            Target::Direct => None,
            Target::PgBouncer => self.bouncer_pid.and_then(process_cpu_us),
            Target::Pgsplit
            | Target::PgsplitNoSplit
            | Target::PgsplitEventual
            | Target::PgsplitReplicas(_)
            | Target::PgsplitWithPrimary => Some(self_cpu_us()),
        }
    }
}

/// Units of work pgsplit has sent so far (routed afresh or following a pinned server): (primary, replicas).
fn units(shared: &Shared) -> (u64, u64) {
    let sum = |d: Destination| {
        Reason::ALL
            .iter()
            .map(|r| shared.stats.count(d, *r))
            .sum::<u64>()
            + shared.stats.pinned_count(d)
    };
    (sum(Destination::Primary), sum(Destination::Replica))
}

/// A pgbench command connecting to 127.0.0.1:`port` as the bench user, with PG* variables removed.
fn pgbench_command(pgbench: &Path, port: u16) -> Command {
    let mut cmd = Command::new(pgbench);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .stdin(Stdio::null());
    if client_tls().is_some() {
        // TLS where the target offers it (the proxies), plain text to the servers (ssl off).
        cmd.env("PGSSLMODE", "prefer");
    }
    die_with_parent(&mut cmd);
    cmd
}

/// Runs pgbench for `seconds` with per-transaction logs and parses what it reports.
fn pgbench_run(
    pgbench: &Path,
    port: u16,
    db: &str,
    args: &[&str],
    seconds: u64,
) -> Result<RunResult> {
    let logs = tempfile::Builder::new().prefix("pgsplit-load-").tempdir()?;
    let prefix = logs.path().join("txn");
    let out = pgbench_command(pgbench, port)
        .args(["-n", "-T", &seconds.to_string(), "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .args(args)
        .arg(db)
        .current_dir(logs.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut r = RunResult::default();
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("number of transactions actually processed:") {
            r.transactions = first_number(v).map_or(0, |n| n as u64);
        } else if let Some(v) = line.strip_prefix("number of failed transactions:") {
            r.failed = first_number(v).map_or(0, |n| n as u64);
        } else if let Some(v) = line.strip_prefix("latency average =") {
            r.avg_ms = first_number(v);
        } else if let Some(v) = line.strip_prefix("tps =") {
            r.tps = first_number(v);
        }
    }
    r.p99_ms = p99_from_logs(logs.path())?.map(|us| us / 1000.0);
    let aborted = stderr
        .lines()
        .filter(|l| l.contains("aborted") || l.contains("error") || l.contains("ERROR"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" | ");
    if !out.status.success() || r.tps.is_none() {
        r.error = Some(format!(
            "pgbench exited with {}: {}",
            out.status,
            if aborted.is_empty() {
                stderr.trim().lines().last().unwrap_or("").to_string()
            } else {
                aborted
            }
        ));
    } else if !aborted.is_empty() {
        r.error = Some(aborted);
    }
    Ok(r)
}

fn first_number(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// The 99th percentile (nearest rank) of the latency column (µs) of every pgbench log file in `dir`.
fn p99_from_logs(dir: &Path) -> Result<Option<f64>> {
    let mut latencies: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let mut text = String::new();
        fs::File::open(entry?.path())?.read_to_string(&mut text)?;
        // client_id transaction_no time script_no time_epoch time_us; `time` is "failed" for a failed one.
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    if latencies.is_empty() {
        return Ok(None);
    }
    latencies.sort_unstable();
    let rank = ((latencies.len() as f64) * 0.99).ceil() as usize;
    Ok(Some(latencies[rank.clamp(1, latencies.len()) - 1] as f64))
}

/// Busy CPU time of the whole machine so far, µs (/proc/stat: user + nice + system + irq + softirq), and the
/// machine's number of CPUs (its `cpuN` lines).
fn machine_busy_us() -> Option<(f64, usize)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((busy * 1e6 / hz, cores))
}

/// This process's user + system CPU time so far, in µs.
fn self_cpu_us() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Another process's user + system CPU time so far (from /proc/<pid>/stat), in µs.
fn process_cpu_us(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) * 1e6 / ticks)
}

/// Asks the kernel to SIGTERM the child if this thread dies first (set after any uid change, which clears it).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------------------------------
// PgBouncer

/// The PgBouncer binary: found, or installed with apt-get when we are root. `None` skips the PgBouncer rows.
fn ensure_pgbouncer() -> Option<PathBuf> {
    if let Some(p) = find_program("pgbouncer", &[]) {
        return Some(p);
    }
    if !is_root() {
        eprintln!(
            "load bench: pgbouncer is not installed and we are not root: skipping the PgBouncer rows \
             (install it with `sudo apt-get install pgbouncer` to include them)"
        );
        return None;
    }
    for args in [&["update"][..], &["install", "-y", "pgbouncer"][..]] {
        eprintln!(
            "load bench: pgbouncer not found; running: apt-get {}",
            args.join(" ")
        );
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            // Its output goes to standard error: standard output is for the report.
            .stdout(stderr_stdio())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!(
                    "load bench: apt-get {} failed ({s}): skipping the PgBouncer rows",
                    args.join(" ")
                );
                return None;
            }
            Err(e) => {
                eprintln!("load bench: cannot run apt-get ({e}): skipping the PgBouncer rows");
                return None;
            }
        }
    }
    let found = find_program("pgbouncer", &[]);
    if found.is_none() {
        eprintln!("load bench: pgbouncer still not found after installing it: skipping the PgBouncer rows");
    }
    found
}

/// Standard error, duplicated, to hand to a child as its standard output.
fn stderr_stdio() -> Stdio {
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}

/// A PgBouncer process with its files in a temporary directory; killed and removed on drop.
struct PgBouncer {
    child: Child,
    pid: u32,
    port: u16,
    version: String,
    dir: PathBuf,
}

impl PgBouncer {
    fn start(bin: &Path, primary_port: u16) -> Result<PgBouncer> {
        // PgBouncer refuses to run as root: as root it runs as `postgres`, in a directory that user owns.
        let owner = postgres_owner()?;
        let dir = tempfile::Builder::new()
            .prefix("pgsplit-pgbouncer-")
            .tempdir()?
            .keep();
        let port = free_port()?;
        let ini = format!(
            "[databases]\n\
             {DB} = host=127.0.0.1 port={primary_port} dbname={DB}\n\
             {RYW_DB} = host=127.0.0.1 port={primary_port} dbname={RYW_DB}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {POOL_SIZE}\n\
             max_client_conn = 1000\n\
             max_db_connections = 0\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n\
             admin_users = {USER}\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 0\n\
             log_disconnections = 0\n{tls}",
            dir = dir.display(),
            tls = client_tls().map_or_else(String::new, |f| format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
                f.cert.display(),
                f.key.display()
            )),
        );
        fs::write(dir.join("pgbouncer.ini"), ini)?;
        fs::write(dir.join("userlist.txt"), format!("\"{USER}\" \"\"\n"))?;
        if let Some((uid, gid)) = owner {
            for p in [
                dir.clone(),
                dir.join("pgbouncer.ini"),
                dir.join("userlist.txt"),
            ] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
            }
        }
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "PgBouncer".into());
        let mut cmd = Command::new(bin);
        cmd.arg(dir.join("pgbouncer.ini"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        let mut b = PgBouncer {
            pid: child.id(),
            child,
            port,
            version,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = b.child.try_wait()? {
                return Err(format!(
                    "pgbouncer exited at start ({status}); its log:\n{}",
                    fs::read_to_string(b.dir.join("pgbouncer.log")).unwrap_or_default()
                )
                .into());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(b);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "pgbouncer does not listen on 127.0.0.1:{port} after 15 s; its log:\n{}",
                    fs::read_to_string(b.dir.join("pgbouncer.log")).unwrap_or_default()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SIGINT: "safe shutdown" would wait for clients; there are none left, but SIGTERM is immediate.
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Report

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn fmt_pct0(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0))
}

/// One line of the run and median tables.
fn table_line(c: [&str; 11]) -> String {
    format!(
        "{:<16} {:<16} {:>5} {:>9} {:>8} {:>8} {:>10} {:>12} {:>6} {:>10} {:>6}\n",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
    )
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Medians over rounds of one (workload, target).
#[derive(Debug, Clone, Default)]
struct Summary {
    /// `false`: the target cannot run the workload (n/a).
    runnable: bool,
    tps: Option<f64>,
    avg_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu_us_per_txn: Option<f64>,
    machine_us_per_txn: Option<f64>,
    machine_busy: Option<f64>,
    replica_share: Option<f64>,
    /// Stale reads over all rounds (`write-read` only).
    stale_reads: Option<u64>,
    failed: u64,
    errors: usize,
}

struct Report<'a> {
    rows: &'a [Row],
    workloads: &'a [&'static Workload],
    rounds: usize,
    seconds: u64,
    pgbouncer: Option<String>,
    summaries: Vec<(&'static str, Target, Summary)>,
    /// Capped mode: the quotas (or why there are none) and the servers' counters over the measured runs.
    cap: Option<(&'a capped::Cap, Option<capped::ServerTotals>)>,
}

impl<'a> Report<'a> {
    fn new(
        rows: &'a [Row],
        workloads: &'a [&'static Workload],
        rounds: usize,
        seconds: u64,
        pgbouncer: Option<String>,
        cap: Option<(&'a capped::Cap, Option<capped::ServerTotals>)>,
    ) -> Report<'a> {
        let targets: BTreeSet<Target> = workloads
            .iter()
            .flat_map(|w| w.targets.iter().copied())
            .collect();
        let mut summaries = Vec::new();
        for w in workloads {
            for &target in &targets {
                let mine: Vec<&Row> = rows
                    .iter()
                    .filter(|r| r.workload == w.name && r.target == target)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let results: Vec<&RunResult> =
                    mine.iter().filter_map(|r| r.result.as_ref()).collect();
                // Runs that errored are left out of the medians (and counted).
                let ok: Vec<&RunResult> = results
                    .iter()
                    .copied()
                    .filter(|r| r.error.is_none())
                    .collect();
                let med = |f: fn(&RunResult) -> Option<f64>| {
                    median(ok.iter().filter_map(|r| f(r)).collect())
                };
                summaries.push((
                    w.name,
                    target,
                    Summary {
                        runnable: !results.is_empty(),
                        tps: med(|r| r.tps),
                        avg_ms: med(|r| r.avg_ms),
                        p99_ms: med(|r| r.p99_ms),
                        cpu_us_per_txn: med(|r| r.cpu_us_per_txn),
                        machine_us_per_txn: med(|r| r.machine_us_per_txn),
                        machine_busy: med(|r| r.machine_busy),
                        replica_share: med(|r| r.replica_share),
                        stale_reads: results
                            .iter()
                            .filter_map(|r| r.stale_reads)
                            .reduce(|a, b| a + b),
                        failed: results.iter().map(|r| r.failed).sum(),
                        errors: results.len() - ok.len(),
                    },
                ));
            }
        }
        Report {
            rows,
            workloads,
            rounds,
            seconds,
            pgbouncer,
            summaries,
            cap,
        }
    }

    fn summary(&self, workload: &str, target: Target) -> Option<&Summary> {
        self.summaries
            .iter()
            .find(|(w, t, _)| *w == workload && *t == target)
            .map(|(_, _, s)| s)
            .filter(|s| s.runnable)
    }

    /// (tps, avg, p99, cpu) ratios of a over b.
    fn ratios(&self, workload: &str, a: Target, b: Target) -> Option<[Option<f64>; 4]> {
        let (a, b) = (self.summary(workload, a)?, self.summary(workload, b)?);
        Some([
            ratio(a.tps, b.tps),
            ratio(a.avg_ms, b.avg_ms),
            ratio(a.p99_ms, b.p99_ms),
            ratio(a.cpu_us_per_txn, b.cpu_us_per_txn),
        ])
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let header = table_line([
            "workload",
            "target",
            "round",
            "TPS",
            "avg ms",
            "p99 ms",
            "CPU µs/txn",
            "machine µs/txn",
            "busy",
            "to replica",
            "failed",
        ]);
        let rule = format!("{}\n", "-".repeat(header.trim_end().chars().count()));
        let _ = writeln!(
            out,
            "\npgbench -T {} s per run, {} round(s), scale {SCALE}, pools of {POOL_SIZE}; -c 16 -j 2 unless noted, \
             select-1client is -c 1 -j 1.\nCPU: the proxy's own CPU time per transaction; machine: busy CPU of the whole machine (pgbench, servers, \
             proxy, kernel) per transaction; busy: the machine's busy share over the run (busy / (elapsed × CPUs)). \
             to replica: share of pgsplit's units of work sent to a replica.",
            self.seconds, self.rounds
        );
        out.push_str(&header);
        out.push_str(&rule);
        let na = "n/a";
        for r in self.rows {
            let round = r.round.to_string();
            out.push_str(&match &r.result {
                Some(x) => {
                    let line = table_line([
                        r.workload,
                        r.target.label(),
                        &round,
                        &fmt_opt(x.tps, 0),
                        &fmt_opt(x.avg_ms, 3),
                        &fmt_opt(x.p99_ms, 3),
                        &fmt_opt(x.cpu_us_per_txn, 1),
                        &fmt_opt(x.machine_us_per_txn, 1),
                        &fmt_pct0(x.machine_busy),
                        &fmt_pct(x.replica_share),
                        &x.failed.to_string(),
                    ]);
                    match &x.error {
                        Some(e) => format!("{}  ERROR: {e}\n", line.trim_end()),
                        None => line,
                    }
                }
                None => table_line([
                    r.workload,
                    r.target.label(),
                    &round,
                    na,
                    na,
                    na,
                    na,
                    na,
                    na,
                    na,
                    na,
                ]),
            });
        }

        let _ = writeln!(
            out,
            "\nmedians over {} round(s) (err: runs that failed, left out of the medians)",
            self.rounds
        );
        out.push_str(&header.replacen("round", "  err", 1));
        out.push_str(&rule);
        for (w, t, s) in &self.summaries {
            out.push_str(&if s.runnable {
                table_line([
                    w,
                    t.label(),
                    &s.errors.to_string(),
                    &fmt_opt(s.tps, 0),
                    &fmt_opt(s.avg_ms, 3),
                    &fmt_opt(s.p99_ms, 3),
                    &fmt_opt(s.cpu_us_per_txn, 1),
                    &fmt_opt(s.machine_us_per_txn, 1),
                    &fmt_pct0(s.machine_busy),
                    &fmt_pct(s.replica_share),
                    &s.failed.to_string(),
                ])
            } else {
                table_line([w, t.label(), "-", na, na, na, na, na, na, na, na])
            });
        }

        let _ = writeln!(
            out,
            "\nratios of medians (TPS > 1 and latency/CPU < 1 favour the first)"
        );
        let _ = writeln!(
            out,
            "{:<16} {:<26} {:>8} {:>8} {:>8} {:>8}",
            "workload", "ratio", "TPS", "avg", "p99", "CPU"
        );
        let _ = writeln!(out, "{}", "-".repeat(79));
        let pairs: Vec<(String, Target, Target)> = if self.cap.is_some() {
            capped::ratio_pairs()
        } else {
            [
                ("pgsplit/pgbouncer", Target::Pgsplit, Target::PgBouncer),
                ("pgsplit/direct", Target::Pgsplit, Target::Direct),
                (
                    "split on/off (pgsplit)",
                    Target::Pgsplit,
                    Target::PgsplitNoSplit,
                ),
                (
                    "pgsplit split off/pgbouncer",
                    Target::PgsplitNoSplit,
                    Target::PgBouncer,
                ),
            ]
            .into_iter()
            .map(|(l, a, b)| (l.to_string(), a, b))
            .collect()
        };
        for w in self.workloads {
            for (label, a, b) in &pairs {
                let (a, b) = (*a, *b);
                let Some(r) = self.ratios(w.name, a, b) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "{:<16} {:<26} {:>8} {:>8} {:>8} {:>8}",
                    w.name,
                    label,
                    fmt_opt(r[0], 2),
                    fmt_opt(r[1], 2),
                    fmt_opt(r[2], 2),
                    fmt_opt(r[3], 2)
                );
            }
        }
        if self.cap.is_some() {
            out.push_str(&capped::tables(self));
        } else if self.workloads.iter().any(|w| w.name == "write-read") {
            out.push_str(&self.write_read_table());
        }
        out
    }

    /// The `write-read` workload: TPS, stale reads and where the reads ran, per consistency mode.
    fn write_read_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nwrite-read (16 clients: insert a row, then select it; medians over {} round(s), stale reads summed)",
            self.rounds
        );
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>12} {:>20}",
            "target", "TPS", "stale reads", "SELECTs on replicas"
        );
        let _ = writeln!(out, "{}", "-".repeat(84));
        for (target, label) in [
            (Target::Pgsplit, "pgsplit, consistency = session (default)"),
            (Target::PgsplitEventual, "pgsplit, consistency = eventual"),
            (Target::PgsplitNoSplit, "pgsplit, read_write_split = false"),
        ] {
            let Some(s) = self.summary("write-read", target) else {
                let _ = writeln!(out, "{label:<40} {:>9} {:>12} {:>20}", "n/a", "n/a", "n/a");
                continue;
            };
            let _ = writeln!(
                out,
                "{label:<40} {:>9} {:>12} {:>20}",
                fmt_opt(s.tps, 0),
                s.stale_reads.map_or_else(|| "-".into(), |n| n.to_string()),
                fmt_pct(s.replica_share)
            );
        }
        for (label, a, b) in [
            ("session/eventual", Target::Pgsplit, Target::PgsplitEventual),
            (
                "session/everything on the primary",
                Target::Pgsplit,
                Target::PgsplitNoSplit,
            ),
        ] {
            if let Some(r) = self.ratios("write-read", a, b) {
                let _ = writeln!(out, "TPS {label}: {}", fmt_opt(r[0], 2));
            }
        }
        out
    }

    fn json(&self) -> Value {
        let opt = |v: Option<f64>| v.map_or(Value::Null, |v| json!(v));
        let runs: Vec<Value> = self
            .rows
            .iter()
            .map(|r| match &r.result {
                Some(x) => with_stale(
                    x.stale_reads,
                    json!({
                        "workload": r.workload,
                        "target": r.target.label(),
                        "round": r.round,
                        "tps": opt(x.tps),
                        "avg_ms": opt(x.avg_ms),
                        "p99_ms": opt(x.p99_ms),
                        "cpu_us_per_txn": opt(x.cpu_us_per_txn),
                        "machine_us_per_txn": opt(x.machine_us_per_txn),
                        "machine_busy": opt(x.machine_busy),
                        "servers": capped::ServerRun::json(&x.servers),
                        "replica_share": opt(x.replica_share),
                        "transactions": x.transactions,
                        "failed": x.failed,
                        "error": x.error,
                    }),
                ),
                None => json!({
                    "workload": r.workload,
                    "target": r.target.label(),
                    "round": r.round,
                    "not_applicable": true,
                }),
            })
            .collect();
        let summary: Vec<Value> = self
            .summaries
            .iter()
            .map(|(w, t, s)| {
                with_stale(
                    s.stale_reads,
                    json!({
                        "workload": w,
                        "target": t.label(),
                        "not_applicable": !s.runnable,
                        "median_tps": opt(s.tps),
                        "median_avg_ms": opt(s.avg_ms),
                        "median_p99_ms": opt(s.p99_ms),
                        "median_cpu_us_per_txn": opt(s.cpu_us_per_txn),
                        "median_machine_us_per_txn": opt(s.machine_us_per_txn),
                        "median_machine_busy": opt(s.machine_busy),
                        "median_replica_share": opt(s.replica_share),
                        "failed": s.failed,
                        "errored_runs": s.errors,
                    }),
                )
            })
            .collect();
        let ratio_json = |r: Option<[Option<f64>; 4]>| match r {
            Some(r) => {
                json!({"tps": opt(r[0]), "avg_ms": opt(r[1]), "p99_ms": opt(r[2]), "cpu_us_per_txn": opt(r[3])})
            }
            None => Value::Null,
        };
        let ratios: Vec<Value> = self
            .workloads
            .iter()
            .filter(|w| w.name != "write-read")
            .map(|w| {
                json!({
                    "workload": w.name,
                    "pgsplit/pgbouncer": ratio_json(self.ratios(w.name, Target::Pgsplit, Target::PgBouncer)),
                    "pgsplit/direct": ratio_json(self.ratios(w.name, Target::Pgsplit, Target::Direct)),
                    "pgsplit split off/pgbouncer": ratio_json(self.ratios(w.name, Target::PgsplitNoSplit, Target::PgBouncer)),
                })
            })
            .collect();
        let classification = json!({
            "workload": "select-simple",
            "on": self.summary("select-simple", Target::Pgsplit).map(|s| json!({
                "median_tps": opt(s.tps), "median_cpu_us_per_txn": opt(s.cpu_us_per_txn),
                "median_avg_ms": opt(s.avg_ms), "median_p99_ms": opt(s.p99_ms)})),
            "off": self.summary("select-simple", Target::PgsplitNoSplit).map(|s| json!({
                "median_tps": opt(s.tps), "median_cpu_us_per_txn": opt(s.cpu_us_per_txn),
                "median_avg_ms": opt(s.avg_ms), "median_p99_ms": opt(s.p99_ms)})),
            "on/off": ratio_json(self.ratios("select-simple", Target::Pgsplit, Target::PgsplitNoSplit)),
        });
        let summary_json = |target: Target| {
            self.summary("write-read", target).map(|s| {
                json!({
                    "median_tps": opt(s.tps),
                    "stale_reads": s.stale_reads,
                    "median_replica_share_of_selects": opt(s.replica_share),
                })
            })
        };
        let write_read = self
            .workloads
            .iter()
            .any(|w| w.name == "write-read")
            .then(|| {
                json!({
                    "session": summary_json(Target::Pgsplit),
                    "eventual": summary_json(Target::PgsplitEventual),
                    "all_on_primary": summary_json(Target::PgsplitNoSplit),
                    "session/eventual": ratio_json(self.ratios("write-read", Target::Pgsplit, Target::PgsplitEventual)),
                    "session/all_on_primary": ratio_json(self.ratios("write-read", Target::Pgsplit, Target::PgsplitNoSplit)),
                })
            });
        let mut report = json!({
            "settings": {
                "rounds": self.rounds,
                "seconds": self.seconds,
                "scale": SCALE,
                "pool_size": POOL_SIZE,
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "pgbouncer": self.pgbouncer,
                "workloads": self.workloads.iter().map(|w| match w.script {
                    None => json!({"name": w.name, "pgbench": w.args.join(" ")}),
                    Some(script) => json!({"name": w.name, "pgbench": w.args.join(" "), "database": w.db, "script": script}),
                }).collect::<Vec<_>>(),
            },
            "runs": runs,
            "summary": summary,
            "ratios": ratios,
            "classification": classification,
        });
        if let Some(w) = write_read {
            report["write_read"] = w;
        }
        if self.cap.is_some() {
            capped::add_json(self, &mut report);
        }
        report
    }
}

/// `value` (an object) with `"stale_reads"` added when it is known (the `write-read` rows only).
fn with_stale(stale: Option<u64>, mut value: Value) -> Value {
    if let Some(n) = stale {
        value["stale_reads"] = json!(n);
    }
    value
}
