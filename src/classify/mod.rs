//! SQL text → where it may run. Fail closed: a statement is a read only when pgsplit is sure it writes nothing
//! and takes no lock (docs/ARCHITECTURE.md §3); everything else, including anything the parser cannot read, is a write.
//!
//! [`Classifier::classify`] answers the statements it can from their first words (`fast_path`), and parses the
//! rest (`visit`), looking functions and tables up in what it knows of the primary's catalog (`functions`).
//! Reading the text itself (hints, literals, session effects) is [`crate::sql`]'s job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use crate::sql::normalize_literals;

mod decision;
mod fast_path;
mod functions;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
mod visit;

/// Where a statement may run (defined in [`crate::sql`], whose hint readers name it too).
pub use crate::sql::Route;
pub use decision::{Decision, Reason};
use fast_path::fast_path;
use functions::Functions;
pub use functions::{FunctionCatalog, FunctionRow};

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
    /// What is known of functions and tables.
    functions: Functions,
    /// Wakes the catalog loader.
    pub refresh: Arc<Notify>,
    hits: AtomicU64,
    misses: AtomicU64,
    cache: RwLock<HashMap<Box<str>, Decision>>,
}

impl Classifier {
    /// A classifier that also treats `write_functions` (case-insensitive; `name` or `schema.name`) as writes.
    pub fn new(write_functions: &[String]) -> Classifier {
        let refresh = Arc::new(Notify::new());
        Classifier {
            functions: Functions::new(write_functions, refresh.clone()),
            refresh,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Requires the primary's catalog (`volatile_functions = "catalog"`): until it has been read, every call of a
    /// function outside the SQL syntax list is a write.
    pub fn require_catalog(mut self) -> Classifier {
        self.functions.require_catalog();
        self
    }

    /// Uses these `write_functions` and `volatile_functions = "catalog"` (`require_catalog`) from now on, and
    /// forgets cached decisions (reload).
    pub fn configure(&self, write_functions: &[String], require_catalog: bool) {
        self.functions.configure(write_functions, require_catalog);
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    /// Installs what the catalog says about functions (`volatile_functions = "catalog"`), and forgets cached
    /// decisions made without it.
    pub fn set_catalog(&self, catalog: FunctionCatalog) {
        self.functions.set_catalog(catalog);
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
        self.functions.met_unknown_function()
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
        // rule depends on a literal's value). Leading comments are left out of the key too: hints are read
        // before the cache (`classify`), and a per-request one (`/* pgsplit:min_lsn=… */`) must not make every
        // statement new. Long texts, and texts whose literals or comments do not close, are not cached.
        let key = if sql.len() <= MAX_CACHED_BYTES {
            match crate::sql::leading_hints(sql).1 {
                // Nothing after the comments (or an unclosed one): the whole text, which keys only what it is.
                "" => normalize_literals(sql),
                body => normalize_literals(body),
            }
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
            visit::classify_parsed(&self.functions, sql)
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
                .spawn_scoped(scope, || visit::classify_parsed(&self.functions, sql))
                .ok()
                .and_then(|t| t.join().ok())
        })
        .unwrap_or(Decision::write(Reason::Unparseable))
    }
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}
