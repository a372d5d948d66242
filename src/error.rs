//! One error type for the data path: its variant says where a failure came from (client, server, pgsplit's
//! own limits), [`Error::retryable`] whether the request may be tried elsewhere, [`Error::sqlstate`] what the
//! client is told.

use std::io;

use crate::protocol::sqlstate;

/// A failure on the data path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client broke the protocol.
    #[error("{0}")]
    ClientProtocol(String),
    /// The client connection failed or closed.
    #[error("client connection: {0}")]
    ClientIo(#[source] io::Error),
    /// No connection could be opened to a server.
    #[error("could not connect to server \"{server}\": {detail}")]
    Connect { server: String, detail: String },
    /// A server refused pgsplit's login.
    #[error("server \"{server}\" refused the login: {detail}")]
    ServerLogin {
        server: String,
        sqlstate: String,
        detail: String,
    },
    /// A server connection failed mid-use.
    #[error("lost the connection to server \"{server}\": {detail}")]
    ServerIo { server: String, detail: String },
    /// A server sent something pgsplit cannot follow.
    #[error("server \"{server}\" broke the protocol: {detail}")]
    ServerProtocol { server: String, detail: String },
    /// No pooled connection became free in time.
    #[error(
        "no server connection to \"{server}\" became free within {waited_ms} ms (pool size {size})"
    )]
    PoolTimeout {
        server: String,
        waited_ms: u128,
        size: usize,
    },
    /// No server can take the statement.
    #[error("{0}")]
    Unavailable(String),
    /// The client cancelled a unit while it waited inside pgsplit (for a primary).
    #[error("canceling statement due to user request")]
    Cancelled,
    /// pgsplit began to shut down while the unit waited inside it.
    #[error("pgsplit is shutting down")]
    ShuttingDown,
}

impl Error {
    /// Whether a request that failed this way, before any byte reached the client, may be tried on another server.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::ServerIo { .. } | Error::PoolTimeout { .. }
        )
    }

    /// The SQLSTATE pgsplit reports to the client for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            Error::ClientProtocol(_) | Error::ClientIo(_) => sqlstate::PROTOCOL_VIOLATION,
            Error::Connect { .. } => sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            Error::ServerLogin { sqlstate, .. } => sqlstate,
            Error::ServerIo { .. } | Error::ServerProtocol { .. } => sqlstate::CONNECTION_FAILURE,
            Error::PoolTimeout { .. } => sqlstate::QUERY_CANCELED,
            Error::Unavailable(_) => sqlstate::CANNOT_CONNECT_NOW,
            Error::Cancelled => sqlstate::QUERY_CANCELED,
            Error::ShuttingDown => sqlstate::ADMIN_SHUTDOWN,
        }
    }

    /// A server I/O failure.
    pub fn server_io(server: &str, e: impl std::fmt::Display) -> Error {
        Error::ServerIo {
            server: server.to_string(),
            detail: e.to_string(),
        }
    }
}

/// Result with pgsplit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether a failure to open a connection to a server may mean it is going away (a unit needing the primary
    /// then waits for the monitor's verdict): it could not be reached, or it said it is shutting down or starting
    /// up. A refused login (password, role, database) is not.
    pub fn may_mean_server_down(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::ServerIo { .. } | Error::ServerProtocol { .. } => true,
            Error::ServerLogin { sqlstate, .. } => sqlstate.starts_with("57"),
            _ => false,
        }
    }
}
