//! Fault drills: a mixed load of many clients through pgsplit ([`Load`]) records every outcome in a [`Ledger`]
//! (each write by its unique id: acknowledged, failed or unknown; each read with the server that answered it);
//! after a fault and its recovery, [`check`] compares the ledger with the primary's rows and with pgsplit's own
//! eligibility transitions (`/status`) and returns a [`Report`] (one-line summary, assertions).
//!
//! Layout: `ledger.rs` (what is recorded), `load.rs` (the clients and the primary's WAL sampler), `status.rs`
//! (pgsplit's `/status` over HTTP), `check.rs` (the checks and the report), `runner.rs` (the drills: fault,
//! wait, recover, check).

mod check;
mod ledger;
mod load;
mod runner;
mod status;

pub use check::{check, Expect, Report, Window};
pub use ledger::{lsn, now_ms, Ledger, Outcome, Read, ReadError, Write, WriteKind};
pub use load::{Load, LoadOptions, TABLE_SQL};
pub use runner::{Drills, ReplicaFault, Timing};
pub use status::{fetch_status, wait_eligible, ServerState, Transition};
