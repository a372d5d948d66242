//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it.
//!
//! Everything here is I/O-free: [`ScramServer`] consumes the payloads of the client's
//! SASLInitialResponse / SASLResponse messages and returns the payloads pgsplit sends back in
//! AuthenticationSASLContinue / AuthenticationSASLFinal. Channel binding (`SCRAM-SHA-256-PLUS`)
//! is not offered.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The only SASL mechanism pgsplit offers to clients.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Iteration count used for verifiers derived by pgsplit (PostgreSQL's default).
const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length used for verifiers derived by pgsplit (PostgreSQL's default).
const DEFAULT_SALT_LEN: usize = 16;
/// Raw length of the server nonce before base64 (PostgreSQL's `SCRAM_RAW_NONCE_LEN`).
const SERVER_NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

/// Why a client's authentication exchange was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The client sent a malformed or out-of-order SASL message (SQLSTATE 08P01).
    #[error("malformed SCRAM message: {0}")]
    Protocol(String),
    /// The client's proof does not match the verifier: wrong password (SQLSTATE 28P01).
    #[error("password authentication failed")]
    Failed,
    /// The client selected a SASL mechanism pgsplit does not offer (SQLSTATE 28000).
    #[error("unsupported SASL authentication mechanism \"{0}\"")]
    UnsupportedMechanism(String),
}

impl AuthError {
    /// The SQLSTATE to put in the ErrorResponse sent to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::Protocol(_) => "08P01",
            AuthError::Failed => "28P01",
            AuthError::UnsupportedMechanism(_) => "28000",
        }
    }
}

fn protocol(msg: impl Into<String>) -> AuthError {
    AuthError::Protocol(msg.into())
}

/// A stored SCRAM-SHA-256 secret, as found in `pg_authid.rolpassword`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt (raw bytes, not base64).
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt base64>$<StoredKey base64>:<ServerKey base64>`
    /// (the `pg_authid.rolpassword` format). The error message never contains the secret.
    pub fn parse(s: &str) -> Result<ScramVerifier, String> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| "not a SCRAM-SHA-256 secret".to_string())?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or_else(|| "SCRAM secret: missing '$' before the keys".to_string())?;
        let (iterations, salt) = iter_salt
            .split_once(':')
            .ok_or_else(|| "SCRAM secret: missing ':' between iterations and salt".to_string())?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or_else(|| "SCRAM secret: missing ':' between the keys".to_string())?;

        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err("SCRAM secret: invalid iteration count".to_string());
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| "SCRAM secret: invalid iteration count".to_string())?;
        if iterations == 0 {
            return Err("SCRAM secret: iteration count must be positive".to_string());
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| "SCRAM secret: salt is not valid base64".to_string())?;
        if salt.is_empty() {
            return Err("SCRAM secret: empty salt".to_string());
        }
        let stored_key = decode_key(stored_key)
            .ok_or_else(|| "SCRAM secret: StoredKey is not 32 bytes of valid base64".to_string())?;
        let server_key = decode_key(server_key)
            .ok_or_else(|| "SCRAM secret: ServerKey is not 32 bytes of valid base64".to_string())?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derives a verifier from a plaintext password with a random 16-byte salt and 4096
    /// iterations. Like PostgreSQL, the password is SASLprep-normalized when possible and used
    /// as raw bytes otherwise.
    pub fn from_password(password: &str) -> ScramVerifier {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        rand::fill(&mut salt[..]);
        Self::from_password_with_salt(password, &salt, DEFAULT_ITERATIONS)
    }

    /// [`ScramVerifier::from_password`] with a caller-chosen salt and iteration count.
    pub(crate) fn from_password_with_salt(
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> ScramVerifier {
        let prepared = prepare_password(password);
        let salted = hi(&prepared, salt, iterations.max(1));
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, &[b"Server Key"]);
        ScramVerifier {
            iterations: iterations.max(1),
            salt: salt.to_vec(),
            stored_key,
            server_key,
        }
    }
}

impl fmt::Display for ScramVerifier {
    /// Formats the verifier in the `pg_authid.rolpassword` format accepted by [`ScramVerifier::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    /// Shows the parameters but never the keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

