//! The message loop of one authenticated client.
//!
//! Client frames are routed per unit of work (a simple Query, or an extended-protocol batch up to Sync): the
//! first routable message decides the server, the unit's frames follow it, and in transaction pooling the server
//! connection goes back to its pool when every forwarded unit has been answered with ReadyForQuery `I`.
//! Server frames are relayed as raw bytes; only their headers are read, except the few messages bookkeeping
//! needs (ReadyForQuery, ParseComplete/CloseComplete of statements pgsplit injected, ParameterStatus, fatal
//! errors).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::settings::{Outcome, Settings, TxnLog};
use super::statements::{self, Statement, Statements, NEVER_PREPARED};
use crate::cancel::CancelSlot;
use crate::classify::{self, Decision, Reason, Route};
use crate::config::PoolMode;
use crate::error::Error;
use crate::net;
use crate::pool::PooledConn;
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::messages::{self, BindView, ParseView, Severity};
use crate::protocol::{sqlstate, Frame};
use crate::router::{Load, PoolSet, ReadTarget, Target};
use crate::server::ServerConn;
use crate::sql::{quote_literal, Effects, SessionEvent};
use crate::state::Shared;
use crate::stats::{ClientInfo, ClientState, Destination};

/// Stop reading from one side while this much is waiting to be written to the other.
const BUFFER_LIMIT: usize = 256 * 1024;
/// Room made in the client read buffer before a read.
const READ_CHUNK: usize = 16 * 1024;
/// A client idle this long gives its buffers back.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// What a server answer to a message pgsplit forwarded or injected means for bookkeeping.
#[derive(Debug)]
enum Expect {
    /// A Parse: `swallow` for Parses pgsplit injected; `created` when it makes a new server statement.
    Parse {
        name: Bytes,
        swallow: bool,
        created: bool,
    },
    /// A Close: `swallow` for Closes pgsplit injected.
    Close { swallow: bool },
    /// A simple Query pgsplit sent on the client's behalf; everything up to its ReadyForQuery is swallowed.
    Hidden,
    /// A Sync pgsplit sent to end a batch on a replica before a write moves to the primary; its
    /// ReadyForQuery is swallowed.
    SyncHidden,
    /// A Sync or simple Query: answered by ReadyForQuery; the setting and savepoint events of its unit.
    Sync(Vec<SessionEvent>),
    /// A Describe of [`NEVER_PREPARED`] pgsplit sent where it refused a client message: the server's error for it
    /// is replaced with this one.
    Refused { code: &'static str, message: String },
}

/// A server connection the client is using.
struct Held {
    /// Counts this unit as in flight on its backend (for the balancer).
    _load: Load,
    /// When it was checked out (unit latency).
    since: std::time::Instant,
    conn: PooledConn,
    target: Target,
    expect: VecDeque<Expect>,
    /// Syncs and Queries forwarded and not yet answered by ReadyForQuery.
    pending: usize,
    /// Extended-protocol messages were forwarded after the last Sync.
    unsynced: bool,
    /// Bytes of a large server frame still to relay as they come.
    pass: usize,
    /// An ErrorResponse arrived since the last ReadyForQuery.
    unit_error: bool,
    /// Setting changes of the current transaction, kept until it ends.
    txn: TxnLog,
    /// A COMMIT or ROLLBACK command tag arrived since the last ReadyForQuery.
    unit_ended: bool,
    /// `pending` right after the last Execute or Query: Syncs forwarded after it, before the client ends a
    /// COPY FROM STDIN it started, are ignored by the server and get no ReadyForQuery.
    pending_at_execute: usize,
}

impl Held {
    fn in_transaction(&self) -> bool {
        self.conn.status != b'I'
    }

    /// Nothing is in flight on it and no transaction is open.
    fn is_idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.pass == 0 && !self.in_transaction()
    }
}

/// Why the session ended.
#[derive(Debug)]
pub enum End {
    /// Terminate, or the client closed its socket.
    ClientGone,
    /// pgsplit sent a FATAL error and closes.
    Fatal,
}

/// Whether pgsplit answers a statement itself.
enum Local {
    /// Answered.
    Answered,
    /// It is pgsplit's to answer, after the replies in flight.
    Wait,
    /// For a server.
    NotMine,
}

/// Where a new unit of work can go right now.
enum Placement {
    /// No server held: route it.
    Route,
    /// It follows the held server.
    Held,
    /// It must wait until the held server has answered what it has (a write behind reads on a replica).
    Wait,
    /// A write arrived inside a batch that is on a replica: end that batch with a Sync, then wait.
    SyncThenWait,
}

/// What happened while waiting.
enum Event {
    ClientReadable(std::io::Result<()>),
    ClientWritable(std::io::Result<()>),
    /// The idle timer: time to check the idle timeout and buffer release.
    Timer,
    ServerReadable(std::io::Result<()>),
    ServerWrote(std::io::Result<usize>),
    Shutdown,
    Progress,
}

/// One client's session.
pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    /// What the admin console shows of this client.
    info: Arc<ClientInfo>,
    client: TcpStream,
    peer: SocketAddr,
    crbuf: BytesMut,
    cout: BytesMut,
    sout: BytesMut,
    user: String,
    database: String,
    pools: Arc<PoolSet>,
    key: (i32, i32),
    cancel: Arc<CancelSlot>,
    /// Boxed: an idle client then carries a pointer, not the whole record.
    held: Option<Box<Held>>,
    parked: Vec<Held>,
    keep_servers: bool,
    /// The client ran LISTEN: it keeps its primary connection held so notifications reach it while idle.
    listening: bool,
    /// The client created session-bound state on the primary: its reads go there too.
    reads_on_primary: bool,
    statements: Statements,
    /// A plain BEGIN answered locally: sent with the transaction's first statement, which picks its server.
    deferred_begin: Option<Frame>,
    /// `SET pgsplit.route`: every unit goes to the primary (`Write`) or a replica (`Read`).
    route_override: Option<Route>,
    /// Session settings carried to every server connection.
    settings: Settings,
    /// Setting and savepoint events of the unit being sent, recorded once the server accepts them.
    unit_changes: Vec<SessionEvent>,
    stalled: Option<Frame>,
    skip_to_sync: bool,
    /// A Flush was sent to learn whether a pipelined Parse of the same name succeeded.
    flushed_for_parse: bool,
    /// The client's transaction failed before any server took it (see `in_aborted_transaction`); `Some(true)`
    /// while an extended-protocol COMMIT/ROLLBACK is being answered.
    aborted: Option<bool>,
    /// Extended-protocol messages since the last Sync (`limits.max_batch_messages`).
    batch_messages: usize,
    /// The cancel slot points at the held connection (a unit is in flight there).
    cancel_armed: bool,
    stop: watch::Receiver<bool>,
    max_message: usize,
    /// Fires for the idle timeout and buffer release; re-armed lazily from `last_active`.
    idle_timer: Pin<Box<Sleep>>,
    timer_armed: bool,
    /// The last I/O event.
    last_active: Instant,
    /// When the buffers were last released.
    last_shrink: Instant,
}

