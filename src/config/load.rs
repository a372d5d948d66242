//! Loading a configuration file: parse, fill in names, validate; and the [`Locator`] that turns a field path or a
//! byte offset into the file, line and field an error names.

use std::fmt;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Config;

/// A configuration error: which file, which line (when known), which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The file, as given to [`Config::load`] or [`Config::from_toml_str`].
    pub file: String,
    /// 1-based line number, when the error can be tied to one.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `users[1].auth` (indices from 0).
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(": ");
        if let Some(field) = &self.field {
            out.push_str(field);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

impl Config {
    /// Parses, fills in defaults and validates a configuration; `file` names it in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let locator = Locator::new(text, file);
        let mut config: Config = toml::from_str(text).map_err(|e| locator.toml_error(&e))?;
        config.fill_names();
        config.validate(&locator)?;
        Ok(config)
    }

    /// Reads `path` and parses it with [`Config::from_toml_str`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            field: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::from_toml_str(&text, &file)
    }

    fn fill_names(&mut self) {
        if self.primary.name.is_none() {
            self.primary.name = Some("primary".to_string());
        }
        for (i, replica) in self.replicas.iter_mut().enumerate() {
            if replica.name.is_none() {
                replica.name = Some(format!("replica{}", i + 1));
            }
        }
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted field path such as `users[1].auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FieldPath(Vec<Seg>);

impl FieldPath {
    pub(super) fn root() -> Self {
        FieldPath(Vec::new())
    }

    pub(super) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        FieldPath(segs)
    }

    pub(super) fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        FieldPath(segs)
    }

    /// Reads back a path as [`fmt::Display`] writes it (`users[1].auth`).
    pub(super) fn parse(dotted: &str) -> Self {
        let mut segs = Vec::new();
        for part in dotted.split('.') {
            let (key, indices) = part.split_once('[').unwrap_or((part, ""));
            if !key.is_empty() {
                segs.push(Seg::Key(key.to_string()));
            }
            for index in indices.split('[') {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    segs.push(Seg::Index(i));
                }
            }
        }
        FieldPath(segs)
    }

    fn last_key(&self) -> Option<&str> {
        self.0.iter().rev().find_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// Keys whose values are secrets and must never appear in a message.
const SECRET_KEYS: [&str; 4] = [
    "password",
    "server_password",
    "scram_verifier",
    "admin_token",
];

/// Maps between field paths and lines of the source text, using toml's spanned parse tree.
pub(super) struct Locator<'a> {
    text: &'a str,
    file: &'a str,
    tree: Spanned<DeTable<'a>>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str, file: &'a str) -> Self {
        // Recoverable: even a file with syntax errors yields a partial tree for locating fields.
        let (tree, _errors) = DeTable::parse_recoverable(text);
        Locator { text, file, tree }
    }

    fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// An error about `path`, on the line of its key, or of its nearest ancestor present in the file.
    pub(super) fn error(&self, path: &FieldPath, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: self.line_of(path),
            field: Some(path.to_string()),
            message: message.into(),
        }
    }

    pub(super) fn line_of(&self, path: &FieldPath) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut value: Option<&Spanned<DeValue<'a>>> = None;
        for seg in &path.0 {
            match seg {
                Seg::Key(k) => {
                    let table = match value {
                        None => self.tree.get_ref(),
                        Some(v) => match v.get_ref().as_table() {
                            Some(t) => t,
                            None => break,
                        },
                    };
                    match table.iter().find(|(key, _)| key.get_ref() == k) {
                        Some((key, v)) => {
                            best = Some(key.span().start);
                            value = Some(v);
                        }
                        None => break,
                    }
                }
                Seg::Index(i) => match value
                    .and_then(|v| v.get_ref().as_array())
                    .and_then(|a| a.get(*i))
                {
                    Some(elem) => {
                        best = Some(elem.span().start);
                        value = Some(elem);
                    }
                    None => break,
                },
            }
        }
        best.map(|offset| self.line_at(offset))
    }

    /// The deepest field whose key or value covers `offset`.
    fn path_at(&self, offset: usize) -> Option<FieldPath> {
        fn in_table(table: &DeTable<'_>, offset: usize, path: &FieldPath) -> Option<FieldPath> {
            for (key, value) in table.iter() {
                let here = path.key(key.get_ref());
                if let Some(found) = in_value(value, offset, &here) {
                    return Some(found);
                }
                if key.span().contains(&offset) || value.span().contains(&offset) {
                    return Some(here);
                }
            }
            None
        }
        fn in_value(
            value: &Spanned<DeValue<'_>>,
            offset: usize,
            path: &FieldPath,
        ) -> Option<FieldPath> {
            match value.get_ref() {
                DeValue::Table(t) => in_table(t, offset, path),
                DeValue::Array(a) => {
                    for (i, elem) in a.iter().enumerate() {
                        let here = path.index(i);
                        if let Some(found) = in_value(elem, offset, &here) {
                            return Some(found);
                        }
                        if elem.span().contains(&offset) {
                            return Some(here);
                        }
                    }
                    None
                }
                _ => None,
            }
        }
        in_table(self.tree.get_ref(), offset, &FieldPath::root())
    }

    /// Converts a toml parse/deserialize error, adding the line and the field path.
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = e.message().trim().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
            .map(str::to_string);
        // A missing top-level field comes with an empty span at 0: there is no line to show.
        let span = e
            .span()
            .filter(|span| !(missing.is_some() && span.is_empty()));
        let mut field = span
            .clone()
            .filter(|span| !span.is_empty())
            .and_then(|span| self.path_at(span.start));
        // "missing field `x`" points at the enclosing table: name the missing field itself.
        if let Some(missing) = missing {
            let parent = field.clone().unwrap_or_default();
            field = Some(parent.key(&missing));
        }
        // Never echo a secret's value: a mistyped password would otherwise appear in the message.
        if let Some(path) = &field {
            if path.last_key().is_some_and(|k| SECRET_KEYS.contains(&k))
                && message.starts_with("invalid")
            {
                message = "must be a string (value not shown: it is a secret)".to_string();
            }
        }
        ConfigError {
            file: self.file.to_string(),
            line: span.map(|span| self.line_at(span.start)),
            field: field.map(|p| p.to_string()),
            message,
        }
    }
}
