<?php
// PHP PDO (pdo_pgsql) through pgsplit, in three modes: native prepares (named server-side statements
// pdo_stmt_XXXXXXXX, dropped with a DEALLOCATE when the PHP statement object is destroyed), emulated prepares
// (values interpolated client-side, simple queries) and PDO::PGSQL_ATTR_DISABLE_PREPARES (unnamed statements).
// Each mode checks DDL and writes on the primary, autocommit reads on both replicas, read-your-writes, a
// rolled-back savepoint, a read-only transaction on a replica, prepared statements that follow the client
// between servers (200 prepare/execute/destroy cycles in autocommit, 50 in a transaction), a 1 MB parameter, an
// error in a transaction (23505 then 25P02) and recovery, and COPY with pgsqlCopyFromArray/pgsqlCopyToArray.
//
// Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK pdo_test.php`.

declare(strict_types=1);

const NAME = 'pdo_test.php';
const WHERE = 'SELECT pg_is_in_recovery() AS r, inet_server_port() AS p';
const READ = 'SELECT ?::int AS v, pg_is_in_recovery() AS r, inet_server_port() AS p';

// A hang ends the script by SIGALRM (no handler: PHP could not run one while blocked in libpq).
pcntl_alarm(240);

$url = parse_url(getenv('DATABASE_URL'));
define('DSN', sprintf('pgsql:host=%s;port=%d;dbname=%s;connect_timeout=10',
    $url['host'], $url['port'], ltrim($url['path'], '/')));
define('USER', urldecode($url['user']));
define('PASSWORD', urldecode($url['pass']));
define('PRIMARY', (int) getenv('PRIMARY_PORT'));
define('REPLICAS', array_map('intval', explode(',', getenv('REPLICA_PORTS'))));

const MODES = [
    'emulated prepares' => [PDO::ATTR_EMULATE_PREPARES => true],
    'PGSQL_ATTR_DISABLE_PREPARES' => [PDO::ATTR_EMULATE_PREPARES => false, PDO::PGSQL_ATTR_DISABLE_PREPARES => true],
    'native prepares' => [PDO::ATTR_EMULATE_PREPARES => false],
];

function fail(string $what): never
{
    global $step;
    fwrite(STDERR, NAME . ": FAILED: $step: $what\n");
    exit(1);
}

function expect(bool $cond, string $what): void
{
    if (!$cond) {
        fail($what);
    }
}

/** Runs one named step; a driver error in it fails the script with the step's name. */
function step(string $what, callable $fn): void
{
    global $step;
    $step = $what;
    try {
        $fn();
    } catch (PDOException $e) {
        fail("PDOException [{$e->getCode()}] {$e->getMessage()}");
    }
}

/** The SQLSTATE `$fn` fails with (checked to agree between getCode() and errorInfo), or null if it succeeds. */
function sqlstate(callable $fn): ?string
{
    try {
        $fn();
    } catch (PDOException $e) {
        expect($e->errorInfo[0] === $e->getCode(),
            "errorInfo[0] {$e->errorInfo[0]} should equal getCode() {$e->getCode()}");
        return $e->getCode();
    }
    return null;
}

function show($row): string
{
    return json_encode($row);
}

function on_primary(array|false $row, string $what): void
{
    expect($row !== false && $row['r'] === false && $row['p'] === PRIMARY,
        "$what: should run on the primary " . PRIMARY . '; got ' . show($row));
}

/** Checks that `$row` came from a replica and returns the replica's port. */
function on_replica(array|false $row, string $what): int
{
    expect($row !== false && $row['r'] === true && in_array($row['p'], REPLICAS, true),
        "$what: should run on a replica " . show(REPLICAS) . '; got ' . show($row));
    return $row['p'];
}

/**
 * Waits until reads reach both replicas again after the client's own write: until a replica has replayed the
 * commit, read-your-writes sends reads elsewhere (to a replica that has, or after routing.causal_wait, 20 ms, to
 * the primary). Reads after this are checked to run on replicas.
 */
