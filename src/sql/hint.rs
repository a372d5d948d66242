//! pgsplit's own routing words in SQL text: the leading hint comment (`/* pgsplit:primary */`,
//! `/* pgsplit:replica */`) and `SET pgsplit.route TO primary | replica | auto`. [`Route`] lives here, below the
//! classifier, so that these readers need nothing above `sql`.

use super::lexer::skip_space;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Reads nothing but data: a replica may serve it.
    Read,
    /// Writes, locks, or pgsplit is unsure: the primary.
    Write,
}

/// A routing hint: a `/* pgsplit:primary */` or `/* pgsplit:replica */` comment before a statement's first word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `/* pgsplit:primary */`.
    Primary,
    /// `/* pgsplit:replica */`.
    Replica,
}

impl Hint {
    /// Where a hinted statement goes.
    pub fn route(self) -> Route {
        match self {
            Hint::Primary => Route::Write,
            Hint::Replica => Route::Read,
        }
    }
}

/// Skips leading whitespace and comments: the hint a leading comment gives (the last one, when several do) and
/// the text after the comments.
pub fn leading_hint(sql: &str) -> (Option<Hint>, &str) {
    let mut hint = None;
    let end = skip_space(sql.as_bytes(), 0, |comment| {
        let body = comment
            .get(2..comment.len().saturating_sub(2))
            .unwrap_or(b"");
        match std::str::from_utf8(body).map(str::trim) {
            Ok("pgsplit:primary") => hint = Some(Hint::Primary),
            Ok("pgsplit:replica") => hint = Some(Hint::Replica),
            _ => {}
        }
    });
    // `skip_space` stops only at an ASCII byte or at the end: `end` is a character boundary.
    (hint, sql.get(end..).unwrap_or(""))
}

/// The value of a `SET pgsplit.route` statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSetting {
    /// `primary` or `replica`: the session's statements go there, whatever the classifier says.
    Fixed(Route),
    /// `auto` or `default`: the classifier decides again.
    Auto,
}

impl RouteSetting {
    /// The route the session is held to from now on; `None` lets the classifier decide.
    pub fn route(self) -> Option<Route> {
        match self {
            RouteSetting::Fixed(route) => Some(route),
            RouteSetting::Auto => None,
        }
    }
}

/// `SET [SESSION] pgsplit.route TO | = primary | replica | auto | default` (the value may be quoted), after any
/// leading comments; `None` when the statement is something else.
pub fn route_setting(sql: &str) -> Option<RouteSetting> {
    let (_, body) = leading_hint(sql);
    let lower = body
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .to_ascii_lowercase();
    let rest = lower.strip_prefix("set")?.trim_start();
    let rest = rest.strip_prefix("session").map_or(rest, str::trim_start);
    let rest = rest.strip_prefix("pgsplit.route")?.trim_start();
    let value = rest
        .strip_prefix("to")
        .or_else(|| rest.strip_prefix('='))?
        .trim();
    match value.trim_matches(|c| c == '\'' || c == '"') {
        "primary" => Some(RouteSetting::Fixed(Route::Write)),
        "replica" => Some(RouteSetting::Fixed(Route::Read)),
        "auto" | "default" => Some(RouteSetting::Auto),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_comment_gives_the_hint_and_the_rest_follows_it() {
        assert_eq!(
            leading_hint("/* pgsplit:primary */ SELECT 1"),
            (Some(Hint::Primary), "SELECT 1")
        );
        assert_eq!(
            leading_hint("-- note\n  /*pgsplit:replica*/\r\n/* other */SELECT 1"),
            (Some(Hint::Replica), "SELECT 1")
        );
        assert_eq!(
            leading_hint("/* pgsplit:replica */ /* pgsplit:primary */ x"),
            (Some(Hint::Primary), "x"),
            "the last hint wins"
        );
        assert_eq!(
            leading_hint("/* a /* pgsplit:replica */ b */ SELECT 1"),
            (None, "SELECT 1"),
            "a nested comment is part of its outer one"
        );
        assert_eq!(leading_hint("-- c\rSELECT 1"), (None, "SELECT 1"));
        assert_eq!(leading_hint("SELECT 1 /* pgsplit:replica */").0, None);
        assert_eq!(leading_hint("/* pgsplit:replica"), (None, ""));
        assert_eq!(leading_hint("-- pgsplit:replica"), (None, ""));
        assert_eq!(leading_hint("/* pgsplit:Replica */ x").0, None);
        assert_eq!(Hint::Primary.route(), Route::Write);
        assert_eq!(Hint::Replica.route(), Route::Read);
    }

    #[test]
    fn route_settings_are_read_with_their_value() {
        assert_eq!(
            route_setting("SET pgsplit.route TO primary"),
            Some(RouteSetting::Fixed(Route::Write))
        );
        assert_eq!(
            route_setting("set pgsplit.route = 'replica';"),
            Some(RouteSetting::Fixed(Route::Read))
        );
        assert_eq!(
            route_setting("/* c */ SET SESSION pgsplit.route TO \"auto\""),
            Some(RouteSetting::Auto)
        );
        assert_eq!(
            route_setting("SET pgsplit.route TO DEFAULT"),
            Some(RouteSetting::Auto)
        );
        for other in [
            "SET search_path TO x",
            "SET pgsplit.route TO elsewhere",
            "SET pgsplit.route",
            "RESET pgsplit.route",
            "SET LOCAL pgsplit.route TO primary",
        ] {
            assert_eq!(route_setting(other), None, "{other}");
        }
        assert_eq!(RouteSetting::Fixed(Route::Read).route(), Some(Route::Read));
        assert_eq!(RouteSetting::Auto.route(), None);
    }
}
