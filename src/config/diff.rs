//! What changed between the configuration in force and a new one (reload): which servers were added, removed,
//! moved (same name, another host or port) or reweighted, which sections changed (for the log), and which
//! changes take effect only after a restart.

use super::{Config, ServerConfig};

/// The changes a reload makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Servers in the new file only (a changed server is here too, under its name).
    pub added: Vec<ServerConfig>,
    /// Names of servers gone from the new file, or changed in anything but their weight (host, port, …): those
    /// are retired, then added again.
    pub removed: Vec<String>,
    /// Servers kept whose balancer weight changed: (name, new weight).
    pub reweighted: Vec<(String, u32)>,
    /// Top-level settings or sections that changed and apply live (for the log), e.g. `pools`, `users`.
    pub changed: Vec<&'static str>,
    /// Settings that changed but take effect only after a restart, e.g. `listen`.
    pub restart_needed: Vec<&'static str>,
}

impl ConfigDiff {
    /// Whether nothing at all changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.reweighted.is_empty()
            && self.changed.is_empty()
            && self.restart_needed.is_empty()
    }
}

/// `new` with the settings that need a restart taken from `old` (in force): what a reload puts in force, so that
/// `SHOW CONFIG` and `/status` show what really runs, and the next reload still reports them as pending.
pub fn keeping_restart_settings(mut new: Config, old: &Config) -> Config {
    new.listen = old.listen;
    new.admin_listen = old.admin_listen;
    new.workers = old.workers;
    new.log_format = old.log_format;
    new.limits.max_logins_in_progress = old.limits.max_logins_in_progress;
    new
}

/// Compares `old` (in force) with `new`. Servers are matched by name.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let find = |c: &Config, name: &str| c.servers().find(|s| s.display_name() == name).cloned();
    for s in new.servers() {
        match find(old, &s.display_name()) {
            None => d.added.push(s.clone()),
            Some(o) if !same_but_weight(&o, s) => {
                d.removed.push(o.display_name());
                d.added.push(s.clone());
            }
            Some(o) if o.weight != s.weight => d.reweighted.push((s.display_name(), s.weight)),
            Some(_) => {}
        }
    }
    for o in old.servers() {
        if find(new, &o.display_name()).is_none() {
            d.removed.push(o.display_name());
        }
    }
    let restart: [(&'static str, bool); 5] = [
        ("listen", old.listen != new.listen),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("workers", old.workers != new.workers),
        ("log_format", old.log_format != new.log_format),
        (
            "limits.max_logins_in_progress",
            old.limits.max_logins_in_progress != new.limits.max_logins_in_progress,
        ),
    ];
    d.restart_needed = restart
        .iter()
        .filter(|(_, c)| *c)
        .map(|(n, _)| *n)
        .collect();
    let live: [(&'static str, bool); 13] = [
        ("admin_token", old.admin_token != new.admin_token),
        ("pool_mode", old.pool_mode != new.pool_mode),
        (
            "max_client_connections",
            old.max_client_connections != new.max_client_connections,
        ),
        (
            "max_message_bytes",
            old.max_message_bytes != new.max_message_bytes,
        ),
        (
            "write_functions",
            old.write_functions != new.write_functions,
        ),
        ("pools", old.pools != new.pools),
        ("routing", old.routing != new.routing),
        ("lag", old.lag != new.lag),
        ("timeouts", old.timeouts != new.timeouts),
        ("limits", {
            let mut o = old.limits.clone();
            o.max_logins_in_progress = new.limits.max_logins_in_progress;
            o != new.limits
        }),
        ("databases", old.databases != new.databases),
        ("users", old.users != new.users),
        (
            "servers",
            !(d.added.is_empty() && d.removed.is_empty() && d.reweighted.is_empty()),
        ),
    ];
    d.changed = live.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect();
    d
}

/// Whether two entries of one server differ at most in their weight.
fn same_but_weight(a: &ServerConfig, b: &ServerConfig) -> bool {
    let b = ServerConfig {
        weight: a.weight,
        ..b.clone()
    };
    *a == b
}