function settle(PDO $db): void
{
    $where = $db->prepare(WHERE); // one statement, executed again and again: each read is one unit of work
    $seen = [];
    $deadline = microtime(true) + 5;
    while (count($seen) < count(REPLICAS) && microtime(true) < $deadline) {
        $where->execute();
        $row = $where->fetch();
        if ($row['r'] === true) {
            $seen[$row['p']] = true;
        }
        usleep(5000);
    }
    expect(count($seen) === count(REPLICAS), 'reads did not reach both replicas within 5 s of the last write; saw '
        . show(array_keys($seen)));
}

function both_replicas(array $seen, string $what): void
{
    $seen = array_values(array_unique($seen));
    sort($seen);
    $want = REPLICAS;
    sort($want);
    expect($seen === $want, "$what should reach both replicas " . show($want) . '; saw ' . show($seen));
}

function connect(array $attrs): PDO
{
    return new PDO(DSN, USER, PASSWORD, $attrs + [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_DEFAULT_FETCH_MODE => PDO::FETCH_ASSOC,
    ]);
}

function ids(PDO $db, string $table, string $where): array
{
    return $db->query("SELECT id FROM $table WHERE $where ORDER BY id")->fetchAll(PDO::FETCH_COLUMN);
}

function run_mode(string $mode, array $attrs): void
{
    $db = null;
    step("$mode: connect", function () use (&$db, $attrs) {
        $db = connect($attrs);
    });
    $table = 'drv_pdo_' . bin2hex(random_bytes(6));

    step("$mode: DDL", function () use ($db, $table) {
        $db->exec("CREATE TABLE $table (id int PRIMARY KEY, v text NOT NULL)");
        $row = $db->query("/* pgsplit:primary */ SELECT to_regclass('$table') IS NOT NULL AS r, inet_server_port() AS p")
            ->fetch();
        expect($row === ['r' => true, 'p' => PRIMARY], "CREATE TABLE: the table is on the primary; got " . show($row));
    });
    try {
        run_steps($mode, $db, $table, $attrs[PDO::ATTR_EMULATE_PREPARES]);
    } finally {
        step("$mode: DROP TABLE", function () use ($db, $table) {
            $db->exec("DROP TABLE IF EXISTS $table");
            $gone = $db->query("/* pgsplit:primary */ SELECT to_regclass('$table') IS NULL")->fetchColumn();
            expect($gone === true, "table $table should be dropped");
        });
    }
}

