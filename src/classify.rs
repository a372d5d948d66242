//! SQL text → where it may run. Fail closed: a statement is a read only when pgsplit is sure it writes nothing
//! and takes no lock (DESIGN.md §3); everything else, including anything the parser cannot read, is a write.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, TableFactor, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::sql::lexer::block_comment_end;
use crate::sql::Effects;

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
    /// Reads an UNLOGGED table, which a hot standby cannot read.
    UnloggedTable,
}

impl Reason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [Reason; 13] = [
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
        Reason::UnloggedTable,
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
            Reason::UnloggedTable => "unlogged_table",
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
    /// What it may leave on its server connection (pins, resets, tracked settings). `effects.dirty` also
    /// holds when it calls a function pgsplit cannot see into (user-defined, or unknown).
    pub effects: Effects,
}

impl Decision {
    const fn write(reason: Reason) -> Decision {
        Decision {
            route: Route::Write,
            reason,
            effects: Effects::NONE,
        }
    }
    const fn read(reason: Reason) -> Decision {
        Decision {
            route: Route::Read,
            reason,
            effects: Effects::NONE,
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
    "lowrite",
    "loread",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_log_backend_memory_contexts",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
];

/// Name prefixes of functions that write or lock.
const WRITE_FUNCTION_PREFIXES: &[&str] = &[
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "pg_replication_origin",
    "pg_stat_reset",
    "pg_replication_slot_",
    "pg_logical_slot_",
];

/// Largest number of cached decisions; the cache is cleared when it fills.
const CACHE_CAPACITY: usize = 8_192;
/// Longest text whose decision is cached.
const MAX_CACHED_BYTES: usize = 4 * 1024;
/// Longest text classified on the calling thread's stack.
pub const SMALL_STACK_BYTES: usize = 8 * 1024;
/// Longest text parsed at all; longer ones are writes.
const MAX_PARSED_BYTES: usize = 1024 * 1024;
/// Stack for classifying long texts (reserved, touched only as deep as the tree goes).
const DEEP_STACK_BYTES: usize = 1024 * 1024 * 1024;

/// Classifies statements, caching decisions by text.
pub struct Classifier {
    /// Configured write functions, as given (lower case) and by their last name part.
    extra_write_functions: HashSet<String>,
    extra_write_names: HashSet<String>,
    catalog: RwLock<Option<Arc<FunctionCatalog>>>,
    /// Set when a statement called a function the catalog does not know; the loader then reloads it.
    unknown_function: AtomicBool,
    /// `volatile_functions = "catalog"`: until the catalog is read, every function call is a write.
    catalog_required: bool,
    /// Wakes the catalog loader.
    pub refresh: tokio::sync::Notify,
    hits: AtomicU64,
    misses: AtomicU64,
    cache: RwLock<HashMap<Box<str>, Decision>>,
}

/// Functions as the primary's `pg_proc` lists them.
#[derive(Debug, Default)]
pub struct FunctionCatalog {
    known: HashSet<String>,
    volatile: HashSet<String>,
    /// Names of non-built-in functions of any volatility (they may change session state).
    user: HashSet<String>,
    /// UNLOGGED tables, by `schema.name` and by name.
    unlogged: HashSet<String>,
}

/// One `pg_proc` row as the catalog reads it.
#[derive(Debug, Clone)]
pub struct FunctionRow {
    /// Schema name.
    pub schema: String,
    /// Function name.
    pub name: String,
    /// Not built in (OID at or above 16384).
    pub user_defined: bool,
    /// VOLATILE.
    pub volatile: bool,
}

impl FunctionCatalog {
    /// Builds it from `pg_proc` rows.
    pub fn new(rows: impl IntoIterator<Item = FunctionRow>) -> FunctionCatalog {
        let mut c = FunctionCatalog::default();
        for r in rows {
            let (schema, name) = (r.schema.to_ascii_lowercase(), r.name.to_ascii_lowercase());
            if r.user_defined && r.volatile {
                c.volatile.insert(format!("{schema}.{name}"));
                c.volatile.insert(name.clone());
            }
            if r.user_defined {
                c.user.insert(name.clone());
            }
            c.known.insert(name);
        }
        c
    }

    /// Adds the primary's UNLOGGED tables, as (schema, name) pairs.
    pub fn with_unlogged(
        mut self,
        tables: impl IntoIterator<Item = (String, String)>,
    ) -> FunctionCatalog {
        for (schema, name) in tables {
            let (schema, name) = (schema.to_ascii_lowercase(), name.to_ascii_lowercase());
            self.unlogged.insert(format!("{schema}.{name}"));
            self.unlogged.insert(name);
        }
        self
    }

    /// Number of distinct function names.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether it lists no function.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// Function-call syntax that is not a `pg_proc` function (never "unknown").
const SYNTAX_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "system_user",
    "user",
    "current_catalog",
    "current_schema",
    "grouping",
    "row",
];

impl Classifier {
    /// A classifier that also treats `write_functions` (case-insensitive; `name` or `schema.name`) as writes.
    pub fn new(write_functions: &[String]) -> Classifier {
        let extra: HashSet<String> = write_functions
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect();
        let names = extra
            .iter()
            .map(|f| f.rsplit('.').next().unwrap_or(f).to_string())
            .collect();
        Classifier {
            extra_write_functions: extra,
            extra_write_names: names,
            catalog: RwLock::new(None),
            unknown_function: AtomicBool::new(false),
            catalog_required: false,
            refresh: tokio::sync::Notify::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Requires the primary's catalog (`volatile_functions = "catalog"`): until it has been read, every call of a
    /// function outside the SQL syntax list is a write.
    pub fn require_catalog(mut self) -> Classifier {
        self.catalog_required = true;
        self
    }

    /// Installs what the catalog says about functions (`volatile_functions = "catalog"`), and forgets cached
    /// decisions made without it.
    pub fn set_catalog(&self, catalog: FunctionCatalog) {
        if let Ok(mut c) = self.catalog.write() {
            *c = Some(Arc::new(catalog));
        }
        self.unknown_function.store(false, Ordering::Relaxed);
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    /// Decision cache hits and misses so far.
    pub fn cache_counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Asks the catalog loader to read the catalog again.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Whether a statement met a function the catalog does not know since the last load.
    pub fn met_unknown_function(&self) -> bool {
        self.unknown_function.load(Ordering::Relaxed)
    }

    /// The decision for a statement text (one or several statements).
    pub fn classify(&self, sql: &str) -> Decision {
        if let Some(mut d) = fast_path(sql) {
            if d.reason == Reason::Hint {
                // The hint decides the route; what the statement calls still decides its effects.
                return Decision {
                    route: d.route,
                    reason: Reason::Hint,
                    ..self.classify_text(sql)
                };
            }
            d.effects = crate::sql::effects(sql.as_bytes());
            return d;
        }
        self.classify_text(sql)
    }

    /// Classification by the parser (cached), for texts the fast path does not answer.
    fn classify_text(&self, sql: &str) -> Decision {
        if sql.len() > MAX_PARSED_BYTES {
            // Too large to parse safely: fail closed.
            let mut effects = crate::sql::effects(sql.as_bytes());
            effects.dirty = true;
            return Decision {
                effects,
                ..Decision::write(Reason::Unparseable)
            };
        }
        // Keyed by the text with literals blanked out: `… WHERE id = 17` and `… = 18` share one entry (no routing
        // rule depends on a literal's value). Long texts, and texts whose literals or comments do not close, are
        // not cached.
        let key = if sql.len() <= MAX_CACHED_BYTES {
            normalize_literals(sql)
        } else {
            None
        };
        if let (Some(k), Ok(cache)) = (&key, self.cache.read()) {
            if let Some(d) = cache.get(k.as_str()) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return *d;
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let mut d = if sql.len() <= SMALL_STACK_BYTES {
            self.classify_uncached(sql)
        } else {
            self.classify_deep(sql)
        };
        if d.route == Route::Write && contains_ignore_case(sql, "unlogged") {
            // DDL that may create an unlogged table: its reads must learn to go to the primary.
            self.request_refresh();
        }
        let opaque = d.effects.dirty;
        d.effects = crate::sql::effects(sql.as_bytes());
        d.effects.dirty |= opaque;
        if let (Some(k), Ok(mut cache)) = (key, self.cache.write()) {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(k.into_boxed_str(), d);
        }
        d
    }

    /// Classifies a long text on a thread with a large stack: parsing is protected against deep recursion, but
    /// walking and dropping a deep expression tree (`1+1+…`, long OR chains) is not.
    fn classify_deep(&self, sql: &str) -> Decision {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("pgsplit-classify".into())
                .stack_size(DEEP_STACK_BYTES)
                .spawn_scoped(scope, || self.classify_uncached(sql))
                .ok()
                .and_then(|t| t.join().ok())
        })
        .unwrap_or(Decision::write(Reason::Unparseable))
    }

    fn classify_uncached(&self, sql: &str) -> Decision {
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(s) => s,
            // Unreadable: a write, and whatever it calls is unknown (`effects.dirty`).
            Err(_) => {
                let mut d = Decision::write(Reason::Unparseable);
                d.effects.dirty = true;
                return d;
            }
        };
        let mut result = Decision::read(Reason::ReadOnlyQuery);
        for s in &statements {
            let d = self.statement(s);
            if d.route == Route::Write {
                result = d;
                break;
            }
            result = d;
        }
        // Carried to `classify`, which merges it into the lexical effects.
        result.effects.dirty = self.calls_opaque_function(&statements);
        result
    }

    /// Whether a statement calls a function whose effects on the session pgsplit cannot see: a user-defined
    /// one, or (until the catalog says otherwise, or without a catalog) any one that is not plain syntax.
    fn calls_opaque_function(&self, statements: &[Statement]) -> bool {
        let catalog = self.catalog.read().ok().and_then(|c| c.clone());
        let opaque = |name: &ObjectName| {
            let Some(last) = name.0.last().and_then(|p| p.as_ident()) else {
                return true;
            };
            let n = last.value.to_ascii_lowercase();
            if SYNTAX_FUNCTIONS.contains(&n.as_str()) {
                return false;
            }
            match &catalog {
                Some(c) if c.known.contains(&n) => c.user.contains(&n),
                _ => {
                    // Created since the catalog was read? Have it read again.
                    self.unknown_function.store(true, Ordering::Relaxed);
                    self.refresh.notify_one();
                    true
                }
            }
        };
        let mut v = OpaqueCalls { opaque };
        statements.iter().any(|s| s.visit(&mut v).is_break())
    }

    fn statement(&self, s: &Statement) -> Decision {
        match s {
            Statement::Query(q) => self.query(q),
            Statement::Explain { statement, .. } => self.statement(statement),
            Statement::StartTransaction { modes, .. } => {
                // The last access mode wins; a SERIALIZABLE transaction cannot run on a hot standby.
                let read_only = modes.iter().rev().find_map(|m| match m {
                    TransactionMode::AccessMode(a) => Some(*a == TransactionAccessMode::ReadOnly),
                    _ => None,
                }) == Some(true);
                let serializable = modes.iter().any(|m| {
                    matches!(
                        m,
                        TransactionMode::IsolationLevel(TransactionIsolationLevel::Serializable)
                    )
                });
                if read_only && !serializable {
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
        let mut parts = Vec::with_capacity(name.0.len());
        for p in &name.0 {
            match p.as_ident() {
                Some(i) => parts.push(i.value.to_ascii_lowercase()),
                None => return true, // a computed name: unsure
            }
        }
        let Some(n) = parts.last() else { return true };
        let qualified = parts.join(".");
        if WRITE_FUNCTIONS.contains(&n.as_str())
            || WRITE_FUNCTION_PREFIXES.iter().any(|p| n.starts_with(p))
            || self.extra_write_names.contains(n)
            || self.extra_write_functions.contains(&qualified)
        {
            return true;
        }
        if !self.catalog_required {
            return false;
        }
        let catalog = self.catalog.read().ok().and_then(|c| c.clone());
        let volatile = catalog
            .as_ref()
            .is_some_and(|c| c.volatile.contains(n) || c.volatile.contains(&qualified));
        if volatile {
            return true;
        }
        let known = catalog.as_ref().is_some_and(|c| c.known.contains(n));
        if !known && !SYNTAX_FUNCTIONS.contains(&n.as_str()) {
            // Not in the catalog (created since it was read?): fail closed and have it read again.
            self.unknown_function.store(true, Ordering::Relaxed);
            self.refresh.notify_one();
            return true;
        }
        false
    }
}

impl Classifier {
    /// Whether a relation name is one of the primary's UNLOGGED tables (by `schema.name` when qualified, by
    /// name alone otherwise: any schema's unlogged table of that name counts, failing towards the primary).
    fn is_unlogged(&self, name: &ObjectName) -> bool {
        let Ok(catalog) = self.catalog.read() else {
            return false;
        };
        let Some(c) = catalog.as_ref() else {
            return false;
        };
        if c.unlogged.is_empty() {
            return false;
        }
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase()))
            .collect();
        let key = match parts.as_slice() {
            [n] => n.clone(),
            [.., s, n] => format!("{s}.{n}"),
            [] => return false,
        };
        c.unlogged.contains(&key)
    }
}

/// Walks statements and stops at the first call of an opaque function.
struct OpaqueCalls<F> {
    opaque: F,
}

impl<F: Fn(&ObjectName) -> bool> Visitor for OpaqueCalls<F> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) if (self.opaque)(&f.name) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. }
                if (self.opaque)(name) =>
            {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
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
                name, args: None, ..
            } => {
                if self.classifier.is_unlogged(name) {
                    return ControlFlow::Break(Reason::UnloggedTable);
                }
                return ControlFlow::Continue(());
            }
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

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `SET pgsplit.route TO primary | replica | auto` (or `=`): `Some(Some(Write))` for primary,
/// `Some(Some(Read))` for replica, `Some(None)` for auto; `None` when the statement is something else.
pub fn route_setting(sql: &str) -> Option<Option<Route>> {
    let (body, _) = strip_leading(sql);
    let lower = body
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .to_ascii_lowercase();
    let rest = lower.strip_prefix("set")?.trim_start();
    let rest = rest.strip_prefix("session").map_or(rest, str::trim_start);
    let rest = rest.strip_prefix("pgsplit.route")?.trim_start();
    let value = rest
        .strip_prefix("to")
        .or_else(|| rest.strip_prefix('='))?
        .trim();
    match value.trim_matches(|c| c == '\'' || c == '"') {
        "primary" => Some(Some(Route::Write)),
        "replica" => Some(Some(Route::Read)),
        "auto" | "default" => Some(None),
        _ => None,
    }
}

/// Whether `sql` is one BEGIN / START TRANSACTION that pgsplit may answer itself and send later with the
/// transaction's first statement: exactly PostgreSQL's grammar (`BEGIN [WORK | TRANSACTION]`, `START
/// TRANSACTION`, then modes separated by commas or spaces), with only the modes that cannot fail on any server —
/// `ISOLATION LEVEL READ COMMITTED | REPEATABLE READ | READ UNCOMMITTED` and `READ WRITE`. Never READ ONLY (it
/// picks a replica at once), SERIALIZABLE or DEFERRABLE (a hot standby refuses them), a hint, or anything
/// PostgreSQL would reject (`BEGIN DEFERRED`): those go to a server as they are.
pub fn is_plain_begin(sql: &str) -> bool {
    use crate::sql::lexer::{Lexer, Tok};
    let (_, hint) = strip_leading(sql);
    if hint.is_some() {
        return false;
    }
    let mut toks: Vec<Tok<'_>> = Lexer::new(sql.as_bytes()).collect();
    if toks.last() == Some(&Tok::Punct(b';')) {
        toks.pop();
    }
    let is = |i: usize, w: &str| toks.get(i).is_some_and(|t| t.is(w));
    let mut i = if is(0, "begin") {
        if is(1, "work") || is(1, "transaction") {
            2
        } else {
            1
        }
    } else if is(0, "start") && is(1, "transaction") {
        2
    } else {
        return false;
    };
    let mut first = true;
    while i < toks.len() {
        if !first && toks.get(i) == Some(&Tok::Punct(b',')) {
            i += 1;
            if i == toks.len() {
                return false;
            }
        }
        first = false;
        if is(i, "isolation") && is(i + 1, "level") {
            i += 2;
            if (is(i, "read") && (is(i + 1, "committed") || is(i + 1, "uncommitted")))
                || (is(i, "repeatable") && is(i + 1, "read"))
            {
                i += 2;
            } else {
                return false;
            }
        } else if is(i, "read") && is(i + 1, "write") {
            i += 2;
        } else {
            return false;
        }
    }
    true
}

/// For a single COMMIT/END/ROLLBACK/ABORT (no savepoint, no AND CHAIN): the CommandComplete tag Postgres sends.
pub fn transaction_end(sql: &str) -> Option<&'static str> {
    let (body, _) = strip_leading(sql);
    let lower = body
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    let tag = match words.next()? {
        "commit" | "end" => "COMMIT",
        "rollback" | "abort" => "ROLLBACK",
        _ => return None,
    };
    match words.next() {
        None => Some(tag),
        Some("work") | Some("transaction") if words.next().is_none() => Some(tag),
        _ => None,
    }
}

/// Whether `sql` is `SET TRANSACTION … READ ONLY` (which, first in a transaction, lets it run on a replica).
pub fn is_set_transaction_read_only(sql: &str) -> bool {
    let (body, _) = strip_leading(sql);
    let lower = body
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    words.len() >= 4
        && words[0] == "set"
        && words[1] == "transaction"
        && !lower.contains(';')
        && lower.contains("read only")
        && !lower.contains("read write")
        && !lower.contains("serializable")
}

/// `sql` with string and numeric literals replaced by `?` (comments, identifiers and `$n` parameters kept), for
/// use as a cache key; `None` when a literal, quoted identifier or comment does not close (no safe key).
pub fn normalize_literals(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut copied = 0; // b[copied..i] is still to be copied
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let literal_end = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n' || x == b'\r')
                    .map_or(b.len(), |p| i + p);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(b, i)?;
                continue;
            }
            b'"' => {
                i = i + 1 + b[i + 1..].iter().position(|&x| x == b'"')? + 1;
                continue;
            }
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !ident(b[i - 2]));
                Some(string_end(b, i, escapes)?)
            }
            b'$' if i == 0 || !ident(b[i - 1]) => {
                // $n parameters stay; $tag$…$tag$ (tag letters may be non-ASCII) is a literal.
                let n = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80));
                match n {
                    Some(n)
                        if b[i + 1 + n] == b'$'
                            && !b.get(i + 1).is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &sql[i..i + n + 2];
                        Some(i + n + 2 + sql[i + n + 2..].find(tag)? + tag.len())
                    }
                    _ => None,
                }
            }
            b'0'..=b'9' if i == 0 || !ident(b[i - 1]) => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_')
                {
                    j += 1;
                }
                Some(j)
            }
            _ => None,
        };
        match literal_end {
            Some(end) => {
                out.push_str(&sql[copied..i]);
                out.push('?');
                i = end.max(i + 1);
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(sql.get(copied..)?);
    Some(out)
}

/// The end (exclusive) of the quoted string starting at `start`; `None` when it does not close.
fn string_end(b: &[u8], start: usize, backslash_escapes: bool) -> Option<usize> {
    let mut j = start + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if backslash_escapes => j += 2,
            b'\'' if b.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Skips leading whitespace and comments; returns the rest and any `pgsplit:` hint found in a leading comment.
fn strip_leading(sql: &str) -> (&str, Option<Route>) {
    let mut s = sql;
    let mut hint = None;
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            // A line comment ends at a newline or a carriage return, as in PostgreSQL's lexer.
            s = rest.find(['\n', '\r']).map_or("", |i| &rest[i + 1..]);
        } else if s.starts_with("/*") {
            let Some(end) = block_comment_end(s.as_bytes(), 0) else {
                return ("", hint);
            };
            match s[2..end - 2].trim() {
                "pgsplit:primary" => hint = Some(Route::Write),
                "pgsplit:replica" => hint = Some(Route::Read),
                _ => {}
            }
            s = &s[end..];
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
            effects: Effects::NONE,
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
    } else if is("set") && is_set_transaction_read_only(trimmed) {
        Some(Decision::read(Reason::ReadOnlyTransaction))
    } else if is("set") || is("reset") || is("discard") {
        Some(Decision::write(Reason::SessionState))
    } else if is("table") {
        // `TABLE name` (sqlparser does not parse it): a read when the rest is just a relation name.
        // `TABLE [ONLY] name [*]`, nothing more (no locking clause or anything else).
        let words: Vec<&str> = trimmed[word_end..].split_whitespace().collect();
        let name_ok = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.\"".contains(&b))
        };
        let plain = match words.as_slice() {
            [name] | [name, "*"] => name_ok(name),
            [only, name] | [only, name, "*"] => only.eq_ignore_ascii_case("only") && name_ok(name),
            _ => false,
        };
        Some(if plain {
            Decision::read(Reason::ReadOnlyQuery)
        } else {
            Decision::write(Reason::Unparseable)
        })
    } else if is("show") {
        Some(Decision::read(Reason::ReadOnlyQuery))
    } else if is("begin") || is("start") {
        // Read-only when it says READ ONLY, never READ WRITE (the last mode wins: the parser decides those) nor
        // SERIALIZABLE (a hot standby refuses it), and holds nothing but transaction-mode words.
        let lower = trimmed.to_ascii_lowercase();
        if !lower.contains("read only") {
            return Some(Decision::write(Reason::TransactionStart));
        }
        const MODE_WORDS: &[&str] = &[
            "begin",
            "start",
            "transaction",
            "work",
            "isolation",
            "level",
            "read",
            "only",
            "committed",
            "uncommitted",
            "repeatable",
            "deferrable",
            "not",
        ];
        let plain = lower
            .split(|c: char| c.is_whitespace() || c == ',')
            .all(|w| w.is_empty() || MODE_WORDS.contains(&w));
        if plain && !lower.contains("read write") {
            Some(Decision::read(Reason::ReadOnlyTransaction))
        } else {
            None
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
    fn local_answers_are_recognized() {
        assert_eq!(
            route_setting("SET pgsplit.route TO primary"),
            Some(Some(Route::Write))
        );
        assert_eq!(
            route_setting("set pgsplit.route = 'replica';"),
            Some(Some(Route::Read))
        );
        assert_eq!(route_setting("SET pgsplit.route TO auto"), Some(None));
        assert_eq!(route_setting("SET search_path TO x"), None);
        assert!(is_plain_begin("BEGIN"));
        assert!(is_plain_begin("begin work;"));
        assert!(is_plain_begin(
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE"
        ));
        assert!(is_plain_begin(
            "begin /* c */ isolation level read committed read write"
        ));
        for sql in [
            "begin isolation level serializable;",
            "BEGIN READ ONLY",
            "BEGIN; SELECT 1",
            "BEGIN DEFERRED",
            "BEGIN IMMEDIATE",
            "BEGIN NOT DEFERRABLE",
            "BEGIN ISOLATION LEVEL",
            "BEGIN ISOLATION LEVEL REPEATABLE",
            "BEGIN READ WRITE,",
            "BEGIN , READ WRITE",
            "START",
            "/* pgsplit:primary */ BEGIN",
        ] {
            assert!(!is_plain_begin(sql), "{sql}");
        }
        assert_eq!(transaction_end("COMMIT"), Some("COMMIT"));
        assert_eq!(transaction_end("end work"), Some("COMMIT"));
        assert_eq!(transaction_end("ROLLBACK TO SAVEPOINT a"), None);
        assert!(is_set_transaction_read_only(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        ));
        assert!(!is_set_transaction_read_only(
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY"
        ));
    }

    #[test]
    fn unlogged_tables_and_side_effect_builtins_are_writes() {
        let c = Classifier::new(&[]);
        c.set_catalog(FunctionCatalog::new([]).with_unlogged([("public".into(), "cache".into())]));
        assert_eq!(c.classify("SELECT * FROM cache").route, Route::Write);
        assert_eq!(
            c.classify("SELECT * FROM public.cache c JOIN t ON true")
                .reason,
            Reason::UnloggedTable
        );
        assert_eq!(c.classify("SELECT * FROM other.cache").route, Route::Read);
        assert_eq!(c.classify("SELECT * FROM t").route, Route::Read);
        for f in [
            "pg_terminate_backend(1)",
            "pg_cancel_backend(1)",
            "pg_reload_conf()",
            "pg_stat_reset()",
            "pg_stat_reset_shared('bgwriter')",
            "pg_rotate_logfile()",
            "pg_replication_slot_advance('s', '0/0')",
            "pg_logical_slot_get_changes('s', NULL, NULL)",
        ] {
            assert_eq!(
                c.classify(&format!("SELECT {f}")).route,
                Route::Write,
                "{f}"
            );
        }
        assert_eq!(c.classify("SELECT pg_backend_pid()").route, Route::Read);
    }

    #[test]
    fn user_functions_and_unknown_ones_make_the_connection_dirty() {
        let c = Classifier::new(&[]);
        assert!(c.classify("SELECT now()").effects.dirty, "no catalog yet");
        c.set_catalog(FunctionCatalog::new([
            FunctionRow {
                schema: "pg_catalog".into(),
                name: "now".into(),
                user_defined: false,
                volatile: false,
            },
            FunctionRow {
                schema: "public".into(),
                name: "pure".into(),
                user_defined: true,
                volatile: false,
            },
        ]));
        assert!(!c.classify("SELECT now() FROM t").effects.dirty);
        assert!(c.classify("SELECT pure(1)").effects.dirty);
        assert!(
            c.classify("SELECT * FROM t WHERE a = pure(1)")
                .effects
                .dirty
        );
        assert!(c.classify("SELECT unheard_of()").effects.dirty);
        assert!(!c.classify("SELECT COALESCE(a, 1) FROM t").effects.dirty);
    }

    #[test]
    fn catalog_volatility_routes_user_functions() {
        let c = Classifier::new(&["billing.charge".to_string()]).require_catalog();
        assert_eq!(
            c.classify("SELECT count(*) FROM t").route,
            Route::Write,
            "no catalog yet: fail closed"
        );
        let row = |schema: &str, name: &str, user_defined: bool, volatile: bool| FunctionRow {
            schema: schema.into(),
            name: name.into(),
            user_defined,
            volatile,
        };
        c.set_catalog(FunctionCatalog::new([
            row("pg_catalog", "count", false, false),
            row("public", "record_visit", true, true),
            row("public", "pure", true, false),
        ]));
        assert_eq!(c.classify("SELECT count(*) FROM t").route, Route::Read);
        assert_eq!(c.classify("SELECT pure(1)").route, Route::Read);
        assert_eq!(c.classify("SELECT record_visit('x')").route, Route::Write);
        assert_eq!(
            c.classify("SELECT public.\"record_visit\"('x')").route,
            Route::Write
        );
        assert_eq!(c.classify("SELECT unheard_of(1)").route, Route::Write);
        assert!(c.met_unknown_function());
        assert_eq!(c.classify("SELECT billing.charge(1)").route, Route::Write);
        assert_eq!(
            c.classify("SELECT COALESCE(1, 2), CURRENT_TIMESTAMP").route,
            Route::Read
        );
    }

    #[test]
    fn literals_are_blanked_for_the_cache_key() {
        let n = |s: &str| normalize_literals(s).unwrap_or_else(|| "<none>".into());
        assert_eq!(
            n("SELECT * FROM t WHERE id = 17"),
            "SELECT * FROM t WHERE id = ?"
        );
        assert_eq!(
            n("SELECT * FROM t2 WHERE a = 'x''y' AND b = 1.5e3"),
            "SELECT * FROM t2 WHERE a = ? AND b = ?"
        );
        assert_eq!(
            n("SELECT $1, $$body$$, $q$x$q$ FROM \"t 1\""),
            "SELECT $1, ?, ? FROM \"t 1\""
        );
        assert_eq!(n("SELECT E'a\\'b' -- 5\n, 6"), "SELECT E? -- 5\n, ?");
        assert_eq!(n("/* 'x */ SELECT 'é'"), "/* 'x */ SELECT ?");
        assert_eq!(
            n("/* a /* nested */ 'x' */ SELECT 1"),
            "/* a /* nested */ 'x' */ SELECT ?"
        );
        assert_eq!(n("SELECT $função$ x $função$"), "SELECT ?");
        assert_eq!(n("-- c\rSELECT 1"), "-- c\rSELECT ?");
        for unclosed in [
            "SELECT 'unterminated",
            "SELECT $$x",
            "SELECT \"x",
            "/* /* */ SELECT 1",
        ] {
            assert_eq!(normalize_literals(unclosed), None, "{unclosed}");
        }
        let c = Classifier::new(&[]);
        c.classify("SELECT * FROM t WHERE id = 17");
        c.classify("SELECT * FROM t WHERE id = 18");
        assert_eq!(c.cache.read().map(|m| m.len()).unwrap_or(0), 1);
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
