//! Merging a file, `--primary`/`--replica` flags and `PGSPLIT_*` variables ([`Source::load`]).

use std::io::Write;
use std::time::Duration;

use super::super::*;

fn flags(primary: &str, replicas: &[&str]) -> Flags {
    let replicas: Vec<String> = replicas.iter().map(|r| r.to_string()).collect();
    Flags::parse(Some(primary), &replicas, None, None).unwrap()
}

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sidecar(env: &[(&str, &str)]) -> Source {
    Source {
        file: None,
        flags: flags(
            "postgres://app:s%40cret@db:5433/shop?sslmode=prefer",
            &["postgres://r1", "postgres://app@[fd00::2]:5434/shop"],
        ),
        env: vars(env),
    }
}

#[test]
fn urls_alone_make_a_configuration() {
    let c = sidecar(&[]).load().unwrap();
    assert_eq!((c.primary.host.as_str(), c.primary.port), ("db", 5433));
    assert_eq!(c.primary.tls_mode, Some(ServerTlsMode::Prefer));
    assert_eq!(c.primary.name.as_deref(), Some("primary"));
    let replicas: Vec<String> = c.replicas.iter().map(ServerConfig::address).collect();
    assert_eq!(replicas, ["r1:5432", "[fd00::2]:5434"]);
    assert_eq!(c.replicas[1].name.as_deref(), Some("replica2"));
    assert_eq!(c.databases.len(), 1);
    assert_eq!(c.databases[0].name, "shop");
    assert_eq!(c.databases[0].server_database(), "shop");
    let user = c.user("app").unwrap();
    assert_eq!(user.password.as_deref(), Some("s@cret"));
    assert_eq!(user.auth, AuthMethod::ScramSha256);
    assert_eq!(user.server_user(), "app");
    assert_eq!(user.server_password(), Some("s@cret"));
    assert!(!c.effective_toml().contains("s@cret"));
}

#[test]
fn database_defaults_to_the_user_name() {
    let source = Source {
        flags: flags("postgres://app:pw@db", &[]),
        ..Source::default()
    };
    assert_eq!(source.load().unwrap().databases[0].name, "app");
}

#[test]
fn environment_overrides_are_typed_and_named_in_errors() {
    let c = sidecar(&[
        ("PGSPLIT_POOLS__READ_POOL_SIZE", "10"),
        ("PGSPLIT_MAX_CLIENT_CONNECTIONS", "2000"),
        ("PGSPLIT_LAG__MAX_LAG", "2s"),
        ("PGSPLIT_ROUTING__READ_WRITE_SPLIT", "false"),
        ("PGSPLIT_ADMIN_TOKEN", "12345"),
        ("PGSPLIT_LOG", "debug"),
        ("PGSPLIT_BENCH_SECONDS", "x"),
    ])
    .load()
    .unwrap();
    assert_eq!(c.pools.read_pool_size, 10);
    assert_eq!(c.max_client_connections, 2000);
    assert_eq!(c.lag.max_lag, Duration::from_secs(2));
    assert!(!c.routing.read_write_split);
    // A number where a string is wanted is taken as written.
    assert_eq!(c.admin_token.as_deref(), Some("12345"));

    let e = sidecar(&[("PGSPLIT_POOLS__READ_POOL", "10")])
        .load()
        .unwrap_err();
    assert_eq!(
        e.file, "environment variable PGSPLIT_POOLS__READ_POOL",
        "{e}"
    );
    assert!(e.message.contains("unknown field"), "{e}");
    let e = sidecar(&[("PGSPLIT_NO_SUCH_OPTION", "1")])
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("PGSPLIT_NO_SUCH_OPTION"), "{e}");
    let e = sidecar(&[("PGSPLIT_POOLS__READ_POOL_SIZE", "0")])
        .load()
        .unwrap_err();
    assert!(e.to_string().starts_with("environment variable PGSPLIT_POOLS__READ_POOL_SIZE: pools.read_pool_size: must be at least 1"), "{e}");
    let e = sidecar(&[("PGSPLIT_POOLS__READ_POOL_SIZE", "many")])
        .load()
        .unwrap_err();
    assert!(
        e.to_string().contains("PGSPLIT_POOLS__READ_POOL_SIZE"),
        "{e}"
    );
}

