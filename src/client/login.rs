//! The start of a client connection: the untagged first packet (SSL/GSS negotiation, cancel, startup) and
//! client authentication (SCRAM-SHA-256, md5, trust).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use std::sync::Arc;

use crate::auth::{md5, AuthError, ScramKeys, ScramServer};
use crate::auth_query::Secret;
use crate::config::{AuthMethod, UserConfig};
use crate::protocol::frame::{read_cstr, read_frame, ReadError};
use crate::protocol::frontend;
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, Startup, StartupError};
use crate::server::Credential;
use crate::state::{Known, Shared};
use crate::tls::{Transport, ALPN_POSTGRESQL};

/// Largest message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// A failure that ends the connection with a FATAL ErrorResponse.
#[derive(Debug)]
pub struct LoginError {
    /// SQLSTATE.
    pub code: &'static str,
    /// Message for the client.
    pub message: String,
}

impl LoginError {
    fn new(code: &'static str, message: impl Into<String>) -> LoginError {
        LoginError {
            code,
            message: message.into(),
        }
    }
}

/// What the first packet asked for.
pub enum Opening {
    /// A client that wants a session, with its startup parameters.
    Startup { params: Vec<(String, String)> },
    /// A cancel request (answered by closing the connection).
    Cancel { pid: i32, secret: i32 },
    /// The client went away before saying anything useful.
    Gone,
}

/// First byte of a TLS handshake record: a client using direct TLS (`sslnegotiation=direct`).
const TLS_HANDSHAKE: u8 = 0x16;

/// Reads the first packet. SSLRequest is answered `S` and the handshake run when TLS is enabled, else `N`;
/// GSSENCRequest always `N`; a connection that opens with a TLS handshake (direct TLS) is handled as TLS at once.
pub async fn read_opening(
    shared: &Shared,
    socket: &mut Transport,
    buf: &mut BytesMut,
) -> Result<Opening, LoginError> {
    loop {
        let len = loop {
            if buf.first() == Some(&TLS_HANDSHAKE) && !socket.is_tls() {
                if !direct_tls(shared, socket, buf).await {
                    return Ok(Opening::Gone);
                }
                continue;
            }
            match startup::check(buf) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                // PostgreSQL only logs a bad length (a client that sent Terminate first, a port scanner) and
                // closes without a word; so does pgsplit.
                Err(e) => {
                    tracing::debug!(error = %e, "closing a connection with an invalid startup packet");
                    return Ok(Opening::Gone);
                }
            }
            match socket.read_buf(buf).await {
                Ok(0) | Err(_) => return Ok(Opening::Gone),
                Ok(_) => {}
            }
        };
        let packet = buf.split_to(len);
        match startup::decode(&packet) {
            Ok(request @ (Startup::Ssl | Startup::GssEnc)) => {
                if !buf.is_empty() {
                    // Bytes after the request would be read as part of a TLS handshake: a protocol violation.
                    return Err(LoginError::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    ));
                }
                let tls = shared
                    .client_tls
                    .load_full()
                    .filter(|_| request == Startup::Ssl && !socket.is_tls());
                let answer: &[u8] = if tls.is_some() { b"S" } else { b"N" };
                if socket.write_all(answer).await.is_err() || socket.flush().await.is_err() {
                    return Ok(Opening::Gone);
                }
                if let Some(tls) = tls {
                    if let Err(e) = tls.accept(socket, &[]).await {
                        tracing::debug!(error = %e, "client TLS handshake failed");
                        return Ok(Opening::Gone);
                    }
                }
            }
            Ok(Startup::Cancel { pid, secret }) => return Ok(Opening::Cancel { pid, secret }),
            Ok(Startup::Startup { minor, params }) => {
                let unrecognized: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if minor > 0 || !unrecognized.is_empty() {
                    let mut out = BytesMut::new();
                    startup::negotiate_protocol_version(&mut out, &unrecognized);
                    if socket.write_all(&out).await.is_err() || socket.flush().await.is_err() {
                        return Ok(Opening::Gone);
                    }
                }
                let params = params
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("_pq_."))
                    .collect();
                return Ok(Opening::Startup { params });
            }
            Err(e @ StartupError::Unsupported(major, _)) if major < 3 => {
                // A protocol-2 client reads a protocol-2 error: 'E', the text, NUL (as PostgreSQL sends it).
                let mut out = b"EFATAL:  ".to_vec();
                out.extend_from_slice(e.to_string().as_bytes());
                out.extend_from_slice(b"\n\0");
                let _ = socket.write_all(&out).await;
                let _ = socket.flush().await;
                return Ok(Opening::Gone);
            }
            Err(e @ StartupError::Unsupported(..)) => {
                return Err(LoginError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    e.to_string(),
                ))
            }
            Err(e) => return Err(LoginError::new(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
        }
    }
}

