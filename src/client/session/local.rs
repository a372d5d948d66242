//! What pgsplit answers itself: `SET pgsplit.route`, and a plain BEGIN it defers until the transaction's first
//! statement shows where the transaction may run (with COMMIT/ROLLBACK of such a BEGIN that ran nothing).

use super::Session;
use crate::protocol::messages;
use crate::protocol::{backend, frontend, Frame};
use crate::sql::{self, first_word_is, RouteSetting};

/// Whether pgsplit answers a statement itself.
pub(super) enum Local {
    /// Answered.
    Answered,
    /// It is pgsplit's to answer, after the replies in flight.
    Wait,
    /// For a server.
    NotMine,
}

impl Session {
    /// Statements pgsplit answers itself: `SET pgsplit.route`, a plain BEGIN (deferred until the transaction's
    /// first statement shows where it may run), and COMMIT/ROLLBACK of a deferred BEGIN that ran nothing.
    /// Returns whether it answered.
    pub(super) fn answer_locally(&mut self, text: &str) -> Local {
        let busy = self.held.is_some() || self.stalled.is_some();
        if first_word_is(text, "set") && sql::route_setting(text).is_some() {
            // Answered in order only when nothing is in flight (a transaction may be open).
            let in_flight =
                self.stalled.is_some() || self.held.as_ref().is_some_and(|h| !h.lease.is_quiet());
            if in_flight {
                return Local::Wait;
            }
            self.route_override = sql::route_setting(text).and_then(RouteSetting::route);
            messages::command_complete(&mut self.cout, "SET");
            let status = match &self.held {
                Some(h) => h.conn.status,
                None if self.deferred_begin.is_some() => backend::IN_TRANSACTION,
                None => backend::IDLE,
            };
            messages::ready_for_query(&mut self.cout, status);
            return Local::Answered;
        }
        if busy || self.keep_servers {
            return Local::NotMine;
        }
        if self.deferred_begin.is_none() {
            // Not with an idle-in-transaction timeout: the server must see the transaction to enforce it.
            if sql::is_plain_begin(text)
                && !self
                    .settings
                    .is_enabled("idle_in_transaction_session_timeout")
            {
                self.deferred_begin = Some(Frame {
                    tag: frontend::QUERY,
                    body: bytes::Bytes::copy_from_slice(&query_body(text)),
                });
                messages::command_complete(&mut self.cout, "BEGIN");
                messages::ready_for_query(&mut self.cout, backend::IN_TRANSACTION);
                return Local::Answered;
            }
            return Local::NotMine;
        }
        let Some(tag) = sql::transaction_end(text) else {
            return Local::NotMine;
        };
        self.deferred_begin = None;
        messages::command_complete(&mut self.cout, tag);
        messages::ready_for_query(&mut self.cout, backend::IDLE);
        Local::Answered
    }
}

/// A Query body (text + NUL).
fn query_body(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 1);
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}
