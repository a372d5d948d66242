//! Differential tests: every scenario below runs once directly against PostgreSQL (the primary) and once through
//! pgsplit, over a small raw-protocol client, and the backend messages the client receives are compared.
//!
//! What is compared, and the only differences that are normalized away:
//! - **BackendKeyData**: its values are dropped (pgsplit hands out its own keys).
//! - **ParameterStatus at login**: dropped, except in the `login_parameters` scenario, which compares the sorted
//!   set of (name, value) pairs a client is greeted with. After the first ReadyForQuery, ParameterStatus messages
//!   are compared in place, like any other message.
//! - **ErrorResponse / NoticeResponse**: only the fields severity (`S`, `V`), SQLSTATE (`C`), message (`M`) and
//!   position (`P`) are compared; file, line, routine, detail, hint and context are not.
//! - **RowDescription**: the table OID of a column is compared as zero/non-zero only. Tables are created anew for
//!   each run, so their OIDs differ between the two runs.
//! - **Authentication**: only the request codes (and the SASL mechanism list) are compared, not the SCRAM nonces,
//!   salts or proofs.
//!
//! Scenarios use no values that are specific to a server (ports, backend pids, timestamps). Tables a scenario reads
//! are created directly on the primary as `app` before each run and the test waits until both replicas have
//! replayed them, so a read that pgsplit sends to a replica sees the same data. They are dropped after each run.
//!
//! Logins are as `app` over SCRAM on both sides (the `md5_login` scenario: md5, as `md5user` directly and as
//! `md5client` through pgsplit). Reads written right after a write in the same scenario are avoided or made
//! writes (`DELETE … RETURNING`), so no scenario depends on replication lag and none needs a routing hint.
//!
//! `DIFF_ONLY=<part of a name>` runs only the matching scenarios (and asserts nothing); `DIFF_VERBOSE=1` prints
//! what PostgreSQL sent for each scenario.
//!
//! The test passes when exactly the scenarios of [`KNOWN_DIFFERENCES`] differ. When pgsplit's behaviour changes
//! in either direction the test fails: a fixed scenario must be removed from the list.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::common::wire::*;
use crate::common::*;

/// Scenarios that differ today between PostgreSQL and pgsplit, each with the reason. Remove an entry once pgsplit
/// behaves like PostgreSQL there.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

/// How long a step may wait for its answer by default.
const WAIT: Duration = Duration::from_secs(5);

/// OID of the built-in `int4pl(int4, int4)` (checked against the server at the start of the test).
const INT4PL: u32 = 177;

// ---------------------------------------------------------------------------------------------------------------
// Frontend messages: the builders are `common::wire`'s.

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios.

/// When a step has its answer.
#[derive(Clone, Copy, Debug)]
enum Until {
    /// This many ReadyForQuery messages.
    Ready(usize),
    /// The first message with this tag.
    Tag(u8),
    /// The server closes the connection.
    Closed,
}

#[derive(Clone, Debug)]
enum Step {
    /// Optionally SSLRequest first, then a StartupMessage (`user`, `database`, extra parameters) and the login.
    Login {
        ssl: bool,
        version: u32,
        params: Vec<(&'static str, Vec<u8>)>,
    },
    /// Send the bytes, then read until the condition (or close, or `wait`); with no condition, read for `wait`.
    Send {
        bytes: Vec<u8>,
        until: Option<Until>,
        wait: Duration,
    },
    /// Read whatever arrives for this long.
    Sleep(Duration),
}

struct Scenario {
    name: &'static str,
    /// SQL run directly on the primary as `app` before each run; both replicas replay it before the run starts.
    setup: String,
    /// SQL run directly on the primary as `app` before the setup and after each run.
    cleanup: String,
    /// Compare the login's ParameterStatus set.
    login_params: bool,
    /// Log in with md5: directly as `md5user`, through pgsplit as `md5client` (whose server user is `md5user`).
    md5: bool,
    steps: Vec<Step>,
}

impl Scenario {
    /// A scenario that starts with an ordinary login.
    fn new(name: &'static str) -> Self {
        Self::raw(name).login(&[])
    }

    /// A scenario with no login: its steps start on a bare connection.
    fn raw(name: &'static str) -> Self {
        Self {
            name,
            setup: String::new(),
            cleanup: String::new(),
            login_params: false,
            md5: false,
            steps: Vec::new(),
        }
    }

    /// Tables `diff_<...>` this scenario uses: created by `setup`, dropped before and after.
    fn table(mut self, name: &str, setup: &str) -> Self {
        self.cleanup
            .push_str(&format!("DROP TABLE IF EXISTS {name};"));
        self.setup.push_str(setup);
        self.setup.push(';');
        self
    }

    /// A table the scenario itself creates: only dropped before and after.
    fn drops(mut self, name: &str) -> Self {
        self.cleanup
            .push_str(&format!("DROP TABLE IF EXISTS {name};"));
        self
    }

