//! Placement and the held server: where a new unit goes (the held server, a wait, or a fresh checkout), taking a
//! server connection and applying the client's settings to it, and giving it back (or parking it) once it has
//! answered everything, or dropping it when it fails.

use std::time::{Duration, Instant};

use super::{End, Session};
use crate::classify::{Decision, Reason, Route};
use crate::client::causal::ReadFloor;
use crate::client::lease::Lease;
use crate::error::Error;
use crate::freshness;
use crate::pool::PooledConn;
use crate::protocol::messages::{self, Severity};
use crate::protocol::{backend, frontend, sqlstate, Frame};
use crate::router::{Load, ReadTarget, Target};
use crate::server::ServerConn;
use crate::stats::{CausalOutcome, ClientState, Destination, PrimaryRead};

/// A server connection the client is using.
pub(super) struct Held {
    /// Counts this unit as in flight on its backend (for the balancer).
    _load: Option<Load>,
    /// When it was checked out (unit latency).
    pub since: Instant,
    pub conn: PooledConn,
    pub target: Target,
    /// What is in flight on it.
    pub lease: Lease,
    /// Bytes of a large server frame still to relay as they come.
    pub pass: usize,
    /// A unit that may have written ran on it (the primary) since the last WAL position query.
    pub wrote: bool,
}

impl Held {
    pub fn in_transaction(&self) -> bool {
        self.conn.status != backend::IDLE
    }

    /// Something sent is unanswered (or a large frame is half relayed).
    pub fn busy(&self) -> bool {
        !self.lease.is_quiet() || self.pass > 0
    }

    /// Nothing is in flight on it and no transaction is open.
    pub fn is_idle(&self) -> bool {
        !self.busy() && !self.in_transaction()
    }
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

/// What placing a unit came to.
pub(super) enum Placed {
    /// A server is held: send the unit there.
    Send,
    /// The unit waits for the held server's answers: the message is stalled.
    Wait,
    /// No server could be had; the client has been told: drop the message.
    Dropped,
    /// A unit that takes a server only if one is free found none: it is answered here.
    Busy,
}

/// Why a checkout failed.
pub(super) enum Checkout {
    /// The server answered a session-setup statement with this ErrorResponse.
    Server(Frame),
    /// No usable connection.
    Failed(Error),
    /// Asked for a connection only if one was free, and none was.
    Busy,
}

impl From<Error> for Checkout {
    fn from(e: Error) -> Self {
        Checkout::Failed(e)
    }
}

impl Session {
    /// Places a unit's routable message: settles its route (deferred BEGIN, `pgsplit.route`, pinned reads) and
    /// makes sure a server is held for it, sending a deferred BEGIN first.
    pub(super) async fn place(&mut self, tag: u8, decision: &mut Decision) -> Result<Placed, End> {
        if self.locks_check_due && self.held.is_none() {
            // Boxed: rare, and its state would otherwise enlarge every client's task.
            Box::pin(self.unpin_if_unlocked()).await;
        }
        self.settle_route(decision);
        let if_free = std::mem::take(&mut self.prepare_if_free);
        match self.placement(decision.route) {
            Placement::Wait => return Ok(Placed::Wait),
            Placement::SyncThenWait => {
                if let Some(h) = self.held.as_mut() {
                    messages::empty(&mut self.sout, frontend::SYNC);
                    h.lease.expect_sync_hidden();
                }
                return Ok(Placed::Wait);
            }
            Placement::Held => {
                if let Some(h) = &self.held {
                    self.shared.stats.pinned(destination(h.target));
                }
            }
            // Boxed: a checkout's state is large; the routing of every message would carry it.
            Placement::Route => match Box::pin(self.acquire(decision, tag, if_free)).await? {
                Placed::Send => {}
                other => return Ok(other),
            },
        }
        if let Some(h) = self.held.as_mut() {
            if let Some(begin) = self.deferred_begin.take() {
                begin.encode(&mut self.sout);
                h.lease.expect_hidden();
            }
            // What runs here may leave state behind: reset before another client gets the connection, or
            // (LOAD) never give it to another client at all.
            let runs = matches!(
                tag,
                frontend::QUERY | frontend::BIND | frontend::FUNCTION_CALL
            );
            if decision.effects.dirty && runs {
                h.conn.needs_reset = true;
            }
            if runs && decision.effects.unlocks && self.pinned_by_locks {
                // Advisory locks released: check for any left before the next unit (see `unpin_if_unlocked`).
                self.locks_check_due = true;
            }
            if decision.effects.poisons {
                h.conn.broken = true;
            }
            // Read-your-writes: the position after this unit is the client's floor (see `maybe_release`). A Parse
            // or Describe of a write runs nothing: only a unit that executes one raises the floor.
            let may_write = runs
                && decision.route == Route::Write
                && !matches!(
                    decision.reason,
                    Reason::SessionState | Reason::TransactionControl
                );
            if may_write && matches!(h.target, Target::Primary(_)) {
                h.wrote = true;
            }
        }
        Ok(Placed::Send)
    }

