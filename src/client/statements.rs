//! The client's prepared statements, mapped to pgsplit's own names so that, in transaction pooling, a statement
//! can be re-prepared on whichever server connection the client gets next.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::classify::Decision;
use crate::protocol::frontend::{Parse, ParseView};
use crate::protocol::messages;
use crate::sql::lexer::{Lexer, Tok};

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
    /// A server has prepared it at least once (ParseComplete). Until then, a failed Parse means the client's
    /// statement never existed, as PostgreSQL would say.
    pub confirmed: bool,
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
    /// Records a Parse (`view` decoded from `body`); returns the statement as it must be prepared on the server.
    /// For a name the client already uses, returns the existing statement and `false` (the server then reports
    /// the duplicate).
    pub fn parse(
        &mut self,
        client_id: u64,
        view: &Parse,
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
                confirmed: false,
            };
            self.unnamed = Some(s.clone());
            return (s, true);
        }
        if let Some(existing) = self.named.get(&view.name) {
            return (existing.clone(), false);
        }
        let server_name = Bytes::from(format!("pgsplit_{client_id}_{}", self.seq));
        let s = Statement {
            parse: encode_parse(&server_name, view),
            server_name,
            decision,
            generation: self.seq,
            confirmed: false,
        };
        // A copy: a slice would keep the client's whole Parse frame alive beside the re-encoded one.
        self.named
            .insert(Bytes::copy_from_slice(&view.name), s.clone());
        (s, true)
    }

    /// Number of named statements the client holds.
    pub fn named_len(&self) -> usize {
        self.named.len()
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

    /// A server prepared the statement it knows as `server_name` (ParseComplete).
    pub fn confirm(&mut self, server_name: &[u8]) {
        if let Some(s) = self.by_server_name(server_name) {
            s.confirmed = true;
        }
    }

    /// A Parse of `server_name` failed (or was skipped after an error): a statement no server ever prepared is
    /// forgotten, so the client may prepare the name again.
    pub fn parse_failed(&mut self, server_name: &[u8]) {
        let unconfirmed = self
            .by_server_name(server_name)
            .is_some_and(|s| !s.confirmed);
        if !unconfirmed {
            return;
        }
        if server_name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.retain(|_, s| s.server_name != server_name);
        }
    }

    fn by_server_name(&mut self, server_name: &[u8]) -> Option<&mut Statement> {
        if server_name.is_empty() {
            return self.unnamed.as_mut();
        }
        self.named
            .values_mut()
            .find(|s| s.server_name == server_name)
    }

    /// Forgets every statement (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = None;
    }
}

/// Prefix of the names pgsplit gives statements on servers (`pgsplit_<client>_<n>`); reserved for it.
pub const RESERVED_PREFIX: &str = "pgsplit_";

/// A statement name no server statement ever has (clients cannot create it: see [`names_reserved_statement`]).
/// A Describe of it makes a server fail a batch where pgsplit refuses a message; a Close of it stands in for a
/// Close of a name the client does not hold.
pub const NEVER_PREPARED: &[u8] = b"pgsplit_refused";

