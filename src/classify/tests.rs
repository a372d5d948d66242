//! The classifier's own tests; the readers of SQL text are tested in `crate::sql`.

use super::*;

fn route(sql: &str) -> Route {
    Classifier::new(&["audit_log".to_string()])
        .classify(sql)
        .route
}

#[test]
fn reads() {
    for sql in [
        "SELECT 1",
        "select * from t where id = 1",
        "SELECT count(*) FROM a JOIN b ON a.id = b.a_id",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "VALUES (1), (2)",
        "TABLE t",
        "SHOW search_path",
        "EXPLAIN SELECT * FROM t",
        "SELECT 1; SELECT 2",
        "BEGIN READ ONLY",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "/* pgsplit:replica */ SELECT nextval('s')",
        "-- comment\nSELECT 1",
    ] {
        assert_eq!(route(sql), Route::Read, "{sql}");
    }
}

#[test]
fn writes() {
    for sql in [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "CREATE TABLE t (a int)",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR NO KEY UPDATE NOWAIT",
        "SELECT * FROM t FOR SHARE SKIP LOCKED",
        "SELECT * FROM t FOR KEY SHARE OF t",
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "WITH a AS (WITH d AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM d) SELECT * FROM a",
        "SELECT * INTO t2 FROM t",
        "SELECT nextval('s')",
        "SELECT public.NEXTVAL('s')",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT * FROM nextval('s')",
        "SELECT audit_log('x')",
        "EXPLAIN ANALYZE DELETE FROM t",
        "SELECT 1; DELETE FROM t",
        "BEGIN",
        "START TRANSACTION",
        "BEGIN; SELECT 1; COMMIT",
        "DO $$ BEGIN END $$",
        "VACUUM (VERBOSE) t",
        "COMMIT",
        "SET search_path TO x",
        "/* pgsplit:primary */ SELECT 1",
        "this is not sql",
        "LOCK TABLE t",
        "COPY t FROM STDIN",
    ] {
        assert_eq!(route(sql), Route::Write, "{sql}");
    }
}

#[test]
fn unlogged_tables_and_side_effect_builtins_are_writes() {
    let c = Classifier::new(&[]);
    c.set_catalog(FunctionCatalog::new([]).with_unlogged([("public".into(), "cache".into())]));
    assert_eq!(c.classify("SELECT * FROM cache").route, Route::Write);
    assert_eq!(
        c.classify("SELECT * FROM public.cache c JOIN t ON true")
            .reason,
        Reason::UnloggedTable
    );
    assert_eq!(c.classify("SELECT * FROM other.cache").route, Route::Read);
    assert_eq!(c.classify("SELECT * FROM t").route, Route::Read);
    for f in [
        "pg_terminate_backend(1)",
        "pg_cancel_backend(1)",
        "pg_reload_conf()",
        "pg_stat_reset()",
        "pg_stat_reset_shared('bgwriter')",
        "pg_rotate_logfile()",
        "pg_replication_slot_advance('s', '0/0')",
        "pg_logical_slot_get_changes('s', NULL, NULL)",
    ] {
        assert_eq!(
            c.classify(&format!("SELECT {f}")).route,
            Route::Write,
            "{f}"
        );
    }
    assert_eq!(c.classify("SELECT pg_backend_pid()").route, Route::Read);
}

#[test]
fn user_functions_and_unknown_ones_make_the_connection_dirty() {
    let c = Classifier::new(&[]);
    assert!(c.classify("SELECT now()").effects.dirty, "no catalog yet");
    c.set_catalog(FunctionCatalog::new([
        FunctionRow {
            schema: "pg_catalog".into(),
            name: "now".into(),
            user_defined: false,
            volatile: false,
        },
        FunctionRow {
            schema: "public".into(),
            name: "pure".into(),
            user_defined: true,
            volatile: false,
        },
    ]));
    assert!(!c.classify("SELECT now() FROM t").effects.dirty);
    assert!(c.classify("SELECT pure(1)").effects.dirty);
    assert!(
        c.classify("SELECT * FROM t WHERE a = pure(1)")
            .effects
            .dirty
    );
    assert!(c.classify("SELECT unheard_of()").effects.dirty);
    assert!(!c.classify("SELECT COALESCE(a, 1) FROM t").effects.dirty);
}

#[test]
fn catalog_volatility_routes_user_functions() {
    let c = Classifier::new(&["billing.charge".to_string()]).require_catalog();
    assert_eq!(
        c.classify("SELECT count(*) FROM t").route,
        Route::Write,
        "no catalog yet: fail closed"
    );
    let row = |schema: &str, name: &str, user_defined: bool, volatile: bool| FunctionRow {
        schema: schema.into(),
        name: name.into(),
        user_defined,
        volatile,
    };
    c.set_catalog(FunctionCatalog::new([
        row("pg_catalog", "count", false, false),
        row("public", "record_visit", true, true),
        row("public", "pure", true, false),
    ]));
    assert_eq!(c.classify("SELECT count(*) FROM t").route, Route::Read);
    assert_eq!(c.classify("SELECT pure(1)").route, Route::Read);
    assert_eq!(c.classify("SELECT record_visit('x')").route, Route::Write);
    assert_eq!(
        c.classify("SELECT public.\"record_visit\"('x')").route,
        Route::Write
    );
    assert_eq!(c.classify("SELECT unheard_of(1)").route, Route::Write);
    assert!(c.met_unknown_function());
    assert_eq!(c.classify("SELECT billing.charge(1)").route, Route::Write);
    assert_eq!(
        c.classify("SELECT COALESCE(1, 2), CURRENT_TIMESTAMP").route,
        Route::Read
    );
}

#[test]
fn texts_that_differ_in_literals_share_a_cache_entry() {
    let c = Classifier::new(&[]);
    c.classify("SELECT * FROM t WHERE id = 17");
    c.classify("SELECT * FROM t WHERE id = 18");
    assert_eq!(c.cache.read().map(|m| m.len()).unwrap_or(0), 1);
}

#[test]
fn a_per_request_floor_in_a_leading_comment_does_not_make_a_new_cache_entry() {
    let c = Classifier::new(&[]);
    let plain = c.classify("SELECT * FROM t WHERE id = 17");
    for lsn in ["0/16B6C50", "0/16B6C58", "1/0"] {
        let hinted = c.classify(&format!(
            "/* pgsplit:min_lsn={lsn} */ SELECT * FROM t WHERE id = 17"
        ));
        assert_eq!(hinted, plain);
        let routed = c.classify(&format!(
            "/* pgsplit:primary, pgsplit:min_lsn={lsn} */ SELECT * FROM t WHERE id = 18"
        ));
        assert_eq!(routed.route, Route::Write);
    }
    assert_eq!(c.cache.read().map(|m| m.len()).unwrap_or(0), 1);
    // An unclosed comment keys only itself.
    c.classify("/* SELECT * FROM t WHERE id = 17");
    assert_eq!(c.cache.read().map(|m| m.len()).unwrap_or(0), 1);
}

#[test]
fn cache_gives_same_answer() {
    let c = Classifier::new(&[]);
    let a = c.classify("SELECT * FROM t WHERE id = 1");
    let b = c.classify("SELECT * FROM t WHERE id = 1");
    assert_eq!(a, b);
    assert_eq!(a.route, Route::Read);
}
