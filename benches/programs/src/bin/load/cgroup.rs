//! Per-server CPU quotas: one cgroup per PostgreSQL server, in the cgroup v1 `cpu` hierarchy or the v2 unified
//! one.
//!
//! Each server's postmaster and its children are moved into `pgsplit-bench-<pid>-<server>` under this process's
//! own cgroup; backends forked later inherit it. The quota is `cpus × period` with a short period (10 ms): with
//! the kernel's default 100 ms period a server that spends its quota early in a period stalls for the rest of it,
//! which shows up as latency spikes rather than as a slower server. On drop the remaining processes go back to
//! the parent cgroup and the directories are removed.
//!
//! Usage is read from `cpu.stat` (`usage_usec`, v2) or `cpuacct.usage` (v1: in the same directory when `cpu` and
//! `cpuacct` share a hierarchy, else in a twin cgroup of the same name in the `cpuacct` hierarchy).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the cgroup file systems are mounted.
const ROOT: &str = "/sys/fs/cgroup";
/// The CFS period: short, so a throttled server waits at most a few ms.
pub const PERIOD_US: u64 = 10_000;
/// The kernel's smallest accepted quota.
const MIN_QUOTA_US: u64 = 1_000;
/// The prefix of the cgroups' names; the bench's pid follows it.
const PREFIX: &str = "pgsplit-bench-";

/// The quota of each server, as the kernel gets it.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub period_us: u64,
    pub quota_us: u64,
}

impl Quota {
    /// `cpus` cores: `cpus × 10 ms` per 10 ms, the period made longer only where the quota would be under 1 ms.
    pub fn for_cpus(cpus: f64) -> Quota {
        let mut period_us = PERIOD_US;
        if cpus * (period_us as f64) < MIN_QUOTA_US as f64 {
            period_us = ((MIN_QUOTA_US as f64 / cpus).ceil() as u64).min(1_000_000);
        }
        let quota_us = ((cpus * period_us as f64).round() as u64).max(MIN_QUOTA_US);
        Quota {
            period_us,
            quota_us,
        }
    }
}

/// Which cgroup hierarchy holds the `cpu` controller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hierarchy {
    /// v1: the `cpu` hierarchy's directory for this process, and the `cpuacct` one's when it is separate.
    V1 {
        cpu: PathBuf,
        cpuacct: Option<PathBuf>,
    },
    /// v2: this process's cgroup.
    V2 { parent: PathBuf },
}

/// Counters of one cgroup (cumulative).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuStat {
    /// CPU time used, µs (`None` where no accounting file could be read).
    pub usage_us: Option<f64>,
    pub periods: u64,
    pub throttled: u64,
    pub throttled_us: f64,
}

impl CpuStat {
    /// The counters from `before` to `self`.
    pub fn since(&self, before: &CpuStat) -> CpuStat {
        CpuStat {
            usage_us: match (self.usage_us, before.usage_us) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            periods: self.periods.saturating_sub(before.periods),
            throttled: self.throttled.saturating_sub(before.throttled),
            throttled_us: self.throttled_us - before.throttled_us,
        }
    }
}

/// One server's cgroup.
#[derive(Debug)]
struct Group {
    server: String,
    /// The directory in the `cpu` (v1) or unified (v2) hierarchy.
    dir: PathBuf,
    /// v1 with a separate `cpuacct` hierarchy: the twin directory there.
    acct: Option<PathBuf>,
}

/// The servers' cgroups; dropping it moves their processes back and removes them.
#[derive(Debug)]
pub struct ServerCgroups {
    hierarchy: Hierarchy,
    quota: Quota,
    groups: Vec<Group>,
}

impl ServerCgroups {
    /// Puts each server (name, data directory) into its own cgroup with the quota of `cpus` cores. An error
    /// (no `cpu` controller, a read-only cgroup file system, a server not running…) leaves nothing behind.
    pub fn create(servers: &[(String, Option<i32>)], cpus: f64) -> io::Result<ServerCgroups> {
        let hierarchy = find_hierarchy()?;
        remove_stale(&hierarchy);
        let mut cgroups = ServerCgroups {
            hierarchy,
            quota: Quota::for_cpus(cpus),
            groups: Vec::new(),
        };
        // On an error `cgroups` is dropped: what was made so far is undone.
        for (server, postmaster) in servers {
            let group = cgroups.make_group(server)?;
            let moved = postmaster
                .ok_or_else(|| io::Error::other(format!("{server} is not running")))
                .and_then(|pid| move_tree(&group, pid));
            cgroups.groups.push(group);
            moved?;
        }
        Ok(cgroups)
    }

