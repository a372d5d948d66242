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

use crate::protocol::sqlstate;

/// The only SASL mechanism pgsplit offers to clients.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL mechanism name with tls-server-end-point channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

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
    /// Channel binding refused: a downgrade (`y` flag while PLUS was offered) or binding data that does not match
    /// pgsplit's certificate (SQLSTATE 28000, as PostgreSQL).
    #[error("{0}")]
    ChannelBinding(&'static str),
}

impl AuthError {
    /// The SQLSTATE to put in the ErrorResponse sent to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
            AuthError::Failed => sqlstate::INVALID_PASSWORD,
            AuthError::UnsupportedMechanism(_) | AuthError::ChannelBinding(_) => {
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION
            }
        }
    }
}

fn protocol(msg: impl Into<String>) -> AuthError {
    AuthError::Protocol(msg.into())
}

/// Why a stored SCRAM secret does not parse. The message never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    /// No `SCRAM-SHA-256$` prefix.
    #[error("not a SCRAM-SHA-256 secret")]
    NotScram,
    /// No `$` between the iterations and salt and the keys.
    #[error("SCRAM secret: missing '$' before the keys")]
    NoDollar,
    /// No `:` between the iterations and the salt.
    #[error("SCRAM secret: missing ':' between iterations and salt")]
    NoColonBeforeSalt,
    /// No `:` between StoredKey and ServerKey.
    #[error("SCRAM secret: missing ':' between the keys")]
    NoColonBetweenKeys,
    /// The iteration count is not a number.
    #[error("SCRAM secret: invalid iteration count")]
    Iterations,
    /// The iteration count is zero.
    #[error("SCRAM secret: iteration count must be positive")]
    ZeroIterations,
    /// The salt is not base64.
    #[error("SCRAM secret: salt is not valid base64")]
    SaltNotBase64,
    /// The salt is empty.
    #[error("SCRAM secret: empty salt")]
    EmptySalt,
    /// StoredKey is not 32 bytes of base64.
    #[error("SCRAM secret: StoredKey is not 32 bytes of valid base64")]
    StoredKey,
    /// ServerKey is not 32 bytes of base64.
    #[error("SCRAM secret: ServerKey is not 32 bytes of valid base64")]
    ServerKey,
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
    pub fn parse(s: &str) -> Result<ScramVerifier, VerifierError> {
        use VerifierError as E;
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(E::NotScram)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(E::NoDollar)?;
        let (iterations, salt) = iter_salt.split_once(':').ok_or(E::NoColonBeforeSalt)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(E::NoColonBetweenKeys)?;

        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::Iterations);
        }
        let iterations: u32 = iterations.parse().map_err(|_| E::Iterations)?;
        if iterations == 0 {
            return Err(E::ZeroIterations);
        }
        let salt = STANDARD.decode(salt).map_err(|_| E::SaltNotBase64)?;
        if salt.is_empty() {
            return Err(E::EmptySalt);
        }
        let stored_key = decode_key(stored_key).ok_or(E::StoredKey)?;
        let server_key = decode_key(server_key).ok_or(E::ServerKey)?;
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

