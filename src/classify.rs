//! SQL text → where it may run. Fail closed: a statement is a read only when pgsplit is sure it writes nothing
//! and takes no lock (DESIGN.md §3); everything else, including anything the parser cannot read, is a write.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::RwLock;

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, TableFactor, TransactionAccessMode,
    TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Reads nothing but data: a replica may serve it.
    Read,
    /// Writes, locks, or pgsplit is unsure: the primary.
    Write,
}

/// Why a statement got its route; routing counters are kept per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A query that reads only.
    ReadOnlyQuery,
    /// INSERT/UPDATE/DELETE/MERGE, DDL and other writing statements.
    WriteStatement,
    /// BEGIN / START TRANSACTION (read-write).
    TransactionStart,
    /// BEGIN READ ONLY.
    ReadOnlyTransaction,
    /// COMMIT, ROLLBACK, SAVEPOINT … outside a held transaction.
    TransactionControl,
    /// SET, RESET, DISCARD.
    SessionState,
    /// FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    LockingClause,
    /// A call of a function that writes or locks.
    WriteFunction,
    /// A data-modifying WITH.
    DataModifyingCte,
    /// SELECT INTO creates a table.
    SelectInto,
    /// sqlparser could not parse it.
    Unparseable,
    /// A `/* pgsplit:primary */` or `/* pgsplit:replica */` comment.
    Hint,
}

impl Reason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [Reason; 12] = [
        Reason::ReadOnlyQuery,
        Reason::WriteStatement,
        Reason::TransactionStart,
        Reason::ReadOnlyTransaction,
        Reason::TransactionControl,
        Reason::SessionState,
        Reason::LockingClause,
        Reason::WriteFunction,
        Reason::DataModifyingCte,
        Reason::SelectInto,
        Reason::Unparseable,
        Reason::Hint,
    ];

    /// A stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ReadOnlyQuery => "read_only_query",
            Reason::WriteStatement => "write_statement",
            Reason::TransactionStart => "transaction_start",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::TransactionControl => "transaction_control",
            Reason::SessionState => "session_state",
            Reason::LockingClause => "locking_clause",
            Reason::WriteFunction => "write_function",
            Reason::DataModifyingCte => "data_modifying_cte",
            Reason::SelectInto => "select_into",
            Reason::Unparseable => "unparseable",
            Reason::Hint => "hint",
        }
    }
}

/// A routing decision for one statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Where it may run.
    pub route: Route,
    /// Why.
    pub reason: Reason,
    /// The statement leaves state on its server connection that later statements of the same client depend
    /// on (SQL-level PREPARE, LISTEN, WITH HOLD cursors, session advisory locks, temporary tables): the client
    /// must keep its server connections for the rest of its session.
    pub pins: bool,
    /// The statement may change session settings (SET, RESET, DISCARD, `set_config`): see [`session_changes`].
    pub session: bool,
}

impl Decision {
    const fn write(reason: Reason) -> Decision {
        Decision {
            route: Route::Write,
            reason,
            pins: false,
            session: false,
        }
    }
    const fn read(reason: Reason) -> Decision {
        Decision {
            route: Route::Read,
            reason,
            pins: false,
            session: false,
        }
    }
}

/// Functions that write, lock, or depend on session state a replica does not share.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "set_config",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "dblink_exec",
    "dblink",
    "pg_logical_emit_message",
    "pg_create_restore_point",
    "pg_switch_wal",
    "pg_promote",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_import_system_collations",
];

/// Name prefixes of functions that write or lock.
const WRITE_FUNCTION_PREFIXES: &[&str] = &[
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "pg_replication_origin",
];

/// Largest number of cached decisions; the cache is cleared when it fills.
const CACHE_CAPACITY: usize = 16_384;

/// Classifies statements, caching decisions by text.
pub struct Classifier {
    extra_write_functions: HashSet<String>,
    cache: RwLock<HashMap<Box<str>, Decision>>,
}

