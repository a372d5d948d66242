//! PostgreSQL's legacy md5 password authentication (AuthenticationMD5Password).
//!
//! The client answers with `"md5" + hex(md5(hex(md5(password + user)) + salt))`.

use md5::{Digest, Md5};

/// The random 4-byte salt sent in AuthenticationMD5Password.
pub fn random_salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::fill(&mut salt[..]);
    salt
}

/// The `md5<32 hex>` secret PostgreSQL stores in `pg_authid.rolpassword` for `user`/`password`.
pub fn hash_password(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// True when `response` (the PasswordMessage payload, without the trailing NUL) equals
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`. Constant-time comparison.
pub fn verify(user: &str, password: &str, salt: [u8; 4], response: &[u8]) -> bool {
    verify_hashed(&hash_password(user, password), salt, response)
}

/// Like [`verify`], but from the stored secret `md5<32 hex>` (see [`hash_password`]) instead
/// of the plaintext password. A malformed `stored` never matches.
pub fn verify_hashed(stored: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let Some(inner) = stored.strip_prefix("md5") else {
        return false;
    };
    if inner.len() != 32 || !inner.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let mut h = Md5::new();
    // Clients hash the lowercase hex form.
    h.update(inner.to_ascii_lowercase().as_bytes());
    h.update(salt);
    let expected = format!("md5{}", hex(&h.finalize()));
    super::constant_time_eq(expected.as_bytes(), response)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::md5_hash;

    #[test]
    fn known_vector() {
        let expected = md5_hash(b"md5user", b"secret", [1, 2, 3, 4]);
        assert!(expected.starts_with("md5") && expected.len() == 35);
        assert!(verify(
            "md5user",
            "secret",
            [1, 2, 3, 4],
            expected.as_bytes()
        ));
        assert!(!verify(
            "md5user",
            "secret",
            [1, 2, 3, 5],
            expected.as_bytes()
        ));
        assert!(!verify(
            "md5user",
            "Secret",
            [1, 2, 3, 4],
            expected.as_bytes()
        ));
        assert!(!verify(
            "other",
            "secret",
            [1, 2, 3, 4],
            expected.as_bytes()
        ));
        let stored = hash_password("md5user", "secret");
        assert!(verify_hashed(&stored, [1, 2, 3, 4], expected.as_bytes()));
        assert!(verify_hashed(
            &stored.to_ascii_uppercase().replacen("MD5", "md5", 1),
            [1, 2, 3, 4],
            expected.as_bytes()
        ));
    }

    #[test]
    fn matches_postgres_protocol_for_various_inputs() {
        for (user, pw) in [("u", ""), ("", "p"), ("üser", "pässwörd"), ("a b", "c,d")] {
            let salt = random_salt();
            let resp = md5_hash(user.as_bytes(), pw.as_bytes(), salt);
            assert!(verify(user, pw, salt, resp.as_bytes()));
        }
    }

    #[test]
    fn malformed_responses_and_secrets() {
        let salt = [9, 8, 7, 6];
        let good = md5_hash(b"u", b"p", salt);
        for bad in [
            &b""[..],
            b"md5",
            &good.as_bytes()[..34],
            format!("{good}0").as_bytes(),
            good.to_ascii_uppercase().as_bytes(),
            &[0xff; 35],
        ] {
            assert!(!verify("u", "p", salt, bad));
        }
        for stored in [
            "",
            "md5",
            "md5xyz",
            "plain",
            &format!("md5{}", "g".repeat(32)),
        ] {
            assert!(!verify_hashed(stored, salt, good.as_bytes()));
        }
    }
}
