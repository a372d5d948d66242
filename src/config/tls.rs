//! The `[tls]` table: TLS towards clients (pgsplit's certificate, optional client certificates) and towards
//! servers (how much of a server's certificate is checked), plus reading and checking the PEM files it names.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// Whether clients may, or must, use TLS (PgBouncer's `client_tls_sslmode` meanings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest is answered `N`; direct TLS is refused.
    #[default]
    Disable,
    /// TLS and plain text both accepted.
    Allow,
    /// TLS and plain text both accepted (same as `allow` on the accepting side).
    Prefer,
    /// Plain-text clients are refused with 28000.
    Require,
}

impl ClientTlsMode {
    /// Whether TLS is offered at all.
    pub fn enabled(self) -> bool {
        self != ClientTlsMode::Disable
    }
}

/// How pgsplit uses TLS towards a server (libpq's `sslmode` meanings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS when the server accepts SSLRequest, else plain; the certificate is not checked.
    Prefer,
    /// TLS, the certificate not checked.
    Require,
    /// TLS, the certificate chain checked against the CA; the host name not checked.
    VerifyCa,
    /// TLS, the chain and the host name (`tls_server_name`, else `host`) checked.
    VerifyFull,
}

impl ServerTlsMode {
    /// The mode as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the certificate chain is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull)
    }
}

/// `[tls]`: TLS on both sides. Default: off on both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// TLS towards clients. Default `disable`.
    pub client_mode: ClientTlsMode,
    /// pgsplit's certificate chain (PEM), required unless `client_mode = "disable"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM), required unless `client_mode = "disable"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// When set, TLS clients must present a certificate signed by this CA (PEM), like PostgreSQL's
    /// `clientcert=verify-ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: the certificate's common name must equal the user name (`clientcert=verify-full`).
    /// Default false.
    pub client_cert_user: bool,
    /// TLS towards servers, unless a server sets `tls_mode`. Default `disable`.
    pub server_mode: ServerTlsMode,
    /// CA certificates (PEM) server certificates are checked against; default the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_ca_file: Option<PathBuf>,
}

/// A PEM file that cannot be used, for the configuration error naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PemError(pub String);

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| PemError(format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            PemError(format!(
                "{}: not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(PemError(format!(
            "{}: no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1). Errors never quote the file's content.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::Io(io) => io.to_string(),
            rustls_pki_types::pem::Error::NoItemsFound => "no private key found".to_string(),
            _ => "not a PEM private key".to_string(),
        };
        PemError(format!(
            "cannot use {} as a private key: {why}",
            path.display()
        ))
    })
}

/// Checks that a certificate chain and a private key belong together and that the key type is supported.
pub fn check_pair(
    certs: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<(), PemError> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| PemError(format!("unsupported private key: {e}")))?;
    rustls::sign::CertifiedKey::new(certs, signer)
        .keys_match()
        .map_err(|e| PemError(format!("the key does not match the certificate: {e}")))
}

impl super::Config {
    /// Checks `[tls]` and the servers' `tls_*` overrides, reading every file they name.
    pub(super) fn validate_tls(
        &self,
        loc: &super::load::Locator<'_>,
    ) -> Result<(), super::ConfigError> {
        let path = super::load::FieldPath::root().key("tls");
        let tls = &self.tls;
        let err = |key: &str, e: PemError| loc.error(&path.key(key), e.0);
        if tls.client_mode.enabled() {
            let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
                let missing = if tls.cert_file.is_none() {
                    "cert_file"
                } else {
                    "key_file"
                };
                return Err(loc.error(
                    &path.key(missing),
                    "required when client_mode is not \"disable\"",
                ));
            };
            let certs = read_certs(cert).map_err(|e| err("cert_file", e))?;
            let key = read_key(key).map_err(|e| err("key_file", e))?;
            check_pair(certs, &key).map_err(|e| err("key_file", e))?;
        }
        if let Some(ca) = &tls.client_ca_file {
            if tls.client_mode != ClientTlsMode::Require {
                // A plain-text client would skip the certificate check.
                return Err(loc.error(
                    &path.key("client_ca_file"),
                    "needs client_mode = \"require\" (plain-text clients present no certificate)",
                ));
            }
            read_certs(ca).map_err(|e| err("client_ca_file", e))?;
        } else if tls.client_cert_user {
            return Err(loc.error(&path.key("client_cert_user"), "needs `client_ca_file`"));
        }
        if let Some(ca) = &tls.server_ca_file {
            read_certs(ca).map_err(|e| err("server_ca_file", e))?;
        }
        let root = super::load::FieldPath::root();
        let paths = std::iter::once(root.key("primary"))
            .chain((0..self.replicas.len()).map(|i| root.key("replicas").index(i)));
        for (server, path) in self.servers().zip(paths) {
            if let Some(ca) = &server.tls_ca_file {
                read_certs(ca).map_err(|e| loc.error(&path.key("tls_ca_file"), e.0))?;
            }
            if let Some(name) = &server.tls_server_name {
                if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                    return Err(loc.error(
                        &path.key("tls_server_name"),
                        format!("`{name}` is not a valid DNS name or IP address"),
                    ));
                }
            }
        }
        Ok(())
    }
}
