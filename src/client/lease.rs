//! The bookkeeping of a held server connection, without I/O: what pgsplit sent on it and what each server reply
//! therefore means. The session tells the lease what it sends ([`Lease::sent`], `expect_*`); the relay hands it
//! each complete server message ([`Lease::received`]) and applies the [`Received`] it answers. Unit-tested on its
//! own, below.

use std::collections::VecDeque;

use bytes::Bytes;

use super::settings::{Outcome, TxnLog};
use super::statements::NEVER_PREPARED;
use crate::protocol::backend;
use crate::protocol::frontend;
use crate::protocol::messages;
use crate::protocol::sqlstate;
use crate::sql::SessionEvent;

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

/// The units in flight on a held server connection.
#[derive(Debug, Default)]
pub(super) struct Lease {
    expect: VecDeque<Expect>,
    /// Syncs and Queries forwarded and not yet answered by ReadyForQuery.
    pending: usize,
    /// Extended-protocol messages were forwarded after the last Sync.
    unsynced: bool,
    /// An ErrorResponse arrived since the last ReadyForQuery.
    unit_error: bool,
    /// Setting changes of the current transaction, kept until it ends.
    txn: TxnLog,
    /// A COMMIT or ROLLBACK command tag arrived since the last ReadyForQuery.
    unit_ended: bool,
    /// Syncs forwarded since the last Execute or Query: if that started a COPY FROM STDIN, the server ignores
    /// them (they get no ReadyForQuery) until the client ends the copy.
    syncs_since_execute: usize,
    /// The last statement started was an extended-protocol Execute (not a simple Query).
    executed: bool,
}

/// What a server message means, for the relay to apply.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Received<'a> {
    /// Pass it to the client.
    Relay,
    /// Drop it: it answers a message pgsplit sent itself.
    Swallow,
    /// ReadyForQuery: a unit (or a statement pgsplit sent) is answered.
    Ready(Ready),
    /// ParseComplete of the statement pgsplit knows as `name`.
    Parsed { name: Bytes, swallow: bool },
    /// The server's error for a message pgsplit refused: the client gets this error instead.
    Refused { code: &'static str, message: String },
    /// An ErrorResponse for the client; `fatal` when the server ends the connection with it.
    Error {
        code: &'a str,
        fatal: bool,
        message: &'a str,
    },
    /// A ParameterStatus: the session decides whether the client sees it.
    Parameter { name: &'a str, value: &'a str },
    /// DISCARD ALL or DEALLOCATE ALL completed: every prepared statement on the connection is gone.
    Discarded,
    /// PREPARE TRANSACTION completed: what the transaction set is unknown, the connection must be reset.
    Unsure,
    /// A reply nothing pgsplit sent asks for: the connection is out of step.
    Unexpected(&'static str),
}

/// A ReadyForQuery, read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Ready {
    /// The transaction status it reports.
    pub status: u8,
    /// It answers pgsplit's own Sync or statement: the client does not see it.
    pub swallow: bool,
    /// The replica's part of a batch failed: skip the client's messages up to its Sync.
    pub skip_rest: bool,
    /// Settings changed in a failed part of an open transaction: reset the connection before reuse.
    pub needs_reset: bool,
    /// Parses the server never answered (failed or skipped): `(server name, created)`.
    pub unanswered: Vec<(Bytes, bool)>,
    /// Outside a transaction again: what becomes of the settings its units changed.
    pub outcome: Option<Outcome>,
}

impl Lease {
    /// Nothing in flight: every Sync and Query answered, no extended-protocol message after the last Sync.
    pub(super) fn is_quiet(&self) -> bool {
        self.pending == 0 && !self.unsynced
    }

    /// Syncs and Queries not yet answered.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Extended-protocol messages were sent after the last Sync.
    pub(super) fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// An error arrived in the unit being answered.
    #[cfg(test)]
    fn unit_failed(&self) -> bool {
        self.unit_error
    }

