//! auth_query and SCRAM pass-through, on the shared cluster: roles made in PostgreSQL after pgsplit started log
//! in through it with no configuration change and run as themselves on the primary and the replicas; pgsplit
//! holds no password for them (pg_hba requires SCRAM or md5 for members of `scram_login` / `md5_login`, so a
//! wrong key would be refused by the servers).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::common::{self, env};

/// A proxy in front of the shared cluster: `top` at top level (auth_user, auth_query, …), `users` appended
/// after `trustclient` (first, so the monitor logs in as `postgres`).
fn proxy(top: &str, users: &str) -> SocketAddr {
    let rest = format!(
        "admin_listen = \"127.0.0.1:0\"\n{top}\n\
         [lag]\nmax_lag = \"60s\"\n\
         [[databases]]\nname = \"app\"\n\
         [[users]]\nname = \"trustclient\"\nauth = \"trust\"\nserver_user = \"postgres\"\nadmin = true\n\
         {users}"
    );
    let config =
        pgsplit::demo::local_config(&env().cluster, 0, &rest, "<auth_query test>").expect("config");
    common::spawn_proxy(config)
}

/// A proxy that looks users up through `trustclient` (`postgres`, so `pg_shadow` is readable).
fn lookup_proxy(ttl: &str) -> SocketAddr {
    proxy(
        &format!("auth_user = \"trustclient\"\nauth_query_ttl = \"{ttl}\""),
        "",
    )
}

/// Runs `sql` on the primary (as `postgres`) and waits until both replicas replayed it.
fn on_primary(sql: &str) {
    let cluster = &env().cluster;
    cluster.psql("primary", sql).expect("psql");
    for r in ["replica1", "replica2"] {
        cluster
            .wait_replayed(r, Duration::from_secs(30))
            .expect("replayed");
    }
}

/// (current_user, server port) of `sql`.
async fn who_and_where(client: &Client, sql: &str) -> (String, u16) {
    let rows = client.simple_query(sql).await.expect("query");
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let user = r.get(0).expect("user").to_string();
            return (user, r.get(1).expect("port").parse().expect("port"));
        }
    }
    panic!("no row from {sql}");
}

