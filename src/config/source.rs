//! Where a configuration comes from, and merging it: a file (optional), then the command-line flags
//! ([`Flags`]: `--primary`, `--replica`, `--listen`, `--admin-listen`), then `PGSPLIT_*` environment overrides
//! ([`super::env`]); each later one wins. The merged document goes through the same loader and validation as a
//! file. An error about a field a flag or a variable set names that flag or variable instead of a file line.
//!
//! Reload ([`Source::reloadable`]): a source with a file re-reads it and sets the same flags and the
//! environment captured at start over it (a process's environment does not change); a source without a file has
//! nothing to re-read and is refused.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::env::{self, Override};
use super::flags::Flags;
use super::load::{FieldPath, Locator};
use super::{Config, ConfigError};

/// Name errors and `check-config` give a configuration with no file.
pub const NO_FILE: &str = "command line";

/// A configuration's sources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    /// The configuration file, if any.
    pub file: Option<PathBuf>,
    /// The command-line flags.
    pub flags: Flags,
    /// The environment's `PGSPLIT_*` variables (as [`env::from_process`] gives them; others are ignored).
    pub env: Vec<(String, String)>,
}

impl Source {
    /// A configuration file alone (no flags, no environment).
    pub fn file(path: PathBuf) -> Source {
        Source {
            file: Some(path),
            ..Source::default()
        }
    }

    /// Whether a reload has something to re-read (a file).
    pub fn reloadable(&self) -> bool {
        self.file.is_some()
    }

    /// The sources in force, for a person: `pgsplit.toml, --primary, PGSPLIT_POOLS__READ_POOL_SIZE`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.file.iter().map(|f| f.display().to_string()).collect();
        parts.extend(self.flags.describe());
        if let Ok(overrides) = env::overrides(&self.env) {
            parts.extend(overrides.into_iter().map(|o| o.var));
        }
        parts.join(", ")
    }

    /// Reads, merges, fills in defaults and validates.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let overrides = env::overrides(&self.env)?;
        let label = self
            .file
            .as_deref()
            .map_or_else(|| NO_FILE.to_string(), |p| p.display().to_string());
        let text = match &self.file {
            Some(path) => read(path, &label)?,
            None => String::new(),
        };
        if self.flags.is_empty() && overrides.is_empty() {
            // Exactly the file's own loading: its errors keep their lines.
            return Config::from_toml_str(&text, &label);
        }
        let file_locator = Locator::new(&text, &label);
        let doc: Table = toml::from_str(&text).map_err(|e| file_locator.toml_error(&e))?;
        let mut flag_origins = Vec::new();
        let mut flagged = doc;
        self.flags.apply(&mut flagged, &mut flag_origins)?;
        let mut overrides = overrides;
        // At most one more attempt per override: each retry turns one typed value into a string.
        loop {
            let mut merged = flagged.clone();
            let mut origins = flag_origins.clone();
            env::apply(&mut merged, &overrides, &mut origins)?;
            let merged_text = toml::to_string(&Value::Table(merged)).map_err(|e| ConfigError {
                file: label.clone(),
                line: None,
                field: None,
                message: format!("cannot merge the configuration: {e}"),
            })?;
            let err = match Config::from_toml_str(&merged_text, &label) {
                Ok(config) => return Ok(config),
                Err(e) => e,
            };
            let origin = err.field.as_deref().and_then(|f| origin_of(f, &origins));
            if let Some(origin) = origin {
                // `PGSPLIT_ADMIN_TOKEN=12345` read as a number where a string is wanted: take it as written.
                // (A secret's type error is reworded so as not to show the value.)
                if err.message.starts_with("invalid type")
                    || err.message.starts_with("must be a string")
                {
                    if let Some(o) = overrides.iter_mut().find(|o| o.var == origin) {
                        if o.as_string() {
                            continue;
                        }
                    }
                }
                return Err(relabel(err, origin, &overrides));
            }
            // A field the file set (or a default): its line in the file, not in the merged text.
            let line = match (&self.file, err.field.as_deref()) {
                (Some(_), Some(field)) => file_locator.line_of(&FieldPath::parse(field)),
                _ => None,
            };
            return Err(ConfigError { line, ..err });
        }
    }
}

/// The flag or variable that set `field` (or a table or list entry holding it), the latest first.
fn origin_of(field: &str, origins: &[(String, String)]) -> Option<String> {
    origins
        .iter()
        .rev()
        .find(|(path, _)| {
            field == path
                || field
                    .strip_prefix(path.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
        .map(|(_, origin)| origin.clone())
}

/// An error about what `origin` set, named after it: `environment variable PGSPLIT_X: x: …` or `--primary: …`.
fn relabel(err: ConfigError, origin: String, overrides: &[Override]) -> ConfigError {
    let file = if overrides.iter().any(|o| o.var == origin) {
        format!("environment variable {origin}")
    } else {
        origin
    };
    ConfigError {
        file,
        line: None,
        ..err
    }
}

fn read(path: &Path, label: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: label.to_string(),
        line: None,
        field: None,
        message: format!("cannot read the configuration file: {e}"),
    })
}
