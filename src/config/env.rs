//! `PGSPLIT_*` environment overrides: `PGSPLIT_<KEY>` sets a top-level option, `PGSPLIT_<TABLE>__<KEY>` (two
//! underscores) an option of a table, e.g. `PGSPLIT_MAX_CLIENT_CONNECTIONS=2000`,
//! `PGSPLIT_POOLS__READ_POOL_SIZE=10`, `PGSPLIT_LAG__MAX_LAG=2s`, `PGSPLIT_PRIMARY__PORT=5433`. Names are
//! case-insensitive (lower-cased to the option's name).
//!
//! A value is read as a TOML value (`10`, `true`, `1.5`, `"quoted string"`, `["a", "b"]`), else taken as a
//! string (`2s`, `0.0.0.0:6432`); a value read as a number or boolean where the option wants a string is taken as
//! the string (`PGSPLIT_ADMIN_TOKEN=12345`). An unknown option is an error naming the variable.
//!
//! Not overrides (pgsplit's, its harness's and its benches' other variables): [`NOT_OVERRIDES`] and the
//! prefixes in [`NOT_OVERRIDE_PREFIXES`]. The lists (`[[replicas]]`, `[[databases]]`, `[[users]]`) cannot be set
//! from the environment.

use std::ffi::OsString;

use toml::{Table, Value};

use super::ConfigError;

/// Prefix of every override.
pub const PREFIX: &str = "PGSPLIT_";

/// Variables with the prefix that are not configuration overrides.
pub const NOT_OVERRIDES: [&str; 5] = [
    // The log filter and format.
    "PGSPLIT_LOG",
    "PGSPLIT_LOG_FORMAT",
    // Where the demo and the test harness find PostgreSQL's programs.
    "PGSPLIT_PG_BINDIR",
    // The servers' URLs, read by `pgsplit run` / `check-config` when `--primary` / `--replica` are not given.
    "PGSPLIT_PRIMARY_URL",
    "PGSPLIT_REPLICA_URLS",
];

/// Prefixes of variables that are not configuration overrides (benches and tests).
pub const NOT_OVERRIDE_PREFIXES: [&str; 3] = [
    "PGSPLIT_BENCH_",
    "PGSPLIT_CLUSTER_HARNESS_",
    "PGSPLIT_CLASSIFY_",
];

/// Top-level lists of tables: not settable from the environment.
const LISTS: [&str; 3] = ["replicas", "databases", "users"];

/// One override, read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The variable, e.g. `PGSPLIT_POOLS__READ_POOL_SIZE`.
    pub var: String,
    /// The option's path, e.g. `["pools", "read_pool_size"]`.
    pub path: Vec<String>,
    /// The value as given.
    pub raw: String,
    /// The value as TOML.
    pub value: Value,
}

impl Override {
    /// The option's dotted path, e.g. `pools.read_pool_size`.
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// Takes the value as a string (after a typed value did not fit the option); false when it already was.
    pub(super) fn as_string(&mut self) -> bool {
        if self.value.is_str() {
            return false;
        }
        self.value = Value::String(self.raw.clone());
        true
    }
}

/// Whether `var` is one of pgsplit's variables that are not overrides.
pub fn is_excluded(var: &str) -> bool {
    NOT_OVERRIDES.contains(&var) || NOT_OVERRIDE_PREFIXES.iter().any(|p| var.starts_with(p))
}

/// The process's `PGSPLIT_*` variables that are overrides, sorted by name. A variable with the prefix whose name
/// or value is not UTF-8 is an error.
pub fn from_process() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(name) = k.to_str() else {
            if k.to_string_lossy().starts_with(PREFIX) {
                return Err(error(&k.to_string_lossy(), "the name is not UTF-8"));
            }
            continue;
        };
        if !name.starts_with(PREFIX) || is_excluded(name) {
            continue;
        }
        let value = v
            .into_string()
            .map_err(|_: OsString| error(name, "the value is not UTF-8"))?;
        out.push((name.to_string(), value));
    }
    out.sort();
    Ok(out)
}

/// The overrides among `vars` (other variables and the exclusions are skipped), in the order given.
pub fn overrides(vars: &[(String, String)]) -> Result<Vec<Override>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in vars {
        let Some(name) = var.strip_prefix(PREFIX) else {
            continue;
        };
        if is_excluded(var) {
            continue;
        }
        let path: Vec<String> = name.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(error(
                var,
                "expected PGSPLIT_<OPTION> or PGSPLIT_<TABLE>__<OPTION> (an empty name between `__`)",
            ));
        }
        if LISTS.contains(&path[0].as_str()) {
            return Err(error(
                var,
                &format!(
                    "`{}` is a list of tables ([[{}]]): it cannot be set from the environment (use --primary and \
                     --replica, or a configuration file)",
                    path[0], path[0]
                ),
            ));
        }
        out.push(Override {
            var: var.clone(),
            path,
            raw: raw.clone(),
            value: typed(raw),
        });
    }
    Ok(out)
}