/// A client's SCRAM ClientKey (`HMAC(SaltedPassword, "Client Key")`): as good as the password for logging in to
/// a server holding the matching verifier, so it stays in memory only; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(pub(crate) [u8; 32]);

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
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
        /// What `c=` must decode to: the GS2 header, plus the channel binding data with `p=`.
        binding: Vec<u8>,
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
    /// The ClientKey recovered from a verified proof (for SCRAM pass-through).
    client_key: Option<ClientKey>,
    /// tls-server-end-point data of pgsplit's certificate when the client is on TLS: SCRAM-SHA-256-PLUS offered.
    channel_binding: Option<Vec<u8>>,
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
            client_key: None,
            channel_binding: None,
        }
    }

    /// Offers channel binding: `data` is the tls-server-end-point hash of pgsplit's certificate (the client is
    /// on TLS). [`ScramServer::mechanisms`] then lists SCRAM-SHA-256-PLUS first.
    pub fn with_channel_binding(mut self, data: Option<Vec<u8>>) -> Self {
        self.bind_channel(data);
        self
    }

    /// [`ScramServer::with_channel_binding`] in place, before the exchange starts.
    pub fn bind_channel(&mut self, data: Option<Vec<u8>>) {
        self.channel_binding = data;
    }

    /// The mechanisms to offer in AuthenticationSASL, preferred first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// The client's ClientKey, recovered from its proof (ClientProof XOR HMAC(StoredKey, AuthMessage)) and
    /// checked against StoredKey: set only after [`client_final`](ScramServer::client_final) succeeded. With the
    /// verifier's ServerKey it logs in to a server that stores the same verifier (SCRAM pass-through).
    pub fn client_key(&self) -> Option<&ClientKey> {
        self.client_key.as_ref()
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
        let plus = mechanism == SCRAM_SHA_256_PLUS && self.channel_binding.is_some();
        if mechanism != SCRAM_SHA_256 && !plus {
            return Err(AuthError::UnsupportedMechanism(
                mechanism.chars().take(64).collect(),
            ));
        }

        let mut c = Cursor::new(data);
        // GS2 header: channel-binding flag, then the (unsupported) authzid.
        let bound = self.gs2_flag(&mut c, plus)?;
        if c.peek() == Some(b'a') {
            return Err(protocol(
                "client uses authorization identity, but it is not supported",
            ));
        }
        c.expect(b',', "unexpected attribute in client-first-message")?;
        let mut binding = data[..c.pos].to_vec();
        if bound {
            binding.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        }
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
            binding,
            client_first_bare,
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Reads the channel-binding flag and its comma; `true` when the client binds (`p=tls-server-end-point`).
    fn gs2_flag(&self, c: &mut Cursor<'_>, plus: bool) -> Result<bool, AuthError> {
        let comma = "comma expected after channel-binding flag in client-first-message";
        match c.peek() {
            Some(b'n') | Some(b'y') if plus => Err(protocol(
                "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include \
                 channel binding data",
            )),
            Some(b'y') if self.channel_binding.is_some() => Err(AuthError::ChannelBinding(
                "SCRAM channel binding negotiation error: the client supports SCRAM channel binding \
                 but thinks the server does not; however, this server does support channel binding",
            )),
            Some(b'n') | Some(b'y') => {
                // 'y' without PLUS offered: the client is right that pgsplit does not bind here.
                c.pos += 1;
                c.expect(b',', comma)?;
                Ok(false)
            }
            Some(b'p') if plus => {
                let name = c.attribute(b'p', "client-first-message")?;
                if name != b"tls-server-end-point" {
                    return Err(protocol(format!(
                        "unsupported SCRAM channel-binding type \"{}\"",
                        String::from_utf8_lossy(name).chars().take(64).collect::<String>()
                    )));
                }
                Ok(true)
            }
            Some(b'p') => Err(protocol(
                "the client selected SCRAM-SHA-256 without channel binding, \
                 but the message includes channel binding data",
            )),
            Some(_) => Err(protocol("unexpected channel-binding flag")),
            None => Err(protocol("empty client-first-message")),
        }
    }

    /// Handles the SASLResponse (client-final-message), verifies the client's proof and
    /// returns the server-final-message (`v=...`) for AuthenticationSASLFinal.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::ServerFirstSent {
            binding: expected,
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
        if binding != expected {
            if self.channel_binding.is_some() {
                return Err(AuthError::ChannelBinding(
                    "SCRAM channel binding check failed",
                ));
            }
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
        if !super::constant_time_eq(&computed, &self.verifier.stored_key) || self.doomed {
            return Err(AuthError::Failed);
        }
        self.client_key = Some(ClientKey(client_key));

        let server_signature = hmac(&self.verifier.server_key, auth_message);
        let mut out = b"v=".to_vec();
        out.extend_from_slice(STANDARD.encode(server_signature).as_bytes());
        Ok(out)
    }
}

pub mod client;
#[cfg(test)]
mod tests;