#[test]
fn file_then_flags_then_environment() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "workers = 1\n\
         [primary]\nname = \"main\"\nhost = \"old\"\n\
         [[replicas]]\nhost = \"old-replica\"\n\
         [pools]\nread_pool_size = 3\nwrite_pool_size = 4\n\
         [[databases]]\nname = \"other\"\n\
         [[users]]\nname = \"app\"\nscram_verifier = \"{}\"\nadmin = true\n",
        super::VERIFIER
    )
    .unwrap();
    let source = Source {
        file: Some(file.path().to_path_buf()),
        flags: flags("postgres://app:pw@new:6000/shop", &[]),
        env: vars(&[("PGSPLIT_POOLS__READ_POOL_SIZE", "7")]),
    };
    let c = source.load().unwrap();
    assert_eq!(c.workers, 1);
    assert_eq!(c.primary.name.as_deref(), Some("main"));
    assert_eq!(c.primary.address(), "new:6000");
    // No --replica: the file's replicas stay.
    assert_eq!(c.replicas[0].host, "old-replica");
    assert_eq!((c.pools.read_pool_size, c.pools.write_pool_size), (7, 4));
    let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["other", "shop"]);
    // The URL's password replaces the file's secrets for that user; its other settings stay.
    let user = c.user("app").unwrap();
    assert_eq!(user.password.as_deref(), Some("pw"));
    assert_eq!(user.scram_verifier, None);
    assert!(user.admin);
    assert!(source.describe().contains("--primary"));
    assert!(source.describe().contains("PGSPLIT_POOLS__READ_POOL_SIZE"));
}

#[test]
fn errors_of_the_file_keep_their_lines_after_merging() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(file, "workers = 1\n[routing]\nbalancer = \"fastest\"\n").unwrap();
    let source = Source {
        file: Some(file.path().to_path_buf()),
        flags: flags("postgres://app:pw@db/app", &[]),
        env: Vec::new(),
    };
    let e = source.load().unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.field.as_deref(), Some("routing.balancer"), "{e}");
}

#[test]
fn flag_errors_name_the_flag_and_hide_the_password() {
    let e = Flags::parse(Some("postgres://app@db/x"), &[], None, None)
        .and_then(|f| {
            Source {
                flags: f,
                ..Source::default()
            }
            .load()
        })
        .unwrap_err();
    assert!(e.to_string().starts_with("--primary: "), "{e}");
    assert!(e.message.contains("no password"), "{e}");
    let e = Flags::parse(Some("postgres://db/x"), &[], None, None).unwrap_err();
    assert!(e.message.contains("must name a user"), "{e}");
    let replicas = [
        "postgres://r1".to_string(),
        "postgres://app@r2/elsewhere".to_string(),
    ];
    let e = Flags::parse(Some("postgres://app:hunter2@db/x"), &replicas, None, None).unwrap_err();
    assert!(e.to_string().starts_with("--replica #2: "), "{e}");
    assert!(e.message.contains("database"), "{e}");
    let replicas = ["postgres://app:other@r1".to_string()];
    let e = Flags::parse(Some("postgres://app:hunter2@db/x"), &replicas, None, None).unwrap_err();
    assert!(e.message.contains("password"), "{e}");
    assert!(!e.to_string().contains("hunter2") && !e.to_string().contains("other@"));
    let e = Flags::parse(None, &replicas, None, None).unwrap_err();
    assert!(e.message.contains("needs --primary"), "{e}");
    // A validation error about what a flag set names the flag.
    let f = Flags::parse(Some("postgres://app:pw@db/pgsplit"), &[], None, None).unwrap();
    let e = Source {
        flags: f,
        ..Source::default()
    }
    .load()
    .unwrap_err();
    assert!(
        e.to_string().starts_with("--primary: databases[0].name: "),
        "{e}"
    );
}

#[test]
fn only_a_file_reloads() {
    assert!(Source::file("x.toml".into()).reloadable());
    assert!(!sidecar(&[]).reloadable());
}
