//! The classifier against SQL as real applications send it (Django, Rails, Hibernate over JDBC, Prisma, pg_dump,
//! psql's backslash commands, pgbench, drivers and job queues) plus the edge cases of every rule in docs/ARCHITECTURE.md §3.
//!
//! Expected routes follow docs/ARCHITECTURE.md's intent, fail closed: a statement is a read only when it surely writes nothing,
//! takes no lock and can run on a replica; everything else, including anything in doubt, is a write. Where the
//! classifier disagrees, the expectation here is kept and the classifier is what must change.
//!
//! Choices made where §3 does not spell the answer out (all on the fail-closed side):
//! - With only `billing.charge` configured, an unqualified `charge(…)` is a write: the search_path may resolve it to
//!   `billing.charge`, and a configured schema-qualified name also matches any unqualified call of its last part.
//! - `currval` / `lastval` are writes: their answer is session state that a replica does not share.
//! - `lowrite` (what pg_dump emits to restore large objects) is a large-object write like `lo_*`.
//! - Plain `EXPLAIN` of a write (no ANALYZE) is not "EXPLAIN of a read": write.
//! - `COPY … TO STDOUT`, `DECLARE … CURSOR`, `FETCH`, `CLOSE` are not in §3's read list: writes.
//! - A `BEGIN`/`START TRANSACTION` with both READ ONLY and READ WRITE is read-write (PostgreSQL applies the modes
//!   in order, the last wins): write.
//! - A SERIALIZABLE transaction cannot start on a hot standby ("cannot use serializable mode in a hot standby"), so
//!   `BEGIN … SERIALIZABLE … READ ONLY` must not be sent to a replica: write.
//! - PostgreSQL block comments nest; a statement hidden after a nested comment is judged by what PostgreSQL runs.
//! - A carriage return ends a `--` comment in PostgreSQL as a newline does; what follows it is a statement.
//! - `SET TRANSACTION … READ ONLY` first in a transaction may take it to a replica (§3), but not with SERIALIZABLE.
//!
//! Every statement is classified by one shared classifier, as in the proxy, and by a fresh one: when they differ, the
//! shared one answered from a decision it had cached for another text.
//!
//! The expectations were checked against a real PostgreSQL 15 hot standby: every expected read runs there (save the
//! hinted ones, which are meant to fail there, and psql 17's `\l`, which needs PostgreSQL 17's catalog), and the
//! surprising writes above fail there or run with side effects as described.
//!
//! The cases live in `classify_corpus/*.txt`, one file per kind of source, one case per line:
//! `route | where it comes from | statement`, where route is `read` or `write`. In the statement, `\n`, `\r`,
//! `\t`, `\0` and `\\` stand for a newline, carriage return, tab, NUL and backslash (so a statement stays on
//! its line and keeps its exact bytes); any other backslash is an error. Lines starting with `#` and blank lines
//! are comments.

use std::path::{Path, PathBuf};

use pgsplit::classify::Classifier;
use pgsplit::classify::Route::{self, Read, Write};

/// One case of the corpus.
struct Case {
    /// The statement as sent.
    sql: String,
    expected: Route,
    /// Where it comes from.
    source: String,
    /// `file:line`, for messages.
    at: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/classify_corpus")
}

/// Every case of every file of the corpus, in file-name order.
fn corpus() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the corpus directory")
        .map(|e| e.expect("a corpus directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus files in {}",
        corpus_dir().display()
    );
    let mut cases = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).expect("a corpus file");
        let before = cases.len();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{name}:{}", n + 1);
            cases.push(parse_case(line, at));
        }
        assert!(cases.len() > before, "{name} has no cases");
    }
    cases
}

/// `route | source | statement`.
fn parse_case(line: &str, at: String) -> Case {
    let mut fields = line.splitn(3, " | ");
    let (Some(route), Some(source), Some(sql)) = (fields.next(), fields.next(), fields.next())
    else {
        panic!("{at}: expected `route | where it comes from | statement`: {line}");
    };
    let expected = match route {
        "read" => Read,
        "write" => Write,
        other => panic!("{at}: route {other:?}: expected read or write"),
    };
    Case {
        sql: unescape(sql).unwrap_or_else(|e| panic!("{at}: {e}")),
        expected,
        source: source.to_string(),
        at,
    }
}

/// Undoes the corpus's escapes (see the module comment).
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('0') => '\0',
            Some('\\') => '\\',
            other => return Err(format!("unknown escape \\{other:?}")),
        });
    }
    Ok(out)
}