impl Session {
    /// A session for an authenticated client.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        client: TcpStream,
        peer: SocketAddr,
        crbuf: BytesMut,
        user: String,
        database: String,
        startup: Vec<(String, String)>,
        pools: Arc<PoolSet>,
        stop: watch::Receiver<bool>,
    ) -> Session {
        let (key, cancel) = shared.cancels.register();
        let id = shared.next_client_id();
        let info = Arc::new(ClientInfo::new(id, user.clone(), database.clone(), peer));
        shared.stats.clients.add(info.clone());
        let keep_servers = shared.config.pool_mode == PoolMode::Session;
        let max_message = shared.config.max_message_bytes;
        let now = Instant::now();
        Session {
            id,
            info,
            shared,
            client,
            peer,
            crbuf,
            cout: BytesMut::new(),
            sout: BytesMut::new(),
            user,
            database,
            pools,
            key,
            cancel,
            held: None,
            parked: Vec::new(),
            keep_servers,
            listening: false,
            reads_on_primary: false,
            statements: Statements::default(),
            deferred_begin: None,
            route_override: None,
            settings: Settings::from_startup(&startup),
            unit_changes: Vec::new(),
            stalled: None,
            skip_to_sync: false,
            aborted: None,
            flushed_for_parse: false,
            batch_messages: 0,
            cancel_armed: false,
            stop,
            max_message,
            idle_timer: Box::pin(tokio::time::sleep_until(now)),
            timer_armed: false,
            last_active: now,
            last_shrink: now,
        }
    }

    /// Greets the client and serves it until it leaves.
    pub async fn run(&mut self) {
        tracing::debug!(client = self.id, peer = %self.peer, user = %self.user, db = %self.database, "client connected");
        // The greeting and the finish run once: boxed, so their state does not sit in every idle client's task.
        let end = match Box::pin(self.greet()).await {
            Ok(()) => self.serve().await,
            Err(end) => end,
        };
        let _ = self.flush_client().await;
        Box::pin(self.finish()).await;
        self.shared.cancels.unregister(self.key.0);
        self.shared.stats.clients.remove(self.id);
        tracing::debug!(client = self.id, ?end, "client disconnected");
    }

    /// Sends AuthenticationOk, the server's parameters (as a server connection with this client's settings
    /// reports them), BackendKeyData and ReadyForQuery.
    async fn greet(&mut self) -> Result<(), End> {
        let params = self.greeting_params().await?;
        let mut out = BytesMut::with_capacity(512);
        messages::authentication(&mut out, messages::AUTH_OK, &[]);
        let mut names: Vec<&String> = params.keys().collect();
        names.sort();
        for name in names {
            messages::parameter_status(&mut out, name, &params[name]);
        }
        messages::backend_key_data(&mut out, self.key.0, self.key.1);
        messages::ready_for_query(&mut out, b'I');
        self.cout.extend_from_slice(&out);
        self.settings.greeted(&params);
        Ok(())
    }

    /// The ParameterStatus values to greet with: what a server connection with this client's settings reports.
    /// A login never waits for a busy pool (a synchronous client may hold it while it logs in another
    /// connection): when no connection is free, the last greeting's values serve, with this client's own.
    async fn greeting_params(&mut self) -> Result<Arc<HashMap<String, String>>, End> {
        let free = match self.shared.router.primary() {
            Ok(i) => self.pools.pool(Target::Primary(i)).try_checkout().await,
            Err(_) => None,
        };
        let cached = self.pools.greeting.lock().ok().and_then(|g| g.clone());
        let conn = match (free, cached) {
            (Some(Ok(conn)), _) => Some(conn),
            (_, Some(cached)) => {
                // This client's own values for the settings a server echoes; the shared map when equal.
                let mut own = Vec::new();
                for (name, value) in self.settings.startup_values() {
                    let reported =
                        matches!(name, "application_name" | "timezone" | "intervalstyle")
                            || (name == "client_encoding" && !value.eq_ignore_ascii_case("auto"));
                    let key = cached.keys().find(|k| k.eq_ignore_ascii_case(name));
                    if let (true, Some(key)) = (reported, key) {
                        if cached.get(key).map(String::as_str) != Some(value) {
                            own.push((key.clone(), value.to_string()));
                        }
                    }
                }
                if own.is_empty() {
                    return Ok(cached);
                }
                let mut params = (*cached).clone();
                params.extend(own);
                return Ok(Arc::new(params));
            }
            _ => None,
        };
        let mut last_error = None;
        let mut held = None;
        if let Some(conn) = conn {
            let target = Target::Primary(self.shared.router.primary().unwrap_or(0));
            let mut h = self.new_held(conn, target);
            match self.sync_params(&mut h).await {
                Ok(()) => held = Some(h),
                Err(e) => return Err(self.refuse_greeting(e)),
            }
        } else {
            for route in [Route::Write, Route::Read] {
                match self.checkout(route).await {
                    Ok(h) => {
                        held = Some(h);
                        break;
                    }
                    Err(Checkout::Failed(e)) => last_error = Some(e),
                    Err(e) => return Err(self.refuse_greeting(e)),
                }
            }
        }
        let Some(h) = held else {
            let msg =
                last_error.map_or_else(|| "no server is available".to_string(), |e| e.to_string());
            self.queue_error(Severity::Fatal, sqlstate::CANNOT_CONNECT_NOW, &msg);
            return Err(End::Fatal);
        };
        let params = match self.pools.greeting.lock() {
            Ok(mut g) => match g.as_ref() {
                Some(cached) if **cached == h.conn.params => cached.clone(),
                _ => {
                    let fresh = Arc::new(h.conn.params.clone());
                    *g = Some(fresh.clone());
                    fresh
                }
            },
            Err(_) => Arc::new(h.conn.params.clone()),
        };
        // The greeting connection only served to learn the parameters: it goes back to the pool.
        self.cancel.clear();
        h.conn.release();
        Ok(params)
    }

    /// Refuses the login after a server rejected this client's settings (e.g. a bad client_encoding).
    fn refuse_greeting(&mut self, e: Checkout) -> End {
        match e {
            Checkout::Server(frame) => {
                let msg =
                    messages::error_field(&frame.body, b'M').unwrap_or("invalid startup parameter");
                let code = messages::error_field(&frame.body, b'C')
                    .unwrap_or(sqlstate::PROTOCOL_VIOLATION);
                self.queue_error(Severity::Fatal, code, msg);
            }
            Checkout::Failed(e) => self.queue_error(
                Severity::Fatal,
                sqlstate::CANNOT_CONNECT_NOW,
                &e.to_string(),
            ),
        }
        End::Fatal
    }

    /// Between units of work: nothing in flight for this client.
    fn is_idle(&self) -> bool {
        self.stalled.is_none() && self.held.as_ref().is_none_or(|h| h.is_idle())
    }

    /// The message loop.
    async fn serve(&mut self) -> End {
        loop {
            // Give back a server that has answered everything before routing what waits.
            self.maybe_release();
            self.sync_cancel();
            if let Err(end) = self.dispatch().await {
                return end;
            }
            self.maybe_release();
            self.sync_cancel();
            if self.is_idle() && *self.stop.borrow() {
                self.queue_error(
                    Severity::Fatal,
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection: pgsplit is shutting down",
                );
                return End::Fatal;
            }
            let event = self.wait().await;
            if !matches!(event, Event::Timer) {
                self.last_active = Instant::now();
            }
            match event {
                Event::ClientReadable(Err(_)) | Event::ClientWritable(Err(_)) => {
                    return End::ClientGone
                }
                Event::ClientReadable(Ok(())) => {
                    // Room for the rest of a large frame at once, else a chunk.
                    let want = match open_frame(&self.crbuf, self.max_message) {
                        Some(total) => total.saturating_sub(self.crbuf.len()).max(READ_CHUNK),
                        None => READ_CHUNK,
                    };
                    if self.crbuf.capacity() - self.crbuf.len() < want.min(READ_CHUNK) / 2
                        || (want > READ_CHUNK && self.crbuf.capacity() - self.crbuf.len() < want)
                    {
                        self.crbuf.reserve(want);
                    }
                    match net::read_available(&self.client, &mut self.crbuf) {
                        Ok(0) => return End::ClientGone,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::ClientGone,
                    }
                }
                Event::ClientWritable(Ok(())) => match self.client.try_write(&self.cout) {
                    Ok(n) => self.cout.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return End::ClientGone,
                },
                Event::Timer => {
                    if let Err(end) = self.on_timer() {
                        return end;
                    }
                }
                Event::ServerWrote(Ok(_)) => {}
                Event::ServerReadable(Ok(())) => {
                    let read = match self.held.as_mut() {
                        Some(h) => {
                            let ServerConn { stream, rbuf, .. } = &mut *h.conn;
                            if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
                                rbuf.reserve(READ_CHUNK);
                            }
                            net::read_available(stream, rbuf)
                        }
                        None => continue,
                    };
                    let result = match read {
                        Ok(0) => self.server_lost("the server closed the connection"),
                        Ok(_) => self.relay_server(),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                        Err(e) => self.server_lost(&e.to_string()),
                    };
                    if let Err(end) = result {
                        return end;
                    }
                }
                Event::ServerReadable(Err(e)) | Event::ServerWrote(Err(e)) => {
                    if let Err(end) = self.server_lost(&e.to_string()) {
                        return end;
                    }
                }
                Event::Shutdown | Event::Progress => {}
            }
        }
    }

    /// The idle timer fired: closes a client idle past `timeouts.client_idle`, gives back the buffers of one
    /// idle for [`SHRINK_AFTER`]. It may fire early (it is re-armed lazily, not on every message): then it
    /// only re-arms.
    fn on_timer(&mut self) -> Result<(), End> {
        self.timer_armed = false;
        let now = Instant::now();
        let idle = self.shared.config.timeouts.client_idle;
        if !idle.is_zero() && now.duration_since(self.last_active) >= idle && self.is_idle() {
            self.queue_error(
                Severity::Fatal,
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to idle timeout (timeouts.client_idle)",
            );
            return Err(End::Fatal);
        }
        if now.duration_since(self.last_active.max(self.last_shrink)) >= SHRINK_AFTER {
            // Idle for a while: give the buffers back (an idle client then costs a few hundred bytes).
            self.last_shrink = now;
            for buf in [&mut self.crbuf, &mut self.cout, &mut self.sout] {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
        }
        Ok(())
    }

    /// Waits for the next I/O event on either side.
    async fn wait(&mut self) -> Event {
        let idle = self.shared.config.timeouts.client_idle;
        let between_units = self.is_idle();
        let watch_idle = between_units && !idle.is_zero();
        // Buffers are released after a while idle; readiness first, so an idle client holds none.
        let holds_buffers = self.crbuf.capacity() + self.cout.capacity() + self.sout.capacity() > 0;
        let shrink_due = between_units && holds_buffers && self.cout.is_empty();
        let timer_needed = watch_idle || shrink_due;
        if timer_needed && !self.timer_armed {
            let mut due = self.last_active.max(self.last_shrink) + SHRINK_AFTER;
            if watch_idle {
                let idle_due = self.last_active + idle;
                due = if shrink_due {
                    due.min(idle_due)
                } else {
                    idle_due
                };
            }
            self.idle_timer.as_mut().reset(due);
            self.timer_armed = true;
        }
        let Session {
            client,
            crbuf,
            cout,
            sout,
            held,
            stop,
            stalled,
            idle_timer,
            ..
        } = self;
        // Unless a frame is stalled, `crbuf` holds at most the start of one frame (dispatch took the complete
        // ones): it must be read to its end whatever its size (up to `max_message_bytes`). While a frame waits for
        // the held server, what the client pipelines behind it is still read, up to the buffer limit, so a client
        // that goes away is noticed at once.
        let read_client =
            (stalled.is_none() || crbuf.len() < BUFFER_LIMIT) && sout.len() < BUFFER_LIMIT;
        let has_server = held.is_some();
        let (sread, mut swrite) = match held {
            Some(h) => {
                let (r, w) = h.conn.stream.split();
                (Some(r), Some(w))
            }
            None => (None, None),
        };
        let client: &TcpStream = client;
        tokio::select! {
            r = client.readable(), if read_client => Event::ClientReadable(r),
            r = client.writable(), if !cout.is_empty() => Event::ClientWritable(r),
            r = async {
                match sread.as_ref() {
                    Some(r) => r.readable().await,
                    None => std::future::pending().await,
                }
            }, if has_server && cout.len() < BUFFER_LIMIT => Event::ServerReadable(r),
            r = async {
                match swrite.as_mut() {
                    Some(w) => w.write_buf(sout).await,
                    None => std::future::pending().await,
                }
            }, if has_server && !sout.is_empty() => Event::ServerWrote(r),
            _ = stop.changed(), if between_units && !*stop.borrow() => Event::Shutdown,
            _ = idle_timer.as_mut(), if timer_needed => Event::Timer,
            // Nothing to wait for (a stalled unit whose server was just released): route it now.
            else => Event::Progress,
        }
    }

    /// Routes and forwards every complete client frame it can.
    async fn dispatch(&mut self) -> Result<(), End> {
        loop {
            let (frame, fresh) = match self.stalled.take() {
                Some(f) => (f, false),
                None => match Frame::split(&mut self.crbuf, self.max_message) {
                    Ok(Some(f)) => (f, true),
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(self.violation(&e.to_string())),
                },
            };
            if self.skip_to_sync {
                if frame.tag == b'S' {
                    self.skip_to_sync = false;
                    self.batch_messages = 0;
                    if self.held.as_ref().is_some_and(|h| h.unsynced) {
                        // The server failed the batch where pgsplit refused a message: its Sync ends it there.
                        self.forward(&frame);
                    } else {
                        let status = if self.aborted.is_some() { b'E' } else { b'I' };
                        messages::ready_for_query(&mut self.cout, status);
                    }
                }
                continue;
            }
            if self.aborted.is_some() {
                self.in_aborted_transaction(frame)?;
                continue;
            }
            if fresh {
                match frame.tag {
                    b'P' | b'B' | b'D' | b'E' | b'C' => {
                        self.batch_messages += 1;
                        let cap = self.shared.config.limits.max_batch_messages;
                        if self.batch_messages > cap {
                            self.refuse(
                                frame.tag,
                                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                                format!(
                                    "too many messages before Sync: a batch may hold at most {cap} Parse, Bind, \
                                     Describe, Execute and Close messages (limits.max_batch_messages); the rest \
                                     of this batch is skipped"
                                ),
                            );
                            continue;
                        }
                    }
                    b'S' | b'Q' => self.batch_messages = 0,
                    _ => {}
                }
            }
            if let Some(stalled) = self.on_frame(frame).await? {
                self.stalled = Some(stalled);
                return Ok(());
            }
        }
    }

    /// Answers a client whose transaction failed before it reached a server (no server could be had after a
    /// BEGIN pgsplit had acknowledged): as PostgreSQL answers in a failed transaction, everything but its end
    /// gets 25P02, and COMMIT or ROLLBACK (simple or extended) ends it with ROLLBACK.
    fn in_aborted_transaction(&mut self, frame: Frame) -> Result<(), End> {
        let ends = |body: &[u8], parse: bool| {
            let text = if parse {
                ParseView::decode(body).map(|v| v.query)
            } else {
                messages::query_bytes(body)
            };
            text.and_then(|t| std::str::from_utf8(t).ok())
                .and_then(classify::transaction_end)
                .is_some()
        };
        let failed = |s: &mut Session| {
            s.queue_error(
                Severity::Error,
                sqlstate::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            );
        };
        match frame.tag {
            b'Q' if ends(&frame.body, false) => {
                self.aborted = None;
                messages::command_complete(&mut self.cout, "ROLLBACK");
                messages::ready_for_query(&mut self.cout, b'I');
            }
            b'Q' => {
                failed(self);
                messages::ready_for_query(&mut self.cout, b'E');
            }
            b'P' if ends(&frame.body, true) => {
                self.aborted = Some(true);
                messages::empty(&mut self.cout, b'1');
            }
            b'B' if self.aborted == Some(true) => messages::empty(&mut self.cout, b'2'),
            b'D' if self.aborted == Some(true) => messages::empty(&mut self.cout, b'n'),
            b'E' if self.aborted == Some(true) => {
                self.aborted = None;
                messages::command_complete(&mut self.cout, "ROLLBACK");
            }
            b'S' => messages::ready_for_query(&mut self.cout, b'E'),
            b'C' => messages::empty(&mut self.cout, b'3'),
            b'H' => {}
            b'X' => return Err(End::ClientGone),
            b'P' | b'B' | b'D' | b'E' | b'F' => {
                failed(self);
                if frame.tag == b'F' {
                    messages::ready_for_query(&mut self.cout, b'E');
                } else {
                    self.skip_to_sync = true;
                }
            }
            other => {
                return Err(self.violation(&format!("invalid frontend message type {other}")));
            }
        }
        Ok(())
    }

    /// Handles one client frame; returns it back when it has to wait for the held server.
    async fn on_frame(&mut self, frame: Frame) -> Result<Option<Frame>, End> {
        match frame.tag {
            b'Q' => {
                let Some(bytes) = messages::query_bytes(&frame.body) else {
                    return Err(self.violation("invalid Query message"));
                };
                // Text in another client encoding is read as UTF-8 with stand-ins for what does not decode:
                // keywords and punctuation are ASCII in every encoding PostgreSQL allows, except a few
                // multi-byte ones whose second bytes can look like ASCII (see `unsafe_bytes`).
                let text = String::from_utf8_lossy(bytes);
                let text = text.as_ref();
                match self.answer_locally(text) {
                    Local::Answered => return Ok(None),
                    // `SET pgsplit.route` behind replies still in flight: answer it in order, once they are in.
                    Local::Wait => return Ok(Some(frame)),
                    Local::NotMine => {}
                }
                if statements::names_reserved_statement(text) {
                    self.refuse(b'Q', sqlstate::RESERVED_NAME, reserved_name_message());
                    return Ok(None);
                }
                let decision = if self.unsafe_bytes(bytes) {
                    unreadable_decision()
                } else {
                    self.classify(text).await
                };
                if decision.effects.listens {
                    self.listening = true;
                }
                if decision.effects.session {
                    self.note_session_changes(text);
                }
                self.start_unit(frame, decision).await
            }
            b'P' => {
                let Some(view) = ParseView::decode(&frame.body) else {
                    return Err(self.violation("invalid Parse message"));
                };
                let text = String::from_utf8_lossy(view.query);
                if statements::names_reserved_statement(&text) {
                    self.refuse(b'P', sqlstate::RESERVED_NAME, reserved_name_message());
                    return Ok(None);
                }
                let cap = self.shared.config.limits.max_prepared_statements_per_client;
                if !view.name.is_empty()
                    && self.statements.get(view.name).is_none()
                    && self.statements.named_len() >= cap
                {
                    let message = format!(
                        "too many prepared statements: this client already holds {cap} named statements, the most \
                         limits.max_prepared_statements_per_client allows; close some before preparing \"{}\"",
                        String::from_utf8_lossy(view.name)
                    );
                    self.refuse(b'P', sqlstate::CONFIGURATION_LIMIT_EXCEEDED, message);
                    return Ok(None);
                }
                let decision = if self.unsafe_bytes(view.query) {
                    unreadable_decision()
                } else {
                    self.classify(&text).await
                };
                let existing = self
                    .statements
                    .get(view.name)
                    .filter(|_| !view.name.is_empty());
                // The name's own Parse is unanswered: wait for its answer. If it is in this very batch and the
                // batch has already failed, the server answers nothing more before Sync (that Parse failed or was
                // skipped, and the server skips the duplicate check below in turn): no wait.
                let in_flight = existing.is_some_and(|e| {
                    !e.confirmed
                        && self.held.as_ref().is_some_and(|h| {
                            let at = h.expect.iter().position(|x| {
                                matches!(x, Expect::Parse { name, .. } if *name == e.server_name)
                            });
                            at.is_some_and(|at| {
                                let synced = h
                                    .expect
                                    .iter()
                                    .skip(at)
                                    .any(|x| matches!(x, Expect::Sync(_) | Expect::SyncHidden));
                                synced || !h.unit_error
                            })
                        })
                });
                if in_flight {
                    // The name's own Parse is still unanswered: whether it exists depends on that answer. A Flush
                    // makes the server send it now; this Parse waits for it.
                    if !std::mem::replace(&mut self.flushed_for_parse, true) {
                        messages::empty(&mut self.sout, b'H');
                    }
                    return Ok(Some(frame));
                }
                self.flushed_for_parse = false;
                if existing.is_some() {
                    // As PostgreSQL says it, with the client's name (never pgsplit's).
                    let message = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(view.name)
                    );
                    self.refuse(b'P', sqlstate::DUPLICATE_PREPARED_STATEMENT, message);
                    return Ok(None);
                }
                let just_prepare = self.held.is_none()
                    && self.deferred_begin.is_none()
                    && !decision.effects.pins
                    && !view.name.is_empty()
                    && self.crbuf.starts_with(&[b'S', 0, 0, 0, 4])
                    && self.pools_full(decision.route);
                if just_prepare {
                    // Parse + Sync outside a transaction (libpq's PQprepare) while every connection it could use
                    // is taken: recorded and answered here, prepared on whichever server a later Bind goes to (a
                    // synchronous client that prepares while another of its connections holds the pool's last
                    // slot must not wait for one). A text the server rejects then fails at that Bind, and the
                    // name is forgotten. With a free connection the Parse goes to a server, as on PostgreSQL.
                    self.statements.parse(self.id, &view, &frame.body, decision);
                    messages::empty(&mut self.cout, b'1');
                    return Ok(None);
                }
                self.start_unit(frame, decision).await
            }
            b'B' => {
                let Some(view) = BindView::decode(&frame.body) else {
                    return Err(self.violation("invalid Bind message"));
                };
                if self.unknown_statement(view.statement) {
                    self.refuse(
                        b'B',
                        sqlstate::INVALID_SQL_STATEMENT_NAME,
                        no_statement_message(view.statement),
                    );
                    return Ok(None);
                }
                let decision = self.statement_decision(view.statement);
                if decision.effects.session {
                    let text = self
                        .statements
                        .get(view.statement)
                        .and_then(|s| s.query_text().map(str::to_string));
                    if let Some(text) = text {
                        self.note_session_changes(&text);
                    }
                }
                self.start_unit(frame, decision).await
            }
            b'D' | b'C' => {
                let Some((kind, name)) = messages::target(&frame.body) else {
                    return Err(self.violation("invalid Describe or Close message"));
                };
                if frame.tag == b'D' && kind == b'S' && self.unknown_statement(name) {
                    self.refuse(
                        b'D',
                        sqlstate::INVALID_SQL_STATEMENT_NAME,
                        no_statement_message(name),
                    );
                    return Ok(None);
                }
                if self.held.is_none() && frame.tag == b'C' {
                    // Nothing is open on any server outside a held connection: answer locally.
                    if kind == b'S' {
                        self.statements.close(name);
                    }
                    messages::empty(&mut self.cout, b'3');
                    return Ok(None);
                }
                if kind == b'P' && self.held.is_some() {
                    // A portal lives on the server that bound it.
                    self.forward(&frame);
                    return Ok(None);
                }
                let decision = if kind == b'S' {
                    self.statement_decision(name)
                } else {
                    write_decision()
                };
                self.start_unit(frame, decision).await
            }
            b'E' if self.held.is_some() => {
                // Execute follows its portal's Bind.
                self.forward(&frame);
                Ok(None)
            }
            b'E' | b'F' => self.start_unit(frame, write_decision()).await,
            b'S' => {
                if self.held.is_some() {
                    self.forward(&frame);
                } else {
                    let status = if self.deferred_begin.is_some() {
                        b'T'
                    } else {
                        b'I'
                    };
                    messages::ready_for_query(&mut self.cout, status);
                }
                Ok(None)
            }
            b'H' | b'd' | b'c' | b'f' => {
                if self.held.is_some() {
                    self.forward(&frame);
                }
                Ok(None)
            }
            b'X' => Err(End::ClientGone),
            b'p' => Err(self.violation("unexpected password message after authentication")),
            other => Err(self.violation(&format!("invalid frontend message type {}", other))),
        }
    }

    /// Whether every pool a unit of this route could use is at its size (checking one out would wait).
    fn pools_full(&self, route: Route) -> bool {
        let full = |t: Target| {
            let s = self.pools.pool(t).stats();
            s.active >= s.size
        };
        let primary = self.shared.router.primary().map(Target::Primary);
        match route {
            Route::Write => primary.is_ok_and(full),
            Route::Read => {
                primary.is_ok_and(full)
                    && (0..self.shared.router.servers.len())
                        .filter(|&i| Ok(i) != self.shared.router.primary())
                        .all(|i| full(Target::Replica(i)))
            }
        }
    }

    /// Whether a statement's bytes cannot be lexed safely: non-ASCII bytes in a client encoding whose multi-byte
    /// characters may hold ASCII quote-like bytes (SJIS, BIG5, GBK, UHC, GB18030, JOHAB). Such text goes to
    /// the primary, and pins the client (see `unreadable_decision`).
    fn unsafe_bytes(&self, text: &[u8]) -> bool {
        !text.is_ascii() && self.settings.ascii_unsafe_encoding()
    }

    /// The routing decision for a statement text; everything is a write when read/write splitting is off.
    /// A long text takes long to parse: it is classified on a blocking thread, so other clients on this runtime
    /// thread are not held up.
    async fn classify(&self, text: &str) -> Decision {
        let decision = if text.len() <= classify::SMALL_STACK_BYTES {
            self.shared.classifier.classify(text)
        } else {
            let shared = self.shared.clone();
            let text = text.to_owned();
            tokio::task::spawn_blocking(move || shared.classifier.classify(&text))
                .await
                // It never panics; if it did, fail closed (the primary, and the client keeps its connections).
                .unwrap_or(Decision {
                    effects: Effects {
                        pins: true,
                        dirty: true,
                        ..Effects::NONE
                    },
                    ..write_decision()
                })
        };
        if self.shared.router.splits_reads() {
            decision
        } else {
            Decision {
                effects: decision.effects,
                ..write_decision()
            }
        }
    }

    /// Statements pgsplit answers itself: `SET pgsplit.route`, a plain BEGIN (deferred until the transaction's
    /// first statement shows where it may run), and COMMIT/ROLLBACK of a deferred BEGIN that ran nothing.
    /// Returns whether it answered.
    fn answer_locally(&mut self, text: &str) -> Local {
        let busy = self.held.is_some() || self.stalled.is_some();
        if first_word_is(text, "set") && classify::route_setting(text).is_some() {
            // Answered in order only when nothing is in flight (a transaction may be open).
            let in_flight = self.stalled.is_some()
                || self
                    .held
                    .as_ref()
                    .is_some_and(|h| h.pending > 0 || h.unsynced);
            if in_flight {
                return Local::Wait;
            }
            self.route_override = classify::route_setting(text).flatten();
            messages::command_complete(&mut self.cout, "SET");
            let status = match &self.held {
                Some(h) => h.conn.status,
                None if self.deferred_begin.is_some() => b'T',
                None => b'I',
            };
            messages::ready_for_query(&mut self.cout, status);
            return Local::Answered;
        }
        if busy || self.keep_servers {
            return Local::NotMine;
        }
        if self.deferred_begin.is_none() {
            // Not with an idle-in-transaction timeout: the server must see the transaction to enforce it.
            if classify::is_plain_begin(text)
                && !self
                    .settings
                    .is_enabled("idle_in_transaction_session_timeout")
            {
                self.deferred_begin = Some(Frame {
                    tag: b'Q',
                    body: bytes::Bytes::copy_from_slice(&query_body(text)),
                });
                messages::command_complete(&mut self.cout, "BEGIN");
                messages::ready_for_query(&mut self.cout, b'T');
                return Local::Answered;
            }
            return Local::NotMine;
        }
        let Some(tag) = classify::transaction_end(text) else {
            return Local::NotMine;
        };
        self.deferred_begin = None;
        messages::command_complete(&mut self.cout, tag);
        messages::ready_for_query(&mut self.cout, b'I');
        Local::Answered
    }

    /// Remembers the setting changes of a statement about to be sent; a change pgsplit cannot follow keeps the
    /// client on its server connections instead.
    fn note_session_changes(&mut self, text: &str) {
        match crate::sql::session_events(text.as_bytes()) {
            Some(changes) => self.unit_changes.extend(changes),
            None => {
                tracing::debug!(
                    client = self.id,
                    "untracked session change: the client keeps its server connections"
                );
                self.keep_servers = true;
            }
        }
    }

    /// The decision for a message that uses a prepared statement: the statement's, or the primary when unknown.
    fn statement_decision(&self, name: &[u8]) -> Decision {
        self.statements
            .get(name)
            .map_or_else(write_decision, |s| s.decision)
    }

    /// Places a routable frame on a server (acquiring one if needed) and forwards it.
    async fn start_unit(
        &mut self,
        frame: Frame,
        mut decision: Decision,
    ) -> Result<Option<Frame>, End> {
        if let Some(begin) = &self.deferred_begin {
            // The first statement after a deferred BEGIN decides the transaction's server; a BEGIN that says
            // READ WRITE cannot start on a hot standby, whatever follows it.
            let read_write = begin
                .body
                .windows(5)
                .any(|w| w.eq_ignore_ascii_case(b"write"));
            if decision.reason != Reason::ReadOnlyTransaction || read_write {
                decision = Decision {
                    route: Route::Write,
                    reason: Reason::TransactionStart,
                    ..decision
                };
            }
        } else if let Some(route) = self.route_override {
            decision = Decision {
                route,
                reason: Reason::Hint,
                ..decision
            };
        }
        if decision.effects.pins {
            // Session-bound state (temporary tables, cursors, SQL-level prepared statements) lives on the
            // primary connection: the client's reads follow it there from now on.
            self.reads_on_primary = true;
        }
        if self.reads_on_primary && decision.reason != Reason::Hint {
            decision.route = Route::Write;
        }
        if decision.effects.pins && !self.keep_servers {
            tracing::debug!(
                client = self.id,
                "statement pins the client to its server connections"
            );
            self.keep_servers = true;
        }
        match self.placement(decision.route) {
            Placement::Wait => return Ok(Some(frame)),
            Placement::SyncThenWait => {
                if let Some(h) = self.held.as_mut() {
                    messages::empty(&mut self.sout, b'S');
                    h.pending += 1;
                    h.expect.push_back(Expect::SyncHidden);
                    h.unsynced = false;
                }
                return Ok(Some(frame));
            }
            Placement::Held => {
                if let Some(h) = &self.held {
                    self.shared.stats.pinned(destination(h.target));
                }
            }
            Placement::Route => {
                if !self.acquire(decision, frame.tag).await? {
                    return Ok(None);
                }
            }
        }
        if let Some(h) = self.held.as_mut() {
            if let Some(begin) = self.deferred_begin.take() {
                begin.encode(&mut self.sout);
                h.pending += 1;
                h.expect.push_back(Expect::Hidden);
            }
            // What runs here may leave state behind: reset before another client gets the connection, or
            // (LOAD) never give it to another client at all.
            if decision.effects.dirty && matches!(frame.tag, b'Q' | b'B' | b'F') {
                h.conn.needs_reset = true;
            }
            if decision.effects.poisons {
                h.conn.broken = true;
            }
        }
        self.forward_routed(frame, decision)?;
        Ok(None)
    }

    fn placement(&self, route: Route) -> Placement {
        let Some(h) = &self.held else {
            return Placement::Route;
        };
        if h.unsynced {
            // Inside a batch (after a Flush, or before its Sync): a write must still not run on a replica. Outside
            // a transaction block the replica's part can be ended with a Sync and the write sent to the primary.
            return match (h.target, route) {
                (Target::Replica(_), Route::Write) if !h.in_transaction() => {
                    Placement::SyncThenWait
                }
                _ => Placement::Held,
            };
        }
        if h.pending == 0 && h.in_transaction() {
            return Placement::Held;
        }
        match (h.target, route) {
            // A write must not follow reads onto a replica outside a transaction: wait to learn whether the
            // replica's connection ends up idle (then route afresh) or in a transaction (then it stays).
            (Target::Replica(_), Route::Write) => Placement::Wait,
            _ => Placement::Held,
        }
    }

    /// Takes a server for a new unit: a parked one of this session, or one from a pool. Reports failures to the
    /// client; returns false when the unit's frames must be dropped.
    async fn acquire(&mut self, decision: Decision, tag: u8) -> Result<bool, End> {
        tracing::debug!(client = self.id, route = ?decision.route, reason = decision.reason.label(), "routing");
        self.info.set_state(ClientState::Waiting);
        if self.shared.is_paused() {
            self.shared.wait_resumed().await;
        }
        let checked_out = self.checkout(decision.route).await;
        self.info.set_state(if checked_out.is_ok() {
            ClientState::Active
        } else {
            ClientState::Idle
        });
        match checked_out {
            Ok(held) => {
                self.shared
                    .stats
                    .routed(destination(held.target), decision.reason);
                tracing::debug!(client = self.id, server = %self.shared.router.backend(held.target).name, reason = decision.reason.label(), "routed");
                self.held = Some(held);
                Ok(true)
            }
            Err(Checkout::Server(frame)) => {
                frame.encode(&mut self.cout);
                self.after_failed_unit(tag);
                Ok(false)
            }
            Err(Checkout::Failed(e)) => {
                self.queue_error(Severity::Error, e.sqlstate(), &e.to_string());
                self.after_failed_unit(tag);
                Ok(false)
            }
        }
    }

    /// After an error for a unit that never reached a server: end it the way the server would have. After a
    /// BEGIN pgsplit acknowledged, the client is in a transaction, which has now failed.
    fn after_failed_unit(&mut self, tag: u8) {
        let status = if self.deferred_begin.take().is_some() {
            self.aborted = Some(false);
            b'E'
        } else {
            b'I'
        };
        if matches!(tag, b'Q' | b'F') {
            messages::ready_for_query(&mut self.cout, status);
        } else {
            self.skip_to_sync = true;
        }
    }

    /// Refuses a client message with an ERROR, with the protocol's error semantics: the rest of an
    /// extended-protocol batch is skipped up to its Sync, which gets ReadyForQuery; a Query gets ReadyForQuery at
    /// once. With a server held, the server itself fails the unit at this point (a Describe of a statement that
    /// never exists, whose error is replaced with this one): what came before is answered first, and an open
    /// transaction or the batch's implicit one ends as after any error.
    fn refuse(&mut self, tag: u8, code: &'static str, message: String) {
        tracing::debug!(client = self.id, code, %message, "message refused");
        let Some(h) = self.held.as_mut() else {
            self.queue_error(Severity::Error, code, &message);
            self.after_failed_unit(tag);
            return;
        };
        messages::target_message(&mut self.sout, b'D', b'S', NEVER_PREPARED);
        h.expect.push_back(Expect::Refused { code, message });
        h.unsynced = true;
        if tag == b'Q' {
            messages::empty(&mut self.sout, b'S');
            self.note_sent(b'S');
        } else {
            self.skip_to_sync = true;
        }
    }

    /// Whether a Bind or Describe names a statement the client does not hold. Such a name never reaches a server
    /// as it is (it could be another client's statement there), except a SQL-level prepared statement's of a
    /// client that keeps its server connections (not `pgsplit_…`, which are pgsplit's own).
    fn unknown_statement(&self, name: &[u8]) -> bool {
        if self.statements.get(name).is_some() {
            return false;
        }
        let reserved = name
            .get(..statements::RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(statements::RESERVED_PREFIX.as_bytes()));
        name.is_empty() || reserved || !self.keep_servers
    }

    /// Points the cancel slot at the held connection while a unit is in flight there, and clears it as soon as
    /// the server has answered everything (so a late cancel reaches nothing).
    fn sync_cancel(&mut self) {
        let busy = self
            .held
            .as_ref()
            .filter(|h| h.pending > 0 || h.unsynced || h.pass > 0);
        match busy {
            Some(h) if !self.cancel_armed => {
                self.cancel.set(h.conn.address.clone(), h.conn.backend_key);
                self.cancel_armed = true;
            }
            None if self.cancel_armed => {
                self.cancel.clear();
                self.cancel_armed = false;
            }
            _ => {}
        }
    }

    async fn checkout(&mut self, route: Route) -> Result<Box<Held>, Checkout> {
        let router = &self.shared.router;
        let stats = &self.shared.stats;
        let primary_target = || {
            router.primary().map(Target::Primary).map_err(|reason| {
                Checkout::Failed(Error::Unavailable(format!(
                    "no primary to take this statement: {reason}"
                )))
            })
        };
        let read_target = |exclude: Option<usize>| match router.choose_read(exclude) {
            ReadTarget::Replica(i) => Ok(Target::Replica(i)),
            ReadTarget::Primary(why) => {
                stats.primary_read(why);
                primary_target()
            }
            ReadTarget::Refused(message) => {
                stats.refused_read();
                Err(Checkout::Failed(Error::Unavailable(message.to_string())))
            }
        };
        let mut target = match route {
            Route::Write => primary_target()?,
            Route::Read => read_target(None)?,
        };
        // A session that keeps its connections reuses one it holds for the same kind of server.
        let parked = self.parked.iter().position(|h| match (h.target, target) {
            (Target::Primary(a), Target::Primary(b)) => a == b,
            (Target::Replica(a), Target::Replica(_)) => router.servers[a].is_usable(),
            _ => false,
        });
        if let Some(i) = parked {
            let mut held = Box::new(self.parked.swap_remove(i));
            self.sync_params(&mut held).await?;
            return Ok(held);
        }
        let mut tried_replica = false;
        let conn = loop {
            match self.pools.pool(target).checkout().await {
                Ok(c) => {
                    router.backend(target).mark_ok();
                    break c;
                }
                Err(e) => match target {
                    // A replica that cannot be reached is skipped for a while and the read tried once elsewhere;
                    // a busy one (pool wait timeout) is not marked, and the wait is not repeated.
                    Target::Replica(i)
                        if e.retryable() && !matches!(e, Error::PoolTimeout { .. }) =>
                    {
                        tracing::warn!(server = %router.backend(target).name, error = %e, "replica unavailable; trying another server");
                        router.backend(target).mark_failed();
                        if tried_replica {
                            return Err(Checkout::Failed(e));
                        }
                        tried_replica = true;
                        target = read_target(Some(i))?;
                    }
                    _ => {
                        tracing::warn!(server = %router.backend(target).name, error = %e, "server unavailable");
                        return Err(Checkout::Failed(e));
                    }
                },
            }
        };
        let mut held = self.new_held(conn, target);
        self.sync_params(&mut held).await?;
        Ok(held)
    }

    fn new_held(&self, conn: PooledConn, target: Target) -> Box<Held> {
        Box::new(Held {
            _load: Load::new(self.shared.router.backend(target)),
            since: std::time::Instant::now(),
            conn,
            target,
            expect: VecDeque::new(),
            pending: 0,
            unsynced: false,
            pass: 0,
            pending_at_execute: 0,
            unit_error: false,
            txn: TxnLog::default(),
            unit_ended: false,
        })
    }

    /// Applies this client's session parameters to a server connection, resetting what other clients set.
    async fn sync_params(&self, held: &mut Held) -> Result<(), Checkout> {
        let conn: &mut ServerConn = &mut held.conn;
        let Some(sql) = self.settings.sync_sql(conn) else {
            return Ok(());
        };
        tracing::debug!(client = self.id, server = %conn.server, %sql, "applying session settings");
        // Boxed: rare, and its state would otherwise enlarge every client's task.
        match Box::pin(conn.run_internal(&sql)).await {
            Ok(None) => {
                self.settings.synced(conn);
                Ok(())
            }
            Ok(Some(error)) => Err(Checkout::Server(error)),
            Err(e) => Err(Checkout::Failed(e)),
        }
    }

    /// Forwards a routable frame to the held server, rewriting statement names and re-preparing statements the
    /// connection lacks.
    fn forward_routed(&mut self, frame: Frame, decision: Decision) -> Result<(), End> {
        match frame.tag {
            b'P' => {
                let Some(view) = ParseView::decode(&frame.body) else {
                    return Err(self.violation("invalid Parse"));
                };
                let (stmt, created) = self.statements.parse(self.id, &view, &frame.body, decision);
                if stmt.server_name.is_empty() {
                    if let Some(h) = self.held.as_mut() {
                        h.conn.unnamed_owner = Some((self.id, stmt.generation));
                    }
                    self.send_parse(&stmt, false, false);
                } else if created {
                    self.make_room();
                    self.send_parse(&stmt, false, true);
                } else {
                    // A duplicate name: make sure the server has it, then let the server report the duplicate.
                    self.ensure_prepared(&stmt);
                    self.send_parse(&stmt, false, false);
                }
            }
            b'B' => {
                let Some(view) = BindView::decode(&frame.body) else {
                    return Err(self.violation("invalid Bind"));
                };
                match self.statements.get(view.statement).cloned() {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        view.encode_renamed(&mut self.sout, &stmt.server_name);
                        self.note_sent(b'B');
                    }
                    None => self.forward(&frame),
                }
            }
            b'D' | b'C' => {
                let Some((kind, name)) = messages::target(&frame.body) else {
                    return Err(self.violation("invalid Describe or Close"));
                };
                let stmt = if kind == b'S' {
                    self.statements.get(name).cloned()
                } else {
                    None
                };
                match stmt {
                    Some(stmt) if frame.tag == b'D' => {
                        self.ensure_prepared(&stmt);
                        messages::target_message(&mut self.sout, b'D', b'S', &stmt.server_name);
                        self.note_sent(b'D');
                    }
                    // A name the client does not hold never reaches a server as it is: it could be another
                    // client's statement there. Closing a statement that does not exist is no error.
                    None if frame.tag == b'C' && kind == b'S' && self.unknown_statement(name) => {
                        messages::target_message(&mut self.sout, b'C', b'S', NEVER_PREPARED);
                        if let Some(h) = self.held.as_mut() {
                            h.expect.push_back(Expect::Close { swallow: false });
                        }
                        self.note_sent(b'C');
                    }
                    Some(stmt) => {
                        self.statements.close(name);
                        if let Some(h) = self.held.as_mut() {
                            if stmt.server_name.is_empty() {
                                h.conn.unnamed_owner = None;
                            } else {
                                h.conn.prepared.remove(&stmt.server_name);
                            }
                        }
                        messages::target_message(&mut self.sout, b'C', b'S', &stmt.server_name);
                        if let Some(h) = self.held.as_mut() {
                            h.expect.push_back(Expect::Close { swallow: false });
                        }
                        self.note_sent(b'C');
                    }
                    None => self.forward(&frame),
                }
            }
            _ => self.forward(&frame),
        }
        Ok(())
    }

    /// Closes the least recently used statement on the held connection when it is at its cap.
    fn make_room(&mut self) {
        let cap = self.shared.config.pools.prepared_statements_per_server;
        let Some(h) = self.held.as_mut() else { return };
        while h.conn.prepared.len() >= cap {
            let Some(victim) = h.conn.prepared.lru_victim(b"") else {
                break;
            };
            h.conn.prepared.remove(&victim);
            messages::close(&mut self.sout, b'S', &victim);
            h.expect.push_back(Expect::Close { swallow: true });
            h.unsynced = true;
        }
    }

    /// Prepares `stmt` on the held connection first if it is not there (its ParseComplete is swallowed).
    fn ensure_prepared(&mut self, stmt: &Statement) {
        let Some(h) = self.held.as_mut() else { return };
        if stmt.server_name.is_empty() {
            if h.conn.unnamed_owner != Some((self.id, stmt.generation)) {
                h.conn.unnamed_owner = Some((self.id, stmt.generation));
                self.send_parse(stmt, true, false);
            }
        } else if !h.conn.prepared.touch(&stmt.server_name) {
            self.make_room();
            self.send_parse(stmt, true, true);
        }
    }

    fn send_parse(&mut self, stmt: &Statement, swallow: bool, created: bool) {
        let Some(h) = self.held.as_mut() else { return };
        Frame {
            tag: b'P',
            body: stmt.parse.clone(),
        }
        .encode(&mut self.sout);
        if created {
            h.conn.prepared.insert(&stmt.server_name);
        }
        h.expect.push_back(Expect::Parse {
            name: stmt.server_name.clone(),
            swallow,
            created,
        });
        h.unsynced = true;
    }

    /// Forwards a frame unchanged to the held server.
    fn forward(&mut self, frame: &Frame) {
        if frame.tag == b'C' {
            if let Some(h) = self.held.as_mut() {
                h.expect.push_back(Expect::Close { swallow: false });
            }
            frame.encode(&mut self.sout);
            self.note_sent(b'-');
            return;
        }
        frame.encode(&mut self.sout);
        self.note_sent(frame.tag);
    }

    /// Updates the unit bookkeeping for a message sent to the held server.
    fn note_sent(&mut self, tag: u8) {
        let Some(h) = self.held.as_mut() else { return };
        match tag {
            b'S' | b'Q' | b'F' => {
                h.pending += 1;
                h.expect
                    .push_back(Expect::Sync(std::mem::take(&mut self.unit_changes)));
                h.unsynced = false;
                if tag == b'Q' {
                    h.pending_at_execute = h.pending;
                }
            }
            b'E' => {
                h.unsynced = true;
                h.pending_at_execute = h.pending;
            }
            b'c' | b'f' => {
                // The client ends a COPY FROM STDIN: Syncs it sent during the copy were ignored by the server.
                while h.pending > h.pending_at_execute
                    && matches!(h.expect.back(), Some(Expect::Sync(_)))
                {
                    h.expect.pop_back();
                    h.pending -= 1;
                }
            }
            b'd' => {}
            _ => h.unsynced = true,
        }
    }

    /// Relays complete server frames (and the available part of large rows) to the client.
    fn relay_server(&mut self) -> Result<(), End> {
        let Some(h) = self.held.as_mut() else {
            return Ok(());
        };
        let ServerConn {
            rbuf: buf,
            status,
            prepared,
            params,
            applied,
            unnamed_owner,
            settings_fingerprint,
            needs_reset,
            ..
        } = &mut *h.conn;
        let mut pos = 0usize;
        let mut lost: Option<String> = None;
        let mut fatal = false;
        let mut skip_rest = false;
        loop {
            if h.pass > 0 {
                let n = h.pass.min(buf.len() - pos);
                pos += n;
                h.pass -= n;
                if h.pass > 0 {
                    break;
                }
                continue;
            }
            let rest = &buf[pos..];
            if rest.len() < HEADER_LEN {
                break;
            }
            let tag = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len < 4 {
                lost = Some(format!("invalid message length {len}"));
                break;
            }
            let total = len + 1;
            if rest.len() < total {
                if matches!(tag, b'D' | b'd') {
                    // Relay what is here of a large row; the rest passes through as it arrives.
                    h.pass = total - rest.len();
                    pos = buf.len();
                }
                break;
            }
            let mut swallow = false;
            let hidden = matches!(h.expect.front(), Some(Expect::Hidden));
            match tag {
                // Everything answering a statement pgsplit sent on the client's behalf is swallowed.
                _ if hidden => {
                    // An error of pgsplit's own statement reaches the client as its statement's error.
                    swallow = tag != b'E';
                    if tag == b'Z' {
                        *status = rest.get(5).copied().unwrap_or(b'I');
                        h.pending = h.pending.saturating_sub(1);
                        h.expect.pop_front();
                    }
                }
                b'Z' => {
                    *status = rest.get(5).copied().unwrap_or(b'I');
                    h.pending = h.pending.saturating_sub(1);
                    while let Some(e) = h.expect.pop_front() {
                        match e {
                            Expect::Sync(events) => {
                                if !h.unit_error {
                                    h.txn.push(events);
                                } else if *status == b'I' && !h.unit_ended {
                                    // Outside a transaction block an error undoes the whole unit.
                                } else if !events.is_empty() {
                                    h.txn.failed(&events);
                                    *needs_reset = true;
                                }
                                break;
                            }
                            Expect::SyncHidden => {
                                swallow = true;
                                // The reads failed on the replica: as on one server, nothing more runs up to
                                // the client's Sync (the write waiting for the primary included).
                                skip_rest |= h.unit_error;
                                break;
                            }
                            // Not answered before the Sync: failed or skipped after an error. A statement
                            // no server ever prepared does not exist for the client either.
                            Expect::Parse { name, created, .. } => {
                                if created {
                                    prepared.remove(&name);
                                }
                                if name.is_empty() {
                                    *unnamed_owner = None;
                                }
                                self.statements.parse_failed(&name);
                            }
                            _ => {}
                        }
                    }
                    h.unit_error = false;
                    h.unit_ended = false;
                    if *status == b'I' {
                        // Settings changed in a transaction hold only if it committed.
                        match h.txn.finish() {
                            Outcome::Keep(changes) => {
                                for c in &changes {
                                    self.settings.record(c);
                                    Settings::applied_on(applied, c);
                                    *settings_fingerprint = None;
                                }
                            }
                            Outcome::Uncertain => {
                                // Only this connection knows which settings hold: the client keeps it.
                                tracing::debug!(client = self.id, "settings uncertain after a failed unit: the client keeps its server connections");
                                self.keep_servers = true;
                                self.reads_on_primary = true;
                            }
                        }
                    }
                }
                b'1' => match h.expect.pop_front() {
                    Some(Expect::Parse {
                        swallow: s, name, ..
                    }) => {
                        swallow = s;
                        self.statements.confirm(&name);
                    }
                    _ => {
                        lost = Some("unexpected ParseComplete".into());
                        break;
                    }
                },
                b'3' => match h.expect.pop_front() {
                    Some(Expect::Close { swallow: s }) => swallow = s,
                    _ => {
                        lost = Some("unexpected CloseComplete".into());
                        break;
                    }
                },
                b'S' => {
                    if let Some((name, value)) =
                        messages::parameter_status_view(&rest[HEADER_LEN..total])
                    {
                        params.insert(name.to_string(), value.to_string());
                        // The client changed a reported setting it may set: it is now part of its session (and
                        // must be reset before another client uses this connection).
                        if self.settings.reported(name, value) {
                            applied.insert(name.to_ascii_lowercase(), quote_literal(value));
                            *settings_fingerprint = None;
                        }
                        swallow = !self.settings.status_changes(name, value);
                    }
                }
                b'E' if matches!(h.expect.front(), Some(Expect::Refused { .. }))
                    && is_refusal_error(&rest[HEADER_LEN..total]) =>
                {
                    // The server failed the unit where pgsplit refused a message: pgsplit's error takes its place.
                    h.unit_error = true;
                    if let Some(Expect::Refused { code, message }) = h.expect.pop_front() {
                        self.cout.extend_from_slice(&buf[..pos]);
                        buf.advance(pos);
                        pos = 0;
                        self.shared.stats.errors.count(code);
                        messages::error_response(&mut self.cout, Severity::Error, code, &message);
                    }
                    swallow = true;
                }
                b'E' => {
                    h.unit_error = true;
                    let body = &rest[HEADER_LEN..total];
                    self.shared
                        .stats
                        .errors
                        .count(messages::error_field(body, b'C').unwrap_or("XX000"));
                    if matches!(
                        messages::error_field(body, b'S'),
                        Some("FATAL") | Some("PANIC")
                    ) {
                        // The server ends this connection (idle-in-transaction timeout, terminated by an
                        // administrator, shutting down): the client gets the server's own error, then is closed, as
                        // on a direct connection.
                        let detail =
                            messages::error_field(body, b'M').unwrap_or("fatal server error");
                        tracing::info!(client = self.id, detail, "the server ended the connection");
                        pos += total;
                        fatal = true;
                        break;
                    }
                }
                b'C' => {
                    let body = &rest[HEADER_LEN..total];
                    let tag = body.split(|&b| b == 0).next().unwrap_or_default();
                    match tag {
                        // The transaction's outcome is its last COMMIT or ROLLBACK (a ROLLBACK TO SAVEPOINT also
                        // says ROLLBACK, but never ends a transaction: a COMMIT or ROLLBACK follows it).
                        b"COMMIT" => {
                            h.txn.ended(true);
                            h.unit_ended = true;
                        }
                        b"ROLLBACK" => {
                            h.txn.ended(false);
                            h.unit_ended = true;
                        }
                        b"PREPARE TRANSACTION" => {
                            h.txn.unsure();
                            *needs_reset = true;
                        }
                        b"DISCARD ALL" | b"DEALLOCATE ALL" => {
                            prepared.clear();
                            *unnamed_owner = None;
                            self.statements.clear();
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
            if swallow {
                self.cout.extend_from_slice(&buf[..pos]);
                buf.advance(pos + total);
                pos = 0;
            } else {
                pos += total;
            }
        }
        if pos > 0 {
            self.cout.extend_from_slice(&buf[..pos]);
            buf.advance(pos);
        }
        if skip_rest {
            self.skip_to_sync = true;
        }
        if fatal {
            h.conn.broken = true;
            self.held = None;
            self.cancel.clear();
            return Err(End::Fatal);
        }
        match lost {
            Some(detail) => {
                h.conn.broken = true;
                self.server_lost(&detail)
            }
            None => Ok(()),
        }
    }

    /// Returns the held server to its pool (or parks it, when the session keeps its servers) once every unit
    /// sent to it has been answered and it is outside a transaction.
    fn maybe_release(&mut self) {
        let Some(h) = &self.held else { return };
        if h.pending > 0
            || h.unsynced
            || h.pass > 0
            || h.in_transaction()
            || !h.conn.rbuf.is_empty()
        {
            return;
        }
        if !self.sout.is_empty() || (self.listening && matches!(h.target, Target::Primary(_))) {
            return;
        }
        let Some(mut h) = self.held.take() else {
            return;
        };
        self.cancel_armed = false;
        self.shared
            .stats
            .latency
            .record(destination(h.target), h.since.elapsed());
        self.info.set_state(ClientState::Idle);
        if self.keep_servers {
            self.cancel.clear();
            h.since = std::time::Instant::now();
            self.parked.push(*h);
        } else {
            if self.cancel.release() {
                // A cancel forwarded for it may still land: it must not run another client's statement.
                h.conn.broken = true;
            }
            h.conn.release();
        }
    }

    /// The held server failed: drop it and tell the client. Inside a transaction the client cannot go on.
    fn server_lost(&mut self, detail: &str) -> Result<(), End> {
        let Some(h) = self.held.take() else {
            return Ok(());
        };
        self.cancel.clear();
        self.cancel_armed = false;
        self.sout.clear();
        let backend = self.shared.router.backend(h.target).clone();
        let err = Error::server_io(&backend.name, detail);
        tracing::warn!(client = self.id, server = %backend.name, error = %err, "server connection lost");
        if matches!(h.target, Target::Replica(_)) {
            backend.mark_failed();
        }
        let in_transaction = h.in_transaction();
        let (pending, unsynced) = (h.pending, h.unsynced);
        drop(h);
        if in_transaction {
            self.queue_error(
                Severity::Fatal,
                sqlstate::CONNECTION_FAILURE,
                &err.to_string(),
            );
            return Err(End::Fatal);
        }
        self.queue_error(
            Severity::Error,
            sqlstate::CONNECTION_FAILURE,
            &err.to_string(),
        );
        for _ in 0..pending {
            messages::ready_for_query(&mut self.cout, b'I');
        }
        if unsynced {
            self.skip_to_sync = true;
        }
        Ok(())
    }

    /// At the end of the session: give back clean connections, roll back open transactions, close the rest.
    async fn finish(&mut self) {
        let mut all: Vec<Held> = self.parked.drain(..).collect();
        all.extend(self.held.take().map(|h| *h));
        // After a cancel, a late one may still land: such connections are closed, not pooled.
        let cancelled = self.cancel.release();
        for mut h in all {
            if !cancelled && h.pending == 0 && !h.unsynced && h.pass == 0 && h.conn.rbuf.is_empty()
            {
                if h.in_transaction() {
                    let rolled_back = tokio::time::timeout(
                        Duration::from_secs(2),
                        h.conn.run_internal("ROLLBACK"),
                    )
                    .await;
                    if !matches!(rolled_back, Ok(Ok(None))) {
                        continue; // dropped: closed
                    }
                }
                if self.keep_servers {
                    // Session state (prepared statements, temp tables, LISTEN) must not reach another client.
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        h.conn.run_internal("DISCARD ALL"),
                    )
                    .await
                    {
                        Ok(Ok(None)) => {
                            h.conn.needs_reset = false;
                            h.conn.settings_fingerprint = None;
                            h.conn.prepared.clear();
                            h.conn.unnamed_owner = None;
                            h.conn.applied.clear();
                            h.conn
                                .applied
                                .insert("application_name".into(), String::new());
                        }
                        _ => continue,
                    }
                }
                h.conn.release();
            }
        }
        self.cancel.clear();
    }

    async fn flush_client(&mut self) -> std::io::Result<()> {
        if !self.cout.is_empty() {
            self.client.write_all(&self.cout).await?;
            self.cout.clear();
        }
        Ok(())
    }

    fn queue_error(&mut self, severity: Severity, code: &str, message: &str) {
        self.shared.stats.errors.count(code);
        messages::error_response(&mut self.cout, severity, code, message);
    }

    /// A protocol violation by the client: FATAL 08P01, then the session ends.
    fn violation(&mut self, detail: &str) -> End {
        tracing::info!(client = self.id, peer = %self.peer, detail, "protocol violation");
        self.queue_error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, detail);
        End::Fatal
    }
}

/// Why a checkout failed.
enum Checkout {
    /// The server answered a session-setup statement with this ErrorResponse.
    Server(Frame),
    /// No usable connection.
    Failed(Error),
}

impl From<Error> for Checkout {
    fn from(e: Error) -> Self {
        Checkout::Failed(e)
    }
}

/// The whole length of the frame that starts `buf`, when it is not all there yet and its length is acceptable.
fn open_frame(buf: &[u8], max_message: usize) -> Option<usize> {
    let header = buf.get(..HEADER_LEN)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let total = len.checked_add(1)?;
    (len >= 4 && len <= max_message && total > buf.len()).then_some(total)
}

/// The error a SQL text naming a reserved statement gets.
fn reserved_name_message() -> String {
    format!(
        "prepared statement names starting with \"{}\" are reserved for pgsplit",
        statements::RESERVED_PREFIX
    )
}

/// PostgreSQL's error for a statement that does not exist.
fn no_statement_message(name: &[u8]) -> String {
    if name.is_empty() {
        "unnamed prepared statement does not exist".to_string()
    } else {
        format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(name)
        )
    }
}

