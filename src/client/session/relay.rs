//! Server to client: complete server frames are relayed as raw bytes (a large DataRow or CopyData as it
//! arrives); each whole frame's header goes through the held connection's [`Lease`](crate::client::lease), and
//! what it answers is applied here (statements confirmed or forgotten, settings kept, errors counted).

use bytes::{Buf, BytesMut};

use super::{End, Session};
use crate::client::lease::{Ready, Received};
use crate::client::settings::{Outcome, Settings};
use crate::protocol::backend;
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::messages::Severity;
use crate::server::ServerConn;
use crate::sql::quote_literal;

/// What relaying stopped at, besides the end of the buffered bytes.
enum Stop {
    /// The server ended the connection with a FATAL error, which the client has been given.
    Fatal,
    /// The connection is out of step or sent garbage.
    Lost(String),
}

/// What becomes of one server message.
enum Verdict {
    /// The client gets it.
    Relay,
    /// Nobody gets it.
    Swallow,
    /// The client gets this error instead.
    Replace { code: &'static str, message: String },
    /// Relaying stops here.
    Stop(Stop),
}

impl Session {
    /// Relays complete server frames (and the available part of large rows) to the client.
    pub(super) fn relay_server(&mut self) -> Result<(), End> {
        let Some(h) = self.held.as_mut() else {
            return Ok(());
        };
        let mut rbuf = std::mem::take(&mut h.conn.rbuf);
        let stop = self.relay_frames(&mut rbuf);
        if let Some(h) = self.held.as_mut() {
            h.conn.rbuf = rbuf;
        }
        match stop {
            None => Ok(()),
            Some(Stop::Fatal) => {
                if let Some(mut h) = self.held.take() {
                    h.conn.broken = true;
                }
                self.cancel.clear();
                Err(End::Fatal)
            }
            Some(Stop::Lost(detail)) => {
                if let Some(h) = self.held.as_mut() {
                    h.conn.broken = true;
                }
                self.server_lost(&detail)
            }
        }
    }

    /// Moves what `buf` holds to the client, frame by frame, leaving an incomplete frame's start in it.
    fn relay_frames(&mut self, buf: &mut BytesMut) -> Option<Stop> {
        // `pos`: bytes at the start of `buf` relayed as they are, copied out in one go.
        let mut pos = 0usize;
        let mut stop = None;
        while let Some(h) = self.held.as_mut() {
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
            let Some(header) = rest.get(..HEADER_LEN) else {
                break;
            };
            let tag = header[0];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len < 4 {
                stop = Some(Stop::Lost(format!("invalid message length {len}")));
                break;
            }
            let total = len + 1;
            let Some(body) = rest.get(HEADER_LEN..total) else {
                if matches!(tag, backend::DATA_ROW | backend::COPY_DATA) {
                    // Relay what is here of a large row; the rest passes through as it arrives.
                    h.pass = total - rest.len();
                    pos = buf.len();
                }
                break;
            };
            let received = h.lease.received(tag, body);
            match self.verdict(received) {
                Verdict::Relay => pos += total,
                Verdict::Swallow => {
                    self.cout.extend_from_slice(&buf[..pos]);
                    buf.advance(pos + total);
                    pos = 0;
                }
                Verdict::Replace { code, message } => {
                    // The server failed the unit where pgsplit refused a message: pgsplit's error takes its place.
                    self.cout.extend_from_slice(&buf[..pos]);
                    buf.advance(pos + total);
                    pos = 0;
                    self.queue_error(Severity::Error, code, &message);
                }
                Verdict::Stop(Stop::Fatal) => {
                    pos += total;
                    stop = Some(Stop::Fatal);
                    break;
                }
                Verdict::Stop(lost) => {
                    stop = Some(lost);
                    break;
                }
            }
        }
        if pos > 0 {
            self.cout.extend_from_slice(&buf[..pos]);
            buf.advance(pos);
        }
        stop
    }

    /// Applies what the lease made of a server message; says what becomes of the message.
    fn verdict(&mut self, received: Received<'_>) -> Verdict {
        let relay = match received {
            Received::Relay => true,
            Received::Swallow => false,
            Received::Ready(ready) => self.on_ready(ready),
            Received::Parsed { name, swallow } => {
                self.statements.confirm(&name);
                !swallow
            }
            Received::Parameter { name, value } => self.on_parameter(name, value),
            Received::Refused { code, message } => return Verdict::Replace { code, message },
            Received::Error {
                code,
                fatal,
                message,
            } => {
                self.shared.stats.errors.count(code);
                if fatal {
                    // The server ends this connection (idle-in-transaction timeout, terminated by an
                    // administrator, shutting down): the client gets the server's own error, then is closed, as
                    // on a direct connection.
                    tracing::info!(
                        client = self.id,
                        detail = message,
                        "the server ended the connection"
                    );
                    return Verdict::Stop(Stop::Fatal);
                }
                true
            }
            Received::Discarded => {
                if let Some(h) = self.held.as_mut() {
                    h.conn.prepared.clear();
                    h.conn.unnamed_owner = None;
                }
                self.statements.clear();
                true
            }
            Received::Unsure => {
                if let Some(h) = self.held.as_mut() {
                    h.conn.needs_reset = true;
                }
                true
            }
            Received::Unexpected(what) => return Verdict::Stop(Stop::Lost(what.to_string())),
        };
        if relay {
            Verdict::Relay
        } else {
            Verdict::Swallow
        }
    }

    /// A ReadyForQuery: statements the server never prepared are forgotten, the settings of a finished
    /// transaction kept (or the client pinned when they are uncertain). Whether the client sees it.
    fn on_ready(&mut self, ready: Ready) -> bool {
        let Some(h) = self.held.as_mut() else {
            return !ready.swallow;
        };
        let conn: &mut ServerConn = &mut h.conn;
        conn.status = ready.status;
        conn.needs_reset |= ready.needs_reset;
        for (name, created) in &ready.unanswered {
            // Not answered before the Sync: failed or skipped after an error. A statement no server ever
            // prepared does not exist for the client either.
            if *created {
                conn.prepared.remove(name);
            }
            if name.is_empty() {
                conn.unnamed_owner = None;
            }
            self.statements.parse_failed(name);
        }
        match ready.outcome {
            Some(Outcome::Keep(changes)) => {
                for c in &changes {
                    self.settings.record(c);
                    Settings::applied_on(&mut conn.applied, c);
                    conn.settings_fingerprint = None;
                }
            }
            Some(Outcome::Uncertain) => {
                // Only this connection knows which settings hold: the client keeps it.
                tracing::debug!(
                    client = self.id,
                    "settings uncertain after a failed unit: the client keeps its server connections"
                );
                self.pin_for_good(true);
            }
            None => {}
        }
        if ready.skip_rest {
            self.skip_to_sync = true;
        }
        !ready.swallow
    }

    /// A ParameterStatus: recorded on the connection; a reported setting the client changed becomes part of its
    /// session (and must be reset before another client uses this connection). Whether the client sees it.
    fn on_parameter(&mut self, name: &str, value: &str) -> bool {
        let Some(h) = self.held.as_mut() else {
            return true;
        };
        let conn: &mut ServerConn = &mut h.conn;
        conn.params.insert(name.to_string(), value.to_string());
        if self.settings.reported(name, value) {
            conn.applied
                .insert(name.to_ascii_lowercase(), quote_literal(value));
            conn.settings_fingerprint = None;
        }
        self.settings.status_changes(name, value)
    }
}
