//! What a reload changes: servers matched by name (added, removed, moved, reweighted), sections that apply live,
//! and settings that need a restart.

use super::*;

const BASE: &str = r#"listen = "127.0.0.1:6432"
[primary]
name = "p"
host = "h0"
[[replicas]]
name = "r1"
host = "h1"
[[replicas]]
name = "r2"
host = "h2"
[[databases]]
name = "app"
[[users]]
name = "app"
password = "hunter2"
"#;

fn with(text: &str, from: &str, to: &str) -> Config {
    assert!(text.contains(from), "{from}");
    parse(&text.replacen(from, to, 1)).expect("valid")
}

#[test]
fn the_same_file_changes_nothing() {
    let d = diff(&parse(BASE).expect("valid"), &parse(BASE).expect("valid"));
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn servers_are_matched_by_name() {
    let old = parse(BASE).expect("valid");
    // r2 removed, r3 added, r1 reweighted.
    let new = with(
        BASE,
        "name = \"r2\"\nhost = \"h2\"",
        "name = \"r3\"\nhost = \"h3\"",
    );
    let new = Config {
        replicas: vec![
            ServerConfig {
                weight: 5,
                ..new.replicas[0].clone()
            },
            new.replicas[1].clone(),
        ],
        ..new
    };
    let d = diff(&old, &new);
    assert_eq!(d.removed, vec!["r2".to_string()]);
    assert_eq!(
        d.added.iter().map(|s| s.display_name()).collect::<Vec<_>>(),
        vec!["r3"]
    );
    assert_eq!(d.reweighted, vec![("r1".to_string(), 5)]);
    assert_eq!(d.changed, vec!["servers"]);
    assert!(d.restart_needed.is_empty());
}

#[test]
fn a_server_that_moved_is_retired_and_added_again() {
    let old = parse(BASE).expect("valid");
    let new = with(BASE, "host = \"h1\"", "host = \"h1\"\nport = 5433");
    let d = diff(&old, &new);
    assert_eq!(d.removed, vec!["r1".to_string()]);
    assert_eq!(d.added.len(), 1);
    assert_eq!(d.added[0].port, 5433);
}

#[test]
fn listen_admin_listen_workers_log_format_and_login_cap_need_a_restart() {
    let old = parse(BASE).expect("valid");
    let new = with(
        BASE,
        "listen = \"127.0.0.1:6432\"",
        "listen = \"127.0.0.1:7432\"\nadmin_listen = \"127.0.0.1:9931\"\nworkers = 3\nlog_format = \"json\"\n\
         [limits]\nmax_logins_in_progress = 7",
    );
    let d = diff(&old, &new);
    assert_eq!(
        d.restart_needed,
        vec![
            "listen",
            "admin_listen",
            "workers",
            "log_format",
            "limits.max_logins_in_progress"
        ]
    );
    assert!(
        d.changed.is_empty(),
        "the login cap alone is not a live limits change: {d:?}"
    );
    // What a reload puts in force keeps the running values, and the next reload still reports them.
    let kept = keeping_restart_settings(new.clone(), &old);
    assert_eq!(kept, old);
    assert_eq!(diff(&kept, &new).restart_needed.len(), 5);
}

#[test]
fn live_sections_are_named() {
    let old = parse(BASE).expect("valid");
    let new = with(
        BASE,
        "listen = \"127.0.0.1:6432\"",
        "listen = \"127.0.0.1:6432\"\nmax_client_connections = 5\n\
         [pools]\nread_pool_size = 3\n[lag]\nmax_lag = \"5s\"\n[routing]\nbalancer = \"random\"",
    );
    let new = with_password(new, "rotated");
    let d = diff(&old, &new);
    assert_eq!(
        d.changed,
        vec!["max_client_connections", "pools", "routing", "lag", "users"]
    );
    assert!(d.restart_needed.is_empty());
}

fn with_password(mut c: Config, password: &str) -> Config {
    c.users[0].password = Some(password.to_string());
    c
}
