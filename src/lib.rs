//! pgsplit: a replication-aware connection proxy for PostgreSQL.
//!
//! Clients speak the Postgres v3 protocol to pgsplit; pgsplit classifies each statement, sends writes and
//! write transactions to the primary and spreads reads over replicas, pooling server connections.
//!
//! The modules, each above the ones it uses: [`proxy`] (the listener) → [`client`] (one session per client)
//! and [`admin`] → [`reload`] (SIGHUP, `RELOAD`) → [`state`] (what sessions share, the configuration in force) →
//! [`monitor`], [`catalog`], [`auth_query`] → [`router`], [`pool`],
//! [`server`], [`side`], [`cancel`], [`tls`] → [`classify`], [`config`], [`stats`], [`auth`] → [`sql`], [`protocol`] → [`causal`].
//!
//! The data path: a client frame is split off the socket buffer as raw `Bytes` ([`protocol::Frame`]), decoded once
//! into [`protocol::frontend::Decoded`], answered locally or classified ([`classify::Classifier`]), placed on a
//! server connection the router picks ([`router::Router`], [`pool`]), rewritten only where statement names differ,
//! and sent. Server frames go back byte for byte; only their headers and the few messages bookkeeping needs are
//! read, through the held connection's lease. `docs/ARCHITECTURE.md` has the map and the rules.

pub mod admin;
pub mod auth;
pub mod auth_query;
pub mod cancel;
pub mod catalog;
pub mod causal;
pub mod classify;
pub mod client;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod freshness;
pub mod monitor;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod side;
pub mod sql;
pub mod state;
pub mod stats;
pub mod tls;