    /// A client message forwarded (`tag` from [`frontend`]); a unit's end takes the unit's session events.
    pub(super) fn sent(&mut self, tag: u8, unit_events: &mut Vec<SessionEvent>) {
        match tag {
            frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL => {
                self.pending += 1;
                self.expect
                    .push_back(Expect::Sync(std::mem::take(unit_events)));
                self.unsynced = false;
                self.syncs_since_execute = match tag {
                    frontend::SYNC => self.syncs_since_execute + 1,
                    _ => 0,
                };
                if tag == frontend::QUERY {
                    self.executed = false;
                }
            }
            frontend::EXECUTE => {
                self.unsynced = true;
                self.syncs_since_execute = 0;
                self.executed = true;
            }
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                // The client ends a COPY FROM STDIN: Syncs it sent during the copy were ignored by the server.
                while self.syncs_since_execute > 0
                    && matches!(self.expect.back(), Some(Expect::Sync(_)))
                {
                    self.expect.pop_back();
                    self.pending -= 1;
                    self.syncs_since_execute -= 1;
                }
                self.syncs_since_execute = 0;
                // A copy started by Execute is answered only once the client's next Sync arrives.
                if self.executed {
                    self.unsynced = true;
                }
            }
            frontend::COPY_DATA => {}
            _ => self.unsynced = true,
        }
    }

    /// A Parse sent: `swallow` when pgsplit injected it, `created` when it makes a new server statement.
    pub(super) fn expect_parse(&mut self, name: Bytes, swallow: bool, created: bool) {
        self.expect.push_back(Expect::Parse {
            name,
            swallow,
            created,
        });
        self.unsynced = true;
    }

    /// A Close sent: `swallow` when pgsplit injected it.
    pub(super) fn expect_close(&mut self, swallow: bool) {
        self.expect.push_back(Expect::Close { swallow });
        self.unsynced = true;
    }

    /// A simple Query pgsplit sent for the client (a deferred BEGIN): its replies are swallowed.
    pub(super) fn expect_hidden(&mut self) {
        self.pending += 1;
        self.expect.push_back(Expect::Hidden);
    }

    /// A Sync pgsplit sent to end the replica's part of a batch: its ReadyForQuery is swallowed.
    pub(super) fn expect_sync_hidden(&mut self) {
        self.pending += 1;
        self.expect.push_back(Expect::SyncHidden);
        self.unsynced = false;
    }

    /// A Describe of [`NEVER_PREPARED`] sent in place of a refused client message: its error becomes this one.
    pub(super) fn expect_refused(&mut self, code: &'static str, message: String) {
        self.expect.push_back(Expect::Refused { code, message });
        self.unsynced = true;
    }

    /// Whether a Parse of `server_name` is unanswered, so its outcome is still to come: until the unit's Sync
    /// if it is in this batch and nothing failed yet (after an error the server skips it, answering nothing).
    pub(super) fn parse_in_flight(&self, server_name: &[u8]) -> bool {
        let at = self
            .expect
            .iter()
            .position(|x| matches!(x, Expect::Parse { name, .. } if name == server_name));
        at.is_some_and(|at| {
            let synced = self
                .expect
                .iter()
                .skip(at)
                .any(|x| matches!(x, Expect::Sync(_) | Expect::SyncHidden));
            synced || !self.unit_error
        })
    }

    /// Reads one complete server message (`tag` from [`backend`], `body` after the length word).
    pub(super) fn received<'a>(&mut self, tag: u8, body: &'a [u8]) -> Received<'a> {
        if matches!(self.expect.front(), Some(Expect::Hidden)) {
            // Everything answering a statement pgsplit sent on the client's behalf is swallowed; an error of it
            // reaches the client as its statement's error.
            return match tag {
                backend::READY_FOR_QUERY => {
                    self.pending = self.pending.saturating_sub(1);
                    self.expect.pop_front();
                    Received::Ready(Ready {
                        status: status_of(body),
                        swallow: true,
                        ..Ready::default()
                    })
                }
                backend::ERROR_RESPONSE => Received::Relay,
                _ => Received::Swallow,
            };
        }
        match tag {
            backend::READY_FOR_QUERY => Received::Ready(self.ready(status_of(body))),
            backend::PARSE_COMPLETE => match self.expect.pop_front() {
                Some(Expect::Parse { swallow, name, .. }) => Received::Parsed { name, swallow },
                _ => Received::Unexpected("unexpected ParseComplete"),
            },
            backend::CLOSE_COMPLETE => match self.expect.pop_front() {
                Some(Expect::Close { swallow: true }) => Received::Swallow,
                Some(Expect::Close { swallow: false }) => Received::Relay,
                _ => Received::Unexpected("unexpected CloseComplete"),
            },
            backend::PARAMETER_STATUS => match messages::parameter_status_view(body) {
                Some((name, value)) => Received::Parameter { name, value },
                None => Received::Relay,
            },
            backend::ERROR_RESPONSE => {
                self.unit_error = true;
                if matches!(self.expect.front(), Some(Expect::Refused { .. })) && is_refusal(body) {
                    if let Some(Expect::Refused { code, message }) = self.expect.pop_front() {
                        return Received::Refused { code, message };
                    }
                }
                let field = |f| messages::error_field(body, f);
                Received::Error {
                    code: field(backend::FIELD_CODE).unwrap_or("XX000"),
                    fatal: matches!(field(backend::FIELD_SEVERITY), Some("FATAL" | "PANIC")),
                    message: field(backend::FIELD_MESSAGE).unwrap_or("fatal server error"),
                }
            }
            backend::COMMAND_COMPLETE => {
                let command = body.split(|&b| b == 0).next().unwrap_or_default();
                match command {
                    // The transaction's outcome is its last COMMIT or ROLLBACK (a ROLLBACK TO SAVEPOINT also
                    // says ROLLBACK, but never ends a transaction: a COMMIT or ROLLBACK follows it).
                    b"COMMIT" | b"ROLLBACK" => {
                        self.txn.ended(command == b"COMMIT");
                        self.unit_ended = true;
                        Received::Relay
                    }
                    b"PREPARE TRANSACTION" => {
                        self.txn.unsure();
                        Received::Unsure
                    }
                    b"DISCARD ALL" | b"DEALLOCATE ALL" => Received::Discarded,
                    _ => Received::Relay,
                }
            }
            _ => Received::Relay,
        }
    }

    /// A ReadyForQuery for a client unit (or pgsplit's hidden Sync): settles what the unit expected.
    fn ready(&mut self, status: u8) -> Ready {
        let mut ready = Ready {
            status,
            ..Ready::default()
        };
        self.pending = self.pending.saturating_sub(1);
        while let Some(e) = self.expect.pop_front() {
            match e {
                Expect::Sync(events) => {
                    if !self.unit_error {
                        self.txn.push(events);
                    } else if status == backend::IDLE && !self.unit_ended {
                        // Outside a transaction block an error undoes the whole unit.
                    } else if !events.is_empty() {
                        self.txn.failed(&events);
                        ready.needs_reset = true;
                    }
                    break;
                }
                Expect::SyncHidden => {
                    ready.swallow = true;
                    // The reads failed on the replica: as on one server, nothing more runs up to the client's
                    // Sync (the write waiting for the primary included).
                    ready.skip_rest = self.unit_error;
                    break;
                }
                // Not answered before the Sync: failed or skipped after an error.
                Expect::Parse { name, created, .. } => ready.unanswered.push((name, created)),
                _ => {}
            }
        }
        self.unit_error = false;
        self.unit_ended = false;
        if status == backend::IDLE {
            // Settings changed in a transaction hold only if it committed.
            ready.outcome = Some(self.txn.finish());
        }
        ready
    }
}