    /// The route after the session's own rules: a deferred BEGIN's transaction, `SET pgsplit.route`, and reads of
    /// a client whose session-bound state lives on the primary.
    fn settle_route(&mut self, decision: &mut Decision) {
        if let Some(begin) = &self.deferred_begin {
            // The first statement after a deferred BEGIN decides the transaction's server; a BEGIN that says
            // READ WRITE cannot start on a hot standby, whatever follows it.
            let read_write = begin
                .body
                .windows(5)
                .any(|w| w.eq_ignore_ascii_case(b"write"));
            if decision.reason != Reason::ReadOnlyTransaction || read_write {
                decision.route = Route::Write;
                decision.reason = Reason::TransactionStart;
            }
        } else if let Some(route) = self.route_override {
            decision.route = route;
            decision.reason = Reason::Hint;
        }
        // Session-bound state (temporary tables, cursors, SQL-level prepared statements, advisory locks) lives
        // on the primary connection: the client's reads follow it there while it is pinned.
        self.note_pins(decision);
        // A hot standby refuses SERIALIZABLE transactions, the client's default ones included.
        let serializable = decision.route == Route::Read && self.settings.serializable_by_default();
        if (self.reads_on_primary || serializable) && decision.reason != Reason::Hint {
            decision.route = Route::Write;
        }
    }

    fn placement(&self, route: Route) -> Placement {
        let Some(h) = &self.held else {
            return Placement::Route;
        };
        if h.lease.unsynced() {
            // Inside a batch (after a Flush, or before its Sync): a write must still not run on a replica. Outside
            // a transaction block the replica's part can be ended with a Sync and the write sent to the primary.
            return match (h.target, route) {
                (Target::Replica(_), Route::Write) if !h.in_transaction() => {
                    Placement::SyncThenWait
                }
                _ => Placement::Held,
            };
        }
        if h.lease.pending() == 0 && h.in_transaction() {
            return Placement::Held;
        }
        match (h.target, route) {
            // A write must not follow reads onto a replica outside a transaction: wait to learn whether the
            // replica's connection ends up idle (then route afresh) or in a transaction (then it stays).
            (Target::Replica(_), Route::Write) => Placement::Wait,
            _ => Placement::Held,
        }
    }

