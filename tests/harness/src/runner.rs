//! Running PostgreSQL programs (initdb, pg_basebackup, pg_ctl, psql, postgres) as the right user, with their
//! output captured for errors.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::os::{free_port, log_tail_since, pid_alive, read_pid_file, signal_pid};
use crate::{ClusterError, PgServer, Result, COMMAND_TIMEOUT, START_TIMEOUT};

/// What every operation needs to run PostgreSQL programs; shared with worker threads.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) bindir: PathBuf,
    pub(crate) dir: PathBuf,
    /// uid/gid of the `postgres` user when we run as root.
    pub(crate) owner: Option<(u32, u32)>,
}

impl Runner {
    /// A command for a program in the bin directory, run as the data directories' owner.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        scrub_env(&mut cmd);
        cmd.current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    pub(crate) fn psql(&self, name: &str, port: u16, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bindir.join("psql"));
        scrub_env(&mut cmd);
        cmd.env("PGCLIENTENCODING", "UTF8")
            .args(["-X", "-At", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10 \
                 application_name=pgsplit_cluster"
            ))
            .args(["-f", "-"]);
        let out = run_capture(&mut cmd, Some(sql.as_bytes()), COMMAND_TIMEOUT, "psql")?;
        if out.status.success() {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(ClusterError::Sql {
                server: name.into(),
                message: out.combined(),
            })
        }
    }

    /// Writes a file (appending or replacing) and gives it to the data directories' owner.
    pub(crate) fn write_file(&self, path: &Path, contents: &[u8], append: bool) -> Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| ClusterError::io(format!("open {}", path.display()), e))?;
        file.write_all(contents)
            .map_err(|e| ClusterError::io(format!("write {}", path.display()), e))?;
        self.give(path)
    }

    pub(crate) fn give(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| ClusterError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// pg_basebackup from the primary, then the replica's own settings (`extra`: lines appended last).
    pub(crate) fn make_replica(
        &self,
        replica: &PgServer,
        primary_port: u16,
        extra: &[String],
    ) -> Result<()> {
        let mut cmd = self.command("pg_basebackup");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            "postgres",
            "-D",
        ])
        .arg(&replica.data_dir)
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-w"]);
        run(
            &mut cmd,
            None,
            &format!("pg_basebackup for `{}`", replica.name),
        )?;
        // The copied log belongs to the primary.
        let _ = fs::remove_file(replica.log_path());
        let mut conf = format!(
            "\n# --- pgsplit cluster harness: {name} ---\nport = {port}\ncluster_name = '{name}'\n",
            name = replica.name,
            port = replica.port
        );
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
        self.write_file(
            &replica.data_dir.join("postgresql.conf"),
            conf.as_bytes(),
            true,
        )?;
        self.set_upstream(replica, primary_port)
    }

    /// Makes the server a standby of the server on `upstream_port`.
    pub(crate) fn set_upstream(&self, replica: &PgServer, upstream_port: u16) -> Result<()> {
        let auto = replica.data_dir.join("postgresql.auto.conf");
        let old = fs::read_to_string(&auto).unwrap_or_default();
        let mut new: String = old
            .lines()
            .filter(|l| !l.trim_start().starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = writeln!(
            new,
            "primary_conninfo = 'host=127.0.0.1 port={upstream_port} user=postgres application_name={}'",
            replica.name
        );
        self.write_file(&auto, new.as_bytes(), false)?;
        self.write_file(&replica.data_dir.join("standby.signal"), b"", false)
    }

    /// Starts a new server, moving it to another free port if its port was taken meanwhile.
    pub(crate) fn launch_fresh(&self, server: &mut PgServer) -> Result<Child> {
        let mut attempt = 0;
        loop {
            match self.launch(server) {
                Err(e) if attempt < 4 && e.is_port_conflict() => {
                    attempt += 1;
                    server.port = free_port()?;
                    tracing::debug!(server = %server.name, port = server.port, "port taken, retrying");
                    self.write_file(
                        &server.data_dir.join("postgresql.conf"),
                        format!("port = {}\n", server.port).as_bytes(),
                        true,
                    )?;
                }
                other => return other,
            }
        }
    }

    /// Starts the postmaster (output appended to `server.log`) and waits until it accepts connections.
    pub(crate) fn launch(&self, server: &PgServer) -> Result<Child> {
        let log_path = server.log_path();
        // A pid file left by a killed postmaster whose pid now belongs to a zombie would block the start.
        if let Some((pid, _)) = read_pid_file(&server.data_dir) {
            if !pid_alive(pid) {
                let _ = fs::remove_file(server.data_dir.join("postmaster.pid"));
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| ClusterError::io(format!("open {}", log_path.display()), e))?;
        self.give(&log_path)?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log2 = log
            .try_clone()
            .map_err(|e| ClusterError::io("dup log file", e))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&server.data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| ClusterError::io(format!("start postgres for `{}`", server.name), e))?;
        let pid = child.id() as i32;
        let deadline = Instant::now() + START_TIMEOUT;
        let fail = |reason: String| ClusterError::ServerStart {
            name: server.name.clone(),
            reason,
            log: log_path.display().to_string(),
            log_tail: log_tail_since(&log_path, log_offset),
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(fail(format!("postgres exited ({status})")));
                }
                Ok(None) => {}
                Err(e) => return Err(ClusterError::io("wait for postgres", e)),
            }
            if let Some((file_pid, status)) = read_pid_file(&server.data_dir) {
                if file_pid == pid && (status == "ready" || status == "standby") {
                    return Ok(child);
                }
            }
            if Instant::now() >= deadline {
                signal_pid(pid, libc::SIGQUIT);
                thread::sleep(Duration::from_millis(500));
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "not accepting connections after {START_TIMEOUT:?}"
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Output of a finished helper program.
pub(crate) struct Captured {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Captured {
    pub(crate) fn combined(&self) -> String {
        let mut text = self.stderr.trim().to_string();
        if text.is_empty() {
            text = self.stdout.trim().to_string();
        }
        if text.is_empty() {
            text = "(no output)".into();
        }
        text
    }
}

/// Runs a helper program to completion; non-zero exit is an error carrying its output.
pub(crate) fn run(cmd: &mut Command, input: Option<&[u8]>, what: &str) -> Result<String> {
    let out = run_capture(cmd, input, COMMAND_TIMEOUT, what)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(ClusterError::Command {
            program: what.into(),
            status: out.status.to_string(),
            output: out.combined(),
        })
    }
}

/// Runs a program with stdin/stdout/stderr in anonymous temp files (never pipes: a daemon that inherited a
/// pipe would keep it open), feeding `input` on stdin, and kills it after `timeout`.
pub(crate) fn run_capture(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
    what: &str,
) -> Result<Captured> {
    let err = |e: io::Error| ClusterError::io(format!("run {what}"), e);
    let mut out_file = tempfile::tempfile().map_err(err)?;
    let mut err_file = tempfile::tempfile().map_err(err)?;
    let stdin = match input {
        // A file rather than a pipe: no SIGPIPE/EPIPE if the program exits without reading.
        Some(input) => {
            let mut file = tempfile::tempfile().map_err(err)?;
            file.write_all(input).map_err(err)?;
            file.seek(SeekFrom::Start(0)).map_err(err)?;
            Stdio::from(file)
        }
        None => Stdio::null(),
    };
    cmd.stdout(out_file.try_clone().map_err(err)?)
        .stderr(err_file.try_clone().map_err(err)?)
        .stdin(stdin);
    let mut child = cmd.spawn().map_err(err)?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(err)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ClusterError::Timeout {
                what: what.into(),
                waited: timeout,
                details: String::new(),
            });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    };
    let read_all = |f: &mut File| -> String {
        let mut buf = Vec::new();
        let _ = f.seek(SeekFrom::Start(0));
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    };
    Ok(Captured {
        status,
        stdout: read_all(&mut out_file),
        stderr: read_all(&mut err_file),
    })
}

/// Drops PG* variables (PGHOST, PGPORT, PGUSER, PGDATA, PGOPTIONS, …) so they cannot redirect our tools.
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}
