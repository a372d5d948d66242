//! What pgsplit answers itself: `SET pgsplit.route`, and a plain BEGIN it defers until the transaction's first
//! statement shows where the transaction may run (with COMMIT/ROLLBACK of such a BEGIN that ran nothing).

use super::Session;
use crate::causal::Lsn;
use crate::protocol::messages;
use crate::protocol::messages::Severity;
use crate::protocol::{backend, frontend, Frame};
use crate::sql::{self, PgsplitCommand, PgsplitParam, Route};

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
    pub(super) async fn answer_locally(&mut self, text: &str) -> Local {
        let busy = self.held.is_some() || self.stalled.is_some();
        if let Some(command) = sql::pgsplit_command(text) {
            // Answered in order only when nothing is in flight (a transaction may be open; the floor of the
            // client's last write may be on its way).
            let in_flight =
                self.stalled.is_some() || self.held.as_ref().is_some_and(|h| !h.lease.is_quiet());
            if in_flight {
                return Local::Wait;
            }
            match command {
                Ok(command) => Box::pin(self.run_pgsplit_command(command)).await,
                Err(e) => self.queue_error(Severity::Error, e.sqlstate, &e.message),
            }
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

    /// `SET`, `RESET` or `SHOW` of a `pgsplit.*` parameter.
    async fn run_pgsplit_command(&mut self, command: PgsplitCommand) {
        let configured = self.shared.config_now().routing.consistency;
        let tag = match command {
            PgsplitCommand::SetRoute(setting) => {
                self.route_override = setting.route();
                "SET"
            }
            PgsplitCommand::SetConsistency(mode) => {
                self.causal.set_mode(mode.unwrap_or(configured));
                "SET"
            }
            PgsplitCommand::SetMinLsn(lsn) => {
                self.causal.raise_floor(lsn.0);
                "SET"
            }
            PgsplitCommand::Reset(param) => {
                match param {
                    PgsplitParam::Route => self.route_override = None,
                    PgsplitParam::Consistency => self.causal.set_mode(configured),
                    // The floor is never lowered.
                    PgsplitParam::Lsn | PgsplitParam::MinLsn => {}
                }
                "RESET"
            }
            PgsplitCommand::Show(param) => {
                if matches!(param, PgsplitParam::Lsn | PgsplitParam::MinLsn) {
                    // The token covers the client's writes so far.
                    self.settle_floor().await;
                }
                let value = match param {
                    PgsplitParam::Route => match self.route_override {
                        Some(Route::Write) => "primary".to_string(),
                        Some(Route::Read) => "replica".to_string(),
                        None => "auto".to_string(),
                    },
                    PgsplitParam::Consistency => self.causal.mode().as_str().to_string(),
                    PgsplitParam::Lsn | PgsplitParam::MinLsn => {
                        Lsn(self.causal.floor()).to_string()
                    }
                };
                messages::row_description(&mut self.cout, &[param.name()]);
                messages::data_row(&mut self.cout, &[Some(&value)]);
                "SHOW"
            }
        };
        messages::command_complete(&mut self.cout, tag);
    }
}

/// A Query body (text + NUL).
fn query_body(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 1);
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}
