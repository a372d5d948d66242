//! The per-message pipeline: decode → answer locally? → classify → place → rewrite and send. Each client message
//! is decoded once ([`Decoded`]) and the view is passed along.

use bytes::Bytes;

use super::checkout::Placed;
use super::local::Local;
use super::{End, Session};
use crate::classify::{self, Decision, Reason, Route};
use crate::client::statements;
use crate::protocol::frontend::{self, Bind, Decoded, Message, Parse, Target};
use crate::protocol::messages::{self, Severity};
use crate::protocol::{backend, sqlstate, Frame};
use crate::sql::Effects;

/// What the first steps made of a message.
enum Step {
    /// Answered or refused here, or forwarded to the server already holding its unit.
    Done,
    /// It has to wait for the held server's answers.
    Wait,
    /// For a server: where it may run.
    Route(Decision),
}

impl Session {
    /// Routes and forwards every complete client message it can.
    pub(super) async fn dispatch(&mut self) -> Result<(), End> {
        while let Some(msg) = self.next_message()? {
            let mut decision = match self.first_steps(&msg).await? {
                Step::Done => continue,
                Step::Wait => {
                    self.stalled = Some(Box::new(msg));
                    return Ok(());
                }
                Step::Route(decision) => decision,
            };
            // A prepared statement keeps the classifier's decision: what `place` makes of it (a transaction's
            // first statement, `SET pgsplit.route`, reads of a pinned client) holds for this unit only.
            let classified = decision;
            match self.place(msg.frame.tag, &mut decision).await? {
                Placed::Send => self.send_routed(msg, classified),
                Placed::Dropped => {}
                Placed::Busy => self.prepare_here(&msg, classified),
                Placed::Wait => {
                    self.stalled = Some(Box::new(msg));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The next message to route: a stalled one, else the next whole frame, decoded. Messages skipped after an
    /// error, answered in a failed transaction, or over the batch limit are dealt with here.
    fn next_message(&mut self) -> Result<Option<Decoded>, End> {
        loop {
            let msg = match self.stalled.take() {
                Some(msg) => *msg,
                None => {
                    let frame = match Frame::split(&mut self.crbuf, self.max_message) {
                        Ok(Some(f)) => f,
                        Ok(None) => return Ok(None),
                        Err(e) => return Err(self.violation(&e.to_string())),
                    };
                    if self.skip_to_sync {
                        self.skip(&frame);
                        continue;
                    }
                    let msg = Decoded::decode(frame).map_err(|e| self.violation(&e.to_string()))?;
                    if self.aborted.is_none() && self.over_batch_limit(&msg) {
                        continue;
                    }
                    msg
                }
            };
            if self.skip_to_sync {
                self.skip(&msg.frame);
            } else if self.aborted.is_some() {
                self.in_aborted_transaction(msg)?;
            } else {
                return Ok(Some(msg));
            }
        }
    }

    /// Skips a message of a batch that failed; its Sync ends the skipping.
    fn skip(&mut self, frame: &Frame) {
        if frame.tag != frontend::SYNC {
            return;
        }
        self.skip_to_sync = false;
        self.batch_messages = 0;
        if self.held.as_ref().is_some_and(|h| h.lease.unsynced()) {
            // The server failed the batch where pgsplit refused a message: its Sync ends it there.
            self.forward(frame);
        } else {
            let status = if self.aborted.is_some() {
                backend::FAILED_TRANSACTION
            } else {
                backend::IDLE
            };
            messages::ready_for_query(&mut self.cout, status);
        }
    }

    /// Counts extended-protocol messages up to Sync; refuses the batch past `limits.max_batch_messages`.
    fn over_batch_limit(&mut self, msg: &Decoded) -> bool {
        match msg.message {
            Message::Parse(_)
            | Message::Bind(_)
            | Message::Describe(_)
            | Message::Execute
            | Message::Close(_) => self.batch_messages += 1,
            Message::Sync | Message::Query { .. } => self.batch_messages = 0,
            _ => return false,
        }
        let cap = self.shared.config_now().limits.max_batch_messages;
        if self.batch_messages <= cap {
            return false;
        }
        self.refuse(
            msg.frame.tag,
            sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
            format!(
                "too many messages before Sync: a batch may hold at most {cap} Parse, Bind, Describe, Execute and \
                 Close messages (limits.max_batch_messages); the rest of this batch is skipped"
            ),
        );
        true
    }

    /// Answers locally what pgsplit answers, refuses what it must, and classifies the rest.
    async fn first_steps(&mut self, msg: &Decoded) -> Result<Step, End> {
        let held = self.held.is_some();
        let step = match &msg.message {
            Message::Query { text } => self.query_step(text).await,
            Message::Parse(parse) => self.parse_step(parse).await,
            Message::Bind(bind) => self.bind_step(bind),
            Message::Describe(target) | Message::Close(target) => self.target_step(msg, target),
            // Execute follows its portal's Bind.
            Message::Execute if held => self.forwarded(&msg.frame),
            Message::Execute | Message::FunctionCall => Step::Route(write_decision()),
            Message::Sync if !held => {
                let status = if self.deferred_begin.is_some() {
                    backend::IN_TRANSACTION
                } else {
                    backend::IDLE
                };
                messages::ready_for_query(&mut self.cout, status);
                Step::Done
            }
            Message::Sync
            | Message::Flush
            | Message::CopyData
            | Message::CopyDone
            | Message::CopyFail => {
                if held {
                    self.forward(&msg.frame);
                }
                Step::Done
            }
            Message::Terminate => return Err(End::ClientGone),
            Message::Password => {
                return Err(self.violation("unexpected password message after authentication"))
            }
        };
        Ok(step)
    }

    /// Forwards a message to the held server as it is.
    fn forwarded(&mut self, frame: &Frame) -> Step {
        self.forward(frame);
        Step::Done
    }

    async fn query_step(&mut self, bytes: &Bytes) -> Step {
        // Text in another client encoding is read as UTF-8 with stand-ins for what does not decode: keywords and
        // punctuation are ASCII in every encoding PostgreSQL allows, except a few multi-byte ones whose second
        // bytes can look like ASCII (see `unsafe_bytes`).
        let text = String::from_utf8_lossy(bytes);
        match self.answer_locally(&text).await {
            Local::Answered => return Step::Done,
            // `SET pgsplit.route` behind replies still in flight: answer it in order, once they are in.
            Local::Wait => return Step::Wait,
            Local::NotMine => {}
        }
        if let Some(name) = statements::deallocated_name(&text) {
            if !name.is_empty() && self.statements.get(&name).is_some() {
                return self.deallocate(&name);
            }
        }
        self.note_statement_hints(&text);
        if statements::names_reserved_statement(&text) {
            self.refuse(
                frontend::QUERY,
                sqlstate::RESERVED_NAME,
                reserved_name_message(),
            );
            return Step::Done;
        }
        let decision = if self.unsafe_bytes(bytes) {
            unreadable_decision()
        } else {
            self.classify(&text).await
        };
        if decision.effects.listens {
            self.listening = true;
        }
        if decision.effects.session {
            self.note_session_changes(&text);
        }
        Step::Route(decision)
    }

    async fn parse_step(&mut self, parse: &Parse) -> Step {
        let text = String::from_utf8_lossy(&parse.query);
        self.note_statement_hints(&text);
        if statements::names_reserved_statement(&text) {
            self.refuse(
                frontend::PARSE,
                sqlstate::RESERVED_NAME,
                reserved_name_message(),
            );
            return Step::Done;
        }
        let named = !parse.name.is_empty();
        let cap = self
            .shared
            .config_now()
            .limits
            .max_prepared_statements_per_client;
        if named && self.statements.get(&parse.name).is_none() && self.statements.named_len() >= cap
        {
            let message = format!(
                "too many prepared statements: this client already holds {cap} named statements, the most \
                 limits.max_prepared_statements_per_client allows; close some before preparing \"{}\"",
                String::from_utf8_lossy(&parse.name)
            );
            self.refuse(
                frontend::PARSE,
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                message,
            );
            return Step::Done;
        }
        let decision = if self.unsafe_bytes(&parse.query) {
            unreadable_decision()
        } else {
            self.classify(&text).await
        };
        let existing = self.statements.get(&parse.name).filter(|_| named);
        // The name's own Parse is unanswered: whether it exists depends on that answer. A Flush makes the server
        // send it now; this Parse waits for it.
        let in_flight = existing.is_some_and(|e| {
            !e.confirmed
                && self
                    .held
                    .as_ref()
                    .is_some_and(|h| h.lease.parse_in_flight(&e.server_name))
        });
        if in_flight {
            if !std::mem::replace(&mut self.flushed_for_parse, true) {
                messages::empty(&mut self.sout, frontend::FLUSH);
            }
            return Step::Wait;
        }
        self.flushed_for_parse = false;
        if existing.is_some() {
            // As PostgreSQL says it, with the client's name (never pgsplit's).
            let message = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(&parse.name)
            );
            self.refuse(
                frontend::PARSE,
                sqlstate::DUPLICATE_PREPARED_STATEMENT,
                message,
            );
            return Step::Done;
        }
        // Parse + Sync outside a transaction (libpq's PQprepare) goes to a server only if a connection is free
        // right now; otherwise it is recorded and answered here, and prepared on whichever server a later Bind
        // goes to. A synchronous client that prepares while its other connections hold the pool's slots (pgbench
        // prepares on one thread for all its clients) must never wait for one: it would wait for itself. A text
        // the server rejects then fails at that Bind, and the name is forgotten.
        self.prepare_if_free = self.held.is_none()
            && self.deferred_begin.is_none()
            && !decision.effects.holds_session()
            && named
            && self.crbuf.starts_with(&[frontend::SYNC, 0, 0, 0, 4]);
        Step::Route(decision)
    }

    /// `DEALLOCATE name` of a statement the client prepared with the protocol (PostgreSQL lets SQL deallocate
    /// those; pdo_pgsql does it for every statement it destroys). Servers know the statement by pgsplit's name,
    /// so it is answered here, in order once the replies in flight are in: the statement is forgotten as after a
    /// Close (copies on server connections go as their caches evict them), or, in a failed transaction, 25P02.
    fn deallocate(&mut self, name: &[u8]) -> Step {
        if self.held.as_ref().is_some_and(|h| h.lease.unsynced()) {
            // Inside a batch not yet synced no answer comes before its Sync: the server answers in order.
            self.deallocate_on_server(name);
            return Step::Done;
        }
        if self.held.as_ref().is_some_and(|h| !h.lease.is_quiet()) {
            return Step::Wait;
        }
        let status = match &self.held {
            Some(h) => h.conn.status,
            None if self.deferred_begin.is_some() => backend::IN_TRANSACTION,
            None => backend::IDLE,
        };
        if status == backend::FAILED_TRANSACTION {
            self.failed_transaction_error();
        } else {
            self.statements.close(name);
            messages::command_complete(&mut self.cout, "DEALLOCATE");
        }
        messages::ready_for_query(&mut self.cout, status);
        Step::Done
    }

    /// `DEALLOCATE` of the statement under pgsplit's name on the held connection, when it is prepared there. Else
    /// of a name no server statement has (26000): the client's own name could be another client's statement on
    /// a shared connection.
    fn deallocate_on_server(&mut self, name: &[u8]) {
        let server_name = self.statements.get(name).map(|s| s.server_name.clone());
        let Some(h) = self.held.as_mut() else { return };
        let prepared = server_name.filter(|n| !n.is_empty() && h.conn.prepared.touch(n));
        let target = match prepared {
            Some(server_name) => {
                h.conn.prepared.remove(&server_name);
                self.statements.close(name);
                server_name
            }
            None => Bytes::from_static(statements::NEVER_PREPARED),
        };
        // pgsplit's names hold no quote.
        let body = format!("DEALLOCATE \"{}\"\0", String::from_utf8_lossy(&target));
        self.forward(&Frame {
            tag: frontend::QUERY,
            body: Bytes::from(body),
        });
    }

    /// A standalone prepare that found no free connection: recorded and answered here (see `parse_step`).
    fn prepare_here(&mut self, msg: &Decoded, decision: Decision) {
        if let Message::Parse(parse) = &msg.message {
            self.statements
                .parse(self.id, parse, &msg.frame.body, decision);
            messages::empty(&mut self.cout, backend::PARSE_COMPLETE);
        }
    }

    fn bind_step(&mut self, bind: &Bind) -> Step {
        if self.unknown_statement(&bind.statement) {
            let message = no_statement_message(&bind.statement);
            self.refuse(
                frontend::BIND,
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                message,
            );
            return Step::Done;
        }
        let decision = self.statement_decision(&bind.statement);
        let hints = self
            .statements
            .get(&bind.statement)
            .and_then(|s| s.query_text())
            .map(|text| crate::sql::leading_hints(text).0)
            .unwrap_or_default();
        self.set_statement_hints(hints);
        if decision.effects.session {
            let statement = self.statements.get(&bind.statement);
            let parse = statement.and_then(|s| frontend::ParseView::decode(&s.parse));
            if let Some(parse) = parse {
                let text = String::from_utf8_lossy(parse.query).into_owned();
                let param = |n: usize| {
                    let declared = frontend::declared_param_type(parse.param_types, n);
                    let binary_is_text = matches!(declared, TEXT_OID | VARCHAR_OID);
                    frontend::bind_text_param(&bind.params, n, binary_is_text)
                        .flatten()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_string)
                };
                let events = crate::sql::session_events_bound(text.as_bytes(), &param);
                self.note_session_events(events);
            }
        }
        Step::Route(decision)
    }

    fn target_step(&mut self, msg: &Decoded, target: &Target) -> Step {
        let close = matches!(msg.message, Message::Close(_));
        match target {
            Target::Statement(name) if !close && self.unknown_statement(name) => {
                let message = no_statement_message(name);
                self.refuse(
                    frontend::DESCRIBE,
                    sqlstate::INVALID_SQL_STATEMENT_NAME,
                    message,
                );
                Step::Done
            }
            // Nothing is open on any server outside a held connection: answer locally.
            _ if close && self.held.is_none() => {
                if let Target::Statement(name) = target {
                    self.statements.close(name);
                }
                messages::empty(&mut self.cout, backend::CLOSE_COMPLETE);
                Step::Done
            }
            // A portal lives on the server that bound it.
            Target::Portal(_) if self.held.is_some() => self.forwarded(&msg.frame),
            Target::Statement(name) => Step::Route(self.statement_decision(name)),
            Target::Portal(_) => Step::Route(write_decision()),
        }
    }

    /// Answers a client whose transaction failed before it reached a server (no server could be had after a
    /// BEGIN pgsplit had acknowledged): as PostgreSQL answers in a failed transaction, everything but its end
    /// gets 25P02, and COMMIT or ROLLBACK (simple or extended) ends it with ROLLBACK.
    fn in_aborted_transaction(&mut self, msg: Decoded) -> Result<(), End> {
        let ends = |text: &[u8]| {
            std::str::from_utf8(text)
                .ok()
                .and_then(crate::sql::transaction_end)
                .is_some()
        };
        let answering_end = self.aborted == Some(true);
        match &msg.message {
            Message::Query { text } if ends(text) => {
                self.aborted = None;
                messages::command_complete(&mut self.cout, "ROLLBACK");
                messages::ready_for_query(&mut self.cout, backend::IDLE);
            }
            Message::Query { .. } | Message::FunctionCall => {
                self.failed_transaction_error();
                messages::ready_for_query(&mut self.cout, backend::FAILED_TRANSACTION);
            }
            Message::Parse(parse) if ends(&parse.query) => {
                self.aborted = Some(true);
                messages::empty(&mut self.cout, backend::PARSE_COMPLETE);
            }
            Message::Bind(_) if answering_end => {
                messages::empty(&mut self.cout, backend::BIND_COMPLETE)
            }
            Message::Describe(_) if answering_end => {
                messages::empty(&mut self.cout, backend::NO_DATA)
            }
            Message::Execute if answering_end => {
                self.aborted = None;
                messages::command_complete(&mut self.cout, "ROLLBACK");
            }
            Message::Sync => messages::ready_for_query(&mut self.cout, backend::FAILED_TRANSACTION),
            Message::Close(_) => messages::empty(&mut self.cout, backend::CLOSE_COMPLETE),
            Message::Flush => {}
            Message::Terminate => return Err(End::ClientGone),
            Message::Parse(_) | Message::Bind(_) | Message::Describe(_) | Message::Execute => {
                self.failed_transaction_error();
                self.skip_to_sync = true;
            }
            Message::CopyData | Message::CopyDone | Message::CopyFail | Message::Password => {
                let tag = msg.frame.tag;
                return Err(self.violation(&format!("invalid frontend message type {tag}")));
            }
        }
        Ok(())
    }

    fn failed_transaction_error(&mut self) {
        self.queue_error(
            Severity::Error,
            sqlstate::IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        );
    }

    /// Refuses a client message with an ERROR, with the protocol's error semantics: the rest of an
    /// extended-protocol batch is skipped up to its Sync, which gets ReadyForQuery; a Query gets ReadyForQuery at
    /// once. With a server held, the server itself fails the unit at this point (a Describe of a statement that
    /// never exists, whose error is replaced with this one): what came before is answered first, and an open
    /// transaction or the batch's implicit one ends as after any error.
    pub(super) fn refuse(&mut self, tag: u8, code: &'static str, message: String) {
        tracing::debug!(client = self.id, code, %message, "message refused");
        let Some(h) = self.held.as_mut() else {
            self.queue_error(Severity::Error, code, &message);
            self.after_failed_unit(tag);
            return;
        };
        messages::target_message(
            &mut self.sout,
            frontend::DESCRIBE,
            frontend::KIND_STATEMENT,
            statements::NEVER_PREPARED,
        );
        h.lease.expect_refused(code, message);
        if tag == frontend::QUERY {
            messages::empty(&mut self.sout, frontend::SYNC);
            h.lease.sent(frontend::SYNC, &mut self.unit_changes);
        } else {
            self.skip_to_sync = true;
        }
    }

    /// Whether a Bind or Describe names a statement the client does not hold. Such a name never reaches a server
    /// as it is (it could be another client's statement there), except a SQL-level prepared statement's of a
    /// client that keeps its server connections (not `pgsplit_…`, which are pgsplit's own).
    pub(super) fn unknown_statement(&self, name: &[u8]) -> bool {
        if self.statements.get(name).is_some() {
            return false;
        }
        let reserved = name
            .get(..statements::RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(statements::RESERVED_PREFIX.as_bytes()));
        name.is_empty() || reserved || !self.keep_servers
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
                .unwrap_or_else(|_| unreadable_decision())
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

    /// Remembers the setting changes of a statement about to be sent; a change pgsplit cannot follow keeps the
    /// client on its server connections instead.
    fn note_session_changes(&mut self, text: &str) {
        self.note_session_events(crate::sql::session_events(text.as_bytes()));
    }

    fn note_session_events(&mut self, events: Option<Vec<crate::sql::SessionEvent>>) {
        match events {
            Some(changes) => self.unit_changes.extend(changes),
            None => {
                tracing::debug!(
                    client = self.id,
                    "untracked session change: the client keeps its server connections"
                );
                self.pin_for_good(false);
            }
        }
    }

    /// `/* pgsplit:min_lsn=… */` and `/* pgsplit:max_lag=… */` for the statement about to be routed.
    fn note_statement_hints(&mut self, text: &str) {
        self.set_statement_hints(crate::sql::leading_hints(text).0);
    }

    fn set_statement_hints(&mut self, hints: crate::sql::StatementHints) {
        self.statement_floor = hints.min_lsn.map_or(0, |lsn| lsn.0);
        self.statement_max_lag = hints.max_lag;
    }

    /// The decision for a message that uses a prepared statement: the statement's, or the primary when unknown.
    fn statement_decision(&self, name: &[u8]) -> Decision {
        self.statements
            .get(name)
            .map_or_else(write_decision, |s| s.decision)
    }
}

/// Types whose binary form is their text: a Bind parameter declared so can be read as text in either format.
const TEXT_OID: u32 = 25;
const VARCHAR_OID: u32 = 1043;

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