impl Classifier {
    /// A classifier that also treats `write_functions` (case-insensitive, unqualified names) as writes.
    pub fn new(write_functions: &[String]) -> Classifier {
        Classifier {
            extra_write_functions: write_functions
                .iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The decision for a statement text (one or several statements).
    pub fn classify(&self, sql: &str) -> Decision {
        if let Some(d) = fast_path(sql) {
            return d;
        }
        if let Ok(cache) = self.cache.read() {
            if let Some(d) = cache.get(sql) {
                return *d;
            }
        }
        let mut d = self.classify_uncached(sql);
        d.pins = pins_session(sql);
        d.session = contains_ignore_case(sql, "set_config");
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(sql.into(), d);
        }
        d
    }

    fn classify_uncached(&self, sql: &str) -> Decision {
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(s) => s,
            Err(_) => return Decision::write(Reason::Unparseable),
        };
        let mut result = Decision::read(Reason::ReadOnlyQuery);
        for s in &statements {
            let d = self.statement(s);
            if d.route == Route::Write {
                return d;
            }
            result = d;
        }
        result
    }

    fn statement(&self, s: &Statement) -> Decision {
        match s {
            Statement::Query(q) => self.query(q),
            Statement::Explain { statement, .. } => self.statement(statement),
            Statement::StartTransaction { modes, .. } => {
                let read_only = modes.iter().any(|m| {
                    matches!(
                        m,
                        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly)
                    )
                });
                if read_only {
                    Decision::read(Reason::ReadOnlyTransaction)
                } else {
                    Decision::write(Reason::TransactionStart)
                }
            }
            Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => {
                Decision::read(Reason::ReadOnlyQuery)
            }
            _ => Decision::write(Reason::WriteStatement),
        }
    }

    fn query(&self, q: &Query) -> Decision {
        let mut v = ReadCheck { classifier: self };
        match q.visit(&mut v) {
            ControlFlow::Break(reason) => Decision::write(reason),
            ControlFlow::Continue(()) => Decision::read(Reason::ReadOnlyQuery),
        }
    }

    fn is_write_function(&self, name: &ObjectName) -> bool {
        let Some(last) = name.0.last().and_then(|p| p.as_ident()) else {
            return true; // a computed name: unsure
        };
        let n = last.value.to_ascii_lowercase();
        WRITE_FUNCTIONS.contains(&n.as_str())
            || WRITE_FUNCTION_PREFIXES.iter().any(|p| n.starts_with(p))
            || self.extra_write_functions.contains(&n)
    }
}

/// Walks a query and stops at the first thing that makes it a write.
struct ReadCheck<'a> {
    classifier: &'a Classifier,
}

