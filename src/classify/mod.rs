//! SQL text → where it may run. Fail closed: a statement is a read only when pgsplit is sure it writes nothing
//! and takes no lock (DESIGN.md §3); everything else, including anything the parser cannot read, is a write.
//!
//! [`Classifier::classify`] answers the statements it can from their first words ([`fast_path`]), and parses the
//! rest (`visit`), looking functions and tables up in what it knows of the primary's catalog (`functions`).
//! Reading the text itself (hints, literals, session effects) is [`crate::sql`]'s job.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::sql::{normalize_literals, Effects};

mod fast_path;
mod functions;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
mod visit;

/// Where a statement may run (defined in [`crate::sql`], whose hint readers name it too).
pub use crate::sql::Route;
use fast_path::fast_path;
pub use functions::{FunctionCatalog, FunctionRow};

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
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}
