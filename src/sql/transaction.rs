//! Transaction control read from SQL text: a BEGIN pgsplit may defer, a COMMIT or ROLLBACK it may answer, and
//! `SET TRANSACTION … READ ONLY`.

use super::hint::{leading_hint, leading_hints};
use super::lexer::{Lexer, Tok};

/// Whether `sql` is one BEGIN / START TRANSACTION that pgsplit may answer itself and send later with the
/// transaction's first statement: exactly PostgreSQL's grammar (`BEGIN [WORK | TRANSACTION]`, `START
/// TRANSACTION`, then modes separated by commas or spaces), with only the modes that cannot fail on any server —
/// `ISOLATION LEVEL READ COMMITTED | REPEATABLE READ | READ UNCOMMITTED` and `READ WRITE`. Never READ ONLY (it
/// picks a replica at once), SERIALIZABLE or DEFERRABLE (a hot standby refuses them), a hint, or anything
/// PostgreSQL would reject (`BEGIN DEFERRED`): those go to a server as they are.
pub fn is_plain_begin(sql: &str) -> bool {
    if !leading_hints(sql).0.is_empty() {
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
    let lower = bare_lower(sql);
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
    let lower = bare_lower(sql);
    let words: Vec<&str> = lower.split_whitespace().collect();
    words.len() >= 4
        && words[0] == "set"
        && words[1] == "transaction"
        && !lower.contains(';')
        && lower.contains("read only")
        && !lower.contains("read write")
        && !lower.contains("serializable")
}

/// The text after its leading comments, trimmed, without trailing semicolons, in ASCII lower case.
fn bare_lower(sql: &str) -> String {
    let (_, body) = leading_hint(sql);
    body.trim()
        .trim_end_matches(';')
        .trim_end()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_begins_are_exactly_the_ones_that_cannot_fail() {
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
            "/* pgsplit:min_lsn=0/16B6C50 */ BEGIN",
            "/* pgsplit:max_lag=200ms */ BEGIN",
        ] {
            assert!(!is_plain_begin(sql), "{sql}");
        }
    }

    #[test]
    fn transaction_ends_give_their_command_tag() {
        assert_eq!(transaction_end("COMMIT"), Some("COMMIT"));
        assert_eq!(transaction_end("end work"), Some("COMMIT"));
        assert_eq!(transaction_end("/* c */ abort;"), Some("ROLLBACK"));
        assert_eq!(transaction_end("ROLLBACK TRANSACTION"), Some("ROLLBACK"));
        assert_eq!(transaction_end("ROLLBACK TO SAVEPOINT a"), None);
        assert_eq!(transaction_end("COMMIT AND CHAIN"), None);
        assert_eq!(transaction_end("SELECT 1"), None);
    }

    #[test]
    fn set_transaction_read_only_is_recognized() {
        assert!(is_set_transaction_read_only(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        ));
        assert!(is_set_transaction_read_only("set transaction read only;"));
        assert!(!is_set_transaction_read_only(
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY"
        ));
        assert!(!is_set_transaction_read_only(
            "SET TRANSACTION READ ONLY, READ WRITE"
        ));
        assert!(!is_set_transaction_read_only("SET TRANSACTION READ WRITE"));
    }
}
