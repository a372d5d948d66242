//! pgsplit: a replication-aware connection proxy for PostgreSQL.
//!
//! Clients speak the Postgres v3 protocol to pgsplit; pgsplit classifies each statement, sends writes and
//! write transactions to the primary and spreads reads over replicas, pooling server connections.
//! `../shared/DESIGN.md` (in the repository's parent) is the map of the modules below.

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod catalog;
pub mod classify;
pub mod client;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod monitor;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod server;
pub mod side;
pub mod sql;
pub mod state;
pub mod stats;
