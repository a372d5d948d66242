//! Lag computation: one probe result recorded (LSN history, lag in bytes and time, eligibility with
//! hysteresis, role check) for a primary and two replicas, as the monitor does every probe interval.
//!
//! `cargo bench --bench lag`. No servers: probe results are made up, with the primary's LSN moving on.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pgsplit::config::Config;
use pgsplit::monitor::{Monitor, Probe};
use pgsplit::router::Router;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
[primary]
name = "primary"
host = "127.0.0.1"
port = 5432
[[replicas]]
name = "replica1"
host = "127.0.0.1"
port = 5433
[[replicas]]
name = "replica2"
host = "127.0.0.1"
port = 5434
[[databases]]
name = "app"
[[users]]
name = "app"
password = "secret"
"#;

fn primary_probe(lsn: u64) -> Probe {
    Probe {
        in_recovery: false,
        current_lsn: Some(lsn),
        receive_lsn: None,
        replay_lsn: None,
        replay_paused: false,
        receiver_up: false,
    }
}

fn replica_probe(lsn: u64) -> Probe {
    Probe {
        in_recovery: true,
        current_lsn: None,
        receive_lsn: Some(lsn),
        replay_lsn: Some(lsn),
        replay_paused: false,
        receiver_up: true,
    }
}

fn bench(c: &mut Criterion) {
    let config = Config::from_toml_str(CONFIG, "<bench>").expect("config");
    let router = Router::new(&config);
    let monitor = Monitor::new(&config);
    let latency = Duration::from_micros(300);
    let mut lsn = 0x1_0000_0000u64;
    // Fill the LSN history as a running monitor would have it.
    for _ in 0..64 {
        lsn += 8192;
        monitor.record(0, Ok(primary_probe(lsn)), latency, &router);
        monitor.record(1, Ok(replica_probe(lsn - 8192)), latency, &router);
        monitor.record(2, Ok(replica_probe(lsn - 16384)), latency, &router);
    }
    let mut g = c.benchmark_group("lag");
    g.bench_function("record_primary_probe", |b| {
        b.iter(|| {
            lsn += 8192;
            black_box(monitor.record(0, Ok(primary_probe(lsn)), latency, &router))
        })
    });
    g.bench_function("record_replica_probe", |b| {
        b.iter(|| black_box(monitor.record(1, Ok(replica_probe(lsn - 65536)), latency, &router)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
