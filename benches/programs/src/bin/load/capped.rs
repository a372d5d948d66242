//! Capped-host mode: every PostgreSQL server in a CPU quota of its own (`PGSPLIT_BENCH_SERVER_CPU` cores, 0.25
//! by default), so that adding a replica adds a server's worth of capacity on a small machine, and the scaling of
//! read TPS with the number of replicas can be measured against its linear ideal.
//!
//! This module holds the mode's settings, workloads and targets, the per-run and whole-bench server counters,
//! and its report sections (scaling curve, goals, throttling); the cgroups themselves are in [`super::cgroup`].

use std::fmt::Write as _;
use std::time::Instant;

use pgsplit_harness::Cluster;
use serde_json::{json, Value};

use super::cgroup::{CpuStat, ServerCgroups};
use super::{
    fmt_opt, fmt_pct0, median, ratio, Report, Result, Target, Workload, DB, RYW_DB,
    WRITE_READ_SCRIPT,
};

/// The environment variable of the mode: cores per server; 0 turns the mode off.
const ENV: &str = "PGSPLIT_BENCH_SERVER_CPU";
/// Its default.
const DEFAULT_CPU: f64 = 0.25;

/// `PGSPLIT_BENCH_SERVER_CPU`: `Some(cores)` for the capped mode, `None` (0) for the uncapped bench.
pub fn server_cpu() -> Result<Option<f64>> {
    let Ok(v) = std::env::var(ENV) else {
        return Ok(Some(DEFAULT_CPU));
    };
    match v.trim().parse::<f64>() {
        Ok(0.0) => Ok(None),
        Ok(c) if c.is_finite() && c > 0.0 => Ok(Some(c)),
        _ => Err(
            format!("{ENV}={v:?}: expected a number of cores (e.g. 0.25), or 0 for no cap").into(),
        ),
    }
}

/// The replicas-only pgsplit targets of the scaling curve, by number of replicas.
const CURVE: [Target; 4] = [
    Target::PgsplitReplicas(0),
    Target::PgsplitReplicas(1),
    Target::PgsplitReplicas(2),
    Target::PgsplitReplicas(3),
];

/// `-S` simple runs every target: it is the scaling curve.
const ALL_TARGETS: &[Target] = &[
    Target::Direct,
    Target::PgBouncer,
    Target::PgsplitReplicas(0),
    Target::PgsplitReplicas(1),
    Target::PgsplitReplicas(2),
    Target::PgsplitReplicas(3),
    Target::PgsplitWithPrimary,
];

/// The other workloads: direct, PgBouncer, pgsplit with 1 and 2 replicas and with the primary included.
const TARGETS: &[Target] = &[
    Target::Direct,
    Target::PgBouncer,
    Target::PgsplitReplicas(1),
    Target::PgsplitReplicas(2),
    Target::PgsplitWithPrimary,
];

/// The mode's workloads (`PGSPLIT_BENCH_WORKLOADS` picks among these).
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "select-simple",
        args: &["-S", "-M", "simple", "-c", "16", "-j", "2"],
        script: None,
        db: DB,
        targets: ALL_TARGETS,
        pgbouncer: true,
        tpcb: false,
    },
    Workload {
        name: "select-prepared",
        args: &["-S", "-M", "prepared", "-c", "16", "-j", "2"],
        script: None,
        db: DB,
        targets: TARGETS,
        pgbouncer: false,
        tpcb: false,
    },
    Workload {
        name: "mix-90-10",
        args: &[
            "-b",
            "select-only@9",
            "-b",
            "simple-update@1",
            "-M",
            "simple",
            "-c",
            "16",
            "-j",
            "2",
        ],
        script: None,
        db: DB,
        targets: TARGETS,
        pgbouncer: true,
        tpcb: false,
    },
    Workload {
        name: "write-read",
        args: &["-M", "simple", "-c", "16", "-j", "2"],
        script: Some(WRITE_READ_SCRIPT),
        db: RYW_DB,
        targets: TARGETS,
        pgbouncer: true,
        tpcb: false,
    },
];

/// The goals of the mode: (workload, target, minimum TPS ratio over PgBouncer).
const GOALS: [(&str, Target, f64); 4] = [
    ("select-simple", Target::PgsplitReplicas(2), 1.9),
    ("select-simple", Target::PgsplitWithPrimary, 2.85),
    ("select-simple", Target::PgsplitReplicas(3), 2.85),
    ("mix-90-10", Target::PgsplitReplicas(2), 1.8),
];

