//! The client's prepared statements, mapped to pgsplit's own names so that, in transaction pooling, a statement
//! can be re-prepared on whichever server connection the client gets next.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::classify::Decision;
use crate::protocol::messages::{self, ParseView};

/// One statement the client prepared.
#[derive(Debug, Clone)]
pub struct Statement {
    /// pgsplit's name for it on servers (empty for the unnamed statement).
    pub server_name: Bytes,
    /// A Parse body that prepares it under `server_name`.
    pub parse: Bytes,
    /// Where it may run.
    pub decision: Decision,
    /// For the unnamed statement: which Parse this is (servers record the owner of their unnamed slot).
    pub generation: u64,
}

impl Statement {
    /// The statement's SQL text.
    pub fn query_text(&self) -> Option<&str> {
        let view = ParseView::decode(&self.parse)?;
        std::str::from_utf8(view.query).ok()
    }
}

/// A client's statements by the client's names.
#[derive(Debug, Default)]
pub struct Statements {
    named: HashMap<Bytes, Statement>,
    unnamed: Option<Statement>,
    seq: u64,
}

impl Statements {
    /// Records a Parse (`view` decoded from `body`); returns the statement as it must be prepared on the server. For a name the client
    /// already uses, returns the existing statement and `false` (the server then reports the duplicate).
    pub fn parse(
        &mut self,
        client_id: u64,
        view: &ParseView<'_>,
        body: &Bytes,
        decision: Decision,
    ) -> (Statement, bool) {
        self.seq += 1;
        if view.name.is_empty() {
            // Unnamed: the client's own Parse body serves as it is (no copy).
            let s = Statement {
                server_name: Bytes::new(),
                parse: body.clone(),
                decision,
                generation: self.seq,
            };
            self.unnamed = Some(s.clone());
            return (s, true);
        }
        if let Some(existing) = self.named.get(view.name) {
            return (existing.clone(), false);
        }
        let server_name = Bytes::from(format!("pgsplit_{client_id}_{}", self.seq));
        let s = Statement {
            parse: encode_parse(&server_name, view),
            server_name,
            decision,
            generation: self.seq,
        };
        self.named
            .insert(Bytes::copy_from_slice(view.name), s.clone());
        (s, true)
    }

    /// The statement a client name refers to.
    pub fn get(&self, name: &[u8]) -> Option<&Statement> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    /// Forgets a statement the client closed; returns it.
    pub fn close(&mut self, name: &[u8]) -> Option<Statement> {
        if name.is_empty() {
            self.unnamed.take()
        } else {
            self.named.remove(name)
        }
    }

    /// Forgets every statement (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = None;
    }
}

fn encode_parse(name: &[u8], view: &ParseView<'_>) -> Bytes {
    let mut out =
        BytesMut::with_capacity(16 + name.len() + view.query.len() + view.param_types.len());
    messages::parse(&mut out, name, view.query, view.param_types);
    // Keep the body only: header is re-added when sent.
    out.split_off(5).freeze()
}
