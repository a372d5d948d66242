//! Side connections: the tokio-postgres connections pgsplit opens for itself, never on behalf of a client —
//! the monitor's probes, the catalog reads and the auth_query lookups ([`connect_as`] the `auth_user`).
//!
//! The rule they follow: **a side connection logs in as the first configured user (`[[users]]`, the first
//! entry), with that user's server-side name and password** (`server_user`, `server_password`), to the server
//! and database it is given. So that user must be able to log in to every served database on every server
//! and to read `pg_catalog`; its connections are not counted in any pool.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use crate::config::{Config, DatabaseConfig, ServerConfig, ServerTlsMode, UserConfig};
use crate::router::Backend;
use crate::tls::{PgTls, ServerTls};

/// A side connection that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    /// The configuration has no user to log in as.
    #[error("no user configured")]
    NoUser,
    /// The configuration has no server at that position.
    #[error("no such server")]
    NoSuchServer,
    /// The configuration has no database to connect to.
    #[error("no database")]
    NoDatabase,
    /// Connecting or logging in failed (shown with its causes: a TLS failure says why).
    #[error("{}", describe(.0))]
    Connect(#[from] tokio_postgres::Error),
    /// The server's TLS settings cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

impl SideError {
    /// Whether the server refused the TCP connection (nothing listens: it is down at once).
    pub fn refused(&self) -> bool {
        match self {
            SideError::NoUser
            | SideError::NoSuchServer
            | SideError::NoDatabase
            | SideError::Tls(_) => false,
            SideError::Connect(e) => refused(e),
        }
    }
}

/// An open side connection: the client, and the task driving its socket (it ends when the client is dropped).
pub struct SideConnection {
    /// The client to query through.
    pub client: tokio_postgres::Client,
    /// The connection's task.
    pub task: JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// Opens a side connection to `database` on `server`, named `application_name` in `pg_stat_activity`, within
/// `timeout`. It logs in as `config.users.first()` — the first `[[users]]` entry, by its `server_user` and
/// `server_password` — whoever the clients are: that is the rule every side connection follows.
pub async fn connect(
    config: &Config,
    server: &ServerConfig,
    database: &DatabaseConfig,
    application_name: &str,
    timeout: Duration,
) -> Result<SideConnection, SideError> {
    let user = config.users.first().ok_or(SideError::NoUser)?;
    connect_as(
        config,
        user,
        server,
        database.server_database(),
        application_name,
        timeout,
    )
    .await
}

/// Opens a side connection as `user` (its `server_user` and `server_password`) to database `dbname` on
/// `server`, within `timeout`, with `config`'s TLS settings for that server. The auth_query lookup logs in this
/// way as `auth_user`.
pub async fn connect_as(
    config: &Config,
    user: &UserConfig,
    server: &ServerConfig,
    dbname: &str,
    application_name: &str,
    timeout: Duration,
) -> Result<SideConnection, SideError> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&server.host)
        .port(server.port)
        .user(user.server_user())
        .dbname(dbname)
        .application_name(application_name)
        .connect_timeout(timeout);
    if let Some(p) = user.server_password() {
        pg.password(p);
    }
    let tls = ServerTls::for_server(config, server);
    let task = match (tls.mode, tls.client_config()) {
        (ServerTlsMode::Disable, _) => {
            let (client, conn) = pg.connect(NoTls).await?;
            (client, tokio::spawn(conn))
        }
        (mode, Some(rustls)) if tls.broken().is_none() => {
            pg.ssl_mode(if mode == ServerTlsMode::Prefer {
                SslMode::Prefer
            } else {
                SslMode::Require
            });
            let connector = PgTls::new(rustls, Some(tls.server_name().clone()));
            let (client, conn) = pg.connect(connector).await?;
            (client, tokio::spawn(conn))
        }
        _ => {
            let why = tls.broken().unwrap_or("no TLS configuration").to_string();
            return Err(SideError::Tls(why));
        }
    };
    Ok(SideConnection {
        client: task.0,
        task: task.1,
    })
}

/// `e` and its causes, `: `-separated, e.g. "error performing TLS handshake: invalid peer certificate:
/// UnknownIssuer" (tokio-postgres puts the server's message and the TLS failure in a source).
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Whether an I/O error behind `e` is a refused connection.
fn refused(e: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

/// A side connection to `backend`, to the first configured database, within `timeout`; its connection task runs
/// on its own until the client is dropped. The monitor's probes and the on-demand position checks use it.
pub async fn connect_server(
    config: &Config,
    backend: &Backend,
    application_name: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Client, SideError> {
    let db = config.databases.first().ok_or(SideError::NoDatabase)?;
    let side = connect(config, &backend.config, db, application_name, timeout).await?;
    drop(side.task);
    Ok(side.client)
}