/// The quotas asked for, and the cgroups that hold them or why there are none.
pub struct Cap {
    cpus: f64,
    cgroups: std::result::Result<ServerCgroups, String>,
}

impl Cap {
    /// Puts every server of `cluster` into a cgroup of `cpus` cores; where that cannot be done, says so and
    /// leaves them uncapped.
    pub fn apply(cluster: &Cluster, cpus: f64) -> Cap {
        let servers: Vec<_> = cluster
            .servers()
            .iter()
            .map(|s| (s.name.clone(), cluster.postmaster_pid(&s.name)))
            .collect();
        let cgroups = ServerCgroups::create(&servers, cpus).map_err(|e| e.to_string());
        match &cgroups {
            Ok(g) => eprintln!(
                "load bench: servers capped at {cpus} core each (quota {} µs per {} µs): {}",
                g.quota().quota_us,
                g.quota().period_us,
                g.describe()
            ),
            Err(e) => eprintln!(
                "load bench: cgroups not writable: running uncapped ({e}); the capped workloads and targets run \
                 without quotas"
            ),
        }
        Cap { cpus, cgroups }
    }

    /// The cgroups, when the quotas are in force.
    pub fn cgroups(&self) -> Option<&ServerCgroups> {
        self.cgroups.as_ref().ok()
    }

    fn json(&self) -> Value {
        match &self.cgroups {
            Ok(g) => json!({
                "server_cpu": self.cpus,
                "applied": true,
                "period_us": g.quota().period_us,
                "quota_us": g.quota().quota_us,
                "cgroups": g.describe(),
            }),
            Err(e) => json!({"server_cpu": self.cpus, "applied": false, "reason": e}),
        }
    }

    fn header(&self) -> String {
        match &self.cgroups {
            Ok(g) => format!(
                "servers capped at {} core each: CFS quota {} µs per {} µs period ({})",
                self.cpus,
                g.quota().quota_us,
                g.quota().period_us,
                g.describe()
            ),
            Err(e) => format!(
                "servers NOT capped (cgroups not writable: {e}): the capped workloads ran on uncapped servers, so \
                 the scaling curve below measures the machine, not the replicas"
            ),
        }
    }
}

/// One server's CPU over an interval.
#[derive(Debug, Clone, Default)]
pub struct ServerRun {
    server: String,
    /// Cores used on average (usage / elapsed).
    cores: Option<f64>,
    stat: CpuStat,
}

impl ServerRun {
    /// Each server's counters from `before` to `after`, over `elapsed` seconds.
    pub fn between(
        before: &[(String, CpuStat)],
        after: &[(String, CpuStat)],
        elapsed: f64,
    ) -> Vec<ServerRun> {
        after
            .iter()
            .filter_map(|(server, a)| {
                let (_, b) = before.iter().find(|(s, _)| s == server)?;
                let stat = a.since(b);
                Some(ServerRun {
                    server: server.clone(),
                    cores: stat
                        .usage_us
                        .filter(|_| elapsed > 0.0)
                        .map(|us| us / (elapsed * 1e6)),
                    stat,
                })
            })
            .collect()
    }

