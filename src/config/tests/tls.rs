//! `[tls]` and the servers' `tls_*` options: files read and checked at load, errors naming the field.

use super::*;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    /// A certificate/key pair and a second key, made with rcgen.
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("other.pem"), other.serialize_pem()).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn tls(&self, mode: &str, cert: &str, key: &str, more: &str) -> String {
        format!(
            "{MINIMAL}\n[tls]\nclient_mode = \"{mode}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{more}\n",
            self.path(cert),
            self.path(key)
        )
    }
}

fn field_error(text: &str, field: &str, needle: &str) {
    let err = parse(text).expect_err("an error");
    assert_eq!(err.field.as_deref(), Some(field), "{err}");
    assert!(err.message.contains(needle), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
}

#[test]
fn client_tls_files_are_checked_at_load() {
    let f = Files::new();
    let ok = parse(&f.tls("require", "cert.pem", "key.pem", "")).unwrap();
    assert_eq!(ok.tls.client_mode, ClientTlsMode::Require);
    assert_eq!(parse(MINIMAL).unwrap().tls, TlsConfig::default());

    field_error(
        &format!("{MINIMAL}\n[tls]\nclient_mode = \"prefer\"\n"),
        "tls.cert_file",
        "required",
    );
    field_error(
        &f.tls("allow", "missing.pem", "key.pem", ""),
        "tls.cert_file",
        "cannot read",
    );
    field_error(
        &f.tls("allow", "key.pem", "key.pem", ""),
        "tls.cert_file",
        "no certificate",
    );
    field_error(
        &f.tls("allow", "cert.pem", "cert.pem", ""),
        "tls.key_file",
        "private key",
    );
    field_error(
        &f.tls("allow", "cert.pem", "other.pem", ""),
        "tls.key_file",
        "does not match",
    );
    field_error(
        &format!("{MINIMAL}\n[tls]\nclient_mode = \"sometimes\"\n"),
        "tls.client_mode",
        "",
    );
}

#[test]
fn client_certificates_need_require_and_a_ca() {
    let f = Files::new();
    let ca = format!("client_ca_file = \"{}\"", f.path("cert.pem"));
    parse(&f.tls("require", "cert.pem", "key.pem", &ca)).unwrap();
    field_error(
        &f.tls("prefer", "cert.pem", "key.pem", &ca),
        "tls.client_ca_file",
        "require",
    );
    field_error(
        &f.tls("require", "cert.pem", "key.pem", "client_cert_user = true"),
        "tls.client_cert_user",
        "client_ca_file",
    );
}

#[test]
fn server_tls_is_overridable_per_server() {
    let f = Files::new();
    let text = format!(
        "[primary]\nhost = \"10.0.0.1\"\ntls_mode = \"verify-full\"\ntls_server_name = \"db.example\"\n\
         tls_ca_file = \"{}\"\n[[replicas]]\nhost = \"r\"\n\
         [[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"x\"\n\
         [tls]\nserver_mode = \"require\"\n",
        f.path("cert.pem")
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.server_tls_mode(&c.primary), ServerTlsMode::VerifyFull);
    assert_eq!(c.server_tls_mode(&c.replicas[0]), ServerTlsMode::Require);
    field_error(
        &text.replace(
            "tls_server_name = \"db.example\"",
            "tls_server_name = \"not a name\"",
        ),
        "primary.tls_server_name",
        "not a valid",
    );
    field_error(
        &text.replace("cert.pem", "missing.pem"),
        "primary.tls_ca_file",
        "cannot read",
    );
    field_error(
        &text.replace("server_mode = \"require\"", "server_mode = \"verify\""),
        "tls.server_mode",
        "",
    );
}
