//! Reading SQL text without the parser: a byte-level lexer (comments, literals, quoted names, statement
//! boundaries), pgsplit's own routing words (the leading hint, `SET pgsplit.route`), transaction control, the
//! cache key with literals blanked out, and what statements leave on a server connection (settings, savepoints,
//! session-bound state). It sits below the classifier and the client session and imports neither.

pub mod effects;
pub mod hint;
pub mod lexer;
pub mod normalize;
pub mod transaction;

pub use effects::{
    effects, is_plain_name, quote_literal, session_events, set_statement, Effects, SessionChange,
    SessionEvent,
};
pub use hint::{leading_hint, route_setting, Hint, Route, RouteSetting};
pub use lexer::first_word_is;
pub use normalize::normalize_literals;
pub use transaction::{is_plain_begin, is_set_transaction_read_only, transaction_end};