    /// Takes a server for a new unit: a parked one of this session, or one from a pool (`if_free`: only one free
    /// right now). Reports failures to the client.
    async fn acquire(
        &mut self,
        decision: &Decision,
        tag: u8,
        if_free: bool,
    ) -> Result<Placed, End> {
        self.info.set_state(ClientState::Waiting);
        if self.shared.is_paused() {
            self.shared.wait_resumed().await;
        }
        let checked_out = self.checkout(decision.route, if_free).await;
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
                // The one routing line per unit routed (units that follow a held server are not routed again):
                // where it runs and why.
                tracing::debug!(
                    client = self.id,
                    server = %held.conn.server,
                    route = match decision.route {
                        Route::Read => "read",
                        Route::Write => "write",
                    },
                    reason = decision.reason.label(),
                    "routed"
                );
                self.held = Some(held);
                Ok(Placed::Send)
            }
            Err(Checkout::Busy) => Ok(Placed::Busy),
            Err(Checkout::Server(frame)) => {
                frame.encode(&mut self.cout);
                self.after_failed_unit(tag);
                Ok(Placed::Dropped)
            }
            Err(Checkout::Failed(e)) => {
                self.queue_error(Severity::Error, e.sqlstate(), &e.to_string());
                self.after_failed_unit(tag);
                Ok(Placed::Dropped)
            }
        }
    }

    /// After an error for a unit that never reached a server: end it the way the server would have. After a
    /// BEGIN pgsplit acknowledged, the client is in a transaction, which has now failed.
    pub(super) fn after_failed_unit(&mut self, tag: u8) {
        let status = if self.deferred_begin.take().is_some() {
            self.aborted = Some(false);
            backend::FAILED_TRANSACTION
        } else {
            backend::IDLE
        };
        if matches!(tag, frontend::QUERY | frontend::FUNCTION_CALL) {
            messages::ready_for_query(&mut self.cout, status);
        } else {
            self.skip_to_sync = true;
        }
    }

    /// A server for `route`: a parked one of this session for the same kind of server, or one from the pool of
    /// the balancer's choice (a replica that cannot be reached is skipped and the read tried once elsewhere).
    /// `if_free`: only a connection free right now, never a wait in the pool's queue ([`Checkout::Busy`]).
    pub(super) async fn checkout(
        &mut self,
        route: Route,
        if_free: bool,
    ) -> Result<Box<Held>, Checkout> {
        let floor = match route {
            Route::Write => 0,
            Route::Read => self.read_floor().await,
        };
        let mut target = match route {
            Route::Write => self.primary_target().await?,
            Route::Read => self.read_target(None, floor).await?,
        };
        // A session that keeps its connections reuses one it holds for the same kind of server (a replica only
        // if it is known to be at the read's floor).
        let router = &self.shared.router;
        let parked = self.parked.iter().position(|h| match (h.target, target) {
            (Target::Primary(a), Target::Primary(b)) => a == b,
            (Target::Replica(a), Target::Replica(_)) => router
                .servers
                .get(a)
                .is_some_and(|b| b.is_usable() && b.position() >= floor),
            _ => false,
        });
        if let Some(i) = parked {
            let mut held = Box::new(self.parked.swap_remove(i));
            self.sync_params(&mut held).await?;
            return Ok(held);
        }
        let (mut tried_replica, mut retried_primary) = (false, false);
        let conn = loop {
            let (Some(pool), Some(backend)) = (self.pools.pool(target), router.backend(target))
            else {
                let lost = format!("server {} is not configured", target.index());
                return Err(Checkout::Failed(Error::Unavailable(lost)));
            };
            let taken = if if_free {
                match pool.try_checkout().await {
                    Some(taken) => taken,
                    None => return Err(Checkout::Busy),
                }
            } else {
                pool.checkout().await
            };
            match taken {
                Ok(c) => {
                    backend.mark_ok();
                    break c;
                }
                Err(e) => match target {
                    // A replica that cannot be reached is skipped for a while and the read tried once elsewhere;
                    // a busy one (pool wait timeout) is not marked, and the wait is not repeated.
                    Target::Replica(i)
                        if e.retryable() && !matches!(e, Error::PoolTimeout { .. }) =>
                    {
                        tracing::warn!(server = %backend.name, error = %e, "replica unavailable; trying another server");
                        backend.mark_failed();
                        if tried_replica {
                            return Err(Checkout::Failed(e));
                        }
                        tried_replica = true;
                        target = self.read_target(Some(i), floor).await?;
                    }
                    // Nothing was sent: the primary may have just died; wait for the monitor's verdict.
                    Target::Primary(i) if e.may_mean_server_down() && !retried_primary => {
                        retried_primary = true;
                        target = self.primary_after_failure(i, e).await?;
                    }
                    _ => {
                        tracing::warn!(server = %backend.name, error = %e, "server unavailable");
                        return Err(Checkout::Failed(e));
                    }
                },
            }
        };
        let mut held = self.new_held(conn, target);
        self.sync_params(&mut held).await?;
        Ok(held)
    }

    /// The WAL position a read must see (0: any), per the client's consistency mode; `strict` asks the primary
    /// (coalesced with other reads asking at the same time).
    async fn read_floor(&mut self) -> u64 {
        let statement_floor = std::mem::take(&mut self.statement_floor);
        self.settle_floor().await;
        let floor = match self.causal.read_floor(&self.shared.router, statement_floor) {
            ReadFloor::Any => 0,
            ReadFloor::At(lsn) => lsn,
            ReadFloor::PrimaryNow => self.primary_now().await.max(statement_floor),
        };
        // `/* pgsplit:max_lag=… */`: a replica at most that far behind has replayed where the primary was that
        // long ago (a probe's sample taken since then is at or past it).
        match self.statement_max_lag.take() {
            Some(max_lag) => {
                let since = std::time::Instant::now().checked_sub(max_lag);
                let then = since.and_then(|t| self.shared.monitor.primary_position_since(t));
                let bound = match then {
                    Some(lsn) => lsn,
                    None => self.primary_now().await,
                };
                floor.max(bound)
            }
            None => floor,
        }
    }

    /// Brings the session's floor up to date: past its last commit (the primary's position read by a check sent
    /// after it), and capped when it is above what the primary has written since it was set (a failover).
    pub(super) async fn settle_floor(&mut self) {
        let router = &self.shared.router;
        let wait = self.shared.config_now().lag.probe_timeout;
        if let Some(committed) = self.causal.unsettled_write() {
            match freshness::primary_position_since(router, committed, wait).await {
                Some(lsn) => self.causal.settle(lsn),
                // Without the primary's position no replica can be shown to have the write: the primary serves
                // the client's reads until a check succeeds.
                None => return,
            }
        }
        if let Some(raised) = self.causal.floor_to_confirm(router) {
            // A floor above the primary's known position (a token, or writes lost in a failover): read the
            // primary's position once to tell which.
            let _ = freshness::primary_position_since(router, raised, wait).await;
        }
    }

    /// The primary's position now; without it no replica can be shown to be fresh (the primary serves the read).
    async fn primary_now(&self) -> u64 {
        let wait = self.shared.config_now().lag.probe_timeout;
        freshness::primary_position_since(&self.shared.router, std::time::Instant::now(), wait)
            .await
            .unwrap_or(u64::MAX)
    }

    /// A server for a read that must see `floor`: a replica known to be there, one that gets there within
    /// `causal_wait`, or the primary.
    async fn read_target(&self, exclude: Option<usize>, floor: u64) -> Result<Target, Checkout> {
        let router = &self.shared.router;
        let stats = &self.shared.stats;
        let asked = std::time::Instant::now();
        let mut choice = router.choose_read_from(exclude, floor);
        if floor > 0 && floor != u64::MAX && choice != ReadTarget::Behind {
            freshness::refresh_behind(router, floor);
        }
        let mut waited = false;
        if choice == ReadTarget::Behind && floor != u64::MAX {
            let wait = self.shared.config_now().routing.causal_wait;
            choice = freshness::wait_for_replica(router, exclude, floor, wait).await;
            waited = true;
        }
        match choice {
            ReadTarget::Replica(i) => {
                if floor > 0 {
                    let outcome = if waited {
                        CausalOutcome::Waited
                    } else {
                        CausalOutcome::CaughtUp
                    };
                    stats.causal.record(outcome, asked.elapsed());
                }
                Ok(Target::Replica(i))
            }
            ReadTarget::Behind => {
                stats.causal.record(CausalOutcome::Primary, asked.elapsed());
                stats.primary_read(PrimaryRead::NotCaughtUp);
                self.primary_target().await
            }
            ReadTarget::Primary(why) => {
                stats.primary_read(why);
                self.primary_target().await
            }
            ReadTarget::Refused(message) => {
                stats.refused_read();
                Err(Checkout::Failed(Error::Unavailable(message.to_string())))
            }
        }
    }

    pub(super) fn new_held(&self, conn: PooledConn, target: Target) -> Box<Held> {
        Box::new(Held {
            _load: self.shared.router.backend(target).map(|b| Load::new(&b)),
            since: Instant::now(),
            conn,
            target,
            lease: Lease::default(),
            pass: 0,
            wrote: false,
        })
    }

    /// Applies this client's session parameters to a server connection, resetting what other clients set.
    pub(super) async fn sync_params(&self, held: &mut Held) -> Result<(), Checkout> {
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

    /// Points the cancel slot at the held connection while a unit is in flight there, and clears it as soon as
    /// the server has answered everything (so a late cancel reaches nothing).
    pub(super) fn sync_cancel(&mut self) {
        let busy = self.held.as_ref().filter(|h| h.busy());
        match busy {
            Some(h) if !self.cancel_armed => {
                self.cancel.set(
                    h.conn.address.clone(),
                    h.conn.backend_key,
                    h.conn.tls.clone(),
                );
                self.cancel_armed = true;
            }
            None if self.cancel_armed => {
                self.cancel.clear();
                self.cancel_armed = false;
            }
            _ => {}
        }
    }

    /// Returns the held server to its pool (or parks it, when the session keeps its servers) once every unit
    /// sent to it has been answered and it is outside a transaction.
    pub(super) fn maybe_release(&mut self) {
        let Some(h) = &self.held else { return };
        if !h.is_idle() || !h.conn.rbuf.is_empty() || !self.sout.is_empty() {
            return;
        }
        if self.listening && matches!(h.target, Target::Primary(_)) {
            return;
        }
        let Some(mut h) = self.held.take() else {
            return;
        };
        if std::mem::take(&mut h.wrote) && self.causal.learns_floor() {
            // The client's writes are committed: its next read must see the primary's position read from now on.
            // A check starts now, shared with every client that committed meanwhile, so the read usually finds
            // it done (off the client's path).
            self.causal.wrote();
            freshness::request_primary_check(&self.shared.router);
        }
        self.cancel_armed = false;
        self.shared
            .stats
            .latency
            .record(destination(h.target), h.since.elapsed());
        self.info.set_state(ClientState::Idle);
        if self.keep_servers {
            self.cancel.clear();
            h.since = Instant::now();
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
    pub(super) fn server_lost(&mut self, detail: &str) -> Result<(), End> {
        let Some(h) = self.held.take() else {
            return Ok(());
        };
        self.cancel.clear();
        self.cancel_armed = false;
        self.sout.clear();
        let err = Error::server_io(&h.conn.server, detail);
        tracing::warn!(client = self.id, server = %h.conn.server, error = %err, "server connection lost");
        match (h.target, self.shared.router.backend(h.target)) {
            (Target::Replica(_), Some(b)) => b.mark_failed(),
            // The primary's other idle connections are likely dead too (it crashed): the next unit opens a new
            // one, and a refused connection waits for the monitor's verdict instead of failing mid-unit.
            (Target::Primary(i), _) => self.shared.close_idle_of(i),
            _ => {}
        }
        let in_transaction = h.in_transaction();
        let (pending, unsynced) = (h.lease.pending(), h.lease.unsynced());
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
            messages::ready_for_query(&mut self.cout, backend::IDLE);
        }
        if unsynced {
            self.skip_to_sync = true;
        }
        Ok(())
    }

    /// At the end of the session: give back clean connections, roll back open transactions, close the rest.
    pub(super) async fn finish(&mut self) {
        let mut all: Vec<Held> = self.parked.drain(..).collect();
        all.extend(self.held.take().map(|h| *h));
        // After a cancel, a late one may still land: such connections are closed, not pooled.
        let cancelled = self.cancel.release();
        for mut h in all {
            if cancelled || h.busy() || !h.conn.rbuf.is_empty() {
                continue; // dropped: closed
            }
            if h.in_transaction() && !run_quietly(&mut h.conn, "ROLLBACK").await {
                continue;
            }
            if self.keep_servers {
                // Session state (prepared statements, temp tables, LISTEN) must not reach another client.
                if !run_quietly(&mut h.conn, "DISCARD ALL").await {
                    continue;
                }
                // The connection is as new: nothing of this client's settings or statements is left on it.
                let conn: &mut ServerConn = &mut h.conn;
                conn.needs_reset = false;
                conn.settings_fingerprint = None;
                conn.prepared.clear();
                conn.unnamed_owner = None;
                conn.applied.clear();
                conn.applied
                    .insert("application_name".into(), String::new());
            }
            h.conn.release();
        }
        self.cancel.clear();
    }
}

/// Runs a statement of pgsplit's own on a connection at the session's end; whether it succeeded in time.
async fn run_quietly(conn: &mut ServerConn, sql: &str) -> bool {
    let ran = tokio::time::timeout(Duration::from_secs(2), conn.run_internal(sql)).await;
    matches!(ran, Ok(Ok(None)))
}

pub(super) fn destination(target: Target) -> Destination {
    match target {
        Target::Primary(_) => Destination::Primary,
        Target::Replica(_) => Destination::Replica,
    }
}
