//! pgsplit's own routing words in SQL text: the leading hint comments (`/* pgsplit:primary */`,
//! `/* pgsplit:replica */`, `/* pgsplit:min_lsn=0/16B6C50 */`, `/* pgsplit:max_lag=200ms */`) and
//! `SET pgsplit.route TO primary | replica | auto`. [`Route`] lives here, below the classifier, so that these
//! readers need nothing above `sql`.

use std::time::Duration;

use super::lexer::skip_space;
use crate::causal::Lsn;

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

/// What the leading comments of one statement ask of pgsplit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatementHints {
    /// `pgsplit:primary` or `pgsplit:replica` (the last one, when several are given).
    pub route: Option<Hint>,
    /// `pgsplit:min_lsn=0/16B6C50`: the statement must see at least this WAL position (the highest, when several
    /// are given).
    pub min_lsn: Option<Lsn>,
    /// `pgsplit:max_lag=200ms`: the statement may run only on a replica at most this far behind (the smallest,
    /// when several are given).
    pub max_lag: Option<Duration>,
}

impl StatementHints {
    /// Whether no hint was given.
    pub fn is_empty(&self) -> bool {
        *self == StatementHints::default()
    }

    /// Reads one block comment's body. It gives hints only when every item in it (separated by commas or
    /// whitespace) is a `pgsplit:` item, so that prose mentioning one (`/* pgsplit:replica is fine here */`) is
    /// just a comment; within such a comment an unknown item or a bad value is ignored, like any comment.
    fn read_comment(&mut self, body: &str) {
        let items = || {
            body.split(|c: char| c == ',' || c.is_ascii_whitespace())
                .filter(|item| !item.is_empty())
        };
        if items().next().is_none() || !items().all(|item| item.starts_with("pgsplit:")) {
            return;
        }
        for item in items().filter_map(|item| item.strip_prefix("pgsplit:")) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            match (key, value) {
                ("primary", "") => self.route = Some(Hint::Primary),
                ("replica", "") => self.route = Some(Hint::Replica),
                ("min_lsn", v) => {
                    if let Some(lsn) = Lsn::parse(v) {
                        self.min_lsn = self.min_lsn.max(Some(lsn));
                    }
                }
                ("max_lag", v) => {
                    if let Some(lag) = lag_budget(v) {
                        self.max_lag = Some(self.max_lag.map_or(lag, |m| m.min(lag)));
                    }
                }
                _ => {}
            }
        }
    }
}

/// A staleness budget: a number (`200`, `1.5`) and a unit (`us`, `ms`, `s`, `m` or `min`, `h`), or `0`.
fn lag_budget(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at_checked(split)?;
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let nanos_per_unit = match unit {
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        "" if value == 0.0 => 0.0,
        _ => return None,
    };
    let nanos = (value * nanos_per_unit).round();
    // `as` saturates; the check keeps a huge budget from reading as a smaller one.
    (nanos.is_finite() && nanos < u64::MAX as f64).then(|| Duration::from_nanos(nanos as u64))
}

/// Skips leading whitespace and comments: what `pgsplit:` comments among them ask (see
/// [`StatementHints::read_comment`]) and the text after the comments.
pub fn leading_hints(sql: &str) -> (StatementHints, &str) {
    let mut hints = StatementHints::default();
    let end = skip_space(sql.as_bytes(), 0, |comment| {
        let body = comment
            .get(2..comment.len().saturating_sub(2))
            .unwrap_or(b"");
        if let Ok(body) = std::str::from_utf8(body) {
            hints.read_comment(body);
        }
    });
    // `skip_space` stops only at an ASCII byte or at the end: `end` is a character boundary.
    (hints, sql.get(end..).unwrap_or(""))
}

