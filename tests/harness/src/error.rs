//! What can go wrong while running the local cluster.

use std::io;
use std::time::Duration;

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
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn is_port_conflict(&self) -> bool {
        matches!(self, ClusterError::ServerStart { log_tail, .. }
            if log_tail.contains("Address already in use") || log_tail.contains("could not bind"))
    }
}
