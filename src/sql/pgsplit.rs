//! pgsplit's own parameters, which pgsplit answers itself and never sends to a server: `SET`, `RESET` and `SHOW`
//! of `pgsplit.route`, `pgsplit.consistency`, `pgsplit.min_lsn` and `pgsplit.lsn`, and the same names as
//! startup parameters. Read exactly as PostgreSQL reads `SET` (`TO` or `=`, a word, a `'…'` string or a `"…"`
//! name, case-insensitive names and enum values); what PostgreSQL would reject gets the error it would give
//! for one of its own settings.

use std::fmt;

use super::hint::{Route, RouteSetting};
use super::lexer::{dollar_quote_end, dollar_tag_end, quoted_end, statements, Tok};
use crate::causal::{Consistency, Lsn};

/// `42601`: a statement PostgreSQL's grammar rejects.
const SYNTAX_ERROR: &str = "42601";
/// `22023`: a value the parameter does not take.
const INVALID_PARAMETER_VALUE: &str = "22023";
/// `42704`: no such parameter.
const UNDEFINED_OBJECT: &str = "42704";
/// `55P02`: a parameter that cannot be set.
const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
/// `0A000`: something pgsplit does not do with its parameters.
const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// One of pgsplit's own parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgsplitParam {
    /// `pgsplit.route`: where the session's statements go (`primary`, `replica`, `auto`).
    Route,
    /// `pgsplit.consistency`: `session`, `eventual` or `strict`.
    Consistency,
    /// `pgsplit.lsn`: the session's floor (read-only).
    Lsn,
    /// `pgsplit.min_lsn`: raises the session's floor.
    MinLsn,
}

impl PgsplitParam {
    /// Every parameter.
    pub const ALL: [PgsplitParam; 4] = [
        PgsplitParam::Route,
        PgsplitParam::Consistency,
        PgsplitParam::Lsn,
        PgsplitParam::MinLsn,
    ];

    /// The parameter's name, as `SHOW` names its column.
    pub fn name(self) -> &'static str {
        match self {
            PgsplitParam::Route => "pgsplit.route",
            PgsplitParam::Consistency => "pgsplit.consistency",
            PgsplitParam::Lsn => "pgsplit.lsn",
            PgsplitParam::MinLsn => "pgsplit.min_lsn",
        }
    }

    /// The parameter called `name` (lower case); an unknown `pgsplit.*` name is an error.
    fn named(name: &str) -> Result<PgsplitParam, PgsplitError> {
        PgsplitParam::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                PgsplitError::new(
                    UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            })
    }
}

/// A statement about pgsplit's own parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgsplitCommand {
    /// `SET pgsplit.route TO primary | replica | auto | DEFAULT` (`DEFAULT` is `auto`).
    SetRoute(RouteSetting),
    /// `SET pgsplit.consistency TO session | eventual | strict`; `None` for `DEFAULT` (the configured value).
    SetConsistency(Option<Consistency>),
    /// `SET pgsplit.min_lsn TO '0/16B6C50'`: raise the floor to it (never lower it).
    SetMinLsn(Lsn),
    /// `RESET pgsplit.route | pgsplit.consistency | pgsplit.min_lsn`, and `SET pgsplit.min_lsn TO DEFAULT`:
    /// back to the configured behaviour (for `MinLsn`: nothing to do, the floor is never lowered).
    Reset(PgsplitParam),
    /// `SHOW pgsplit.*`: one text column named [`PgsplitParam::name`].
    Show(PgsplitParam),
}

/// Why pgsplit refuses a statement about its parameters: the SQLSTATE and message PostgreSQL would give for one
/// of its own settings, and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgsplitError {
    /// `42601` syntax, `22023` bad value, `42704` unknown `pgsplit.*` name, `55P02` read-only (`pgsplit.lsn`),
    /// `0A000` not supported (`SET LOCAL`, with other statements in one query string).
    pub sqlstate: &'static str,
    /// The primary message, as PostgreSQL words it.
    pub message: String,
    /// What would work instead, when there is something to say.
    pub hint: Option<String>,
}

