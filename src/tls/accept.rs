//! TLS towards clients: pgsplit's certificate and key, optional client-certificate checks, ALPN `postgresql`,
//! and the tls-server-end-point channel binding data SCRAM-SHA-256-PLUS checks.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use sha2::Digest;

use bytes::BytesMut;

use super::der::{self, EndPointHash};
use super::hello;
use super::transport::Transport;
use crate::config::{read_certs, read_key, ClientTlsMode, TlsConfig};

/// The ALPN protocol PostgreSQL 17 uses (and requires with direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// pgsplit's TLS server side, built once from `[tls]` (rebuilt on reload).
pub struct ClientTls {
    /// Whether TLS is optional or required.
    pub mode: ClientTlsMode,
    config: Arc<ServerConfig>,
    /// The same certificate for the admin HTTP endpoint (ALPN `http/1.1`).
    admin: Arc<ServerConfig>,
    end_point: Option<Arc<[u8]>>,
    cert_user: bool,
}

impl ClientTls {
    /// Builds the client side from `[tls]`: `None` when `client_mode = "disable"`. The error names the file and
    /// the problem (never the key's content).
    pub fn from_config(tls: &TlsConfig) -> Result<Option<Arc<ClientTls>>, String> {
        if !tls.client_mode.enabled() {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
            return Err("tls.cert_file and tls.key_file are required".into());
        };
        let certs = read_certs(cert_file).map_err(|e| e.0)?;
        let key = read_key(key_file).map_err(|e| e.0)?;
        let end_point = certs.first().and_then(|c| end_point_data(c)).map(Arc::from);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let builder = match &tls.client_ca_file {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca).map_err(|e| e.0)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("{}: {e}", key_file.display()))?;
        let mut admin = config.clone();
        admin.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(Arc::new(ClientTls {
            mode: tls.client_mode,
            config: Arc::new(config),
            admin: Arc::new(admin),
            end_point,
            cert_user: tls.client_ca_file.is_some() && tls.client_cert_user,
        })))
    }

    /// Runs the server side of a handshake on `socket`; `early` holds handshake bytes already read (direct TLS).
    /// An SNI that is no host name (libpq's socket directory) fails in rustls: logged with the fix (see `hello`).
    pub async fn accept(&self, socket: &mut Transport, early: &[u8]) -> std::io::Result<()> {
        let conn = ServerConnection::new(self.config.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut first = BytesMut::from(early);
        hello::read_first_record(socket.tcp(), &mut first).await?;
        if let Some(name) = hello::unusable_sni(&first) {
            tracing::info!(
                peer = ?socket.tcp().peer_addr().ok(),
                sni = %name,
                "TLS client sent a server name that is no host name (libpq with `hostaddr` and no `host`): \
                 the handshake fails; give the client `host=<name>` or `sslsni=0`"
            );
        }
        socket.handshake(conn, &first).await?;
        socket.set_channel_binding(self.end_point.clone());
        Ok(())
    }

    /// Runs the server side of an admin endpoint handshake on `socket`.
    pub async fn accept_admin(&self, socket: &mut Transport) -> std::io::Result<()> {
        let conn = ServerConnection::new(self.admin.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        socket.handshake(conn, &[]).await
    }

    /// The tls-server-end-point channel binding data (RFC 5929): the hash of pgsplit's certificate. `None` when
    /// its signature algorithm has no defined hash (Ed25519, RSA-PSS): SCRAM-SHA-256-PLUS is then not offered.
    pub fn end_point(&self) -> Option<&[u8]> {
        self.end_point.as_deref()
    }

    /// With `client_cert_user`: whether the client's certificate names `user` as its common name.
    pub fn check_user(&self, socket: &Transport, user: &str) -> Result<(), String> {
        if !self.cert_user {
            return Ok(());
        }
        let cn = socket
            .tls_connection()
            .and_then(|c| c.peer_certificates())
            .and_then(|certs| certs.first())
            .and_then(|c| der::subject_common_name(c));
        match cn {
            Some(cn) if cn == user => Ok(()),
            Some(_) => Err(format!(
                "certificate authentication failed for user \"{user}\": the certificate's common name does not match"
            )),
            None => Err(format!(
                "certificate authentication failed for user \"{user}\": no client certificate common name"
            )),
        }
    }
}

/// The hash of a certificate for tls-server-end-point.
pub fn end_point_data(cert: &[u8]) -> Option<Vec<u8>> {
    Some(match der::end_point_hash(cert)? {
        EndPointHash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        EndPointHash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        EndPointHash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}
