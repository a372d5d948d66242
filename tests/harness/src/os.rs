//! The operating system around the cluster: users, programs, temporary directories, ports, processes, logs.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{ClusterError, Result, LOG_TAIL_LINES, MAX_SOCKET_DIR_LEN};

/// Whether this process runs as root (the servers then run as the `postgres` OS user).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds the executable `name` in the `first` directories, then on `PATH`, then in `/usr/sbin` and
/// `/usr/local/sbin` (where Debian puts daemons such as pgbouncer).
pub fn find_program(name: &str, first: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    first
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// uid/gid of the `postgres` OS user when running as root (PostgreSQL and PgBouncer refuse to run as root),
/// `None` otherwise.
pub fn postgres_owner() -> Result<Option<(u32, u32)>> {
    if !is_root() {
        return Ok(None);
    }
    // SAFETY: the name is a valid C string; the returned record is copied before any other passwd call.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(ClusterError::Environment(
            "running as root, but PostgreSQL refuses to run as root and there is no `postgres` OS user: create \
             one (e.g. `useradd --system postgres`, or install the `postgresql` package) or run as a non-root \
             user"
                .into(),
        ));
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

/// Creates the cluster directory: short (for unix sockets), reachable by the server user, owned by it.
pub(crate) fn make_temp_dir(owner: Option<(u32, u32)>) -> Result<PathBuf> {
    let base = temp_base(owner);
    let dir = tempfile::Builder::new()
        .prefix("pgsplit-")
        .tempdir_in(&base)
        .map_err(|e| {
            ClusterError::io(
                format!("create a temporary directory in {}", base.display()),
                e,
            )
        })?
        .keep();
    let dir = fs::canonicalize(&dir).unwrap_or(dir);
    if let Some((uid, gid)) = owner {
        if let Err(e) = std::os::unix::fs::chown(&dir, Some(uid), Some(gid)) {
            let _ = fs::remove_dir_all(&dir);
            return Err(ClusterError::io(
                format!("chown {} to postgres", dir.display()),
                e,
            ));
        }
    }
    Ok(dir)
}

/// Where cluster directories go: `$TMPDIR` when set; otherwise `/dev/shm` (tmpfs: initdb and pg_basebackup
/// are several times faster than on disk) when it has room, else the system temp directory.
pub(crate) fn temp_base(owner: Option<(u32, u32)>) -> PathBuf {
    let usable = |b: &Path| {
        let canonical = fs::canonicalize(b).unwrap_or_else(|_| b.to_path_buf());
        // `pgsplit-XXXXXX` adds 15 bytes.
        canonical.as_os_str().len() + 15 <= MAX_SOCKET_DIR_LEN
            && (owner.is_none() || traversable_by_others(&canonical))
    };
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none() && free_bytes(shm) >= 2 << 30 && usable(shm) {
        return shm.to_path_buf();
    }
    let base = std::env::temp_dir();
    if usable(&base) {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// Bytes available to unprivileged users on the filesystem holding `path` (0 when unknown).
pub(crate) fn free_bytes(path: &Path) -> u64 {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs only writes into the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut st) != 0 {
            return 0;
        }
        (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
    }
}

pub(crate) fn traversable_by_others(path: &Path) -> bool {
    path.ancestors().all(|p| {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// Distinct free loopback ports (bound together, then released).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| ClusterError::io("find a free port on 127.0.0.1", e))?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| ClusterError::io("find a free port on 127.0.0.1", e))
        })
        .collect()
}

/// Quotes a value for a postgresql.conf string.
pub(crate) fn conf_quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// pid and status line (`ready`, `standby`, `starting`, `stopping`) of `postmaster.pid`.
pub(crate) fn read_pid_file(data_dir: &Path) -> Option<(i32, String)> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let status = lines.nth(6).unwrap_or("").trim().to_string();
    Some((pid, status))
}

/// Whether the process exists and is not a zombie.
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Whether the process runs in this data directory (postmasters chdir there), guarding against reused pids.
pub(crate) fn runs_in(pid: i32, data_dir: &Path) -> bool {
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => cwd == data_dir,
        Err(_) => true,
    }
}

pub(crate) fn signal_pid(pid: i32, signal: libc::c_int) {
    if pid > 0 {
        // SAFETY: sending a signal to a positive pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Direct children of a process (from /proc).
pub fn child_pids(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The last lines of a log file.
pub(crate) fn log_tail(path: &Path) -> String {
    log_tail_since(path, 0)
}

/// The last lines of a log file written after `offset` (falls back to the whole file when nothing was).
pub(crate) fn log_tail_since(path: &Path, offset: u64) -> String {
    let Ok(bytes) = fs::read(path) else {
        return "(no log)".into();
    };
    let start = usize::try_from(offset).unwrap_or(0);
    let slice = if start < bytes.len() {
        &bytes[start..]
    } else {
        &bytes[..]
    };
    let text = String::from_utf8_lossy(slice);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.trim().is_empty() {
        "(log is empty)".into()
    } else {
        tail
    }
}
