//! Every configuration error names its file, line and field: syntax and type errors from serde, semantic ones
//! from validation.

use super::*;

#[test]
fn syntax_and_type_errors_name_line_and_field() {
    // Unknown keys, at several depths.
    let e = expect_err(
        &format!("{MINIMAL}bogus = 1\n"),
        Some(10),
        Some("users[0].bogus"),
        "unknown field `bogus`",
    );
    assert!(e
        .to_string()
        .starts_with("config.toml:10: users[0].bogus: unknown field `bogus`"));
    expect_err(
        &format!("colour = 1\n{MINIMAL}"),
        Some(1),
        Some("colour"),
        "unknown field `colour`",
    );
    expect_err(
        "[primary]\nhost = \"h\"\nhots = \"x\"\n",
        Some(3),
        Some("primary.hots"),
        "unknown field `hots`",
    );
    expect_err(
        &format!("{MINIMAL}\n[timeouts]\npool_wait = \"1s\"\nidle = \"1s\"\n"),
        Some(13),
        Some("timeouts.idle"),
        "unknown field `idle`",
    );
    // Bad types and values.
    expect_err(
        &format!("{MINIMAL}\n[pools]\nread_pool_size = \"ten\"\n"),
        Some(12),
        Some("pools.read_pool_size"),
        "invalid type",
    );
    expect_err(
        &format!("max_client_connections = -1\n{MINIMAL}"),
        Some(1),
        Some("max_client_connections"),
        "invalid value",
    );
    expect_err(
        "[primary]\nhost = \"h\"\nport = 70000\n",
        Some(3),
        Some("primary.port"),
        "u16",
    );
    expect_err(
        &format!("listen = \"localhost\"\n{MINIMAL}"),
        Some(1),
        Some("listen"),
        "address",
    );
    expect_err(
        &format!("pool_mode = \"statement\"\n{MINIMAL}"),
        Some(1),
        Some("pool_mode"),
        "unknown variant `statement`",
    );
    expect_err(
        &format!("log_format = \"xml\"\n{MINIMAL}"),
        Some(1),
        Some("log_format"),
        "unknown variant `xml`",
    );
    expect_err(
        &format!("{MINIMAL}auth = \"sha\"\n"),
        Some(10),
        Some("users[0].auth"),
        "unknown variant `sha`",
    );
    expect_err(
        &format!("{MINIMAL}\n[routing]\nconsistency = \"causal\"\n"),
        Some(12),
        Some("routing.consistency"),
        "unknown variant `causal`, expected one of `session`, `eventual`, `strict`",
    );
    expect_err(
        &format!("{MINIMAL}\n[routing]\ncausal_wait = 20\n"),
        Some(12),
        Some("routing.causal_wait"),
        "needs a unit",
    );
    expect_err(
        &format!("{MINIMAL}\n[routing]\ncausal_wait = \"11s\"\n"),
        Some(12),
        Some("routing.causal_wait"),
        "must be at most 10s",
    );
    // Durations.
    expect_err(
        &format!("{MINIMAL}\n[timeouts]\nshutdown = \"soon\"\n"),
        Some(12),
        Some("timeouts.shutdown"),
        "`soon` is not a duration",
    );
    expect_err(
        &format!("{MINIMAL}\n[timeouts]\nshutdown = \"-1s\"\n"),
        Some(12),
        Some("timeouts.shutdown"),
        "negative",
    );
    expect_err(
        &format!("{MINIMAL}\n[timeouts]\nshutdown = 30\n"),
        Some(12),
        Some("timeouts.shutdown"),
        "\"30s\"",
    );
    assert_eq!(
        parse(&format!("{MINIMAL}\n[timeouts]\nclient_idle = 0\n"))
            .unwrap()
            .timeouts
            .client_idle,
        Duration::ZERO
    );
    // Missing required fields.
    expect_err(
        "[[databases]]\nname = \"app\"\n",
        None,
        Some("primary"),
        "missing field `primary`",
    );
    expect_err(
        &format!("{MINIMAL}\n[[users]]\npassword = \"x\"\n"),
        Some(11),
        Some("users[1].name"),
        "missing field `name`",
    );
    expect_err(
        "[primary]\nport = 5432\n",
        Some(1),
        Some("primary.host"),
        "missing field `host`",
    );
    // TOML syntax errors.
    expect_err(&format!("{MINIMAL}name = \n"), Some(10), None, "");
    expect_err(
        &format!("{MINIMAL}\n[primary]\nhost = \"b\"\n"),
        Some(11),
        Some("primary"),
        "",
    );
    // A mistyped secret is not echoed.
    let e = expect_err(
        &format!("{MINIMAL}server_password = 123456789\n"),
        Some(10),
        Some("users[0].server_password"),
        "secret",
    );
    assert!(!e.to_string().contains("123456789"), "{e}");
    // Nor a mistyped admin token (a refused reload's message reaches the console and /status).
    let e = expect_err(
        &format!("admin_token = 987654321\n{MINIMAL}"),
        Some(1),
        Some("admin_token"),
        "secret",
    );
    assert!(!e.to_string().contains("987654321"), "{e}");
}

