//! Nothing of one client reaches another. Each test runs its own pgsplit with pools of one server connection, so
//! that consecutive clients share it; a client leaves state behind in every way PostgreSQL allows, and the next
//! client must find a clean session.

use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::common::*;

/// What a clean session looks like from `STATE`.
const CLEAN: &str = "app|app|0|0|0|0|0|4MB|\"$user\", public|0";

/// Run on the primary connection (where writes left their state): roles, LISTEN, temp relations, advisory locks,
/// SQL-level prepared statements, cursors, two settings and the sequence state.
const STATE: &str = "/* pgsplit:primary */ SELECT concat_ws('|', current_user, session_user, \
    (SELECT count(*) FROM pg_listening_channels()), \
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
    (SELECT count(*) FROM pg_prepared_statements WHERE from_sql), \
    (SELECT count(*) FROM pg_cursors), \
    current_setting('work_mem'), current_setting('search_path'), \
    (SELECT count(*) FROM pg_settings WHERE source = 'session' AND name NOT IN ('client_encoding', 'application_name', 'DateStyle', 'TimeZone', 'extra_float_digits')))";

static SETUP: OnceCell<()> = OnceCell::const_new();

/// Roles, tables and functions the drills use, created once per run.
async fn setup() {
    SETUP
        .get_or_init(|| async {
            let url = env().cluster.url("primary", "postgres", "app");
            let (c, conn) = tokio_postgres::connect(&url, NoTls).await.expect("direct");
            tokio::spawn(conn);
            c.batch_execute(
                "DO $$BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iso_r1') THEN CREATE ROLE iso_r1; END IF;
                 END$$;
                 GRANT iso_r1 TO app;
                 GRANT ALL ON SCHEMA public TO iso_r1;
                 CREATE TABLE IF NOT EXISTS iso_orders (id int);
                 CREATE TABLE IF NOT EXISTS iso_trig (id int);
                 CREATE SEQUENCE IF NOT EXISTS iso_seq;
                 ALTER SEQUENCE iso_seq OWNER TO app;
                 ALTER TABLE iso_orders OWNER TO app;
                 ALTER TABLE iso_trig OWNER TO app;
                 GRANT ALL ON iso_orders, iso_trig TO iso_r1;
                 CREATE OR REPLACE FUNCTION iso_leaky() RETURNS int LANGUAGE plpgsql AS $$
                 BEGIN
                   PERFORM set_config('search_path', 'leak', false);
                   PERFORM set_config('work_mem', '7MB', false);
                   CREATE TEMP TABLE IF NOT EXISTS leak_t (a int);
                   PERFORM pg_advisory_lock(4242);
                   LISTEN leak_channel;
                   EXECUTE 'PREPARE leak_p AS SELECT 1';
                   PERFORM set_config('role', 'iso_r1', false);
                   RETURN 1;
                 END$$;
                 ALTER FUNCTION iso_leaky() OWNER TO app;
                 CREATE OR REPLACE FUNCTION iso_trig_fn() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   PERFORM set_config('work_mem', '9MB', false);
                   CREATE TEMP TABLE IF NOT EXISTS trig_leak (a int);
                   RETURN NEW;
                 END$$;
                 DROP TRIGGER IF EXISTS iso_trig_leak ON iso_trig;
                 CREATE TRIGGER iso_trig_leak BEFORE INSERT ON iso_trig FOR EACH ROW EXECUTE FUNCTION iso_trig_fn();",
            )
            .await
            .expect("isolation setup");
            for r in ["replica1", "replica2"] {
                env()
                    .cluster
                    .wait_replayed(r, Duration::from_secs(30))
                    .expect("replicas caught up");
            }
        })
        .await;
}

/// A pgsplit whose pools hold one server connection each.
fn single_connection_proxy() -> std::net::SocketAddr {
    spawn_proxy(config(
        &env().cluster,
        1,
        1,
        "[routing]\nbalancer = \"round_robin\"",
    ))
}

