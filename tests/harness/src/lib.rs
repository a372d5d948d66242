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
//!
//! Layout: this file holds the cluster's shape, its start, waits and shutdown; `control.rs` stops, kills,
//! promotes and re-points servers; `runner.rs` runs PostgreSQL's programs; `os.rs` knows users, programs, ports,
//! processes and temporary directories; `watchdog.rs` cleans up after an owner that vanished; `error.rs`;
//! `relay.rs` is a fault-injecting TCP relay to put between pgsplit and a server; `drill/` (feature `drill`) runs
//! a mixed load through pgsplit with a write ledger and checks its outcome after a fault.

mod control;
#[cfg(feature = "drill")]
pub mod drill;
mod error;
mod os;
pub mod relay;
mod runner;
mod watchdog;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

pub use error::ClusterError;
pub use os::{child_pids, find_program, free_port, is_root, postgres_owner};
use os::{conf_quote, free_ports, is_executable, log_tail, make_temp_dir, signal_pid};
use runner::{run, Runner};
use watchdog::spawn_watchdog;

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
    /// Extra `postgresql.conf` lines for one replica, by name (`replica1`, `replica2`, …), appended after `conf`
    /// and the harness's own lines for that replica (so they win there), e.g. `replica2` →
    /// `recovery_min_apply_delay = '300ms'`. A name that is not one of the replicas is refused
    /// ([`ClusterError::UnknownServer`]) before anything starts.
    pub replica_conf: BTreeMap<String, Vec<String>>,
    /// TLS for every server: the certificate and key (PEM) are written into the primary's data directory (the
    /// replicas copy them) and `ssl = on` is set. Combine with `hostssl`/`hostnossl` lines in `hba`.
    pub ssl: Option<SslFiles>,
}

/// A server certificate and its private key, PEM, made by the caller (e.g. with rcgen).
#[derive(Debug, Clone, Default)]
pub struct SslFiles {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replicas: 2,
            hba: Vec::new(),
            conf: Vec::new(),
            setup_sql: Vec::new(),
            replica_conf: BTreeMap::new(),
            ssl: None,
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
        let names: Vec<String> = (1..=opts.replicas).map(|i| format!("replica{i}")).collect();
        if let Some(unknown) = opts.replica_conf.keys().find(|k| !names.contains(k)) {
            return Err(ClusterError::UnknownServer {
                name: unknown.clone(),
                known: names.join(", "),
            });
        }
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
        cluster.create_replicas(&opts.replica_conf)?;
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
        if let Some(ssl) = &opts.ssl {
            let dir = &primary.data_dir;
            self.run
                .write_file(&dir.join("server.crt"), ssl.cert_pem.as_bytes(), false)?;
            let key = dir.join("server.key");
            self.run.write_file(&key, ssl.key_pem.as_bytes(), false)?;
            // PostgreSQL refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ClusterError::io(format!("chmod {}", key.display()), e))?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
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

    fn create_replicas(&mut self, extra: &BTreeMap<String, Vec<String>>) -> Result<()> {
        let primary_port = self.servers[0].port;
        let run = &self.run;
        let replicas: Vec<PgServer> = self.servers[1..].to_vec();
        let results: Vec<Result<(PgServer, Child)>> = thread::scope(|scope| {
            let handles: Vec<_> = replicas
                .into_iter()
                .map(|mut replica| {
                    let conf = extra.get(&replica.name).map_or(&[][..], Vec::as_slice);
                    scope.spawn(move || {
                        run.make_replica(&replica, primary_port, conf)?;
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

    /// The pid of server `name`'s running postmaster (`None` when it is not running or unknown).
    pub fn postmaster_pid(&self, name: &str) -> Option<i32> {
        let server = self.servers.iter().find(|s| s.name == name)?;
        self.running_pid(server)
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