    /// The quota every server got.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// `cgroup v1` or `cgroup v2`, and where.
    pub fn describe(&self) -> String {
        let (version, dir) = match &self.hierarchy {
            Hierarchy::V1 { cpu, .. } => ("v1", cpu),
            Hierarchy::V2 { parent } => ("v2", parent),
        };
        let names = self
            .groups
            .iter()
            .filter_map(|g| g.dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ");
        format!("cgroup {version} under {}: {names}", dir.display())
    }

    /// Each server's counters so far (a server whose files cannot be read is left out).
    pub fn stats(&self) -> Vec<(String, CpuStat)> {
        self.groups
            .iter()
            .filter_map(|g| Some((g.server.clone(), self.stat(g).ok()?)))
            .collect()
    }

    fn stat(&self, g: &Group) -> io::Result<CpuStat> {
        let text = fs::read_to_string(g.dir.join("cpu.stat"))?;
        let field = |name: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        let mut s = CpuStat {
            usage_us: None,
            periods: field("nr_periods").unwrap_or(0.0) as u64,
            throttled: field("nr_throttled").unwrap_or(0.0) as u64,
            throttled_us: 0.0,
        };
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                s.usage_us = field("usage_usec");
                s.throttled_us = field("throttled_usec").unwrap_or(0.0);
            }
            Hierarchy::V1 { .. } => {
                s.throttled_us = field("throttled_time").unwrap_or(0.0) / 1000.0;
                let acct = g.acct.as_deref().unwrap_or(&g.dir);
                s.usage_us = fs::read_to_string(acct.join("cpuacct.usage"))
                    .ok()
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .map(|ns| ns / 1000.0);
            }
        }
        Ok(s)
    }

    /// Makes `pgsplit-bench-<pid>-<server>` with the quota (and its `cpuacct` twin on v1).
    fn make_group(&self, server: &str) -> io::Result<Group> {
        let name = format!("{PREFIX}{}-{server}", std::process::id());
        let q = self.quota;
        match &self.hierarchy {
            Hierarchy::V1 { cpu, cpuacct } => {
                let dir = cpu.join(&name);
                fs::create_dir(&dir)?;
                let mut group = Group {
                    server: server.to_string(),
                    dir,
                    acct: None,
                };
                // Undone on error (the caller only keeps groups that were fully made).
                let made = (|| -> io::Result<()> {
                    // The period first: a quota is checked against the period in force.
                    fs::write(group.dir.join("cpu.cfs_period_us"), q.period_us.to_string())?;
                    fs::write(group.dir.join("cpu.cfs_quota_us"), q.quota_us.to_string())?;
                    if let Some(acct) = cpuacct {
                        let twin = acct.join(&name);
                        fs::create_dir(&twin)?;
                        group.acct = Some(twin);
                    }
                    Ok(())
                })();
                if let Err(e) = made {
                    remove_group(&group, &self.hierarchy);
                    return Err(e);
                }
                Ok(group)
            }
            Hierarchy::V2 { parent } => {
                let control = parent.join("cgroup.subtree_control");
                let enabled = fs::read_to_string(&control)?;
                if !enabled.split_whitespace().any(|c| c == "cpu") {
                    fs::write(&control, "+cpu").map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("enable the cpu controller in {}: {e}", control.display()),
                        )
                    })?;
                }
                let dir = parent.join(&name);
                fs::create_dir(&dir)?;
                let group = Group {
                    server: server.to_string(),
                    dir,
                    acct: None,
                };
                if let Err(e) = fs::write(
                    group.dir.join("cpu.max"),
                    format!("{} {}", q.quota_us, q.period_us),
                ) {
                    remove_group(&group, &self.hierarchy);
                    return Err(e);
                }
                Ok(group)
            }
        }
    }
}

impl Drop for ServerCgroups {
    fn drop(&mut self) {
        for g in &self.groups {
            remove_group(g, &self.hierarchy);
        }
    }
}