#[test]
fn corpus_routes_as_designed() {
    let cases = corpus();
    let write_functions = ["audit_log".to_string(), "billing.charge".to_string()];
    let classifier = Classifier::new(&write_functions);

    let mut seen = std::collections::HashMap::new();
    let duplicates: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            seen.insert(c.sql.as_str(), c.at.as_str())
                .map(|first| format!("{} (also at {first})", c.at))
        })
        .collect();
    assert!(
        duplicates.is_empty(),
        "duplicate corpus entries: {duplicates:?}"
    );

    // Every statement goes through one shared classifier, as in the proxy, so a cached decision can leak from one
    // text to another; a fresh classifier per statement tells such a leak from a wrong rule.
    let mut mismatches = Vec::new();
    for case in &cases {
        let (sql, expected) = (case.sql.as_str(), case.expected);
        let got = classifier.classify(sql);
        let fresh = Classifier::new(&write_functions).classify(sql);
        if got.route != expected || fresh.route != expected {
            let cache = if fresh.route != got.route {
                format!(
                    "; a fresh classifier says {:?} ({}): cached decision of another text",
                    fresh.route,
                    fresh.reason.label()
                )
            } else {
                String::new()
            };
            mismatches.push(format!(
                "  {} [{}] expected {expected:?}, got {:?} (reason {}){cache}:\n      {}",
                case.at,
                case.source,
                got.route,
                got.reason.label(),
                printable(sql)
            ));
        }
    }

    let reads = cases.iter().filter(|c| c.expected == Read).count();
    let writes = cases.iter().filter(|c| c.expected == Write).count();
    println!(
        "corpus: {} statements, {reads} expected reads, {writes} expected writes, {} mismatches",
        cases.len(),
        mismatches.len()
    );
    // 408 cases (113 reads, 295 writes) when the corpus moved into data files: none may get lost.
    assert!(cases.len() >= 408, "corpus too small: {}", cases.len());
    assert!(reads >= 113, "too few reads in the corpus: {reads}");
    assert!(writes >= 295, "too few writes in the corpus: {writes}");

    if !mismatches.is_empty() {
        eprintln!(
            "{} of {} statements routed against docs/ARCHITECTURE.md §3:",
            mismatches.len(),
            cases.len()
        );
        for m in &mismatches {
            eprintln!("{m}");
        }
        panic!("{} misrouted statements (listed above)", mismatches.len());
    }
}

/// The statement with control characters escaped, quotes left alone.
fn printable(sql: &str) -> String {
    sql.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// xorshift64*: deterministic, no crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "INSERT",
    "INTO",
    "UPDATE",
    "DELETE",
    "FROM",
    "WHERE",
    "WITH",
    "RECURSIVE",
    "AS",
    "FOR",
    "NO KEY",
    "SHARE",
    "NOWAIT",
    "SKIP LOCKED",
    "OF",
    "VALUES",
    "TABLE",
    "SHOW",
    "SET",
    "LOCAL",
    "RESET",
    "BEGIN",
    "START TRANSACTION",
    "READ ONLY",
    "READ WRITE",
    "ISOLATION LEVEL",
    "SERIALIZABLE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "EXPLAIN",
    "ANALYZE",
    "VERBOSE",
    "(ANALYZE, BUFFERS)",
    "COPY",
    "STDIN",
    "TO",
    "STDOUT",
    "DO",
    "CALL",
    "LISTEN",
    "NOTIFY",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "LOCK",
    "IN",
    "MODE",
    "UNION",
    "ALL",
    "EXCEPT",
    "INTERSECT",
    "JOIN",
    "LEFT",
    "LATERAL",
    "ON",
    "USING",
    "ORDER BY",
    "GROUP BY",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "FETCH FIRST",
    "ROWS ONLY",
    "RETURNING",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "DISTINCT",
    "ARRAY",
    "CAST",
    "OPERATOR(pg_catalog.~)",
    "COLLATE",
    "MERGE",
    "MATCHED",
    "TEMP",
    "nextval('s')",
    "setval('s', 1)",
    "pg_advisory_lock(1)",
    "pg_catalog.set_config('a', 'b', false)",
    "lo_import('x')",
    "audit_log(1)",
    "billing.charge(2)",
    "count(*)",
    "t",
    "\"t\"",
    "\"public\".\"User\"",
    "u1_0.id",
    "$1",
    "$2",
    "1",
    "0.5",
    "-7",
    "'x'",
    "'it''s'",
    "E'\\n'",
    "$$body$$",
    "$q$ ; $q$",
    "*",
    ",",
    ";",
    "(",
    ")",
    "[",
    "]",
    "::",
    "::int",
    "=",
    "<>",
    "!~",
    "~*",
    "@>",
    "->>",
    "||",
    ".",
    "'",
    "\"",
    "$",
    "$$",
    "$a$",
    "--",
    "\n",
    "/*",
    "*/",
    "/* pgsplit:replica */",
    "/* pgsplit:primary */",
    "-- pgsplit:replica\n",
    "\\",
    "\t",
    "\r\n",
    "\r",
    "é",
    "日本語",
    "\u{1F600}",
    "\u{0}",
    "\u{FEFF}",
    "\u{202E}",
    "ß",
    "Ω",
];

