//! A routing decision: where a statement may run, why, and what it may leave on its server connection.

use crate::sql::{Effects, Route};

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
    pub(super) const fn write(reason: Reason) -> Decision {
        Decision {
            route: Route::Write,
            reason,
            effects: Effects::NONE,
        }
    }
    pub(super) const fn read(reason: Reason) -> Decision {
        Decision {
            route: Route::Read,
            reason,
            effects: Effects::NONE,
        }
    }
}