/** `$inlined`: emulated prepares, which put parameter values into the query text. */
function run_steps(string $mode, PDO $db, string $table, bool $inlined): void
{
    $insert = "INSERT INTO $table (id, v) VALUES (?, ?) RETURNING inet_server_port() AS p";

    step("$mode: writes on the primary", function () use ($db, $table, $insert) {
        $ins = $db->prepare($insert);
        for ($i = 1; $i <= 10; $i++) {
            $ins->execute([$i, "v$i"]);
            $port = $ins->fetchColumn();
            expect($port === PRIMARY, "INSERT $i should run on the primary " . PRIMARY . "; got $port");
        }
        $upd = $db->prepare("UPDATE $table SET v = v || ? WHERE id <= ? RETURNING inet_server_port()");
        $upd->execute(['!', 5]);
        $ports = $upd->fetchAll(PDO::FETCH_COLUMN);
        expect($ports === array_fill(0, 5, PRIMARY), 'UPDATE of 5 rows on the primary; got ' . show($ports));
        $n = $db->exec("UPDATE $table SET v = v || '?' WHERE id > 5");
        expect($n === 5, "exec() of an UPDATE reports 5 rows; got $n");
        $rows = $db->query("/* pgsplit:primary */ SELECT string_agg(v, ',' ORDER BY id) FROM $table")->fetchColumn();
        expect($rows === 'v1!,v2!,v3!,v4!,v5!,v6?,v7?,v8?,v9?,v10?', "table after the writes: $rows");
    });

    step("$mode: autocommit reads on replicas", function () use ($db, $table) {
        // One-off query() calls alternate with a reused statement: with native prepares a query() is a Parse, a
        // Bind and a DEALLOCATE (sent to the primary), so one-off reads alone would always meet the same replica
        // of the test's strict round robin.
        $count = $db->prepare("SELECT count(*) AS n, pg_is_in_recovery() AS r, inet_server_port() AS p, ?::int AS i FROM $table");
        settle($db);
        $seen = [];
        for ($i = 0; $i < 40; $i++) {
            if ($i % 2 === 0) {
                $row = $db->query("SELECT count(*) AS n, pg_is_in_recovery() AS r, inet_server_port() AS p, $i AS i FROM $table")
                    ->fetch();
            } else {
                $count->execute([$i]);
                $row = $count->fetch();
            }
            expect($row['n'] === 10 && $row['i'] === $i, "read $i: 10 rows; got " . show($row));
            $seen[] = on_replica($row, "autocommit read $i");
        }
        both_replicas($seen, '40 autocommit reads');
    });

    step("$mode: read-your-writes", function () use ($db, $table, $insert) {
        $ins = $db->prepare($insert);
        for ($i = 0; $i < 20; $i++) {
            $id = 100 + $i;
            $ins->execute([$id, "ryw$i"]);
            $sel = $db->prepare("SELECT v FROM $table WHERE id = ?");
            $sel->execute([$id]);
            $v = $sel->fetchColumn();
            expect($v === "ryw$i", "round $i: the row just inserted should be read back; got " . show($v));
            $n = $db->query("SELECT count(*) FROM $table WHERE id >= 100")->fetchColumn();
            expect($n === $i + 1, "round $i: count of rows inserted so far should be " . ($i + 1) . "; got $n");
        }
    });

    step("$mode: statements destroyed inside a transaction", function () use ($db, $table, $insert) {
        // With native prepares each destroyed statement sends `DEALLOCATE pdo_stmt_...` (errors ignored) inside
        // the transaction: it must neither fail nor abort the transaction.
        expect($db->beginTransaction(), 'beginTransaction');
        for ($i = 0; $i < 3; $i++) {
            $ins = $db->prepare($insert);
            $ins->execute([150 + $i, "destroyed $i"]);
            expect($ins->fetchColumn() === PRIMARY, "write $i in the transaction on the primary");
            unset($ins);
            $n = null;
            $code = sqlstate(function () use ($db, $table, &$n) {
                $n = $db->query("SELECT count(*) FROM $table WHERE id >= 150 AND id < 160")->fetchColumn();
            });
            expect($code === null, "the read after destroying write statement $i failed with $code: the statement's "
                . 'DEALLOCATE aborted the transaction');
            expect($n === $i + 1, "after destroying write statement $i the transaction sees " . ($i + 1) . " rows; got $n");
        }
        expect($db->commit(), 'commit');
        $ids = ids($db, $table, 'id >= 150 AND id < 160');
        expect($ids === [150, 151, 152], 'after COMMIT the table holds ids [150, 151, 152]; got ' . show($ids));
    });

    step("$mode: savepoint rolled back in a committed transaction", function () use ($db, $table, $insert) {
        expect($db->beginTransaction(), 'beginTransaction');
        $ins = $db->prepare($insert);
        $ins->execute([200, 'before savepoint']);
        $db->exec('SAVEPOINT sp');
        $ins->execute([201, 'rolled back']);
        $n = $db->query("SELECT count(*) FROM $table WHERE id IN (200, 201)")->fetchColumn();
        expect($n === 2, "both rows visible before ROLLBACK TO SAVEPOINT; got $n");
        $db->exec('ROLLBACK TO SAVEPOINT sp');
        $ins->execute([202, 'after rollback to savepoint']);
        on_primary($db->query(WHERE)->fetch(), 'a read after ROLLBACK TO SAVEPOINT');
        expect($db->inTransaction(), 'still in the transaction after ROLLBACK TO SAVEPOINT');
        expect($db->commit(), 'commit');
        $ids = ids($db, $table, 'id >= 200');
        expect($ids === [200, 202], 'after COMMIT the table holds ids [200, 202]; got ' . show($ids));
    });

    step("$mode: read-only transaction on a replica", function () use ($db, $table, $insert) {
        settle($db);
        $db->exec('BEGIN READ ONLY');
        expect($db->inTransaction(), 'inTransaction() after BEGIN READ ONLY');
        $port = on_replica($db->query(WHERE)->fetch(), 'first read of a read-only transaction');
        $n = $db->query("SELECT count(*) FROM $table")->fetchColumn();
        expect($n === 35, "read-only transaction counts 35 rows; got $n");
        $row = $db->query(WHERE)->fetch();
        expect($row === ['r' => true, 'p' => $port], "later read of the read-only transaction on replica $port; got " . show($row));
        $code = sqlstate(fn () => $db->prepare($insert)->execute([300, 'read-only']));
        expect($code === '25006', "a write in a read-only transaction fails with 25006; got " . show($code));
        expect($db->rollBack(), 'rollBack');
        expect(!$db->inTransaction(), 'not in a transaction after rollBack()');
        expect(ids($db, $table, 'id = 300') === [], 'the refused write left no row');
    });

    step("$mode: a prepared read reused while the client moves between servers", function () use ($db, $table, $insert) {
        $read = $db->prepare(READ);
        settle($db);
        $seen = [];
        for ($i = 0; $i < 40; $i++) {
            $read->execute([$i]);
            $row = $read->fetch();
            expect($row['v'] === $i, "prepared read $i: got " . show($row));
            $seen[] = on_replica($row, "prepared read $i");
        }
        both_replicas($seen, '40 executions of one prepared read');

        // The same statement in a transaction: on the primary.
        $db->beginTransaction();
        $read->execute([41]);
        $row = $read->fetch();
        expect($row === ['v' => 41, 'r' => false, 'p' => PRIMARY], 'prepared read in a transaction: on the primary; got ' . show($row));
        $ins = $db->prepare($insert);
        $ins->execute([400, 'in transaction']);
        expect($ins->fetchColumn() === PRIMARY, 'prepared write in a transaction on the primary');
        $db->commit();
    });

    step("$mode: a statement prepared as a transaction's first statement, reused after COMMIT", function () use ($db) {
        // Native prepares: its Parse (PQprepare) is the first statement after BEGIN, so it starts the transaction
        // on the primary; its later executions in autocommit are reads like any other.
        $db->beginTransaction();
        $late = $db->prepare(READ);
        $late->execute([-1]);
        on_primary($late->fetch(), 'statement first executed in a transaction');
        $db->commit();
        settle($db);
        $seen = [];
        for ($i = 0; $i < 20; $i++) {
            $late->execute([$i]);
            $row = $late->fetch();
            expect($row['v'] === $i, "statement prepared in a transaction, read $i: got " . show($row));
            $seen[] = on_replica($row, "statement prepared in a transaction, autocommit read $i");
        }
        both_replicas($seen, 'a statement prepared in a transaction, then 20 autocommit reads');
        for ($i = 0; $i < 4; $i++) {
            on_replica($db->query(WHERE)->fetch(), "one-off read $i after them");
        }
    });

    step("$mode: 200 prepare/execute/destroy cycles in autocommit", function () use ($db) {
        // Each statement is executed twice: with native prepares a cycle is then a Parse and two Binds on replicas
        // (and a DEALLOCATE), so its executions do not always meet the same replica of the strict round robin.
        settle($db);
        $seen = [];
        for ($i = 0; $i < 200; $i++) {
            $st = $db->prepare(READ);
            foreach ([$i, -$i] as $v) {
                $st->execute([$v]);
                $row = $st->fetch();
                expect($row['v'] === $v, "cycle $i, value $v: got " . show($row));
                $seen[] = on_replica($row, "cycle $i, value $v");
            }
            unset($st); // native prepares: DEALLOCATE pdo_stmt_...
        }
        both_replicas($seen, '200 prepare/execute/destroy cycles');
    });

    step("$mode: 50 prepare/execute/destroy cycles inside a transaction", function () use ($db, $table, $insert) {
        $db->beginTransaction();
        for ($i = 0; $i < 50; $i++) {
            $st = $db->prepare($insert);
            $st->execute([500 + $i, "cycle $i"]);
            expect($st->fetchColumn() === PRIMARY, "cycle $i: write in a transaction on the primary");
            unset($st);
            $st = $db->prepare(READ);
            $st->execute([$i]);
            $row = $st->fetch();
            expect($row === ['v' => $i, 'r' => false, 'p' => PRIMARY], "cycle $i: read in a transaction; got " . show($row));
            unset($st);
        }
        $db->commit();
        $n = $db->query("SELECT count(*) FROM $table WHERE id BETWEEN 500 AND 549")->fetchColumn();
        expect($n === 50, "50 rows committed by the cycles; got $n");
    });

    step("$mode: a 1 MB parameter", function () use ($db, $table, $inlined) {
        $big = substr(str_repeat("ab'c\\d\"e ", 1 << 17), 0, 1 << 20); // quotes and backslashes: emulation escapes
        $md5 = md5($big);
        settle($db);
        $st = $db->prepare('SELECT length(?::text) AS n, md5(?::text) AS m, pg_is_in_recovery() AS r');
        $st->execute([$big, $big]);
        $row = $st->fetch();
        // Inlined, the value makes a query text over 1 MiB, which pgsplit does not parse: it goes to the primary.
        $where = $inlined ? 'on the primary (query text over 1 MiB)' : 'on a replica';
        expect($row === ['n' => 1 << 20, 'm' => $md5, 'r' => !$inlined], "1 MB parameter read $where; got " . show($row));
        $ins = $db->prepare("INSERT INTO $table (id, v) VALUES (?, ?) RETURNING length(v)");
        $ins->execute([600, $big]);
        expect($ins->fetchColumn() === 1 << 20, '1 MB parameter inserted whole');
        $sel = $db->prepare("SELECT v FROM $table WHERE id = ?");
        $sel->execute([600]);
        $back = $sel->fetchColumn();
        expect(is_string($back) && strlen($back) === 1 << 20 && $back === $big,
            '1 MB value read back equal; got length ' . (is_string($back) ? strlen($back) : show($back)));
    });

    step("$mode: an error in a transaction, 25P02, rollBack, recovery", function () use ($db, $table, $insert) {
        $db->beginTransaction();
        $ins = $db->prepare($insert);
        $ins->execute([700, 'doomed']);
        $code = sqlstate(fn () => $ins->execute([700, 'duplicate']));
        expect($code === '23505', 'a duplicate key fails with 23505; got ' . show($code));
        $code = sqlstate(fn () => $db->query(WHERE));
        expect($code === '25P02', 'the next statement in the failed transaction: 25P02; got ' . show($code));
        $code = sqlstate(fn () => $ins->execute([701, 'also doomed']));
        expect($code === '25P02', 'the prepared write in the failed transaction: 25P02; got ' . show($code));
        expect($ins->errorInfo()[0] === '25P02', 'errorInfo() of the failed statement: ' . show($ins->errorInfo()));
        expect($db->errorInfo()[0] === '25P02', 'errorInfo() of the connection: ' . show($db->errorInfo()));
        expect($db->rollBack(), 'rollBack');
        settle($db);
        on_replica($db->query(WHERE)->fetch(), 'a read after the rollback');
        $ins->execute([702, 'after recovery']);
        expect($ins->fetchColumn() === PRIMARY, 'a write after the rollback on the primary');
        $ids = ids($db, $table, 'id >= 700');
        expect($ids === [702], 'after the rollback only id 702 exists at >= 700; got ' . show($ids));
    });

    step("$mode: COPY with pgsqlCopyFromArray and pgsqlCopyToArray", function () use ($db, $table) {
        $rows = array_map(fn ($i) => "$i\tcopied $i", range(800, 899));
        expect($db->pgsqlCopyFromArray($table, $rows, "\t", '\\N', 'id, v'), 'pgsqlCopyFromArray');
        $n = $db->query("SELECT count(*) FROM $table WHERE v LIKE 'copied %'")->fetchColumn();
        expect($n === 100, "100 rows copied in, read right after; got $n");
        $out = $db->pgsqlCopyToArray($table, "\t", '\\N', 'id, v');
        expect(is_array($out), 'pgsqlCopyToArray');
        $copied = array_values(array_filter($out, fn ($l) => str_contains($l, "\tcopied ")));
        sort($copied);
        expect($copied === array_map(fn ($l) => "$l\n", $rows), 'the copied rows come back from COPY TO; got '
            . count($copied) . ' of ' . count($out) . ' lines');
        settle($db);
        on_replica($db->query(WHERE)->fetch(), 'a read after COPY');
    });
}

foreach (MODES as $mode => $attrs) {
    run_mode($mode, $attrs);
}
echo 'OK ' . NAME . "\n";
