//! A client's session settings in transaction pooling: what its startup packet asked for and what its own SET,
//! RESET, DISCARD ALL and `set_config(…, false)` changed. They are re-applied on every server connection the
//! client is given (skipped where that connection already has them), and settings other clients left on a
//! connection are reset first. pgsplit's own startup parameters (`pgsplit.*`, plain or in `options`) are kept
//! apart and never sent to a server.

use std::collections::HashMap;

use crate::causal::{Consistency, Lsn};
use crate::server::ServerConn;
use crate::sql::{
    is_plain_name, pgsplit_parameter, quote_literal, set_statement, PgsplitCommand, PgsplitError,
    RouteSetting, SessionChange, SessionEvent,
};

/// Settings the server reports (ParameterStatus) that a client may set and pgsplit therefore follows. Others
/// (`is_superuser`, `session_authorization`, `in_hot_standby`, `server_version`, …) are the server's or the
/// login's, never something to replay on another connection.
const FOLLOWED_REPORTS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "search_path",
];

/// One setting as the client wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    /// Lower-case name.
    name: String,
    /// The value as SQL (what follows `SET name TO`).
    sql: String,
    /// The plain value when known (startup parameters, reported values), to compare with what a server reports.
    raw: Option<String>,
}

/// A client's settings.
#[derive(Debug, Default)]
pub struct Settings {
    /// Hash of `current`, so that a connection already synced for an equal set is recognised cheaply.
    fingerprint: u64,
    current: Vec<Setting>,
    startup: Vec<Setting>,
    /// ParameterStatus values the client was greeted with (shared between clients), by server spelling.
    greeted: std::sync::Arc<HashMap<String, String>>,
    /// Values the client has seen change since.
    seen: HashMap<String, String>,
    /// pgsplit's own startup parameters.
    pgsplit: PgsplitStartup,
}

/// What the startup packet asked of pgsplit itself (`pgsplit.consistency`, `pgsplit.min_lsn`,
/// `pgsplit.route`), and the first of them PostgreSQL would have refused.
#[derive(Debug, Default)]
struct PgsplitStartup {
    consistency: Option<Consistency>,
    min_lsn: Option<Lsn>,
    route: Option<RouteSetting>,
    error: Option<PgsplitError>,
}

