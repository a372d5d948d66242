//! The two facts pgsplit reads from an X.509 certificate with a minimal DER walk: the signature algorithm (for
//! the tls-server-end-point channel binding hash, RFC 5929 §4.1) and the subject's common name (client
//! certificates with `client_cert_user`). Malformed input gives `None`, never a panic.

/// The hash tls-server-end-point uses for a certificate signed with a given algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPointHash {
    /// SHA-256 (also for MD5 and SHA-1 signatures).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: (tag, content, what follows).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest.get(n..)?)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The certificate's signature algorithm as the end-point hash, when known.
pub fn end_point_hash(cert: &[u8]) -> Option<EndPointHash> {
    let (_, certificate, _) = element(cert)?;
    let (_, _tbs, rest) = element(certificate)?;
    let (_, algorithm, _) = element(rest)?;
    let (tag, oid, _) = element(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    if let Some(last) = oid.strip_prefix(RSA) {
        return match last {
            [0x04] | [0x05] | [0x0b] => Some(EndPointHash::Sha256),
            [0x0c] => Some(EndPointHash::Sha384),
            [0x0d] => Some(EndPointHash::Sha512),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 {
        return Some(EndPointHash::Sha256);
    }
    match oid.strip_prefix(ECDSA_SHA2)? {
        [0x02] => Some(EndPointHash::Sha256),
        [0x03] => Some(EndPointHash::Sha384),
        [0x04] => Some(EndPointHash::Sha512),
        _ => None,
    }
}

/// The subject's common name.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    let (_, certificate, _) = element(cert)?;
    let (_, tbs, _) = element(certificate)?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature, issuer, validity, subject.
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (_, mut subject, _) = element(rest)?;
    while !subject.is_empty() {
        let (_, set, next) = element(subject)?;
        subject = next;
        let (_, pair, _) = element(set)?;
        let (_, oid, value) = element(pair)?;
        if oid == COMMON_NAME {
            let (_, text, _) = element(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_signature_hash_and_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "pgsplit tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "app");
        for (alg, hash) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, EndPointHash::Sha256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, EndPointHash::Sha384),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = params.clone().self_signed(&key).unwrap();
            assert_eq!(end_point_hash(cert.der()), Some(hash));
            assert_eq!(subject_common_name(cert.der()).as_deref(), Some("app"));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            end_point_hash(cert.der()),
            None,
            "Ed25519 has no end-point hash"
        );
    }

    #[test]
    fn malformed_input_is_none() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x05, 0x30],
        ] {
            assert_eq!(end_point_hash(input), None);
            assert_eq!(subject_common_name(input), None);
        }
    }
}
