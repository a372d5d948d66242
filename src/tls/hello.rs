//! A client's first TLS record, read whole before rustls sees it, to explain one refusal rustls makes.
//!
//! libpq sends its `host` as SNI even when that is the default socket directory (a connection string with only
//! `hostaddr`: SNI `/var/run/postgresql`). OpenSSL servers (PostgreSQL, PgBouncer) ignore such a name; rustls
//! refuses the handshake with an alert, and the ClientHello cannot be altered (TLS 1.3 signs the transcript). So
//! pgsplit logs what the client should change (`host=…`, or `sslsni=0`). Anything it cannot read is left to
//! rustls.

use std::io;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;

/// Reads until `buf` (which may already hold the start, for direct TLS) has the client's first TLS record whole.
pub async fn read_first_record(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    loop {
        if let Some(header) = buf.get(..RECORD_HEADER) {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != HANDSHAKE || buf.len() >= RECORD_HEADER + len {
                return Ok(());
            }
        }
        tcp.readable().await?;
        match tcp.try_read_buf(buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// The name of a `server_name` extension in the ClientHello starting `b` that is neither a DNS name nor an IP
/// address (rustls refuses those), for a log line.
pub fn unusable_sni(b: &[u8]) -> Option<String> {
    let names = find_unusable_sni(b)?;
    Some(String::from_utf8_lossy(names.get(5..).unwrap_or_default()).into_owned())
}

fn find_unusable_sni(b: &[u8]) -> Option<&[u8]> {
    if *b.first()? != HANDSHAKE || *b.get(RECORD_HEADER)? != CLIENT_HELLO {
        return None;
    }
    let record_end = RECORD_HEADER + u16_at(b, 3)?;
    let hello_len = (usize::from(*b.get(6)?) << 16) | u16_at(b, 7)?;
    let hello_end = RECORD_HEADER + 4 + hello_len;
    if hello_end > record_end || record_end > b.len() {
        return None; // a ClientHello over several records: left alone
    }
    // version, random, session id, cipher suites, compression methods.
    let mut at = RECORD_HEADER + 4 + 2 + 32;
    at += 1 + usize::from(*b.get(at)?);
    at += 2 + u16_at(b, at)?;
    at += 1 + usize::from(*b.get(at)?);
    let end = at + 2 + u16_at(b, at)?;
    if end != hello_end {
        return None;
    }
    at += 2;
    while at + 4 <= end {
        let kind = u16_at(b, at)?;
        let len = u16_at(b, at + 2)?;
        if kind == SERVER_NAME as usize {
            let names = b.get(at + 4..at + 4 + len)?;
            return (!usable(names)).then_some(names);
        }
        at += 4 + len;
    }
    None
}

/// Whether a server_name list holds one host name that is a DNS name or an IP address.
fn usable(names: &[u8]) -> bool {
    // list length, name type (0: host_name), name length, name.
    let Some(name) = names.get(5..) else {
        return false;
    };
    names.get(2) == Some(&0)
        && std::str::from_utf8(name)
            .is_ok_and(|n| rustls_pki_types::ServerName::try_from(n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with `extensions` (type, data), in one record.
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![CLIENT_HELLO, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut record = vec![HANDSHAKE, 3, 1];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    fn sni(name: &str) -> Vec<u8> {
        let mut d = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        d.push(0);
        d.extend_from_slice(&(name.len() as u16).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d
    }

    #[test]
    fn finds_a_socket_directory_sent_as_sni() {
        let other = (43u16, vec![2, 3, 4]);
        let found = unusable_sni(&hello(&[(0, sni("/var/run/postgresql")), other.clone()]));
        assert_eq!(found.as_deref(), Some("/var/run/postgresql"));
        for name in ["db.example", "127.0.0.1"] {
            assert_eq!(unusable_sni(&hello(&[(0, sni(name)), other.clone()])), None);
        }
        assert_eq!(unusable_sni(&hello(&[other])), None);
    }

    #[test]
    fn leaves_what_it_cannot_read() {
        let whole = hello(&[(0, sni("/tmp"))]);
        for cut in 0..whole.len() {
            assert_eq!(unusable_sni(&whole[..cut]), None);
        }
    }
}
