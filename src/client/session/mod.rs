//! The message loop of one authenticated client.
//!
//! Client frames are routed per unit of work (a simple Query, or an extended-protocol batch up to Sync): the
//! first routable message decides the server, the unit's frames follow it, and in transaction pooling the server
//! connection goes back to its pool when every forwarded unit has been answered with ReadyForQuery `I`.
//! Server frames are relayed as raw bytes; only their headers are read, except the few messages bookkeeping
//! needs (ReadyForQuery, ParseComplete/CloseComplete of statements pgsplit injected, ParameterStatus, errors).
//!
//! One step per file: [`greeting`] (the login's last messages), [`dispatch`] (decode → answer locally? →
//! classify → place → rewrite → send), [`local`] (what pgsplit answers itself), [`checkout`] (placement, the held
//! server, release), [`rewrite`] (statement names and re-preparing), [`relay`] (server to client).

mod checkout;
mod dispatch;
mod failover;
mod greeting;
mod idle;
mod local;
mod pin;
mod relay;
mod rewrite;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use self::checkout::Held;
use self::idle::{Due, IdleClock};
use super::causal::Causal;
use super::settings::Settings;
use super::statements::Statements;
use crate::cancel::CancelSlot;
use crate::classify::Route;
use crate::config::PoolMode;
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::frontend::Decoded;
use crate::protocol::messages::{self, Severity};
use crate::protocol::{sqlstate, Frame};
use crate::router::PoolSet;
use crate::server::ServerConn;
use crate::sql::SessionEvent;
use crate::state::Shared;
use crate::stats::ClientInfo;
use crate::tls::Transport;

/// Stop reading from one side while this much is waiting to be written to the other.
const BUFFER_LIMIT: usize = 256 * 1024;
/// Room made in the client read buffer before a read.
const READ_CHUNK: usize = 16 * 1024;

/// Why the session ended.
#[derive(Debug)]
pub enum End {
    /// Terminate, or the client closed its socket.
    ClientGone,
    /// pgsplit sent a FATAL error and closes.
    Fatal,
}

/// What happened while waiting.
enum Event {
    ClientReadable(std::io::Result<()>),
    ClientWritable(std::io::Result<()>),
    /// The idle timer: time to check the idle timeout and buffer release.
    Timer,
    ServerReadable(std::io::Result<()>),
    ServerWritable(std::io::Result<()>),
    Shutdown,
    Progress,
}

/// One client's session.
pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    /// What the admin console shows of this client.
    info: Arc<ClientInfo>,
    client: Transport,
    peer: SocketAddr,
    /// Bytes read from the client, not yet dispatched.
    crbuf: BytesMut,
    /// Bytes for the client.
    cout: BytesMut,
    /// Bytes for the held server.
    sout: BytesMut,
    pools: Arc<PoolSet>,
    key: (i32, i32),
    cancel: Arc<CancelSlot>,
    /// Boxed: an idle client then carries a pointer, not the whole record.
    held: Option<Box<Held>>,
    /// Server connections a session that keeps its servers holds between units.
    parked: Vec<Held>,
    /// Session pooling, or session state pgsplit cannot move between connections: keep the servers.
    keep_servers: bool,
    /// The client ran LISTEN: it keeps its primary connection held so notifications reach it while idle.
    listening: bool,
    /// The client created session-bound state on the primary: its reads go there too.
    reads_on_primary: bool,
    /// The servers are kept only because the client took session advisory locks: once it holds none, it is
    /// free again.
    pinned_by_locks: bool,
    /// A unit released advisory locks since the servers were last checked for any left.
    locks_check_due: bool,
    statements: Statements,
    /// A plain BEGIN answered locally: sent with the transaction's first statement, which picks its server.
    deferred_begin: Option<Frame>,
    /// `SET pgsplit.route`: every unit goes to the primary (`Write`) or a replica (`Read`).
    route_override: Option<Route>,
    /// Read-your-writes: the consistency mode and the floor.
    causal: Causal,
    /// `/* pgsplit:min_lsn=… */` of the statement being routed.
    statement_floor: u64,
    /// `/* pgsplit:max_lag=… */` of the statement being routed.
    statement_max_lag: Option<Duration>,
    /// Session settings carried to every server connection.
    settings: Settings,
    /// Setting and savepoint events of the unit being sent, recorded once the server accepts them.
    unit_changes: Vec<SessionEvent>,
    /// A message waiting for the held server (see `checkout::Placement::Wait`).
    stalled: Option<Box<Decoded>>,
    /// After an error in an extended-protocol batch: the client's messages are skipped up to its Sync.
    skip_to_sync: bool,
    /// A Flush was sent to learn whether a pipelined Parse of the same name succeeded.
    flushed_for_parse: bool,
    /// The unit being placed is a standalone prepare: it takes a server connection only if one is free now.
    prepare_if_free: bool,
    /// The client's transaction failed before any server took it (see `dispatch::in_aborted_transaction`);
    /// `Some(true)` while an extended-protocol COMMIT/ROLLBACK is being answered.
    aborted: Option<bool>,
    /// Extended-protocol messages since the last Sync (`limits.max_batch_messages`).
    batch_messages: usize,
    /// The cancel slot points at the held connection (a unit is in flight there).
    cancel_armed: bool,
    stop: watch::Receiver<bool>,
    max_message: usize,
    /// The idle timeout and buffer release.
    idle: IdleClock,
}