/// Runs the handshake of a client that opened with TLS (`early` holds what was read of it); ALPN `postgresql`
/// is required there, as PostgreSQL 17 requires it. `false`: the connection is to be closed.
async fn direct_tls(shared: &Shared, socket: &mut Transport, early: &mut BytesMut) -> bool {
    let Some(tls) = shared.client_tls.load_full() else {
        tracing::debug!("direct TLS connection refused: TLS is disabled (tls.client_mode)");
        return false;
    };
    let bytes = early.split();
    if let Err(e) = tls.accept(socket, &bytes).await {
        tracing::debug!(error = %e, "client TLS handshake failed");
        return false;
    }
    let alpn = socket.tls_connection().and_then(|c| c.alpn_protocol());
    if alpn != Some(ALPN_POSTGRESQL) {
        tracing::debug!("direct TLS connection refused: no ALPN \"postgresql\"");
        return false;
    }
    true
}

/// Checks the client's transport against `[tls]` once its user is known: plain text refused under
/// `client_mode = "require"`, the certificate's common name with `client_cert_user`.
pub fn check_transport(shared: &Shared, socket: &Transport, user: &str) -> Result<(), LoginError> {
    if !socket.is_tls() {
        if shared.config_now().tls.client_mode == crate::config::ClientTlsMode::Require {
            return Err(LoginError::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("SSL required: pgsplit accepts only TLS connections (user \"{user}\")"),
            ));
        }
        return Ok(());
    }
    match shared.client_tls.load_full() {
        Some(tls) => tls
            .check_user(socket, user)
            .map_err(|m| LoginError::new(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, m)),
        None => Ok(()),
    }
}

/// A client that authenticated: who it is, and what its login gave pgsplit to log in to the servers with.
pub struct Authenticated {
    /// The user (listed, or found by auth_query).
    pub user: Arc<UserConfig>,
    /// SCRAM pass-through keys or a looked-up hash, for the pools of this user.
    pub credential: Option<Credential>,
}

/// Authenticates `user` (asking for `database`) by its configured or looked-up method. On success nothing has
/// been sent yet past the exchange.
pub async fn authenticate(
    shared: &Shared,
    socket: &mut Transport,
    buf: &mut BytesMut,
    user: &str,
    database: &str,
) -> Result<Authenticated, LoginError> {
    let known = shared.resolve_user(user, database).await.map_err(|e| {
        tracing::warn!(user, error = %e, "auth_query lookup failed");
        LoginError::new(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "pgsplit could not look up user \"{user}\": the auth_query lookup on the primary failed"
            ),
        )
    })?;
    match known {
        // A user pgsplit does not know gets a mock SCRAM exchange (as PostgreSQL does), refused as a wrong
        // password.
        Known::Unknown => {
            let mut scram = ScramServer::mock(&shared.mock_secret, user);
            scram_exchange(socket, buf, &mut scram, user).await?;
            Err(failed(user))
        }
        Known::Listed(cfg) => {
            let credential = listed(shared, socket, buf, &cfg).await?;
            Ok(Authenticated {
                user: cfg,
                credential,
            })
        }
        Known::LookedUp {
            user: cfg,
            secret,
            at,
        } => {
            let result = looked_up(socket, buf, &cfg.name, &secret).await;
            if result
                .as_ref()
                .is_err_and(|e| e.code == sqlstate::INVALID_PASSWORD)
            {
                shared.auth_query.failed_against(&cfg.name, at);
            }
            Ok(Authenticated {
                user: cfg,
                credential: Some(result?),
            })
        }
    }
}

