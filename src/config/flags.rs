//! The command line's part of a configuration: `--primary URL`, `--replica URL` (repeatable), `--listen ADDR`,
//! `--admin-listen ADDR`, set over the file's document (flags win).
//!
//! From the primary's URL: `[primary]` `host`/`port` (and `tls_mode`/`tls_ca_file` from `sslmode`/`sslrootcert`),
//! one `[[databases]]` entry named after the URL's database (default: the user name, as libpq does), and one
//! `[[users]]` entry named after the URL's user with its password: clients log in with them (SCRAM unless the
//! file's entry says otherwise) and pgsplit logs in to the servers with them. Replica URLs give host and port
//! (and TLS); a user, password or database of their own must be the primary's. Given `--replica`s replace the
//! file's `[[replicas]]`; without any the file's stay.

use std::net::SocketAddr;

use toml::{Table, Value};

use super::url::PgUrl;
use super::ConfigError;

/// The flags, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--primary`.
    pub primary: Option<PgUrl>,
    /// `--replica`, in order.
    pub replicas: Vec<PgUrl>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
}

impl Flags {
    /// Parses the URLs; an error names the flag (`--replica` with its position) and never shows a password.
    pub fn parse(
        primary: Option<&str>,
        replicas: &[String],
        listen: Option<SocketAddr>,
        admin_listen: Option<SocketAddr>,
    ) -> Result<Flags, ConfigError> {
        let primary = primary
            .map(|u| PgUrl::parse(u).map_err(|e| flag_error("--primary", e)))
            .transpose()?;
        let mut parsed = Vec::new();
        for (i, url) in replicas.iter().enumerate() {
            let name = replica_flag(i, replicas.len());
            let url = PgUrl::parse(url).map_err(|e| flag_error(&name, e))?;
            let Some(p) = &primary else {
                return Err(flag_error(&name, "needs --primary".into()));
            };
            for (what, mine, theirs) in [
                ("user", &url.user, &p.user),
                ("database", &url.dbname, &p.dbname),
            ] {
                if mine.is_some() && mine != theirs {
                    return Err(flag_error(
                        &name,
                        format!(
                            "its {what} {} differs from --primary's: pgsplit logs in to every server as the \
                             primary URL's user, in its database (leave them out of replica URLs)",
                            show(mine)
                        ),
                    ));
                }
            }
            if url.password.is_some() && url.password != p.password {
                return Err(flag_error(
                    &name,
                    "its password differs from --primary's: pgsplit logs in to every server with the primary \
                     URL's password (leave it out of replica URLs)"
                        .into(),
                ));
            }
            parsed.push(url);
        }
        if let Some(p) = &primary {
            if p.user.is_none() {
                return Err(flag_error(
                    "--primary",
                    "the URL must name a user (postgres://user:password@host/db): clients log in as that \
                     user, and pgsplit logs in to the servers as it"
                        .into(),
                ));
            }
        }
        Ok(Flags {
            primary,
            replicas: parsed,
            listen,
            admin_listen,
        })
    }

    /// Whether no flag was given.
    pub fn is_empty(&self) -> bool {
        self == &Flags::default()
    }

