//! Decisions that need no parser: hints and statements whose first word decides.

use crate::sql::{is_set_transaction_read_only, leading_hint, Effects};

use super::decision::{Decision, Reason};

/// Decisions that need no parser: hints and the trivially-classified statements (one statement only).
pub(super) fn fast_path(sql: &str) -> Option<Decision> {
    let (hint, body) = leading_hint(sql);
    if let Some(hint) = hint {
        return Some(Decision {
            route: hint.route(),
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
        Some(table_decision(&trimmed[word_end..]))
    } else if is("show") {
        Some(Decision::read(Reason::ReadOnlyQuery))
    } else if is("begin") || is("start") {
        begin_decision(trimmed)
    } else if is("insert") || is("update") || is("delete") || is("drop") || is("alter") {
        Some(Decision::write(Reason::WriteStatement))
    } else {
        None
    }
}

/// `TABLE name` (sqlparser does not parse it): a read when the rest is just a relation name, `[ONLY] name [*]`,
/// nothing more (no locking clause or anything else).
fn table_decision(rest: &str) -> Decision {
    let words: Vec<&str> = rest.split_whitespace().collect();
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
    if plain {
        Decision::read(Reason::ReadOnlyQuery)
    } else {
        Decision::write(Reason::Unparseable)
    }
}

/// BEGIN / START TRANSACTION: read-only when it says READ ONLY, never READ WRITE (the last mode wins: the parser
/// decides those) nor SERIALIZABLE (a hot standby refuses it), and holds nothing but transaction-mode words.
fn begin_decision(statement: &str) -> Option<Decision> {
    let lower = statement.to_ascii_lowercase();
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
    (plain && !lower.contains("read write")).then(|| Decision::read(Reason::ReadOnlyTransaction))
}