/// A listed user, by its configured method. With a `scram_verifier` and no server password, the client's
/// ClientKey is the pass-through credential.
async fn listed(
    shared: &Shared,
    socket: &mut Transport,
    buf: &mut BytesMut,
    cfg: &UserConfig,
) -> Result<Option<Credential>, LoginError> {
    let user = cfg.name.as_str();
    match cfg.auth {
        AuthMethod::Trust => Ok(None),
        AuthMethod::Md5 => {
            let Some(password) = cfg.password.as_deref() else {
                return Err(failed(user));
            };
            md5_exchange(socket, buf, user, |salt, r| {
                md5::verify(user, password, salt, r)
            })
            .await?;
            Ok(None)
        }
        AuthMethod::ScramSha256 => {
            let Some(verifier) = shared.verifier(user) else {
                let mut scram = ScramServer::mock(&shared.mock_secret, user);
                scram_exchange(socket, buf, &mut scram, user).await?;
                return Err(failed(user));
            };
            let mut scram = ScramServer::new(verifier.clone());
            scram_exchange(socket, buf, &mut scram, user).await?;
            let pass_through = cfg.scram_verifier.is_some() && cfg.server_password().is_none();
            Ok(pass_through
                .then(|| scram.client_key().cloned())
                .flatten()
                .map(|client_key| {
                    Credential::Scram(ScramKeys {
                        client_key,
                        verifier: verifier.clone(),
                    })
                }))
        }
    }
}

/// A user found by auth_query, by the kind of its hash; returns what pgsplit logs in to the servers with.
async fn looked_up(
    socket: &mut Transport,
    buf: &mut BytesMut,
    user: &str,
    secret: &Secret,
) -> Result<Credential, LoginError> {
    match secret {
        Secret::Md5(hash) => {
            md5_exchange(socket, buf, user, |salt, r| {
                md5::verify_hashed(hash, salt, r)
            })
            .await?;
            Ok(Credential::Md5Hash(hash.clone()))
        }
        Secret::Plain { password, verifier } => {
            let mut scram = ScramServer::new(verifier.clone());
            scram_exchange(socket, buf, &mut scram, user).await?;
            Ok(Credential::Password(password.clone()))
        }
        Secret::Scram(verifier) => {
            let mut scram = ScramServer::new(verifier.clone());
            scram_exchange(socket, buf, &mut scram, user).await?;
            let client_key = scram.client_key().cloned().ok_or_else(|| failed(user))?;
            Ok(Credential::Scram(ScramKeys {
                client_key,
                verifier: verifier.clone(),
            }))
        }
    }
}

