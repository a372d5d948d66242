//! pgsplit's integration tests, as one test binary: one build, and one shared local cluster (primary + 2
//! streaming replicas, started on first use by [`common::env`]) for every test that does not need its own. Tests
//! that stop, kill or promote servers (failover, the harness's own tests) start their own clusters.
//!
//! One module per area; `cargo test --release -- proxy::isolation` runs one of them.

mod admin;
mod auth_query;
mod classify_corpus;
mod cli;
mod cluster_harness;
mod common;
mod consistency;
mod deploy;
mod drills;
mod drivers;
mod extended;
mod failover;
mod failover_load;
mod prometheus;
mod proxy;
mod reload;
mod routing;
mod sqlx_driver;
mod tls;