/// Whether SQL text uses a SQL-level prepared statement name reserved for pgsplit: `PREPARE`, `EXECUTE` or
/// `DEALLOCATE [PREPARE]` followed by a name starting with `pgsplit_` (bare or quoted, any case), or by a
/// Unicode-escaped identifier (`U&"…"`), which could spell one. Comments, string literals and dollar quotes are
/// skipped. Dynamic SQL (PL/pgSQL `EXECUTE 'text'`) cannot be seen here.
pub fn names_reserved_statement(sql: &str) -> bool {
    let b = sql.as_bytes();
    let contains = |needle: &[u8]| {
        b.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if !contains(RESERVED_PREFIX.as_bytes()) && !contains(b"u&") {
        return false;
    }
    let reserved = |name: &[u8]| {
        name.get(..RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
    };
    let mut after_keyword = false;
    for tok in Lexer::new(b) {
        if after_keyword {
            let named = match tok {
                Tok::Word(word) => reserved(word),
                // `U&"…"` could spell any name.
                Tok::Quoted(q) if !q.starts_with(b"\"") => true,
                Tok::Quoted(q) => reserved(q.get(1..).unwrap_or_default()),
                _ => false,
            };
            if named {
                return true;
            }
        }
        // `DEALLOCATE PREPARE name`: the name follows the second keyword.
        after_keyword = tok.is("prepare") || tok.is("execute") || tok.is("deallocate");
    }
    false
}

/// The statement `DEALLOCATE [PREPARE] name` names, when that is all the text holds (a trailing `;` and comments
/// aside), as PostgreSQL resolves it: a bare name folded to lower case, a quoted one as written. `None` for any
/// other text, `DEALLOCATE ALL` included.
pub fn deallocated_name(sql: &str) -> Option<Vec<u8>> {
    let mut toks = Lexer::new(sql.as_bytes());
    if !toks.next()?.is("deallocate") {
        return None;
    }
    let mut tok = toks.next()?;
    if tok.is("prepare") {
        tok = toks.next()?;
    }
    let name = match tok {
        Tok::Word(w) if !tok.is("all") => w.to_ascii_lowercase(),
        Tok::Quoted(q) if q.len() >= 2 && q.starts_with(b"\"") && q.ends_with(b"\"") => {
            let inner = String::from_utf8_lossy(q.get(1..q.len() - 1)?).into_owned();
            // Only doubled quotes inside: `"a""` is unterminated.
            if inner.replace("\"\"", "").contains('"') {
                return None;
            }
            inner.replace("\"\"", "\"").into_bytes()
        }
        _ => return None,
    };
    match (toks.next(), toks.next()) {
        (None, _) | (Some(Tok::Punct(b';')), None) => Some(name),
        _ => None,
    }
}

fn encode_parse(name: &[u8], view: &Parse) -> Bytes {
    let mut out =
        BytesMut::with_capacity(16 + name.len() + view.query.len() + view.param_types.len());
    messages::parse(&mut out, name, &view.query, &view.param_types);
    // Keep the body only: header is re-added when sent.
    out.split_off(5).freeze()
}

#[cfg(test)]
mod tests {
    use super::names_reserved_statement as reserved;

    #[test]
    fn deallocate_of_one_name_is_read_as_postgresql_resolves_it() {
        use super::deallocated_name as name;
        let some = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(
            name("DEALLOCATE pdo_stmt_00000001"),
            some("pdo_stmt_00000001")
        );
        assert_eq!(name("deallocate prepare S_1;"), some("s_1"));
        assert_eq!(name("DEALLOCATE \"S_1\""), some("S_1"));
        assert_eq!(name("DEALLOCATE \"a\"\"b\" ; -- done"), some("a\"b"));
        assert_eq!(name("/* x */ DEALLOCATE PREPARE \"all\""), some("all"));
        for other in [
            "DEALLOCATE ALL",
            "DEALLOCATE PREPARE ALL",
            "DEALLOCATE",
            "DEALLOCATE a; DEALLOCATE b",
            "DEALLOCATE a b",
            "SELECT 1",
            "DEALLOCATE 'a'",
            "DEALLOCATE U&\"a\"",
            "DEALLOCATE \"a\"\"",
            "DEALLOCATE \"",
            "",
        ] {
            assert_eq!(name(other), None, "{other}");
        }
    }

    #[test]
    fn reserved_statement_names_are_found_in_sql() {
        for sql in [
            "EXECUTE pgsplit_1_1",
            "execute PGSPLIT_1_1(1, 2)",
            "DEALLOCATE pgsplit_3_9",
            "deallocate prepare pgsplit_3_9",
            "PREPARE pgsplit_1_1 AS SELECT 1",
            "EXPLAIN ANALYZE EXECUTE pgsplit_1_1",
            "CREATE TABLE t AS EXECUTE pgsplit_1_1",
            "EXECUTE \"pgsplit_1_1\"",
            "EXECUTE /* hi */ -- there\n pgsplit_1_1",
            "SELECT 1; EXECUTE pgsplit_1_1",
            "EXECUTE U&\"\\0070gsplit_1_1\"",
            "execute u&\"x\"",
        ] {
            assert!(reserved(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM pgsplit_stats",
            "EXECUTE my_stmt",
            "DEALLOCATE ALL",
            "SELECT 'EXECUTE pgsplit_1_1'",
            "SELECT $$EXECUTE pgsplit_1_1$$",
            "SELECT $q$ EXECUTE pgsplit_1_1 $q$",
            "-- EXECUTE pgsplit_1_1\nSELECT 1",
            "/* EXECUTE /* nested */ pgsplit_1_1 */ SELECT 1",
            "GRANT EXECUTE ON FUNCTION pgsplit_f() TO x",
            "SELECT E'it\\'s' , pgsplit_x FROM t",
            "PREPARE TRANSACTION 'pgsplit_x'",
            "",
            "EXECUTE",
            "'",
            "\"",
            "$",
            "$a",
            "/*",
            "U&",
        ] {
            assert!(!reserved(sql), "{sql}");
        }
    }
}
