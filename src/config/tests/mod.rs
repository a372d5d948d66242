//! Tests of the configuration: defaults, names, the example file, rendering and redaction, loading. The errors
//! each field can get are in `errors`; merging a file, command-line flags and the environment in `source`.

use std::time::Duration;

use super::*;

mod diff;
mod errors;
mod source;
mod tls;

const VERIFIER: &str = "SCRAM-SHA-256$4096:cGdzcGxpdC1leGFtcGxlIQ==$0n3xoMfihxm6HAUYzcDtHn5hY1AlNojFvbT/6iwzr0k=:VBmfeFF6msyoSLcz1rb44+oXsdPL/ijsCslBraQTV4w=";

const MINIMAL: &str = r#"[primary]
host = "localhost"

[[databases]]
name = "app"

[[users]]
name = "app"
password = "hunter2"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "config.toml")
}

/// Asserts that `text` fails with the given line, field and a message containing `needle`.
#[track_caller]
fn expect_err(text: &str, line: Option<usize>, field: Option<&str>, needle: &str) -> ConfigError {
    let err = match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    };
    assert_eq!(err.file, "config.toml", "{err}");
    assert_eq!(err.line, line, "line of: {err}");
    assert_eq!(err.field.as_deref(), field, "field of: {err}");
    assert!(
        err.message.contains(needle),
        "message `{}` lacks `{needle}`",
        err.message
    );
    let shown = err.to_string();
    if let Some(line) = line {
        assert!(
            shown.starts_with(&format!("config.toml:{line}: ")),
            "{shown}"
        );
    }
    if let Some(field) = field {
        assert!(shown.contains(&format!(": {field}: ")), "{shown}");
    }
    err
}

#[test]
fn minimal_file_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen, "127.0.0.1:6432".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:9930".parse().unwrap());
    assert_eq!(c.pool_mode, PoolMode::Transaction);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.max_client_connections, 1000);
    assert_eq!(c.max_message_bytes, 268_435_456);
    assert!(c.write_functions.is_empty());
    assert_eq!(c.primary.name.as_deref(), Some("primary"));
    assert_eq!(c.primary.port, 5432);
    assert_eq!(c.primary.weight, 1);
    assert_eq!(c.primary.address(), "localhost:5432");
    assert!(c.replicas.is_empty());
    assert_eq!(c.pools, PoolsConfig::default());
    assert_eq!(c.pools.write_pool_size, 20);
    assert_eq!(c.pools.read_pool_size, 20);
    assert_eq!(c.pools.prepared_statements_per_server, 500);
    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.limits.max_prepared_statements_per_client, 10_000);
    assert_eq!(c.limits.max_batch_messages, 100_000);
    assert_eq!(c.limits.max_logins_in_progress, 1000);
    assert_eq!(c.routing.consistency, crate::causal::Consistency::Session);
    assert_eq!(c.routing.causal_wait, Duration::from_millis(20));
    let t = &c.timeouts;
    assert_eq!(t.server_connect, Duration::from_secs(5));
    assert_eq!(t.pool_wait, Duration::from_secs(5));
    assert_eq!(t.client_login, Duration::from_secs(15));
    assert_eq!(t.client_idle, Duration::ZERO);
    assert_eq!(t.server_idle, Duration::from_secs(600));
    assert_eq!(t.server_lifetime, Duration::from_secs(3600));
    assert_eq!(t.shutdown, Duration::from_secs(30));
    let db = c.database("app").unwrap();
    assert_eq!(db.server_database(), "app");
    let u = c.user("app").unwrap();
    assert_eq!(u.auth, AuthMethod::ScramSha256);
    assert_eq!(u.server_user(), "app");
    assert_eq!(u.server_password(), Some("hunter2"));
    assert!(!u.admin);
    assert!(c.user("nobody").is_none());
    assert!(c.database("nope").is_none());
    assert_eq!(c.servers().count(), 1);
}

#[test]
fn consistency_and_causal_wait_are_read() {
    let c = parse(&format!(
        "{MINIMAL}\n[routing]\nconsistency = \"strict\"\ncausal_wait = \"0\"\n"
    ))
    .unwrap();
    assert_eq!(c.routing.consistency, crate::causal::Consistency::Strict);
    assert_eq!(c.routing.causal_wait, Duration::ZERO);
    let c = parse(&format!(
        "{MINIMAL}\n[routing]\nconsistency = \"eventual\"\ncausal_wait = \"10s\"\n"
    ))
    .unwrap();
    assert_eq!(c.routing.consistency, crate::causal::Consistency::Eventual);
    assert_eq!(c.routing.causal_wait, Duration::from_secs(10));
    let shown = c.effective_toml();
    assert!(shown.contains("consistency = \"eventual\""), "{shown}");
    assert!(shown.contains("causal_wait = \"10s\""), "{shown}");
}

#[test]
fn server_names_are_filled_in() {
    let text = format!(
            "{MINIMAL}\n[[replicas]]\nhost = \"r1\"\n\n[[replicas]]\nname = \"east\"\nhost = \"r2\"\n\n[[replicas]]\nhost = \"::1\"\nport = 5433\n"
        );
    let c = parse(&text).unwrap();
    let names: Vec<String> = c.servers().map(|s| s.display_name()).collect();
    assert_eq!(names, ["primary", "replica1", "east", "replica3"]);
    assert_eq!(c.replicas[2].address(), "[::1]:5433");
    let unnamed = ServerConfig {
        name: None,
        host: "h".into(),
        port: 1,
        weight: 1,
        tls_mode: None,
        tls_ca_file: None,
        tls_server_name: None,
    };
    assert_eq!(unnamed.display_name(), "h:1");
}

