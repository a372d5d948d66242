//! Live reload (SIGHUP, console `RELOAD`): re-read the file the configuration came from with the same loader and
//! validation as at start (and the same command-line flags and `PGSPLIT_*` environment set over it; without a
//! file there is nothing to re-read and the reload is refused), refuse it whole when it is invalid or cannot be applied, else put it in force
//! ([`Shared::apply`]) without dropping clients. What needs a restart is logged as such; the rest applies.
//! Every attempt is recorded in a [`ReloadLog`] (`SHOW CONFIG`, `/status`, `pgsplit_reloads_total`).

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{diff, keeping_restart_settings, Config, ConfigDiff};
use crate::protocol::sqlstate;
use crate::state::{ReloadLog, Shared};

/// A refused reload: the SQLSTATE the console answers with, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// F0000 (the file does not load) or 55000 (no file, or a change that cannot be applied now).
    pub sqlstate: &'static str,
    /// The loader's file:line:field message, or what cannot be applied; never a secret.
    pub message: String,
}

/// A reload put in force: what changed.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// What changed.
    pub diff: ConfigDiff,
}

impl Reloaded {
    /// One line for a person: what changed, and what waits for a restart.
    pub fn summary(&self) -> String {
        let d = &self.diff;
        let mut out = if d.is_empty() {
            "configuration reloaded: nothing changed".to_string()
        } else if d.changed.is_empty() {
            "configuration reloaded".to_string()
        } else {
            format!("configuration reloaded: {} changed", d.changed.join(", "))
        };
        if !d.restart_needed.is_empty() {
            out.push_str(&format!(
                "; {} changed: takes effect after a restart",
                d.restart_needed.join(", ")
            ));
        }
        out
    }
}

impl Shared {
    /// Re-reads the configuration file and puts it in force; a file that does not load, or a change that cannot
    /// be applied, is refused and the configuration in force stays entirely. Logged and recorded either way.
    pub fn reload(&self) -> Result<Reloaded, Refused> {
        let source = match &self.source {
            Some(source) if source.reloadable() => source,
            Some(_) => {
                let why = "pgsplit was started without a configuration file (--primary/--replica flags and \
                           PGSPLIT_* environment variables only): there is nothing to re-read; restart pgsplit \
                           to change its configuration";
                return Err(self.refuse(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, why.into()));
            }
            None => {
                let why =
                    "pgsplit was not started from a configuration file: there is no file to reload";
                return Err(self.refuse(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, why.into()));
            }
        };
        // The file again, with the same flags and the environment captured at start set over it.
        match source.load() {
            Ok(config) => self.reload_with(config),
            Err(e) => Err(self.refuse(sqlstate::CONFIG_FILE_ERROR, e.to_string())),
        }
    }

    /// Puts a validated configuration in force, as [`Shared::reload`] does with the file's.
    pub fn reload_with(&self, new: Config) -> Result<Reloaded, Refused> {
        let mut log = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.config();
        let diff = diff(&old, &new);
        if let Err(why) = self.check_applicable(&diff) {
            drop(log);
            return Err(self.refuse(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, why));
        }
        // What can fail to build from the new file (TLS: reading the certificate and key) is built here, before
        // anything changes, and refused with F0000 when it fails; `apply` then only swaps it in.
        let client_tls = match crate::tls::ClientTls::from_config(&new.tls) {
            Ok(tls) => tls,
            Err(e) => {
                drop(log);
                return Err(self.refuse(sqlstate::CONFIG_FILE_ERROR, format!("[tls]: {e}")));
            }
        };
        self.apply(
            Arc::new(keeping_restart_settings(new, &old)),
            &diff,
            client_tls,
        );
        log.ok += 1;
        log.last_ok = Some(SystemTime::now());
        let done = Reloaded { diff };
        for setting in &done.diff.restart_needed {
            tracing::warn!("{setting} changed: takes effect after a restart");
        }
        tracing::info!(changed = ?done.diff.changed, "{}", done.summary());
        Ok(done)
    }

    /// A change is refused when it would remove the server that takes writes now.
    fn check_applicable(&self, diff: &ConfigDiff) -> Result<(), String> {
        let Ok(primary) = self.router.primary() else {
            return Ok(());
        };
        let Some(b) = self.router.servers.get(primary) else {
            return Ok(());
        };
        if diff.removed.contains(&b.name) {
            return Err(format!(
                "the reload would remove server \"{}\" ({}), which takes writes now; keep it in the file (same \
                 name, host and port) until another server has been promoted",
                b.name, b.address
            ));
        }
        Ok(())
    }

    fn refuse(&self, sqlstate: &'static str, message: String) -> Refused {
        tracing::error!(error = %message, "configuration reload refused: the configuration in force stays");
        let mut log = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        log.refused += 1;
        log.last_refused = Some((SystemTime::now(), message.clone()));
        Refused { sqlstate, message }
    }

    /// A copy of the reload log.
    pub fn reload_log(&self) -> ReloadLog {
        self.reloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