/// SASLprep the password like PostgreSQL's `pg_saslprep`: on failure use the raw bytes.
fn prepare_password(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// HMAC-SHA-256 of the concatenation of `parts` under `key`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().into()
        }
        // HMAC accepts keys of any length; this arm is unreachable in practice.
        Err(_) => [0u8; 32],
    }
}

/// `Hi()` from RFC 5802: PBKDF2 with HMAC-SHA-256 and a 32-byte output.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let Ok(keyed) = <HmacSha256 as KeyInit>::new_from_slice(password) else {
        return [0u8; 32];
    };
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut prev: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = prev;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&prev);
        prev = mac.finalize().into_bytes().into();
        for (r, p) in result.iter_mut().zip(prev) {
            *r ^= p;
        }
    }
    result
}

/// Constant-time equality of two 32-byte values.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// A cursor over a SCRAM message, parsing `attr=value` pairs separated by commas.
struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(input: &'a [u8]) -> Self {
        Cursor { input, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn rest(&self) -> &'a [u8] {
        self.input.get(self.pos..).unwrap_or(&[])
    }

    /// Consumes `c` or fails with `what`.
    fn expect(&mut self, c: u8, what: &str) -> Result<(), AuthError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(protocol(what.to_string()))
        }
    }

    /// Reads up to the next ',' (consumed) or the end of input.
    fn value(&mut self) -> &'a [u8] {
        let rest = self.rest();
        match rest.iter().position(|&b| b == b',') {
            Some(i) => {
                self.pos += i + 1;
                &rest[..i]
            }
            None => {
                self.pos = self.input.len();
                rest
            }
        }
    }

    /// Reads `attr=value` for the given attribute letter.
    fn attribute(&mut self, attr: u8, context: &str) -> Result<&'a [u8], AuthError> {
        if self.peek() != Some(attr) {
            return Err(protocol(format!(
                "expected attribute \"{}\" in {context}",
                attr as char
            )));
        }
        self.pos += 1;
        self.expect(b'=', &format!("expected \"=\" after \"{}\"", attr as char))?;
        Ok(self.value())
    }

    /// Reads any `attr=value` pair, returning the attribute letter and its value.
    fn any_attribute(&mut self, context: &str) -> Result<(u8, &'a [u8]), AuthError> {
        match self.peek() {
            Some(a) if a.is_ascii_alphabetic() => {
                self.pos += 1;
                self.expect(b'=', &format!("attribute expected in {context}"))?;
                Ok((a, self.value()))
            }
            _ => Err(protocol(format!("attribute expected in {context}"))),
        }
    }
}