/// Asserts that `client` runs as `role` on the primary (a hinted statement) and on a replica (a read; the new
/// proxy's monitor may need a moment before the replicas take reads).
async fn runs_as_on_primary_and_replica(client: &Client, role: &str) {
    let write = "/* pgsplit:primary */ SELECT current_user, inet_server_port()";
    assert_eq!(
        who_and_where(client, write).await,
        (role.to_string(), common::primary_port())
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (user, port) = who_and_where(client, "SELECT current_user, inet_server_port()").await;
        assert_eq!(user, role);
        if common::replica_ports().contains(&port) {
            return;
        }
        assert!(Instant::now() < deadline, "reads never reached a replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The SQLSTATE and message a login gets.
async fn refusal(proxy: SocketAddr, user: (&str, &str)) -> (String, String) {
    let e = common::connect_to(proxy, user)
        .await
        .err()
        .unwrap_or_else(|| panic!("{} logged in", user.0));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("no server error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// The authentication request code pgsplit answers a startup packet for `user` with.
fn first_auth_request(proxy: SocketAddr, user: &str) -> u32 {
    let mut raw = common::wire::Raw::open(proxy, Duration::from_secs(10));
    raw.send(&common::startup_packet(user));
    let (tag, body) = raw.read().expect("a reply");
    assert_eq!(tag, b'R', "{:?}", String::from_utf8_lossy(&body));
    u32::from_be_bytes([body[0], body[1], body[2], body[3]])
}

#[tokio::test]
async fn a_role_created_after_start_logs_in_and_runs_as_itself_with_no_password_in_the_file() {
    let proxy = lookup_proxy("60s");
    on_primary("CREATE ROLE aq_late LOGIN PASSWORD 'late-pw' IN ROLE scram_login");
    let client = common::connect_to(proxy, ("aq_late", "late-pw"))
        .await
        .expect("a looked-up role logs in");
    runs_as_on_primary_and_replica(&client, "aq_late").await;
    // A second client of the same role shares the pools (and logs in with the cached verifier).
    let again = common::connect_to(proxy, ("aq_late", "late-pw"))
        .await
        .expect("second login");
    runs_as_on_primary_and_replica(&again, "aq_late").await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_exactly_as_an_unknown_user_is() {
    let proxy = lookup_proxy("60s");
    on_primary("CREATE ROLE aq_wrong LOGIN PASSWORD 'right-pw' IN ROLE scram_login");
    let wrong = refusal(proxy, ("aq_wrong", "wrong-pw")).await;
    let unknown = refusal(proxy, ("aq_nobody", "wrong-pw")).await;
    let nologin_group = refusal(proxy, ("scram_login", "x")).await;
    assert_eq!(
        wrong,
        (
            "28P01".to_string(),
            "password authentication failed for user \"aq_wrong\"".to_string()
        )
    );
    assert_eq!(
        unknown,
        (
            "28P01".to_string(),
            "password authentication failed for user \"aq_nobody\"".to_string()
        )
    );
    assert_eq!(nologin_group.0, "28P01");
    // Both are asked for SCRAM (a mock exchange for the unknown one): the exchange does not tell them apart.
    assert_eq!(first_auth_request(proxy, "aq_wrong"), 10);
    assert_eq!(first_auth_request(proxy, "aq_nobody"), 10);
    // The right password still works after the failures.
    common::connect_to(proxy, ("aq_wrong", "right-pw"))
        .await
        .expect("right password");
}

#[tokio::test]
async fn a_password_changed_in_postgres_is_used_after_the_ttl() {
    let proxy = lookup_proxy("1s");
    on_primary("CREATE ROLE aq_rotate LOGIN PASSWORD 'old-pw' IN ROLE scram_login");
    let old = common::connect_to(proxy, ("aq_rotate", "old-pw"))
        .await
        .expect("old password");
    runs_as_on_primary_and_replica(&old, "aq_rotate").await;
    on_primary("ALTER ROLE aq_rotate PASSWORD 'new-pw'");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, _) = refusal(proxy, ("aq_rotate", "old-pw")).await;
    assert_eq!(code, "28P01");
    let new = common::connect_to(proxy, ("aq_rotate", "new-pw"))
        .await
        .expect("new password after the TTL");
    // The pooled connections logged in with the old key are gone: new ones log in with the new key (pg_hba asks
    // for SCRAM, so an old key would be refused).
    for server in ["primary", "replica1", "replica2"] {
        env()
            .cluster
            .psql(
                server,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'aq_rotate'",
            )
            .expect("terminate");
    }
    runs_as_on_primary_and_replica(&new, "aq_rotate").await;
}

#[tokio::test]
async fn a_listed_scram_verifier_without_a_server_password_passes_the_client_key_through() {
    on_primary("CREATE ROLE aq_listed LOGIN PASSWORD 'listed-pw' IN ROLE scram_login");
    let verifier = env()
        .cluster
        .psql(
            "primary",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'aq_listed'",
        )
        .expect("verifier");
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    // The same password under another salt: the client logs in to pgsplit, but it is not the servers' verifier.
    let foreign = pgsplit::auth::ScramVerifier::from_password("listed-pw").to_string();
    let proxy = proxy(
        "",
        &format!(
            "[[users]]\nname = \"aq_listed\"\nscram_verifier = \"{verifier}\"\n\
             [[users]]\nname = \"aq_foreign\"\nserver_user = \"aq_listed\"\nscram_verifier = \"{foreign}\"\n"
        ),
    );
    let client = common::connect_to(proxy, ("aq_listed", "listed-pw"))
        .await
        .expect("login with the verifier");
    runs_as_on_primary_and_replica(&client, "aq_listed").await;
    let (code, _) = refusal(proxy, ("aq_listed", "other")).await;
    assert_eq!(code, "28P01");

    // pgsplit's login opens a server connection for the greeting: it names the cause.
    let (_, message) = refusal(proxy, ("aq_foreign", "listed-pw")).await;
    assert!(
        message.contains("the verifier is not the server's"),
        "{message}"
    );
}

#[tokio::test]
async fn md5_hashes_from_auth_query_work_both_ways() {
    let proxy = lookup_proxy("60s");
    on_primary(
        "SET password_encryption = 'md5'; \
         CREATE ROLE aq_md5 LOGIN PASSWORD 'md5-pw' IN ROLE md5_login",
    );
    assert_eq!(first_auth_request(proxy, "aq_md5"), 5, "md5 asked");
    let client = common::connect_to(proxy, ("aq_md5", "md5-pw"))
        .await
        .expect("md5 login");
    runs_as_on_primary_and_replica(&client, "aq_md5").await;
    let (code, message) = refusal(proxy, ("aq_md5", "wrong")).await;
    assert_eq!(code, "28P01");
    assert_eq!(
        message,
        "password authentication failed for user \"aq_md5\""
    );
}

#[tokio::test]
async fn a_listed_user_wins_over_auth_query() {
    on_primary("CREATE ROLE aq_both LOGIN PASSWORD 'server-pw' IN ROLE scram_login");
    let proxy = proxy(
        "auth_user = \"trustclient\"",
        "[[users]]\nname = \"aq_both\"\npassword = \"file-pw\"\nserver_password = \"server-pw\"\n",
    );
    let client = common::connect_to(proxy, ("aq_both", "file-pw"))
        .await
        .expect("the file's password");
    runs_as_on_primary_and_replica(&client, "aq_both").await;
    let (code, _) = refusal(proxy, ("aq_both", "server-pw")).await;
    assert_eq!(code, "28P01", "the database's password is not asked");
}

#[tokio::test]
async fn a_failed_lookup_is_a_clear_fatal_error() {
    let proxy = proxy(
        "auth_user = \"trustclient\"\nauth_query = \"SELECT usename, passwd FROM no_such_table WHERE usename = $1\"",
        "",
    );
    let (code, message) = refusal(proxy, ("aq_anyone", "pw")).await;
    assert_eq!(code, "08006");
    assert!(message.contains("auth_query lookup"), "{message}");
    // Listed users do not depend on the lookup.
    common::connect_to(proxy, common::TRUST)
        .await
        .expect("listed user");
}

/// The number of lookups the counting query of [`counting_proxy`] made.
fn lookups(sequence: &str) -> i64 {
    env()
        .cluster
        .psql(
            "primary",
            &format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"),
        )
        .expect("count")
        .parse()
        .expect("number")
}

/// A proxy whose auth_query counts its runs in `sequence` (one row always: NULLs for a missing user).
fn counting_proxy(sequence: &str, ttl: &str) -> SocketAddr {
    on_primary(&format!("CREATE SEQUENCE {sequence}"));
    proxy(
        &format!(
            "auth_user = \"trustclient\"\nauth_query_ttl = \"{ttl}\"\nauth_database = \"postgres\"\n\
             auth_query = \"SELECT s.usename, s.passwd FROM (SELECT nextval('{sequence}')) AS n \
             LEFT JOIN pg_shadow s ON s.usename = $1\""
        ),
        "",
    )
}

#[tokio::test]
async fn concurrent_logins_of_one_user_share_one_lookup_and_missing_users_are_cached() {
    let proxy = counting_proxy("aq_lookups", "60s");
    on_primary("CREATE ROLE aq_crowd LOGIN PASSWORD 'crowd-pw' IN ROLE scram_login");
    let logins = (0..8).map(|_| common::connect_to(proxy, ("aq_crowd", "crowd-pw")));
    for client in futures_util::future::join_all(logins).await {
        client.expect("login");
    }
    assert_eq!(lookups("aq_lookups"), 1, "eight logins at once, one lookup");
    for _ in 0..3 {
        let (code, _) = refusal(proxy, ("aq_ghost", "pw")).await;
        assert_eq!(code, "28P01");
    }
    assert_eq!(lookups("aq_lookups"), 2, "a missing user is looked up once");
}

#[tokio::test]
async fn a_failed_login_against_an_old_cached_hash_looks_it_up_again() {
    let proxy = counting_proxy("aq_refresh_lookups", "60s");
    on_primary("CREATE ROLE aq_refresh LOGIN PASSWORD 'old-pw' IN ROLE scram_login");
    common::connect_to(proxy, ("aq_refresh", "old-pw"))
        .await
        .expect("old password");
    let looked_up = Instant::now();
    on_primary("ALTER ROLE aq_refresh PASSWORD 'new-pw'");
    // A young cached hash is not refreshed by a failure (failures cannot flood the primary)…
    let (code, _) = refusal(proxy, ("aq_refresh", "new-pw")).await;
    assert_eq!(code, "28P01");
    if looked_up.elapsed() < pgsplit::auth_query::REFRESH_AFTER_FAILURE {
        assert_eq!(lookups("aq_refresh_lookups"), 1);
    }
    // …an older one is: the failed login forgets it, and the next login reads the new one, long before the TTL.
    tokio::time::sleep(pgsplit::auth_query::REFRESH_AFTER_FAILURE).await;
    let (code, _) = refusal(proxy, ("aq_refresh", "new-pw")).await;
    assert_eq!(code, "28P01");
    let client = common::connect_to(proxy, ("aq_refresh", "new-pw"))
        .await
        .expect("new password after one failure");
    assert_eq!(lookups("aq_refresh_lookups"), 2);
    runs_as_on_primary_and_replica(&client, "aq_refresh").await;
}

/// The README's lookup without a superuser: a SECURITY DEFINER function and an auth_user that may only call it.
#[tokio::test]
async fn a_security_definer_function_looks_users_up_for_a_plain_role() {
    on_primary(
        "CREATE ROLE aq_auth LOGIN PASSWORD 'lookup-secret' IN ROLE scram_login;
         CREATE SCHEMA aq_lookup AUTHORIZATION postgres;
         CREATE FUNCTION aq_lookup.user_lookup(i_username text, OUT usename name, OUT passwd text)
         RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
         $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = i_username $$;
         REVOKE ALL ON FUNCTION aq_lookup.user_lookup(text) FROM PUBLIC;
         GRANT USAGE ON SCHEMA aq_lookup TO aq_auth;
         GRANT EXECUTE ON FUNCTION aq_lookup.user_lookup(text) TO aq_auth;
         CREATE ROLE aq_viadefiner LOGIN PASSWORD 'definer-pw' IN ROLE scram_login",
    );
    let proxy = proxy(
        "auth_user = \"aq_auth\"\nauth_database = \"postgres\"\n\
         auth_query = \"SELECT usename, passwd FROM aq_lookup.user_lookup($1)\"",
        "[[users]]\nname = \"aq_auth\"\npassword = \"lookup-secret\"\n",
    );
    let client = common::connect_to(proxy, ("aq_viadefiner", "definer-pw"))
        .await
        .expect("looked up through the function");
    runs_as_on_primary_and_replica(&client, "aq_viadefiner").await;
}

#[tokio::test]
async fn a_lookup_with_the_primary_down_is_a_clear_fatal_error() {
    // A primary nobody listens on (a port just freed), the replicas up.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nauth_user = \"trustclient\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {dead}\n"
    );
    for r in env().cluster.replicas() {
        text.push_str(&format!(
            "[[replicas]]\nhost = \"127.0.0.1\"\nport = {}\n",
            r.port
        ));
    }
    text.push_str(
        "[[databases]]\nname = \"app\"\n\
         [[users]]\nname = \"trustclient\"\nauth = \"trust\"\nserver_user = \"postgres\"\n",
    );
    let config = pgsplit::config::Config::from_toml_str(&text, "<test>").expect("config");
    let proxy = common::spawn_proxy(config);
    for user in ["aq_late", "aq_nobody_at_all"] {
        let (code, message) = refusal(proxy, (user, "pw")).await;
        assert_eq!(code, "08006");
        assert_eq!(
            message,
            format!(
                "pgsplit could not look up user \"{user}\": the auth_query lookup on the primary failed"
            )
        );
    }
}

/// psql (libpq) logs in as a looked-up role, and is refused with the wrong password.
#[tokio::test]
async fn psql_logs_in_as_a_looked_up_role() {
    let proxy = lookup_proxy("60s");
    on_primary("CREATE ROLE aq_psql LOGIN PASSWORD 'psql-pw' IN ROLE scram_login");
    let run = move |password: &str| {
        std::process::Command::new("psql")
            .args(["-X", "-At", "-c", "SELECT current_user"])
            .arg(format!(
                "postgres://aq_psql:{password}@{}:{}/app",
                proxy.ip(),
                proxy.port()
            ))
            .output()
            .expect("psql")
    };
    let ok = tokio::task::spawn_blocking(move || (run("psql-pw"), run("nope")))
        .await
        .expect("psql runs");
    assert!(
        ok.0.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.0.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.0.stdout).trim(), "aq_psql");
    assert!(!ok.1.status.success());
    let stderr = String::from_utf8_lossy(&ok.1.stderr);
    assert!(
        stderr.contains("password authentication failed for user \"aq_psql\""),
        "{stderr}"
    );
}
