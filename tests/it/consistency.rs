//! Read-your-writes (issue 14): the drills. A client that writes and then reads must see its write (`consistency
//! = "session"`, the default) while most such reads still run on replicas; `"eventual"` is the old behaviour, and
//! the same drill run in it finds stale reads, which proves the drill can see them. Session pooling, where a
//! client keeps its replica connection, must not read stale either. The token (`SHOW pgsplit.lsn`,
//! `SET pgsplit.min_lsn`, the startup option and the leading comment) carries a floor to other connections and to
//! another pgsplit in front of the same cluster. A replica whose replay is delayed by 300 ms never serves a read
//! right after a write, and a floor lost in a failover does not stop a session.
//!
//! Tests that only read and write their own rows use the shared cluster (their own pgsplit where they need another
//! configuration); the delayed replica and the failover start their own clusters.
//!
//! Commit mode. The test clusters run with `synchronous_commit = on` (PostgreSQL's default; the drills also ask for
//! it in their startup options). With asynchronous commit a commit reaches the replicas only when the WAL writer
//! flushes it, up to `wal_writer_delay` (200 ms) later: no replica can be caught up within `causal_wait`, so reads
//! right after a write rightly go to the primary; one drill runs so and asserts only that nothing is stale (a
//! floor below an asynchronous commit's LSN would show there).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use pgsplit::proxy::{Proxy, ProxyHandle};
use pgsplit_harness::{Cluster, ClusterOptions};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

/// Iterations of each drill mode.
const N: usize = 1_000;

/// Startup options of the drills' connections: PostgreSQL's default commit mode (see the module comment).
const SYNC_COMMIT: &str = "-c synchronous_commit=on";

/// A fresh row id, unique within this test binary.
fn fresh_id() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A connection through `proxy` as `app`, with `options` as the startup packet's `options`.
async fn connect_opts(proxy: SocketAddr, options: &str) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(proxy.ip().to_string())
        .port(proxy.port())
        .user(APP.0)
        .password(APP.1)
        .dbname("app");
    if !options.is_empty() {
        config.options(options);
    }
    let (client, conn) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through pgsplit with options {options:?}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The first row of a simple-protocol query, as text, with the first column's name.
async fn first_row(c: &Client, sql: &str) -> (Vec<String>, String) {
    let msgs = c.simple_query(sql).await.unwrap_or_else(|e| {
        let detail = e.as_db_error().map_or_else(String::new, |d| {
            format!(": {} {}", d.code().code(), d.message())
        });
        panic!("{sql}: {e}{detail}")
    });
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let values = (0..r.len())
                .map(|i| r.get(i).unwrap_or_default().to_string())
                .collect();
            return (values, r.columns()[0].name().to_string());
        }
    }
    panic!("no row from {sql}");
}

/// An LSN as PostgreSQL prints it (`16/B374D848`), as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    assert!(hi <= u32::MAX as u64 && lo <= u32::MAX as u64, "{text}");
    (hi << 32) | lo
}

/// `SHOW pgsplit.lsn`: the session's floor, checked to be one text column named `pgsplit.lsn` holding an LSN.
async fn show_lsn(c: &Client) -> String {
    let (values, column) = first_row(c, "SHOW pgsplit.lsn").await;
    assert_eq!(column, "pgsplit.lsn");
    assert_eq!(values.len(), 1, "{values:?}");
    lsn(&values[0]);
    values[0].clone()
}

/// The drill's table, created once per cluster through pgsplit and replayed everywhere before use.
async fn create_table(cluster: &Cluster, proxy: SocketAddr) {
    let c = connect_to(proxy, APP).await.expect("connect");
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS ryw (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    )
    .await
    .expect("create the drill's table");
    for r in cluster.replicas() {
        cluster
            .wait_replayed(&r.name, Duration::from_secs(30))
            .expect("replicated");
    }
}

/// The shared cluster's table, created on first use.
async fn shared_table() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| create_table(&env().cluster, env().proxy))
        .await;
}

