//! How pgsplit proves who it is to a server: the [`Credential`] a pool logs in with (a password, the SCRAM keys
//! of pass-through, or an md5 hash answered as is), and the answer to each Authentication message.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use md5::{Digest, Md5};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;

use crate::auth::{ScramClient, ScramKeys};
use crate::protocol::messages;

/// What pgsplit logs in to the servers with, for one role. `Debug` never shows the secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credential {
    /// Nothing: only a server that asks for no password (trust, peer, cert) lets pgsplit in.
    #[default]
    None,
    /// A plaintext password (md5, SCRAM or cleartext, whatever the server asks).
    Password(String),
    /// SCRAM pass-through: the ClientKey recovered from a client's proof and the verifier it matched. Answers
    /// SCRAM only.
    Scram(ScramKeys),
    /// The `md5…` hash PostgreSQL stores (from auth_query): answers md5 only, as PgBouncer does.
    Md5Hash(String),
}

impl Credential {
    /// The credential of a configured server password, if any.
    pub fn from_password(password: Option<&str>) -> Credential {
        password.map_or(Credential::None, |p| Credential::Password(p.to_string()))
    }

    /// Whether there is nothing to log in with.
    pub fn is_none(&self) -> bool {
        matches!(self, Credential::None)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::None => "Credential::None",
            Credential::Password(_) => "Credential::Password(<redacted>)",
            Credential::Scram(_) => "Credential::Scram(<redacted>)",
            Credential::Md5Hash(_) => "Credential::Md5Hash(<redacted>)",
        })
    }
}

/// The credential every pool of one (user, database) logs in with; a newer client login may replace it (a
/// rotated password gives a new pass-through key), and connections opened afterwards use the newest.
#[derive(Default)]
pub struct SharedCredential(ArcSwap<Credential>);

impl SharedCredential {
    /// Holds `credential`.
    pub fn new(credential: Credential) -> SharedCredential {
        SharedCredential(ArcSwap::from_pointee(credential))
    }

    /// The credential now.
    pub fn get(&self) -> Arc<Credential> {
        self.0.load_full()
    }

    /// Replaces the credential (when it differs) for connections opened from now on.
    pub fn set(&self, credential: Credential) {
        if *self.0.load_full() != credential {
            self.0.store(Arc::new(credential));
        }
    }
}

impl fmt::Debug for SharedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.get(), f)
    }
}

/// A SASL exchange in progress with a server.
#[derive(Default)]
pub(super) enum Exchange {
    /// None started.
    #[default]
    Idle,
    /// From a password (postgres-protocol's client).
    Password(Box<ScramSha256>),
    /// From pass-through keys.
    Keys(Box<ScramClient>),
}

/// Why pgsplit cannot answer the server.
pub(super) enum AuthFailure {
    /// The server's message is out of order or malformed.
    Protocol(String),
    /// pgsplit has no fitting credential, or the exchange failed (SQLSTATE 28000).
    Refused(String),
}

/// Answers one Authentication message (`code` and the rest of its body) into `out`; nothing for
/// AuthenticationOk and SASL final.
pub(super) fn answer(
    credential: &Credential,
    user: &str,
    code: u32,
    body: &[u8],
    exchange: &mut Exchange,
    out: &mut BytesMut,
) -> Result<(), AuthFailure> {
    use AuthFailure::{Protocol, Refused};
    let encode = |e: std::io::Error| Refused(format!("cannot encode the answer: {e}"));
    match (code, credential) {
        (messages::AUTH_OK, _) => {}
        (messages::AUTH_CLEARTEXT, Credential::Password(p)) => {
            frontend::password_message(p.as_bytes(), out).map_err(encode)?;
        }
        (messages::AUTH_MD5, Credential::Password(_) | Credential::Md5Hash(_)) => {
            let salt: [u8; 4] = body
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| Protocol("short md5 salt".into()))?;
            let hash = match credential {
                Credential::Password(p) => {
                    postgres_protocol::authentication::md5_hash(user.as_bytes(), p.as_bytes(), salt)
                }
                Credential::Md5Hash(h) => md5_from_hash(h, salt)
                    .ok_or_else(|| Refused("the looked-up md5 hash is malformed".into()))?,
                _ => String::new(),
            };
            frontend::password_message(hash.as_bytes(), out).map_err(encode)?;
        }
        (messages::AUTH_SASL, Credential::Password(_) | Credential::Scram(_)) => {
            if !body
                .split(|&b| b == 0)
                .any(|m| m == SCRAM_SHA_256.as_bytes())
            {
                return Err(Refused(
                    "server offers no SASL mechanism pgsplit supports".into(),
                ));
            }
            let first = match credential {
                Credential::Password(p) => {
                    let s = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                    let first = s.message().to_vec();
                    *exchange = Exchange::Password(Box::new(s));
                    first
                }
                Credential::Scram(keys) => {
                    let c = ScramClient::new(keys.clone());
                    let first = c.client_first();
                    *exchange = Exchange::Keys(Box::new(c));
                    first
                }
                _ => Vec::new(),
            };
            frontend::sasl_initial_response(SCRAM_SHA_256, &first, out).map_err(encode)?;
        }
        (messages::AUTH_SASL_CONTINUE, _) => {
            let next = match exchange {
                Exchange::Password(s) => {
                    s.update(body).map_err(|e| Refused(e.to_string()))?;
                    s.message().to_vec()
                }
                Exchange::Keys(c) => c.server_first(body).map_err(|e| Refused(e.to_string()))?,
                Exchange::Idle => return Err(Protocol("SASL continue without start".into())),
            };
            frontend::sasl_response(&next, out).map_err(encode)?;
        }
        (messages::AUTH_SASL_FINAL, _) => match exchange {
            Exchange::Password(s) => s.finish(body).map_err(|e| Refused(e.to_string()))?,
            Exchange::Keys(c) => c.server_final(body).map_err(|e| Refused(e.to_string()))?,
            Exchange::Idle => return Err(Protocol("SASL final without start".into())),
        },
        (code, credential) => return Err(Refused(cannot_answer(code, credential, user))),
    }
    Ok(())
}