fn failed(user: &str) -> LoginError {
    LoginError::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// An md5 challenge; `check(salt, response)` says whether the response is right.
async fn md5_exchange(
    socket: &mut Transport,
    buf: &mut BytesMut,
    user: &str,
    check: impl FnOnce([u8; 4], &[u8]) -> bool,
) -> Result<(), LoginError> {
    let mut out = BytesMut::new();
    let salt = md5::random_salt();
    messages::authentication(&mut out, messages::AUTH_MD5, &salt);
    send(socket, &out).await?;
    let body = read_password(socket, buf).await?;
    let response = read_cstr(&body).map(|(r, _)| r).unwrap_or(&body[..]);
    if check(salt, response) {
        Ok(())
    } else {
        Err(failed(user))
    }
}

/// A whole SCRAM-SHA-256 exchange against `scram`; on success the client has its AuthenticationSASLFinal.
async fn scram_exchange(
    socket: &mut Transport,
    buf: &mut BytesMut,
    scram: &mut ScramServer,
    user: &str,
) -> Result<(), LoginError> {
    let mut out = BytesMut::new();
    // On TLS: the end-point data of the certificate this client's handshake used (SCRAM-SHA-256-PLUS offered).
    scram.bind_channel(socket.channel_binding().map(<[u8]>::to_vec));
    messages::auth_sasl(&mut out, scram.mechanisms());
    send(socket, &out).await?;
    // SASLInitialResponse: mechanism, length-prefixed client-first-message.
    let body = read_password(socket, buf).await?;
    let malformed = || {
        LoginError::new(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse",
        )
    };
    let (mechanism, mut rest) = read_cstr(&body).ok_or_else(malformed)?;
    if rest.len() < 4 {
        return Err(malformed());
    }
    let n = rest.get_i32();
    let data = if n < 0 {
        &[][..]
    } else {
        rest.get(..n as usize).unwrap_or(rest)
    };
    let mechanism = std::str::from_utf8(mechanism).unwrap_or("");
    let server_first = scram
        .client_first(mechanism, data)
        .map_err(|e| auth_error(e, user))?;
    out.clear();
    messages::authentication(&mut out, messages::AUTH_SASL_CONTINUE, &server_first);
    send(socket, &out).await?;
    let body = read_password(socket, buf).await?;
    let server_final = scram.client_final(&body).map_err(|e| auth_error(e, user))?;
    out.clear();
    messages::authentication(&mut out, messages::AUTH_SASL_FINAL, &server_final);
    send(socket, &out).await
}

fn auth_error(e: AuthError, user: &str) -> LoginError {
    let code = e.sqlstate();
    match e {
        AuthError::Failed => LoginError::new(
            code,
            format!("password authentication failed for user \"{user}\""),
        ),
        AuthError::UnsupportedMechanism(m) => LoginError::new(
            code,
            format!("client selected an invalid SASL authentication mechanism \"{m}\""),
        ),
        AuthError::Protocol(m) => LoginError::new(code, m),
        AuthError::ChannelBinding(m) => LoginError::new(code, m),
    }
}

async fn send(socket: &mut Transport, out: &[u8]) -> Result<(), LoginError> {
    let sent = async {
        socket.write_all(out).await?;
        socket.flush().await
    };
    sent.await.map_err(|e| {
        LoginError::new(
            sqlstate::CONNECTION_FAILURE,
            format!("client connection lost: {e}"),
        )
    })
}

/// Reads the next message, which must be a password-type message (`p`).
async fn read_password(
    socket: &mut Transport,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, LoginError> {
    match read_frame(socket, buf, MAX_AUTH_MESSAGE).await {
        Ok(f) if f.tag == frontend::PASSWORD => Ok(f.body),
        Ok(f) => Err(LoginError::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "expected password response, got message type '{}'",
                printable(f.tag)
            ),
        )),
        Err(ReadError::Frame(e)) => {
            Err(LoginError::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
        }
        Err(ReadError::Closed | ReadError::Io(_)) => Err(LoginError::new(
            sqlstate::CONNECTION_FAILURE,
            "client closed the connection during authentication",
        )),
    }
}

/// A message type byte as a printable character, for error messages.
pub fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}

/// Sends a FATAL ErrorResponse and closes.
pub async fn fatal(socket: &mut Transport, code: &str, message: &str) {
    let mut out = BytesMut::new();
    messages::error_response(&mut out, Severity::Fatal, code, message);
    let _ = socket.write_all(&out).await;
    let _ = socket.flush().await;
    let _ = socket.shutdown().await;
}