impl PgsplitStartup {
    fn read(&mut self, read: Result<PgsplitCommand, PgsplitError>) {
        match read {
            Ok(PgsplitCommand::SetConsistency(c)) => self.consistency = c,
            Ok(PgsplitCommand::SetMinLsn(lsn)) => self.min_lsn = Some(lsn),
            Ok(PgsplitCommand::SetRoute(route)) => self.route = Some(route),
            // A startup value is never DEFAULT, nor a RESET or SHOW.
            Ok(PgsplitCommand::Reset(_) | PgsplitCommand::Show(_)) => {}
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

impl Settings {
    /// Settings from the startup parameters, with `options` (`-c name=value`) expanded.
    pub fn from_startup(startup: &[(String, String)]) -> Settings {
        let mut s = Settings::default();
        for (name, value) in startup_settings(startup) {
            if let Some(read) = pgsplit_parameter(&name, &value) {
                s.pgsplit.read(read);
                continue;
            }
            s.set(Setting {
                sql: quote_literal(&value),
                raw: Some(value),
                name,
            });
        }
        s.startup = s.current.clone();
        s
    }

    fn set(&mut self, setting: Setting) {
        match self.current.iter_mut().find(|s| s.name == setting.name) {
            Some(s) => *s = setting,
            None => self.current.push(setting),
        }
        self.refingerprint();
    }

    fn refingerprint(&mut self) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for s in &self.current {
            s.name.hash(&mut h);
            s.sql.hash(&mut h);
        }
        self.fingerprint = h.finish();
    }

    /// Records a change the client made that the server accepted.
    pub fn record(&mut self, change: &SessionChange) {
        match change {
            SessionChange::Set { name, value } => {
                self.set(Setting {
                    name: name.clone(),
                    sql: value.clone(),
                    raw: None,
                });
            }
            SessionChange::Reset(name) => {
                self.current.retain(|s| s.name != *name);
                if let Some(s) = self.startup.iter().find(|s| s.name == *name) {
                    self.current.push(s.clone());
                }
            }
            SessionChange::ResetAll => self.current = self.startup.clone(),
        }
        self.refingerprint();
    }

    /// Records a value the server reported for this client's session (a ParameterStatus it caused). Returns
    /// false, recording nothing, for a setting pgsplit does not follow (see [`FOLLOWED_REPORTS`]).
    pub fn reported(&mut self, name: &str, value: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        if !FOLLOWED_REPORTS.contains(&lower.as_str()) {
            return false;
        }
        if let Some(s) = self.current.iter_mut().find(|s| s.name == lower) {
            if s.raw.as_deref() == Some(value) {
                return true;
            }
        }
        self.set(Setting {
            name: lower,
            sql: quote_literal(value),
            raw: Some(value.to_string()),
        });
        true
    }

    /// Whether a ParameterStatus should reach the client: only when the value it sees changes.
    pub fn status_changes(&mut self, name: &str, value: &str) -> bool {
        let current = self.seen.get(name).or_else(|| self.greeted.get(name));
        if current.map(String::as_str) == Some(value) {
            return false;
        }
        self.seen.insert(name.to_string(), value.to_string());
        true
    }

    /// The SQL that brings `conn` to this client's settings (resetting what other clients left), or `None`
    /// when it already has them.
    pub fn sync_sql(&self, conn: &ServerConn) -> Option<String> {
        if conn.settings_fingerprint == Some(self.fingerprint) {
            return None;
        }
        let mut sql = String::new();
        for s in &self.current {
            if conn.applied.get(&s.name) == Some(&s.sql) {
                continue;
            }
            let reported = conn
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&s.name))
                .map(|(_, v)| v);
            if !conn.applied.contains_key(&s.name) && s.raw.is_some() && reported == s.raw.as_ref()
            {
                continue;
            }
            sql.push_str(&set_statement(&s.name, &s.sql));
            sql.push_str(";\n");
        }
        for name in conn.applied.keys() {
            if !self.current.iter().any(|s| s.name == *name) {
                sql.push_str(&format!("RESET {name};\n"));
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Marks `conn` as carrying exactly this client's settings (after `sync_sql` ran).
    pub fn synced(&self, conn: &mut ServerConn) {
        conn.applied = self
            .current
            .iter()
            .map(|s| (s.name.clone(), s.sql.clone()))
            .collect();
        conn.settings_fingerprint = Some(self.fingerprint);
    }

    /// Marks a change the client made on a server connection, in that connection's `applied` map (so that the
    /// next client gets it reset).
    pub fn applied_on(applied: &mut HashMap<String, String>, change: &SessionChange) {
        match change {
            SessionChange::Set { name, value } => {
                applied.insert(name.clone(), value.clone());
            }
            SessionChange::Reset(name) => {
                applied.remove(name);
            }
            SessionChange::ResetAll => applied.clear(),
        }
    }

    /// Whether the client set `name` to something other than zero (or off).
    pub fn is_enabled(&self, name: &str) -> bool {
        self.current
            .iter()
            .find(|s| s.name == name)
            .is_some_and(|s| {
                let v = s.raw.as_deref().unwrap_or(&s.sql);
                let v = v.trim_start_matches(['E', 'e']).trim_matches('\'').trim();
                !(v == "0" || v.eq_ignore_ascii_case("off"))
            })
    }

    /// Whether the client's transactions default to SERIALIZABLE, which a hot standby refuses to run.
    pub fn serializable_by_default(&self) -> bool {
        self.current
            .iter()
            .find(|s| s.name == "default_transaction_isolation")
            .is_some_and(|s| {
                let v = s.raw.as_deref().unwrap_or(&s.sql);
                // Asked for every read: compared in place, no allocation.
                v.as_bytes()
                    .windows(b"serializable".len())
                    .any(|w| w.eq_ignore_ascii_case(b"serializable"))
            })
    }

    /// Whether the client encoding is one whose multi-byte characters may contain ASCII bytes (PostgreSQL
    /// accepts these only as client encodings).
    pub fn ascii_unsafe_encoding(&self) -> bool {
        const UNSAFE: &[&str] = &[
            "sjis",
            "shiftjis",
            "mskanji",
            "win932",
            "windows932",
            "big5",
            "win950",
            "windows950",
            "gbk",
            "win936",
            "windows936",
            "cp936",
            "uhc",
            "win949",
            "windows949",
            "gb18030",
            "johab",
        ];
        self.current
            .iter()
            .find(|s| s.name == "client_encoding")
            .map(|s| {
                // PostgreSQL compares encoding names on their letters and digits only.
                let v: String = s
                    .raw
                    .as_deref()
                    .unwrap_or(&s.sql)
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect::<String>()
                    .to_ascii_lowercase();
                UNSAFE.iter().any(|u| v.contains(u))
            })
            .unwrap_or(false)
    }

    /// The startup parameters with plain values (lower-case names).
    pub fn startup_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.startup
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.raw.as_deref()?)))
    }

    /// The startup parameters `pgsplit.consistency` and `pgsplit.min_lsn` (plain, or `-c` in `options`), or
    /// the error PostgreSQL would give for the first bad `pgsplit.*` one (an unknown name, a bad value; the
    /// login is refused with it, as PostgreSQL refuses a bad startup setting).
    pub fn startup_causal(&self) -> Result<(Option<Consistency>, Option<Lsn>), PgsplitError> {
        match &self.pgsplit.error {
            Some(e) => Err(e.clone()),
            None => Ok((self.pgsplit.consistency, self.pgsplit.min_lsn)),
        }
    }

    /// The startup parameter `pgsplit.route`, when given (and valid: see [`Settings::startup_causal`]).
    pub fn startup_route(&self) -> Option<RouteSetting> {
        self.pgsplit.route
    }

    /// The ParameterStatus values the client saw at login.
    pub fn greeted(&mut self, params: &std::sync::Arc<HashMap<String, String>>) {
        self.greeted = params.clone();
        self.seen.clear();
    }
}

