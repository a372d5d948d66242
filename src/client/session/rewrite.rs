//! Sending a routed message to the held server: the client's statement names become pgsplit's, statements the
//! connection lacks are prepared first (their replies swallowed), and the connection's statement cache is kept
//! under its cap.

use super::Session;
use crate::classify::Decision;
use crate::client::statements::{Statement, NEVER_PREPARED};
use crate::protocol::frontend::{self, Decoded, Message, Target};
use crate::protocol::{messages, Frame};

impl Session {
    /// Sends a routed message to the held server, rewriting statement names and re-preparing statements the
    /// connection lacks.
    pub(super) fn send_routed(&mut self, msg: Decoded, decision: Decision) {
        match &msg.message {
            Message::Parse(parse) => {
                let (stmt, created) =
                    self.statements
                        .parse(self.id, parse, &msg.frame.body, decision);
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
            Message::Bind(bind) => match self.statements.get(&bind.statement).cloned() {
                Some(stmt) => {
                    self.ensure_prepared(&stmt);
                    messages::bind(
                        &mut self.sout,
                        &bind.portal,
                        &stmt.server_name,
                        &bind.params,
                    );
                    self.note_sent(frontend::BIND);
                }
                None => self.forward(&msg.frame),
            },
            Message::Describe(Target::Statement(name)) => {
                match self.statements.get(name).cloned() {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        messages::target_message(
                            &mut self.sout,
                            frontend::DESCRIBE,
                            frontend::KIND_STATEMENT,
                            &stmt.server_name,
                        );
                        self.note_sent(frontend::DESCRIBE);
                    }
                    None => self.forward(&msg.frame),
                }
            }
            Message::Close(Target::Statement(name)) => self.close_statement(name, &msg.frame),
            _ => self.forward(&msg.frame),
        }
    }

    /// Sends a Close of a client statement under its server name, and forgets it.
    fn close_statement(&mut self, name: &[u8], frame: &Frame) {
        let server_name = match self.statements.close(name) {
            Some(stmt) => {
                if let Some(h) = self.held.as_mut() {
                    if stmt.server_name.is_empty() {
                        h.conn.unnamed_owner = None;
                    } else {
                        h.conn.prepared.remove(&stmt.server_name);
                    }
                }
                stmt.server_name
            }
            // A name the client does not hold never reaches a server as it is: it could be another client's
            // statement there. Closing a statement that does not exist is no error.
            None if self.unknown_statement(name) => bytes::Bytes::from_static(NEVER_PREPARED),
            None => return self.forward(frame),
        };
        messages::target_message(
            &mut self.sout,
            frontend::CLOSE,
            frontend::KIND_STATEMENT,
            &server_name,
        );
        if let Some(h) = self.held.as_mut() {
            h.lease.expect_close(false);
        }
    }

    /// Closes the least recently used statement on the held connection when it is at its cap.
    fn make_room(&mut self) {
        let cap = self
            .shared
            .config_now()
            .pools
            .prepared_statements_per_server;
        let Some(h) = self.held.as_mut() else { return };
        while h.conn.prepared.len() >= cap {
            let Some(victim) = h.conn.prepared.lru_victim(b"") else {
                break;
            };
            h.conn.prepared.remove(&victim);
            messages::close(&mut self.sout, frontend::KIND_STATEMENT, &victim);
            h.lease.expect_close(true);
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
            tag: frontend::PARSE,
            body: stmt.parse.clone(),
        }
        .encode(&mut self.sout);
        if created {
            h.conn.prepared.insert(&stmt.server_name);
        }
        h.lease
            .expect_parse(stmt.server_name.clone(), swallow, created);
    }

    /// Forwards a frame unchanged to the held server.
    pub(super) fn forward(&mut self, frame: &Frame) {
        frame.encode(&mut self.sout);
        if frame.tag == frontend::CLOSE {
            if let Some(h) = self.held.as_mut() {
                h.lease.expect_close(false);
            }
        } else {
            self.note_sent(frame.tag);
        }
    }

    /// Tells the held connection's lease that a client message went out.
    fn note_sent(&mut self, tag: u8) {
        if let Some(h) = self.held.as_mut() {
            h.lease.sent(tag, &mut self.unit_changes);
        }
    }
}