/// Skips leading whitespace and comments: the routing hint a leading comment gives (the last one, when several
/// do) and the text after the comments. [`leading_hints`] reads the other hints too.
pub fn leading_hint(sql: &str) -> (Option<Hint>, &str) {
    let (hints, rest) = leading_hints(sql);
    (hints.route, rest)
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
        assert_eq!(
            leading_hint("/* pgsplit:replica is fine here */ x").0,
            None,
            "prose that mentions a hint is a comment"
        );
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

    fn hints(sql: &str) -> StatementHints {
        leading_hints(sql).0
    }

    #[test]
    fn floors_and_lag_budgets_are_read_from_leading_comments() {
        let (h, rest) = leading_hints("/* pgsplit:min_lsn=0/16B6C50 */ SELECT 1");
        assert_eq!(h.min_lsn, Some(Lsn(0x16B_6C50)));
        assert_eq!((h.route, h.max_lag, rest), (None, None, "SELECT 1"));
        assert_eq!(
            hints("/* pgsplit:max_lag=200ms */ SELECT 1").max_lag,
            Some(Duration::from_millis(200))
        );
        // Several comments in a row, or several items in one, separated by commas or spaces.
        let all = StatementHints {
            route: Some(Hint::Replica),
            min_lsn: Some(Lsn((0x16 << 32) | 0xB374_D848)),
            max_lag: Some(Duration::from_millis(1500)),
        };
        for sql in [
            "/* pgsplit:replica */ /* pgsplit:min_lsn=16/b374d848 */\n/* pgsplit:max_lag=1.5s */ SELECT 1",
            "/* pgsplit:replica, pgsplit:min_lsn=16/B374D848, pgsplit:max_lag=1500ms */SELECT 1",
            "/*pgsplit:replica pgsplit:min_lsn=16/B374D848\tpgsplit:max_lag=1.5s*/ SELECT 1",
            "-- a note\n/* pgsplit:max_lag=1500ms,pgsplit:replica */ /* other */ /* pgsplit:min_lsn=16/B374D848 */ SELECT 1",
        ] {
            assert_eq!(leading_hints(sql), (all, "SELECT 1"), "{sql}");
        }
        // The highest floor, the smallest budget, the last route.
        assert_eq!(
            hints("/* pgsplit:min_lsn=0/5 pgsplit:min_lsn=1/0 pgsplit:min_lsn=0/7 */ x").min_lsn,
            Some(Lsn(1 << 32))
        );
        assert_eq!(
            hints("/* pgsplit:max_lag=1s */ /* pgsplit:max_lag=50ms pgsplit:max_lag=2s */ x")
                .max_lag,
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            hints("/* pgsplit:primary, pgsplit:replica */ x").route,
            Some(Hint::Replica)
        );
        // Units and zero.
        for (text, want) in [
            ("0", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
            ("2s", Duration::from_secs(2)),
            (".5s", Duration::from_millis(500)),
            ("1m", Duration::from_secs(60)),
            ("1min", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
        ] {
            assert_eq!(
                hints(&format!("/* pgsplit:max_lag={text} */ x")).max_lag,
                Some(want),
                "{text}"
            );
        }
        // Bad values and unknown items are ignored; the comment's other items still count.
        for sql in [
            "/* pgsplit:min_lsn= */ x",
            "/* pgsplit:min_lsn=garbage */ x",
            "/* pgsplit:min_lsn='0/1' */ x",
            "/* pgsplit:min_lsn=0/1/2 */ x",
            "/* pgsplit:min_lsn = 0/1 */ x",
            "/* pgsplit:max_lag= */ x",
            "/* pgsplit:max_lag=200 */ x",
            "/* pgsplit:max_lag=-1s */ x",
            "/* pgsplit:max_lag=1e3ms */ x",
            "/* pgsplit:max_lag=. */ x",
            "/* pgsplit:max_lag=1.2.3s */ x",
            "/* pgsplit:max_lag=999999999999999999999999h */ x",
            "/* pgsplit:max_lag=200MS */ x",
            "/* pgsplit:frobnicate */ x",
            "/* pgsplit:primary=1 */ x",
            "/* pgsplit:MIN_LSN=0/1 */ x",
            "/* see pgsplit:min_lsn=0/1 */ x",
            "/* a /* pgsplit:min_lsn=0/1 */ b */ x",
            "SELECT 1 /* pgsplit:min_lsn=0/1 */",
            "/* pgsplit:min_lsn=0/1",
            "/**/ x",
            "/* , */ x",
        ] {
            assert!(hints(sql).is_empty(), "{sql}: {:?}", hints(sql));
        }
        assert_eq!(
            hints("/* pgsplit:replica, pgsplit:min_lsn=bad, pgsplit:nope */ x"),
            StatementHints {
                route: Some(Hint::Replica),
                ..StatementHints::default()
            }
        );
    }
}
