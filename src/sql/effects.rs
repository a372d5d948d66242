//! What a statement leaves behind on its server connection beyond its own transaction, read from its tokens.
//!
//! Every statement of a query string is looked at (not just the first). The answer is deliberately coarse and
//! errs towards doing more: a statement that keeps session-bound state the client will use again pins the
//! client; one that may have left anything else behind marks the connection for a reset before another client
//! gets it; only plain reads, transaction control and the settings pgsplit tracks are known to leave nothing.

use std::ops::ControlFlow;

use sqlparser::ast::Expr;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::lexer::{join, statements, Tok};

/// What a query string may leave on its server connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// Leaves session-bound state the client will use again (temporary objects, LISTEN, WITH HOLD cursors,
    /// SQL-level PREPARE, a role or session authorization, a loaded library): the client keeps its server
    /// connections for the rest of its session.
    pub pins: bool,
    /// Takes a session advisory lock: the client keeps its server connections while it holds one.
    pub locks: bool,
    /// Releases session advisory locks (`pg_advisory_unlock*`): a client they alone pinned may be free again.
    pub unlocks: bool,
    /// Starts listening: the connection stays held while the client is idle, so notifications reach it.
    pub listens: bool,
    /// Leaves something no reset removes (LOAD): the connection is closed when the client is done with it.
    pub poisons: bool,
    /// May leave state pgsplit does not track (a write whose triggers pgsplit cannot see, DDL, DO, CALL, a
    /// statement it does not know): the connection is reset before another client gets it.
    pub dirty: bool,
    /// Changes tracked settings or savepoints: [`session_events`] says exactly how.
    pub session: bool,
}

impl Effects {
    /// Leaves nothing behind.
    pub const NONE: Effects = Effects {
        pins: false,
        locks: false,
        unlocks: false,
        listens: false,
        poisons: false,
        dirty: false,
        session: false,
    };

    /// Keeps the client on its server connections (for good, or while it holds an advisory lock).
    pub fn holds_session(&self) -> bool {
        self.pins || self.locks
    }

    fn merge(&mut self, o: Effects) {
        self.pins |= o.pins;
        self.locks |= o.locks;
        self.unlocks |= o.unlocks;
        self.listens |= o.listens;
        self.poisons |= o.poisons;
        self.dirty |= o.dirty;
        self.session |= o.session;
    }
}