impl Session {
    /// A session for an authenticated client.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        client: Transport,
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
        let info = Arc::new(ClientInfo::new(id, user, database, peer));
        shared.stats.clients.add(info.clone());
        let config = shared.config();
        let keep_servers = config.pool_mode == PoolMode::Session;
        let max_message = config.max_message_bytes;
        let shared_idle = config.timeouts.client_idle;
        let causal_mode = config.routing.consistency;
        Session {
            id,
            info,
            shared,
            client,
            peer,
            crbuf,
            cout: BytesMut::new(),
            sout: BytesMut::new(),
            pools,
            key,
            cancel,
            held: None,
            parked: Vec::new(),
            keep_servers,
            listening: false,
            reads_on_primary: false,
            pinned_by_locks: false,
            locks_check_due: false,
            statements: Statements::default(),
            deferred_begin: None,
            route_override: None,
            causal: Causal::new(causal_mode, 0),
            statement_floor: 0,
            statement_max_lag: None,
            settings: Settings::from_startup(&startup),
            unit_changes: Vec::new(),
            stalled: None,
            skip_to_sync: false,
            aborted: None,
            flushed_for_parse: false,
            prepare_if_free: false,
            batch_messages: 0,
            cancel_armed: false,
            stop,
            max_message,
            idle: IdleClock::new(shared_idle),
        }
    }

    /// Greets the client and serves it until it leaves.
    pub async fn run(&mut self) {
        tracing::debug!(client = self.id, peer = %self.peer, user = %self.info.user, db = %self.info.database, "client connected");
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

    /// Between units of work: nothing in flight for this client.
    fn is_idle(&self) -> bool {
        self.stalled.is_none() && self.held.as_ref().is_none_or(|h| h.is_idle())
    }

    /// The message loop: route what the client sent, then wait for the next I/O event and handle it.
    async fn serve(&mut self) -> End {
        loop {
            // Give back a server that has answered everything before routing what waits.
            self.maybe_release();
            self.sync_cancel();
            // Boxed, and only when there is something to route: its state would otherwise be part of every
            // client's task, also while it waits.
            let routable = self.stalled.is_some() || self.crbuf.len() >= HEADER_LEN;
            if routable {
                if let Err(end) = Box::pin(self.dispatch()).await {
                    return end;
                }
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
                self.idle.touch();
            }
            let handled = match event {
                Event::ClientReadable(r) => r
                    .map_err(|_| End::ClientGone)
                    .and_then(|()| self.read_client()),
                Event::ClientWritable(r) => r
                    .map_err(|_| End::ClientGone)
                    .and_then(|()| self.write_client()),
                Event::Timer => self.on_timer(),
                Event::ServerReadable(Ok(())) => self.read_server(),
                Event::ServerWritable(Ok(())) => self.write_server(),
                Event::Shutdown | Event::Progress => Ok(()),
                Event::ServerReadable(Err(e)) | Event::ServerWritable(Err(e)) => {
                    self.server_lost(&e.to_string())
                }
            };
            if let Err(end) = handled {
                return end;
            }
        }
    }

    /// Reads what the client sent: room for the rest of a large frame at once, else a chunk.
    fn read_client(&mut self) -> Result<(), End> {
        let want = match open_frame(&self.crbuf, self.max_message) {
            Some(total) => total.saturating_sub(self.crbuf.len()).max(READ_CHUNK),
            None => READ_CHUNK,
        };
        let room = self.crbuf.capacity() - self.crbuf.len();
        if room < want.min(READ_CHUNK) / 2 || (want > READ_CHUNK && room < want) {
            self.crbuf.reserve(want);
        }
        match self.client.read_available(&mut self.crbuf) {
            Ok(0) => Err(End::ClientGone),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(End::ClientGone),
        }
    }

    /// Writes what waits for the client.
    fn write_client(&mut self) -> Result<(), End> {
        match self.client.try_write(&self.cout) {
            Ok(n) => {
                self.cout.advance(n);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(End::ClientGone),
        }
    }

    /// Writes what waits for the held server.
    fn write_server(&mut self) -> Result<(), End> {
        let Some(h) = self.held.as_mut() else {
            return Ok(());
        };
        match h.conn.stream.try_write(&self.sout) {
            Ok(n) => {
                self.sout.advance(n);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => self.server_lost(&e.to_string()),
        }
    }

    /// Reads what the held server sent and relays it.
    fn read_server(&mut self) -> Result<(), End> {
        let Some(h) = self.held.as_mut() else {
            return Ok(());
        };
        let ServerConn { stream, rbuf, .. } = &mut *h.conn;
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            rbuf.reserve(READ_CHUNK);
        }
        match stream.read_available(rbuf) {
            Ok(0) => self.server_lost("the server closed the connection"),
            Ok(_) => self.relay_server(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => self.server_lost(&e.to_string()),
        }
    }

    /// The idle timer fired: closes a client idle past `timeouts.client_idle`, gives back the buffers of one
    /// idle for a while (an idle client then costs a few hundred bytes).
    fn on_timer(&mut self) -> Result<(), End> {
        match self.idle.fired(self.is_idle()) {
            Due::Close => {
                self.queue_error(
                    Severity::Fatal,
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to idle timeout (timeouts.client_idle)",
                );
                return Err(End::Fatal);
            }
            Due::Shrink => {
                for buf in [&mut self.crbuf, &mut self.cout, &mut self.sout] {
                    if buf.is_empty() {
                        *buf = BytesMut::new();
                    }
                }
            }
            Due::Nothing => {}
        }
        Ok(())
    }

    /// Waits for the next I/O event on either side.
    async fn wait(&mut self) -> Event {
        let between_units = self.is_idle();
        // Buffers are released after a while idle; readiness first, so an idle client holds none.
        let holds_buffers = self.crbuf.capacity() + self.cout.capacity() + self.sout.capacity() > 0;
        let shrink_due = between_units && holds_buffers && self.cout.is_empty();
        let timer_needed = self.idle.arm(between_units, shrink_due);
        let Session {
            client,
            crbuf,
            cout,
            sout,
            held,
            stop,
            stalled,
            idle,
            ..
        } = self;
        // Unless a frame is stalled, `crbuf` holds at most the start of one frame (dispatch took the complete
        // ones): it must be read to its end whatever its size (up to `max_message_bytes`). While a frame waits for
        // the held server, what the client pipelines behind it is still read, up to the buffer limit, so a client
        // that goes away is noticed at once.
        let read_client =
            (stalled.is_none() || crbuf.len() < BUFFER_LIMIT) && sout.len() < BUFFER_LIMIT;
        let server = held.as_ref().map(|h| &h.conn.stream);
        let server_writes = server.is_some_and(|s| !sout.is_empty() || s.wants_write());
        let client: &Transport = client;
        let client_writes = !cout.is_empty() || client.wants_write();
        let server_reads = cout.len() < BUFFER_LIMIT;
        let watch_stop = between_units && !*stop.borrow();
        // Polled by hand rather than `select!`: readiness lives in the sockets' own waker slots, so a waiting
        // client's task keeps no futures for them (this wait is where an idle client sits, and its task is
        // as large as its largest wait).
        let mut stopped = std::pin::pin!(stop.changed());
        std::future::poll_fn(|cx| {
            if client_writes {
                if let Poll::Ready(r) = client.poll_writable(cx) {
                    return Poll::Ready(Event::ClientWritable(r));
                }
            }
            if let Some(s) = server {
                if server_reads {
                    if let Poll::Ready(r) = s.poll_readable(cx) {
                        return Poll::Ready(Event::ServerReadable(r));
                    }
                }
                if server_writes {
                    if let Poll::Ready(r) = s.poll_writable(cx) {
                        return Poll::Ready(Event::ServerWritable(r));
                    }
                }
            }
            if read_client {
                if let Poll::Ready(r) = client.poll_readable(cx) {
                    return Poll::Ready(Event::ClientReadable(r));
                }
            }
            if watch_stop && stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Shutdown);
            }
            if timer_needed && idle.poll_timer(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            let waits = client_writes
                || (server.is_some() && (server_reads || server_writes))
                || read_client
                || watch_stop
                || timer_needed;
            if waits {
                Poll::Pending
            } else {
                // Nothing to wait for (a stalled unit whose server was just released): route it now.
                Poll::Ready(Event::Progress)
            }
        })
        .await
    }

    async fn flush_client(&mut self) -> std::io::Result<()> {
        if !self.cout.is_empty() {
            self.client.write_all(&self.cout).await?;
            self.cout.clear();
        }
        self.client.flush().await
    }

    /// Queues an ErrorResponse for the client and counts it.
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

/// The whole length of the frame that starts `buf`, when it is not all there yet and its length is acceptable.
fn open_frame(buf: &[u8], max_message: usize) -> Option<usize> {
    let header = buf.get(..HEADER_LEN)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let total = len.checked_add(1)?;
    (len >= 4 && len <= max_message && total > buf.len()).then_some(total)
}
