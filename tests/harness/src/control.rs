//! Stopping, killing, starting, promoting and re-pointing the servers of a running cluster.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use crate::os::{child_pids, log_tail, pid_alive, read_pid_file, runs_in, signal_pid};
use crate::runner::run;
use crate::{Cluster, ClusterError, PgServer, Result, StopMode, STOP_TIMEOUT, STREAM_TIMEOUT};

impl Cluster {
    /// Stops the named server and waits until its postmaster has exited. Stopping a stopped server is a no-op.
    pub fn stop(&self, name: &str, mode: StopMode) -> Result<()> {
        let server = self.get(name)?;
        let Some(pid) = self.running_pid(server) else {
            return Ok(());
        };
        let signal = match mode {
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        };
        signal_pid(pid, signal);
        if self.wait_exit(server, pid, STOP_TIMEOUT) {
            Ok(())
        } else {
            Err(ClusterError::ServerStop {
                name: name.into(),
                waited: STOP_TIMEOUT,
            })
        }
    }

    /// Simulates a crash: SIGKILLs the postmaster and its child processes (like a machine dying), then waits
    /// until the port is closed. Killing a stopped server is a no-op.
    pub fn kill(&self, name: &str) -> Result<()> {
        let server = self.get(name)?;
        let Some(pid) = self.running_pid(server) else {
            return Ok(());
        };
        // Freeze the postmaster so it cannot fork while we collect its children.
        signal_pid(pid, libc::SIGSTOP);
        let children = child_pids(pid);
        signal_pid(pid, libc::SIGKILL);
        for child in &children {
            signal_pid(*child, libc::SIGKILL);
        }
        if !self.wait_exit(server, pid, STOP_TIMEOUT) {
            return Err(ClusterError::ServerStop {
                name: name.into(),
                waited: STOP_TIMEOUT,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            || children.iter().any(|c| pid_alive(*c))
        {
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("port {} of killed server `{name}` to close", server.port),
                    waited: Duration::from_secs(10),
                    details: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Starts a stopped (or killed) server and waits until it accepts connections. Starting a running server is
    /// a no-op.
    pub fn start_server(&self, name: &str) -> Result<()> {
        let server = self.get(name)?;
        if self.running_pid(server).is_some() {
            return Ok(());
        }
        let child = self.run.launch(server)?;
        self.lock_procs().insert(server.name.clone(), child);
        Ok(())
    }

    /// Fast shutdown, then start again.
    pub fn restart(&self, name: &str) -> Result<()> {
        self.stop(name, StopMode::Fast)?;
        self.start_server(name)
    }

    /// Promotes a replica (`pg_ctl promote -w`); on return `pg_is_in_recovery()` is false there.
    pub fn promote(&self, name: &str) -> Result<()> {
        let server = self.get(name)?;
        if self.running_pid(server).is_none() {
            return Err(ClusterError::NotRunning(name.into()));
        }
        let mut cmd = self.run.command("pg_ctl");
        cmd.arg("promote")
            .arg("-D")
            .arg(&server.data_dir)
            .args(["-w", "-t", "60"]);
        run(&mut cmd, None, &format!("pg_ctl promote of `{name}`"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.psql(name, "SELECT pg_is_in_recovery()")? == "f" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("`{name}` to leave recovery after promotion"),
                    waited: Duration::from_secs(30),
                    details: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Points a replica's `primary_conninfo` at `new_primary`, (re)starts it as a standby and waits until it
    /// streams from `new_primary`. The replica must not be ahead of `new_primary`'s timeline fork point (no
    /// pg_rewind is done).
    pub fn follow(&self, replica: &str, new_primary: &str) -> Result<()> {
        let server = self.get(replica)?;
        let upstream = self.get(new_primary)?;
        self.stop(replica, StopMode::Fast)?;
        self.run.set_upstream(server, upstream.port)?;
        self.start_server(replica)?;
        self.follow_wait(replica, new_primary)
    }

    /// Makes a (crashed or stopped) old primary a standby of `new_primary` again: stops it if it runs, replaces
    /// its data directory with a fresh base backup of `new_primary` (no pg_rewind needed, whatever it had written
    /// past the fork point), starts it and waits until it streams from `new_primary`. It keeps its name and port.
    pub fn rebuild_as_replica(&self, name: &str, new_primary: &str) -> Result<()> {
        let server = self.get(name)?;
        let upstream = self.get(new_primary)?;
        self.stop(name, StopMode::Immediate)?;
        self.reap(name);
        std::fs::remove_dir_all(&server.data_dir)
            .map_err(|e| ClusterError::io(format!("remove {}", server.data_dir.display()), e))?;
        self.run.make_replica(server, upstream.port, &[])?;
        self.start_server(name)?;
        self.follow_wait(name, new_primary)
    }

    /// Waits until `replica` streams from `new_primary`.
    fn follow_wait(&self, replica: &str, new_primary: &str) -> Result<()> {
        let server = self.get(replica)?;
        let deadline = Instant::now() + STREAM_TIMEOUT;
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name = '{}'",
            server.name
        );
        loop {
            if self.psql(new_primary, &sql).ok().as_deref() == Some("1") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("`{replica}` to stream from `{new_primary}`"),
                    waited: STREAM_TIMEOUT,
                    details: format!(
                        "\n--- last lines of {} ---\n{}",
                        server.log_path().display(),
                        log_tail(&server.log_path())
                    ),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pauses WAL replay on a replica: nothing written on the primary after this returns becomes visible there
    /// until [`Cluster::resume_replay`].
    pub fn pause_replay(&self, name: &str) -> Result<()> {
        let out = self.psql(
            name,
            "SELECT pg_wal_replay_pause();\nSELECT pg_is_wal_replay_paused();",
        )?;
        if out.lines().last() == Some("t") {
            Ok(())
        } else {
            Err(ClusterError::Sql {
                server: name.into(),
                message: format!("replay did not pause (pg_is_wal_replay_paused() = {out:?})"),
            })
        }
    }

    /// Resumes WAL replay paused by [`Cluster::pause_replay`].
    pub fn resume_replay(&self, name: &str) -> Result<()> {
        self.psql(name, "SELECT pg_wal_replay_resume()").map(|_| ())
    }

    /// Sets one of a running server's parameters with `ALTER SYSTEM` (kept in its `postgresql.auto.conf`, so it
    /// survives restarts) and reloads its configuration; returns once new sessions on it run with the new file
    /// (`pg_conf_load_time()` moved). `value` is written as in `postgresql.conf`, without quotes (`"300ms"`,
    /// `"on"`, `""`); `None` removes the parameter from `postgresql.auto.conf` (`ALTER SYSTEM RESET`). E.g.
    /// `set_config("replica2", "recovery_min_apply_delay", Some("300ms"))` delays a replica's replay, and
    /// `set_config("replica1", "primary_conninfo", Some(""))` stops its WAL receiver (until [`Cluster::follow`]).
    /// A parameter that only a restart changes is an error that says so (the file keeps the new value: call
    /// [`Cluster::restart`]).
    pub fn set_config(&self, name: &str, parameter: &str, value: Option<&str>) -> Result<()> {
        self.get(name)?;
        if parameter.is_empty()
            || !parameter
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(ClusterError::Sql {
                server: name.into(),
                message: format!("not a parameter name: {parameter:?}"),
            });
        }
        let before = self.psql(name, "SELECT pg_conf_load_time()")?;
        let set = match value {
            Some(v) => format!("ALTER SYSTEM SET {parameter} = '{}'", v.replace('\'', "''")),
            None => format!("ALTER SYSTEM RESET {parameter}"),
        };
        self.psql(name, &format!("{set};\nSELECT pg_reload_conf();"))?;
        let reloaded = format!(
            "SELECT pg_conf_load_time() > '{before}'::timestamptz, \
             coalesce((SELECT pending_restart FROM pg_settings WHERE name = '{parameter}'), false)"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.psql(name, &reloaded)?;
            match out.split_once('|') {
                Some(("t", "t")) => {
                    return Err(ClusterError::Sql {
                        server: name.into(),
                        message: format!(
                            "{parameter} changes only at a restart: postgresql.auto.conf has the new value, \
                             restart `{name}` to apply it"
                        ),
                    })
                }
                Some(("t", _)) => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("`{name}` to reload its configuration"),
                    waited: Duration::from_secs(30),
                    details: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the named server's postmaster is alive (false for unknown names).
    pub fn is_running(&self, name: &str) -> bool {
        self.get(name)
            .map(|s| self.running_pid(s).is_some())
            .unwrap_or(false)
    }

    pub(crate) fn get(&self, name: &str) -> Result<&PgServer> {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ClusterError::UnknownServer {
                name: name.into(),
                known: self
                    .servers
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub(crate) fn lock_procs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps our child postmaster for this server if it has exited.
    pub(crate) fn reap(&self, name: &str) {
        let mut procs = self.lock_procs();
        if let Some(child) = procs.get_mut(name) {
            if !matches!(child.try_wait(), Ok(None)) {
                procs.remove(name);
            }
        }
    }

    /// The live postmaster's pid, from `postmaster.pid` (or our child while it has not written one yet).
    pub(crate) fn running_pid(&self, server: &PgServer) -> Option<i32> {
        self.reap(&server.name);
        if let Some(pid) = read_pid_file(&server.data_dir).map(|(pid, _)| pid) {
            if pid_alive(pid) && runs_in(pid, &server.data_dir) {
                return Some(pid);
            }
        }
        let procs = self.lock_procs();
        let pid = procs.get(&server.name).map(|c| c.id() as i32)?;
        pid_alive(pid).then_some(pid)
    }

    /// Waits until `pid` has exited (reaping it if it is our child). Returns false on timeout.
    pub(crate) fn wait_exit(&self, server: &PgServer, pid: i32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap(&server.name);
            if !pid_alive(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}