impl Visitor for ReadCheck<'_> {
    type Break = Reason;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<Reason> {
        if !q.locks.is_empty() {
            return ControlFlow::Break(Reason::LockingClause);
        }
        match q.body.as_ref() {
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                ControlFlow::Break(Reason::DataModifyingCte)
            }
            SetExpr::Select(s) if s.into.is_some() => ControlFlow::Break(Reason::SelectInto),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<Reason> {
        // Any statement nested in a query (INSERT in a CTE, …) writes.
        match s {
            Statement::Query(_) => ControlFlow::Continue(()),
            _ => ControlFlow::Break(Reason::DataModifyingCte),
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Reason> {
        if let Expr::Function(f) = e {
            if self.classifier.is_write_function(&f.name) {
                return ControlFlow::Break(Reason::WriteFunction);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<Reason> {
        let name = match t {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => name,
            TableFactor::Function { name, .. } => name,
            _ => return ControlFlow::Continue(()),
        };
        if self.classifier.is_write_function(name) {
            return ControlFlow::Break(Reason::WriteFunction);
        }
        ControlFlow::Continue(())
    }
}

/// Whether a statement leaves session-bound state on its server connection (see [`Decision::pins`]).
pub fn pins_session(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let (body, _) = strip_leading(&lower);
    let words: Vec<&str> = body.split_whitespace().take(4).collect();
    let starts = |w: &str| words.first() == Some(&w);
    starts("prepare")
        || starts("listen")
        || (starts("declare") && lower.contains("with hold"))
        || (starts("create")
            && matches!(
                words.get(1),
                Some(&"temp") | Some(&"temporary") | Some(&"local") | Some(&"global")
            ))
        || lower.contains("pg_advisory_lock")
        || lower.contains("pg_try_advisory_lock")
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// A change of session settings that pgsplit re-applies on the client's next server connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// `SET name TO value` (value as SQL text).
    Set { name: String, value: String },
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL` or `DISCARD ALL`.
    ResetAll,
}

/// The session-setting changes a statement makes; `None` when it changes session state in a way pgsplit cannot
/// track (the client then keeps its server connections). SET LOCAL, SET TRANSACTION and the like change nothing
/// beyond their transaction.
pub fn session_changes(sql: &str) -> Option<Vec<SessionChange>> {
    let (body, _) = strip_leading(sql);
    let body = body.trim_end().trim_end_matches(';').trim_end();
    let first = body.split_whitespace().next()?.to_ascii_lowercase();
    if first == "set" || first == "reset" || first == "discard" {
        if body.contains(';') {
            return None;
        }
        return simple_session_change(&first, body);
    }
    if !contains_ignore_case(sql, "set_config") {
        return Some(Vec::new());
    }
    set_config_calls(sql)
}

fn simple_session_change(first: &str, body: &str) -> Option<Vec<SessionChange>> {
    // The text after the n-th word.
    let rest_after = |n: usize| -> &str {
        let mut s = body;
        for _ in 0..n {
            s = s.trim_start();
            let end = s.find(char::is_whitespace).unwrap_or(s.len());
            s = &s[end..];
        }
        s.trim()
    };
    let word = |n: usize| {
        body.split_whitespace()
            .nth(n)
            .map(|w| w.to_ascii_lowercase())
    };
    let plain = |name: &str| -> Option<String> {
        let name = name.trim_matches('"').to_ascii_lowercase();
        crate::client::is_plain_name(&name).then_some(name)
    };
    let set = |name: &str, value: &str| {
        let value = value.trim();
        (!value.is_empty()).then(|| {
            vec![SessionChange::Set {
                name: name.to_string(),
                value: value.to_string(),
            }]
        })
    };
    match first {
        "discard" => match word(1)?.as_str() {
            "all" => Some(vec![SessionChange::ResetAll]),
            "plans" | "sequences" | "temp" | "temporary" => Some(Vec::new()),
            _ => None,
        },
        "reset" => {
            let w1 = word(1)?;
            let change = match w1.as_str() {
                "all" => SessionChange::ResetAll,
                "session" if word(2).as_deref() == Some("authorization") => {
                    SessionChange::Reset("session_authorization".into())
                }
                "time" if word(2).as_deref() == Some("zone") => {
                    SessionChange::Reset("timezone".into())
                }
                _ => SessionChange::Reset(plain(&w1)?),
            };
            Some(vec![change])
        }
        _ => {
            let mut n = 1;
            let mut w = word(n)?;
            if w == "local" || w == "transaction" || w == "constraints" {
                return Some(Vec::new());
            }
            if w == "session" {
                n += 1;
                w = word(n)?;
                match w.as_str() {
                    "characteristics" => return None,
                    "authorization" => return set("session_authorization", rest_after(n + 1)),
                    _ => {}
                }
            }
            if w == "time" && word(n + 1).as_deref() == Some("zone") {
                return set("timezone", rest_after(n + 2));
            }
            if w == "role" {
                return set("role", rest_after(n + 1));
            }
            // `name TO value`, `name = value`, `name=value`.
            let tail = rest_after(n - 1);
            let i = tail.find(|c: char| c == '=' || c.is_whitespace())?;
            let (name, after) = tail.split_at(i);
            let after = after.trim_start();
            let value = if let Some(v) = after.strip_prefix('=') {
                v
            } else if after.len() > 2
                && after[..2].eq_ignore_ascii_case("to")
                && after[2..].starts_with(char::is_whitespace)
            {
                &after[2..]
            } else {
                return None;
            };
            set(&plain(name)?, value)
        }
    }
}

/// `set_config(name, value, false)` calls with literal arguments; `None` when a call cannot be read that way.
fn set_config_calls(sql: &str) -> Option<Vec<SessionChange>> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments, Value};
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
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => Some(v.value.clone()),
            _ => None,
        };
        let args: Vec<Option<Value>> = match &f.args {
            FunctionArguments::List(l) => l.args.iter().map(literal).collect(),
            _ => vec![None],
        };
        match args.as_slice() {
            [Some(Value::SingleQuotedString(name)), Some(Value::SingleQuotedString(value)), Some(Value::Boolean(false))]
                if crate::client::is_plain_name(&name.to_ascii_lowercase()) =>
            {
                out.push(SessionChange::Set {
                    name: name.to_ascii_lowercase(),
                    value: crate::client::quote_literal(value),
                })
            }
            [_, _, Some(Value::Boolean(true))] => {}
            _ => unknown = true,
        }
        ControlFlow::Continue(())
    });
    (!unknown).then_some(out)
}

/// Skips leading whitespace and comments; returns the rest and any `pgsplit:` hint found in a leading comment.
fn strip_leading(sql: &str) -> (&str, Option<Route>) {
    let mut s = sql;
    let mut hint = None;
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if let Some(rest) = s.strip_prefix("/*") {
            let Some(end) = rest.find("*/") else {
                return ("", hint);
            };
            let body = rest[..end].trim();
            match body {
                "pgsplit:primary" => hint = Some(Route::Write),
                "pgsplit:replica" => hint = Some(Route::Read),
                _ => {}
            }
            s = &rest[end + 2..];
        } else {
            return (s, hint);
        }
    }
}

/// Decisions that need no parser: hints and the trivially-classified statements (one statement only).
fn fast_path(sql: &str) -> Option<Decision> {
    let (body, hint) = strip_leading(sql);
    if let Some(route) = hint {
        return Some(Decision {
            route,
            reason: Reason::Hint,
            pins: false,
            session: false,
        });
    }
    let trimmed = body.trim_end().trim_end_matches(';');
    if trimmed.contains(';') {
        return None;
    }
    let word_end = trimmed
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(trimmed.len());
    let first = &trimmed[..word_end];
    let is = |w: &str| first.eq_ignore_ascii_case(w);
    if is("commit")
        || is("end")
        || is("rollback")
        || is("abort")
        || is("savepoint")
        || is("release")
    {
        Some(Decision::write(Reason::TransactionControl))
    } else if is("set") || is("reset") || is("discard") {
        Some(Decision {
            session: true,
            ..Decision::write(Reason::SessionState)
        })
    } else if is("table") {
        // `TABLE name` (sqlparser does not parse it): a read when the rest is just a relation name.
        let rest = trimmed[word_end..].trim();
        let plain = !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.\" *".contains(&b));
        Some(if plain {
            Decision::read(Reason::ReadOnlyQuery)
        } else {
            Decision::write(Reason::Unparseable)
        })
    } else if is("show") {
        Some(Decision::read(Reason::ReadOnlyQuery))
    } else if is("begin") || is("start") {
        // Read-only only when it says so and nothing else is odd about it; the parser decides.
        let upper = trimmed.to_ascii_uppercase();
        if upper.contains("READ ONLY") {
            None
        } else {
            Some(Decision::write(Reason::TransactionStart))
        }
    } else if is("insert") || is("update") || is("delete") || is("drop") || is("alter") {
        Some(Decision::write(Reason::WriteStatement))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(sql: &str) -> Route {
        Classifier::new(&["audit_log".to_string()])
            .classify(sql)
            .route
    }

    #[test]
    fn reads() {
        for sql in [
            "SELECT 1",
            "select * from t where id = 1",
            "SELECT count(*) FROM a JOIN b ON a.id = b.a_id",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW search_path",
            "EXPLAIN SELECT * FROM t",
            "SELECT 1; SELECT 2",
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "/* pgsplit:replica */ SELECT nextval('s')",
            "-- comment\nSELECT 1",
        ] {
            assert_eq!(route(sql), Route::Read, "{sql}");
        }
    }

    #[test]
    fn writes() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "CREATE TABLE t (a int)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE NOWAIT",
            "SELECT * FROM t FOR SHARE SKIP LOCKED",
            "SELECT * FROM t FOR KEY SHARE OF t",
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "WITH a AS (WITH d AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM d) SELECT * FROM a",
            "SELECT * INTO t2 FROM t",
            "SELECT nextval('s')",
            "SELECT public.NEXTVAL('s')",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT * FROM nextval('s')",
            "SELECT audit_log('x')",
            "EXPLAIN ANALYZE DELETE FROM t",
            "SELECT 1; DELETE FROM t",
            "BEGIN",
            "START TRANSACTION",
            "BEGIN; SELECT 1; COMMIT",
            "DO $$ BEGIN END $$",
            "VACUUM (VERBOSE) t",
            "COMMIT",
            "SET search_path TO x",
            "/* pgsplit:primary */ SELECT 1",
            "this is not sql",
            "LOCK TABLE t",
            "COPY t FROM STDIN",
        ] {
            assert_eq!(route(sql), Route::Write, "{sql}");
        }
    }

    #[test]
    fn cache_gives_same_answer() {
        let c = Classifier::new(&[]);
        let a = c.classify("SELECT * FROM t WHERE id = 1");
        let b = c.classify("SELECT * FROM t WHERE id = 1");
        assert_eq!(a, b);
        assert_eq!(a.route, Route::Read);
    }
}
