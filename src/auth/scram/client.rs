//! Client side of SCRAM-SHA-256 from keys instead of a password, for SCRAM pass-through: pgsplit logs in to a
//! server with the ClientKey recovered from a client's proof and the ServerKey of the verifier the server stores.
//!
//! I/O-free like the server: [`ScramClient::client_first`] gives the SASLInitialResponse payload,
//! [`ScramClient::server_first`] turns the server's AuthenticationSASLContinue payload into the SASLResponse
//! payload, and [`ScramClient::server_final`] checks the server's signature. The proof is
//! `ClientKey XOR HMAC(H(ClientKey), AuthMessage)`; no password or SaltedPassword is ever needed.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{hmac, is_printable_nonce, ClientKey, ScramVerifier};

/// `base64("n,,")`: the GS2 header of a client without channel binding, echoed in client-final.
const GS2_HEADER_B64: &str = "biws";

/// What a pass-through login needs: the ClientKey and the verifier it matches (salt, iterations, ServerKey).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// The ClientKey recovered from a client's proof.
    pub client_key: ClientKey,
    /// The verifier the ClientKey was checked against (the server's own, for pass-through to work).
    pub verifier: ScramVerifier,
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys").finish_non_exhaustive()
    }
}

/// Why a pass-through SCRAM login failed. Messages never contain a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramClientError {
    /// The server's message is malformed or out of order.
    #[error("malformed SCRAM message from the server: {0}")]
    Protocol(&'static str),
    /// The server's salt or iteration count differs from the verifier's: it stores another verifier.
    #[error(
        "the server's SCRAM {0} differs from the verifier pgsplit holds: the verifier is not the server's \
         (was the password changed?), so pass-through cannot log in"
    )]
    NotServersVerifier(&'static str),
    /// The server sent `e=...` in its final message.
    #[error("the server refused the SCRAM proof: {0}")]
    Refused(String),
    /// The server's signature does not match the ServerKey: it is not the server holding the verifier.
    #[error("the server's SCRAM signature is invalid")]
    BadServerSignature,
}

enum State {
    /// client-first sent (or about to be).
    First {
        client_first_bare: String,
    },
    /// client-final sent; the expected server signature.
    Final {
        server_signature: [u8; 32],
    },
    Done,
}

/// I/O-free client side of one SCRAM-SHA-256 exchange, proving knowledge of a ClientKey.
pub struct ScramClient {
    keys: ScramKeys,
    nonce: String,
    state: State,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange with a fresh random client nonce.
    pub fn new(keys: ScramKeys) -> ScramClient {
        let mut raw = [0u8; 18];
        rand::fill(&mut raw[..]);
        Self::with_nonce(keys, "", STANDARD.encode(raw))
    }

    fn with_nonce(keys: ScramKeys, user: &str, nonce: String) -> ScramClient {
        // PostgreSQL ignores the SCRAM user name (the startup packet's counts).
        let client_first_bare = format!("n={user},r={nonce}");
        ScramClient {
            keys,
            nonce,
            state: State::First { client_first_bare },
        }
    }

    /// The client-first-message (the SASLInitialResponse payload).
    pub fn client_first(&self) -> Vec<u8> {
        match &self.state {
            State::First { client_first_bare } => format!("n,,{client_first_bare}").into_bytes(),
            _ => Vec::new(),
        }
    }

    /// Reads the server-first-message and returns the client-final-message (the SASLResponse payload).
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramClientError> {
        use ScramClientError::{NotServersVerifier, Protocol};
        let State::First { client_first_bare } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(Protocol("unexpected server-first-message"));
        };
        let text = std::str::from_utf8(data).map_err(|_| Protocol("not UTF-8"))?;
        let mut parts = text.split(',');
        let nonce = attribute(parts.next(), "r=")?;
        let salt = attribute(parts.next(), "s=")?;
        let iterations = attribute(parts.next(), "i=")?;
        if !nonce.starts_with(&self.nonce)
            || nonce.len() == self.nonce.len()
            || !is_printable_nonce(nonce.as_bytes())
        {
            return Err(Protocol("invalid nonce"));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| Protocol("invalid salt"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| Protocol("invalid iteration count"))?;
        if salt != self.keys.verifier.salt {
            return Err(NotServersVerifier("salt"));
        }
        if iterations != self.keys.verifier.iterations {
            return Err(NotServersVerifier("iteration count"));
        }
        let without_proof = format!("c={GS2_HEADER_B64},r={nonce}");
        let auth_message: &[&[u8]] = &[
            client_first_bare.as_bytes(),
            b",",
            data,
            b",",
            without_proof.as_bytes(),
        ];
        let client_key = &self.keys.client_key.0;
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let mut proof = hmac(&stored_key, auth_message);
        for (p, k) in proof.iter_mut().zip(client_key) {
            *p ^= k;
        }
        self.state = State::Final {
            server_signature: hmac(&self.keys.verifier.server_key, auth_message),
        };
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server's signature must match the ServerKey.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), ScramClientError> {
        use ScramClientError::{BadServerSignature, Protocol, Refused};
        let State::Final { server_signature } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(Protocol("unexpected server-final-message"));
        };
        let text = std::str::from_utf8(data).map_err(|_| Protocol("not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(Refused(e.chars().take(100).collect()));
        }
        let v = attribute(text.split(',').next(), "v=")?;
        let v = STANDARD
            .decode(v)
            .map_err(|_| Protocol("invalid server signature"))?;
        if super::super::constant_time_eq(&v, &server_signature) {
            Ok(())
        } else {
            Err(BadServerSignature)
        }
    }
}

