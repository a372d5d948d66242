// pgjdbc (the PostgreSQL JDBC driver) through pgsplit: DDL and writes on the primary, autocommit reads on both
// replicas, read-your-writes, JDBC transactions (a savepoint rolled back; setReadOnly(true), which pgjdbc sends as
// BEGIN READ ONLY, on a replica with a setFetchSize portal read; an error then recovery), a 1 MB parameter, and
// server-side prepared statements that follow the client from server to server.
// readOnlyMode=always and setTransactionIsolation (SET SESSION CHARACTERISTICS) are followed, not pinned.
// Modes: prepareThreshold=5 (pgjdbc's default: 4 unnamed executions, then a named statement), prepareThreshold=1
// (named from the first execution), and batch inserts with and without reWriteBatchedInserts=true.
//
// Run: java -cp /usr/share/java/postgresql.jar tests/drivers/PgJdbcTest.java (Java's single-file source launcher).
// Env: DATABASE_URL (pgsplit, postgres://user:pass@host:port/db), PRIMARY_PORT, REPLICA_PORTS (comma-separated).
// Prints `OK PgJdbcTest.java`.

import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ThreadLocalRandom;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;

public class PgJdbcTest {
    static final String NAME = "PgJdbcTest.java";
    static final int PRIMARY = Integer.parseInt(System.getenv("PRIMARY_PORT"));
    static final Set<Integer> REPLICAS = new TreeSet<>();
    static final String TABLE = "drv_pgjdbc_" + ProcessHandle.current().pid() + "_"
            + Integer.toHexString(ThreadLocalRandom.current().nextInt(1 << 24));

    static final String READ = "SELECT ?::int AS v, pg_is_in_recovery() AS r, inet_server_port() AS p";
    static final String WHERE = "SELECT pg_is_in_recovery() AS r, inet_server_port() AS p";
    static final String INSERT = "INSERT INTO " + TABLE
            + " (tag, v) VALUES (?, ?) RETURNING id, pg_is_in_recovery() AS r, inet_server_port() AS p";
    static final String BY_ID = "SELECT tag, v FROM " + TABLE + " WHERE id = ?";

    static String jdbcUrl;
    static Properties credentials = new Properties();

    /** A failed check; `step` reports it with the step's name. */
    static final class Failed extends RuntimeException {
        Failed(String what) {
            super(what);
        }
    }

    /** A failed step, named: ends the script once the table is dropped. */
    static final class StepFailed extends RuntimeException {
        StepFailed(String what) {
            super(what);
        }
    }

    interface Body {
        void run() throws Exception;
    }

    /** Read number i: returns the port of the replica it ran on. */
    interface Read {
        int run(int i) throws Exception;
    }

    /** One connection mode: its label, extra connection properties, and what pgjdbc returns per batched insert. */
    record Mode(String label, Properties props, int batchCount) {}

    static void expect(boolean cond, String what) {
        if (!cond) throw new Failed(what);
    }

    static void fail(String what) {
        System.err.println(NAME + ": FAILED: " + what);
        System.exit(1);
    }

    /** Runs `body`; a failed check or an exception in it becomes a StepFailed naming the step. */
    static void step(String what, Body body) {
        try {
            body.run();
        } catch (StepFailed f) {
            throw f;
        } catch (Failed f) {
            throw new StepFailed(what + ": " + f.getMessage());
        } catch (SQLException e) {
            e.printStackTrace();
            throw new StepFailed(what + ": SQLSTATE " + e.getSQLState() + ": " + e.getMessage());
        } catch (Exception e) {
            e.printStackTrace();
            throw new StepFailed(what + ": " + e);
        }
    }

    /** (pg_is_in_recovery(), inet_server_port()) of the current row, from columns r and p. */
    record Where(boolean recovery, int port) {
        static Where of(ResultSet rs) throws SQLException {
            return new Where(rs.getBoolean("r"), rs.getInt("p"));
        }
    }

    static int onReplica(Where w, String what) {
        expect(w.recovery && REPLICAS.contains(w.port), what + ": should run on a replica " + REPLICAS + "; got " + w);
        return w.port;
    }

