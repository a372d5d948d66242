//! One connection from pgsplit to a Postgres server: connect, log in, and the state the pool and session track.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::protocol::backend;
use crate::protocol::frame::{read_frame, ReadError};
use crate::protocol::messages::{self, error_field};
use crate::protocol::{sqlstate, startup, Frame};
use crate::tls::Transport;

mod auth;

pub use auth::{Credential, SharedCredential};

/// Largest message accepted from a server (Postgres itself caps a field at 1 GiB).
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// The backend's configured name (for messages and logs).
    pub server: String,
    /// host:port.
    pub address: String,
    /// Role to log in as.
    pub user: String,
    /// What pgsplit logs in with (shared by the pools of one user and database; read at each login).
    pub credential: std::sync::Arc<SharedCredential>,
    /// Database on the server.
    pub database: String,
    /// TLS towards the server (its cancel requests follow it too).
    pub tls: std::sync::Arc<crate::tls::ServerTls>,
}

/// Statements this connection has prepared under pgsplit's names, with a use counter for LRU eviction.
#[derive(Debug, Default)]
pub struct PreparedSet {
    names: HashMap<Box<[u8]>, u64>,
    tick: u64,
}

impl PreparedSet {
    /// Whether the statement exists here; marks it used.
    pub fn touch(&mut self, name: &[u8]) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a statement as prepared.
    pub fn insert(&mut self, name: &[u8]) {
        self.tick += 1;
        self.names.insert(name.into(), self.tick);
    }

    /// Forgets a statement.
    pub fn remove(&mut self, name: &[u8]) {
        self.names.remove(name);
    }

    /// Number of statements.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether none are prepared.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The least recently used statement other than `keep`, to close when the set is full.
    pub fn lru_victim(&self, keep: &[u8]) -> Option<Box<[u8]>> {
        self.names
            .iter()
            .filter(|(n, _)| &***n != keep)
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())
    }

    /// Forgets everything (after DISCARD ALL / DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.names.clear();
    }
}

/// A logged-in server connection.
pub struct ServerConn {
    /// The connection (plain TCP or TLS).
    pub stream: Transport,
    /// Bytes read from the server and not yet forwarded.
    pub rbuf: BytesMut,
    /// The server's cancel key.
    pub backend_key: (i32, i32),
    /// ParameterStatus values the server reported (names as the server spells them).
    pub params: HashMap<String, String>,
    /// Session settings pgsplit applied on behalf of clients (lower-case names), to be reset for other clients.
    pub applied: HashMap<String, String>,
    /// Fingerprint of the client settings `applied` holds exactly, when nothing changed them since.
    pub settings_fingerprint: Option<u64>,
    /// When the connection was opened.
    pub created: Instant,
    /// When it was last checked in.
    pub last_used: Instant,
    /// Transaction status from the last ReadyForQuery.
    pub status: u8,
    /// Set when the connection must not be reused.
    pub broken: bool,
    /// Something ran here that may have left session state pgsplit does not track: reset before reuse.
    pub needs_reset: bool,
    /// Statements prepared here under pgsplit's names.
    pub prepared: PreparedSet,
    /// Which client statement the server's unnamed statement holds, as (client id, generation).
    pub unnamed_owner: Option<(u64, u64)>,
    /// The target it is logged in to.
    pub server: std::sync::Arc<str>,
    /// The address (for cancel requests).
    pub address: std::sync::Arc<str>,
    /// How the server is reached (for cancel requests).
    pub tls: std::sync::Arc<crate::tls::ServerTls>,
}

