//! Classification cost per statement: cache hit, cache miss on a short SELECT, and a 10-line join.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pgsplit::classify::Classifier;

const JOIN: &str =
    "SELECT o.id, o.created_at, c.name, c.email, sum(li.quantity * li.price) AS total
FROM orders o
JOIN customers c ON c.id = o.customer_id
JOIN line_items li ON li.order_id = o.id
LEFT JOIN shipments s ON s.order_id = o.id
WHERE o.created_at > now() - interval '7 days'
  AND c.region = $1
  AND s.id IS NULL
GROUP BY o.id, o.created_at, c.name, c.email
ORDER BY total DESC LIMIT 50";

fn bench(c: &mut Criterion) {
    let classifier = Classifier::new(&[]);
    classifier.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 4242");
    c.bench_function("classify/cache_hit", |b| {
        b.iter(|| {
            classifier.classify(black_box(
                "SELECT abalance FROM pgbench_accounts WHERE aid = 4242",
            ))
        })
    });
    let mut n = 0u64;
    c.bench_function("classify/miss_short_select", |b| {
        b.iter(|| {
            n += 1;
            // A distinct text each time defeats the cache.
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n}");
            Classifier::new(&[]).classify(black_box(&sql))
        })
    });
    c.bench_function("classify/miss_10_line_join", |b| {
        b.iter(|| Classifier::new(&[]).classify(black_box(JOIN)))
    });
    c.bench_function("classify/fast_path_begin", |b| {
        b.iter(|| classifier.classify(black_box("BEGIN")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