/// Why `credential` cannot answer authentication request `code`.
fn cannot_answer(code: u32, credential: &Credential, user: &str) -> String {
    let asked = match code {
        messages::AUTH_CLEARTEXT => "a cleartext password",
        messages::AUTH_MD5 => "md5",
        messages::AUTH_SASL => "SCRAM-SHA-256",
        _ => {
            return format!(
                "server asks for authentication method {code}, which pgsplit does not support"
            )
        }
    };
    match credential {
        Credential::None => {
            format!("server asks for a password and none is configured for \"{user}\"")
        }
        Credential::Scram(_) => format!(
            "server asks for {asked}, but pgsplit logs in as \"{user}\" by SCRAM pass-through, which answers \
             SCRAM-SHA-256 only"
        ),
        Credential::Md5Hash(_) => format!(
            "server asks for {asked}, but pgsplit holds only the md5 hash of \"{user}\", which answers md5 only"
        ),
        Credential::Password(_) => format!("server asks for {asked}, which pgsplit cannot answer"),
    }
}

/// The md5 answer from a stored `md5<32 hex>` hash: `"md5" + hex(md5(hex + salt))`. `None` when malformed.
fn md5_from_hash(stored: &str, salt: [u8; 4]) -> Option<String> {
    let inner = stored.strip_prefix("md5")?;
    if inner.len() != 32 || !inner.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut h = Md5::new();
    h.update(inner.to_ascii_lowercase().as_bytes());
    h.update(salt);
    let digest = h.finalize();
    Some(format!(
        "md5{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_md5_hash_answers_as_the_password_would() {
        let salt = [7, 1, 2, 3];
        let stored = crate::auth::md5::hash_password("bob", "pw");
        let from_password = postgres_protocol::authentication::md5_hash(b"bob", b"pw", salt);
        assert_eq!(md5_from_hash(&stored, salt), Some(from_password));
        assert_eq!(md5_from_hash("md5xyz", salt), None);
        assert_eq!(md5_from_hash("plain", salt), None);
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let c = Credential::Password("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        let shared = SharedCredential::new(Credential::Md5Hash("md5abc".into()));
        assert!(!format!("{shared:?}").contains("abc"));
        shared.set(Credential::None);
        assert!(shared.get().is_none());
    }

    #[test]
    fn a_credential_that_cannot_answer_says_why() {
        let mut ex = Exchange::Idle;
        let mut out = BytesMut::new();
        let md5 = Credential::Md5Hash(crate::auth::md5::hash_password("bob", "pw"));
        let r = answer(
            &md5,
            "bob",
            messages::AUTH_SASL,
            b"SCRAM-SHA-256\0\0",
            &mut ex,
            &mut out,
        );
        assert!(matches!(r, Err(AuthFailure::Refused(m)) if m.contains("md5 only")));
        let r = answer(
            &Credential::None,
            "bob",
            messages::AUTH_MD5,
            b"abcd",
            &mut ex,
            &mut out,
        );
        assert!(matches!(r, Err(AuthFailure::Refused(m)) if m.contains("none is configured")));
        let r = answer(&md5, "bob", messages::AUTH_MD5, b"ab", &mut ex, &mut out);
        assert!(matches!(r, Err(AuthFailure::Protocol(_))));
    }
}
