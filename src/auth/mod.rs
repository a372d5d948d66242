//! Verifying clients (SCRAM-SHA-256, md5, trust).
pub mod md5;
pub mod scram;

pub use scram::client::{ScramClient, ScramClientError, ScramKeys};
pub use scram::{AuthError, ClientKey, ScramServer, ScramVerifier};

/// Constant-time equality of two secrets (password hashes, proofs, tokens): every byte is compared whatever the
/// first difference, and `black_box` keeps the compiler from turning the loop into an early exit. Only the
/// (public) lengths leak.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"Secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