/// Whether a server ErrorResponse is the one for the Describe of [`NEVER_PREPARED`] pgsplit sent.
fn is_refusal_error(body: &[u8]) -> bool {
    messages::error_field(body, b'C') == Some(sqlstate::INVALID_SQL_STATEMENT_NAME)
        && messages::error_field(body, b'M')
            .is_some_and(|m| std::str::from_utf8(NEVER_PREPARED).is_ok_and(|name| m.contains(name)))
}

/// A Query body (text + NUL).
fn query_body(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 1);
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

fn destination(target: Target) -> Destination {
    match target {
        Target::Primary(_) => Destination::Primary,
        Target::Replica(_) => Destination::Replica,
    }
}

/// For text pgsplit cannot lex in the client's encoding: the primary, and the client keeps its connections, so
/// whatever the text did to its session stays exactly where PostgreSQL put it (and is discarded at the end).
fn unreadable_decision() -> Decision {
    Decision {
        effects: Effects {
            pins: true,
            dirty: true,
            ..Effects::NONE
        },
        ..write_decision()
    }
}

/// The primary, for what pgsplit cannot read (a FunctionCall, an unknown statement); the connection is reset
/// before reuse.
fn write_decision() -> Decision {
    Decision {
        route: Route::Write,
        reason: Reason::WriteStatement,
        effects: Effects {
            dirty: true,
            ..Effects::NONE
        },
    }
}

/// Whether the first word of `sql` (after whitespace and comments) is `word`, case-insensitively.
fn first_word_is(sql: &str, word: &str) -> bool {
    let t = sql.trim_start();
    t.len() >= word.len()
        && t.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
        && t.as_bytes()
            .get(word.len())
            .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
}