/// Printable characters allowed in a nonce: 0x21..=0x7E except ','.
fn is_printable_nonce(nonce: &[u8]) -> bool {
    !nonce.is_empty()
        && nonce
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

enum State {
    /// Waiting for the SASLInitialResponse.
    Initial,
    /// server-first-message sent; waiting for the client-final-message.
    ServerFirstSent {
        gs2_header: Vec<u8>,
        client_first_bare: Vec<u8>,
        server_first: Vec<u8>,
        /// client nonce + server nonce.
        nonce: Vec<u8>,
    },
    /// The exchange is over (successfully or not).
    Done,
}

/// I/O-free server side of one SCRAM-SHA-256 exchange.
///
/// Call [`client_first`](ScramServer::client_first) with the SASLInitialResponse, then
/// [`client_final`](ScramServer::client_final) with the SASLResponse. Any error ends the
/// exchange: later calls fail with [`AuthError::Protocol`].
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    state: State,
    /// A mock exchange for a user pgsplit does not know: it always fails, at the same point as a wrong password.
    doomed: bool,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer").finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange against `verifier` with a fresh random server nonce
    /// (18 random bytes, base64-encoded, as PostgreSQL does).
    pub fn new(verifier: ScramVerifier) -> Self {
        let mut raw = [0u8; SERVER_NONCE_LEN];
        rand::fill(&mut raw[..]);
        Self::with_nonce(verifier, STANDARD.encode(raw))
    }

    /// A mock exchange for `user`, whom pgsplit does not know (or who has no SCRAM secret), as PostgreSQL runs
    /// one: to the client it looks like a real user's, with a salt that is the same at every attempt (derived
    /// from `secret`, random per pgsplit process, and the user name, like PostgreSQL's `scram_mock_salt`) and
    /// the default iteration count, and it fails where a wrong password fails. So logins do not tell which users
    /// exist.
    pub fn mock(secret: &[u8], user: &str) -> Self {
        let digest = hmac(secret, &[b"pgsplit mock salt", user.as_bytes()]);
        let mut keys = [0u8; 32];
        rand::fill(&mut keys[..]);
        let verifier = ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..DEFAULT_SALT_LEN].to_vec(),
            stored_key: keys,
            server_key: keys,
        };
        ScramServer {
            doomed: true,
            ..Self::new(verifier)
        }
    }

    fn with_nonce(verifier: ScramVerifier, server_nonce: String) -> Self {
        ScramServer {
            verifier,
            server_nonce,
            state: State::Initial,
            doomed: false,
        }
    }

    /// Handles the SASLInitialResponse (selected mechanism and client-first-message) and
    /// returns the server-first-message for AuthenticationSASLContinue.
    ///
    /// The username in the message is ignored, as in PostgreSQL: the startup message's user
    /// is the one being authenticated.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(
            std::mem::replace(&mut self.state, State::Done),
            State::Initial
        ) {
            return Err(protocol("unexpected SASLInitialResponse"));
        }
        if mechanism != SCRAM_SHA_256 {
            return Err(AuthError::UnsupportedMechanism(
                mechanism.chars().take(64).collect(),
            ));
        }

        let mut c = Cursor::new(data);
        // GS2 header: channel-binding flag, then the (unsupported) authzid.
        match c.peek() {
            Some(b'n') | Some(b'y') => {
                // 'y': the client supports channel binding but thinks the server does not.
                // That is true (no PLUS is offered), so it is no downgrade.
                c.pos += 1;
                c.expect(
                    b',',
                    "comma expected after channel-binding flag in client-first-message",
                )?;
            }
            Some(b'p') => {
                return Err(protocol(
                    "the client selected SCRAM-SHA-256 without channel binding, \
                     but the message includes channel binding data",
                ))
            }
            Some(_) => return Err(protocol("unexpected channel-binding flag")),
            None => return Err(protocol("empty client-first-message")),
        }
        if c.peek() == Some(b'a') {
            return Err(protocol(
                "client uses authorization identity, but it is not supported",
            ));
        }
        c.expect(b',', "unexpected attribute in client-first-message")?;
        let gs2_header = data[..c.pos].to_vec();
        let client_first_bare = c.rest().to_vec();

        if c.peek() == Some(b'm') {
            return Err(protocol("client requires an unsupported SCRAM extension"));
        }
        // Username: ignored (may be empty).
        c.attribute(b'n', "client-first-message")?;
        let client_nonce = c.attribute(b'r', "client-first-message")?;
        if !is_printable_nonce(client_nonce) {
            return Err(protocol("client nonce contains invalid characters"));
        }
        // Optional extensions are ignored.
        while !c.at_end() {
            c.any_attribute("client-first-message")?;
        }
        if data.last() == Some(&b',') {
            return Err(protocol("garbage found at the end of client-first-message"));
        }

        let mut nonce = client_nonce.to_vec();
        nonce.extend_from_slice(self.server_nonce.as_bytes());
        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(&nonce);
        server_first.extend_from_slice(
            format!(
                ",s={},i={}",
                STANDARD.encode(&self.verifier.salt),
                self.verifier.iterations
            )
            .as_bytes(),
        );

        self.state = State::ServerFirstSent {
            gs2_header,
            client_first_bare,
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Handles the SASLResponse (client-final-message), verifies the client's proof and
    /// returns the server-final-message (`v=...`) for AuthenticationSASLFinal.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::ServerFirstSent {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(protocol("unexpected SASLResponse"));
        };

        let mut c = Cursor::new(data);
        let binding = c.attribute(b'c', "client-final-message")?;
        let binding = STANDARD
            .decode(binding)
            .map_err(|_| protocol("invalid base64 in channel-binding attribute"))?;
        if binding != gs2_header {
            return Err(protocol(
                "unexpected SCRAM channel-binding attribute in client-final-message",
            ));
        }
        let final_nonce = c.attribute(b'r', "client-final-message")?;
        if final_nonce != nonce.as_slice() {
            return Err(protocol("nonce does not match"));
        }
        // Skip extensions up to the proof, which must come last.
        let (proof_start, proof) = loop {
            let start = c.pos;
            let (attr, value) = c.any_attribute("client-final-message")?;
            if attr == b'p' {
                break (start, value);
            }
        };
        if !c.at_end() || data.last() == Some(&b',') {
            return Err(protocol("garbage found at the end of client-final-message"));
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| protocol("malformed proof in client-final-message"))?;
        // client-final-message-without-proof excludes the ',' before "p=".
        let without_proof = &data[..proof_start.saturating_sub(1)];

        let auth_message: &[&[u8]] =
            &[&client_first_bare, b",", &server_first, b",", without_proof];
        let client_signature = hmac(&self.verifier.stored_key, auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !ct_eq(&computed, &self.verifier.stored_key) || self.doomed {
            return Err(AuthError::Failed);
        }

        let server_signature = hmac(&self.verifier.server_key, auth_message);
        let mut out = b"v=".to_vec();
        out.extend_from_slice(STANDARD.encode(server_signature).as_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn a_mock_exchange_looks_real_and_always_fails() {
        let salt_of = |secret: &[u8], user: &str| {
            let mut s = ScramServer::mock(secret, user);
            let first = s
                .client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
                .expect("server-first");
            let text = String::from_utf8(first).expect("utf-8");
            assert!(text.ends_with(",i=4096"), "{text}");
            let salt = text.split(",s=").nth(1).and_then(|r| r.split(',').next());
            STANDARD.decode(salt.expect("salt")).expect("base64")
        };
        // Deterministic per user and secret, 16 bytes like a real verifier's, different across users.
        let a = salt_of(b"secret-1", "nobody");
        assert_eq!(a.len(), DEFAULT_SALT_LEN);
        assert_eq!(a, salt_of(b"secret-1", "nobody"));
        assert_ne!(a, salt_of(b"secret-1", "somebody"));
        assert_ne!(a, salt_of(b"secret-2", "nobody"));
        // Whatever the password, the proof is refused as a wrong password is.
        for password in ["", "x", "nobody"] {
            let mut server = ScramServer::mock(b"secret-1", "nobody");
            let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let first = server
                .client_first(SCRAM_SHA_256, client.message())
                .expect("client-first accepted");
            client.update(&first).expect("client accepts server-first");
            assert!(matches!(
                server.client_final(client.message()),
                Err(AuthError::Failed)
            ));
        }
    }

    fn verifier(password: &str) -> ScramVerifier {
        // Few iterations keep the tests fast; the algorithm is the same.
        ScramVerifier::from_password_with_salt(password, b"0123456789abcdef", 64)
    }

    /// Runs a full exchange; returns the server's verdict and whether the client accepted
    /// the server-final-message.
    fn exchange(
        v: ScramVerifier,
        password: &str,
        binding: ChannelBinding,
    ) -> (Result<(), AuthError>, bool) {
        let mut server = ScramServer::new(v);
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let server_first = server
            .client_first(SCRAM_SHA_256, client.message())
            .expect("client-first accepted");
        client
            .update(&server_first)
            .expect("client accepts server-first");
        match server.client_final(client.message()) {
            Ok(server_final) => (Ok(()), client.finish(&server_final).is_ok()),
            Err(e) => (Err(e), false),
        }
    }

    #[test]
    fn round_trip_with_postgres_protocol_client() {
        for binding in [ChannelBinding::unrequested(), ChannelBinding::unsupported()] {
            let (res, client_ok) = exchange(verifier("s3cret"), "s3cret", binding);
            assert!(res.is_ok(), "{res:?}");
            assert!(client_ok, "client must accept the server signature");
        }
    }

    #[test]
    fn wrong_password_fails() {
        let (res, _) = exchange(verifier("s3cret"), "wrong", ChannelBinding::unrequested());
        let err = res.unwrap_err();
        assert!(matches!(err, AuthError::Failed), "{err:?}");
        assert_eq!(err.sqlstate(), "28P01");
    }

    #[test]
    fn saslprep_is_applied() {
        // U+00A0 (no-break space) maps to a space under SASLprep, on both sides.
        let (res, ok) = exchange(
            verifier("pass\u{a0}word"),
            "pass word",
            ChannelBinding::unrequested(),
        );
        assert!(res.is_ok() && ok);
        // A password SASLprep rejects (prohibited control char) is used raw.
        let (res, ok) = exchange(
            verifier("bad\u{7}pw"),
            "bad\u{7}pw",
            ChannelBinding::unrequested(),
        );
        assert!(res.is_ok() && ok);
    }

    #[test]
    fn verifier_from_postgres_protocol() {
        for password in ["secret", "pass\u{a0}word", "ünïcödé", "bad\u{7}pw", ""] {
            let theirs = postgres_protocol::password::scram_sha_256(password.as_bytes());
            let parsed = ScramVerifier::parse(&theirs).expect("parse");
            assert_eq!(parsed.to_string(), theirs);
            assert_eq!(parsed.iterations, 4096);
            assert_eq!(parsed.salt.len(), 16);
            // Same salt → identical secret.
            let ours =
                ScramVerifier::from_password_with_salt(password, &parsed.salt, parsed.iterations);
            assert_eq!(ours.to_string(), theirs, "password {password:?}");
        }
        let theirs = postgres_protocol::password::scram_sha_256(b"hunter2");
        let (res, ok) = exchange(
            ScramVerifier::parse(&theirs).unwrap(),
            "hunter2",
            ChannelBinding::unrequested(),
        );
        assert!(res.is_ok() && ok);
    }

    #[test]
    fn known_postgresql_verifier() {
        // Produced by postgres_protocol::password::scram_sha_256(b"pgsplit"), the format
        // PostgreSQL stores in pg_authid.rolpassword.
        const SECRET: &str = "SCRAM-SHA-256$4096:/9DLtx8ljuM1Fnaahcs0rw==$\
            9eLYN4qHslYcd0VtDMfAQaY3pzJePSVugiAHohzNqDY=:\
            iX+BgzkmjGmoCUhyLdiIk1GXyDXRzCHyxGehb1+1EK8=";
        let v = ScramVerifier::parse(SECRET).unwrap();
        assert_eq!(v.to_string(), SECRET);
        let ours = ScramVerifier::from_password_with_salt("pgsplit", &v.salt, 4096);
        assert_eq!(ours, v);
        let (res, ok) = exchange(v.clone(), "pgsplit", ChannelBinding::unsupported());
        assert!(res.is_ok() && ok);
        let (res, _) = exchange(v, "pgsplit ", ChannelBinding::unsupported());
        assert!(matches!(res, Err(AuthError::Failed)));
    }

    #[test]
    fn from_password_is_random_and_usable() {
        let a = ScramVerifier::from_password("pw");
        let b = ScramVerifier::from_password("pw");
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.iterations, 4096);
        assert_eq!(ScramVerifier::parse(&a.to_string()).unwrap(), a);
        let (res, ok) = exchange(a, "pw", ChannelBinding::unrequested());
        assert!(res.is_ok() && ok);
    }

    #[test]
    fn debug_hides_keys() {
        let v = verifier("pw");
        let dbg = format!("{v:?}");
        assert!(!dbg.contains(&STANDARD.encode(v.stored_key)));
        assert!(!dbg.contains(&STANDARD.encode(v.server_key)));
    }

    #[test]
    fn parse_rejects_malformed_secrets() {
        let good = verifier("pw").to_string();
        assert!(ScramVerifier::parse(&good).is_ok());
        let (head, keys) = good.rsplit_once('$').unwrap();
        let (sk, srv) = keys.split_once(':').unwrap();
        for bad in [
            String::new(),
            "md5abcdef".to_string(),
            "SCRAM-SHA-256$".to_string(),
            good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$0", 1),
            good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$-1", 1),
            good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$+64", 1),
            good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$99999999999", 1),
            good.replacen(':', ";", 1),
            format!("{head}${sk}"),
            format!("{head}${sk}:{}", &srv[..srv.len() - 4]),
            format!("{head}${sk}:!{}", &srv[1..]),
            format!("{head}$:{srv}"),
            "SCRAM-SHA-256$4096:$a:b".to_string(),
        ] {
            assert!(ScramVerifier::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }

    /// Builds a client-final-message with a correct proof for `password`.
    fn client_final_for(
        server_first: &[u8],
        client_first_bare: &str,
        gs2: &str,
        password: &str,
        v: &ScramVerifier,
    ) -> String {
        let sf = std::str::from_utf8(server_first).unwrap();
        let nonce = sf.strip_prefix("r=").unwrap().split(',').next().unwrap();
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(gs2));
        let auth = format!("{client_first_bare},{sf},{without_proof}");
        let salted = hi(password.as_bytes(), &v.salt, v.iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let sig = hmac(&v.stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    #[test]
    fn hand_built_exchange_with_extensions_and_username() {
        let v = verifier("pw");
        let mut s = ScramServer::new(v.clone());
        let bare = "n=someone,r=abc~DEF";
        let sf = s
            .client_first(SCRAM_SHA_256, format!("n,,{bare}").as_bytes())
            .unwrap();
        let sf_str = String::from_utf8(sf.clone()).unwrap();
        assert!(sf_str.starts_with("r=abc~DEF"));
        assert!(sf_str.ends_with(&format!(",s={},i=64", STANDARD.encode(&v.salt))));
        let cf = client_final_for(&sf, bare, "n,,", "pw", &v);
        let out = s.client_final(cf.as_bytes()).unwrap();
        assert!(out.starts_with(b"v="));
        // Out of order after success.
        assert!(matches!(
            s.client_final(cf.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
        assert!(matches!(
            s.client_first(SCRAM_SHA_256, b"n,,n=,r=x"),
            Err(AuthError::Protocol(_))
        ));

        // Extensions in both messages are skipped but covered by the proof.
        let mut s = ScramServer::new(v.clone());
        let bare = "n=,r=abc,x=ext";
        let sf = s
            .client_first(SCRAM_SHA_256, format!("y,,{bare}").as_bytes())
            .unwrap();
        let sf = std::str::from_utf8(&sf).unwrap();
        let nonce = sf.strip_prefix("r=").unwrap().split(',').next().unwrap();
        let without_proof = format!("c=eSws,r={nonce},z=1");
        let auth = format!("{bare},{sf},{without_proof}");
        let salted = hi(b"pw", &v.salt, v.iterations);
        let ck = hmac(&salted, &[b"Client Key"]);
        let sig = hmac(&v.stored_key, &[auth.as_bytes()]);
        let p: Vec<u8> = ck.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let cf = format!("{without_proof},p={}", STANDARD.encode(p));
        assert!(s.client_final(cf.as_bytes()).is_ok());
    }

    fn err_of(r: Result<Vec<u8>, AuthError>) -> AuthError {
        r.expect_err("expected an error")
    }

    #[test]
    fn mechanism_errors() {
        let v = verifier("pw");
        for mech in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "", "scram-sha-256"] {
            let mut s = ScramServer::new(v.clone());
            let e = err_of(s.client_first(mech, b"n,,n=,r=abc"));
            assert!(matches!(e, AuthError::UnsupportedMechanism(_)), "{mech}");
            assert_eq!(e.sqlstate(), "28000");
        }
    }

    #[test]
    fn malformed_client_first() {
        let v = verifier("pw");
        for bad in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=,r=abc",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,r=abc",
            b"n,,n=",
            b"n,,n=,",
            b"n,,n=,r=",
            b"n,,n=,r=ab\x01c",
            b"n,,n=,r=ab\xffc",
            b"n,,n=,r=abc,",
            b"n,,n=,r=abc,=x",
            b"n,,n=,r=abc,1=x",
            b"n,,n=,r=abc,xyz",
            b"nn,,n=,r=abc",
            b"n;,n=,r=abc",
        ] {
            let mut s = ScramServer::new(v.clone());
            let e = err_of(s.client_first(SCRAM_SHA_256, bad));
            assert!(
                matches!(e, AuthError::Protocol(_)),
                "{:?} gave {e:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(e.sqlstate(), "08P01");
            // The exchange is over after an error.
            assert!(matches!(
                s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc"),
                Err(AuthError::Protocol(_))
            ));
        }
    }

    #[test]
    fn malformed_client_final() {
        let v = verifier("pw");
        let bare = "n=,r=clientnonce";
        let start = |gs2: &str| {
            let mut s = ScramServer::with_nonce(v.clone(), "SERVERNONCE".into());
            s.client_first(SCRAM_SHA_256, format!("{gs2}{bare}").as_bytes())
                .unwrap();
            s
        };
        let good = {
            let mut s = start("n,,");
            let sf = b"r=clientnonceSERVERNONCE,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=64";
            let cf = client_final_for(sf, bare, "n,,", "pw", &v);
            let mut check = start("n,,");
            assert!(check.client_final(cf.as_bytes()).is_ok());
            assert!(s.client_final(cf.as_bytes()).is_ok());
            cf
        };
        let (head, proof) = good.split_once(",p=").unwrap();
        let nonce_attr = "r=clientnonceSERVERNONCE";
        let cases: Vec<String> = vec![
            String::new(),
            ",".into(),
            "c=biws".into(),
            format!("c=biws,{nonce_attr}"),
            format!("c=biws,{nonce_attr},"),
            format!("c=biws,{nonce_attr},p="),
            format!("c=biws,{nonce_attr},p=!!!!"),
            format!("c=biws,{nonce_attr},p=AAAA"),
            format!("{head},p={proof},x=1"),
            format!("{head},p={proof},"),
            format!("{nonce_attr},c=biws,p={proof}"),
            format!("c=eSws,{nonce_attr},p={proof}"), // "y,," but client sent "n,,"
            format!("c=bi@s,{nonce_attr},p={proof}"),
            format!("c=,{nonce_attr},p={proof}"),
            format!("c=biws,r=clientnonceSERVERNONCEX,p={proof}"),
            format!("c=biws,r=clientnonce,p={proof}"),
            format!("c=biws,r=,p={proof}"),
            format!("c=biws,{nonce_attr},1=x,p={proof}"),
        ];
        for bad in &cases {
            let mut s = start("n,,");
            let e = err_of(s.client_final(bad.as_bytes()));
            assert!(matches!(e, AuthError::Protocol(_)), "{bad:?} gave {e:?}");
        }
        // "n,," binding with a "y,," header.
        let mut s = start("y,,");
        let e = err_of(s.client_final(good.as_bytes()));
        assert!(matches!(e, AuthError::Protocol(_)));
        // client_final before client_first.
        let mut s = ScramServer::new(v.clone());
        assert!(matches!(
            s.client_final(good.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
        // Flipped proof bit → Failed.
        let mut p = STANDARD.decode(proof).unwrap();
        p[0] ^= 1;
        let mut s = start("n,,");
        let e = err_of(s.client_final(format!("{head},p={}", STANDARD.encode(p)).as_bytes()));
        assert!(matches!(e, AuthError::Failed));
    }

    /// Tiny xorshift PRNG so the fuzz test is reproducible.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_input_never_panics() {
        let v = verifier("pw");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"npyacrsmx=,ABC+/0123456789\x00\xff\xc3";
        for i in 0..20_000 {
            let len = (xorshift(&mut seed) % 64) as usize;
            let random: Vec<u8> = (0..len)
                .map(|_| {
                    let r = xorshift(&mut seed);
                    if i % 2 == 0 {
                        r as u8
                    } else {
                        alphabet[(r as usize) % alphabet.len()]
                    }
                })
                .collect();
            let mut s = ScramServer::with_nonce(v.clone(), "SN".into());
            let _ = s.client_first(SCRAM_SHA_256, &random);
            let _ = s.client_final(&random);
            let mut s = ScramServer::with_nonce(v.clone(), "SN".into());
            s.client_first(SCRAM_SHA_256, b"n,,n=,r=c").unwrap();
            let mut msg = b"c=biws,r=cSN,".to_vec();
            msg.extend_from_slice(&random);
            let _ = s.client_final(&msg);
            let _ = ScramVerifier::parse(&String::from_utf8_lossy(&random));
        }
    }
}