/// Setting changes made inside the current transaction, with the savepoints that may undo part of them. They
/// become the client's settings only when the transaction commits (or, outside a transaction block, when its
/// unit succeeds); a `ROLLBACK TO SAVEPOINT` drops what followed the savepoint.
#[derive(Debug, Default)]
pub struct TxnLog {
    entries: Vec<Entry>,
    /// How the transaction ended, from its last COMMIT (`true`) or ROLLBACK (`false`) command tag.
    end: Option<bool>,
    /// A unit that changed settings failed part-way: what survived is not known exactly.
    uncertain: bool,
}

#[derive(Debug)]
enum Entry {
    Change(SessionChange),
    Savepoint(String),
}

/// What the log says when the transaction is over.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// These changes hold (possibly none).
    Keep(Vec<SessionChange>),
    /// pgsplit cannot tell which changes hold: the server connection alone knows.
    Uncertain,
}

impl TxnLog {
    /// Adds the events of a unit the server ran without error.
    pub fn push(&mut self, events: Vec<SessionEvent>) {
        for e in events {
            match e {
                SessionEvent::Change(c) => self.entries.push(Entry::Change(c)),
                SessionEvent::Savepoint(n) => self.entries.push(Entry::Savepoint(n)),
                SessionEvent::RollbackTo(n) => match self.savepoint(&n) {
                    Some(i) => self.entries.truncate(i + 1),
                    None => self.uncertain = true,
                },
                SessionEvent::Release(n) => match self.savepoint(&n) {
                    Some(i) => {
                        let later = self.entries.split_off(i);
                        self.entries
                            .extend(later.into_iter().filter(|e| matches!(e, Entry::Change(_))));
                    }
                    None => self.uncertain = true,
                },
            }
        }
    }

    /// A unit with these events failed: some of them may have run before the error.
    pub fn failed(&mut self, events: &[SessionEvent]) {
        if !events.is_empty() {
            self.uncertain = true;
        }
    }

    /// A COMMIT (`true`) or ROLLBACK (`false`) command tag.
    pub fn ended(&mut self, committed: bool) {
        self.end = Some(committed);
    }

    /// Marks the log uncertain (a transaction end pgsplit cannot judge, such as PREPARE TRANSACTION).
    pub fn unsure(&mut self) {
        self.uncertain = true;
    }

    fn savepoint(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .rposition(|e| matches!(e, Entry::Savepoint(n) if n == name))
    }