/// Functions that take a session advisory lock: it outlives the transaction, until released.
const LOCKING_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Functions that release session advisory locks.
const UNLOCKING_FUNCTIONS: &[&str] = &[
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// Functions whose effect outlives the transaction and that the client relies on later.
const PINNING_FUNCTIONS: &[&str] = &["dblink_connect", "dblink_connect_u", "dblink_open"];

/// The effects of every statement in `sql`.
pub fn effects(sql: &[u8]) -> Effects {
    let mut e = Effects::default();
    for s in statements(sql) {
        e.merge(statement_effects(&s));
    }
    e
}

fn statement_effects(s: &[Tok<'_>]) -> Effects {
    let mut e = Effects::default();
    word_effects(s, &mut e);
    command_effects(s, &mut e);
    e
}

/// Effects of words anywhere in the statement: temporary objects, session advisory locks and their release,
/// `set_config`, sequence functions.
fn word_effects(s: &[Tok<'_>], e: &mut Effects) {
    let is = |i: usize, w: &str| s.get(i).is_some_and(|t| t.is(w));
    let mut buf = [0u8; 32];
    for (i, t) in s.iter().enumerate() {
        // Quoted names count too (`"pg_temp".t`, `"set_config"(…)`), case folded to fail towards doing more; a
        // Unicode-escaped one (`U&"…"`) could spell anything.
        let unquoted;
        let w: &[u8] = match t {
            Tok::Word(w) => w,
            Tok::Quoted(q) if q.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'u')) => {
                e.dirty = true;
                continue;
            }
            Tok::Quoted(q) => {
                unquoted = unquote(q);
                unquoted.as_bytes()
            }
            _ => continue,
        };
        match lower(w, &mut buf) {
            "pg_temp" => e.pins = true,
            "into" => {
                // SELECT … INTO [GLOBAL | LOCAL] TEMP[ORARY] …
                let j = if is(i + 1, "global") || is(i + 1, "local") {
                    i + 2
                } else {
                    i + 1
                };
                if is(j, "temp") || is(j, "temporary") {
                    e.pins = true;
                }
            }
            "create" => {
                // CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP[ORARY] …
                let mut j = i + 1;
                if is(j, "or") && is(j + 1, "replace") {
                    j += 2;
                }
                if is(j, "global") || is(j, "local") {
                    j += 1;
                }
                if is(j, "temp") || is(j, "temporary") {
                    e.pins = true;
                }
            }
            "set_config" => e.session = true,
            // Sequence state (currval, lastval) outlives the transaction.
            "nextval" | "setval" => e.dirty = true,
            w if PINNING_FUNCTIONS.contains(&w) => e.pins = true,
            w if LOCKING_FUNCTIONS.contains(&w) => e.locks = true,
            w if UNLOCKING_FUNCTIONS.contains(&w) => e.unlocks = true,
            _ => {}
        }
    }
}

/// Effects of the command the statement's first word names.
fn command_effects(s: &[Tok<'_>], e: &mut Effects) {
    let is = |i: usize, w: &str| s.get(i).is_some_and(|t| t.is(w));
    let mut buf = [0u8; 32];
    let Some(first) = s.first() else { return };
    match lower(first.text(), &mut buf) {
        "select" | "values" | "table" | "with" => {
            if writes_data(s) {
                e.dirty = true;
            }
        }
        "explain" => {
            let inner = s
                .iter()
                .position(|t| {
                    [
                        "select", "insert", "update", "delete", "merge", "values", "table", "with",
                        "create", "execute", "declare",
                    ]
                    .iter()
                    .any(|w| t.is(w))
                })
                .unwrap_or(s.len());
            // EXPLAIN without ANALYZE runs nothing, but fail closed: judge what it explains. Setting changes
            // under EXPLAIN ANALYZE are not followed: the connection is reset instead.
            e.merge(statement_effects(&s[inner..]));
            if std::mem::take(&mut e.session) {
                e.dirty = true;
            }
        }
        "show" | "fetch" | "move" | "close" | "unlisten" | "notify" | "begin" | "start"
        | "commit" | "end" | "abort" | "lock" | "checkpoint" | "deallocate" => {}
        "rollback" | "savepoint" | "release" => e.session = true,
        "set" => {
            if is(1, "local") || is(1, "transaction") || is(1, "constraints") {
                // Ends with the transaction.
            } else if is(1, "role")
                || (is(1, "session") && (is(2, "authorization") || is(2, "role")))
            {
                e.pins = true;
            } else {
                e.session = true;
            }
        }
        "reset" => {
            if is(1, "role") || (is(1, "session") && is(2, "authorization")) {
                e.pins = true;
            } else {
                e.session = true;
            }
        }
        "discard" => {
            if is(1, "all") {
                e.session = true;
            }
        }
        "listen" => {
            e.pins = true;
            e.listens = true;
        }
        "prepare" if is(1, "transaction") => e.dirty = true,
        "prepare" => e.pins = true,
        "declare" => {
            let hold = s.windows(2).any(|w| w[1].is("hold") && w[0].is("with"));
            if hold {
                e.pins = true;
            }
        }
        "load" => {
            e.pins = true;
            e.poisons = true;
        }
        "copy" => {
            if s.iter().any(|t| t.is("from")) {
                e.dirty = true;
            }
        }
        // INSERT, UPDATE, DELETE, MERGE, TRUNCATE (triggers), DDL (event triggers), DO, CALL, EXECUTE, and
        // anything unknown.
        _ => e.dirty = true,
    }
}

/// A word in lower case, in `buf` (no allocation); words longer than it, or not UTF-8, come back empty (no
/// keyword or function name pgsplit looks for is that long).
fn lower<'b>(w: &[u8], buf: &'b mut [u8; 32]) -> &'b str {
    let Some(dst) = buf.get_mut(..w.len()) else {
        return "";
    };
    dst.copy_from_slice(w);
    dst.make_ascii_lowercase();
    std::str::from_utf8(dst).unwrap_or("")
}