/// Sets each override in `doc`; each one's dotted path and variable are added to `origins`.
pub fn apply(
    doc: &mut Table,
    overrides: &[Override],
    origins: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    for o in overrides {
        let Some((last, parents)) = o.path.split_last() else {
            continue;
        };
        let mut table = &mut *doc;
        for (depth, seg) in parents.iter().enumerate() {
            let entry = table
                .entry(seg.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(t) => table = t,
                _ => {
                    return Err(error(
                        &o.var,
                        &format!("`{}` is not a table", o.path[..=depth].join(".")),
                    ))
                }
            }
        }
        if matches!(table.get(last), Some(Value::Table(_))) {
            return Err(error(
                &o.var,
                &format!(
                    "`{}` is a table: set its options with {}__<OPTION>",
                    o.dotted(),
                    o.var
                ),
            ));
        }
        table.insert(last.clone(), o.value.clone());
        origins.push((o.dotted(), o.var.clone()));
    }
    Ok(())
}

/// `raw` as a TOML value when it is one (and nothing more), else as a string.
fn typed(raw: &str) -> Value {
    match toml::from_str::<Table>(&format!("v = {raw}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        _ => Value::String(raw.to_string()),
    }
}

fn error(var: &str, message: &str) -> ConfigError {
    ConfigError {
        file: format!("environment variable {var}"),
        line: None,
        field: None,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_typed_as_toml_else_strings() {
        assert_eq!(typed("10"), Value::Integer(10));
        assert_eq!(typed("true"), Value::Boolean(true));
        assert_eq!(typed("1.5"), Value::Float(1.5));
        assert_eq!(typed("\"10\""), Value::String("10".into()));
        assert_eq!(typed("2s"), Value::String("2s".into()));
        assert_eq!(typed("0.0.0.0:6432"), Value::String("0.0.0.0:6432".into()));
        assert_eq!(typed(""), Value::String("".into()));
        // A value smuggling in another key is just a string.
        assert_eq!(typed("1\nx = 2"), Value::String("1\nx = 2".into()));
        assert!(typed("[\"a\", \"b\"]").is_array());
    }

    #[test]
    fn names_map_to_paths_and_exclusions_are_skipped() {
        let o = overrides(&vars(&[
            ("PGSPLIT_POOLS__READ_POOL_SIZE", "10"),
            ("PGSPLIT_MAX_CLIENT_CONNECTIONS", "2000"),
            ("PGSPLIT_LOG", "debug"),
            ("PGSPLIT_LOG_FORMAT", "json"),
            ("PGSPLIT_PG_BINDIR", "/usr/lib/postgresql/17/bin"),
            ("PGSPLIT_BENCH_SECONDS", "5"),
            ("PGSPLIT_PRIMARY_URL", "postgres://h"),
            ("HOME", "/root"),
        ]))
        .unwrap();
        let paths: Vec<String> = o.iter().map(Override::dotted).collect();
        assert_eq!(paths, ["pools.read_pool_size", "max_client_connections"]);
        assert_eq!(o[0].value, Value::Integer(10));
    }

    #[test]
    fn malformed_names_and_lists_are_refused() {
        let e = overrides(&vars(&[("PGSPLIT_POOLS__", "1")])).unwrap_err();
        assert!(e.to_string().contains("PGSPLIT_POOLS__"), "{e}");
        let e = overrides(&vars(&[("PGSPLIT_USERS__PASSWORD", "x")])).unwrap_err();
        assert!(e.to_string().contains("PGSPLIT_USERS__PASSWORD"), "{e}");
        assert!(e.to_string().contains("list"), "{e}");
    }

    #[test]
    fn apply_sets_values_and_refuses_tables() {
        let mut doc: Table = toml::from_str("[pools]\nread_pool_size = 3\n[lag]\n").unwrap();
        let o = overrides(&vars(&[
            ("PGSPLIT_POOLS__READ_POOL_SIZE", "10"),
            ("PGSPLIT_TIMEOUTS__SHUTDOWN", "1s"),
        ]))
        .unwrap();
        let mut origins = Vec::new();
        apply(&mut doc, &o, &mut origins).unwrap();
        assert_eq!(doc["pools"]["read_pool_size"], Value::Integer(10));
        assert_eq!(doc["timeouts"]["shutdown"], Value::String("1s".into()));
        assert_eq!(origins[0].1, "PGSPLIT_POOLS__READ_POOL_SIZE");

        let o = overrides(&vars(&[("PGSPLIT_LAG", "1")])).unwrap();
        let e = apply(&mut doc, &o, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("PGSPLIT_LAG__<OPTION>"), "{e}");
        let o = overrides(&vars(&[("PGSPLIT_POOLS__READ_POOL_SIZE__X", "1")])).unwrap();
        let e = apply(&mut doc, &o, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("not a table"), "{e}");
    }
}
