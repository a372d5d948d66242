// pgx v4 through pgsplit. In each of three modes (pgx's default statement cache of named prepared statements, the
// describe-only cache, the simple protocol) on a connection of its own: writes on the primary, autocommit reads on
// both replicas, read-your-writes, a savepoint rolled back inside a committed transaction, a read-only transaction on
// a replica (a write in it fails with 25006), explicit and cached prepared statements run on both replicas and then in
// a transaction on the primary, a 1 MB parameter, an error in a transaction (25P02, ROLLBACK, recovery). Then a
// pgxpool runs 20 reads at once on the replicas, and 20 goroutines at once each write and read back a row. DDL (the
// test table) runs on the primary first and the table is dropped at the end.
//
// Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK pgx`.
// Run with Debian's packages in GOPATH mode, from the repository root:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=<writable dir> go run ./tests/drivers/pgx
package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgconn/stmtcache"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

const name = "pgx"

// read takes an int and returns it with where it ran.
const read = "SELECT $1::int, pg_is_in_recovery(), inet_server_port()"

// where says where a statement ran.
const where = "SELECT pg_is_in_recovery(), inet_server_port()"

var (
	url      = os.Getenv("DATABASE_URL")
	primary  int
	replicas = map[int]bool{}
	table    = fmt.Sprintf("drv_pgx_%d_%d", os.Getpid(), time.Now().UnixNano()%1000000)
)

// server is where a statement ran: pg_is_in_recovery() and inet_server_port().
type server struct {
	recovery bool
	port     int
}

func onPrimary(s server, what string) error {
	if s.recovery || s.port != primary {
		return fmt.Errorf("%s: should run on the primary %d; got (in_recovery, port) = %v", what, primary, s)
	}
	return nil
}

func onReplica(s server, what string) error {
	if !s.recovery || !replicas[s.port] {
		return fmt.Errorf("%s: should run on a replica %v; got (in_recovery, port) = %v", what, ports(replicas), s)
	}
	return nil
}

func bothReplicas(seen map[int]bool, what string) error {
	if len(seen) != len(replicas) {
		return fmt.Errorf("%s should reach both replicas %v; saw %v", what, ports(replicas), ports(seen))
	}
	return nil
}

func ports(set map[int]bool) []int {
	var out []int
	for p := range set {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// sqlState is the SQLSTATE of a server error, or "" for any other error.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func expectState(err error, code, what string) error {
	if got := sqlState(err); got != code {
		return fmt.Errorf("%s: should fail with SQLSTATE %s; got %v", what, code, err)
	}
	return nil
}

// querier is what a connection, a transaction and a pool share.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...interface{}) pgx.Row
	Exec(ctx context.Context, sql string, args ...interface{}) (pgconn.CommandTag, error)
}

func whereNow(ctx context.Context, q querier) (server, error) {
	var s server
	err := q.QueryRow(ctx, where).Scan(&s.recovery, &s.port)
	return s, err
}

// readAt runs a read statement (SQL or a prepared statement's name) for i, checks it returned i and where it ran.
func readAt(ctx context.Context, q querier, stmt string, i int) (server, error) {
	var v int
	var s server
	if err := q.QueryRow(ctx, stmt, i).Scan(&v, &s.recovery, &s.port); err != nil {
		return s, err
	}
	if v != i {
		return s, fmt.Errorf("%s with %d returned %d", stmt, i, v)
	}
	return s, nil
}

// run is one mode's connection; its rows in the table carry the mode's name.
type run struct {
	mode string
	conn *pgx.Conn
}

func (r *run) insert(ctx context.Context, q querier, v int) (id int, s server, err error) {
	err = q.QueryRow(ctx, fmt.Sprintf(
		"INSERT INTO %s (mode, v) VALUES ($1, $2) RETURNING id, pg_is_in_recovery(), inet_server_port()", table),
		r.mode, v).Scan(&id, &s.recovery, &s.port)
	return
}