#[test]
fn log_format_is_text_or_json() {
    let c = parse(&format!("log_format = \"json\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(c.effective_toml().contains("log_format = \"json\""));
    assert_eq!(LogFormat::parse(" JSON "), Some(LogFormat::Json));
    assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
    assert_eq!(LogFormat::parse("xml"), None);
}

#[test]
fn example_file_parses_and_validates() {
    let c = Config::from_toml_str(
        include_str!("../../../config.example.toml"),
        "config.example.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.replicas.len(), 2);
    assert_eq!(c.primary.display_name(), "db1");
    assert_eq!(
        c.database("app").unwrap().server_database(),
        "app_production"
    );
    let auths: Vec<AuthMethod> = c.users.iter().map(|u| u.auth).collect();
    assert_eq!(
        auths,
        [
            AuthMethod::ScramSha256,
            AuthMethod::ScramSha256,
            AuthMethod::Md5,
            AuthMethod::Trust
        ]
    );
    assert!(c.user("reporting").unwrap().scram_verifier.is_some());
    assert!(c.user("monitor").unwrap().admin);
    // Every option appears in the example.
    let effective = toml::from_str::<toml::Table>(&c.effective_toml()).unwrap();
    let example =
        toml::from_str::<toml::Table>(include_str!("../../../config.example.toml")).unwrap();
    for key in effective.keys() {
        assert!(example.contains_key(key), "example lacks `{key}`");
    }
    for table in ["pools", "limits", "timeouts", "primary", "routing", "lag"] {
        let eff = effective[table].as_table().unwrap();
        let ex = example[table].as_table().unwrap();
        for key in eff.keys() {
            assert!(ex.contains_key(key), "example lacks `{table}.{key}`");
        }
    }
    let mut user_keys: Vec<&String> = example["users"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|u| u.as_table().unwrap().keys())
        .collect();
    user_keys.sort();
    user_keys.dedup();
    assert_eq!(
        user_keys,
        [
            "admin",
            "auth",
            "name",
            "password",
            "scram_verifier",
            "server_password",
            "server_user"
        ]
    );
}

fn normalized(mut c: Config) -> Config {
    for db in &mut c.databases {
        db.server_database = Some(db.server_database().to_string());
    }
    for u in &mut c.users {
        u.server_user = Some(u.server_user().to_string());
        u.server_password = u.server_password().map(str::to_string);
    }
    c
}

#[test]
fn effective_toml_redacts_and_round_trips() {
    let c = Config::from_toml_str(include_str!("../../../config.example.toml"), "x").unwrap();
    let shown = c.effective_toml();
    for secret in [
        "change-me",
        "reporting-secret",
        "legacy-password",
        "monitor-password",
        VERIFIER,
    ] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    assert!(shown.contains(REDACTED));
    assert!(shown.contains("server_connect = \"5s\""), "{shown}");

    // The redacted text is valid TOML of the same schema; only the secrets differ.
    let mut back: Config = toml::from_str(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
    let mut expected = normalized(c.clone());
    for u in expected.users.iter_mut().chain(back.users.iter_mut()) {
        u.password = u.password.as_ref().map(|_| String::new());
        u.scram_verifier = u.scram_verifier.as_ref().map(|_| String::new());
        u.server_password = u.server_password.as_ref().map(|_| String::new());
    }
    assert_eq!(back, expected);

    // Unredacted, it re-parses and validates into an equal configuration.
    let full = c.render(false);
    let back = Config::from_toml_str(&full, "effective").unwrap_or_else(|e| panic!("{e}\n{full}"));
    assert_eq!(normalized(back), normalized(c));

    // A minimal config (no replicas, defaults everywhere) round-trips too.
    let c = parse(MINIMAL).unwrap();
    let back = Config::from_toml_str(&c.render(false), "effective").unwrap();
    assert_eq!(normalized(back), normalized(c.clone()));
    assert!(!c.effective_toml().contains("hunter2"));
}

#[test]
fn debug_redacts_secrets() {
    let c = Config::from_toml_str(include_str!("../../../config.example.toml"), "x").unwrap();
    let debug = format!("{c:?}");
    for secret in ["change-me", "reporting-secret", "legacy-password", VERIFIER] {
        assert!(!debug.contains(secret), "{secret} leaked");
    }
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let e = Config::load(&missing).unwrap_err();
    assert_eq!(e.file, missing.display().to_string());
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read", missing.display())),
        "{e}"
    );

    let path = dir.path().join("pgsplit.toml");
    std::fs::write(
        &path,
        format!(
            "[primary]\nhost = \"h\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\n\
                 scram_verifier = \"{VERIFIER}\"\nauth = \"md5\"\n"
        ),
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:8: users[0].auth: md5 needs `password` (a SCRAM verifier cannot answer md5)",
            path.display()
        )
    );
    std::fs::write(&path, MINIMAL).unwrap();
    assert_eq!(Config::load(&path).unwrap().users.len(), 1);
}

#[test]
fn error_display_without_line_or_field() {
    let e = ConfigError {
        file: "f.toml".into(),
        line: None,
        field: None,
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "f.toml: boom");
    let e = ConfigError {
        file: "f.toml".into(),
        line: Some(3),
        field: None,
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "f.toml:3: boom");
    let e = ConfigError {
        file: "f.toml".into(),
        line: None,
        field: Some("users".into()),
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "f.toml: users: boom");
}
