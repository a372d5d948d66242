//! Verifying clients (SCRAM-SHA-256, md5, trust).
pub mod md5;
pub mod scram;

pub use scram::{AuthError, ScramServer, ScramVerifier};