impl PgsplitError {
    fn new(sqlstate: &'static str, message: String) -> PgsplitError {
        PgsplitError {
            sqlstate,
            message,
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> PgsplitError {
        self.hint = Some(hint.into());
        self
    }

    fn syntax(at: Option<&Tok<'_>>) -> PgsplitError {
        let message = match at {
            Some(t) => format!(
                "syntax error at or near \"{}\"",
                String::from_utf8_lossy(t.text())
            ),
            None => "syntax error at end of input".to_string(),
        };
        PgsplitError::new(SYNTAX_ERROR, message)
    }

    fn invalid_value(param: PgsplitParam, value: &str) -> PgsplitError {
        let name = param.name();
        let e = PgsplitError::new(
            INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"{name}\": \"{value}\""),
        );
        match param {
            PgsplitParam::Route => e.hint("Available values: primary, replica, auto."),
            PgsplitParam::Consistency => e.hint("Available values: session, eventual, strict."),
            PgsplitParam::MinLsn | PgsplitParam::Lsn => e.hint(
                "An LSN as PostgreSQL prints it, such as '0/16B6C50' (what SHOW pgsplit.lsn returns).",
            ),
        }
    }

    fn read_only(param: PgsplitParam) -> PgsplitError {
        PgsplitError::new(
            CANT_CHANGE_RUNTIME_PARAM,
            format!("parameter \"{}\" cannot be changed", param.name()),
        )
        .hint("SET pgsplit.min_lsn raises the session's floor.")
    }
}

impl fmt::Display for PgsplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads a query string that sets, resets or shows a `pgsplit.*` parameter: `None` when it does not (it is for
/// a server); `Some(Err(…))` when PostgreSQL would reject it for one of its own settings, or when it is one
/// statement of several in the query string (pgsplit cannot answer part of one). `SET [SESSION]`, `TO` or `=`,
/// quoted or unquoted names and values, leading comments and a trailing `;` are read as PostgreSQL reads them.
pub fn pgsplit_command(sql: &str) -> Option<Result<PgsplitCommand, PgsplitError>> {
    // Cheap way out for nearly every statement.
    if !sql
        .as_bytes()
        .windows(7)
        .any(|w| w.eq_ignore_ascii_case(b"pgsplit"))
    {
        return None;
    }
    let all = statements(sql.as_bytes());
    let read = all.iter().find_map(|s| statement(s))?;
    if all.len() > 1 {
        return Some(Err(PgsplitError::new(
            FEATURE_NOT_SUPPORTED,
            "SET, RESET and SHOW of pgsplit.* parameters cannot be sent with other statements in one \
             query string"
                .to_string(),
        )
        .hint("pgsplit answers them itself: send each in a query string of its own.")));
    }
    Some(read)
}

/// One statement's tokens: `None` when it is not about a `pgsplit.*` parameter.
fn statement(s: &[Tok<'_>]) -> Option<Result<PgsplitCommand, PgsplitError>> {
    let read = read_statement(s)?;
    // Only the last token can be an unclosed string or name: it ran to the end of the text.
    match s.last() {
        Some(t) if !closed(t) => Some(Err(PgsplitError::new(
            SYNTAX_ERROR,
            format!(
                "unterminated quoted {} at or near \"{}\"",
                if matches!(t, Tok::Quoted(_)) {
                    "identifier"
                } else {
                    "string"
                },
                String::from_utf8_lossy(t.text())
            ),
        ))),
        _ => Some(read),
    }
}

/// Whether a string or quoted name closes (the lexer runs an unclosed one to the end of the text).
fn closed(t: &Tok<'_>) -> bool {
    let ends = |s: &[u8], quote_at: usize, backslash: bool| {
        let quote = s.get(quote_at).copied().unwrap_or(b'\'');
        quoted_end(s, quote_at, quote, backslash) == Some(s.len())
    };
    match t {
        Tok::Str(s) | Tok::Quoted(s) => match s.first() {
            Some(b'\'' | b'"') => ends(s, 0, false),
            Some(b'e' | b'E') => ends(s, 1, true),
            Some(b'u' | b'U') => ends(s, 2, false),
            Some(b'$') => {
                dollar_tag_end(s, 0).and_then(|e| dollar_quote_end(s, 0, e)) == Some(s.len())
            }
            _ => ends(s, 1, false),
        },
        _ => true,
    }
}

/// [`statement`] before the check for an unclosed last token.
fn read_statement(s: &[Tok<'_>]) -> Option<Result<PgsplitCommand, PgsplitError>> {
    let is = |i: usize, w: &str| s.get(i).is_some_and(|t| t.is(w));
    if is(0, "show") || is(0, "reset") {
        let (param, end) = match name(s, 1)? {
            Ok((name, end)) => (PgsplitParam::named(&name), end),
            Err(e) => return Some(Err(e)),
        };
        if end < s.len() {
            return Some(Err(PgsplitError::syntax(s.get(end))));
        }
        return Some(param.and_then(|p| {
            if is(0, "show") {
                Ok(PgsplitCommand::Show(p))
            } else if p == PgsplitParam::Lsn {
                Err(PgsplitError::read_only(p))
            } else {
                Ok(PgsplitCommand::Reset(p))
            }
        }));
    }
    if !is(0, "set") {
        return None;
    }
    let local = is(1, "local");
    let start = if local || is(1, "session") { 2 } else { 1 };
    let (name, end) = match name(s, start)? {
        Ok(read) => read,
        Err(e) => return Some(Err(e)),
    };
    Some(set(s, &name, end, local))
}

/// `SET [LOCAL | SESSION] name …` from the token after the name on.
fn set(s: &[Tok<'_>], name: &str, at: usize, local: bool) -> Result<PgsplitCommand, PgsplitError> {
    let param = PgsplitParam::named(name)?;
    match s.get(at) {
        Some(t) if t.is("to") || *t == Tok::Punct(b'=') => {}
        other => return Err(PgsplitError::syntax(other)),
    }
    let values = s.get(at + 1..).unwrap_or_default();
    let mut items = values.split(|t| *t == Tok::Punct(b','));
    let first = items.next().unwrap_or_default();
    let read = value(first)?;
    for item in items {
        value(item)?;
    }
    if local {
        return Err(PgsplitError::new(
            FEATURE_NOT_SUPPORTED,
            format!("SET LOCAL {name} is not supported"),
        )
        .hint(format!(
            "Use SET {name} for the session, or a leading /* pgsplit:… */ comment for one statement."
        )));
    }
    if values.contains(&Tok::Punct(b',')) {
        return Err(PgsplitError::new(
            INVALID_PARAMETER_VALUE,
            format!("SET {name} takes only one argument"),
        ));
    }
    command(param, read)
}

/// A parameter value as `SET` reads it.
#[derive(Debug, PartialEq, Eq)]
enum Value {
    /// The keyword `DEFAULT`.
    Default,
    /// A word, string or number, unquoted.
    Text(String),
}

/// What `SET pgsplit.… TO value` (or the startup parameter) does.
fn command(param: PgsplitParam, value: Value) -> Result<PgsplitCommand, PgsplitError> {
    let text = match value {
        Value::Default => {
            return Ok(match param {
                PgsplitParam::Route => PgsplitCommand::SetRoute(RouteSetting::Auto),
                PgsplitParam::Consistency => PgsplitCommand::SetConsistency(None),
                PgsplitParam::MinLsn => PgsplitCommand::Reset(param),
                PgsplitParam::Lsn => return Err(PgsplitError::read_only(param)),
            })
        }
        Value::Text(text) => text,
    };
    match param {
        PgsplitParam::Route => {
            let setting = match text.to_ascii_lowercase().as_str() {
                "primary" => RouteSetting::Fixed(Route::Write),
                "replica" => RouteSetting::Fixed(Route::Read),
                "auto" | "default" => RouteSetting::Auto,
                _ => return Err(PgsplitError::invalid_value(param, &text)),
            };
            Ok(PgsplitCommand::SetRoute(setting))
        }
        PgsplitParam::Consistency => match text.parse() {
            Ok(c) => Ok(PgsplitCommand::SetConsistency(Some(c))),
            Err(_) => Err(PgsplitError::invalid_value(param, &text)),
        },
        PgsplitParam::MinLsn => match Lsn::parse(&text) {
            Some(lsn) => Ok(PgsplitCommand::SetMinLsn(lsn)),
            None => Err(PgsplitError::invalid_value(param, &text)),
        },
        PgsplitParam::Lsn => Err(PgsplitError::read_only(param)),
    }
}

/// A parameter name from token `i` on (`name`, `"Name"`, `a.b`, `"a.b"`), lower case as PostgreSQL compares
/// setting names, with the index of the token after it: `None` unless it is a `pgsplit.*` name.
fn name(s: &[Tok<'_>], mut i: usize) -> Option<Result<(String, usize), PgsplitError>> {
    let mut name = String::new();
    loop {
        match s.get(i) {
            Some(Tok::Word(w)) => name.push_str(&String::from_utf8_lossy(w)),
            Some(Tok::Quoted(q)) if q.first() == Some(&b'"') => name.push_str(&unquote(q, b'"')),
            other => {
                // After a `.`: `SET pgsplit. TO …` is a syntax error, `SET other. TO …` is the server's.
                let ours = name.to_ascii_lowercase().starts_with("pgsplit.");
                return ours.then(|| Err(PgsplitError::syntax(other)));
            }
        }
        i += 1;
        if s.get(i) != Some(&Tok::Punct(b'.')) {
            break;
        }
        name.push('.');
        i += 1;
    }
    let name = name.to_ascii_lowercase();
    name.starts_with("pgsplit.").then_some(Ok((name, i)))
}

/// One value of a `SET` list: a word (`DEFAULT` is the keyword), a `"…"` name, a string (`'…'`, `E'…'`,
/// `$$…$$`, `U&'…'` without escapes) or a signed number. Anything else is a syntax error.
fn value(tokens: &[Tok<'_>]) -> Result<Value, PgsplitError> {
    let text = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    match tokens {
        [] => Err(PgsplitError::syntax(None)),
        [t] if t.is("default") => Ok(Value::Default),
        [Tok::Word(w)] | [Tok::Num(w)] if !w.starts_with(b"$") => Ok(Value::Text(text(w))),
        [Tok::Quoted(q)] if q.first() == Some(&b'"') => Ok(Value::Text(unquote(q, b'"'))),
        [Tok::Punct(sign @ (b'-' | b'+')), Tok::Num(n)] if !n.starts_with(b"$") => {
            Ok(Value::Text(format!("{}{}", char::from(*sign), text(n))))
        }
        [t @ Tok::Str(s)] => string(s)
            .map(Value::Text)
            .ok_or_else(|| PgsplitError::syntax(Some(t))),
        [t] => Err(PgsplitError::syntax(Some(t))),
        // A signed number followed by more, a value followed by more, or something that starts no value.
        [Tok::Punct(b'-' | b'+'), Tok::Num(_), ..] => Err(PgsplitError::syntax(tokens.get(2))),
        [Tok::Punct(_), ..] => Err(PgsplitError::syntax(tokens.first())),
        [_, t, ..] => Err(PgsplitError::syntax(Some(t))),
    }
}

/// A string constant's value; `None` for the kinds `SET` does not take (`B'…'`, `X'…'`, `N'…'`) and for
/// escapes pgsplit does not decode (`U&'\0041'`).
fn string(s: &[u8]) -> Option<String> {
    match s.first()? {
        b'\'' => Some(unquote(s, b'\'')),
        b'e' | b'E' => {
            let inner = s.get(2..s.len().saturating_sub(1)).unwrap_or_default();
            let mut out = Vec::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&c) = bytes.next() {
                match c {
                    // `\x` stands for `x` here: a value that needs more (`\n`, `\x41`) is not one of pgsplit's.
                    b'\\' => out.extend(bytes.next()),
                    b'\'' => {
                        out.push(b'\'');
                        bytes.next();
                    }
                    _ => out.push(c),
                }
            }
            Some(String::from_utf8_lossy(&out).into_owned())
        }
        b'u' | b'U' => {
            let quoted = s.get(2..)?;
            (!quoted.contains(&b'\\')).then(|| unquote(quoted, b'\''))
        }
        b'$' => {
            let tag_len = s.iter().skip(1).position(|&c| c == b'$')? + 2;
            let inner = s.get(tag_len..s.len().checked_sub(tag_len)?)?;
            Some(String::from_utf8_lossy(inner).into_owned())
        }
        _ => None,
    }
}

/// The text between the quotes, with doubled quotes single again.
fn unquote(q: &[u8], quote: u8) -> String {
    let inner = q.get(1..).unwrap_or_default();
    let inner = inner.strip_suffix(&[quote]).unwrap_or(inner);
    let quote = char::from(quote);
    String::from_utf8_lossy(inner).replace(&format!("{quote}{quote}"), &quote.to_string())
}

/// A startup parameter (`pgsplit.consistency=strict`, also from `options=-c …`): `None` unless its name is
/// `pgsplit.*` (any case); the value is taken as it is (no quotes to strip).
pub fn pgsplit_parameter(name: &str, value: &str) -> Option<Result<PgsplitCommand, PgsplitError>> {
    let name = name.to_ascii_lowercase();
    if !name.starts_with("pgsplit.") {
        return None;
    }
    Some(PgsplitParam::named(&name).and_then(|p| command(p, Value::Text(value.to_string()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use PgsplitCommand::*;

    fn ok(sql: &str) -> PgsplitCommand {
        match pgsplit_command(sql) {
            Some(Ok(c)) => c,
            other => panic!("{sql}: {other:?}"),
        }
    }

    /// The error's SQLSTATE and message.
    fn err(sql: &str) -> (&'static str, String) {
        match pgsplit_command(sql) {
            Some(Err(e)) => (e.sqlstate, e.message),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn consistency_is_set_in_every_spelling() {
        for sql in [
            "SET pgsplit.consistency TO strict",
            "set pgsplit.consistency = strict",
            "SET SESSION pgsplit.consistency TO 'strict'",
            "SET pgsplit.consistency TO \"strict\"",
            "SET PGSPLIT.CONSISTENCY TO STRICT",
            "SET \"pgsplit.consistency\" TO 'Strict'",
            "SET \"PgSplit\".consistency TO E'strict'",
            "SET pgsplit.consistency TO $$strict$$",
            "SET pgsplit.consistency TO $v$strict$v$",
            "SET pgsplit.consistency TO U&'strict'",
            "SET pgsplit.consistency=strict;",
            "  /* c */ -- line\n SET pgsplit . consistency\tTO\nstrict ; ",
            "/* pgsplit:primary */ SET pgsplit.consistency TO strict;;",
        ] {
            assert_eq!(ok(sql), SetConsistency(Some(Consistency::Strict)), "{sql}");
        }
        assert_eq!(
            ok("SET pgsplit.consistency TO session"),
            SetConsistency(Some(Consistency::Session))
        );
        assert_eq!(
            ok("SET pgsplit.consistency = 'eventual'"),
            SetConsistency(Some(Consistency::Eventual))
        );
        assert_eq!(
            ok("SET pgsplit.consistency TO DEFAULT"),
            SetConsistency(None)
        );
        assert_eq!(
            ok("set pgsplit.consistency = default;"),
            SetConsistency(None)
        );
        assert_eq!(
            ok("RESET pgsplit.consistency"),
            Reset(PgsplitParam::Consistency)
        );
        assert_eq!(
            ok("SHOW pgsplit.consistency;"),
            Show(PgsplitParam::Consistency)
        );
    }

    #[test]
    fn min_lsn_raises_and_lsn_only_shows() {
        assert_eq!(
            ok("SET pgsplit.min_lsn TO '0/16B6C50'"),
            SetMinLsn(Lsn(0x16B_6C50))
        );
        assert_eq!(
            ok("set pgsplit.min_lsn = '16/b374d848';"),
            SetMinLsn(Lsn(0x16_B374_D848))
        );
        assert_eq!(ok("SET pgsplit.min_lsn TO \"0/1\""), SetMinLsn(Lsn(1)));
        assert_eq!(
            ok("SET pgsplit.min_lsn TO DEFAULT"),
            Reset(PgsplitParam::MinLsn)
        );
        assert_eq!(ok("RESET pgsplit.min_lsn"), Reset(PgsplitParam::MinLsn));
        assert_eq!(ok("SHOW pgsplit.lsn"), Show(PgsplitParam::Lsn));
        assert_eq!(ok("show PGSPLIT.LSN ;"), Show(PgsplitParam::Lsn));
        assert_eq!(ok("SHOW \"pgsplit.lsn\""), Show(PgsplitParam::Lsn));
        assert_eq!(ok("SHOW pgsplit.min_lsn"), Show(PgsplitParam::MinLsn));
        for sql in [
            "SET pgsplit.lsn TO '0/1'",
            "SET pgsplit.lsn TO DEFAULT",
            "RESET pgsplit.lsn",
        ] {
            assert_eq!(
                err(sql),
                (
                    "55P02",
                    "parameter \"pgsplit.lsn\" cannot be changed".into()
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn route_joins_the_same_reader() {
        assert_eq!(
            ok("SET pgsplit.route TO primary"),
            SetRoute(RouteSetting::Fixed(Route::Write))
        );
        assert_eq!(
            ok("SET pgsplit.route = 'Replica';"),
            SetRoute(RouteSetting::Fixed(Route::Read))
        );
        assert_eq!(
            ok("SET pgsplit.route TO auto"),
            SetRoute(RouteSetting::Auto)
        );
        assert_eq!(
            ok("SET pgsplit.route TO DEFAULT"),
            SetRoute(RouteSetting::Auto)
        );
        assert_eq!(
            ok("SET pgsplit.route TO 'default'"),
            SetRoute(RouteSetting::Auto)
        );
        assert_eq!(ok("RESET pgsplit.route"), Reset(PgsplitParam::Route));
        assert_eq!(ok("SHOW pgsplit.route"), Show(PgsplitParam::Route));
        assert_eq!(PgsplitParam::Route.name(), "pgsplit.route");
    }

    #[test]
    fn bad_values_get_postgres_errors() {
        let (code, message) = err("SET pgsplit.consistency TO causal");
        assert_eq!(code, "22023");
        assert_eq!(
            message,
            "invalid value for parameter \"pgsplit.consistency\": \"causal\""
        );
        let e = pgsplit_command("SET pgsplit.consistency TO causal")
            .and_then(Result::err)
            .unwrap();
        assert_eq!(
            e.hint.as_deref(),
            Some("Available values: session, eventual, strict.")
        );
        assert_eq!(e.to_string(), e.message);
        for (sql, value) in [
            ("SET pgsplit.consistency TO 'default'", "default"),
            ("SET pgsplit.consistency TO 1", "1"),
            ("SET pgsplit.consistency TO -1.5", "-1.5"),
            ("SET pgsplit.consistency TO ''", ""),
            ("SET pgsplit.route TO elsewhere", "elsewhere"),
            ("SET pgsplit.min_lsn TO 'garbage'", "garbage"),
            ("SET pgsplit.min_lsn TO '0/1 '", "0/1 "),
            ("SET pgsplit.min_lsn TO '+0/1'", "+0/1"),
            ("SET pgsplit.min_lsn TO '100000000/0'", "100000000/0"),
            ("SET pgsplit.min_lsn TO 12", "12"),
            ("SET pgsplit.min_lsn TO 'it''s'", "it's"),
            ("SET pgsplit.min_lsn TO E'0/1\\\\'", "0/1\\"),
        ] {
            let (code, message) = err(sql);
            assert_eq!(code, "22023", "{sql}");
            assert!(
                message.ends_with(&format!(": \"{value}\"")),
                "{sql}: {message}"
            );
        }
        assert_eq!(
            err("SET pgsplit.consistency TO strict, eventual"),
            (
                "22023",
                "SET pgsplit.consistency takes only one argument".into()
            )
        );
    }

    #[test]
    fn unknown_names_and_bad_syntax_are_refused() {
        for sql in [
            "SET pgsplit.frobnicate TO 1",
            "SHOW pgsplit.frobnicate",
            "RESET \"pgsplit.Frobnicate\"",
            "SET pgsplit.consistency.x TO strict",
        ] {
            let (code, message) = err(sql);
            assert_eq!(code, "42704", "{sql}");
            assert!(
                message.starts_with("unrecognized configuration parameter \"pgsplit."),
                "{message}"
            );
        }
        for (sql, message) in [
            ("SET pgsplit.consistency", "syntax error at end of input"),
            ("SET pgsplit.consistency TO", "syntax error at end of input"),
            (
                "SET pgsplit.consistency TO ;",
                "syntax error at end of input",
            ),
            (
                "SET pgsplit.consistency strict",
                "syntax error at or near \"strict\"",
            ),
            (
                "SET pgsplit.consistency TO strict eventual",
                "syntax error at or near \"eventual\"",
            ),
            (
                "SET pgsplit.consistency TO strict,",
                "syntax error at end of input",
            ),
            (
                "SET pgsplit.consistency TO (strict)",
                "syntax error at or near \"(\"",
            ),
            (
                "SET pgsplit.min_lsn TO 0/16B6C50",
                "syntax error at or near \"/\"",
            ),
            (
                "SET pgsplit.min_lsn TO $1",
                "syntax error at or near \"$1\"",
            ),
            (
                "SET pgsplit.min_lsn TO B'01'",
                "syntax error at or near \"B'01'\"",
            ),
            (
                "SET pgsplit.consistency FROM CURRENT",
                "syntax error at or near \"FROM\"",
            ),
            ("SET pgsplit. = strict", "syntax error at or near \"=\""),
            (
                "SET pgsplit.\"\" TO strict",
                "unrecognized configuration parameter \"pgsplit.\"",
            ),
            ("SHOW pgsplit.lsn x", "syntax error at or near \"x\""),
            (
                "RESET pgsplit.route, pgsplit.consistency",
                "syntax error at or near \",\"",
            ),
            ("SHOW pgsplit.", "syntax error at end of input"),
            (
                "SET pgsplit.consistency TO 'strict",
                "unterminated quoted string at or near \"'strict\"",
            ),
            (
                "SET pgsplit.consistency TO $$strict",
                "unterminated quoted string at or near \"$$strict\"",
            ),
            (
                "SET \"pgsplit.consistency TO strict",
                "unterminated quoted identifier at or near \"\"pgsplit.consistency TO strict\"",
            ),
        ] {
            assert_eq!(
                pgsplit_command(sql)
                    .and_then(Result::err)
                    .map(|e| e.message),
                Some(message.to_string()),
                "{sql}"
            );
        }
        let (code, message) = err("SET LOCAL pgsplit.consistency TO strict");
        assert_eq!(code, "0A000");
        assert_eq!(message, "SET LOCAL pgsplit.consistency is not supported");
        assert_eq!(err("SET LOCAL pgsplit.consistency TO nope").0, "0A000");
        assert_eq!(err("SET LOCAL pgsplit.consistency TO").0, "42601");
    }

    #[test]
    fn only_a_query_string_of_its_own_is_answered() {
        for sql in [
            "SET pgsplit.consistency TO strict; SELECT 1",
            "SELECT 1; SHOW pgsplit.lsn",
            "BEGIN; SET pgsplit.min_lsn TO '0/1'; COMMIT",
            "SHOW pgsplit.lsn; SHOW pgsplit.lsn",
            "SET pgsplit.nope TO 1; SELECT 1",
        ] {
            assert_eq!(err(sql).0, "0A000", "{sql}");
        }
    }

    #[test]
    fn everything_else_is_for_the_server() {
        for sql in [
            "",
            ";",
            "SELECT 1",
            "SET search_path TO pgsplit",
            "SET pgsplit_x TO 1",
            "SET pgsplitx.route TO primary",
            "SET pgsplit TO primary",
            "SHOW pgsplit",
            "SHOW ALL",
            "RESET ALL",
            "SET LOCAL work_mem TO '1MB'",
            "SET TIME ZONE 'pgsplit.route'",
            "SET SESSION AUTHORIZATION pgsplit",
            "SET application_name = 'pgsplit.route'",
            "SELECT 'SET pgsplit.route TO primary'",
            "-- SET pgsplit.route TO primary\nSELECT 1",
            "/* pgsplit:replica */ SELECT 1",
            "/* SHOW pgsplit.lsn */",
            "SELECT current_setting('pgsplit.lsn')",
            "SET myapp.pgsplit TO 1",
            "SET U&\"pgsplit.route\" TO primary",
            "SHOW pgsplit_lsn; SELECT 1",
        ] {
            assert_eq!(pgsplit_command(sql), None, "{sql}");
        }
    }

    #[test]
    fn startup_parameters_are_read_as_values() {
        assert_eq!(
            pgsplit_parameter("pgsplit.consistency", "Strict"),
            Some(Ok(SetConsistency(Some(Consistency::Strict))))
        );
        assert_eq!(
            pgsplit_parameter("PGSPLIT.MIN_LSN", "0/16B6C50"),
            Some(Ok(SetMinLsn(Lsn(0x16B_6C50))))
        );
        assert_eq!(
            pgsplit_parameter("pgsplit.route", "replica"),
            Some(Ok(SetRoute(RouteSetting::Fixed(Route::Read))))
        );
        assert_eq!(pgsplit_parameter("application_name", "x"), None);
        assert_eq!(pgsplit_parameter("pgsplit", "x"), None);
        let e = |name: &str, value: &str| {
            pgsplit_parameter(name, value)
                .and_then(Result::err)
                .map(|e| (e.sqlstate, e.message))
        };
        assert_eq!(
            e("pgsplit.min_lsn", "'0/1'"),
            Some((
                "22023",
                "invalid value for parameter \"pgsplit.min_lsn\": \"'0/1'\"".into()
            ))
        );
        assert_eq!(
            e("pgsplit.consistency", "DEFAULT").map(|e| e.0),
            Some("22023")
        );
        assert_eq!(e("pgsplit.lsn", "0/1").map(|e| e.0), Some("55P02"));
        assert_eq!(e("pgsplit.nope", "1").map(|e| e.0), Some("42704"));
    }
}
