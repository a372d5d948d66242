//! Test certificates (rcgen), made once per test binary, written to a temp dir that lives as long as it: a CA, a
//! server certificate for `localhost` and 127.0.0.1 signed by it (used by the shared cluster's servers and by
//! pgsplit), client certificates, and a second CA that signs nothing the servers trust.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;

/// The files and PEM texts of the test PKI.
pub struct Pki {
    _dir: TempDir,
    /// The CA's certificate (trusted by tests and pgsplit).
    pub ca_file: PathBuf,
    /// Another CA, that signed nothing the servers use.
    pub other_ca_file: PathBuf,
    /// Server certificate (localhost, 127.0.0.1) and key.
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Another server certificate (localhost, 127.0.0.1), signed by the other CA, and its key.
    pub other_server_cert_file: PathBuf,
    pub other_server_key_file: PathBuf,
    /// Client certificate for user `app`, signed by the CA, and its key.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    /// Client certificate for `app` signed by the other CA.
    pub stranger_cert_file: PathBuf,
    pub stranger_key_file: PathBuf,
}

fn ca(name: &str) -> (Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("ca key");
    (params.self_signed(&key).expect("ca cert"), key)
}

fn leaf(
    names: &[&str],
    cn: &str,
    purpose: ExtendedKeyUsagePurpose,
    issuer: &(Certificate, KeyPair),
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params
        .signed_by(&key, &issuer.0, &issuer.1)
        .expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

/// The test PKI, made on first use.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pgsplit-pki")
            .tempdir()
            .expect("pki dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write pki file");
            path
        };
        let main = ca("pgsplit test CA");
        let other = ca("some other CA");
        let (server_cert_pem, server_key_pem) = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &main,
        );
        let (other_server_cert, other_server_key) = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &other,
        );
        let (client_cert, client_key) =
            leaf(&[], "app", ExtendedKeyUsagePurpose::ClientAuth, &main);
        let (stranger_cert, stranger_key) =
            leaf(&[], "app", ExtendedKeyUsagePurpose::ClientAuth, &other);
        Pki {
            ca_file: write("ca.crt", &main.0.pem()),
            other_ca_file: write("other-ca.crt", &other.0.pem()),
            server_cert_file: write("server.crt", &server_cert_pem),
            server_key_file: write("server.key", &server_key_pem),
            server_cert_pem,
            server_key_pem,
            other_server_cert_file: write("other-server.crt", &other_server_cert),
            other_server_key_file: write("other-server.key", &other_server_key),
            client_cert_file: write("client.crt", &client_cert),
            client_key_file: write("client.key", &client_key),
            stranger_cert_file: write("stranger.crt", &stranger_cert),
            stranger_key_file: write("stranger.key", &stranger_key),
            _dir: dir,
        }
    })
}

impl Pki {
    /// A rustls client configuration trusting `ca` (verify-full), with a client certificate when given.
    pub fn client_config(
        &self,
        ca: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
            roots.add(cert.expect("ca cert")).expect("add root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certs");
                let key = PrivateKeyDer::from_pem_file(key).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client cert")
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    /// tokio-postgres TLS trusting the test CA, checking `name` (verify-full).
    pub fn pg_tls(&self, name: &str) -> pgsplit::tls::PgTls {
        self.pg_tls_trusting(&self.ca_file, name)
    }

    /// tokio-postgres TLS trusting `ca`, checking `name` (verify-full).
    pub fn pg_tls_trusting(&self, ca: &std::path::Path, name: &str) -> pgsplit::tls::PgTls {
        pgsplit::tls::PgTls::new(
            self.client_config(ca, None),
            Some(ServerName::try_from(name.to_string()).expect("name")),
        )
    }
}