/// Whether a query writes data (a data-modifying CTE): `INSERT`, `UPDATE` (not in `FOR [NO KEY] UPDATE`),
/// `DELETE` or `MERGE` anywhere in it.
fn writes_data(s: &[Tok<'_>]) -> bool {
    s.iter().enumerate().any(|(i, t)| {
        t.is("insert")
            || t.is("delete")
            || t.is("merge")
            || (t.is("update")
                && !i
                    .checked_sub(1)
                    .and_then(|p| s.get(p))
                    .is_some_and(|p| p.is("for") || p.is("key")))
    })
}

/// A change of session settings that pgsplit re-applies on the client's next server connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// `SET name TO value`: the value as SQL, comments and layout dropped.
    Set { name: String, value: String },
    /// `RESET name`, `SET name TO DEFAULT`.
    Reset(String),
    /// `RESET ALL` or `DISCARD ALL`.
    ResetAll,
}

/// What a statement does to settings and to the savepoints that decide whether settings survive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A setting change.
    Change(SessionChange),
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `ROLLBACK TO [SAVEPOINT] name`: undoes the changes made since that savepoint.
    RollbackTo(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
}

/// Settings that only pin (never replayed on other connections).
const PINNED_SETTINGS: &[&str] = &["role", "session_authorization"];

/// The setting and savepoint events of `sql`, in order; `None` when it changes settings in a way pgsplit
/// cannot follow (the client then keeps its server connections).
pub fn session_events(sql: &[u8]) -> Option<Vec<SessionEvent>> {
    session_events_bound(sql, &|_| None)
}

/// [`session_events`] of a prepared statement run with parameters: `param(n)` is the text of `$n`, when it can
/// be read (a `set_config('TimeZone', $1, false)`, as Django sends with server-side binding, is followed).
pub fn session_events_bound(
    sql: &[u8],
    param: &dyn Fn(usize) -> Option<String>,
) -> Option<Vec<SessionEvent>> {
    let mut out = Vec::new();
    let mut set_config = false;
    for s in statements(sql) {
        let is = |i: usize, w: &str| s.get(i).is_some_and(|t| t.is(w));
        let name_at = |i: usize| s.get(i).and_then(|t| savepoint_name(t));
        if s.iter().any(|t| {
            t.is("set_config")
                || matches!(t, Tok::Quoted(q) if unquote(q).eq_ignore_ascii_case("set_config"))
        }) {
            set_config = true;
        }
        if is(0, "set") || is(0, "reset") || is(0, "discard") {
            out.extend(setting_change(&s)?.into_iter().map(SessionEvent::Change));
        } else if is(0, "savepoint") {
            out.push(SessionEvent::Savepoint(name_at(1)?));
        } else if is(0, "release") {
            let i = if is(1, "savepoint") { 2 } else { 1 };
            out.push(SessionEvent::Release(name_at(i)?));
        } else if is(0, "rollback") || is(0, "abort") {
            let mut i = 1;
            if is(i, "work") || is(i, "transaction") {
                i += 1;
            }
            if is(i, "to") {
                i += 1;
                if is(i, "savepoint") {
                    i += 1;
                }
                out.push(SessionEvent::RollbackTo(name_at(i)?));
            }
        }
    }
    if set_config {
        let text = std::str::from_utf8(sql).ok()?;
        out.extend(
            set_config_calls(text, param)?
                .into_iter()
                .map(SessionEvent::Change),
        );
    }
    Some(out)
}

