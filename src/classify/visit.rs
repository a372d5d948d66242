//! The parser's view of a statement text: its route from the syntax tree, and whether it calls a function whose
//! effects pgsplit cannot see.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, TableFactor, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode, Visit, Visitor,
};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::decision::{Decision, Reason};
use super::functions::Functions;
use crate::sql::Route;

/// The decision for a statement text by the parser: the first statement that writes decides, else the last one;
/// `effects.dirty` says whether any statement calls a function whose effects pgsplit cannot see (the caller
/// merges it into the lexical effects). Anything the parser cannot read is a write that may call anything.
pub(super) fn classify_parsed(functions: &Functions, sql: &str) -> Decision {
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(_) => {
            let mut d = Decision::write(Reason::Unparseable);
            d.effects.dirty = true;
            return d;
        }
    };
    let mut result = Decision::read(Reason::ReadOnlyQuery);
    for s in &statements {
        let d = statement(functions, s);
        if d.route == Route::Write {
            result = d;
            break;
        }
        result = d;
    }
    result.effects.dirty = calls_opaque_function(functions, &statements);
    result
}

/// Whether a statement calls a function whose effects on the session pgsplit cannot see: a user-defined one, or
/// (until the catalog says otherwise, or without a catalog) any one that is not plain syntax.
fn calls_opaque_function(functions: &Functions, statements: &[Statement]) -> bool {
    let catalog = functions.catalog();
    let opaque = |name: &ObjectName| functions.is_opaque(catalog.as_deref(), name);
    let mut v = OpaqueCalls { opaque };
    statements.iter().any(|s| s.visit(&mut v).is_break())
}

/// The decision for one parsed statement.
fn statement(functions: &Functions, s: &Statement) -> Decision {
    match s {
        Statement::Query(q) => query(functions, q),
        Statement::Explain { statement: s, .. } => statement(functions, s),
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

/// The decision for a query: a read unless something in it writes or locks.
fn query(functions: &Functions, q: &Query) -> Decision {
    let mut v = ReadCheck { functions };
    match q.visit(&mut v) {
        ControlFlow::Break(reason) => Decision::write(reason),
        ControlFlow::Continue(()) => Decision::read(Reason::ReadOnlyQuery),
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
    functions: &'a Functions,
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
            if self.functions.writes(&f.name) {
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
                if self.functions.is_unlogged(name) {
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
        if self.functions.writes(name) {
            return ControlFlow::Break(Reason::WriteFunction);
        }
        ControlFlow::Continue(())
    }
}