    static void onPrimary(Where w, String what) {
        expect(!w.recovery && w.port == PRIMARY, what + ": should run on the primary " + PRIMARY + "; got " + w);
    }

    /**
     * Runs `read` 30 times, then on until both replicas were seen, for at most 10 s: a replica not yet known to
     * have replayed this client's last write takes none of its reads until pgsplit's next lag probe.
     */
    static void readsReachBothReplicas(String what, Read read) throws Exception {
        Set<Integer> seen = new TreeSet<>();
        long deadline = System.nanoTime() + 10_000_000_000L;
        int i = 0;
        for (; i < 30 || (!seen.equals(REPLICAS) && System.nanoTime() < deadline); i++) seen.add(read.run(i));
        expect(seen.equals(REPLICAS), i + " " + what + " should reach both replicas " + REPLICAS + "; saw " + seen);
    }

    static ResultSet one(ResultSet rs, String what) throws SQLException {
        expect(rs.next(), what + ": no row");
        return rs;
    }

    static Where where(Connection conn) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = one(st.executeQuery(WHERE), WHERE)) {
            return Where.of(rs);
        }
    }

    static long scalarLong(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = one(st.executeQuery(sql), sql)) {
            return rs.getLong(1);
        }
    }

    static String sqlState(Body body) throws Exception {
        try {
            body.run();
        } catch (SQLException e) {
            return e.getSQLState();
        }
        return null;
    }

    /**
     * Runs `body` with autocommit off (and read-only when asked: pgjdbc then starts the transaction with BEGIN READ
     * ONLY); whatever it leaves open is rolled back, without hiding the failure that left it open.
     */
    static void transaction(Connection conn, boolean readOnly, Body body) throws Exception {
        conn.setAutoCommit(false);
        conn.setReadOnly(readOnly);
        try {
            body.run();
        } catch (Exception e) {
            try {
                endTransaction(conn);
            } catch (SQLException cleanup) {
                e.addSuppressed(cleanup);
            }
            throw e;
        }
        endTransaction(conn);
    }

    static void endTransaction(Connection conn) throws SQLException {
        conn.rollback();
        conn.setReadOnly(false);
        conn.setAutoCommit(true);
    }

    static long primaryCount(Connection conn, String tag) throws SQLException {
        return scalarLong(conn, "/* pgsplit:primary */ SELECT count(*) FROM " + TABLE + " WHERE tag = '" + tag + "'");
    }

    /** Inserts (tag, v) with a prepared INSERT ... RETURNING; asserts it ran on the primary; returns the id. */
    static long insert(PreparedStatement ins, String tag, int v, String what) throws SQLException {
        ins.setString(1, tag);
        ins.setInt(2, v);
        try (ResultSet rs = one(ins.executeQuery(), what)) {
            onPrimary(Where.of(rs), what);
            return rs.getLong("id");
        }
    }

    static Connection connect(Properties extra) throws SQLException {
        Properties props = new Properties();
        props.putAll(credentials);
        props.setProperty("connectTimeout", "10");
        props.setProperty("socketTimeout", "60");
        props.setProperty("ApplicationName", NAME);
        props.putAll(extra);
        return DriverManager.getConnection(jdbcUrl, props);
    }

    static Properties props(String... kv) {
        Properties p = new Properties();
        for (int i = 0; i < kv.length; i += 2) p.setProperty(kv[i], kv[i + 1]);
        return p;
    }

    public static void main(String[] args) {
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(240_000);
            } catch (InterruptedException e) {
                return;
            }
            fail("timed out after 240 s (a hang)");
        });
        watchdog.setDaemon(true);
        watchdog.start();
        try {
            run();
        } catch (StepFailed f) {
            fail(f.getMessage());
        } catch (Exception e) {
            e.printStackTrace();
            fail(e.toString());
        }
        System.out.println("OK " + NAME);
    }

    static void run() throws Exception {
        for (String p : System.getenv("REPLICA_PORTS").split(",")) REPLICAS.add(Integer.parseInt(p.trim()));
        URI uri = URI.create(System.getenv("DATABASE_URL"));
        jdbcUrl = "jdbc:postgresql://" + uri.getHost() + ":" + uri.getPort() + uri.getRawPath();
        String[] userInfo = uri.getRawUserInfo().split(":", 2);
        credentials.setProperty("user", URLDecoder.decode(userInfo[0], StandardCharsets.UTF_8));
        credentials.setProperty("password", URLDecoder.decode(userInfo[1], StandardCharsets.UTF_8));

        List<Mode> modes = List.of(
                new Mode("prepareThreshold=5 (default)", props(), 1),
                new Mode("prepareThreshold=1", props("prepareThreshold", "1"), 1),
                new Mode("reWriteBatchedInserts=true", props("reWriteBatchedInserts", "true"), Statement.SUCCESS_NO_INFO));

        try (Connection conn = connect(props())) {
            step("DDL: CREATE TABLE", () -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("CREATE TABLE " + TABLE
                            + " (id bigserial PRIMARY KEY, tag text NOT NULL, v int NOT NULL, body text)");
                }
                transaction(conn, false, () -> {
                    long exists = scalarLong(conn, "SELECT count(*) FROM pg_class WHERE relname = '" + TABLE + "'");
                    expect(exists == 1, "the new table is seen in a transaction (on the primary)");
                    onPrimary(where(conn), "a transaction that sees the new table");
                });
            });
            try {
                runOnce(conn);
                for (Mode mode : modes) {
                    try (Connection c = connect(mode.props)) {
                        runMode(c, mode);
                    }
                }
                sessionCharacteristics();
            } catch (Exception e) {
                try (Statement st = conn.createStatement()) {
                    st.execute("DROP TABLE IF EXISTS " + TABLE);
                } catch (SQLException cleanup) {
                    e.addSuppressed(cleanup);
                }
                throw e;
            }
            step("DDL: DROP TABLE", () -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("DROP TABLE " + TABLE);
                }
                long left = scalarLong(conn,
                        "/* pgsplit:primary */ SELECT count(*) FROM pg_class WHERE relname = '" + TABLE + "'");
                expect(left == 0, "the table is gone from the primary after DROP TABLE");
            });
        }
    }

    /**
     * readOnlyMode=always and setTransactionIsolation: pgjdbc sends SET SESSION CHARACTERISTICS AS TRANSACTION …,
     * which pgsplit follows as settings (the client is not pinned); SERIALIZABLE reads run on the primary (a hot
     * standby refuses them).
     */
    static void sessionCharacteristics() {
        step("readOnlyMode=always and setTransactionIsolation", () -> {
            try (Connection c = connect(props("readOnlyMode", "always"))) {
                c.setReadOnly(true);
                readsReachBothReplicas("reads with readOnlyMode=always", i -> onReplica(where(c), "read " + i));
                String state = sqlState(() -> {
                    try (Statement st = c.createStatement()) {
                        st.executeUpdate("UPDATE " + TABLE + " SET v = v WHERE false");
                    }
                });
                expect("25006".equals(state), "a write under readOnlyMode=always fails with 25006; got " + state);
                c.setReadOnly(false);
                c.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
                for (int i = 0; i < 10; i++) {
                    onPrimary(where(c), "SERIALIZABLE read " + i);
                }
                try (Statement st = c.createStatement();
                        ResultSet rs = one(st.executeQuery("SHOW transaction_isolation"), "isolation")) {
                    expect(rs.getString(1).equals("serializable"), "the default isolation is SERIALIZABLE");
                }
                c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
                try (Statement st = c.createStatement();
                        ResultSet rs = one(st.executeQuery("SHOW transaction_isolation"), "isolation")) {
                    expect(rs.getString(1).equals("read committed"), "back to READ COMMITTED");
                }
                try (Statement st = c.createStatement()) {
                    st.executeUpdate("UPDATE " + TABLE + " SET v = v WHERE false");
                }
            }
        });
    }

    /** Steps 2, 5, 6, 8, 9 (on the default connection); 3, 4, 7 and batches run in every mode. */
    static void runOnce(Connection conn) {
        step("writes on the primary", () -> {
            try (PreparedStatement ins = conn.prepareStatement(INSERT)) {
                for (int i = 0; i < 10; i++) insert(ins, "write", i, "autocommit INSERT " + i);
            }
            try (PreparedStatement upd = conn.prepareStatement(
                    "UPDATE " + TABLE + " SET v = v + 100 WHERE tag = 'write' RETURNING inet_server_port() AS p, "
                            + "pg_is_in_recovery() AS r")) {
                try (ResultSet rs = upd.executeQuery()) {
                    int n = 0;
                    while (rs.next()) {
                        onPrimary(Where.of(rs), "autocommit UPDATE");
                        n++;
                    }
                    expect(n == 10, "UPDATE ... RETURNING should return 10 rows; got " + n);
                }
            }
            long sum = scalarLong(conn, "/* pgsplit:primary */ SELECT sum(v) FROM " + TABLE + " WHERE tag = 'write'");
            expect(sum == 45 + 1000, "sum of the 10 updated rows on the primary should be 1045; got " + sum);
        });

        step("JDBC transaction: setSavepoint, rollback(savepoint), commit", () -> {
            try (PreparedStatement ins = conn.prepareStatement(INSERT)) {
                transaction(conn, false, () -> {
                    insert(ins, "tx", 1, "INSERT before the savepoint");
                    Savepoint sp = conn.setSavepoint();
                    insert(ins, "tx", 2, "INSERT after the savepoint");
                    expect(scalarLong(conn, "SELECT count(*) FROM " + TABLE + " WHERE tag = 'tx'") == 2,
                            "both rows are visible before rollback(savepoint)");
                    conn.rollback(sp);
                    onPrimary(where(conn), "a statement after rollback(savepoint)");
                    insert(ins, "tx", 3, "INSERT after rollback(savepoint)");
                    conn.commit();
                });
            }
            String sql = "SELECT string_agg(v::text, ',' ORDER BY v) FROM " + TABLE + " WHERE tag = 'tx'";
            try (Statement st = conn.createStatement(); ResultSet rs = one(st.executeQuery(sql), sql)) {
                expect("1,3".equals(rs.getString(1)),
                        "after commit (read right after it): v values 1,3 (2 was rolled back); got " + rs.getString(1));
            }
            try (Statement st = conn.createStatement();
                    ResultSet rs = one(st.executeQuery("/* pgsplit:primary */ " + sql), sql)) {
                expect("1,3".equals(rs.getString(1)), "after commit, on the primary: v values 1,3; got " + rs.getString(1));
            }
        });

        step("read-only transaction: setReadOnly(true) + setAutoCommit(false) (pgjdbc sends BEGIN READ ONLY)", () -> {
            transaction(conn, true, () -> {
                onReplica(where(conn), "first statement of the read-only transaction");
                long n = scalarLong(conn, "SELECT count(*) FROM " + TABLE + " WHERE tag = 'tx'");
                expect(n == 2, "the read-only transaction counts 2 committed 'tx' rows; got " + n);
                onReplica(where(conn), "a later statement of the read-only transaction");
                // setFetchSize in a transaction: pgjdbc reads through a named portal, 100 rows per Execute.
                try (Statement st = conn.createStatement()) {
                    st.setFetchSize(100);
                    try (ResultSet rs = st.executeQuery(
                            "SELECT g, pg_is_in_recovery() AS r, inet_server_port() AS p FROM generate_series(1, 1000) g")) {
                        int rows = 0;
                        while (rs.next()) {
                            rows++;
                            expect(rs.getInt("g") == rows, "row " + rows + " fetched by portal: g = " + rs.getInt("g"));
                            onReplica(Where.of(rs), "row " + rows + " fetched by portal");
                        }
                        expect(rows == 1000, "1000 rows fetched 100 at a time; got " + rows);
                    }
                }
                String state = sqlState(() -> {
                    try (PreparedStatement ins = conn.prepareStatement(INSERT)) {
                        insert(ins, "ro", 1, "INSERT in a read-only transaction");
                    }
                });
                expect("25006".equals(state), "INSERT in a read-only transaction should fail with 25006; got " + state);
            });
            expect(primaryCount(conn, "ro") == 0, "nothing was written by the read-only transaction");
        });

        step("a 1 MB parameter", () -> {
            String big = "y".repeat(1 << 20);
            String md5 = HexFormat.of().formatHex(
                    MessageDigest.getInstance("MD5").digest(big.getBytes(StandardCharsets.UTF_8)));
            long id;
            try (PreparedStatement ins = conn.prepareStatement("INSERT INTO " + TABLE
                    + " (tag, v, body) VALUES ('big', 0, ?) RETURNING id, inet_server_port() AS p, pg_is_in_recovery() AS r")) {
                ins.setString(1, big);
                try (ResultSet rs = one(ins.executeQuery(), "INSERT of 1 MB")) {
                    onPrimary(Where.of(rs), "INSERT of a 1 MB parameter");
                    id = rs.getLong("id");
                }
            }
            try (PreparedStatement sel = conn.prepareStatement(
                    "SELECT length(body) AS n, md5(body) AS m, body FROM " + TABLE + " WHERE id = ?")) {
                sel.setLong(1, id);
                try (ResultSet rs = one(sel.executeQuery(), "read of the 1 MB row")) {
                    expect(rs.getInt("n") == 1 << 20 && md5.equals(rs.getString("m")) && big.equals(rs.getString("body")),
                            "the 1 MB value read back: length " + rs.getInt("n") + ", md5 " + rs.getString("m"));
                }
            }
            try (PreparedStatement echo = conn.prepareStatement(
                    "SELECT length(?::text) AS n, md5(?::text) AS m, pg_is_in_recovery() AS r, inet_server_port() AS p")) {
                echo.setString(1, big);
                echo.setString(2, big);
                try (ResultSet rs = one(echo.executeQuery(), "1 MB echo")) {
                    onReplica(Where.of(rs), "a read with two 1 MB parameters");
                    expect(rs.getInt("n") == 1 << 20 && md5.equals(rs.getString("m")),
                            "1 MB parameters on a replica: length " + rs.getInt("n") + ", md5 " + rs.getString("m"));
                }
            }
        });

        step("an error in a transaction: 25P02 next, rollback, recovery", () -> {
            try (PreparedStatement ins = conn.prepareStatement(INSERT)) {
                transaction(conn, false, () -> {
                    insert(ins, "doomed", 1, "INSERT before the error");
                    String first = sqlState(() -> scalarLong(conn, "SELECT 1/0"));
                    expect("22012".equals(first), "SELECT 1/0 should fail with 22012; got " + first);
                    String next = sqlState(() -> scalarLong(conn, "SELECT 1"));
                    expect("25P02".equals(next), "the next statement should fail with 25P02; got " + next);
                });
                onReplica(where(conn), "an autocommit read after the rollback");
                insert(ins, "after-error", 1, "an autocommit write after the rollback");
            }
            expect(primaryCount(conn, "doomed") == 0, "the row inserted before the error was rolled back");
            expect(primaryCount(conn, "after-error") == 1, "the write after the rollback is on the primary");
        });
    }

    /** Inserts 100 rows (tag, 0..99) with addBatch/executeBatch; returns executeBatch's counts. */
    static int[] batch(Connection conn, String tag) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + TABLE + " (tag, v) VALUES (?, ?)")) {
            for (int i = 0; i < 100; i++) {
                ps.setString(1, tag);
                ps.setInt(2, i);
                ps.addBatch();
            }
            return ps.executeBatch();
        }
    }

    static void checkBatch(Connection conn, Mode mode, String tag, int[] counts) throws SQLException {
        expect(counts.length == 100 && Arrays.stream(counts).allMatch(c -> c == mode.batchCount),
                tag + ": executeBatch should return 100 counts of " + mode.batchCount + "; got " + Arrays.toString(counts));
        long n = primaryCount(conn, tag);
        expect(n == 100, tag + ": 100 rows on the primary; got " + n);
        long sum = scalarLong(conn, "SELECT sum(v) FROM " + TABLE + " WHERE tag = '" + tag + "'");
        expect(sum == 4950, tag + ": read right after the batch: sum of v should be 4950; got " + sum);
    }

    /** Steps 3, 4, 7 and batch inserts, on a connection opened with `mode`'s properties. */
    static void runMode(Connection conn, Mode mode) {
        String m = "[" + mode.label + "] ";
        String tag = "mode-" + mode.label.replaceAll("[^a-zA-Z0-9]", "");
        int threshold = ((PGConnection) conn).getPrepareThreshold();

        step(m + "autocommit reads on both replicas", () -> {
            try (Statement st = conn.createStatement()) {
                readsReachBothReplicas("autocommit reads", i -> {
                    try (ResultSet rs = one(st.executeQuery(WHERE), WHERE)) {
                        return onReplica(Where.of(rs), "autocommit read " + i);
                    }
                });
            }
        });

        step(m + "read-your-writes: INSERT then SELECT it at once, 20 rounds", () -> {
            try (PreparedStatement ins = conn.prepareStatement(INSERT); PreparedStatement sel = conn.prepareStatement(BY_ID)) {
                for (int i = 0; i < 20; i++) {
                    long id = insert(ins, tag + "-ryw", i, "write " + i);
                    sel.setLong(1, id);
                    try (ResultSet rs = sel.executeQuery()) {
                        expect(rs.next(), "round " + i + ": the row just inserted (id " + id + ") is not visible (stale)");
                        expect(rs.getString(1).equals(tag + "-ryw") && rs.getInt(2) == i,
                                "round " + i + ": read back " + rs.getString(1) + "/" + rs.getInt(2));
                    }
                }
            }
        });

        step(m + "a prepared statement executed 30+ times in autocommit, then in a transaction", () -> {
            try (PreparedStatement ps = conn.prepareStatement(READ)) {
                PGStatement pg = ps.unwrap(PGStatement.class);
                readsReachBothReplicas("prepared reads", i -> {
                    ps.setInt(1, i);
                    int port;
                    try (ResultSet rs = one(ps.executeQuery(), "prepared read " + i)) {
                        expect(rs.getInt("v") == i, "prepared read " + i + " returned v = " + rs.getInt("v"));
                        port = onReplica(Where.of(rs), "prepared read " + i);
                    }
                    // pgjdbc names the statement on the server from execution number `threshold` on.
                    expect(pg.isUseServerPrepare() == (i + 1 >= threshold - 1),
                            "after execution " + (i + 1) + " with prepareThreshold " + threshold
                                    + ", isUseServerPrepare = " + pg.isUseServerPrepare());
                    return port;
                });

                transaction(conn, false, () -> {
                    for (int i = 0; i < 5; i++) {
                        ps.setInt(1, 100 + i);
                        try (ResultSet rs = one(ps.executeQuery(), "prepared read in a transaction")) {
                            expect(rs.getInt("v") == 100 + i, "prepared read in a transaction: v = " + rs.getInt("v"));
                            onPrimary(Where.of(rs), "the prepared read " + i + " in a transaction");
                        }
                    }
                    conn.commit();
                });
            }
            // pgjdbc's statement cache hands the same server-side statement to a new PreparedStatement of the same SQL.
            try (PreparedStatement again = conn.prepareStatement(READ)) {
                expect(again.unwrap(PGStatement.class).isUseServerPrepare(),
                        "a new PreparedStatement of the same SQL reuses the named server-side statement");
                for (int i = 0; i < 10; i++) {
                    again.setInt(1, 200 + i);
                    try (ResultSet rs = one(again.executeQuery(), "re-prepared read " + i)) {
                        expect(rs.getInt("v") == 200 + i, "re-prepared read " + i + ": v = " + rs.getInt("v"));
                        onReplica(Where.of(rs), "re-prepared read " + i);
                    }
                }
            }
        });

        step(m + "executeBatch of 100 INSERTs in autocommit and in a transaction", () -> {
            checkBatch(conn, mode, tag + "-batch", batch(conn, tag + "-batch"));
            int[][] counts = new int[1][];
            transaction(conn, false, () -> {
                counts[0] = batch(conn, tag + "-batch-tx");
                onPrimary(where(conn), "a statement after the batch in a transaction");
                conn.commit();
            });
            checkBatch(conn, mode, tag + "-batch-tx", counts[0]);
        });
    }
}