async fn first_value(c: &Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}

/// Client A runs `drill` (statement by statement, each a simple Query) and leaves; a fresh client B must find
/// a clean session on the same server connection.
async fn after_a_leaves(proxy: std::net::SocketAddr, drill: &[&str]) {
    let a = connect_to(proxy, APP).await.expect("client A");
    for sql in drill {
        a.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("A: {sql}: {e}"));
    }
    drop(a);
    // A's session ends in the background; B then gets the connection it gave back.
    let b = connect_to(proxy, APP).await.expect("client B");
    assert_eq!(first_value(&b, STATE).await, CLEAN, "after {drill:?}");
    let lastval = b
        .simple_query("/* pgsplit:primary */ SELECT lastval()")
        .await
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_string()));
    assert_eq!(
        lastval.as_deref(),
        Some("55000"),
        "no sequence state after {drill:?}"
    );
}

#[tokio::test]
async fn no_session_state_of_a_client_that_left_reaches_the_next() {
    setup().await;
    let proxy = single_connection_proxy();
    let drills: &[&[&str]] = &[
        &["SET ROLE iso_r1; RESET ALL", "SELECT 1"],
        &["SET ROLE iso_r1", "RESET ALL"],
        &["BEGIN; SET ROLE iso_r1; SAVEPOINT s; ROLLBACK TO SAVEPOINT s; COMMIT"],
        &[
            "BEGIN",
            "SET ROLE iso_r1",
            "SAVEPOINT s",
            "ROLLBACK TO SAVEPOINT s",
            "COMMIT",
        ],
        &["SELECT 1; SET ROLE iso_r1"],
        &["SET ROLE TO iso_r1"],
        &["SET ROLE = iso_r1"],
        &["SELECT set_config('search_path', 'x', false), set_config('work_mem', '5MB', false)"],
        &["SELECT * INTO TEMP iso_orders FROM iso_orders WHERE false"],
        &["CREATE TEMP TABLE t1 (a int)"],
        &["CREATE TABLE pg_temp.t2 (a int)"],
        &["create temporary view v1 as select 1"],
        &["SELECT 1; LISTEN some_channel"],
        &["DECLARE c CURSOR WITH\nHOLD FOR SELECT 1"],
        &["SELECT pg_advisory_lock(17)"],
        &["PREPARE p1 AS SELECT 1"],
        &[
            "SET work_mem = '6MB' -- a comment\n",
            "SET search_path TO pg_catalog",
        ],
        &[
            "BEGIN",
            "SET work_mem = '5MB'",
            "SAVEPOINT s",
            "SET search_path = x",
            "ROLLBACK TO SAVEPOINT s",
            "COMMIT",
        ],
        &["SELECT iso_leaky()"],
        &["INSERT INTO iso_trig VALUES (1)"],
        &["SELECT nextval('iso_seq')"],
        &["/* pgsplit:primary */ SELECT iso_leaky()"],
        &["SELECT 1 AS a INTO LOCAL TEMP t3", "SELECT * FROM t3"],
        &["SELECT 1 AS a INTO \"pg_temp\".t4", "SELECT * FROM t4"],
        &["EXPLAIN ANALYZE SELECT set_config('search_path', 'x', false)"],
        &["SELECT \"set_config\"('search_path', 'x', false)"],
        &["SELECT \"pg_advisory_lock\"(18)"],
    ];
    for drill in drills {
        after_a_leaves(proxy, drill).await;
    }
}

#[tokio::test]
async fn a_connection_reset_after_a_function_call_is_clean_while_its_client_stays() {
    setup().await;
    let proxy = single_connection_proxy();
    let a = connect_to(proxy, APP).await.expect("client A");
    let b = connect_to(proxy, APP).await.expect("client B");
    // A function and a trigger pgsplit cannot see into leave state behind; A stays connected (it is not
    // pinned), so B gets the same server connection right after — reset.
    for sql in ["SELECT iso_leaky()", "INSERT INTO iso_trig VALUES (2)"] {
        a.simple_query(sql).await.expect(sql);
        assert_eq!(first_value(&b, STATE).await, CLEAN, "after {sql}");
        // A carries on normally.
        assert_eq!(first_value(&a, "SELECT current_user").await, "app");
    }
}

