//! The untagged first message of a connection: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.

use bytes::{BufMut, BytesMut};

use super::frame::read_cstr;

/// Longest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Protocol 3.0.
pub const PROTOCOL_V3: u32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// A decoded first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// StartupMessage: protocol minor version and parameters in order.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest with the backend key.
    Cancel { pid: i32, secret: i32 },
}

/// Why a first message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Length word outside 8..=MAX_STARTUP_LEN.
    #[error("invalid length of startup packet: {0}")]
    BadLength(u32),
    /// Protocol major version other than 3.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    Unsupported(u16, u16),
    /// A malformed body.
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Checks whether `buf` holds a whole startup packet; returns its length.
pub fn check(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_LEN as u32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

/// Decodes a whole startup packet (length word included).
pub fn decode(packet: &[u8]) -> Result<Startup, StartupError> {
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST => {
            if body.len() != 8 {
                return Err(StartupError::Malformed("cancel request must carry 8 bytes"));
            }
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            Ok(Startup::Cancel { pid, secret })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::Unsupported(major, minor));
            }
            let mut params = Vec::new();
            let mut rest = body;
            loop {
                let (name, after) =
                    read_cstr(rest).ok_or(StartupError::Malformed("missing terminator"))?;
                if name.is_empty() {
                    if !after.is_empty() {
                        return Err(StartupError::Malformed("bytes after the terminator"));
                    }
                    break;
                }
                let (value, after) =
                    read_cstr(after).ok_or(StartupError::Malformed("parameter without value"))?;
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| StartupError::Malformed("non-UTF-8 name"))?;
                let value = String::from_utf8(value.to_vec())
                    .map_err(|_| StartupError::Malformed("non-UTF-8 value"))?;
                params.push((name, value));
                rest = after;
            }
            Ok(Startup::Startup { minor, params })
        }
    }
}

/// Appends NegotiateProtocolVersion: we speak 3.0 and none of the listed `_pq_` options.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognized: &[String]) {
    out.put_u8(super::backend::NEGOTIATE_PROTOCOL_VERSION);
    let at = out.len();
    out.put_u32(0);
    // The newest minor version supported, as the whole version number (3.0), as PostgreSQL sends it.
    out.put_u32(3 << 16);
    out.put_u32(unrecognized.len() as u32);
    for o in unrecognized {
        out.extend_from_slice(o.as_bytes());
        out.put_u8(0);
    }
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a StartupMessage (protocol 3.0) with the given parameters.
pub fn encode_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let at = out.len();
    out.put_u32(0);
    out.put_u32(PROTOCOL_V3);
    for (k, v) in params {
        out.extend_from_slice(k.as_bytes());
        out.put_u8(0);
        out.extend_from_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(out: &mut BytesMut) {
    out.put_u32(8);
    out.put_u32(SSL_REQUEST);
}

/// Appends a CancelRequest for a server's backend key.
pub fn encode_cancel(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u32(16);
    out.put_u32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let mut out = BytesMut::new();
        encode_startup(&mut out, &[("user", "app"), ("database", "db")]);
        let len = check(&out).unwrap().unwrap();
        assert_eq!(len, out.len());
        let s = decode(&out).unwrap();
        assert_eq!(
            s,
            Startup::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
    }

    #[test]
    fn rejects_v2_and_bad_lengths() {
        assert_eq!(check(&[0, 0, 0, 3]), Err(StartupError::BadLength(3)));
        assert_eq!(
            check(&[0x7f, 0xff, 0xff, 0xff]),
            Err(StartupError::BadLength(0x7fff_ffff))
        );
        let v2 = [0, 0, 0, 8, 0, 2, 0, 0];
        assert_eq!(decode(&v2), Err(StartupError::Unsupported(2, 0)));
        let mut c = BytesMut::new();
        encode_cancel(&mut c, 7, 9);
        assert_eq!(decode(&c), Ok(Startup::Cancel { pid: 7, secret: 9 }));
        assert!(decode(&[0, 0, 0, 9, 0, 3, 0, 0, b'u']).is_err());
    }
}