/// How a drill writes, then reads its row back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `INSERT`, then `SELECT`, each its own statement outside a transaction (simple protocol).
    AutocommitSimple,
    /// The same with prepared statements (extended protocol).
    AutocommitExtended,
    /// `BEGIN`, `INSERT` (extended), `COMMIT`, then a read outside a transaction (extended).
    TxnThenRead,
    /// `BEGIN`, `INSERT`, `COMMIT`, then `BEGIN READ ONLY`, the read, `COMMIT` (simple).
    TxnThenReadOnlyTxn,
}

const MODES: [Mode; 4] = [
    Mode::AutocommitSimple,
    Mode::AutocommitExtended,
    Mode::TxnThenRead,
    Mode::TxnThenReadOnlyTxn,
];

/// What a drill saw.
#[derive(Debug, Default)]
struct Outcome {
    reads: usize,
    /// Reads that did not find the row just written.
    stale: usize,
    /// Reads per server port.
    ports: BTreeMap<u16, usize>,
}

impl Outcome {
    fn on(&self, ports: &[u16]) -> usize {
        ports.iter().filter_map(|p| self.ports.get(p)).sum()
    }
}

const SELECT_SIMPLE: &str = "SELECT count(*), inet_server_port() FROM ryw WHERE id = ";
const INSERT_TEXT: &str = "INSERT INTO ryw (id) VALUES ($1)";
const SELECT_TEXT: &str = "SELECT count(*), inet_server_port() FROM ryw WHERE id = $1";

/// One connection, `n` times: write a row with a fresh id, then read it back, the way `mode` says.
async fn drill(c: &Client, mode: Mode, n: usize) -> Outcome {
    let insert: Statement = c.prepare(INSERT_TEXT).await.expect("prepare insert");
    let select: Statement = c.prepare(SELECT_TEXT).await.expect("prepare select");
    let mut out = Outcome::default();
    for _ in 0..n {
        let id = fresh_id();
        let (count, port): (i64, i32) = match mode {
            Mode::AutocommitSimple => {
                c.batch_execute(&format!("INSERT INTO ryw (id) VALUES ({id})"))
                    .await
                    .expect("insert");
                simple_read(c, id).await
            }
            Mode::AutocommitExtended => {
                c.execute(&insert, &[&id]).await.expect("insert");
                extended_read(c, &select, id).await
            }
            Mode::TxnThenRead => {
                c.batch_execute("BEGIN").await.expect("begin");
                c.execute(&insert, &[&id]).await.expect("insert");
                c.batch_execute("COMMIT").await.expect("commit");
                extended_read(c, &select, id).await
            }
            Mode::TxnThenReadOnlyTxn => {
                c.batch_execute("BEGIN").await.expect("begin");
                c.batch_execute(&format!("INSERT INTO ryw (id) VALUES ({id})"))
                    .await
                    .expect("insert");
                c.batch_execute("COMMIT").await.expect("commit");
                c.batch_execute("BEGIN READ ONLY")
                    .await
                    .expect("begin read only");
                let read = simple_read(c, id).await;
                c.batch_execute("COMMIT").await.expect("commit");
                read
            }
        };
        out.reads += 1;
        if count == 0 {
            out.stale += 1;
        }
        *out.ports.entry(port as u16).or_default() += 1;
    }
    out
}

async fn simple_read(c: &Client, id: i64) -> (i64, i32) {
    let (values, _) = first_row(c, &format!("{SELECT_SIMPLE}{id}")).await;
    (
        values[0].parse().expect("count"),
        values[1].parse().expect("port"),
    )
}

async fn extended_read(c: &Client, select: &Statement, id: i64) -> (i64, i32) {
    let row = c.query_one(select, &[&id]).await.expect("read");
    (row.get(0), row.get(1))
}

/// Runs `modes` on one new connection each through `proxy`; prints and returns what each saw.
async fn drills(
    proxy: SocketAddr,
    options: &str,
    modes: &[Mode],
    n: usize,
    what: &str,
) -> Vec<(Mode, Outcome)> {
    let mut all = Vec::new();
    for &mode in modes {
        let c = connect_opts(proxy, options).await;
        let started = Instant::now();
        let out = drill(&c, mode, n).await;
        eprintln!(
            "{what}, {mode:?}: {} stale of {} reads, reads per port {:?}, {:?}",
            out.stale,
            out.reads,
            out.ports,
            started.elapsed()
        );
        all.push((mode, out));
    }
    all
}

