//! The per-client session: startup, authentication, then the message loop that routes each unit of work to a
//! pooled server connection and relays raw frames both ways.

mod causal;
mod lease;
mod login;
mod session;
mod settings;
mod statements;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::protocol::sqlstate;
use crate::state::Shared;
use crate::tls::Transport;

pub use login::printable;

/// What a client connection turned out to be, once its login is done.
pub enum Opened {
    /// An application client, logged in: run its session.
    Session(Session),
    /// An admin user logged in to the virtual database `pgsplit`: the caller serves the admin console.
    Console(ConsoleRequest),
    /// Nothing more to do: a cancel request (forwarded), a client that went away, or a refused login (already
    /// answered).
    Nothing,
}

/// An application client's session, holding one of the client slots until it ends.
pub struct Session {
    session: Box<session::Session>,
    _slot: OwnedSemaphorePermit,
}

impl Session {
    /// Runs the session to its end.
    pub async fn run(mut self) {
        self.session.run().await;
    }
}

/// An authenticated admin console client: the socket, and what it sent after its login. It holds one of the
/// client slots while it lives, as a session does.
pub struct ConsoleRequest {
    socket: Transport,
    buf: BytesMut,
    slot: OwnedSemaphorePermit,
}

impl ConsoleRequest {
    /// The socket, the bytes read, and the client slot to keep for as long as the console runs.
    pub fn into_parts(self) -> (Transport, BytesMut, OwnedSemaphorePermit) {
        (self.socket, self.buf, self.slot)
    }
}

/// Opens one client connection: reads its startup packet, authenticates it and checks its database. `login` is
/// its place among the connections logging in, given back once it has logged in; a session then takes one of
/// the client `slots` for as long as it runs.
pub async fn serve(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    login: OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) -> Opened {
    // The login is boxed: its state is freed once it is done instead of sizing every client's task.
    Box::pin(open(shared, socket, peer, stop, login, slots)).await
}

/// A client that logged in: who, to what, and the client slot it took.
struct LoggedIn {
    user: Arc<crate::config::UserConfig>,
    credential: Option<crate::server::Credential>,
    database: String,
    params: Vec<(String, String)>,
    slot: OwnedSemaphorePermit,
}

/// Logs a client in within `timeouts.client_login`, then opens what it asked for: a session, or the admin
/// console.
async fn open(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    login: OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) -> Opened {
    let mut socket = Transport::plain(socket);
    // Small: a startup packet and a password are a few hundred bytes, and an idle client should not keep a
    // large buffer's pages resident after login (it grows when a client sends more).
    let mut buf = BytesMut::with_capacity(1024);
    let login_timeout = shared.config().timeouts.client_login;
    let opened = tokio::time::timeout(
        login_timeout,
        log_in(&shared, &mut socket, &mut buf, &slots),
    )
    .await;
    // Logged in (or not): no longer among the connections logging in.
    drop(login);
    let client = match opened {
        Ok(Ok(Some(client))) => client,
        Ok(Ok(None)) => return Opened::Nothing,
        Ok(Err(e)) => {
            tracing::debug!(%peer, code = e.code, message = %e.message, "login refused");
            login::fatal(&mut socket, e.code, &e.message).await;
            return Opened::Nothing;
        }
        Err(_) => {
            login::fatal(
                &mut socket,
                sqlstate::PROTOCOL_VIOLATION,
                "client did not finish logging in in time",
            )
            .await;
            return Opened::Nothing;
        }
    };
    let LoggedIn {
        user,
        credential,
        database,
        params,
        slot,
    } = client;
    if database == crate::config::ADMIN_DATABASE {
        return Opened::Console(ConsoleRequest { socket, buf, slot });
    }
    let Some(pools) = shared.pools(&user, &database, credential) else {
        login::fatal(
            &mut socket,
            sqlstate::INVALID_CATALOG_NAME,
            "unknown user or database",
        )
        .await;
        return Opened::Nothing;
    };
    let session = Box::new(session::Session::new(
        shared,
        socket,
        peer,
        buf,
        user.name.clone(),
        database,
        params,
        pools,
        stop,
    ));
    Opened::Session(Session {
        session,
        _slot: slot,
    })
}

/// Reads the startup packet, takes a client slot, authenticates and checks the database. `None`: nothing to
/// open (a cancel request, forwarded here, or a client that went away).
async fn log_in(
    shared: &Shared,
    socket: &mut Transport,
    buf: &mut BytesMut,
    slots: &Arc<Semaphore>,
) -> Result<Option<LoggedIn>, login::LoginError> {
    let params = match login::read_opening(shared, socket, buf).await? {
        login::Opening::Startup { params } => params,
        login::Opening::Cancel { pid, secret } => {
            shared
                .cancels
                .cancel(pid, secret, shared.config().timeouts.server_connect)
                .await;
            return Ok(None);
        }
        login::Opening::Gone => return Ok(None),
    };
    // A client slot, taken once the startup packet is in (as PostgreSQL checks its connection limit).
    let slot = slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| login::LoginError {
            code: sqlstate::TOO_MANY_CONNECTIONS,
            message: "sorry, too many clients already".into(),
        })?;
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if user.is_empty() {
        return Err(login::LoginError {
            code: sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            message: "no PostgreSQL user name specified in startup packet".into(),
        });
    }
    let database = params
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    login::check_transport(shared, socket, &user)?;
    // Authenticate first, as Postgres does, so that database names do not leak to strangers.
    let login::Authenticated {
        user: who,
        credential,
    } = login::authenticate(shared, socket, buf, &user, &database).await?;
    if database == crate::config::ADMIN_DATABASE {
        if !who.admin {
            return Err(login::LoginError {
                code: sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                message: format!(
                    "user \"{user}\" may not use the pgsplit admin console (set admin = true)"
                ),
            });
        }
    } else if shared.config().database(&database).is_none() {
        return Err(login::LoginError {
            code: sqlstate::INVALID_CATALOG_NAME,
            message: format!("database \"{database}\" does not exist"),
        });
    }
    Ok(Some(LoggedIn {
        user: who,
        credential,
        database,
        params,
        slot,
    }))
}
