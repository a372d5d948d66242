//! TLS towards servers: each server's effective mode, CA and name ([`ServerTls`]), and the SSLRequest
//! negotiation that turns a TCP connection into a [`Transport`].
//!
//! rustls client configurations are cached per (mode, CA file): every pool and side connection of a server shares
//! one; [`clear_cache`] makes the next connection re-read the files (reload).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::transport::Transport;
use super::verify::ChainOnly;
use crate::config::{read_certs, Config, ServerConfig, ServerTlsMode};
use crate::protocol::startup;

/// How pgsplit talks TLS to one server.
#[derive(Clone)]
pub struct ServerTls {
    /// The effective mode.
    pub mode: ServerTlsMode,
    config: Option<Arc<ClientConfig>>,
    name: ServerName<'static>,
    /// The settings could not be built (a CA file gone since the configuration was loaded): every connection
    /// fails with this reason.
    broken: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("name", &self.name)
            .field("broken", &self.broken)
            .finish()
    }
}

type CacheKey = (ServerTlsMode, Option<PathBuf>);

fn cache() -> &'static Mutex<HashMap<CacheKey, Arc<ClientConfig>>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Arc<ClientConfig>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Forgets the cached client configurations: the next server connection re-reads its CA file (reload).
pub fn clear_cache() {
    cache().lock().unwrap_or_else(|p| p.into_inner()).clear();
}

impl ServerTls {
    /// Plain TCP.
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Disable,
            config: None,
            name: ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
            broken: None,
        }
    }

    /// The TLS settings of `server` under `config` (its `tls_*` overrides, else `[tls]`). Never fails: a CA that
    /// cannot be read makes every connection to the server fail, naming the reason (fail closed).
    pub fn for_server(config: &Config, server: &ServerConfig) -> ServerTls {
        let mode = config.server_tls_mode(server);
        let host = server.tls_server_name.as_deref().unwrap_or(&server.host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut tls = ServerTls::disabled();
        tls.mode = mode;
        if mode == ServerTlsMode::Disable {
            return tls;
        }
        match ServerName::try_from(host.to_string()) {
            Ok(name) => tls.name = name,
            Err(_) => tls.broken = Some(format!("`{host}` is not a valid TLS server name")),
        }
        let ca = server
            .tls_ca_file
            .clone()
            .or_else(|| config.tls.server_ca_file.clone());
        match client_config(mode, ca) {
            Ok(c) => tls.config = Some(c),
            Err(e) => tls.broken = Some(e),
        }
        tls
    }

    /// The rustls client configuration (none when TLS is disabled).
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.config.clone()
    }

    /// The name sent as SNI and checked in `verify-full`.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }

    /// Why no connection can be made, when the settings could not be built.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Negotiates TLS on a fresh connection as the mode says: SSLRequest, then the handshake on `S`; on `N`
    /// plain text only for `prefer`. The error says why, for a message naming the server.
    pub async fn negotiate(&self, mut tcp: TcpStream) -> Result<Transport, String> {
        if self.mode == ServerTlsMode::Disable {
            return Ok(Transport::plain(tcp));
        }
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        let Some(config) = self.config.clone() else {
            return Err("no TLS configuration".into());
        };
        let mut request = bytes::BytesMut::new();
        startup::encode_ssl_request(&mut request);
        tcp.write_all(&request)
            .await
            .map_err(|e| format!("sending SSLRequest: {e}"))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| format!("reading the answer to SSLRequest: {e}"))?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == ServerTlsMode::Prefer => return Ok(Transport::plain(tcp)),
            b'N' => {
                return Err(format!(
                    "server does not support TLS (tls mode {})",
                    self.mode.as_str()
                ))
            }
            other => return Err(format!("unexpected answer 0x{other:02x} to SSLRequest")),
        }
        let conn = rustls::ClientConnection::new(config, self.name.clone())
            .map_err(|e| format!("TLS setup: {e}"))?;
        let mut transport = Transport::plain(tcp);
        transport
            .handshake(conn, &[])
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Ok(transport)
    }
}

/// A rustls client configuration for `mode` with the CA file `ca` (else the system roots), cached.
fn client_config(mode: ServerTlsMode, ca: Option<PathBuf>) -> Result<Arc<ClientConfig>, String> {
    let key = (mode, ca.clone().filter(|_| mode.verifies()));
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
    let config = match mode {
        ServerTlsMode::VerifyFull => builder
            .with_root_certificates(roots(key.1.as_ref())?)
            .with_no_client_auth(),
        ServerTlsMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly::verify_ca(roots(
                key.1.as_ref(),
            )?)))
            .with_no_client_auth(),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly::any_certificate()))
            .with_no_client_auth(),
    };
    let config = Arc::new(config);
    cache.insert(key, config.clone());
    Ok(config)
}

/// The roots from `ca`, else the system's.
fn roots(ca: Option<&PathBuf>) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path).map_err(|e| e.0)? {
                store
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("no system root certificates found (set tls.server_ca_file)".into());
            }
        }
    }
    Ok(Arc::new(store))
}