impl ServerConn {
    /// Connects and logs in, all within `timeout`.
    pub async fn connect(target: &ServerTarget, timeout: Duration) -> Result<ServerConn> {
        match tokio::time::timeout(timeout, Self::connect_inner(target)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Connect {
                server: target.server.clone(),
                detail: format!(
                    "timed out after {} ms ({})",
                    timeout.as_millis(),
                    target.address
                ),
            }),
        }
    }

    async fn connect_inner(target: &ServerTarget) -> Result<ServerConn> {
        let stream = TcpStream::connect(&target.address)
            .await
            .map_err(|e| Error::Connect {
                server: target.server.clone(),
                detail: format!("{} ({})", e, target.address),
            })?;
        let _ = stream.set_nodelay(true);
        let stream = target.tls.negotiate(stream).await.map_err(|detail| {
            tracing::warn!(server = %target.server, address = %target.address, tls_mode = target.tls.mode.as_str(), %detail, "cannot connect to server over TLS");
            Error::Connect {
                server: target.server.clone(),
                detail: format!("{detail} ({}, tls mode {})", target.address, target.tls.mode.as_str()),
            }
        })?;
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            backend_key: (0, 0),
            params: HashMap::new(),
            applied: HashMap::new(),
            settings_fingerprint: None,
            created: Instant::now(),
            last_used: Instant::now(),
            status: backend::IDLE,
            broken: false,
            needs_reset: false,
            prepared: PreparedSet::default(),
            unnamed_owner: None,
            server: target.server.as_str().into(),
            address: target.address.as_str().into(),
            tls: target.tls.clone(),
        };
        conn.login(target).await?;
        Ok(conn)
    }

    async fn login(&mut self, target: &ServerTarget) -> Result<()> {
        let mut out = BytesMut::new();
        startup::encode_startup(
            &mut out,
            &[
                ("user", &target.user),
                ("database", &target.database),
                ("client_encoding", "UTF8"),
            ],
        );
        self.write_all(&out).await?;
        let mut exchange = auth::Exchange::default();
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                backend::AUTHENTICATION => {
                    out.clear();
                    self.authentication(target, frame.body, &mut exchange, &mut out)?;
                    if !out.is_empty() {
                        self.write_all(&out).await?;
                    }
                }
                backend::PARAMETER_STATUS => {
                    if let Some((k, v)) = messages::parameter_status_view(&frame.body) {
                        self.params.insert(k.to_string(), v.to_string());
                    }
                }
                backend::BACKEND_KEY_DATA => {
                    let b = &frame.body;
                    if b.len() >= 8 {
                        self.backend_key = (
                            i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                            i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                        );
                    }
                }
                backend::READY_FOR_QUERY => {
                    self.status = frame.body.first().copied().unwrap_or(backend::IDLE);
                    return Ok(());
                }
                backend::ERROR_RESPONSE => {
                    let code = error_field(&frame.body, backend::FIELD_CODE)
                        .unwrap_or(sqlstate::CONNECTION_FAILURE)
                        .to_string();
                    let msg = error_field(&frame.body, backend::FIELD_MESSAGE)
                        .unwrap_or("login failed")
                        .to_string();
                    return Err(Error::ServerLogin {
                        server: self.server.to_string(),
                        sqlstate: code,
                        detail: msg,
                    });
                }
                backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => {}
                other => {
                    return Err(self.protocol_error(&format!(
                        "unexpected message '{}' during login",
                        other as char
                    )))
                }
            }
        }
    }

    /// Answers one Authentication message of the server (into `out`; nothing for AuthenticationOk and SASL final)
    /// with the target's credential as it is now.
    fn authentication(
        &mut self,
        target: &ServerTarget,
        mut body: Bytes,
        exchange: &mut auth::Exchange,
        out: &mut BytesMut,
    ) -> Result<()> {
        if body.len() < 4 {
            return Err(self.protocol_error("short authentication message"));
        }
        let code = body.get_u32();
        let credential = target.credential.get();
        match auth::answer(&credential, &target.user, code, &body, exchange, out) {
            Ok(()) => Ok(()),
            Err(auth::AuthFailure::Protocol(m)) => Err(self.protocol_error(&m)),
            Err(auth::AuthFailure::Refused(m)) => {
                Err(self.login_error(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, &m))
            }
        }
    }

    /// Reads one whole frame from the server (used outside the data path: login, session setup).
    pub async fn read_frame(&mut self) -> Result<Frame> {
        match read_frame(&mut self.stream, &mut self.rbuf, MAX_SERVER_MESSAGE).await {
            Ok(f) => Ok(f),
            Err(ReadError::Frame(e)) => Err(self.protocol_error(&e.to_string())),
            Err(ReadError::Io(e)) => Err(self.io_error(e)),
            Err(ReadError::Closed) => {
                self.broken = true;
                Err(Error::server_io(
                    &self.server,
                    "server closed the connection",
                ))
            }
        }
    }

    /// Writes bytes to the server.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        let sent = async {
            self.stream.write_all(buf).await?;
            self.stream.flush().await
        };
        if let Err(e) = sent.await {
            self.broken = true;
            return Err(Error::server_io(&self.server, e));
        }
        Ok(())
    }

    /// Runs a statement pgsplit issues itself (session setup); its results are consumed, not forwarded.
    /// Returns the server's ErrorResponse body if the statement failed.
    pub async fn run_internal(&mut self, sql: &str) -> Result<Option<Frame>> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.write_all(&out).await?;
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                backend::READY_FOR_QUERY => {
                    self.status = f.body.first().copied().unwrap_or(backend::IDLE);
                    return Ok(error);
                }
                backend::ERROR_RESPONSE => error = Some(f),
                backend::PARAMETER_STATUS => {
                    if let Some((k, v)) = messages::parameter_status_view(&f.body) {
                        self.params.insert(k.to_string(), v.to_string());
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether this backend holds any advisory lock (asked outside a transaction: session locks only). An
    /// answer pgsplit cannot read counts as yes.
    pub async fn holds_advisory_locks(&mut self) -> Result<bool> {
        let mut out = BytesMut::new();
        messages::query(
            &mut out,
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())",
        );
        self.write_all(&out).await?;
        let mut none = false;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                backend::DATA_ROW => none = f.body.ends_with(b"f"),
                backend::ERROR_RESPONSE => none = false,
                backend::READY_FOR_QUERY => {
                    self.status = f.body.first().copied().unwrap_or(backend::IDLE);
                    return Ok(!none);
                }
                _ => {}
            }
        }
    }

    /// Brings the session back to what pgsplit's bookkeeping says it is: no cursors, no role or session
    /// authorization but the login's, no LISTEN, no temporary objects, no sequence state, no session advisory
    /// locks, no SQL-level prepared statements, and exactly the settings `applied` records. Protocol-level
    /// statements pgsplit prepared stay (unlike `DISCARD ALL`), so a reset costs one round trip and no
    /// re-preparing. Fails (and the caller closes the connection) if any part of it fails.
    pub async fn reset_session(&mut self) -> Result<()> {
        let mut sql = String::from(
            "CLOSE ALL;\nRESET SESSION AUTHORIZATION;\nRESET ALL;\nUNLISTEN *;\nDISCARD TEMP;\nDISCARD SEQUENCES;\n",
        );
        for (name, value) in &self.applied {
            sql.push_str(&crate::sql::set_statement(name, value));
            sql.push_str(";\n");
        }
        sql.push_str(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql) \
             FROM pg_catalog.pg_advisory_unlock_all()",
        );
        let mut out = BytesMut::new();
        messages::query(&mut out, &sql);
        self.write_all(&out).await?;
        let mut sql_prepared = false;
        let mut failed = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                backend::DATA_ROW => sql_prepared = f.body.ends_with(b"t"),
                backend::ERROR_RESPONSE => {
                    failed = Some(
                        error_field(&f.body, backend::FIELD_MESSAGE)
                            .unwrap_or("error")
                            .to_string(),
                    );
                }
                backend::PARAMETER_STATUS => {
                    if let Some((k, v)) = messages::parameter_status_view(&f.body) {
                        self.params.insert(k.to_string(), v.to_string());
                    }
                }
                backend::READY_FOR_QUERY => {
                    self.status = f.body.first().copied().unwrap_or(backend::IDLE);
                    break;
                }
                _ => {}
            }
        }
        if let Some(detail) = failed {
            self.broken = true;
            return Err(Error::server_io(
                &self.server,
                format!("session reset failed: {detail}"),
            ));
        }
        if sql_prepared {
            // Rare: a function ran PREPARE. Only DEALLOCATE ALL reaches those; pgsplit re-prepares its own.
            if self.run_internal("DEALLOCATE ALL").await?.is_some() {
                self.broken = true;
                return Err(Error::server_io(
                    &self.server,
                    "session reset failed: DEALLOCATE ALL",
                ));
            }
            self.prepared.clear();
            self.unnamed_owner = None;
        }
        self.needs_reset = false;
        Ok(())
    }

    /// True when nothing suggests the connection is unusable: idle status, nothing buffered, not marked broken,
    /// and the socket has neither closed nor sent unsolicited bytes.
    pub fn is_reusable(&mut self) -> bool {
        if self.broken || self.status != backend::IDLE || !self.rbuf.is_empty() {
            return false;
        }
        self.stream.is_quiet()
    }

    fn io_error(&mut self, e: impl std::fmt::Display) -> Error {
        self.broken = true;
        Error::server_io(&self.server, e)
    }

    fn protocol_error(&mut self, detail: &str) -> Error {
        self.broken = true;
        Error::ServerProtocol {
            server: self.server.to_string(),
            detail: detail.to_string(),
        }
    }

    fn login_error(&self, sqlstate: &str, detail: &str) -> Error {
        Error::ServerLogin {
            server: self.server.to_string(),
            sqlstate: sqlstate.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// Sends a CancelRequest for `key` to the server at `address`, over TLS when the server's mode says so (as
/// libpq 17 does; PostgreSQL accepts a cancel either way).
pub async fn send_cancel(
    address: &str,
    key: (i32, i32),
    timeout: Duration,
    tls: &crate::tls::ServerTls,
) -> std::io::Result<()> {
    let fut = async {
        let tcp = TcpStream::connect(address).await?;
        let mut s = tls
            .negotiate(tcp)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e))?;
        let mut out = BytesMut::new();
        startup::encode_cancel(&mut out, key.0, key.1);
        s.write_all(&out).await?;
        s.flush().await?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "cancel timed out",
            ))
        })
}
