//! The detached process that cleans up after a process that went away without dropping its cluster.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::{ClusterError, PgServer, Result};

/// Shell script of the watchdog. `$1` is the cluster directory, the rest are data directories. It blocks
/// reading stdin, a pipe whose only writer is the owning process: `done` means the owner cleaned up; EOF means
/// the owner is gone, so stop every postmaster still running in a data directory and remove the directory.
pub(crate) const WATCHDOG_SCRIPT: &str = r#"
dir=$1; shift
IFS= read -r msg
[ "$msg" = done ] && exit 0
for d in "$@"; do
  (
    [ -f "$d/postmaster.pid" ] || exit 0
    p=$(head -n 1 "$d/postmaster.pid")
    [ -n "$p" ] || exit 0
    [ "$(readlink "/proc/$p/cwd")" = "$d" ] || exit 0
    kill -QUIT "$p"
    i=0
    while [ $i -lt 100 ] && [ "$(readlink "/proc/$p/cwd")" = "$d" ]; do sleep 0.05; i=$((i+1)); done
    [ "$(readlink "/proc/$p/cwd")" = "$d" ] && kill -KILL "$p"
  ) &
done
wait
rm -rf "$dir"
"#;

/// Starts the detached watchdog (own process group, no inherited stdout/stderr).
pub(crate) fn spawn_watchdog(dir: &Path, servers: &[PgServer]) -> Result<(Child, ChildStdin)> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("pgsplit-cluster-watchdog")
        .arg(dir)
        .args(servers.iter().map(|s| &s.data_dir))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = fs::remove_dir_all(dir);
            return Err(ClusterError::io("start the cleanup watchdog (sh)", e));
        }
    };
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| ClusterError::Environment("cleanup watchdog has no stdin pipe".into()))?;
    Ok((child, stdin))
}
