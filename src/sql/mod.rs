//! Reading SQL text without the parser: a byte-level lexer (comments, literals, quoted names, statement
//! boundaries) and what statements leave on a server connection (settings, savepoints, session-bound state).

pub mod effects;
#[cfg(test)]
mod fuzz;
pub mod lexer;

pub use effects::{
    effects, is_plain_name, quote_literal, session_events, set_statement, Effects, SessionChange,
    SessionEvent,
};
