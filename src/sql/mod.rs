//! Reading SQL text without the parser: a byte-level lexer (comments, literals, quoted names, statement
//! boundaries), pgsplit's own words (the leading hint comments, `SET` / `RESET` / `SHOW pgsplit.*` and the
//! `pgsplit.*` startup parameters), transaction control, the
//! cache key with literals blanked out, and what statements leave on a server connection (settings, savepoints,
//! session-bound state). It sits below the classifier and the client session and imports neither.

pub mod effects;
pub mod hint;
pub mod lexer;
pub mod normalize;
pub mod pgsplit;
pub mod transaction;

pub use effects::{
    effects, is_plain_name, quote_literal, session_events, session_events_bound, set_statement,
    Effects, SessionChange, SessionEvent,
};
pub use hint::{
    leading_hint, leading_hints, route_setting, Hint, Route, RouteSetting, StatementHints,
};
pub use lexer::first_word_is;
pub use normalize::normalize_literals;
pub use pgsplit::{pgsplit_command, pgsplit_parameter, PgsplitCommand, PgsplitError, PgsplitParam};
pub use transaction::{is_plain_begin, is_set_transaction_read_only, transaction_end};