#[test]
fn semantic_errors_name_line_and_field() {
    let base_head = "[primary]\nhost = \"p\"\n\n[[databases]]\nname = \"app\"\n\n";
    let user = "[[users]]\nname = \"app\"\npassword = \"x\"\n";
    // At least one database and one user.
    expect_err(
        "[primary]\nhost = \"p\"\n",
        None,
        Some("databases"),
        "at least one [[databases]]",
    );
    expect_err(
        &format!("databases = []\n[primary]\nhost = \"p\"\n{}", user),
        Some(1),
        Some("databases"),
        "at least one",
    );
    expect_err(base_head, None, Some("users"), "at least one [[users]]");
    // Unique names.
    expect_err(
        &format!("{base_head}{user}\n[[users]]\nname = \"app\"\npassword = \"y\"\n"),
        Some(12),
        Some("users[1].name"),
        "user `app` is already defined at users[0]",
    );
    expect_err(
        &format!("{base_head}[[databases]]\nname = \"app\"\n{user}"),
        Some(8),
        Some("databases[1].name"),
        "database `app` is already defined",
    );
    expect_err(
            &format!("{base_head}{user}[[replicas]]\nname = \"a\"\nhost = \"r\"\n[[replicas]]\nhost = \"r2\"\nname = \"a\"\n"),
            Some(15),
            Some("replicas[1].name"),
            "server name `a` is already used by replicas[0]",
        );
    expect_err(
        &format!("{base_head}{user}[[replicas]]\nname = \"primary\"\nhost = \"r\"\n"),
        Some(11),
        Some("replicas[0].name"),
        "already used by primary",
    );
    // A defaulted name that collides points at the replica's table.
    expect_err(
            &format!("{base_head}{user}[[replicas]]\nname = \"replica2\"\nhost = \"r\"\n[[replicas]]\nhost = \"r2\"\n"),
            Some(13),
            Some("replicas[1].name"),
            "`replica2` is already used by replicas[0]",
        );
    expect_err(
        &format!("{base_head}{user}[[replicas]]\nname = \"\"\nhost = \"r\"\n"),
        Some(11),
        Some("replicas[0].name"),
        "empty",
    );
    // Auth requirements.
    let head_user = format!("{base_head}{user}\n");
    let e = expect_err(
            &format!("{head_user}[[users]]\nname = \"old\"\nscram_verifier = \"{VERIFIER}\"\nauth = \"md5\"\n"),
            Some(14),
            Some("users[1].auth"),
            "md5 needs `password`",
        );
    assert_eq!(
        e.to_string(),
        "config.toml:14: users[1].auth: md5 needs `password` (a SCRAM verifier cannot answer md5)"
    );
    expect_err(
        &format!("{head_user}[[users]]\nname = \"old\"\nauth = \"md5\"\n"),
        Some(13),
        Some("users[1].auth"),
        "md5 needs `password`",
    );
    // No `auth` key: the default (scram-sha-256) applies; the line is the user's table header.
    expect_err(
        &format!("{head_user}[[users]]\nname = \"nopw\"\nadmin = true\n"),
        Some(11),
        Some("users[1].auth"),
        "scram-sha-256 needs `password` or `scram_verifier`",
    );
    expect_err(
        &format!("{head_user}[[users]]\nname = \"nopw\"\nauth = \"scram-sha-256\"\n"),
        Some(13),
        Some("users[1].auth"),
        "scram-sha-256 needs",
    );
    // Inline tables work too.
    expect_err(
            &format!("users = [\n  {{ name = \"a\", password = \"x\" }},\n  {{ name = \"b\" }},\n]\n{base_head}"),
            Some(3),
            Some("users[1].auth"),
            "scram-sha-256 needs",
        );
    let ok = parse(&format!(
        "{head_user}[[users]]\nname = \"t\"\nauth = \"trust\"\n"
    ))
    .unwrap();
    assert_eq!(ok.user("t").unwrap().auth, AuthMethod::Trust);
    assert_eq!(ok.user("t").unwrap().server_password(), None);
    let ok = parse(&format!(
        "{head_user}[[users]]\nname = \"v\"\nscram_verifier = \"{VERIFIER}\"\n"
    ))
    .unwrap();
    assert!(ok.user("v").unwrap().scram_verifier.is_some());
    // A verifier that does not parse; its text is not echoed.
    let e = expect_err(
        &format!(
            "{head_user}[[users]]\nname = \"v\"\n\nscram_verifier = \"SCRAM-SHA-256$x:abc\"\n"
        ),
        Some(14),
        Some("users[1].scram_verifier"),
        "not a valid SCRAM verifier",
    );
    assert!(!e.to_string().contains("$x:abc"), "{e}");
    expect_err(
        &format!("{head_user}[[users]]\nname = \"v\"\nserver_user = \"\"\ntrust = 1\n"),
        Some(14),
        Some("users[1].trust"),
        "unknown field",
    );
    expect_err(
        &format!("{head_user}[[users]]\nname = \"v\"\nauth = \"trust\"\nserver_user = \"\"\n"),
        Some(14),
        Some("users[1].server_user"),
        "empty",
    );
    expect_err(
        &format!("{base_head}[[users]]\nname = \"\"\nauth = \"trust\"\n"),
        Some(8),
        Some("users[0].name"),
        "empty",
    );

    // Sizes, ports, weights.
    let ok_tail = format!("{base_head}{user}");
    expect_err(
        &format!("max_client_connections = 0\n{ok_tail}"),
        Some(1),
        Some("max_client_connections"),
        "at least 1",
    );
    expect_err(
        &format!("max_message_bytes = 8191\n{ok_tail}"),
        Some(1),
        Some("max_message_bytes"),
        "between 8192",
    );
    expect_err(
        &format!("max_message_bytes = 4294967296\n{ok_tail}"),
        Some(1),
        Some("max_message_bytes"),
        "between 8192",
    );
    assert_eq!(
        parse(&format!("max_message_bytes = 8192\n{ok_tail}"))
            .unwrap()
            .max_message_bytes,
        8192
    );
    for key in [
        "write_pool_size",
        "read_pool_size",
        "prepared_statements_per_server",
    ] {
        expect_err(
            &format!("{ok_tail}\n[pools]\n{key} = 0\n"),
            Some(12),
            Some(&format!("pools.{key}")),
            "at least 1",
        );
    }
    for key in [
        "max_prepared_statements_per_client",
        "max_batch_messages",
        "max_logins_in_progress",
    ] {
        expect_err(
            &format!("{ok_tail}\n[limits]\n{key} = 0\n"),
            Some(12),
            Some(&format!("limits.{key}")),
            "at least 1",
        );
    }
    expect_err(
        &format!("{ok_tail}[[replicas]]\nhost = \"r\"\nport = 0\n"),
        Some(12),
        Some("replicas[0].port"),
        "must not be 0",
    );
    expect_err(
        "[primary]\nhost = \"p\"\nweight = 0\n",
        Some(3),
        Some("primary.weight"),
        "at least 1",
    );
    expect_err(
        &format!("{ok_tail}[[replicas]]\nhost = \"r\"\n\nweight = 0\n"),
        Some(13),
        Some("replicas[0].weight"),
        "at least 1",
    );
    expect_err(
        "[primary]\nhost = \"\"\n",
        Some(2),
        Some("primary.host"),
        "empty",
    );
    for key in ["server_connect", "pool_wait", "client_login"] {
        expect_err(
            &format!("{ok_tail}\n[timeouts]\n{key} = \"0\"\n"),
            Some(12),
            Some(&format!("timeouts.{key}")),
            "greater than 0",
        );
    }
    for key in ["client_idle", "server_idle", "server_lifetime", "shutdown"] {
        parse(&format!("{ok_tail}\n[timeouts]\n{key} = \"0\"\n")).unwrap();
    }
    // Misc.
    expect_err(
        &format!("listen = \"0.0.0.0:7000\"\nadmin_listen = \"0.0.0.0:7000\"\n{ok_tail}"),
        Some(2),
        Some("admin_listen"),
        "must differ",
    );
    parse(&format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{ok_tail}"
    ))
    .unwrap();
    expect_err(
        &format!("write_functions = [\"ok\", \"\"]\n{ok_tail}"),
        Some(1),
        Some("write_functions[1]"),
        "empty",
    );
    expect_err(
        &format!("{base_head}[[databases]]\nname = \"pgsplit\"\n{user}"),
        Some(8),
        Some("databases[1].name"),
        "reserved",
    );
    expect_err(
        &format!("{ok_tail}[[databases]]\nname = \"x\"\nserver_database = \"\"\n"),
        Some(12),
        Some("databases[1].server_database"),
        "empty",
    );
}