// values lists the mode's values between lo and hi, in order, e.g. "1001,1003".
func (r *run) values(ctx context.Context, q querier, lo, hi int) (string, error) {
	var s string
	err := q.QueryRow(ctx, fmt.Sprintf(
		"SELECT coalesce(string_agg(v::text, ',' ORDER BY v), '') FROM %s WHERE mode = $1 AND v BETWEEN $2 AND $3",
		table), r.mode, lo, hi).Scan(&s)
	return s, err
}

func (r *run) checkValues(ctx context.Context, lo, hi int, want, what string) error {
	got, err := r.values(ctx, r.conn, lo, hi)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s: values between %d and %d should be [%s]; got [%s]", what, lo, hi, want, got)
	}
	return nil
}

// settle waits (up to 5 s) until the client's reads reach both replicas again. Right after the client's own write
// read-your-writes sends a read only to a replica known to have replayed it (known from the monitor's probes, every
// 250 ms), or to the primary, so a check that reads run on both replicas waits for this first.
func (r *run) settle(ctx context.Context) error {
	deadline := time.Now().Add(5 * time.Second)
	seen := map[int]bool{}
	for {
		s, err := whereNow(ctx, r.conn)
		if err != nil {
			return err
		}
		if s.recovery {
			seen[s.port] = true
		}
		if len(seen) == len(replicas) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("5 s after the last write reads reached only the replicas %v", ports(seen))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Step 2: INSERTs and an UPDATE run on the primary.
func (r *run) writes(ctx context.Context) error {
	for i := 0; i < 10; i++ {
		_, s, err := r.insert(ctx, r.conn, i)
		if err != nil {
			return err
		}
		if err := onPrimary(s, fmt.Sprintf("INSERT %d", i)); err != nil {
			return err
		}
	}
	rows, err := r.conn.Query(ctx, fmt.Sprintf(
		"UPDATE %s SET v = v + 100 WHERE mode = $1 AND v < 5 RETURNING pg_is_in_recovery(), inet_server_port()",
		table), r.mode)
	if err != nil {
		return err
	}
	updated := 0
	for rows.Next() {
		var s server
		if err := rows.Scan(&s.recovery, &s.port); err != nil {
			return err
		}
		if err := onPrimary(s, "UPDATE"); err != nil {
			return err
		}
		updated++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if updated != 5 || rows.CommandTag().RowsAffected() != 5 {
		return fmt.Errorf("UPDATE should change 5 rows; returned %d, tag %q", updated, rows.CommandTag())
	}
	return r.checkValues(ctx, 0, 999, "5,6,7,8,9,100,101,102,103,104", "after the INSERTs and the UPDATE")
}

// Step 3: autocommit reads run on replicas, both of them.
func (r *run) reads(ctx context.Context) error {
	if err := r.settle(ctx); err != nil {
		return err
	}
	seen := map[int]bool{}
	for i := 0; i < 30; i++ {
		s, err := readAt(ctx, r.conn, read, i)
		if err != nil {
			return err
		}
		if err := onReplica(s, fmt.Sprintf("autocommit read %d", i)); err != nil {
			return err
		}
		seen[s.port] = true
	}
	return bothReplicas(seen, "30 autocommit reads")
}

// Step 4: a read right after the client's own autocommit INSERT sees the row, 20 times.
func (r *run) readYourWrites(ctx context.Context) error {
	for i := 0; i < 20; i++ {
		id, _, err := r.insert(ctx, r.conn, 500+i)
		if err != nil {
			return err
		}
		var v int
		var s server
		err = r.conn.QueryRow(ctx, fmt.Sprintf(
			"SELECT v, pg_is_in_recovery(), inet_server_port() FROM %s WHERE id = $1", table), id).
			Scan(&v, &s.recovery, &s.port)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("round %d: the row just inserted (id %d) is missing: a stale read", i, id)
		}
		if err != nil {
			return err
		}
		if v != 500+i || (s.port != primary && !replicas[s.port]) {
			return fmt.Errorf("round %d: read (v, in_recovery, port) = (%d, %v); want v = %d", i, v, s, 500+i)
		}
	}
	return nil
}

// Step 5: a transaction with a savepoint rolled back (and one released); the rest is committed.
func (r *run) savepoint(ctx context.Context) error {
	tx, err := r.conn.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, _, err := r.insert(ctx, tx, 1001); err != nil {
		return err
	}
	sp, err := tx.Begin(ctx) // SAVEPOINT
	if err != nil {
		return err
	}
	if _, _, err := r.insert(ctx, sp, 1002); err != nil {
		return err
	}
	if got, err := r.values(ctx, sp, 1001, 1999); err != nil || got != "1001,1002" {
		return fmt.Errorf("inside the savepoint the values should be [1001,1002]; got [%s], %v", got, err)
	}
	if err := sp.Rollback(ctx); err != nil { // ROLLBACK TO SAVEPOINT
		return err
	}
	released, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	if _, _, err := r.insert(ctx, released, 1003); err != nil {
		return err
	}
	if err := released.Commit(ctx); err != nil { // RELEASE SAVEPOINT
		return err
	}
	s, err := whereNow(ctx, tx)
	if err != nil {
		return err
	}
	if err := onPrimary(s, "a statement after ROLLBACK TO SAVEPOINT"); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	return r.checkValues(ctx, 1001, 1999, "1001,1003", "after the commit (1002 was rolled back to the savepoint)")
}

// Step 6: a read-only transaction runs on a replica and sees the committed rows; a write in it fails with 25006.
func (r *run) readOnly(ctx context.Context) error {
	if err := r.settle(ctx); err != nil {
		return err
	}
	tx, err := r.conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	s, err := whereNow(ctx, tx)
	if err != nil {
		return err
	}
	if err := onReplica(s, "first statement of a read-only transaction"); err != nil {
		return err
	}
	if got, err := r.values(ctx, tx, 1001, 1999); err != nil || got != "1001,1003" {
		return fmt.Errorf("the read-only transaction should see [1001,1003]; got [%s], %v", got, err)
	}
	if s2, err := whereNow(ctx, tx); err != nil || s2 != s {
		return fmt.Errorf("the read-only transaction should stay on %v; then ran on %v, %v", s, s2, err)
	}
	_, _, err = r.insert(ctx, tx, 1999)
	if err := expectState(err, "25006", "INSERT in a read-only transaction"); err != nil {
		return err
	}
	_, err = whereNow(ctx, tx)
	if err := expectState(err, "25P02", "a statement after the failed INSERT"); err != nil {
		return err
	}
	return tx.Rollback(ctx)
}

// Step 7: explicitly prepared statements and pgx's cached ones run many times in autocommit on both replicas, then
// in a transaction on the primary. pgx v4 cannot Query an explicitly prepared statement by name in the describe mode
// (it sends the name as SQL text, on PostgreSQL too), so there only the cached statement is queried.
func (r *run) prepared(ctx context.Context) error {
	if err := r.settle(ctx); err != nil {
		return err
	}
	if _, err := r.conn.Prepare(ctx, "read_v", read); err != nil {
		return err
	}
	if _, err := r.conn.Prepare(ctx, "insert_v", fmt.Sprintf("INSERT INTO %s (mode, v) VALUES ($1, $2)", table)); err != nil {
		return err
	}
	// Another text than `read`, so that in the cached modes it is prepared by the cache, not found in it.
	reads := []string{"SELECT $1::int + 0, pg_is_in_recovery(), inet_server_port()"}
	if r.mode != "describe" {
		reads = append(reads, "read_v")
	}
	insertV := func(q querier, v int) error {
		tag, err := q.Exec(ctx, "insert_v", r.mode, v)
		if err != nil {
			return err
		}
		if !tag.Insert() || tag.RowsAffected() != 1 {
			return fmt.Errorf("insert_v %d: command tag %q", v, tag)
		}
		return nil
	}
	for _, stmt := range reads {
		seen := map[int]bool{}
		for i := 0; i < 30; i++ {
			s, err := readAt(ctx, r.conn, stmt, i)
			if err != nil {
				return err
			}
			if err := onReplica(s, fmt.Sprintf("%s, autocommit run %d", stmt, i)); err != nil {
				return err
			}
			seen[s.port] = true
		}
		if err := bothReplicas(seen, stmt+" run 30 times"); err != nil {
			return err
		}
	}
	for i := 0; i < 5; i++ {
		if err := insertV(r.conn, 2000+i); err != nil {
			return err
		}
	}

	tx, err := r.conn.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	for i := 0; i < 20; i++ {
		for _, stmt := range reads {
			s, err := readAt(ctx, tx, stmt, i)
			if err != nil {
				return err
			}
			if err := onPrimary(s, fmt.Sprintf("%s in a transaction, run %d", stmt, i)); err != nil {
				return err
			}
		}
		if err := insertV(tx, 2100+i); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	var n int
	if err := r.conn.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE mode = $1 AND v BETWEEN 2000 AND 2999",
		table), r.mode).Scan(&n); err != nil {
		return err
	}
	if n != 25 {
		return fmt.Errorf("insert_v ran 5 times in autocommit and 20 in a transaction; %d rows", n)
	}
	return nil
}

// Step 8: a 1 MB parameter read on a replica, written on the primary and read back equal. With the simple protocol
// the parameter is in the statement's text, and pgsplit sends texts over 1 MiB to the primary unparsed (README,
// Classification), so there the read runs on the primary.
func (r *run) bigParameter(ctx context.Context) error {
	if err := r.settle(ctx); err != nil {
		return err
	}
	big := strings.Repeat("0123456789abcdef", 1<<16) + r.mode
	sum := md5.Sum([]byte(big))
	want := hex.EncodeToString(sum[:])
	var length int
	var hash string
	var s server
	if err := r.conn.QueryRow(ctx, "SELECT length($1::text), md5($1::text), pg_is_in_recovery(), inet_server_port()",
		big).Scan(&length, &hash, &s.recovery, &s.port); err != nil {
		return err
	}
	if length != len(big) || hash != want {
		return fmt.Errorf("a replica got a parameter of length %d, md5 %s; sent %d, %s", length, hash, len(big), want)
	}
	check := onReplica
	if r.conn.Config().PreferSimpleProtocol {
		check = onPrimary
	}
	if err := check(s, "reading a 1 MB parameter"); err != nil {
		return err
	}
	var id int
	if err := r.conn.QueryRow(ctx, fmt.Sprintf(
		"INSERT INTO %s (mode, v, body) VALUES ($1, 3000, $2) RETURNING id, length(body), md5(body), inet_server_port()",
		table), r.mode, big).Scan(&id, &length, &hash, &s.port); err != nil {
		return err
	}
	if length != len(big) || hash != want || s.port != primary {
		return fmt.Errorf("the primary (%d) should store length %d, md5 %s; got length %d, md5 %s on port %d",
			primary, len(big), want, length, hash, s.port)
	}
	var back string
	if err := r.conn.QueryRow(ctx, fmt.Sprintf("SELECT body FROM %s WHERE id = $1", table), id).Scan(&back); err != nil {
		return err
	}
	if back != big {
		return fmt.Errorf("the 1 MB value read back differs: length %d, want %d", len(back), len(big))
	}
	return nil
}

// Step 9: an error in a transaction, then 25P02, ROLLBACK, and the connection works again.
func (r *run) errorInTransaction(ctx context.Context) error {
	tx, err := r.conn.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, _, err := r.insert(ctx, tx, 4000); err != nil {
		return err
	}
	var v int
	err = tx.QueryRow(ctx, fmt.Sprintf("SELECT v / 0 FROM %s WHERE mode = $1 AND v = 4000", table), r.mode).Scan(&v)
	if err := expectState(err, "22012", "division by zero"); err != nil {
		return err
	}
	// A text not seen before: in the cached modes its Parse fails in the aborted transaction.
	after := "SELECT $1::int * 2, pg_is_in_recovery(), inet_server_port()"
	_, err = readAt(ctx, tx, after, 21)
	if err := expectState(err, "25P02", "the next statement in the failed transaction"); err != nil {
		return err
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	if err := r.settle(ctx); err != nil {
		return err
	}
	var doubled int
	var s server
	if err := r.conn.QueryRow(ctx, after, 21).Scan(&doubled, &s.recovery, &s.port); err != nil {
		return err
	}
	if doubled != 42 {
		return fmt.Errorf("the statement that failed in the transaction, after ROLLBACK: 21 * 2 = %d", doubled)
	}
	if err := onReplica(s, "a read after ROLLBACK"); err != nil {
		return err
	}
	_, s, err = r.insert(ctx, r.conn, 4001)
	if err != nil {
		return err
	}
	if err := onPrimary(s, "a write after ROLLBACK"); err != nil {
		return err
	}
	return r.checkValues(ctx, 4000, 4999, "4001", "after the rolled back transaction and a new write")
}

// The mode's statement cache is the one asked for; the simple protocol never used it.
func (r *run) statementCache(want int) func(context.Context) error {
	return func(ctx context.Context) error {
		c := r.conn.StatementCache()
		if c == nil || c.Mode() != want {
			return fmt.Errorf("the connection's statement cache should have mode %d; got %v", want, c)
		}
		if simple := r.conn.Config().PreferSimpleProtocol; simple != (c.Len() == 0) {
			return fmt.Errorf("simple protocol %v, yet %d statements in the cache", simple, c.Len())
		}
		return nil
	}
}

type mode struct {
	name      string
	cacheMode int
	configure func(*pgx.ConnConfig)
}

var modes = []mode{
	{"prepare", stmtcache.ModePrepare, func(*pgx.ConnConfig) {}}, // pgx's default
	{"describe", stmtcache.ModeDescribe, func(c *pgx.ConnConfig) {
		c.BuildStatementCache = func(conn *pgconn.PgConn) stmtcache.Cache {
			return stmtcache.New(conn, stmtcache.ModeDescribe, 512)
		}
	}},
	{"simple", stmtcache.ModePrepare, func(c *pgx.ConnConfig) { c.PreferSimpleProtocol = true }},
}

func connConfig(m mode) (*pgx.ConnConfig, error) {
	config, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	config.ConnectTimeout = 10 * time.Second
	m.configure(config)
	return config, nil
}

func runMode(ctx context.Context, m mode) error {
	config, err := connConfig(m)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, config)
	if err != nil {
		return fmt.Errorf("%s mode: connect: %w", m.name, err)
	}
	defer conn.Close(ctx)
	r := &run{mode: m.name, conn: conn}
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"writes on the primary", r.writes},
		{"autocommit reads on replicas", r.reads},
		{"read-your-writes", r.readYourWrites},
		{"savepoint rolled back in a committed transaction", r.savepoint},
		{"read-only transaction", r.readOnly},
		{"prepared statements", r.prepared},
		{"1 MB parameter", r.bigParameter},
		{"error in a transaction", r.errorInTransaction},
		{"statement cache", r.statementCache(m.cacheMode)},
	}
	for _, s := range steps {
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("%s mode: %s: %w", m.name, s.name, err)
		}
	}
	return nil
}