    /// `p 0.25c 61%thr, r1 0.25c 58%thr, …`: cores used and the share of periods throttled, per server.
    pub fn brief(runs: &[ServerRun]) -> String {
        runs.iter()
            .map(|r| {
                format!(
                    "{} {}c {}thr",
                    short(&r.server),
                    fmt_opt(r.cores, 2),
                    fmt_pct0(throttled_share(&r.stat))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn json(runs: &[ServerRun]) -> Value {
        if runs.is_empty() {
            return Value::Null;
        }
        Value::Array(
            runs.iter()
                .map(|r| {
                    json!({
                        "server": r.server,
                        "cores": r.cores,
                        "usage_us": r.stat.usage_us,
                        "periods": r.stat.periods,
                        "throttled": r.stat.throttled,
                        "throttled_us": r.stat.throttled_us,
                    })
                })
                .collect(),
        )
    }
}

/// The servers' counters over every measured run (from the first run's start to the last run's end).
pub struct ServerTotals {
    elapsed_s: f64,
    servers: Vec<ServerRun>,
}

impl ServerTotals {
    pub fn since(g: &ServerCgroups, at: Instant, before: &[(String, CpuStat)]) -> ServerTotals {
        let elapsed_s = at.elapsed().as_secs_f64();
        ServerTotals {
            elapsed_s,
            servers: ServerRun::between(before, &g.stats(), elapsed_s),
        }
    }
}

/// The ratio table's pairs: every pgsplit target over PgBouncer and over direct.
pub fn ratio_pairs() -> Vec<(String, Target, Target)> {
    ALL_TARGETS
        .iter()
        .filter(|t| t.proxy().is_some())
        .flat_map(|&t| {
            [
                (format!("{}/pgbouncer", t.label()), t, Target::PgBouncer),
                (format!("{}/direct", t.label()), t, Target::Direct),
            ]
        })
        .collect()
}

/// One point of the scaling curve (`-S` simple).
struct Point {
    label: &'static str,
    target: Target,
    /// Servers taking reads: the linear ideal over one server.
    servers: f64,
}

fn points() -> Vec<Point> {
    let mut points: Vec<Point> = CURVE
        .iter()
        .enumerate()
        .map(|(n, &target)| Point {
            label: [
                "0 replicas (primary)",
                "1 replica",
                "2 replicas",
                "3 replicas",
            ][n],
            target,
            servers: (n as f64).max(1.0),
        })
        .collect();
    points.push(Point {
        label: "2 replicas + primary",
        target: Target::PgsplitWithPrimary,
        servers: 3.0,
    });
    points
}

/// The median over the runs of (workload, target) of the servers' cores used together.
fn median_server_cores(report: &Report, workload: &str, target: Target) -> Option<f64> {
    median(
        report
            .rows
            .iter()
            .filter(|r| r.workload == workload && r.target == target)
            .filter_map(|r| r.result.as_ref())
            .filter(|r| r.error.is_none() && !r.servers.is_empty())
            .filter_map(|r| r.servers.iter().map(|s| s.cores).sum::<Option<f64>>())
            .collect(),
    )
}

/// The mode's sections of the text report: the cap, the scaling curve, the goals and the servers' throttling.
pub fn tables(report: &Report) -> String {
    let mut out = String::new();
    let Some((cap, totals)) = &report.cap else {
        return out;
    };
    let _ = writeln!(out, "\n{}", cap.header());

    let w = "select-simple";
    let bouncer = report.summary(w, Target::PgBouncer).and_then(|s| s.tps);
    let zero = report
        .summary(w, Target::PgsplitReplicas(0))
        .and_then(|s| s.tps);
    let _ = writeln!(
        out,
        "\nscaling curve (-S simple, medians; linear: N servers taking reads × one server, PgBouncer and \
         pgsplit-0r being one server)"
    );
    let _ = writeln!(
        out,
        "{:<22} {:<16} {:>9} {:>8} {:>8} {:>7} {:>7} {:>9} {:>6} {:>9}",
        "point",
        "target",
        "TPS",
        "p99 ms",
        "×pgb",
        "×0r",
        "linear",
        "of linear",
        "busy",
        "srv cores"
    );
    let _ = writeln!(out, "{}", "-".repeat(112));
    for p in points() {
        let s = report.summary(w, p.target);
        let tps = s.and_then(|s| s.tps);
        let over_bouncer = ratio(tps, bouncer);
        let _ = writeln!(
            out,
            "{:<22} {:<16} {:>9} {:>8} {:>8} {:>7} {:>7} {:>9} {:>6} {:>9}",
            p.label,
            p.target.label(),
            fmt_opt(tps, 0),
            fmt_opt(s.and_then(|s| s.p99_ms), 2),
            fmt_opt(over_bouncer, 2),
            fmt_opt(ratio(tps, zero), 2),
            format!("{:.0}×", p.servers),
            fmt_pct0(over_bouncer.map(|r| r / p.servers)),
            fmt_pct0(s.and_then(|s| s.machine_busy)),
            fmt_opt(median_server_cores(report, w, p.target), 2),
        );
    }

    let _ = writeln!(out, "\ngoals (TPS over PgBouncer, medians)");
    for (workload, target, min) in GOALS {
        let r = report
            .ratios(workload, target, Target::PgBouncer)
            .and_then(|r| r[0]);
        let verdict = match r {
            Some(r) if r >= min => "met",
            Some(_) => "NOT met",
            None => "n/a",
        };
        let _ = writeln!(
            out,
            "{workload:<16} {:<16} ≥ {min:.2}×: {:>6}  {verdict}",
            target.label(),
            fmt_opt(r, 2)
        );
    }

    if report.workloads.iter().any(|w| w.name == "write-read") {
        let _ = writeln!(out, "\nwrite-read stale reads (summed over rounds)");
        for &t in TARGETS {
            if let Some(s) = report.summary("write-read", t) {
                let _ = writeln!(
                    out,
                    "{:<16} {:>6}",
                    t.label(),
                    s.stale_reads
                        .map_or_else(|| "-".into(), |n: u64| n.to_string())
                );
            }
        }
    }

    if let Some(t) = totals {
        let _ = writeln!(
            out,
            "\nservers over the measured runs ({:.0} s): cores used (quota {}), CFS periods throttled",
            t.elapsed_s, cap.cpus
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>10} {:>10} {:>10} {:>12}",
            "server", "cores", "periods", "throttled", "share", "throttled s"
        );
        for s in &t.servers {
            let _ = writeln!(
                out,
                "{:<10} {:>9} {:>10} {:>10} {:>10} {:>12.1}",
                s.server,
                fmt_opt(s.cores, 3),
                s.stat.periods,
                s.stat.throttled,
                fmt_pct0(throttled_share(&s.stat)),
                s.stat.throttled_us / 1e6
            );
        }
    }
    out
}

/// The mode's additions to the JSON report: the cap, ratios of every pgsplit target, the scaling curve, the
/// goals and the servers' counters. The uncapped bench's comparisons (classification, write-read by
/// consistency) do not apply and are removed.
pub fn add_json(report: &Report, value: &mut Value) {
    let Some((cap, totals)) = &report.cap else {
        return;
    };
    let opt = |v: Option<f64>| v.map_or(Value::Null, |v| json!(v));
    if let Some(map) = value.as_object_mut() {
        map.remove("classification");
        map.remove("write_read");
    }
    value["cap"] = cap.json();
    value["ratios"] = Value::Array(
        report
            .workloads
            .iter()
            .flat_map(|w| {
                ratio_pairs().into_iter().filter_map(move |(label, a, b)| {
                    let r = report.ratios(w.name, a, b)?;
                    Some(json!({
                        "workload": w.name,
                        "ratio": label,
                        "tps": opt(r[0]),
                        "avg_ms": opt(r[1]),
                        "p99_ms": opt(r[2]),
                        "cpu_us_per_txn": opt(r[3]),
                    }))
                })
            })
            .collect(),
    );
    let w = "select-simple";
    let bouncer = report.summary(w, Target::PgBouncer).and_then(|s| s.tps);
    let zero = report
        .summary(w, Target::PgsplitReplicas(0))
        .and_then(|s| s.tps);
    value["scaling"] = Value::Array(
        points()
            .into_iter()
            .map(|p| {
                let s = report.summary(w, p.target);
                let tps = s.and_then(|s| s.tps);
                json!({
                    "point": p.label,
                    "target": p.target.label(),
                    "median_tps": opt(tps),
                    "median_p99_ms": opt(s.and_then(|s| s.p99_ms)),
                    "over_pgbouncer": opt(ratio(tps, bouncer)),
                    "over_0_replicas": opt(ratio(tps, zero)),
                    "linear": p.servers,
                    "share_of_linear": opt(ratio(tps, bouncer).map(|r| r / p.servers)),
                    "median_machine_busy": opt(s.and_then(|s| s.machine_busy)),
                    "median_server_cores": opt(median_server_cores(report, w, p.target)),
                })
            })
            .collect(),
    );
    value["goals"] = Value::Array(
        GOALS
            .iter()
            .map(|&(workload, target, min)| {
                let r = report
                    .ratios(workload, target, Target::PgBouncer)
                    .and_then(|r| r[0]);
                json!({
                    "workload": workload,
                    "target": target.label(),
                    "min_over_pgbouncer": min,
                    "over_pgbouncer": opt(r),
                    "met": r.map(|r| r >= min),
                })
            })
            .collect(),
    );
    if let Some(t) = totals {
        value["servers"] = json!({
            "elapsed_s": t.elapsed_s,
            "servers": ServerRun::json(&t.servers),
        });
    }
}

/// `primary` → `p`, `replica2` → `r2`.
fn short(server: &str) -> String {
    match server.strip_prefix("replica") {
        Some(n) => format!("r{n}"),
        None if server == "primary" => "p".into(),
        None => server.into(),
    }
}

fn throttled_share(s: &CpuStat) -> Option<f64> {
    (s.periods > 0).then(|| s.throttled as f64 / s.periods as f64)
}