    /// The flags given, for a person: `--primary, --replica (2), --listen`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.primary.is_some() {
            out.push("--primary".to_string());
        }
        if !self.replicas.is_empty() {
            out.push(format!("--replica ({})", self.replicas.len()));
        }
        if self.listen.is_some() {
            out.push("--listen".to_string());
        }
        if self.admin_listen.is_some() {
            out.push("--admin-listen".to_string());
        }
        out
    }

    /// Sets the flags over `doc`; what each one set (a dotted field path) is added to `origins` with its flag.
    pub(super) fn apply(
        &self,
        doc: &mut Table,
        origins: &mut Vec<(String, String)>,
    ) -> Result<(), ConfigError> {
        for (key, flag, addr) in [
            ("listen", "--listen", self.listen),
            ("admin_listen", "--admin-listen", self.admin_listen),
        ] {
            if let Some(addr) = addr {
                doc.insert(key.into(), Value::String(addr.to_string()));
                origins.push((key.into(), flag.into()));
            }
        }
        let Some(p) = &self.primary else {
            return Ok(());
        };
        let mut primary = take_table(doc, "primary");
        for key in server(p).keys() {
            origins.push((format!("primary.{key}"), "--primary".into()));
        }
        primary.extend(server(p));
        doc.insert("primary".into(), Value::Table(primary));

        if !self.replicas.is_empty() {
            let list = self.replicas.iter().map(|r| Value::Table(server(r)));
            doc.insert("replicas".into(), Value::Array(list.collect()));
            origins.push(("replicas".into(), "--replica".into()));
        }

        let user = p.user.clone().unwrap_or_default();
        let dbname = p.dbname.clone().unwrap_or_else(|| user.clone());
        let mut databases = take_array(doc, "databases");
        let db_index = match databases.iter().position(|d| has_name(d, &dbname)) {
            Some(i) => i,
            None => {
                let mut db = Table::new();
                db.insert("name".into(), Value::String(dbname));
                databases.push(Value::Table(db));
                databases.len() - 1
            }
        };
        doc.insert("databases".into(), Value::Array(databases));
        origins.push((format!("databases[{db_index}]"), "--primary".into()));

        let mut users = take_array(doc, "users");
        let user_index = match users.iter().position(|u| has_name(u, &user)) {
            Some(i) => i,
            None => {
                if p.password.is_none() {
                    return Err(flag_error(
                        "--primary",
                        format!(
                            "the URL has no password for user `{user}` (postgres://user:password@host/db): clients \
                             log in with it (SCRAM) and pgsplit logs in to the servers with it"
                        ),
                    ));
                }
                let mut entry = Table::new();
                entry.insert("name".into(), Value::String(user.clone()));
                users.push(Value::Table(entry));
                users.len() - 1
            }
        };
        if let (Some(password), Some(Value::Table(entry))) =
            (&p.password, users.get_mut(user_index))
        {
            // The URL's password is the user's, both ways: the file's other secrets for it give way.
            for key in ["scram_verifier", "server_user", "server_password"] {
                entry.remove(key);
            }
            entry.insert("password".into(), Value::String(password.clone()));
        }
        doc.insert("users".into(), Value::Array(users));
        origins.push((format!("users[{user_index}]"), "--primary".into()));
        Ok(())
    }
}

/// `--replica` (only one) or `--replica #2` (1-based, in command-line order).
fn replica_flag(i: usize, count: usize) -> String {
    if count == 1 {
        "--replica".to_string()
    } else {
        format!("--replica #{}", i + 1)
    }
}

fn show(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("`{v}`"),
        None => "(none)".to_string(),
    }
}

/// A server table from a URL: host, port, and TLS when the URL says.
fn server(url: &PgUrl) -> Table {
    let mut t = Table::new();
    t.insert("host".into(), Value::String(url.host.clone()));
    t.insert("port".into(), Value::Integer(i64::from(url.port)));
    if let Some(mode) = url.tls_mode {
        t.insert("tls_mode".into(), Value::String(mode.as_str().into()));
    }
    if let Some(ca) = &url.tls_ca_file {
        t.insert(
            "tls_ca_file".into(),
            Value::String(ca.display().to_string()),
        );
    }
    t
}

fn has_name(entry: &Value, name: &str) -> bool {
    entry.get("name").and_then(Value::as_str) == Some(name)
}

/// `doc[key]` taken out as a table (a missing one, or a non-table the flags win over, is a new table).
fn take_table(doc: &mut Table, key: &str) -> Table {
    match doc.remove(key) {
        Some(Value::Table(t)) => t,
        _ => Table::new(),
    }
}

/// `doc[key]` taken out as an array (a missing one, or a non-array, is a new array).
fn take_array(doc: &mut Table, key: &str) -> Vec<Value> {
    match doc.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

fn flag_error(flag: &str, message: String) -> ConfigError {
    ConfigError {
        file: flag.to_string(),
        line: None,
        field: None,
        message,
    }
}