/// The status byte of a ReadyForQuery body.
fn status_of(body: &[u8]) -> u8 {
    body.first().copied().unwrap_or(backend::IDLE)
}

/// Whether a server ErrorResponse is the one for the Describe of [`NEVER_PREPARED`] pgsplit sent.
fn is_refusal(body: &[u8]) -> bool {
    messages::error_field(body, backend::FIELD_CODE) == Some(sqlstate::INVALID_SQL_STATEMENT_NAME)
        && messages::error_field(body, backend::FIELD_MESSAGE)
            .is_some_and(|m| std::str::from_utf8(NEVER_PREPARED).is_ok_and(|name| m.contains(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::Severity;
    use crate::sql::SessionChange;
    use bytes::BytesMut;

    fn error(code: &str, message: &str, severity: Severity) -> Vec<u8> {
        let mut out = BytesMut::new();
        messages::error_response(&mut out, severity, code, message);
        out[5..].to_vec()
    }

    fn send(lease: &mut Lease, tag: u8) {
        lease.sent(tag, &mut Vec::new());
    }

    fn ready(lease: &mut Lease, status: u8) -> Ready {
        match lease.received(backend::READY_FOR_QUERY, &[status]) {
            Received::Ready(r) => r,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    fn set(name: &str, value: &str) -> SessionEvent {
        SessionEvent::Change(SessionChange::Set {
            name: name.into(),
            value: value.into(),
        })
    }

    #[test]
    fn a_batch_is_in_flight_until_its_ready_for_query() {
        let mut lease = Lease::default();
        assert!(lease.is_quiet());
        lease.expect_parse(Bytes::new(), false, false);
        send(&mut lease, frontend::BIND);
        send(&mut lease, frontend::EXECUTE);
        assert!(!lease.is_quiet() && lease.unsynced());
        send(&mut lease, frontend::SYNC);
        assert_eq!((lease.pending(), lease.unsynced()), (1, false));
        assert_eq!(
            lease.received(backend::PARSE_COMPLETE, b""),
            Received::Parsed {
                name: Bytes::new(),
                swallow: false
            }
        );
        assert_eq!(lease.received(backend::BIND_COMPLETE, b""), Received::Relay);
        let r = ready(&mut lease, backend::IDLE);
        assert!(!r.swallow && r.unanswered.is_empty());
        assert!(matches!(r.outcome, Some(Outcome::Keep(ref c)) if c.is_empty()));
        assert!(lease.is_quiet());
    }

    #[test]
    fn injected_parses_and_closes_are_swallowed_and_strays_are_unexpected() {
        let mut lease = Lease::default();
        lease.expect_close(true);
        lease.expect_parse(Bytes::from_static(b"pgsplit_1_1"), true, true);
        assert_eq!(
            lease.received(backend::CLOSE_COMPLETE, b""),
            Received::Swallow
        );
        assert_eq!(
            lease.received(backend::PARSE_COMPLETE, b""),
            Received::Parsed {
                name: Bytes::from_static(b"pgsplit_1_1"),
                swallow: true
            }
        );
        assert_eq!(
            lease.received(backend::PARSE_COMPLETE, b""),
            Received::Unexpected("unexpected ParseComplete")
        );
        assert_eq!(
            lease.received(backend::CLOSE_COMPLETE, b""),
            Received::Unexpected("unexpected CloseComplete")
        );
    }

    #[test]
    fn parses_skipped_after_an_error_are_reported_unanswered() {
        let mut lease = Lease::default();
        lease.expect_parse(Bytes::from_static(b"a"), false, true);
        lease.expect_parse(Bytes::from_static(b"b"), false, true);
        send(&mut lease, frontend::SYNC);
        assert!(lease.parse_in_flight(b"a"));
        let body = error("42601", "syntax error", Severity::Error);
        assert!(matches!(
            lease.received(backend::ERROR_RESPONSE, &body),
            Received::Error {
                code: "42601",
                fatal: false,
                ..
            }
        ));
        assert!(lease.unit_failed());
        let r = ready(&mut lease, backend::IDLE);
        assert_eq!(
            r.unanswered,
            vec![
                (Bytes::from_static(b"a"), true),
                (Bytes::from_static(b"b"), true)
            ]
        );
        assert!(!lease.unit_failed());
    }

    #[test]
    fn a_parse_in_a_failed_unsynced_batch_is_not_awaited() {
        let mut lease = Lease::default();
        lease.expect_parse(Bytes::from_static(b"a"), false, true);
        assert!(lease.parse_in_flight(b"a"));
        let body = error("42601", "syntax error", Severity::Error);
        lease.received(backend::ERROR_RESPONSE, &body);
        assert!(!lease.parse_in_flight(b"a"));
        assert!(!lease.parse_in_flight(b"other"));
    }

    #[test]
    fn a_hidden_statement_is_swallowed_except_its_error() {
        let mut lease = Lease::default();
        lease.expect_hidden();
        send(&mut lease, frontend::QUERY);
        assert_eq!(lease.pending(), 2);
        assert_eq!(
            lease.received(backend::COMMAND_COMPLETE, b"BEGIN\0"),
            Received::Swallow
        );
        let body = error("25001", "boom", Severity::Error);
        assert_eq!(
            lease.received(backend::ERROR_RESPONSE, &body),
            Received::Relay
        );
        let r = ready(&mut lease, backend::IN_TRANSACTION);
        assert!(r.swallow && r.outcome.is_none());
        assert_eq!(
            lease.received(backend::COMMAND_COMPLETE, b"SELECT 1\0"),
            Received::Relay
        );
        let r = ready(&mut lease, backend::IN_TRANSACTION);
        assert!(!r.swallow);
        assert_eq!(lease.pending(), 0);
    }

    #[test]
    fn settings_of_a_committed_transaction_are_kept_and_of_a_rolled_back_one_dropped() {
        for (end, kept) in [(&b"COMMIT\0"[..], true), (&b"ROLLBACK\0"[..], false)] {
            let mut lease = Lease::default();
            lease.sent(frontend::QUERY, &mut vec![set("search_path", "a")]);
            ready(&mut lease, backend::IN_TRANSACTION);
            send(&mut lease, frontend::QUERY);
            assert_eq!(
                lease.received(backend::COMMAND_COMPLETE, end),
                Received::Relay
            );
            let r = ready(&mut lease, backend::IDLE);
            match r.outcome {
                Some(Outcome::Keep(changes)) => assert_eq!(changes.len(), usize::from(kept)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_setting_in_a_failed_statement_of_an_open_transaction_needs_a_reset() {
        let mut lease = Lease::default();
        lease.sent(frontend::QUERY, &mut vec![set("work_mem", "1MB")]);
        let body = error("22023", "invalid value", Severity::Error);
        lease.received(backend::ERROR_RESPONSE, &body);
        let r = ready(&mut lease, backend::FAILED_TRANSACTION);
        assert!(r.needs_reset && r.outcome.is_none());
        // The same failure outside a transaction block undoes the statement: nothing to reset.
        let mut lease = Lease::default();
        lease.sent(frontend::QUERY, &mut vec![set("work_mem", "1MB")]);
        lease.received(backend::ERROR_RESPONSE, &body);
        let r = ready(&mut lease, backend::IDLE);
        assert!(!r.needs_reset);
    }

    #[test]
    fn a_hidden_sync_is_swallowed_and_its_failure_skips_the_rest() {
        let mut lease = Lease::default();
        send(&mut lease, frontend::BIND);
        lease.expect_sync_hidden();
        assert!(!lease.unsynced());
        let r = ready(&mut lease, backend::IDLE);
        assert!(r.swallow && !r.skip_rest);
        send(&mut lease, frontend::BIND);
        lease.expect_sync_hidden();
        let body = error("42P01", "no such table", Severity::Error);
        lease.received(backend::ERROR_RESPONSE, &body);
        let r = ready(&mut lease, backend::IDLE);
        assert!(r.swallow && r.skip_rest);
    }

    #[test]
    fn the_refusal_error_is_replaced_and_other_errors_are_not() {
        let mut lease = Lease::default();
        lease.expect_refused(sqlstate::RESERVED_NAME, "reserved".into());
        let other = error("42601", "syntax error", Severity::Error);
        assert!(matches!(
            lease.received(backend::ERROR_RESPONSE, &other),
            Received::Error { .. }
        ));
        let never = String::from_utf8_lossy(NEVER_PREPARED);
        let refusal = error(
            sqlstate::INVALID_SQL_STATEMENT_NAME,
            &format!("prepared statement \"{never}\" does not exist"),
            Severity::Error,
        );
        assert_eq!(
            lease.received(backend::ERROR_RESPONSE, &refusal),
            Received::Refused {
                code: sqlstate::RESERVED_NAME,
                message: "reserved".into()
            }
        );
    }

    #[test]
    fn a_fatal_error_and_session_commands_are_reported() {
        let mut lease = Lease::default();
        let fatal = error("57P01", "terminating connection", Severity::Fatal);
        assert_eq!(
            lease.received(backend::ERROR_RESPONSE, &fatal),
            Received::Error {
                code: "57P01",
                fatal: true,
                message: "terminating connection"
            }
        );
        assert_eq!(
            lease.received(backend::COMMAND_COMPLETE, b"DISCARD ALL\0"),
            Received::Discarded
        );
        assert_eq!(
            lease.received(backend::COMMAND_COMPLETE, b"PREPARE TRANSACTION\0"),
            Received::Unsure
        );
        assert_eq!(
            lease.received(backend::PARAMETER_STATUS, b"TimeZone\0UTC\0"),
            Received::Parameter {
                name: "TimeZone",
                value: "UTC"
            }
        );
    }

    #[test]
    fn syncs_sent_during_an_extended_copy_expect_no_answer_even_behind_answered_statements() {
        // A statement pgsplit sent itself (a deferred BEGIN) was in flight when the client's Execute of COPY FROM
        // STDIN went out, and was answered during the copy.
        let mut lease = Lease::default();
        lease.expect_hidden();
        send(&mut lease, frontend::BIND);
        send(&mut lease, frontend::EXECUTE);
        send(&mut lease, frontend::SYNC); // ignored by the server: it is in copy-in mode
        ready(&mut lease, backend::IN_TRANSACTION); // the BEGIN's
        send(&mut lease, frontend::COPY_DATA);
        send(&mut lease, frontend::COPY_DONE);
        assert!(
            !lease.is_quiet(),
            "the copy's end waits for the client's Sync"
        );
        send(&mut lease, frontend::SYNC);
        assert_eq!(lease.pending(), 1);
        ready(&mut lease, backend::IDLE);
        assert!(lease.is_quiet());
    }

    #[test]
    fn syncs_sent_during_copy_from_stdin_expect_no_answer() {
        let mut lease = Lease::default();
        send(&mut lease, frontend::QUERY); // COPY t FROM STDIN
        send(&mut lease, frontend::COPY_DATA);
        send(&mut lease, frontend::SYNC); // ignored by the server during the copy
        assert_eq!(lease.pending(), 2);
        send(&mut lease, frontend::COPY_DONE);
        assert_eq!(lease.pending(), 1);
    }
}