/// The value of `part` after `prefix` (`r=`, `s=`, …).
fn attribute<'a>(part: Option<&'a str>, prefix: &'static str) -> Result<&'a str, ScramClientError> {
    part.and_then(|p| p.strip_prefix(prefix))
        .ok_or(ScramClientError::Protocol(match prefix {
            "r=" => "nonce expected",
            "s=" => "salt expected",
            "i=" => "iteration count expected",
            _ => "server signature expected",
        }))
}

#[cfg(test)]
mod tests {
    use super::super::{hi, prepare_password, ScramServer, SCRAM_SHA_256};
    use super::*;

    // RFC 7677 §3: user "user", password "pencil".
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn keys(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = hi(&prepare_password(password), salt, iterations);
        ScramKeys {
            client_key: ClientKey(hmac(&salted, &[b"Client Key"])),
            verifier: ScramVerifier::from_password_with_salt(password, salt, iterations),
        }
    }

    fn rfc_keys() -> ScramKeys {
        keys("pencil", &STANDARD.decode(SALT).expect("salt"), 4096)
    }

    #[test]
    fn rfc7677_client_from_keys_sends_the_rfc_proof() {
        let mut c = ScramClient::with_nonce(rfc_keys(), "user", CLIENT_NONCE.into());
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c.server_first(SERVER_FIRST.as_bytes()).expect("final");
        assert_eq!(String::from_utf8(fin).expect("utf-8"), CLIENT_FINAL);
        c.server_final(SERVER_FINAL.as_bytes())
            .expect("server signature");
    }

    #[test]
    fn rfc7677_server_recovers_the_client_key() {
        let keys = rfc_keys();
        let mut s = ScramServer::with_nonce(keys.verifier.clone(), SERVER_NONCE.into());
        assert!(s.client_key().is_none());
        let first = s
            .client_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .expect("first");
        assert_eq!(first, SERVER_FIRST.as_bytes());
        let fin = s.client_final(CLIENT_FINAL.as_bytes()).expect("final");
        assert_eq!(fin, SERVER_FINAL.as_bytes());
        assert_eq!(s.client_key(), Some(&keys.client_key));
    }

    #[test]
    fn a_wrong_proof_recovers_no_key() {
        let keys = rfc_keys();
        let mut s = ScramServer::with_nonce(keys.verifier, SERVER_NONCE.into());
        s.client_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .expect("first");
        let bad = CLIENT_FINAL.replace("p=dH", "p=eH");
        assert!(s.client_final(bad.as_bytes()).is_err());
        assert!(s.client_key().is_none());
    }

    /// The key recovered by pgsplit's server logs in to a server holding the same verifier.
    #[test]
    fn a_recovered_key_passes_through_to_a_server_with_the_same_verifier() {
        let original = keys("s3cret", b"0123456789abcdef", 64);
        let mut front = ScramServer::new(original.verifier.clone());
        let mut user = ScramClient::new(original.clone());
        let first = front
            .client_first(SCRAM_SHA_256, &user.client_first())
            .expect("first");
        let fin = front
            .client_final(&user.server_first(&first).expect("client final"))
            .expect("verified");
        user.server_final(&fin).expect("front signature");
        let recovered = ScramKeys {
            client_key: front.client_key().expect("key").clone(),
            verifier: original.verifier.clone(),
        };
        let mut back = ScramServer::new(original.verifier);
        let mut proxy = ScramClient::new(recovered);
        let first = back
            .client_first(SCRAM_SHA_256, &proxy.client_first())
            .expect("first");
        let fin = back
            .client_final(&proxy.server_first(&first).expect("final"))
            .expect("server accepts the pass-through proof");
        proxy.server_final(&fin).expect("server signature");
    }

    #[test]
    fn another_verifier_on_the_server_is_named() {
        let mine = keys("s3cret", b"0123456789abcdef", 64);
        for (theirs, what) in [
            (keys("s3cret", b"fedcba9876543210", 64), "salt"),
            (keys("s3cret", b"0123456789abcdef", 65), "iteration count"),
        ] {
            let mut server = ScramServer::new(theirs.verifier);
            let mut c = ScramClient::new(mine.clone());
            let first = server
                .client_first(SCRAM_SHA_256, &c.client_first())
                .expect("first");
            assert_eq!(
                c.server_first(&first),
                Err(ScramClientError::NotServersVerifier(what))
            );
        }
    }

    #[test]
    fn a_bad_server_signature_or_message_is_refused() {
        let mut c = ScramClient::with_nonce(rfc_keys(), "user", CLIENT_NONCE.into());
        c.server_first(SERVER_FIRST.as_bytes()).expect("final");
        let forged = "v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(
            c.server_final(forged.as_bytes()),
            Err(ScramClientError::BadServerSignature)
        );
        for bad in [
            &b""[..],
            b"r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=x",
            &[0xff, 0xfe],
        ] {
            let mut c = ScramClient::with_nonce(rfc_keys(), "user", CLIENT_NONCE.into());
            assert!(matches!(
                c.server_first(bad),
                Err(ScramClientError::Protocol(_))
            ));
        }
        let mut c = ScramClient::with_nonce(rfc_keys(), "user", CLIENT_NONCE.into());
        c.server_first(SERVER_FIRST.as_bytes()).expect("final");
        assert!(matches!(
            c.server_final(b"e=invalid-proof"),
            Err(ScramClientError::Refused(_))
        ));
    }
}