/// Middles for sibling texts: reads, writes and locks of the same shape.
const SIBLING_MIDDLES: &[&str] = &[
    " SELECT 1 ",
    " DELETE FROM t ",
    " SELECT 1 FOR UPDATE ",
    " SELECT nextval('s') ",
    " 1 ",
];

/// What makes lexers disagree: quotes, comment marks (block comments nest in PostgreSQL), line ends.
const LEXICAL: &[&str] = &[
    "'", "''", "E'", "\\", "\"", "$$", "$a$", "$é$", "$1", "--", "/*", "*/", "\n", "\r", " ",
    "SELECT", "x", ";",
];

fn lexical_text(rng: &mut Rng) -> String {
    let parts = rng.below(8);
    (0..parts).map(|_| rng.pick(LEXICAL)).collect()
}

fn random_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    let parts = 1 + rng.below(24);
    for _ in 0..parts {
        match rng.below(10) {
            // Random bytes, lossily decoded.
            0 => {
                let len = rng.below(12);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                s.push_str(&String::from_utf8_lossy(&bytes));
            }
            // A random char anywhere in Unicode.
            1 => {
                let c = char::from_u32(rng.next() as u32 % 0x11_0000).unwrap_or('\u{FFFD}');
                s.push(c);
            }
            // A prefix of a fragment, cut on a char boundary.
            2 => {
                let f = rng.pick(FRAGMENTS);
                let mut cut = rng.below(f.len() + 1);
                while !f.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.push_str(&f[..cut]);
            }
            _ => s.push_str(rng.pick(FRAGMENTS)),
        }
        if rng.below(3) > 0 {
            s.push(' ');
        }
    }
    s
}

/// Set in a child run of this test binary: the stress case it classifies.
const STRESS_CASE_ENV: &str = "PGSPLIT_CLASSIFY_STRESS_CASE";

