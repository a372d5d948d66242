//! Which functions write or lock: the built-in tables, the configured `write_functions`, and what the primary's
//! catalog (`pg_proc`, UNLOGGED tables) says.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sqlparser::ast::ObjectName;
use tokio::sync::Notify;

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

/// The configured `write_functions`: as given (lower case), and by their last name part.
struct ExtraWrites {
    qualified: HashSet<String>,
    names: HashSet<String>,
}

impl ExtraWrites {
    fn new(write_functions: &[String]) -> ExtraWrites {
        let qualified: HashSet<String> = write_functions
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect();
        let names = qualified
            .iter()
            .map(|f| f.rsplit('.').next().unwrap_or(f).to_string())
            .collect();
        ExtraWrites { qualified, names }
    }
}

/// What the classifier knows of functions and tables: the built-in lists, the configured `write_functions`, and
/// the primary's catalog once it has been read. Meeting a function the catalog does not know has it read again.
pub(super) struct Functions {
    /// Configured write functions, as given (lower case) and by their last name part (a reload swaps them).
    extra: RwLock<Arc<ExtraWrites>>,
    catalog: RwLock<Option<Arc<FunctionCatalog>>>,
    /// Set when a statement called a function the catalog does not know; the loader then reloads it.
    unknown_function: AtomicBool,
    /// `volatile_functions = "catalog"`: until the catalog is read, every function call is a write.
    catalog_required: AtomicBool,
    /// Wakes the catalog loader.
    refresh: Arc<Notify>,
}

impl Functions {
    /// Also treats `write_functions` (case-insensitive; `name` or `schema.name`) as writes; `refresh` wakes the
    /// catalog loader.
    pub(super) fn new(write_functions: &[String], refresh: Arc<Notify>) -> Functions {
        Functions {
            extra: RwLock::new(Arc::new(ExtraWrites::new(write_functions))),
            catalog: RwLock::new(None),
            unknown_function: AtomicBool::new(false),
            catalog_required: AtomicBool::new(false),
            refresh,
        }
    }

    /// Until the catalog has been read, every call of a function outside the SQL syntax list is a write.
    pub(super) fn require_catalog(&mut self) {
        self.catalog_required.store(true, Ordering::Relaxed);
    }

    /// Uses these `write_functions` and `volatile_functions` mode from now on (reload).
    pub(super) fn configure(&self, write_functions: &[String], catalog_required: bool) {
        if let Ok(mut extra) = self.extra.write() {
            *extra = Arc::new(ExtraWrites::new(write_functions));
        }
        self.catalog_required
            .store(catalog_required, Ordering::Relaxed);
    }

    /// Installs the catalog, and forgets that a function was unknown.
    pub(super) fn set_catalog(&self, catalog: FunctionCatalog) {
        if let Ok(mut c) = self.catalog.write() {
            *c = Some(Arc::new(catalog));
        }
        self.unknown_function.store(false, Ordering::Relaxed);
    }

    /// Whether a statement met a function the catalog does not know since the last load.
    pub(super) fn met_unknown_function(&self) -> bool {
        self.unknown_function.load(Ordering::Relaxed)
    }

    /// The catalog as last read.
    pub(super) fn catalog(&self) -> Option<Arc<FunctionCatalog>> {
        self.catalog.read().ok().and_then(|c| c.clone())
    }

    /// Notes a function the catalog does not know (created since it was read?) and has the catalog read again.
    fn unknown(&self) {
        self.unknown_function.store(true, Ordering::Relaxed);
        self.refresh.notify_one();
    }

    /// Whether a call of `name` writes, locks, or (with a catalog required) may: a built-in or configured write
    /// function, a VOLATILE user function, or one the catalog does not know.
    pub(super) fn writes(&self, name: &ObjectName) -> bool {
        let mut parts = Vec::with_capacity(name.0.len());
        for p in &name.0 {
            match p.as_ident() {
                Some(i) => parts.push(i.value.to_ascii_lowercase()),
                None => return true, // a computed name: unsure
            }
        }
        let Some(n) = parts.last() else { return true };
        let qualified = parts.join(".");
        let extra = self.extra.read().map(|e| e.clone()).ok();
        if WRITE_FUNCTIONS.contains(&n.as_str())
            || WRITE_FUNCTION_PREFIXES.iter().any(|p| n.starts_with(p))
            || extra.as_ref().is_none_or(|e| e.names.contains(n))
            || extra
                .as_ref()
                .is_none_or(|e| e.qualified.contains(&qualified))
        {
            return true;
        }
        if !self.catalog_required.load(Ordering::Relaxed) {
            return false;
        }
        let catalog = self.catalog();
        let volatile = catalog
            .as_ref()
            .is_some_and(|c| c.volatile.contains(n) || c.volatile.contains(&qualified));
        if volatile {
            return true;
        }
        let known = catalog.as_ref().is_some_and(|c| c.known.contains(n));
        if !known && !SYNTAX_FUNCTIONS.contains(&n.as_str()) {
            // Not in the catalog (created since it was read?): fail closed and have it read again.
            self.unknown();
            return true;
        }
        false
    }

    /// Whether a call of `name` may change session state pgsplit cannot see: a user-defined function, or (while
    /// `catalog` does not know it, or there is none) any function that is not plain syntax. An unknown one has the
    /// catalog read again.
    pub(super) fn is_opaque(&self, catalog: Option<&FunctionCatalog>, name: &ObjectName) -> bool {
        let Some(last) = name.0.last().and_then(|p| p.as_ident()) else {
            return true;
        };
        let n = last.value.to_ascii_lowercase();
        if SYNTAX_FUNCTIONS.contains(&n.as_str()) {
            return false;
        }
        match catalog {
            Some(c) if c.known.contains(&n) => c.user.contains(&n),
            _ => {
                self.unknown();
                true
            }
        }
    }

    /// Whether a relation name is one of the primary's UNLOGGED tables (by `schema.name` when qualified, by
    /// name alone otherwise: any schema's unlogged table of that name counts, failing towards the primary).
    pub(super) fn is_unlogged(&self, name: &ObjectName) -> bool {
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