    fn login(mut self, params: &[(&'static str, &[u8])]) -> Self {
        self.steps.push(Step::Login {
            ssl: false,
            version: V3,
            params: params.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
        });
        self
    }

    /// Replaces the login step.
    fn with_login(mut self, ssl: bool, version: u32, params: &[(&'static str, &[u8])]) -> Self {
        self.steps.retain(|s| !matches!(s, Step::Login { .. }));
        self.steps.insert(
            0,
            Step::Login {
                ssl,
                version,
                params: params.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
            },
        );
        self
    }

    fn md5(mut self) -> Self {
        self.md5 = true;
        self
    }

    fn compare_login_params(mut self) -> Self {
        self.login_params = true;
        self
    }

    /// A simple Query, answered by one ReadyForQuery.
    fn q(self, sql: impl AsRef<[u8]>) -> Self {
        self.send(query(sql), Until::Ready(1))
    }

    /// Messages answered by `n` ReadyForQuery.
    fn batch(self, parts: &[Vec<u8>], n: usize) -> Self {
        self.send(cat(parts), Until::Ready(n))
    }

    fn send(self, bytes: Vec<u8>, until: Until) -> Self {
        self.send_wait(bytes, until, WAIT)
    }

    fn send_wait(mut self, bytes: Vec<u8>, until: Until, wait: Duration) -> Self {
        self.steps.push(Step::Send {
            bytes,
            until: Some(until),
            wait,
        });
        self
    }

    /// Send the bytes and read whatever arrives for `ms`.
    fn push(mut self, bytes: Vec<u8>, ms: u64) -> Self {
        self.steps.push(Step::Send {
            bytes,
            until: None,
            wait: Duration::from_millis(ms),
        });
        self
    }

    fn sleep(mut self, ms: u64) -> Self {
        self.steps.push(Step::Sleep(Duration::from_millis(ms)));
        self
    }
}

fn scenarios() -> Vec<Scenario> {
    let latin1: &[(&str, &[u8])] = &[("client_encoding", b"LATIN1")];
    let sjis: &[(&str, &[u8])] = &[("client_encoding", b"SJIS")];
    let big_sql = format!("SELECT length('{}') AS n", "x".repeat(300_000));
    let big_param = vec![b'y'; 4 << 20];
    vec![
        Scenario::new("login_parameters").compare_login_params(),
        Scenario::new("md5_login")
            .md5()
            .q("SELECT current_user::text AS u, session_user::text AS s"),
        Scenario::new("simple_select").q("SELECT 1 AS a, 'x'::text AS b, NULL::int AS c"),
        Scenario::new("simple_multi_statement")
            .q("SELECT 1 AS a; SELECT 2 AS b, 3 AS c; VALUES (4), (5)")
            .q("SELECT 1; ; SELECT 2"),
        Scenario::new("simple_error_mid_string")
            .table("diff_mid", "CREATE TABLE diff_mid (a int)")
            .q("SELECT 1; SELECT 1/0; SELECT 3")
            .q("INSERT INTO diff_mid VALUES (1); SELECT * FROM diff_nosuch; INSERT INTO diff_mid VALUES (2)")
            // The failed string was one implicit transaction: nothing was inserted, on the primary or anywhere.
            .q("SELECT count(*) FROM diff_mid")
            .q("SELECT 1; SELEC 2; SELECT 3"),
        Scenario::new("error_position").q("SELECT diff_nosuch_col FROM (SELECT 1) s"),
        Scenario::new("empty_query")
            .q("")
            .q(";")
            .q("  -- only a comment")
            .batch(&[parse("", "", &[]), bind("", "", &[]), execute("", 0), sync()], 1),
        Scenario::new("notice_and_warning")
            .q("DO $$BEGIN RAISE NOTICE 'hello %', 1; END$$")
            .q("ROLLBACK")
            .q("COMMIT"),
        Scenario::new("ext_unnamed").batch(
            &[
                parse("", "SELECT $1::int4 + 1 AS n, $2::text AS t", &[]),
                bind("", "", &[Some(b"41"), None]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ],
            1,
        ),
        Scenario::new("ext_named_describe")
            .batch(
                &[
                    parse("s1", "SELECT $1::text AS t, 2 AS n", &[]),
                    describe(b'S', "s1"),
                    sync(),
                ],
                1,
            )
            .batch(
                &[
                    bind("", "s1", &[Some(b"hello")]),
                    describe(b'P', ""),
                    execute("", 0),
                    sync(),
                ],
                1,
            )
            .batch(&[bind("p", "s1", &[Some(b"again")]), execute("p", 0), sync()], 1)
            .batch(&[parse("s2", "SET application_name = 'x'", &[]), describe(b'S', "s2"), sync()], 1)
            .batch(&[parse("s3", "SELECT $1 AS untyped", &[]), describe(b'S', "s3"), sync()], 1)
            .batch(&[close(b'S', "s1"), sync()], 1)
            .batch(&[bind("", "s1", &[Some(b"gone")]), execute("", 0), sync()], 1)
            .batch(&[describe(b'S', "s1"), sync()], 1),
        Scenario::new("ext_portal_row_limit")
            .batch(
                &[
                    parse("", "SELECT generate_series(1, 5) AS g", &[]),
                    bind("", "", &[]),
                    execute("", 2),
                    execute("", 2),
                    execute("", 2),
                    execute("", 2),
                    sync(),
                ],
                1,
            )
            .send(
                cat(&[
                    parse("lim", "SELECT generate_series(1, 3) AS g", &[]),
                    bind("", "lim", &[]),
                    execute("", 1),
                    flush(),
                ]),
                Until::Tag(b's'),
            )
            .batch(&[execute("", 1), sync()], 1)
            .q("BEGIN")
            .batch(&[bind("cur", "lim", &[]), execute("cur", 2), sync()], 1)
            .batch(&[execute("cur", 2), sync()], 1)
            .batch(&[close(b'P', "cur"), sync()], 1)
            .batch(&[execute("cur", 2), sync()], 1)
            .q("COMMIT"),
        Scenario::new("ext_error_skips_rest_of_pipeline")
            .batch(
                &[
                    parse("", "SELECT 1 AS one", &[]),
                    bind("", "", &[]),
                    execute("", 0),
                    parse("", "SELECT diff_nosuch_col", &[]),
                    bind("", "", &[]),
                    execute("", 0),
                    parse("", "SELECT 3 AS three", &[]),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                1,
            )
            .batch(
                &[
                    parse("", "SELECT 1/$1::int AS q", &[]),
                    bind("", "", &[Some(b"0")]),
                    execute("", 0),
                    bind("", "", &[Some(b"1")]),
                    execute("", 0),
                    sync(),
                ],
                1,
            ),
        Scenario::new("ext_pipeline_of_syncs").batch(
            &[
                parse("", "SELECT 1 AS a", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                parse("", "SELECT 1/0", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                parse("", "SELECT 3 AS c", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                sync(),
            ],
            4,
        ),
        Scenario::new("named_parse_fails_then_table_created")
            .drops("diff_retry")
            .batch(&[parse("ins", "INSERT INTO diff_retry VALUES ($1::int)", &[]), sync()], 1)
            .q("CREATE TABLE diff_retry (a int)")
            .batch(&[parse("ins", "INSERT INTO diff_retry VALUES ($1::int)", &[]), sync()], 1)
            .batch(&[bind("", "ins", &[Some(b"7")]), execute("", 0), sync()], 1)
            .q("DELETE FROM diff_retry RETURNING a"),
        Scenario::new("duplicate_named_parse")
            .batch(&[parse("dup", "SELECT 1", &[]), sync()], 1)
            .batch(&[parse("dup", "SELECT 2", &[]), sync()], 1)
            .batch(&[parse("twice", "SELECT 1", &[]), parse("twice", "SELECT 2", &[]), sync()], 1)
            .batch(&[bind("", "dup", &[]), execute("", 0), sync()], 1),
        Scenario::new("close_unknown")
            .batch(&[close(b'S', "diff_nosuch"), sync()], 1)
            .batch(&[close(b'P', "diff_nosuch"), sync()], 1)
            .batch(&[describe(b'S', "diff_nosuch"), sync()], 1)
            .batch(&[describe(b'P', "diff_nosuch"), sync()], 1)
            .batch(&[bind("", "diff_nosuch", &[]), sync()], 1),
        // pdo_pgsql destroys each statement with SQL `DEALLOCATE name`, whatever the transaction's state.
        Scenario::new("deallocate_protocol_statements")
            .drops("diff_dealloc")
            .q("CREATE TABLE diff_dealloc (a int)")
            .batch(&[parse("pdo_stmt_1", "SELECT 1 AS a", &[]), sync()], 1)
            .batch(&[bind("", "pdo_stmt_1", &[]), execute("", 0), sync()], 1)
            .q("DEALLOCATE pdo_stmt_1")
            .batch(&[bind("", "pdo_stmt_1", &[]), sync()], 1)
            .q("DEALLOCATE pdo_stmt_1")
            .batch(&[parse("Q", "SELECT 2 AS b", &[]), sync()], 1)
            .q("deallocate prepare \"Q\";")
            .batch(&[parse("pdo_stmt_1", "SELECT 3 AS c", &[]), bind("", "pdo_stmt_1", &[]), execute("", 0), sync()], 1)
            .q("BEGIN")
            .q("INSERT INTO diff_dealloc VALUES (1)")
            .batch(&[parse("pdo_stmt_2", "SELECT count(*) FROM diff_dealloc", &[]), bind("", "pdo_stmt_2", &[]), execute("", 0), sync()], 1)
            .q("DEALLOCATE pdo_stmt_2")
            .q("DEALLOCATE pdo_stmt_1")
            .q("INSERT INTO diff_dealloc VALUES (2)")
            .batch(&[parse("pdo_stmt_3", "SELECT 1/0", &[]), bind("", "pdo_stmt_3", &[]), execute("", 0), sync()], 1)
            .q("DEALLOCATE pdo_stmt_3")
            .q("ROLLBACK")
            .q("DEALLOCATE pdo_stmt_3")
            // Behind a batch still in flight: answered after it.
            .batch(
                &[
                    parse("pdo_stmt_4", "SELECT 4 AS d", &[]),
                    bind("", "pdo_stmt_4", &[]),
                    execute("", 0),
                    sync(),
                    query("DEALLOCATE pdo_stmt_4"),
                    query("DEALLOCATE pdo_stmt_4"),
                ],
                3,
            )
            // Inside an unsynced batch (no driver does this; PostgreSQL answers it in order).
            .batch(
                &[
                    parse("pdo_stmt_5", "SELECT 5 AS e", &[]),
                    bind("", "pdo_stmt_5", &[]),
                    execute("", 0),
                    query("DEALLOCATE pdo_stmt_5"),
                    sync(),
                ],
                2,
            )
            .q("DELETE FROM diff_dealloc RETURNING a"),
        // A statement prepared as a transaction's first statement, used again after the transaction.
        Scenario::new("prepared_in_transaction_used_after")
            .q("BEGIN")
            .batch(&[parse("inside", "SELECT 1 AS a", &[]), sync()], 1)
            .batch(&[bind("", "inside", &[]), execute("", 0), sync()], 1)
            .q("COMMIT")
            .batch(&[bind("", "inside", &[]), execute("", 0), sync()], 1)
            .q("SELECT 2 AS b"),
        Scenario::new("sync_and_flush_alone")
            .batch(&[sync()], 1)
            .push(flush(), 300)
            .batch(&[sync(), sync()], 2),
        Scenario::new("transaction_error_and_rollback")
            .q("BEGIN")
            .q("SELECT 1 AS a")
            .q("SELECT 1/0")
            .q("SELECT 1")
            .batch(&[parse("", "SELECT 2", &[]), bind("", "", &[]), execute("", 0), sync()], 1)
            .q("ROLLBACK")
            .q("SELECT 2 AS b")
            .q("BEGIN")
            .q("SELECT 1/0")
            .q("COMMIT")
            .q("BEGIN; SELECT 1/0; COMMIT")
            .q("ROLLBACK")
            .q("BEGIN")
            .q("SAVEPOINT s")
            .q("SELECT 1/0")
            .q("ROLLBACK TO SAVEPOINT s")
            .q("SELECT 3 AS c")
            .q("COMMIT"),
        Scenario::new("begin_deferred")
            .q("BEGIN DEFERRED")
            .q("SELECT 1 AS a")
            .q("ROLLBACK"),
        Scenario::new("begin_serializable_then_read_only")
            .q("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .q("SET TRANSACTION READ ONLY")
            .q("SELECT 1 AS a")
            .q("SHOW transaction_isolation")
            .q("COMMIT")
            .q("BEGIN ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY")
            .q("SHOW transaction_read_only")
            .q("COMMIT"),
        Scenario::new("begin_read_only_then_write")
            .table("diff_ro", "CREATE TABLE diff_ro (a int)")
            .q("BEGIN READ ONLY")
            .q("SELECT count(*) FROM diff_ro")
            .q("INSERT INTO diff_ro VALUES (1)")
            .q("ROLLBACK")
            .q("START TRANSACTION READ ONLY")
            .q("INSERT INTO diff_ro VALUES (1)")
            .q("COMMIT"),
        Scenario::new("copy_to_stdout")
            .table(
                "diff_cout",
                "CREATE TABLE diff_cout (a int, b text); INSERT INTO diff_cout VALUES (1, 'x'), (2, NULL)",
            )
            .q("COPY diff_cout TO STDOUT")
            .q("COPY (SELECT * FROM diff_cout ORDER BY a) TO STDOUT WITH (FORMAT csv, HEADER)")
            .q("COPY diff_nosuch TO STDOUT"),
        Scenario::new("copy_from_stdin")
            .table("diff_cin", "CREATE TABLE diff_cin (a int)")
            .send(query("COPY diff_cin FROM STDIN"), Until::Tag(b'G'))
            .batch(&[copy_data(b"1\n2\n"), copy_data(b"3\n"), copy_done()], 1)
            // A write: it runs on the primary, which has the rows just copied.
            .q("DELETE FROM diff_cin RETURNING a")
            .send(query("COPY diff_cin FROM STDIN"), Until::Tag(b'G'))
            .batch(&[copy_data(b"4\n"), copy_fail("client gave up")], 1)
            .send(query("COPY diff_cin FROM STDIN"), Until::Tag(b'G'))
            .batch(&[copy_data(b"not a number\n"), copy_done()], 1)
            .q("DELETE FROM diff_cin RETURNING a"),
        Scenario::new("large_simple_query").send_wait(
            query(big_sql),
            Until::Ready(1),
            Duration::from_secs(10),
        ),
        Scenario::new("large_bind_parameter").send_wait(
            cat(&[
                parse("", "SELECT length($1::text) AS n", &[]),
                bind("", "", &[Some(&big_param)]),
                execute("", 0),
                sync(),
            ]),
            Until::Ready(1),
            Duration::from_secs(10),
        ),
        Scenario::new("latin1_simple_query")
            .with_login(false, V3, latin1)
            .q(b"SELECT '\xe9t\xe9' AS e, length('\xe9t\xe9') AS n".as_slice())
            .q("SHOW client_encoding"),
        Scenario::new("latin1_parse")
            .with_login(false, V3, latin1)
            .batch(
                &[
                    parse("l1", b"SELECT '\xe9' || $1::text AS e".as_slice(), &[]),
                    bind("", "l1", &[Some(b"\xe9")]),
                    execute("", 0),
                    sync(),
                ],
                1,
            ),
        Scenario::new("sjis_simple_query")
            .with_login(false, V3, sjis)
            // 0x83 0x5C is the katakana "so" in SJIS; its second byte is a backslash in ASCII.
            .q(b"SELECT '\x83\x5c' AS s, length('\x83\x5c') AS n".as_slice()),
        Scenario::new("sjis_escape_string_then_statement")
            .with_login(false, V3, sjis)
            // Read byte by byte as ASCII, the backslash would escape the closing quote of E'...'.
            .q(b"SELECT E'\x83\x5c' AS e; SELECT 2 AS two".as_slice()),
        Scenario::new("sjis_parse")
            .with_login(false, V3, sjis)
            .batch(
                &[
                    parse("", b"SELECT '\x83\x5c' || $1::text AS s".as_slice(), &[]),
                    bind("", "", &[Some(b"\x83\x5c")]),
                    execute("", 0),
                    sync(),
                ],
                1,
            ),
        Scenario::new("set_client_encoding_in_session")
            .q("SET client_encoding TO 'LATIN1'")
            .q(b"SELECT '\xe9' AS e".as_slice())
            .q("RESET client_encoding")
            .q("SELECT 'é' AS e"),
        Scenario::raw("startup_terminate_first").send(b"X\0\0\0\x04".to_vec(), Until::Closed),
        Scenario::raw("startup_connect_close").send(Vec::new(), Until::Closed),
        Scenario::raw("startup_protocol_2").send(
            startup(0x0002_0000, &[("user", b"app"), ("database", b"app")]),
            Until::Closed,
        ),
        Scenario::raw("startup_protocol_4").send(
            startup(0x0004_0000, &[("user", b"app"), ("database", b"app")]),
            Until::Closed,
        ),
        Scenario::new("startup_protocol_3_1")
            .with_login(false, 0x0003_0001, &[("_pq_.diff_option", b"on")])
            .q("SELECT 1 AS a"),
        Scenario::new("ssl_request_then_startup")
            .with_login(true, V3, &[])
            .q("SELECT 1 AS a"),
        Scenario::new("idle_in_transaction_timeout")
            .q("SET idle_in_transaction_session_timeout = '200ms'")
            .q("BEGIN")
            .sleep(500)
            .send(query("SELECT 1 AS a"), Until::Ready(1)),
        Scenario::new("idle_in_transaction_timeout_after_statement")
            .q("SET idle_in_transaction_session_timeout = '200ms'")
            .q("BEGIN")
            .q("SELECT 1 AS a")
            .sleep(500)
            .send(query("SELECT 2 AS b"), Until::Ready(1)),
        Scenario::new("terminate_own_backend").send(
            query("SELECT pg_terminate_backend(pg_backend_pid())"),
            Until::Ready(1),
        )
        // Only reached when the session survived.
        .q("SELECT 5 AS five"),
        Scenario::new("set_custom_setting_utf8")
            .q("SET x.y = '€€'")
            .q("SHOW x.y")
            .q("SELECT current_setting('x.y') AS v"),
        Scenario::new("function_call")
            .send(
                function_call(INT4PL, &[Some(b"40"), Some(b"2")]),
                Until::Ready(1),
            )
            .send(function_call(INT4PL, &[Some(b"x"), Some(b"2")]), Until::Ready(1))
            .send(function_call(0, &[]), Until::Ready(1)),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// The raw client.

enum Next {
    Msg(u8, Vec<u8>),
    Closed,
    Timeout,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    log: Vec<String>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
            closed: false,
            log: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            let _ = self.stream.shutdown().await;
        } else if self.stream.write_all(bytes).await.is_err() {
            self.log.push("<write failed>".into());
        }
    }

    async fn fill(&mut self, deadline: Instant) -> Option<Next> {
        if self.closed {
            return Some(Next::Closed);
        }
        let mut chunk = vec![0u8; 64 * 1024];
        match timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Some(Next::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                Some(Next::Closed)
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                None
            }
        }
    }

    /// The next backend message.
    async fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if !(4..=64 << 20).contains(&len) {
                    let bytes = std::mem::take(&mut self.buf);
                    self.log.push(format!("<bad frame: {}>", show(&bytes)));
                    self.closed = true;
                    return Next::Closed;
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..len + 1].to_vec();
                    self.buf.drain(..len + 1);
                    return Next::Msg(tag, body);
                }
            }
            if let Some(n) = self.fill(deadline).await {
                if !self.buf.is_empty() && matches!(n, Next::Closed) {
                    let bytes = std::mem::take(&mut self.buf);
                    self.log.push(format!("<partial: {}>", show(&bytes)));
                }
                return n;
            }
        }
    }

    /// Reads until the condition holds, the connection closes or the deadline passes, recording everything.
    async fn read_until(&mut self, until: Option<Until>, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut ready = 0;
        loop {
            match self.next(deadline).await {
                Next::Msg(tag, body) => {
                    self.log.push(render(tag, &body));
                    match until {
                        Some(Until::Ready(n)) if tag == b'Z' => {
                            ready += 1;
                            if ready == n {
                                return;
                            }
                        }
                        Some(Until::Tag(t)) if t == tag => return,
                        _ => {}
                    }
                }
                Next::Closed => {
                    self.log.push("<closed>".into());
                    return;
                }
                Next::Timeout => {
                    if until.is_some() {
                        self.log.push("<timeout>".into());
                    }
                    return;
                }
            }
        }
    }

    async fn login(
        &mut self,
        ssl: bool,
        version: u32,
        params: &[(&'static str, Vec<u8>)],
        login_params: bool,
        (user, password): (&str, &str),
    ) {
        let deadline = Instant::now() + WAIT;
        if ssl {
            self.write(&ssl_request()).await;
            while self.buf.is_empty() {
                match self.fill(deadline).await {
                    Some(Next::Timeout) => return self.log.push("<timeout>".into()),
                    Some(_) => return self.log.push("<closed>".into()),
                    None => {}
                }
            }
            let answer = self.buf.remove(0);
            self.log.push(format!("SSLResponse {}", answer as char));
        }
        let mut all: Vec<(&str, &[u8])> = vec![("user", user.as_bytes()), ("database", b"app")];
        all.extend(params.iter().map(|(k, v)| (*k, v.as_slice())));
        self.write(&startup(version, &all)).await;
        let mut scram: Option<ScramSha256> = None;
        let mut greeting = Vec::new();
        loop {
            let (tag, body) = match self.next(deadline).await {
                Next::Msg(tag, body) => (tag, body),
                Next::Closed => return self.log.push("<closed>".into()),
                Next::Timeout => return self.log.push("<timeout>".into()),
            };
            match tag {
                b'R' => {
                    let code = be32(&body[0..4]);
                    let rest = &body[4..];
                    match code {
                        0 => self.log.push("AuthenticationOk".into()),
                        3 => {
                            self.log.push("AuthenticationCleartextPassword".into());
                            let mut b = Vec::new();
                            cstr(&mut b, password.as_bytes());
                            self.write(&msg(b'p', &b)).await;
                        }
                        5 => {
                            self.log.push("AuthenticationMD5Password".into());
                            let salt = [rest[0], rest[1], rest[2], rest[3]];
                            let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                            let mut b = Vec::new();
                            cstr(&mut b, hash.as_bytes());
                            self.write(&msg(b'p', &b)).await;
                        }
                        10 => {
                            let mechs: Vec<String> = rest
                                .split(|&b| b == 0)
                                .filter(|m| !m.is_empty())
                                .map(|m| String::from_utf8_lossy(m).into_owned())
                                .collect();
                            self.log.push(format!("AuthenticationSASL {mechs:?}"));
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut b = Vec::new();
                            cstr(&mut b, b"SCRAM-SHA-256");
                            b.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            b.extend_from_slice(s.message());
                            self.write(&msg(b'p', &b)).await;
                            scram = Some(s);
                        }
                        11 => {
                            self.log.push("AuthenticationSASLContinue".into());
                            let s = scram.as_mut().expect("SASL started");
                            s.update(rest).expect("SCRAM server-first");
                            let m = msg(b'p', s.message());
                            self.write(&m).await;
                        }
                        12 => {
                            self.log.push("AuthenticationSASLFinal".into());
                            let s = scram.as_mut().expect("SASL started");
                            s.finish(rest).expect("SCRAM server signature");
                        }
                        other => self.log.push(format!("Authentication {other}")),
                    }
                }
                b'S' => {
                    let mut it = body.split(|&b| b == 0);
                    let name = String::from_utf8_lossy(it.next().unwrap_or_default()).into_owned();
                    let value = show(it.next().unwrap_or_default());
                    greeting.push(format!("{name}={value}"));
                }
                b'Z' => {
                    if login_params {
                        greeting.sort();
                        self.log
                            .push(format!("ParameterStatus* {}", greeting.join(", ")));
                    }
                    self.log.push(render(tag, &body));
                    return;
                }
                _ => self.log.push(render(tag, &body)),
            }
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Bytes as text: printable ASCII as it is, anything else escaped; long values as length and checksum.
fn show(b: &[u8]) -> String {
    if b.len() > 160 {
        let hash = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
            (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
        });
        return format!("<{} bytes, fnv {hash:016x}>", b.len());
    }
    let mut s = String::new();
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

/// Splits NUL-terminated strings.
fn cstrs(b: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = b.split(|&x| x == 0).collect();
    out.pop();
    out
}

/// One backend message as a line, normalized as the module documentation says.
fn render(tag: u8, body: &[u8]) -> String {
    let r = std::panic::catch_unwind(|| render_inner(tag, body));
    r.unwrap_or_else(|_| format!("<malformed {}: {}>", tag as char, show(body)))
}

fn render_inner(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => {
            let mut fields = Vec::new();
            let mut rest = body;
            while !rest.is_empty() && rest[0] != 0 {
                let end = rest.iter().position(|&x| x == 0).expect("field end");
                let (kind, value) = (rest[0], &rest[1..end]);
                if b"SVCMP".contains(&kind) {
                    fields.push(format!("{}={}", kind as char, show(value)));
                }
                rest = &rest[end + 1..];
            }
            let name = if tag == b'E' {
                "ErrorResponse"
            } else {
                "NoticeResponse"
            };
            format!("{name} {}", fields.join(" "))
        }
        b'K' => "BackendKeyData".into(),
        b'S' => {
            let parts = cstrs(body);
            format!("ParameterStatus {}={}", show(parts[0]), show(parts[1]))
        }
        b'Z' => format!("ReadyForQuery {}", body[0] as char),
        b'C' => format!("CommandComplete {}", show(&body[..body.len() - 1])),
        b'T' => {
            let n = be16(body) as usize;
            let mut at = 2;
            let mut cols = Vec::new();
            for _ in 0..n {
                let end = at + body[at..].iter().position(|&x| x == 0).expect("name end");
                let name = show(&body[at..end]);
                let f = &body[end + 1..end + 19];
                let table = if be32(&f[0..4]) == 0 { "-" } else { "table" };
                cols.push(format!(
                    "{name}({table} #{} type {} len {} mod {} fmt {})",
                    be16(&f[4..6]) as i16,
                    be32(&f[6..10]),
                    be16(&f[10..12]) as i16,
                    be32(&f[12..16]) as i32,
                    be16(&f[16..18])
                ));
                at = end + 19;
            }
            format!("RowDescription [{}]", cols.join(", "))
        }
        b'D' => {
            let n = be16(body) as usize;
            let mut at = 2;
            let mut vals = Vec::new();
            for _ in 0..n {
                let len = be32(&body[at..at + 4]) as i32;
                at += 4;
                if len < 0 {
                    vals.push("NULL".to_string());
                } else {
                    vals.push(format!("'{}'", show(&body[at..at + len as usize])));
                    at += len as usize;
                }
            }
            format!("DataRow [{}]", vals.join(", "))
        }
        b't' => {
            let n = be16(body) as usize;
            let types: Vec<String> = (0..n)
                .map(|i| be32(&body[2 + 4 * i..]).to_string())
                .collect();
            format!("ParameterDescription [{}]", types.join(", "))
        }
        b'G' | b'H' | b'W' => {
            let name = match tag {
                b'G' => "CopyInResponse",
                b'H' => "CopyOutResponse",
                _ => "CopyBothResponse",
            };
            format!("{name} {}", show(body))
        }
        b'd' => format!("CopyData {}", show(body)),
        b'c' => "CopyDone".into(),
        b'1' => "ParseComplete".into(),
        b'2' => "BindComplete".into(),
        b'3' => "CloseComplete".into(),
        b'n' => "NoData".into(),
        b'I' => "EmptyQueryResponse".into(),
        b's' => "PortalSuspended".into(),
        b'V' => {
            let len = be32(body) as i32;
            if len < 0 {
                "FunctionCallResponse NULL".into()
            } else {
                format!("FunctionCallResponse '{}'", show(&body[4..]))
            }
        }
        b'v' => {
            let parts = cstrs(&body[8..]);
            let opts: Vec<String> = parts.iter().map(|p| show(p)).collect();
            format!(
                "NegotiateProtocolVersion version {:#x} options {:?}",
                be32(body),
                opts
            )
        }
        b'A' => {
            let parts = cstrs(&body[4..]);
            format!("NotificationResponse {} {}", show(parts[0]), show(parts[1]))
        }
        b'R' => format!("Authentication {}", be32(body)),
        other => format!("Unknown {:?} {}", other as char, show(body)),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Running and comparing.

async fn run_script(s: &Scenario, addr: SocketAddr, direct: bool) -> Vec<String> {
    let user = match (s.md5, direct) {
        (false, _) => APP,
        (true, true) => ("md5user", "md5-server-secret"),
        (true, false) => MD5,
    };
    let mut c = Conn::open(addr).await;
    for step in &s.steps {
        if c.closed {
            break;
        }
        match step {
            Step::Login {
                ssl,
                version,
                params,
            } => c.login(*ssl, *version, params, s.login_params, user).await,
            Step::Send { bytes, until, wait } => {
                c.write(bytes).await;
                c.read_until(*until, *wait).await;
            }
            Step::Sleep(d) => c.read_until(None, *d).await,
        }
    }
    if !c.closed {
        // Anything left over is recorded; then the goodbye must close the connection without another word.
        c.write(&terminate()).await;
        c.read_until(Some(Until::Closed), Duration::from_secs(5))
            .await;
    }
    c.log
}

async fn direct_sql(sql: &str) {
    if sql.is_empty() {
        return;
    }
    let url = env().cluster.url("primary", APP.0, "app");
    let mut cfg: tokio_postgres::Config = url.parse().expect("url");
    cfg.password(APP.1);
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .expect("direct connect");
    tokio::spawn(conn);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("direct SQL {sql}: {e}"));
}

async fn wait_replicas() {
    tokio::task::spawn_blocking(|| {
        for r in ["replica1", "replica2"] {
            env()
                .cluster
                .wait_replayed(r, Duration::from_secs(30))
                .expect("replicas caught up");
        }
    })
    .await
    .expect("wait");
}

async fn run(s: &Scenario, addr: SocketAddr, direct: bool) -> Vec<String> {
    direct_sql(&s.cleanup).await;
    direct_sql(&s.setup).await;
    if !s.setup.is_empty() {
        wait_replicas().await;
    }
    let log = run_script(s, addr, direct).await;
    direct_sql(&s.cleanup).await;
    log
}

/// A line diff (longest common subsequence): ` ` both, `-` PostgreSQL only, `+` pgsplit only.
fn diff(a: &[String], b: &[String]) -> String {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!("      {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("  +   {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("  -   {}\n", a[i]));
            i += 1;
        }
    }
    out
}

static PROXY: OnceLock<SocketAddr> = OnceLock::new();

fn proxy() -> SocketAddr {
    *PROXY.get_or_init(|| {
        // TLS offered as the shared cluster's servers offer it (`ssl = on`), so SSLRequest gets `S` from both.
        let pki = crate::common::pki::pki();
        let tls = format!(
            "[tls]\nclient_mode = \"prefer\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.server_cert_file.display(),
            pki.server_key_file.display()
        );
        spawn_proxy(config(
            &env().cluster,
            2,
            2,
            &format!("{tls}[routing]\nbalancer = \"round_robin\""),
        ))
    })
}

#[tokio::test]
async fn differential_postgres_vs_pgsplit() {
    let primary: SocketAddr = format!("127.0.0.1:{}", env().cluster.primary().port)
        .parse()
        .expect("primary address");
    let proxy = proxy();
    let only = std::env::var("DIFF_ONLY").ok();

    let mut url: tokio_postgres::Config = env()
        .cluster
        .url("primary", "postgres", "app")
        .parse()
        .expect("url");
    url.dbname("app");
    let (c, conn) = url.connect(tokio_postgres::NoTls).await.expect("direct");
    tokio::spawn(conn);
    let oid: u32 = c
        .query_one("SELECT 'int4pl(int4,int4)'::regprocedure::oid", &[])
        .await
        .expect("int4pl")
        .get(0);
    assert_eq!(oid, INT4PL);

    let mut differing = Vec::new();
    let mut report = String::new();
    for s in scenarios() {
        if only.as_deref().is_some_and(|o| !s.name.contains(o)) {
            continue;
        }
        let direct = run(&s, primary, true).await;
        let through = run(&s, proxy, false).await;
        if direct == through {
            println!("same    {}", s.name);
        } else {
            println!("DIFFERS {}", s.name);
            report.push_str(&format!(
                "=== {} (- PostgreSQL, + pgsplit)\n{}",
                s.name,
                diff(&direct, &through)
            ));
            differing.push(s.name);
        }
        if std::env::var("DIFF_VERBOSE").is_ok() {
            println!("--- {}\n{}", s.name, direct.join("\n"));
        }
    }
    println!("{report}");
    if only.is_some() {
        return;
    }
    let known: Vec<&str> = KNOWN_DIFFERENCES.iter().map(|(n, _)| *n).collect();
    let fixed: Vec<&&str> = known.iter().filter(|k| !differing.contains(k)).collect();
    let new: Vec<&&str> = differing.iter().filter(|d| !known.contains(d)).collect();
    assert!(
        fixed.is_empty() && new.is_empty(),
        "differences changed: new {new:?} (see the diffs above); now the same as PostgreSQL (remove them from \
         KNOWN_DIFFERENCES): {fixed:?}"
    );
}