#[test]
fn auth_query_errors_name_line_and_field() {
    let tail = "[primary]\nhost = \"p\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"x\"\n\
                [[users]]\nname = \"v\"\nscram_verifier = \"";
    let tail = format!("{tail}{VERIFIER}\"\n");
    expect_err(
        &format!("auth_user = \"nobody\"\n{tail}"),
        Some(1),
        Some("auth_user"),
        "`nobody` is not a [[users]] entry",
    );
    let e = expect_err(
        &format!("auth_user = \"v\"\n{tail}"),
        Some(1),
        Some("auth_user"),
        "needs `server_password`",
    );
    assert!(!e.to_string().contains(VERIFIER), "{e}");
    expect_err(
        &format!("auth_user = \"app\"\nauth_query = \"SELECT 1, 2\"\n{tail}"),
        Some(2),
        Some("auth_query"),
        "$1",
    );
    expect_err(
        &format!("auth_user = \"app\"\nauth_database = \"\"\n{tail}"),
        Some(2),
        Some("auth_database"),
        "must not be empty",
    );
    expect_err(
        &format!("auth_query = \"SELECT a, b FROM f($1)\"\n{tail}"),
        Some(1),
        Some("auth_query"),
        "needs `auth_user`",
    );
    expect_err(
        &format!("auth_database = \"postgres\"\n{tail}"),
        Some(1),
        Some("auth_database"),
        "needs `auth_user`",
    );
    let c = parse(&format!(
        "auth_user = \"app\"\nauth_query_ttl = \"2s\"\n{tail}"
    ))
    .unwrap();
    assert_eq!(c.auth_user.as_deref(), Some("app"));
    assert_eq!(c.auth_query, DEFAULT_AUTH_QUERY);
    assert_eq!(c.auth_query_ttl, Duration::from_secs(2));
    let c = parse(&tail).unwrap();
    assert_eq!(c.auth_user, None);
    assert_eq!(c.auth_query_ttl, Duration::from_secs(60));
}