#[tokio::test]
async fn an_insert_after_another_clients_select_into_temp_lands_in_the_real_table() {
    setup().await;
    let proxy = single_connection_proxy();
    let direct_url = env().cluster.url("primary", "postgres", "app");
    let (direct, conn) = tokio_postgres::connect(&direct_url, NoTls)
        .await
        .expect("direct");
    tokio::spawn(conn);
    let marker: i32 = 900_000 + (std::process::id() % 1000) as i32;
    let a = connect_to(proxy, APP).await.expect("A");
    a.simple_query("SELECT * INTO TEMP iso_orders FROM iso_orders WHERE false")
        .await
        .expect("select into temp");
    // A keeps its temp table: it is pinned to its connection and sees its own table.
    a.simple_query(&format!("INSERT INTO iso_orders VALUES ({marker})"))
        .await
        .expect("A's insert");
    drop(a);
    let b = connect_to(proxy, APP).await.expect("B");
    let tag = b
        .execute(&format!("INSERT INTO iso_orders VALUES ({marker})"), &[])
        .await
        .expect("B's insert");
    assert_eq!(tag, 1);
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM public.iso_orders WHERE id = $1",
            &[&marker],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        n, 1,
        "B's row is in public.iso_orders, A's stayed in its temp table"
    );
}

#[tokio::test]
async fn a_role_set_by_a_client_holds_for_it_on_every_statement_and_only_for_it() {
    setup().await;
    let proxy = single_connection_proxy();
    for set in [
        "SET ROLE TO iso_r1",
        "SET ROLE = iso_r1",
        "SET ROLE iso_r1 -- c",
    ] {
        let a = connect_to(proxy, APP).await.expect("A");
        a.simple_query(set).await.expect(set);
        for _ in 0..4 {
            // Reads (replicas, were it not pinned) and writes alike run as the role.
            assert_eq!(
                first_value(&a, "SELECT current_user").await,
                "iso_r1",
                "{set}"
            );
            a.simple_query("INSERT INTO iso_orders VALUES (0)")
                .await
                .expect("write as the role");
        }
        // PostgreSQL's RESET ALL leaves the role alone; so does pgsplit.
        a.simple_query("RESET ALL").await.expect("reset all");
        assert_eq!(first_value(&a, "SELECT current_user").await, "iso_r1");
        drop(a);
    }
}

/// Whether `c`'s reads reach a replica within a few tries (read-your-writes may keep the first on the primary).
async fn reads_reach_a_replica(c: &Client) -> bool {
    for _ in 0..50 {
        if first_value(c, "SELECT pg_is_in_recovery()").await == "t" {
            return true;
        }
    }
    false
}