/// A savepoint name as PostgreSQL folds it.
fn savepoint_name(t: &Tok<'_>) -> Option<String> {
    match t {
        Tok::Word(w) => Some(String::from_utf8_lossy(w).to_ascii_lowercase()),
        Tok::Quoted(q) => Some(unquote(q)),
        _ => None,
    }
}

fn unquote(q: &[u8]) -> String {
    let inner = q.get(1..q.len().saturating_sub(1)).unwrap_or_default();
    String::from_utf8_lossy(inner).replace("\"\"", "\"")
}

/// One SET / RESET / DISCARD statement's changes; `None` when pgsplit cannot follow it.
fn setting_change(s: &[Tok<'_>]) -> Option<Vec<SessionChange>> {
    let is = |i: usize, w: &str| s.get(i).is_some_and(|t| t.is(w));
    let change = if is(0, "discard") {
        if is(1, "all") {
            SessionChange::ResetAll
        } else if ["plans", "sequences", "temp", "temporary"]
            .iter()
            .any(|w| is(1, w))
        {
            return Some(Vec::new());
        } else {
            return None;
        }
    } else if is(0, "reset") {
        if s.len() < 2 {
            return None;
        }
        if is(1, "all") && s.len() == 2 {
            SessionChange::ResetAll
        } else if is(1, "time") && is(2, "zone") && s.len() == 3 {
            SessionChange::Reset("timezone".into())
        } else {
            SessionChange::Reset(setting_name(s.get(1..)?)?)
        }
    } else {
        let mut i = 1;
        if is(i, "local") || is(i, "transaction") || is(i, "constraints") {
            return Some(Vec::new());
        }
        if is(i, "session") {
            i += 1;
            if is(i, "characteristics") && is(i + 1, "as") && is(i + 2, "transaction") {
                return characteristics(s.get(i + 3..)?);
            }
        }
        let (name, value) = if is(i, "time") && is(i + 1, "zone") {
            ("timezone".to_string(), s.get(i + 2..)?)
        } else if is(i, "schema") {
            ("search_path".to_string(), s.get(i + 1..)?)
        } else if is(i, "names") {
            ("client_encoding".to_string(), s.get(i + 1..)?)
        } else if is(i, "xml") && is(i + 1, "option") {
            ("xmloption".to_string(), s.get(i + 2..)?)
        } else {
            let to = s
                .iter()
                .position(|t| t.is("to") || *t == Tok::Punct(b'='))?;
            (setting_name(s.get(i..to)?)?, s.get(to + 1..)?)
        };
        if value.is_empty() {
            return None;
        }
        let default = value.len() == 1
            && (value[0].is("default") || (name == "timezone" && value[0].is("local")));
        if default {
            SessionChange::Reset(name)
        } else {
            SessionChange::Set {
                name,
                value: join(value),
            }
        }
    };
    if let SessionChange::Set { name, .. } | SessionChange::Reset(name) = &change {
        if PINNED_SETTINGS.contains(&name.as_str()) {
            return None;
        }
    }
    Some(vec![change])
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION` modes (`ISOLATION LEVEL …`, `READ ONLY|WRITE`, `[NOT]
/// DEFERRABLE`, separated by commas or spaces) as the `default_transaction_*` settings they set; `None` for
/// anything else.
fn characteristics(modes: &[Tok<'_>]) -> Option<Vec<SessionChange>> {
    let is = |i: usize, w: &str| modes.get(i).is_some_and(|t| t.is(w));
    let set = |name: &str, value: &str| SessionChange::Set {
        name: name.into(),
        value: value.into(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < modes.len() {
        let (change, words) = if is(i, "isolation") && is(i + 1, "level") {
            let level = if is(i + 2, "serializable") {
                ("'serializable'", 3)
            } else if is(i + 2, "repeatable") && is(i + 3, "read") {
                ("'repeatable read'", 4)
            } else if is(i + 2, "read") && is(i + 3, "committed") {
                ("'read committed'", 4)
            } else if is(i + 2, "read") && is(i + 3, "uncommitted") {
                ("'read uncommitted'", 4)
            } else {
                return None;
            };
            (set("default_transaction_isolation", level.0), level.1)
        } else if is(i, "read") && is(i + 1, "only") {
            (set("default_transaction_read_only", "on"), 2)
        } else if is(i, "read") && is(i + 1, "write") {
            (set("default_transaction_read_only", "off"), 2)
        } else if is(i, "deferrable") {
            (set("default_transaction_deferrable", "on"), 1)
        } else if is(i, "not") && is(i + 1, "deferrable") {
            (set("default_transaction_deferrable", "off"), 2)
        } else {
            return None;
        };
        out.push(change);
        i += words;
        if modes.get(i) == Some(&Tok::Punct(b',')) && i + 1 < modes.len() {
            i += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A setting name from its tokens (`name`, `"Name"`, `ext.name`), lower case; `None` unless plain.
fn setting_name(tokens: &[Tok<'_>]) -> Option<String> {
    let mut name = String::new();
    for t in tokens {
        match t {
            Tok::Word(w) => name.push_str(&String::from_utf8_lossy(w).to_ascii_lowercase()),
            Tok::Quoted(q) => name.push_str(&unquote(q).to_ascii_lowercase()),
            Tok::Punct(b'.') => name.push('.'),
            _ => return None,
        }
    }
    is_plain_name(&name).then_some(name)
}

/// A setting name safe to splice into SQL unquoted.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The statement that sets `name` to `value` (a value as SQL, as [`SessionChange::Set`] holds it). It never
/// holds a comment, so statements joined line by line cannot swallow one another.
pub fn set_statement(name: &str, value: &str) -> String {
    if value.trim().is_empty() {
        // Nothing to set it to (a connection marked as holding the server's own value): its default.
        format!("RESET {name}")
    } else if name == "timezone" {
        format!("SET TIME ZONE {value}")
    } else {
        format!("SET {name} TO {value}")
    }
}

/// A string as an SQL literal.
pub fn quote_literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 3);
    s.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            _ => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// `set_config(name, value, false)` calls with literal arguments, or parameters `param` can read; `None` when a
/// call cannot be read that way.
fn set_config_calls(
    sql: &str,
    param: &dyn Fn(usize) -> Option<String>,
) -> Option<Vec<SessionChange>> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments, Value};
    if sql.len() > 8 * 1024 {
        return None; // too long to walk here: the client keeps its connections instead
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut out = Vec::new();
    let mut unknown = false;
    let _ = sqlparser::ast::visit_expressions(&statements, |e| {
        let Expr::Function(f) = e else {
            return ControlFlow::<()>::Continue(());
        };
        let name = f.name.0.last().and_then(|p| p.as_ident());
        if !name.is_some_and(|i| i.value.eq_ignore_ascii_case("set_config")) {
            return ControlFlow::Continue(());
        }
        let literal = |a: &FunctionArg| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
                Value::Placeholder(p) => p
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .and_then(param)
                    .map(Value::SingleQuotedString),
                value => Some(value.clone()),
            },
            _ => None,
        };
        let args: Vec<Option<Value>> = match &f.args {
            FunctionArguments::List(l) => l.args.iter().map(literal).collect(),
            _ => vec![None],
        };
        match args.as_slice() {
            [Some(Value::SingleQuotedString(name)), Some(Value::SingleQuotedString(value)), Some(Value::Boolean(false))]
                if is_plain_name(&name.to_ascii_lowercase())
                    && !PINNED_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) =>
            {
                out.push(SessionChange::Set {
                    name: name.to_ascii_lowercase(),
                    value: quote_literal(value),
                })
            }
            [_, _, Some(Value::Boolean(true))] => {}
            _ => unknown = true,
        }
        ControlFlow::Continue(())
    });
    (!unknown).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(sql: &str) -> Effects {
        effects(sql.as_bytes())
    }

    fn events(sql: &str) -> Option<Vec<SessionEvent>> {
        session_events(sql.as_bytes())
    }

    fn set(name: &str, value: &str) -> SessionEvent {
        SessionEvent::Change(SessionChange::Set {
            name: name.into(),
            value: value.into(),
        })
    }

    #[test]
    fn session_bound_state_pins_in_any_statement_and_spelling() {
        for sql in [
            "SELECT * INTO TEMP orders FROM orders WHERE false",
            "select * into temporary t from x",
            "CREATE TABLE pg_temp.x (a int)",
            "create or replace temp view v as select 1",
            "CREATE GLOBAL TEMPORARY TABLE t (a int)",
            "SELECT 1; LISTEN ch",
            "DECLARE c CURSOR WITH\nHOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
            "SET ROLE r1",
            "SELECT 1; SET ROLE r1",
            "SET SESSION AUTHORIZATION u",
            "RESET ROLE",
            "LOAD 'auto_explain'",
            "SELECT 1 AS a INTO LOCAL TEMP t",
            "SELECT 1 AS a INTO \"pg_temp\".t",
        ] {
            assert!(fx(sql).pins, "{sql}");
        }
        for sql in [
            "SELECT pg_advisory_lock(1)",
            "select 1; select pg_catalog.pg_try_advisory_lock(2)",
            "SELECT \"pg_advisory_lock\"(18)",
            "SELECT PG_ADVISORY_LOCK_SHARED(3)",
        ] {
            let e = fx(sql);
            assert!(e.locks && !e.pins && e.holds_session(), "{sql}");
        }
        for sql in [
            "SELECT pg_advisory_unlock(1)",
            "select pg_catalog.pg_advisory_unlock_shared(2)",
            "SELECT pg_advisory_unlock_all()",
        ] {
            let e = fx(sql);
            assert!(e.unlocks && !e.holds_session(), "{sql}");
        }
        assert!(!fx("SELECT 'pg_advisory_unlock(1)'").unlocks);
        assert!(fx("SELECT \"set_config\"('a', 'b', false)").session);
        assert!(fx("EXPLAIN ANALYZE SELECT set_config('a', 'b', false)").dirty);
        assert!(fx("SELECT * FROM U&\"t\\0061\"").dirty);
        assert!(fx("SELECT 1; LISTEN ch").listens);
        assert!(fx("LOAD 'x'").poisons);
        for sql in [
            "SELECT temp FROM weather",
            "SELECT 'pg_advisory_lock(1)', 'create temp table'",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock(1)",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
            "SET LOCAL ROLE r1",
            "-- SET ROLE r1\nSELECT 1",
            "DISCARD TEMP",
        ] {
            assert!(!fx(sql).holds_session(), "{sql}");
        }
    }

    #[test]
    fn only_reads_transaction_control_and_tracked_settings_are_clean() {
        for sql in [
            "SELECT * FROM t WHERE id = 1 FOR UPDATE",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "BEGIN; SELECT 1; COMMIT",
            "SET search_path TO a, b",
            "SHOW work_mem",
            "SAVEPOINT s; ROLLBACK TO SAVEPOINT s; RELEASE s",
            "COPY t TO STDOUT",
            "TABLE t",
        ] {
            assert!(!fx(sql).dirty, "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
            "SELECT 1; UPDATE t SET a = 1",
            "COPY t FROM STDIN",
            "DO $$BEGIN PERFORM 1; END$$",
            "CALL p()",
            "CREATE TABLE t (a int)",
            "TRUNCATE t",
            "VACUUM",
            "SELECT nextval('s')",
            "frobnicate",
        ] {
            assert!(fx(sql).dirty, "{sql}");
        }
    }

    #[test]
    fn settings_are_read_per_statement_without_comments() {
        assert_eq!(
            events("SET search_path TO tenant_a, public -- trailing comment"),
            Some(vec![set("search_path", "tenant_a , public")])
        );
        assert_eq!(
            events("set statement_timeout = '5s'; SET SESSION work_mem=64000"),
            Some(vec![
                set("statement_timeout", "'5s'"),
                set("work_mem", "64000")
            ])
        );
        assert_eq!(
            events("SET TIME ZONE 'UTC'"),
            Some(vec![set("timezone", "'UTC'")])
        );
        assert_eq!(
            events("SET TIME ZONE LOCAL"),
            Some(vec![SessionEvent::Change(SessionChange::Reset(
                "timezone".into()
            ))])
        );
        assert_eq!(
            events("SET \"Application_Name\" TO /* x */ 'a'"),
            Some(vec![set("application_name", "'a'")])
        );
        assert_eq!(
            events("SET myapp.tenant = 'x'"),
            Some(vec![set("myapp.tenant", "'x'")])
        );
        assert_eq!(
            events("SET work_mem TO DEFAULT"),
            Some(vec![SessionEvent::Change(SessionChange::Reset(
                "work_mem".into()
            ))])
        );
        assert_eq!(events("SET LOCAL search_path TO x"), Some(vec![]));
        assert_eq!(
            events("RESET ALL"),
            Some(vec![SessionEvent::Change(SessionChange::ResetAll)])
        );
        assert_eq!(
            events("DISCARD ALL"),
            Some(vec![SessionEvent::Change(SessionChange::ResetAll)])
        );
        assert_eq!(events("SET ROLE TO r1"), None);
        assert_eq!(
            events("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Some(vec![set("default_transaction_read_only", "on")])
        );
        assert_eq!(
            events(
                "set session characteristics as transaction isolation level repeatable read, \
                 read write not deferrable"
            ),
            Some(vec![
                set("default_transaction_isolation", "'repeatable read'"),
                set("default_transaction_read_only", "off"),
                set("default_transaction_deferrable", "off"),
            ])
        );
        assert_eq!(
            events("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE DEFERRABLE"),
            Some(vec![
                set("default_transaction_isolation", "'serializable'"),
                set("default_transaction_deferrable", "on"),
            ])
        );
        for sql in [
            "SET SESSION CHARACTERISTICS AS TRANSACTION",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY,",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SNAPSHOT",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ",
        ] {
            assert_eq!(events(sql), None, "{sql}");
        }
        assert_eq!(
            events("SELECT pg_catalog.set_config('search_path', '', false)"),
            Some(vec![set("search_path", "E''")])
        );
        assert_eq!(events("SELECT set_config('role', 'x', false)"), None);
        let utc = |n: usize| (n == 1).then(|| "UTC".to_string());
        assert_eq!(
            session_events_bound(b"SELECT set_config('TimeZone', $1, false)", &utc),
            Some(vec![set("timezone", "E'UTC'")])
        );
        assert_eq!(
            session_events_bound(b"SELECT set_config('TimeZone', $2, false)", &utc),
            None,
            "a parameter that cannot be read"
        );
        assert_eq!(events("SELECT set_config('TimeZone', $1, false)"), None);
        assert_eq!(events("SELECT set_config(name, 'x', false) FROM t"), None);
        assert_eq!(
            events("SAVEPOINT \"S\"; ROLLBACK TO s; ROLLBACK WORK TO SAVEPOINT s; RELEASE SAVEPOINT s; ROLLBACK"),
            Some(vec![
                SessionEvent::Savepoint("S".into()),
                SessionEvent::RollbackTo("s".into()),
                SessionEvent::RollbackTo("s".into()),
                SessionEvent::Release("s".into()),
            ])
        );
        assert_eq!(events("SELECT 1"), Some(vec![]));
    }

    #[test]
    fn multibyte_and_odd_input_never_panics() {
        for sql in [
            "SET x.y = '€€'",
            "SET €",
            "RESET",
            "SET",
            "SET a",
            "SET a TO",
            "SAVEPOINT",
            "ROLLBACK TO",
            "é",
        ] {
            let _ = events(sql);
            let _ = fx(sql);
        }
        assert_eq!(events("SET x.y = '€€'"), Some(vec![set("x.y", "'€€'")]));
    }
}
