//! The parser's view of a statement: its route from the syntax tree, and whether it calls a function whose
//! effects pgsplit cannot see.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Statement, TableFactor, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode, Visit, Visitor,
};

use super::{Classifier, Decision, Reason};

impl Classifier {
    /// Whether a statement calls a function whose effects on the session pgsplit cannot see: a user-defined
    /// one, or (until the catalog says otherwise, or without a catalog) any one that is not plain syntax.
    pub(super) fn calls_opaque_function(&self, statements: &[Statement]) -> bool {
        let catalog = self.catalog.read().ok().and_then(|c| c.clone());
        let opaque = |name: &ObjectName| self.is_opaque_function(catalog.as_deref(), name);
        let mut v = OpaqueCalls { opaque };
        statements.iter().any(|s| s.visit(&mut v).is_break())
    }

    pub(super) fn statement(&self, s: &Statement) -> Decision {
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