/// Asserts that no read was stale and that more than half of each mode's reads ran on `replicas`.
fn assert_fresh_and_mostly_on_replicas(outcomes: &[(Mode, Outcome)], replicas: &[u16]) {
    for (mode, out) in outcomes {
        assert_eq!(
            out.stale, 0,
            "{mode:?}: stale reads in session mode: {out:?}"
        );
        let on_replicas = out.on(replicas);
        assert!(
            on_replicas * 2 > out.reads,
            "{mode:?}: only {on_replicas} of {} reads ran on a replica ({replicas:?}): {out:?}",
            out.reads
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// (a), (b): one connection writes, then reads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_right_after_writes_on_one_connection_are_never_stale_and_mostly_run_on_replicas() {
    shared_table().await;
    let outcomes = drills(
        env().proxy,
        SYNC_COMMIT,
        &[Mode::AutocommitSimple, Mode::AutocommitExtended],
        N,
        "session mode (default)",
    )
    .await;
    assert_fresh_and_mostly_on_replicas(&outcomes, &replica_ports());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_write_transaction_are_never_stale_and_mostly_run_on_replicas() {
    shared_table().await;
    let outcomes = drills(
        env().proxy,
        SYNC_COMMIT,
        &[Mode::TxnThenRead, Mode::TxnThenReadOnlyTxn],
        N,
        "session mode (default)",
    )
    .await;
    assert_fresh_and_mostly_on_replicas(&outcomes, &replica_ports());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_asynchronous_commit_reads_right_after_writes_are_still_never_stale() {
    shared_table().await;
    // Asynchronous commit: the floor must be at or past the commit record even before the WAL writer has written
    // it. The default `causal_wait` (20 ms) and fewer rounds: most reads wait that long, then go to the primary.
    let proxy = spawn_proxy(config(
        &env().cluster,
        8,
        8,
        "[routing]\nbalancer = \"round_robin\"\ncausal_wait = \"20ms\"",
    ));
    let outcomes = drills(
        proxy,
        "-c synchronous_commit=off",
        &[Mode::AutocommitSimple, Mode::TxnThenReadOnlyTxn],
        150,
        "session mode, asynchronous commit",
    )
    .await;
    for (mode, out) in &outcomes {
        assert_eq!(out.stale, 0, "{mode:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_session_pooling_reads_right_after_writes_are_never_stale() {
    // A client that keeps its server connections (one on the primary, one on a replica) must not read from its
    // replica connection before that replica has replayed the client's write.
    shared_table().await;
    let proxy = spawn_proxy(config(
        &env().cluster,
        8,
        8,
        "pool_mode = \"session\"\n[routing]\nbalancer = \"round_robin\"",
    ));
    let outcomes = drills(
        proxy,
        SYNC_COMMIT,
        &[Mode::AutocommitSimple, Mode::TxnThenReadOnlyTxn],
        N,
        "session mode, session pooling",
    )
    .await;
    for (mode, out) in &outcomes {
        assert_eq!(out.stale, 0, "{mode:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_eventual_mode_the_same_drill_finds_stale_reads() {
    shared_table().await;
    let eventual = spawn_proxy(config(
        &env().cluster,
        8,
        8,
        "[routing]\nbalancer = \"round_robin\"\nconsistency = \"eventual\"",
    ));
    let outcomes = drills(eventual, SYNC_COMMIT, &MODES, N, "eventual mode").await;
    for (mode, out) in &outcomes {
        assert!(
            out.stale > 0,
            "{mode:?}: the drill found no stale read in eventual mode, so it cannot see them: {out:?}"
        );
        // Stale reads can only come from replicas.
        assert!(out.on(&replica_ports()) >= out.stale, "{mode:?}: {out:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// (c) The token.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_show_pgsplit_lsn_lets_other_connections_and_another_pgsplit_read_the_write() {
    shared_table().await;
    // A second pgsplit in front of the same cluster: it knows nothing of the first one's sessions.
    let other = spawn_proxy(config(
        &env().cluster,
        4,
        4,
        "[routing]\nbalancer = \"round_robin\"",
    ));
    let a = connect_opts(env().proxy, SYNC_COMMIT).await;
    let b = connect_opts(env().proxy, "").await;
    let b2 = connect_opts(other, "").await;
    assert_eq!(
        show_lsn(&b).await,
        "0/0",
        "a session that has not written has no floor"
    );
    let select = b.prepare(SELECT_TEXT).await.expect("prepare");
    let (primary, conn) =
        tokio_postgres::connect(&env().cluster.url("primary", "postgres", "app"), NoTls)
            .await
            .expect("connect to the primary");
    tokio::spawn(conn);
    let (mut stale_b, mut stale_b2, mut on_replicas) = (0, 0, 0);
    let mut last = 0;
    let replicas = replica_ports();
    let rounds = 300;
    for i in 0..rounds {
        let id = fresh_id();
        let before: String = primary
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("primary LSN")
            .get(0);
        a.batch_execute(&format!("INSERT INTO ryw (id) VALUES ({id})"))
            .await
            .expect("insert");
        let token = show_lsn(&a).await;
        assert!(
            lsn(&token) > lsn(&before),
            "SHOW pgsplit.lsn after a write ({token}) is not past the primary's LSN before it ({before})"
        );
        assert!(lsn(&token) >= last, "the floor went down: {token}");
        last = lsn(&token);

        // B, on the same pgsplit, extended protocol for the read.
        b.batch_execute(&format!("SET pgsplit.min_lsn TO '{token}'"))
            .await
            .expect("SET pgsplit.min_lsn");
        let (count, port) = extended_read(&b, &select, id).await;
        stale_b += usize::from(count == 0);
        on_replicas += usize::from(replicas.contains(&(port as u16)));
        if i == 0 {
            assert_eq!(
                lsn(&show_lsn(&b).await),
                lsn(&token),
                "SET pgsplit.min_lsn raises the floor SHOW pgsplit.lsn reports"
            );
        }

        // B2, through the other pgsplit, simple protocol, `=` instead of TO.
        b2.batch_execute(&format!("SET pgsplit.min_lsn = '{token}'"))
            .await
            .expect("SET pgsplit.min_lsn through the other pgsplit");
        let (count, _) = simple_read(&b2, id).await;
        stale_b2 += usize::from(count == 0);
    }
    // The floor is never lowered.
    b.batch_execute("SET pgsplit.min_lsn TO '0/1'")
        .await
        .expect("a lower token");
    assert_eq!(
        lsn(&show_lsn(&b).await),
        last,
        "a lower token must not lower the floor"
    );
    eprintln!(
        "token: {stale_b} stale reads on the same pgsplit, {stale_b2} through another pgsplit, of {rounds} each; \
         {on_replicas} of B's reads ran on a replica"
    );
    assert_eq!(stale_b, 0, "stale reads with the token on the same pgsplit");
    assert_eq!(
        stale_b2, 0,
        "stale reads with the token through another pgsplit"
    );
}

/// pgx, pdo_pgsql and ORMs prepare writes well before they run them: a Parse (and Describe) of a write runs
/// nothing, so it must not give the session a floor that keeps its reads off replicas that have not caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preparing_a_write_without_running_it_sets_no_floor() {
    shared_table().await;
    let c = connect_opts(env().proxy, SYNC_COMMIT).await;
    let insert = c
        .prepare("INSERT INTO ryw (id) VALUES ($1)")
        .await
        .expect("prepare the INSERT");
    c.prepare("DELETE FROM ryw WHERE id = $1")
        .await
        .expect("prepare a DELETE");
    assert_eq!(
        show_lsn(&c).await,
        "0/0",
        "a prepared but never executed write gave the session a floor"
    );
    c.execute(&insert, &[&fresh_id()]).await.expect("insert");
    assert_ne!(
        show_lsn(&c).await,
        "0/0",
        "executing the prepared write gives the session a floor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_works_as_a_startup_option_and_as_a_leading_comment() {
    shared_table().await;
    let a = connect_opts(env().proxy, SYNC_COMMIT).await;
    let d = connect_opts(env().proxy, "").await;
    let (mut stale_startup, mut stale_comment) = (0, 0);
    let rounds = 100;
    for i in 0..rounds {
        let id = fresh_id();
        a.batch_execute(&format!("INSERT INTO ryw (id) VALUES ({id})"))
            .await
            .expect("insert");
        let token = show_lsn(&a).await;

        // A fresh connection that brings the token in its startup packet.
        let c = connect_opts(env().proxy, &format!("-c pgsplit.min_lsn={token}")).await;
        stale_startup += usize::from(simple_read(&c, id).await.0 == 0);
        if i == 0 {
            assert_eq!(
                lsn(&show_lsn(&c).await),
                lsn(&token),
                "startup token is the floor"
            );
        }
        drop(c);

        // A connection that never set a floor: the comment applies to its statement.
        let hinted = format!("/* pgsplit:min_lsn={token} */ SELECT count(*), inet_server_port() FROM ryw WHERE id = ");
        let count = if i % 2 == 0 {
            first_row(&d, &format!("{hinted}{id}")).await.0[0]
                .parse::<i64>()
                .expect("count")
        } else {
            let row = d
                .query_one(&format!("{hinted}$1"), &[&id])
                .await
                .expect("hinted read");
            row.get::<_, i64>(0)
        };
        stale_comment += usize::from(count == 0);
    }
    eprintln!(
        "token: {stale_startup} stale reads with the startup option, {stale_comment} with the comment, of {rounds} each"
    );
    assert_eq!(
        stale_startup, 0,
        "stale reads with options=-c pgsplit.min_lsn=…"
    );
    assert_eq!(stale_comment, 0, "stale reads with /* pgsplit:min_lsn=… */");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_another_connection_can_read_stale_rows() {
    // The control of the token drills: they can see staleness. Session consistency is per session, so a
    // connection that carries no token may read a replica that has not replayed another's write yet.
    shared_table().await;
    let a = connect_opts(env().proxy, SYNC_COMMIT).await;
    let b = connect_opts(env().proxy, "").await;
    let select = b.prepare(SELECT_TEXT).await.expect("prepare");
    // Each write carries ~256 kB of incompressible WAL before its commit record, so a replica replays it a
    // little after the primary acknowledges it even on an idle machine (without it, loopback replication is
    // often faster than the next read, and the control sees nothing).
    a.batch_execute(
        "CREATE TABLE IF NOT EXISTS ryw_pad (t text); \
         ALTER TABLE ryw_pad ALTER COLUMN t SET STORAGE EXTERNAL",
    )
    .await
    .expect("pad table");
    let mut stale = 0;
    let rounds = 100;
    for _ in 0..rounds {
        let id = fresh_id();
        a.batch_execute(&format!(
            "BEGIN; \
             INSERT INTO ryw_pad SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 8000); \
             INSERT INTO ryw (id) VALUES ({id}); COMMIT"
        ))
        .await
        .expect("insert");
        stale += usize::from(extended_read(&b, &select, id).await.0 == 0);
    }
    a.batch_execute("TRUNCATE ryw_pad").await.expect("truncate");
    eprintln!("no token: {stale} stale reads of {rounds}");
    assert!(stale > 0, "the token drill cannot see stale reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_strict_mode_another_connection_reads_every_write_committed_before_its_read() {
    // The same two connections as the control above, B through a pgsplit in strict mode: its reads see every
    // write committed before they began, with no token, and still run on replicas.
    shared_table().await;
    let strict = spawn_proxy(config(
        &env().cluster,
        8,
        8,
        "[routing]\nbalancer = \"round_robin\"\nconsistency = \"strict\"",
    ));
    let a = connect_opts(env().proxy, SYNC_COMMIT).await;
    let b = connect_opts(strict, "").await;
    let select = b.prepare(SELECT_TEXT).await.expect("prepare");
    let (mut stale, mut on_replica) = (0, 0);
    let rounds = 300;
    let replicas = replica_ports();
    for _ in 0..rounds {
        let id = fresh_id();
        a.batch_execute(&format!("INSERT INTO ryw (id) VALUES ({id})"))
            .await
            .expect("insert");
        let (found, port) = extended_read(&b, &select, id).await;
        stale += usize::from(found == 0);
        on_replica += usize::from(u16::try_from(port).is_ok_and(|p| replicas.contains(&p)));
    }
    eprintln!("strict: {stale} stale reads of {rounds}, {on_replica} on replicas");
    assert_eq!(stale, 0, "strict mode read a stale row");
    assert!(
        on_replica * 2 > rounds,
        "most strict reads run on replicas: {on_replica} of {rounds}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// (d), (e): their own clusters.

/// Runs `f` (which blocks: it runs PostgreSQL's programs and polls) off the runtime's threads.
async fn on_cluster(cluster: &Arc<Cluster>, f: impl FnOnce(&Cluster) + Send + 'static) {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || f(&cluster))
        .await
        .expect("cluster operation");
}

async fn start_proxy(cluster: &Cluster, extra: &str) -> ProxyHandle {
    Proxy::bind(config(cluster, 4, 4, extra))
        .await
        .expect("bind")
        .spawn()
        .expect("spawn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_right_after_a_write_never_go_to_a_replica_delayed_by_300ms() {
    let cluster = tokio::task::spawn_blocking(|| {
        start_cluster_with(ClusterOptions {
            replica_conf: [(
                "replica2".to_string(),
                vec!["recovery_min_apply_delay = '300ms'".to_string()],
            )]
            .into(),
            ..ClusterOptions::default()
        })
    })
    .await
    .expect("cluster");
    // A wait shorter than the delay: the delayed replica can never catch up with a floor while a read waits (with
    // the tests' usual 2 s it could, and serving the read there would then be right, but not what this shows).
    let routing = "[routing]\nbalancer = \"round_robin\"\ncausal_wait = \"100ms\"";
    let session = start_proxy(&cluster, routing).await;
    let eventual = start_proxy(&cluster, &format!("{routing}\nconsistency = \"eventual\"")).await;
    for proxy in [&session, &eventual] {
        let shared = proxy.shared.clone();
        wait_for("both replicas eligible", Duration::from_secs(20), || {
            status(&shared, "replica1").eligible && status(&shared, "replica2").eligible
        })
        .await;
    }
    create_table(&cluster, session.addr).await;
    let (fast, delayed) = (
        cluster.server("replica1").port,
        cluster.server("replica2").port,
    );

    // The delayed replica takes reads from a session with no floor: it is in the rotation.
    let fresh = connect_opts(session.addr, "").await;
    let mut seen = BTreeMap::<u16, usize>::new();
    for _ in 0..20 {
        let (values, _) = first_row(&fresh, "SELECT inet_server_port()").await;
        *seen.entry(values[0].parse().expect("port")).or_default() += 1;
    }
    assert!(
        seen.contains_key(&delayed),
        "reads without a floor skip the delayed replica: {seen:?}"
    );

    let outcomes = drills(
        session.addr,
        SYNC_COMMIT,
        &MODES,
        N,
        "session mode, replica2 delayed 300 ms",
    )
    .await;
    for (mode, out) in &outcomes {
        assert_eq!(out.stale, 0, "{mode:?}: {out:?}");
        assert_eq!(
            out.ports.get(&delayed),
            None,
            "{mode:?}: a read right after a write went to the delayed replica: {out:?}"
        );
        assert!(
            out.on(&[fast]) * 2 > out.reads,
            "{mode:?}: most reads should run on the undelayed replica: {out:?}"
        );
    }

    // The same drill in eventual mode reads stale rows from the delayed replica.
    let outcomes = drills(
        eventual.addr,
        SYNC_COMMIT,
        &[Mode::AutocommitSimple, Mode::AutocommitExtended],
        200,
        "eventual mode, replica2 delayed 300 ms",
    )
    .await;
    for (mode, out) in &outcomes {
        assert!(out.stale > 0, "{mode:?}: {out:?}");
    }

    // `/* pgsplit:max_lag=50ms */` tightens the staleness budget of one statement (no floor: eventual mode, and
    // the writes come from another connection): while the primary keeps writing, the delayed replica is ~300 ms
    // behind and never takes such a read; the same read without the hint does go there.
    let writer = connect_opts(eventual.addr, SYNC_COMMIT).await;
    let reader = connect_opts(eventual.addr, "").await;
    let (mut hinted, mut plain) = (BTreeMap::<u16, usize>::new(), BTreeMap::<u16, usize>::new());
    for i in 0..300 {
        writer
            .batch_execute(&format!("INSERT INTO ryw (id) VALUES ({})", fresh_id()))
            .await
            .expect("write");
        let (sql, seen) = if i % 2 == 0 {
            (
                "/* pgsplit:max_lag=50ms */ SELECT inet_server_port()",
                &mut hinted,
            )
        } else {
            ("SELECT inet_server_port()", &mut plain)
        };
        let (values, _) = first_row(&reader, sql).await;
        *seen.entry(values[0].parse().expect("port")).or_default() += 1;
    }
    eprintln!("max_lag=50ms reads per port {hinted:?}; plain reads per port {plain:?}");
    assert_eq!(
        hinted.get(&delayed),
        None,
        "a read with max_lag=50ms ran on the replica 300 ms behind: {hinted:?}"
    );
    assert!(
        plain.get(&delayed).is_some_and(|&n| n > 0),
        "control: plain reads reach the delayed replica: {plain:?}"
    );
    session.shutdown().await;
    eventual.shutdown().await;
}

/// A cluster of the test's own, a pgsplit with `extra` in front of it once both replicas take reads, the drills'
/// table, and a connection through pgsplit.
async fn own_cluster(extra: &str) -> (Arc<Cluster>, ProxyHandle, Client) {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(start_cluster)
            .await
            .expect("cluster"),
    );
    let proxy = start_proxy(&cluster, extra).await;
    let shared = proxy.shared.clone();
    wait_for("both replicas eligible", Duration::from_secs(20), || {
        status(&shared, "replica1").eligible && status(&shared, "replica2").eligible
    })
    .await;
    create_table(&cluster, proxy.addr).await;
    let c = connect_opts(proxy.addr, SYNC_COMMIT).await;
    (cluster, proxy, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_ahead_of_a_promoted_replica_does_not_stop_the_session() {
    let (cluster, proxy, c) = own_cluster("[lag]\nlag_check_interval = \"250ms\"").await;
    let shared = proxy.shared.clone();

    // Both replicas stop receiving WAL (replica2 first, so replica1 is never behind it and replica2 can follow
    // replica1 later); pausing replay would not do, a promotion replays what was received.
    on_cluster(&cluster, |cluster| {
        for r in ["replica2", "replica1"] {
            cluster
                .set_config(r, "primary_conninfo", Some(""))
                .expect("detach");
            let deadline = Instant::now() + Duration::from_secs(20);
            while cluster
                .psql(r, "SELECT count(*) FROM pg_stat_wal_receiver")
                .expect("wal receiver")
                != "0"
            {
                assert!(Instant::now() < deadline, "{r}'s WAL receiver did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    })
    .await;

    // Writes only the old primary will ever have: the session's floor goes past anything the replicas hold.
    let lost = fresh_id();
    c.batch_execute(
        "INSERT INTO ryw (id) SELECT -g FROM generate_series(1, 20000) g ON CONFLICT DO NOTHING",
    )
    .await
    .expect("a big write");
    c.batch_execute(&format!("INSERT INTO ryw (id) VALUES ({lost})"))
        .await
        .expect("the last write");
    let floor: String = cluster
        .psql("primary", "SELECT pg_current_wal_lsn()")
        .expect("old primary's LSN");

    // The primary dies; replica1 is promoted without those writes; replica2 follows it.
    on_cluster(&cluster, |cluster| {
        cluster.kill("primary").expect("kill primary");
        cluster.promote("replica1").expect("promote");
    })
    .await;
    let promoted: String = cluster
        .psql("replica1", "SELECT pg_current_wal_lsn()")
        .expect("new primary's LSN");
    eprintln!("session floor at least {floor}; the promoted replica is at {promoted}");
    assert!(
        lsn(&promoted) < lsn(&floor),
        "the test needs the floor ahead of the promoted replica ({floor} vs {promoted})"
    );
    wait_for(
        "pgsplit follows the promotion",
        Duration::from_secs(20),
        || shared.router.primary() == Ok(1),
    )
    .await;

    // The session keeps working: reads are answered without an error or a long wait, and writes go on.
    for _ in 0..20 {
        let started = Instant::now();
        let (values, _) = first_row(&c, &format!("{SELECT_SIMPLE}{lost}")).await;
        assert_eq!(values[0], "0", "the lost write is gone");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a read took {:?} after the failover",
            started.elapsed()
        );
    }
    // A write may fail once on a connection to the dead primary (writes are never retried); then it goes on.
    let id = fresh_id();
    let mut tries = 0;
    while let Err(e) = c
        .batch_execute(&format!("INSERT INTO ryw (id) VALUES ({id})"))
        .await
    {
        tries += 1;
        assert!(tries < 3, "writes on the new primary fail: {e}");
    }
    assert_eq!(
        simple_read(&c, id).await.0,
        1,
        "the session reads its new write"
    );

    // Once replica2 follows the new primary, the session's reads reach it again: the floor was capped, the
    // session is not kept on the primary until the new timeline passes the lost LSN.
    on_cluster(&cluster, |cluster| {
        cluster.follow("replica2", "replica1").expect("follow");
    })
    .await;
    wait_for("replica2 eligible", Duration::from_secs(20), || {
        status(&shared, "replica2").eligible
    })
    .await;
    let replica2 = cluster.server("replica2").port;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = BTreeMap::<u16, usize>::new();
    while !seen.contains_key(&replica2) {
        assert!(
            Instant::now() < deadline,
            "the session's reads never reached the replica after the failover: {seen:?}"
        );
        let (values, _) = first_row(&c, "SELECT inet_server_port()").await;
        *seen.entry(values[0].parse().expect("port")).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("reads after the failover, per port: {seen:?}");
    proxy.shutdown().await;
}

/// After a WAL segment switch an idle primary's insert position points past the new segment's page header, where
/// no record ends, and replicas replay only up to the segment's start. A floor taken there must be reached by
/// them: the reads that follow a write which wrote no WAL still run on replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_taken_on_an_idle_primary_after_a_wal_switch_is_reached_by_the_replicas() {
    let (cluster, proxy, c) = own_cluster("[routing]\ncausal_wait = \"1s\"").await;
    for round in 0..3 {
        on_cluster(&cluster, |cluster| {
            // Not `wait_replayed`: it writes WAL, which would move the primary off the page header.
            let switched = cluster
                .psql(
                    "primary",
                    "SELECT pg_switch_wal(); SELECT pg_current_wal_lsn()",
                )
                .expect("pg_switch_wal");
            let end = switched
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            let replayed = format!("SELECT pg_last_wal_replay_lsn() >= '{end}'");
            for r in ["replica1", "replica2"] {
                let deadline = Instant::now() + Duration::from_secs(30);
                while cluster.psql(r, &replayed).expect("replay position") != "t" {
                    assert!(Instant::now() < deadline, "{r} did not replay up to {end}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
        .await;
        // A write that writes no WAL: the client's floor is the primary's position, right after the switch.
        let (at, _) = first_row(
            &c,
            "WITH u AS (UPDATE ryw SET at = now() WHERE false RETURNING 1) \
             SELECT inet_server_port() FROM (SELECT count(*) FROM u) n",
        )
        .await;
        assert_eq!(
            at,
            [cluster.primary().port.to_string()],
            "round {round}: the write"
        );
        let (values, _) = first_row(&c, "SELECT pg_is_in_recovery()").await;
        assert_eq!(
            values,
            ["t"],
            "round {round}: the read after it runs on a replica, which has replayed everything"
        );
    }
    proxy.shutdown().await;
}