    /// The transaction is over: what holds. The log is empty again afterwards.
    pub fn finish(&mut self) -> Outcome {
        let log = std::mem::take(self);
        if log.end == Some(false) {
            // Rolled back whole: nothing of it holds, whatever failed on the way.
            return Outcome::Keep(Vec::new());
        }
        if log.uncertain {
            return Outcome::Uncertain;
        }
        Outcome::Keep(
            log.entries
                .into_iter()
                .filter_map(|e| match e {
                    Entry::Change(c) => Some(c),
                    Entry::Savepoint(_) => None,
                })
                .collect(),
        )
    }
}

/// The startup parameters carried to server connections, with `options` (`-c name=value`) expanded.
fn startup_settings(startup: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |name: &str, value: &str| {
        let name = name.to_ascii_lowercase();
        if !is_plain_name(&name) {
            return;
        }
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(p) => p.1 = value.to_string(),
            None => out.push((name, value.to_string())),
        }
    };
    for (k, v) in startup {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                let mut words = v.split_whitespace();
                while let Some(w) = words.next() {
                    let setting = if w == "-c" {
                        words.next()
                    } else {
                        w.strip_prefix("-c").or_else(|| w.strip_prefix("--"))
                    };
                    if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
                        push(&name.replace('-', "_"), value);
                    }
                }
            }
            _ => push(k, v),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serializable_default_is_seen_however_it_was_set() {
        let startup = |options: &str| {
            Settings::from_startup(&[("options".into(), options.into())]).serializable_by_default()
        };
        assert!(startup("-c default_transaction_isolation=serializable"));
        assert!(startup("--default-transaction-isolation=SERIALIZABLE"));
        assert!(!startup(
            "-c default_transaction_isolation=repeatable\\ read"
        ));
        let mut s = Settings::default();
        assert!(!s.serializable_by_default());
        let set = |value: &str| SessionChange::Set {
            name: "default_transaction_isolation".into(),
            value: value.into(),
        };
        s.record(&set("'serializable'"));
        assert!(s.serializable_by_default());
        s.record(&set("'read committed'"));
        assert!(!s.serializable_by_default());
        s.record(&set("SERIALIZABLE"));
        assert!(s.serializable_by_default());
        s.record(&SessionChange::Reset(
            "default_transaction_isolation".into(),
        ));
        assert!(!s.serializable_by_default());
    }

    #[test]
    fn options_are_expanded() {
        let p = startup_settings(&[
            ("user".into(), "u".into()),
            ("application_name".into(), "psql".into()),
            (
                "options".into(),
                "-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB".into(),
            ),
            ("bad;name".into(), "x".into()),
        ]);
        assert_eq!(
            p,
            vec![
                ("application_name".into(), "psql".into()),
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "4MB".into()),
            ]
        );
    }

    #[test]
    fn pgsplit_startup_parameters_are_read_and_never_forwarded() {
        let s = Settings::from_startup(&[
            ("user".into(), "u".into()),
            ("application_name".into(), "app".into()),
            ("pgsplit.consistency".into(), "STRICT".into()),
            (
                "options".into(),
                "-c pgsplit.min_lsn=0/16B6C50 --pgsplit.route=replica -c work_mem=4MB".into(),
            ),
        ]);
        assert_eq!(
            s.startup_causal(),
            Ok((Some(Consistency::Strict), Some(Lsn(0x16B_6C50))))
        );
        assert_eq!(
            s.startup_route(),
            Some(RouteSetting::Fixed(crate::sql::Route::Read))
        );
        let names: Vec<&str> = s.current.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["application_name", "work_mem"]);
        assert_eq!(s.startup, s.current);
        assert!(s
            .startup_values()
            .all(|(name, _)| !name.starts_with("pgsplit")));

        // The options win over a plain parameter given before them, as for any setting; names in any case.
        let s = Settings::from_startup(&[
            ("PgSplit.Consistency".into(), "strict".into()),
            ("options".into(), "-cpgsplit.consistency=eventual".into()),
        ]);
        assert_eq!(s.startup_causal(), Ok((Some(Consistency::Eventual), None)));
        assert!(s.current.is_empty());

        let s = Settings::from_startup(&[("application_name".into(), "app".into())]);
        assert_eq!(s.startup_causal(), Ok((None, None)));
        assert_eq!(s.startup_route(), None);

        // A bad one is the login's error, and is not forwarded either.
        for (name, value, code) in [
            ("pgsplit.consistency", "causal", "22023"),
            ("pgsplit.min_lsn", "latest", "22023"),
            ("pgsplit.lsn", "0/1", "55P02"),
            ("pgsplit.colour", "blue", "42704"),
        ] {
            let s = Settings::from_startup(&[
                (name.into(), value.into()),
                ("pgsplit.route".into(), "primary".into()),
            ]);
            let e = s.startup_causal().unwrap_err();
            assert_eq!(e.sqlstate, code, "{name}={value}: {e}");
            assert!(e.message.contains(name), "{e}");
            assert!(s.current.is_empty(), "{name}");
        }
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    fn change(name: &str, value: &str) -> SessionEvent {
        SessionEvent::Change(SessionChange::Set {
            name: name.into(),
            value: value.into(),
        })
    }

    #[test]
    fn a_rollback_to_savepoint_undoes_only_what_followed_it() {
        let mut log = TxnLog::default();
        log.push(vec![change("a", "1"), SessionEvent::Savepoint("s".into())]);
        log.push(vec![change("b", "2")]);
        log.push(vec![SessionEvent::RollbackTo("s".into())]);
        log.push(vec![change("c", "3"), SessionEvent::Release("s".into())]);
        log.ended(true);
        let names: Vec<String> = match log.finish() {
            Outcome::Keep(changes) => changes
                .iter()
                .map(|c| match c {
                    SessionChange::Set { name, .. } => name.clone(),
                    _ => String::new(),
                })
                .collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn a_rolled_back_transaction_keeps_nothing_and_a_failed_unit_is_uncertain() {
        let mut log = TxnLog::default();
        log.push(vec![change("a", "1")]);
        log.ended(false);
        assert!(matches!(log.finish(), Outcome::Keep(c) if c.is_empty()));
        log.push(vec![change("a", "1")]);
        log.failed(&[change("b", "2")]);
        log.ended(true);
        assert!(matches!(log.finish(), Outcome::Uncertain));
        // A fresh transaction after finish starts clean.
        log.push(vec![change("a", "1")]);
        assert!(matches!(log.finish(), Outcome::Keep(c) if c.len() == 1));
    }

    #[test]
    fn replayed_settings_are_one_statement_per_line() {
        assert_eq!(set_statement("timezone", "'UTC'"), "SET TIME ZONE 'UTC'");
        assert_eq!(set_statement("work_mem", "'4MB'"), "SET work_mem TO '4MB'");
    }

    #[test]
    fn only_client_settable_reports_are_followed() {
        let mut s = Settings::default();
        assert!(!s.reported("is_superuser", "on"));
        assert!(!s.reported("session_authorization", "postgres"));
        assert!(!s.reported("in_hot_standby", "on"));
        assert!(s.reported("TimeZone", "UTC"));
        assert_eq!(s.current.len(), 1);
    }

    #[test]
    fn reset_restores_the_startup_value() {
        let mut s = Settings::from_startup(&[("application_name".into(), "app".into())]);
        s.record(&SessionChange::Set {
            name: "application_name".into(),
            value: "'x'".into(),
        });
        s.record(&SessionChange::Set {
            name: "search_path".into(),
            value: "a, b".into(),
        });
        assert_eq!(s.current.len(), 2);
        s.record(&SessionChange::Reset("application_name".into()));
        assert_eq!(
            s.current
                .iter()
                .find(|x| x.name == "application_name")
                .map(|x| x.sql.as_str()),
            Some("E'app'")
        );
        s.record(&SessionChange::ResetAll);
        assert_eq!(s.current, s.startup);
    }

    #[test]
    fn status_is_forwarded_only_when_it_changes() {
        let mut s = Settings::default();
        s.greeted(&std::sync::Arc::new(HashMap::from([(
            "TimeZone".to_string(),
            "UTC".to_string(),
        )])));
        assert!(!s.status_changes("TimeZone", "UTC"));
        assert!(s.status_changes("TimeZone", "Europe/Paris"));
        assert!(!s.status_changes("TimeZone", "Europe/Paris"));
    }
}
