//! A throw-away local PostgreSQL cluster: one primary and N streaming replicas built from the installed
//! PostgreSQL binaries, used by `pgsplit demo` (behind pgsplit's default `demo` feature), by the integration
//! tests and by the benchmark programs. It knows nothing about pgsplit.
//!
//! Everything lives in one temporary directory, `pgsplit-XXXXXX` under `$TMPDIR` when that is set, else under
//! `/dev/shm` when it has 2 GiB free (tmpfs makes initdb and pg_basebackup several times faster), else under the
//! system temp directory. It holds a data directory per server (`primary`, `replica1`, …), each with its
//! `server.log`, and the servers' unix sockets. Servers listen on 127.0.0.1 only, on free ports.
//!
//! The API is synchronous (it runs external programs and polls); call it from `spawn_blocking` in async code.
//!
//! Cleanup: [`Cluster::shutdown`] (also run by `Drop`) stops every server and removes the directory. Because a
//! cluster kept in a `static` is never dropped and a test binary may be killed, every cluster also has a
//! detached watchdog process that waits for this process to go away (EOF on a pipe only this process holds) and
//! then stops the servers (immediate shutdown) and removes the directory.
//!
//! When the process runs as root, PostgreSQL programs run as the `postgres` OS user (PostgreSQL refuses to run
//! as root) and the temporary directory is handed to that user.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after being started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a shutdown may take before it is reported as failed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `start` and `follow` wait for replicas to stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one run of a helper program (initdb, pg_basebackup, psql, pg_ctl).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of a server log quoted in errors.
const LOG_TAIL_LINES: usize = 30;
/// The longest unix socket path the kernel accepts is 107 bytes; the socket is `<dir>/.s.PGSQL.NNNNN`.
const MAX_SOCKET_DIR_LEN: usize = 107 - ".s.PGSQL.65535.lock".len() - 1;
/// Name of the server log inside each data directory.
const LOG_FILE: &str = "server.log";

/// How a server is shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions, disconnect clients, write a shutdown checkpoint (`pg_ctl -m fast`).
    Fast,
    /// Quit at once without a checkpoint; the next start runs crash recovery (`pg_ctl -m immediate`).
    Immediate,
}

/// What went wrong while running the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The PostgreSQL server binaries could not be found.
    #[error("{0}")]
    BinariesNotFound(String),
    /// The environment cannot run PostgreSQL (for example root without a `postgres` user).
    #[error("{0}")]
    Environment(String),
    /// A name that is not one of the cluster's servers.
    #[error("unknown server `{name}` (servers: {known})")]
    UnknownServer {
        /// The name asked for.
        name: String,
        /// The cluster's server names.
        known: String,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A helper program (initdb, pg_basebackup, pg_ctl, psql) failed.
    #[error("{program} failed ({status}): {output}")]
    Command {
        /// The program and what it was doing.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// A server did not come up; `log_tail` is the end of its server log.
    #[error("server `{name}` failed to start: {reason}\n--- last lines of {log} ---\n{log_tail}")]
    ServerStart {
        /// Server name.
        name: String,
        /// What happened.
        reason: String,
        /// Path of the server log.
        log: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// A server did not stop in time.
    #[error("server `{name}` did not stop within {waited:?}")]
    ServerStop {
        /// Server name.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// SQL run through psql failed.
    #[error("SQL on `{server}` failed: {message}")]
    Sql {
        /// Server name.
        server: String,
        /// psql's error output.
        message: String,
    },
    /// No running server is out of recovery.
    #[error("no running primary: every running server is in recovery or unreachable")]
    NoPrimary,
    /// The operation needs a running server.
    #[error("server `{0}` is not running")]
    NotRunning(String),
    /// The operation needs a server in recovery (a replica).
    #[error("server `{0}` is not a replica (pg_is_in_recovery() is false)")]
    NotReplica(String),
    /// A condition was not reached in time.
    #[error("timed out after {waited:?} waiting for {what}{details}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// Extra context (state seen last, log tail), starting with a separator.
        details: String,
    },
}

impl ClusterError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }

    fn is_port_conflict(&self) -> bool {
        matches!(self, ClusterError::ServerStart { log_tail, .. }
            if log_tail.contains("Address already in use") || log_tail.contains("could not bind"))
    }
}

