//! The per-client session: startup, authentication, then the message loop that routes each unit of work to a
//! pooled server connection and relays raw frames both ways.

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
use crate::proxy::Shared;

pub use login::printable;

/// Serves one client connection to the end. `login` is its place among the connections logging in, given back
/// once it has logged in; it then takes one of the client `slots` for the rest of its session.
pub async fn serve(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    login: OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) {
    // The login is boxed: its state is freed once it is done instead of sizing every client's task.
    if let Some((mut session, _slot)) =
        Box::pin(open(shared, socket, peer, stop, login, slots)).await
    {
        session.run().await;
    }
}

/// Reads the startup packet, authenticates and checks the database: the session for an application client
/// (the admin console and cancel requests are served here, and give `None`).
async fn open(
    shared: Arc<Shared>,
    mut socket: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    login: OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) -> Option<(Box<session::Session>, OwnedSemaphorePermit)> {
    // Small: a startup packet and a password are a few hundred bytes, and an idle client should not keep a
    // large buffer's pages resident after login (it grows when a client sends more).
    let mut buf = BytesMut::with_capacity(1024);
    let login_timeout = shared.config.timeouts.client_login;
    let opened = tokio::time::timeout(login_timeout, async {
        let opening = login::read_opening(&mut socket, &mut buf).await?;
        let params = match opening {
            login::Opening::Startup { params } => params,
            login::Opening::Cancel { pid, secret } => {
                shared
                    .cancels
                    .cancel(pid, secret, shared.config.timeouts.server_connect)
                    .await;
                return Ok(None);
            }
            login::Opening::Gone => return Ok(None),
        };
        // A client slot, taken once the startup packet is in (as PostgreSQL checks its connection limit).
        let slot = slots.try_acquire_owned().map_err(|_| login::LoginError {
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
        // Authenticate first, as Postgres does, so that database names do not leak to strangers.
        login::authenticate(&shared, &mut socket, &mut buf, &user).await?;
        if database == crate::config::ADMIN_DATABASE {
            if shared.config.user(&user).is_some_and(|u| u.admin) {
                return Ok(Some((user, database, params, slot)));
            }
            return Err(login::LoginError {
                code: sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                message: format!(
                    "user \"{user}\" may not use the pgsplit admin console (set admin = true)"
                ),
            });
        }
        if shared.config.database(&database).is_none() {
            return Err(login::LoginError {
                code: sqlstate::INVALID_CATALOG_NAME,
                message: format!("database \"{database}\" does not exist"),
            });
        }
        Ok(Some((user, database, params, slot)))
    })
    .await;
    // Logged in (or not): no longer among the connections logging in.
    drop(login);
    let (user, database, params, slot) = match opened {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, code = e.code, message = %e.message, "login refused");
            login::fatal(&mut socket, e.code, &e.message).await;
            return None;
        }
        Err(_) => {
            login::fatal(
                &mut socket,
                sqlstate::PROTOCOL_VIOLATION,
                "client did not finish logging in in time",
            )
            .await;
            return None;
        }
    };
    if database == crate::config::ADMIN_DATABASE {
        Box::pin(crate::admin::console::serve(shared, socket, buf)).await;
        return None;
    }
    let Some(pools) = shared.pools(&user, &database) else {
        login::fatal(
            &mut socket,
            sqlstate::INVALID_CATALOG_NAME,
            "unknown user or database",
        )
        .await;
        return None;
    };
    let session = Box::new(session::Session::new(
        shared, socket, peer, buf, user, database, params, pools, stop,
    ));
    Some((session, slot))
}