/// Deep nesting and very long text: (name, statement).
fn stress_cases() -> Vec<(&'static str, String)> {
    const MB: usize = 1 << 20;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    vec![
        ("2000 open parens", "(".repeat(2000)),
        (
            "2000 balanced parens",
            format!("SELECT {}1{}", "(".repeat(2000), ")".repeat(2000)),
        ),
        (
            "2000 nested subqueries",
            format!(
                "{}SELECT 1{}",
                "SELECT * FROM (".repeat(2000),
                ") s".repeat(2000)
            ),
        ),
        (
            "2000 nested calls",
            format!("SELECT {}1{}", "abs(".repeat(2000), ")".repeat(2000)),
        ),
        (
            "2000 nested CTEs",
            format!(
                "{}SELECT 1{}",
                "WITH a AS (".repeat(2000),
                ") SELECT 1".repeat(2000)
            ),
        ),
        ("2000 ARRAY[", format!("SELECT {}", "ARRAY[".repeat(2000))),
        ("100k NOT", format!("SELECT {}true", "NOT ".repeat(100_000))),
        (
            "100k unary minus",
            format!("SELECT {}1", "- ".repeat(100_000)),
        ),
        (
            "1 MB of + terms",
            format!("SELECT 1{}", "+1".repeat(MB / 2)),
        ),
        (
            "1 MB of AND terms",
            format!("SELECT * FROM t WHERE a{}", " AND a".repeat(MB / 6)),
        ),
        (
            "1 MB of casts",
            format!("SELECT 1{}", "::int".repeat(MB / 5)),
        ),
        (
            "1 MB of OR terms (an ORM filter over many ids)",
            format!(
                "SELECT * FROM t WHERE {}id = 0",
                "id = 1 OR ".repeat(MB / 10)
            ),
        ),
        (
            "1 MB of || concatenations",
            format!("SELECT 'a'{}", " || 'a'".repeat(MB / 7)),
        ),
        (
            "100k UNION ALL arms",
            format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(100_000)),
        ),
        (
            "1 MB IN list",
            format!("SELECT * FROM t WHERE id IN (1{})", ",1".repeat(MB / 2)),
        ),
        (
            "1 MB string literal",
            format!("SELECT '{}'", "x".repeat(MB)),
        ),
        ("1 MB comment", format!("/*{}*/ SELECT 1", " ".repeat(MB))),
        (
            "1 MB unterminated comment",
            format!("/*{}", "/*".repeat(MB / 2)),
        ),
        ("1 MB of semicolons", ";".repeat(MB)),
        ("1 MB of statements", "SELECT 1; ".repeat(MB / 10)),
        (
            "1 MB of random text",
            (0..)
                .map(|_| random_text(&mut rng))
                .take_while({
                    let mut total = 0;
                    move |s| {
                        total += s.len();
                        total <= MB
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}

/// Classifies on a thread with tokio's default worker stack (2 MiB), as the proxy does, so that recursion that
/// only fits a bigger main-thread stack is caught. A stack overflow aborts the process, naming this thread.
fn classify_on_worker_stack(name: &'static str, sql: String) {
    std::thread::Builder::new()
        .name(format!("classify {name}"))
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let classifier = Classifier::new(&["audit_log".to_string()]);
            let first = classifier.classify(&sql);
            let again = classifier.classify(&sql);
            assert!(matches!(first.route, Read | Write));
            assert_eq!(first, again, "a cached decision differs for {name}");
        })
        .expect("spawn classifier thread")
        .join()
        .unwrap_or_else(|_| panic!("the classifier panicked on {name}"));
}

#[test]
fn classifier_never_panics_on_arbitrary_text() {
    if let Ok(name) = std::env::var(STRESS_CASE_ENV) {
        // A child run for one stress case (see below).
        let (name, sql) = stress_cases()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("a known stress case");
        classify_on_worker_stack(name, sql);
        return;
    }
    let write_functions = ["audit_log".to_string(), "billing.charge".to_string()];
    let classifier = Classifier::new(&write_functions);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut panicked = Vec::new();
    let mut leaked = Vec::new();
    let mut check = |label: String, sql: &str| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let first = classifier.classify(sql);
            let again = classifier.classify(sql);
            assert!(matches!(first.route, Read | Write));
            assert_eq!(first, again, "a cached decision differs");
            first.route
        }));
        let shown = sql.chars().take(300).collect::<String>();
        match result {
            Err(_) => panicked.push(format!("  {label}: {shown:?}")),
            Ok(route) => {
                // A fresh classifier has no cache: a different route means a decision cached for another text.
                // A cached Write where a fresh parse says Read only loses a replica read (sqlparser accepts or
                // rejects some literals in odd positions, e.g. as aliases, that PostgreSQL rejects anyway); a
                // cached Read where a fresh parse says Write would be a misrouted write.
                let fresh = Classifier::new(&write_functions).classify(sql).route;
                if fresh == Write && route == Read {
                    leaked.push(format!(
                        "  {label}: shared {route:?}, fresh {fresh:?}: {shown:?}"
                    ));
                }
            }
        }
    };
    for i in 0..20_000 {
        let sql = random_text(&mut rng);
        check(format!("random #{i}"), &sql);
    }
    // Siblings that differ only in their middle: if the cache key mistakes the middle for a literal, a read and a
    // write end up sharing one cached decision.
    for i in 0..2_000 {
        let (prefix, suffix) = (lexical_text(&mut rng), lexical_text(&mut rng));
        for middle in SIBLING_MIDDLES {
            check(
                format!("sibling #{i}"),
                &format!("{prefix}{middle}{suffix}"),
            );
        }
    }
    // Deep nesting and very long text. Each runs in a child process (this test binary, filtered to this test),
    // because a stack overflow aborts the whole process instead of panicking.
    let exe = std::env::current_exe().expect("test binary path");
    let mut overflowed = Vec::new();
    for (name, _) in stress_cases() {
        let out = std::process::Command::new(&exe)
            .args([
                "classify_corpus::classifier_never_panics_on_arbitrary_text",
                "--exact",
                "--test-threads=1",
            ])
            .env(STRESS_CASE_ENV, name)
            .output()
            .expect("run the test binary for one stress case");
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .find(|l| l.contains("overflowed its stack") || l.contains("panicked"))
                .unwrap_or("failed")
                .to_string();
            overflowed.push(format!("  {name}: {} ({why})", out.status));
        } else {
            // The filter names this test by its path in the one test binary: a child that matched no test
            // would pass without classifying anything.
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("1 passed"),
                "the child run for {name} ran no test:\n{stdout}"
            );
        }
    }

    let mut report = String::new();
    for (what, list) in [
        ("the classifier panicked on", &panicked),
        (
            "the shared classifier answered with a decision cached for another text on",
            &leaked,
        ),
        (
            "the classifier crashed (on a 2 MiB stack, as a tokio worker has) on",
            &overflowed,
        ),
    ] {
        if !list.is_empty() {
            report.push_str(&format!(
                "{what} {} inputs:\n{}\n",
                list.len(),
                list.join("\n")
            ));
        }
    }
    assert!(report.is_empty(), "{report}");
}