type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// Settings for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of streaming replicas (default 2).
    pub replicas: usize,
    /// Extra `pg_hba.conf` lines, placed before the defaults (`local all all trust`,
    /// `host replication all 127.0.0.1/32 trust`, `host all all 127.0.0.1/32 trust`).
    pub hba: Vec<String>,
    /// Extra `postgresql.conf` lines, appended after the harness settings (so they win).
    pub conf: Vec<String>,
    /// SQL run on the primary (as `postgres`, database `postgres`) before the replicas are created.
    pub setup_sql: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replicas: 2,
            hba: Vec::new(),
            conf: Vec::new(),
            setup_sql: Vec::new(),
        }
    }
}

/// One server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgServer {
    /// `primary`, `replica1`, `replica2`, …
    pub name: String,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The data directory (holds `server.log` too).
    pub data_dir: PathBuf,
}

impl PgServer {
    fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }
}

/// What every operation needs to run PostgreSQL programs; shared with worker threads.
#[derive(Debug, Clone)]
struct Runner {
    bindir: PathBuf,
    dir: PathBuf,
    /// uid/gid of the `postgres` user when we run as root.
    owner: Option<(u32, u32)>,
}

/// A running primary + replicas in a temporary directory. Dropping it stops the servers and removes the
/// directory.
pub struct Cluster {
    run: Runner,
    servers: Vec<PgServer>,
    /// Postmasters started by this process, by server name (kept so they can be reaped).
    procs: Mutex<HashMap<String, Child>>,
    watchdog: Option<(Child, ChildStdin)>,
    closed: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.run.dir)
            .field("bindir", &self.run.bindir)
            .field("servers", &self.servers)
            .finish()
    }
}

