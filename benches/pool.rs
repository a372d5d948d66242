//! Pool checkout + check-in, alone and under contention, against a real local primary.
//!
//! `cargo bench --bench pool`. One primary (no replicas) is started with the cluster harness
//! (`pgsplit-harness`); a pool of 8 server connections is filled once, then each iteration is one checkout
//! (liveness check included) and one release. "contended" runs 32 tasks over the 8 connections on a 2-worker
//! runtime, so most checkouts wait for a release; the time reported is per checkout, all tasks together.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pgsplit::pool::{Pool, PoolTimeouts};
use pgsplit::server::ServerTarget;
use pgsplit_harness::{Cluster, ClusterOptions};

const POOL_SIZE: usize = 8;

fn bench(c: &mut Criterion) {
    let cluster = match Cluster::start(ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    }) {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("pool bench skipped: no local PostgreSQL cluster ({e})");
            return;
        }
    };
    let target = ServerTarget {
        server: "primary".into(),
        address: format!("127.0.0.1:{}", cluster.primary().port),
        user: "postgres".into(),
        credential: Default::default(),
        database: "postgres".into(),
        tls: std::sync::Arc::new(pgsplit::tls::ServerTls::disabled()),
    };
    let timeouts = PoolTimeouts {
        connect: Duration::from_secs(5),
        wait: Duration::from_secs(5),
        idle: Duration::ZERO,
        lifetime: Duration::ZERO,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = Pool::new(target, POOL_SIZE, timeouts);
    // Open every connection once, so the iterations measure hand-out and check-in, not logins.
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            held.push(pool.checkout().await.expect("checkout"));
        }
        held.into_iter().for_each(|c| c.release());
    });

    let mut g = c.benchmark_group("pool");
    g.bench_function("checkout_release_uncontended", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    pool.checkout().await.expect("checkout").release();
                }
                started.elapsed()
            })
        })
    });
    g.bench_function("checkout_release_32_tasks_8_conns", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let tasks = 32u64;
                let per_task = iters.div_ceil(tasks);
                let started = Instant::now();
                let handles: Vec<_> = (0..tasks)
                    .map(|_| {
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                let conn = pool.checkout().await.expect("checkout");
                                tokio::task::yield_now().await;
                                conn.release();
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.await.expect("task");
                }
                started
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * tasks) as f64)
            })
        })
    });
    g.finish();
    drop(cluster);
}

criterion_group!(benches, bench);
criterion_main!(benches);