// concurrently runs f(0) to f(n-1) at once and returns the first error.
func concurrently(n int, f func(i int) error) error {
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) { errs <- f(i) }(i)
	}
	var first error
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// A pool of 5 connections runs 20 reads at once, on both replicas (its clients have written nothing yet), then 20
// goroutines at once each write a row on the primary and read it back on the same pooled connection (read-your-writes
// covers one client connection to pgsplit, and the pool may hand out another for each query).
func pool(ctx context.Context) error {
	config, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	config.MaxConns = 5
	config.ConnConfig.ConnectTimeout = 10 * time.Second
	p, err := pgxpool.ConnectConfig(ctx, config)
	if err != nil {
		return err
	}
	defer p.Close()
	var mu sync.Mutex
	seen := map[int]bool{}
	if err := concurrently(20, func(i int) error {
		s, err := readAt(ctx, p, read, i)
		if err != nil {
			return err
		}
		mu.Lock()
		seen[s.port] = true
		mu.Unlock()
		return onReplica(s, fmt.Sprintf("pooled read %d", i))
	}); err != nil {
		return err
	}
	if err := bothReplicas(seen, "20 pooled reads"); err != nil {
		return err
	}
	if err := concurrently(20, func(i int) error {
		conn, err := p.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		var id int
		var s server
		if err := conn.QueryRow(ctx, fmt.Sprintf(
			"INSERT INTO %s (mode, v) VALUES ('pool', $1) RETURNING id, pg_is_in_recovery(), inet_server_port()",
			table), i).Scan(&id, &s.recovery, &s.port); err != nil {
			return err
		}
		if err := onPrimary(s, fmt.Sprintf("pooled write %d", i)); err != nil {
			return err
		}
		var v int
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT v FROM %s WHERE id = $1", table), id).Scan(&v); err != nil || v != i {
			return fmt.Errorf("pooled read of its own write %d (id %d): v = %d, %v", i, id, v, err)
		}
		return nil
	}); err != nil {
		return err
	}
	var n int
	if err := p.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE mode = 'pool'", table)).Scan(&n); err != nil {
		return err
	}
	if n != 20 {
		return fmt.Errorf("20 pooled writes; %d rows", n)
	}
	return nil
}