impl Cluster {
    /// Finds the directory holding `initdb`, `pg_ctl` and `postgres`: `$PGSPLIT_PG_BINDIR`, else the highest
    /// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else the directory of `initdb` on `PATH`.
    pub fn find_bindir() -> Result<PathBuf> {
        if let Some(dir) = std::env::var_os("PGSPLIT_PG_BINDIR") {
            let dir = PathBuf::from(dir);
            if is_executable(&dir.join("initdb")) {
                return Ok(dir);
            }
            return Err(ClusterError::BinariesNotFound(format!(
                "PGSPLIT_PG_BINDIR={} does not contain initdb: point it at the directory holding initdb, pg_ctl \
                 and postgres (e.g. /usr/lib/postgresql/15/bin) or unset it; if PostgreSQL is missing, install it \
                 (e.g. `apt-get install postgresql`)",
                dir.display()
            )));
        }
        let mut versioned: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
                let bin = entry.path().join("bin");
                match version {
                    Some(v) if is_executable(&bin.join("initdb")) => Some((v, bin)),
                    _ => None,
                }
            })
            .collect();
        versioned.sort();
        if let Some((_, bin)) = versioned.pop() {
            return Ok(bin);
        }
        if let Ok(out) = Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && is_executable(&dir.join("initdb")) {
                return Ok(dir);
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if is_executable(&dir.join("initdb")) {
                    return Ok(dir);
                }
            }
        }
        Err(ClusterError::BinariesNotFound(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in /usr/lib/postgresql/*/bin, \
             `pg_config --bindir` or PATH: install PostgreSQL (e.g. `apt-get install postgresql`) or set \
             PGSPLIT_PG_BINDIR to the directory that contains initdb"
                .to_string(),
        ))
    }

    /// Creates and starts a primary and `opts.replicas` streaming replicas (`replica1`, `replica2`, …).
    /// Returns once every replica is streaming.
    pub fn start(opts: ClusterOptions) -> Result<Cluster> {
        let started = Instant::now();
        let bindir = Self::find_bindir()?;
        for tool in ["postgres", "pg_basebackup", "pg_ctl", "psql"] {
            if !is_executable(&bindir.join(tool)) {
                return Err(ClusterError::BinariesNotFound(format!(
                    "{} has initdb but no {tool}: install the full PostgreSQL server package (e.g. `apt-get \
                     install postgresql`) or set PGSPLIT_PG_BINDIR to a complete bin directory",
                    bindir.display()
                )));
            }
        }
        let owner = postgres_owner()?;
        let ports = free_ports(opts.replicas + 1)?;
        let dir = make_temp_dir(owner)?;

        let mut servers = vec![PgServer {
            name: "primary".into(),
            port: 0,
            data_dir: dir.join("primary"),
        }];
        for i in 1..=opts.replicas {
            let name = format!("replica{i}");
            servers.push(PgServer {
                data_dir: dir.join(&name),
                name,
                port: 0,
            });
        }
        for (server, port) in servers.iter_mut().zip(ports) {
            server.port = port;
        }

        let watchdog = spawn_watchdog(&dir, &servers);
        // From here on, dropping `cluster` (on any error) cleans up.
        let mut cluster = Cluster {
            run: Runner { bindir, dir, owner },
            servers,
            procs: Mutex::new(HashMap::new()),
            watchdog: None,
            closed: false,
        };
        cluster.watchdog = Some(watchdog?);

        cluster.init_primary(&opts)?;
        tracing::debug!(elapsed = ?started.elapsed(), "primary up");
        for sql in &opts.setup_sql {
            cluster.psql("primary", sql)?;
        }
        cluster.create_replicas()?;
        cluster.wait_streaming(STREAM_TIMEOUT)?;
        tracing::info!(
            dir = %cluster.run.dir.display(),
            replicas = opts.replicas,
            elapsed = ?started.elapsed(),
            "local PostgreSQL cluster up"
        );
        Ok(cluster)
    }

    fn init_primary(&mut self, opts: &ClusterOptions) -> Result<()> {
        let mut primary = self.servers[0].clone();
        let mut initdb = self.run.command("initdb");
        initdb.arg("-D").arg(&primary.data_dir).args([
            "--no-sync",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(&mut initdb, None, "initdb")?;

        let mut hba = String::from("# written by the pgsplit cluster harness\n");
        for line in &opts.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
        );
        self.run
            .write_file(&primary.data_dir.join("pg_hba.conf"), hba.as_bytes(), false)?;

        let senders = (opts.replicas * 3 + 4).max(10);
        let mut conf = String::from("\n# --- pgsplit cluster harness ---\n");
        let _ = write!(
            conf,
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             cluster_name = 'primary'\n\
             wal_level = replica\n\
             max_wal_senders = {senders}\n\
             max_replication_slots = {senders}\n\
             hot_standby = on\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_keep_size = '512MB'\n\
             max_connections = 300\n\
             wal_receiver_status_interval = '1s'\n\
             wal_retrieve_retry_interval = '200ms'\n\
             logging_collector = off\n",
            port = primary.port,
            sock = conf_quote(&self.run.dir.to_string_lossy()),
        );
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        self.run.write_file(
            &primary.data_dir.join("postgresql.conf"),
            conf.as_bytes(),
            true,
        )?;

        let child = self.run.launch_fresh(&mut primary)?;
        self.servers[0].port = primary.port;
        self.lock_procs().insert(primary.name.clone(), child);
        Ok(())
    }

    fn create_replicas(&mut self) -> Result<()> {
        let primary_port = self.servers[0].port;
        let run = &self.run;
        let replicas: Vec<PgServer> = self.servers[1..].to_vec();
        let results: Vec<Result<(PgServer, Child)>> = thread::scope(|scope| {
            let handles: Vec<_> = replicas
                .into_iter()
                .map(|mut replica| {
                    scope.spawn(move || {
                        run.make_replica(&replica, primary_port)?;
                        let child = run.launch_fresh(&mut replica)?;
                        Ok((replica, child))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ClusterError::Environment(
                            "replica setup thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut first_error = None;
        for result in results {
            match result {
                Ok((replica, child)) => {
                    if let Some(s) = self.servers.iter_mut().find(|s| s.name == replica.name) {
                        s.port = replica.port;
                    }
                    self.lock_procs().insert(replica.name, child);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// All servers, primary first.
    pub fn servers(&self) -> &[PgServer] {
        &self.servers
    }

    /// The server with this name. Panics on an unknown name.
    pub fn server(&self, name: &str) -> &PgServer {
        match self.get(name) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// The server named `primary` (the original primary, whatever its role now).
    pub fn primary(&self) -> &PgServer {
        self.server("primary")
    }

    /// The servers created as replicas (every server except `primary`).
    pub fn replicas(&self) -> Vec<&PgServer> {
        self.servers
            .iter()
            .filter(|s| s.name != "primary")
            .collect()
    }

    /// `postgres://user@127.0.0.1:PORT/db` for the named server. Panics on an unknown name.
    pub fn url(&self, name: &str, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}",
            self.server(name).port
        )
    }

    /// The temporary directory holding all data directories and sockets.
    pub fn dir(&self) -> &Path {
        &self.run.dir
    }

    /// The PostgreSQL bin directory in use.
    pub fn bindir(&self) -> &Path {
        &self.run.bindir
    }

    /// Runs SQL on the named server as superuser `postgres` in database `postgres` with
    /// `psql -X -At -q -v ON_ERROR_STOP=1` over 127.0.0.1 and returns its trimmed output. The text is fed as a
    /// script, so several statements run one after another (each in its own transaction unless grouped);
    /// command tags are not printed, only rows (`|`-separated columns, one row per line).
    pub fn psql(&self, name: &str, sql: &str) -> Result<String> {
        let server = self.get(name)?;
        self.run.psql(&server.name, server.port, sql)
    }

    /// Waits until every running replica shows up as `streaming` in the `pg_stat_replication` of the current
    /// primary (a running server that is not in recovery).
    pub fn wait_streaming(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = match self.streaming_gap() {
                Ok(None) => return Ok(()),
                Ok(Some(missing)) => missing,
                Err(e) => (e.to_string(), None),
            };
            if Instant::now() >= deadline {
                let mut details = format!(" ({})", missing.0);
                if let Some(server) = missing.1 {
                    let _ = write!(
                        details,
                        "\n--- last lines of {} ---\n{}",
                        server.log_path().display(),
                        log_tail(&server.log_path())
                    );
                }
                return Err(ClusterError::Timeout {
                    what: "replicas to stream".into(),
                    waited: timeout,
                    details,
                });
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// `None` when every running replica streams; else a description and the first lagging server.
    fn streaming_gap(&self) -> Result<Option<(String, Option<&PgServer>)>> {
        let mut primaries = Vec::new();
        let mut replicas = Vec::new();
        for server in &self.servers {
            if !self.is_running(&server.name) {
                continue;
            }
            match self
                .psql(&server.name, "SELECT pg_is_in_recovery()")
                .ok()
                .as_deref()
            {
                Some("f") => primaries.push(server),
                // In recovery, or not answering yet: either way it must end up streaming.
                _ => replicas.push(server),
            }
        }
        if replicas.is_empty() {
            return Ok(None);
        }
        if primaries.is_empty() {
            return Ok(Some(("no running primary".into(), None)));
        }
        let mut streaming = HashSet::new();
        for primary in &primaries {
            let out = self.psql(
                &primary.name,
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
            )?;
            streaming.extend(out.lines().map(str::to_owned));
        }
        let missing: Vec<&PgServer> = replicas
            .into_iter()
            .filter(|r| !streaming.contains(&r.name))
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let names: Vec<&str> = missing.iter().map(|s| s.name.as_str()).collect();
        let primaries: Vec<&str> = primaries.iter().map(|s| s.name.as_str()).collect();
        Ok(Some((
            format!(
                "not streaming from {}: {}",
                primaries.join(", "),
                names.join(", ")
            ),
            missing.first().copied(),
        )))
    }

    /// Waits until the replica has replayed all WAL the current primary had at call time (the primary's WAL is
    /// flushed first, so asynchronous commits made before the call are included).
    pub fn wait_replayed(&self, name: &str, timeout: Duration) -> Result<()> {
        let replica = self.get(name)?;
        let state = self.psql(
            name,
            "SELECT pg_is_in_recovery(), (SELECT sender_port FROM pg_stat_wal_receiver)",
        )?;
        let (in_recovery, sender_port) = state.split_once('|').unwrap_or((&state, ""));
        if in_recovery == "f" {
            return Err(ClusterError::NotReplica(name.into()));
        }
        // Prefer the server this replica streams from, when that one is a primary.
        let upstream = self
            .servers
            .iter()
            .find(|s| s.name != name && sender_port == s.port.to_string())
            .filter(|s| {
                self.psql(&s.name, "SELECT pg_is_in_recovery()")
                    .ok()
                    .as_deref()
                    == Some("f")
            });
        let primary = match upstream {
            Some(s) => s,
            None => self.current_primary(Some(name))?,
        };
        // A synchronously committed transaction that writes WAL flushes everything before it.
        let out = self.psql(
            &primary.name,
            "SET synchronous_commit = on;\n\
             SELECT pg_logical_emit_message(true, 'pgsplit-cluster', '');\n\
             SELECT pg_current_wal_flush_lsn();",
        )?;
        let target = out.lines().last().unwrap_or_default().trim().to_string();
        if target.is_empty() || target.contains('\'') {
            return Err(ClusterError::Sql {
                server: primary.name.clone(),
                message: format!("unexpected WAL position {out:?}"),
            });
        }
        let sql = format!(
            "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false), \
             pg_last_wal_replay_lsn()"
        );
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.psql(&replica.name, &sql) {
                Ok(out) => {
                    let cols: Vec<&str> = out.split('|').collect();
                    if cols.first() == Some(&"f") {
                        return Err(ClusterError::NotReplica(replica.name.clone()));
                    }
                    if cols.get(1) == Some(&"t") {
                        return Ok(());
                    }
                    format!("replayed up to {}", cols.get(2).copied().unwrap_or("?"))
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let paused = self
                    .psql(&replica.name, "SELECT pg_is_wal_replay_paused()")
                    .map(|p| p == "t")
                    .unwrap_or(false);
                return Err(ClusterError::Timeout {
                    what: format!("{name} to replay up to {target} from {}", primary.name),
                    waited: timeout,
                    details: format!(
                        " ({last}{})",
                        if paused { "; replay is paused" } else { "" }
                    ),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first running server (other than `except`) that is not in recovery.
    fn current_primary(&self, except: Option<&str>) -> Result<&PgServer> {
        for server in &self.servers {
            if Some(server.name.as_str()) == except || !self.is_running(&server.name) {
                continue;
            }
            if self
                .psql(&server.name, "SELECT pg_is_in_recovery()")
                .ok()
                .as_deref()
                == Some("f")
            {
                return Ok(server);
            }
        }
        Err(ClusterError::NoPrimary)
    }

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

    /// Whether the named server's postmaster is alive (false for unknown names).
    pub fn is_running(&self, name: &str) -> bool {
        self.get(name)
            .map(|s| self.running_pid(s).is_some())
            .unwrap_or(false)
    }

    /// Stops every server (immediate shutdown), removes the directory and ends the watchdog. Idempotent; also
    /// run on drop.
    pub fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut pids = Vec::new();
        for server in &self.servers {
            if let Some(pid) = self.running_pid(server) {
                signal_pid(pid, libc::SIGQUIT);
                pids.push((server, pid));
            }
        }
        for (server, pid) in pids {
            if !self.wait_exit(server, pid, Duration::from_secs(10)) {
                tracing::warn!(server = %server.name, pid, "server ignored immediate shutdown; killing it");
                for child in child_pids(pid) {
                    signal_pid(child, libc::SIGKILL);
                }
                signal_pid(pid, libc::SIGKILL);
                self.wait_exit(server, pid, Duration::from_secs(5));
            }
        }
        // Postmasters that never wrote a pid file (failed start) are still our children.
        for (_, mut child) in self.lock_procs().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = fs::remove_dir_all(&self.run.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.run.dir.display(), error = %e, "could not remove cluster directory");
            }
        }
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = child.wait();
        }
    }

    fn get(&self, name: &str) -> Result<&PgServer> {
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

    fn lock_procs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps our child postmaster for this server if it has exited.
    fn reap(&self, name: &str) {
        let mut procs = self.lock_procs();
        if let Some(child) = procs.get_mut(name) {
            if !matches!(child.try_wait(), Ok(None)) {
                procs.remove(name);
            }
        }
    }

    /// The live postmaster's pid, from `postmaster.pid` (or our child while it has not written one yet).
    fn running_pid(&self, server: &PgServer) -> Option<i32> {
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
    fn wait_exit(&self, server: &PgServer, pid: i32, timeout: Duration) -> bool {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Runner {
    /// A command for a program in the bin directory, run as the data directories' owner.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        scrub_env(&mut cmd);
        cmd.current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn psql(&self, name: &str, port: u16, sql: &str) -> Result<String> {
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
    fn write_file(&self, path: &Path, contents: &[u8], append: bool) -> Result<()> {
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

    fn give(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| ClusterError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// pg_basebackup from the primary, then the replica's own settings.
    fn make_replica(&self, replica: &PgServer, primary_port: u16) -> Result<()> {
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
        let conf = format!(
            "\n# --- pgsplit cluster harness: {name} ---\nport = {port}\ncluster_name = '{name}'\n",
            name = replica.name,
            port = replica.port
        );
        self.write_file(
            &replica.data_dir.join("postgresql.conf"),
            conf.as_bytes(),
            true,
        )?;
        self.set_upstream(replica, primary_port)
    }

    /// Makes the server a standby of the server on `upstream_port`.
    fn set_upstream(&self, replica: &PgServer, upstream_port: u16) -> Result<()> {
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
    fn launch_fresh(&self, server: &mut PgServer) -> Result<Child> {
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
    fn launch(&self, server: &PgServer) -> Result<Child> {
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
struct Captured {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Captured {
    fn combined(&self) -> String {
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
fn run(cmd: &mut Command, input: Option<&[u8]>, what: &str) -> Result<String> {
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
fn run_capture(
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
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

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

fn is_executable(path: &Path) -> bool {
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
fn make_temp_dir(owner: Option<(u32, u32)>) -> Result<PathBuf> {
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
fn temp_base(owner: Option<(u32, u32)>) -> PathBuf {
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
fn free_bytes(path: &Path) -> u64 {
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

fn traversable_by_others(path: &Path) -> bool {
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
fn free_ports(n: usize) -> Result<Vec<u16>> {
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
fn conf_quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// pid and status line (`ready`, `standby`, `starting`, `stopping`) of `postmaster.pid`.
fn read_pid_file(data_dir: &Path) -> Option<(i32, String)> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let status = lines.nth(6).unwrap_or("").trim().to_string();
    Some((pid, status))
}

/// Whether the process exists and is not a zombie.
fn pid_alive(pid: i32) -> bool {
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
fn runs_in(pid: i32, data_dir: &Path) -> bool {
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => cwd == data_dir,
        Err(_) => true,
    }
}

fn signal_pid(pid: i32, signal: libc::c_int) {
    if pid > 0 {
        // SAFETY: sending a signal to a positive pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Direct children of a process (from /proc).
fn child_pids(parent: i32) -> Vec<i32> {
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
fn log_tail(path: &Path) -> String {
    log_tail_since(path, 0)
}

/// The last lines of a log file written after `offset` (falls back to the whole file when nothing was).
fn log_tail_since(path: &Path, offset: u64) -> String {
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

/// Shell script of the watchdog. `$1` is the cluster directory, the rest are data directories. It blocks
/// reading stdin, a pipe whose only writer is the owning process: `done` means the owner cleaned up; EOF means
/// the owner is gone, so stop every postmaster still running in a data directory and remove the directory.
const WATCHDOG_SCRIPT: &str = r#"
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
fn spawn_watchdog(dir: &Path, servers: &[PgServer]) -> Result<(Child, ChildStdin)> {
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