/// This process's `cpu` cgroup directory (and v1's separate `cpuacct` one), or why there is none.
fn find_hierarchy() -> io::Result<Hierarchy> {
    let own = fs::read_to_string("/proc/self/cgroup")?;
    let root = Path::new(ROOT);
    // `/proc/self/cgroup` lines: `<id>:<controllers>:<path>`; v2's is `0::<path>`.
    let path_of = |wanted: &str| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if wanted.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == wanted)
            };
            hit.then(|| path.trim_start_matches('/').to_string())
        })
    };
    if root.join("cgroup.controllers").exists() {
        let path = path_of("")
            .ok_or_else(|| io::Error::other("no cgroup v2 line in /proc/self/cgroup"))?;
        let parent = root.join(path);
        let available = fs::read_to_string(parent.join("cgroup.controllers"))?;
        if !available.split_whitespace().any(|c| c == "cpu") {
            return Err(io::Error::other(format!(
                "the cpu controller is not available in {}",
                parent.display()
            )));
        }
        return Ok(Hierarchy::V2 { parent });
    }
    let cpu_root = root.join("cpu");
    if !cpu_root.join("cpu.cfs_quota_us").exists() {
        return Err(io::Error::other(format!(
            "neither {}/cgroup.controllers (v2) nor {}/cpu.cfs_quota_us (v1)",
            ROOT,
            cpu_root.display()
        )));
    }
    let cpu = cpu_root.join(path_of("cpu").unwrap_or_default());
    let cpuacct = if cpu.join("cpuacct.usage").exists() {
        None
    } else {
        let acct_root = root.join("cpuacct");
        acct_root
            .join("cpuacct.usage")
            .exists()
            .then(|| acct_root.join(path_of("cpuacct").unwrap_or_default()))
    };
    Ok(Hierarchy::V1 { cpu, cpuacct })
}

/// Removes the empty groups a killed bench left behind (its pid is gone).
fn remove_stale(h: &Hierarchy) {
    let parents: Vec<&Path> = match h {
        Hierarchy::V1 { cpu, cpuacct } => std::iter::once(cpu.as_path())
            .chain(cpuacct.as_deref())
            .collect(),
        Hierarchy::V2 { parent } => vec![parent.as_path()],
    };
    for parent in parents {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                // Fails (and stays) while it still has processes.
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}

/// Moves a group's remaining processes to its parent and removes its directories (best effort).
fn remove_group(g: &Group, h: &Hierarchy) {
    for dir in std::iter::once(&g.dir).chain(g.acct.as_ref()) {
        let Some(parent) = dir.parent() else {
            continue;
        };
        for _ in 0..50 {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = fs::write(parent.join("cgroup.procs"), pid);
                }
            }
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // Busy: a process was forked or has not left yet.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        if dir.exists() {
            eprintln!(
                "load bench: could not remove the cgroup {} ({})",
                dir.display(),
                match h {
                    Hierarchy::V1 { .. } => "v1",
                    Hierarchy::V2 { .. } => "v2",
                }
            );
        }
    }
}

/// Moves the postmaster, then its children: whatever it forks once it is inside is born inside.
fn move_tree(g: &Group, postmaster: i32) -> io::Result<()> {
    move_pid(g, postmaster)?;
    for child in pgsplit_harness::child_pids(postmaster) {
        match move_pid(g, child) {
            Ok(()) => {}
            // Exited meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn move_pid(g: &Group, pid: i32) -> io::Result<()> {
    for dir in std::iter::once(&g.dir).chain(g.acct.as_ref()) {
        fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
            // ESRCH (the process is gone) stays as it is: a child's exit is not an error.
            if e.raw_os_error() == Some(libc::ESRCH) {
                return e;
            }
            io::Error::new(
                e.kind(),
                format!("move pid {pid} into {}: {e}", dir.display()),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_short_period() {
        let q = Quota::for_cpus(0.25);
        assert_eq!((q.period_us, q.quota_us), (10_000, 2_500));
        // Under 1 ms per 10 ms: the period grows instead.
        let q = Quota::for_cpus(0.05);
        assert_eq!((q.period_us, q.quota_us), (20_000, 1_000));
    }
}