/// Whether ten of `c`'s reads all ran on the primary.
async fn reads_stay_on_the_primary(c: &Client) -> bool {
    for _ in 0..10 {
        if first_value(c, "SELECT pg_is_in_recovery()").await != "f" {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_client_that_released_its_advisory_locks_gives_its_connections_back() {
    setup().await;
    // One primary connection: while A keeps it, B cannot have it.
    let proxy = single_connection_proxy();
    let a = connect_to(proxy, APP).await.expect("A");
    let b = connect_to(proxy, APP).await.expect("B");
    // Two session locks, by a simple Query and by a prepared statement: A keeps its connections, reads on the
    // primary, until it holds neither.
    a.simple_query("SELECT pg_advisory_lock(4201)")
        .await
        .expect("lock");
    a.query("SELECT pg_try_advisory_lock($1)", &[&4202i64])
        .await
        .expect("try lock");
    assert!(reads_stay_on_the_primary(&a).await, "locked: pinned");
    a.simple_query("SELECT pg_advisory_unlock(4201)")
        .await
        .expect("unlock one");
    assert!(reads_stay_on_the_primary(&a).await, "one lock left: pinned");
    a.query("SELECT pg_advisory_unlock($1)", &[&4202i64])
        .await
        .expect("unlock the other");
    assert!(reads_reach_a_replica(&a).await, "no lock left: unpinned");
    // B gets the one primary connection, with nothing of A's left on it.
    assert_eq!(first_value(&b, STATE).await, CLEAN, "after A unlocked");
    // pg_advisory_unlock_all, in a transaction with other statements, lets go too.
    a.simple_query("SELECT pg_advisory_lock_shared(4203); SELECT pg_advisory_lock(4204)")
        .await
        .expect("lock two");
    assert!(reads_stay_on_the_primary(&a).await, "locked again: pinned");
    a.simple_query("BEGIN; SELECT pg_advisory_unlock_all(); SELECT 1; COMMIT")
        .await
        .expect("unlock all");
    assert!(reads_reach_a_replica(&a).await, "unlock_all: unpinned");
    assert_eq!(first_value(&b, STATE).await, CLEAN, "after unlock_all");
    // A lock that never took still pins until an unlock is run; then the check finds none.
    let direct_url = env().cluster.url("primary", "postgres", "app");
    let (c, conn) = tokio_postgres::connect(&direct_url, NoTls)
        .await
        .expect("direct");
    tokio::spawn(conn);
    c.simple_query("SELECT pg_advisory_lock(4205)")
        .await
        .expect("C locks");
    assert_eq!(
        first_value(&a, "SELECT pg_try_advisory_lock(4205)").await,
        "f",
        "C holds it"
    );
    assert!(reads_stay_on_the_primary(&a).await, "tried: pinned");
    a.simple_query("SELECT pg_advisory_unlock_all()")
        .await
        .expect("A unlocks all");
    assert!(reads_reach_a_replica(&a).await, "nothing held: unpinned");
    drop(c);
    // Other session-bound state taken while a lock is held pins for good.
    a.simple_query("SELECT pg_advisory_lock(4206)")
        .await
        .expect("lock");
    a.simple_query("CREATE TEMP TABLE iso_adv (a int)")
        .await
        .expect("temp table");
    a.simple_query("SELECT pg_advisory_unlock(4206)")
        .await
        .expect("unlock");
    assert!(
        reads_stay_on_the_primary(&a).await,
        "the temp table keeps it pinned"
    );
    assert_eq!(first_value(&a, "SELECT count(*) FROM iso_adv").await, "0");
}

#[tokio::test]
async fn a_superuser_login_changing_session_authorization_keeps_working_and_leaks_nothing() {
    setup().await;
    let proxy = single_connection_proxy();
    // trustclient logs in to the servers as the superuser postgres.
    let a = connect_to(proxy, TRUST).await.expect("A");
    a.simple_query("SET SESSION AUTHORIZATION app")
        .await
        .expect("set session authorization");
    for _ in 0..4 {
        assert_eq!(first_value(&a, "SELECT session_user").await, "app");
        a.simple_query("SELECT 1").await.expect("later units work");
    }
    drop(a);
    for _ in 0..3 {
        let b = connect_to(proxy, TRUST)
            .await
            .expect("a new login on that connection");
        assert_eq!(
            first_value(&b, "/* pgsplit:primary */ SELECT session_user").await,
            "postgres"
        );
        assert_eq!(first_value(&b, "SHOW is_superuser").await, "on");
    }
}

#[tokio::test]
async fn settings_survive_exactly_as_postgres_decides_and_replay_on_replicas() {
    setup().await;
    let proxy = single_connection_proxy();
    let a = connect_to(proxy, APP).await.expect("A");
    for sql in [
        "SET work_mem = '6MB' -- trailing comment",
        "SET statement_timeout = '7s'",
        "BEGIN",
        "SET search_path = pg_catalog, public",
        "SAVEPOINT s",
        "SET search_path = x",
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
    ] {
        a.simple_query(sql).await.expect(sql);
    }
    // Reads go round robin over the replicas: every server A is given has A's settings.
    let replicas = replica_ports();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let row = first_value(
            &a,
            "SELECT concat_ws('|', current_setting('work_mem'), current_setting('statement_timeout'), current_setting('search_path'), inet_server_port())",
        )
        .await;
        let parts: Vec<&str> = row.split('|').collect();
        assert_eq!(&parts[..3], ["6MB", "7s", "pg_catalog, public"], "{row}");
        seen.insert(parts[3].parse::<u16>().expect("port"));
    }
    assert!(
        seen.iter().all(|p| replicas.contains(p)),
        "reads on replicas: {seen:?}"
    );
    drop(a);
    let b = connect_to(proxy, APP).await.expect("B");
    assert_eq!(first_value(&b, STATE).await, CLEAN);
    assert_eq!(first_value(&b, "SHOW statement_timeout").await, "0");
}

/// A small deterministic generator (xorshift), so the sequence is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What a client sees of its settings, and whether a statement failed.
async fn step(c: &Client, sql: &str) -> String {
    let outcome = match c.simple_query(sql).await {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error {:?}", e.code().map(|c| c.code().to_string())),
    };
    let settings = match c
        .simple_query("SELECT concat_ws('|', current_setting('work_mem'), current_setting('search_path'), current_setting('application_name'), current_setting('TimeZone'))")
        .await
    {
        Ok(rows) => rows
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default(),
        Err(e) => format!("error {:?}", e.code().map(|c| c.code().to_string())),
    };
    format!("{outcome} -> {settings}")
}

#[tokio::test]
async fn random_setting_sequences_match_a_direct_connection() {
    setup().await;
    let proxy = single_connection_proxy();
    let direct_url = env()
        .cluster
        .url("primary", "app", "app")
        .replace("postgres://app@", "postgres://app:app-secret@");
    const STATEMENTS: &[&str] = &[
        "SET work_mem = '5MB'",
        "SET work_mem TO '6MB' -- why not",
        "SET SESSION work_mem = 7000",
        "SET LOCAL work_mem = '8MB'",
        "RESET work_mem",
        "SET work_mem TO DEFAULT",
        "SET search_path = pg_catalog",
        "SET search_path TO \"$user\", public",
        "SELECT set_config('search_path', 'public', false)",
        "SELECT set_config('work_mem', '9MB', true)",
        "SET application_name = 'prop'",
        "RESET application_name",
        "SET TIME ZONE 'Europe/Paris'",
        "SET TIME ZONE LOCAL",
        "RESET ALL",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT a",
        "SAVEPOINT b",
        "ROLLBACK TO SAVEPOINT a",
        "ROLLBACK TO b",
        "RELEASE SAVEPOINT a",
        "SELECT 1/0",
        "SET work_mem = '4MB'; SET search_path = public",
        "SET work_mem = '3MB'; SELECT 1/0",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..12 {
        let via = connect_to(proxy, APP).await.expect("through pgsplit");
        let (direct, conn) = tokio_postgres::connect(&direct_url, NoTls)
            .await
            .expect("direct");
        tokio::spawn(conn);
        let mut trail = Vec::new();
        for _ in 0..14 {
            let sql = STATEMENTS[rng.next(STATEMENTS.len())];
            trail.push(sql);
            let want = step(&direct, sql).await;
            let got = step(&via, sql).await;
            assert_eq!(got, want, "round {round}, after {trail:?}");
        }
        let _ = direct.simple_query("ROLLBACK").await;
        let _ = via.simple_query("ROLLBACK").await;
        drop(via);
        // Whatever that client did, the next one starts clean.
        let next = connect_to(proxy, APP).await.expect("next client");
        assert_eq!(
            first_value(&next, STATE).await,
            CLEAN,
            "round {round}: {trail:?}"
        );
    }
}