// Step 1: the table is created on the primary.
func createTable(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, fmt.Sprintf(
		"CREATE TABLE %s (id serial PRIMARY KEY, mode text NOT NULL, v int NOT NULL, body text)", table)); err != nil {
		return err
	}
	var exists bool
	var port int
	if err := conn.QueryRow(ctx, "/* pgsplit:primary */ SELECT to_regclass($1) IS NOT NULL, inet_server_port()",
		table).Scan(&exists, &port); err != nil {
		return err
	}
	if !exists || port != primary {
		return fmt.Errorf("the table should exist on the primary %d; exists %v on port %d", primary, exists, port)
	}
	return nil
}

func dropTable(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
		return err
	}
	var gone bool
	if err := conn.QueryRow(ctx, "/* pgsplit:primary */ SELECT to_regclass($1) IS NULL", table).Scan(&gone); err != nil {
		return err
	}
	if !gone {
		return fmt.Errorf("table %s should be dropped", table)
	}
	return nil
}

func runAll(ctx context.Context) (err error) {
	if primary, err = strconv.Atoi(os.Getenv("PRIMARY_PORT")); err != nil {
		return fmt.Errorf("PRIMARY_PORT: %w", err)
	}
	for _, p := range strings.Split(os.Getenv("REPLICA_PORTS"), ",") {
		port, err := strconv.Atoi(p)
		if err != nil {
			return fmt.Errorf("REPLICA_PORTS: %w", err)
		}
		replicas[port] = true
	}
	config, err := connConfig(modes[0])
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, config)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if err := createTable(ctx, conn); err != nil {
		return fmt.Errorf("DDL: %w", err)
	}
	defer func() {
		if dropErr := dropTable(ctx, conn); dropErr != nil && err == nil {
			err = fmt.Errorf("DROP TABLE: %w", dropErr)
		}
	}()
	for _, m := range modes {
		if err := runMode(ctx, m); err != nil {
			return err
		}
	}
	if err := pool(ctx); err != nil {
		return fmt.Errorf("pgxpool: %w", err)
	}
	return nil
}

func main() {
	time.AfterFunc(240*time.Second, func() { // a hang fails the test instead of blocking it
		fmt.Fprintf(os.Stderr, "%s: FAILED: timed out (a hang)\n", name)
		os.Exit(1)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 230*time.Second)
	defer cancel()
	if err := runAll(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "%s: FAILED: %v\n", name, err)
		os.Exit(1)
	}
	fmt.Printf("OK %s\n", name)
}
