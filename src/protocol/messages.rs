//! Builders for the messages pgsplit writes itself, and typed views of the few it reads.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::read_cstr;
use super::{backend, frontend};

/// Starts a tagged message in `out`; returns the offset of its length word for [`finish`].
#[inline]
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    at
}

/// Fills in the length word of a message started with [`begin`].
#[inline]
fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    // A NUL inside a field would end it early; drop such bytes rather than corrupt the frame.
    out.extend(s.iter().copied().filter(|&b| b != 0));
    out.put_u8(0);
}

/// Severity of an ErrorResponse pgsplit sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let at = begin(out, backend::ERROR_RESPONSE);
    for (field, value) in [
        (backend::FIELD_SEVERITY, severity.as_str()),
        (backend::FIELD_SEVERITY_NONLOCALIZED, severity.as_str()),
        (backend::FIELD_CODE, code),
        (backend::FIELD_MESSAGE, message),
    ] {
        out.put_u8(field);
        put_cstr(out, value.as_bytes());
    }
    out.put_u8(0);
    finish(out, at);
}

/// An ErrorResponse as a standalone buffer.
pub fn error_bytes(severity: Severity, code: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    error_response(&mut out, severity, code, message);
    out.freeze()
}

/// Appends a NoticeResponse (severity NOTICE).
pub fn notice_response(out: &mut BytesMut, code: &str, message: &str) {
    let at = begin(out, backend::NOTICE_RESPONSE);
    for (field, value) in [
        (backend::FIELD_SEVERITY, "NOTICE"),
        (backend::FIELD_SEVERITY_NONLOCALIZED, "NOTICE"),
        (backend::FIELD_CODE, code),
        (backend::FIELD_MESSAGE, message),
    ] {
        out.put_u8(field);
        put_cstr(out, value.as_bytes());
    }
    out.put_u8(0);
    finish(out, at);
}

/// Appends an Authentication message with the given sub-code and payload.
pub fn authentication(out: &mut BytesMut, code: u32, payload: &[u8]) {
    let at = begin(out, backend::AUTHENTICATION);
    out.put_u32(code);
    out.extend_from_slice(payload);
    finish(out, at);
}

/// AuthenticationOk.
pub const AUTH_OK: u32 = 0;
/// AuthenticationCleartextPassword.
pub const AUTH_CLEARTEXT: u32 = 3;
/// AuthenticationMD5Password.
pub const AUTH_MD5: u32 = 5;
/// AuthenticationSASL.
pub const AUTH_SASL: u32 = 10;
/// AuthenticationSASLContinue.
pub const AUTH_SASL_CONTINUE: u32 = 11;
/// AuthenticationSASLFinal.
pub const AUTH_SASL_FINAL: u32 = 12;

/// Appends AuthenticationSASL offering the given mechanisms.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let mut payload = BytesMut::new();
    for m in mechanisms {
        put_cstr(&mut payload, m.as_bytes());
    }
    payload.put_u8(0);
    authentication(out, AUTH_SASL, &payload);
}

/// Appends a ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin(out, backend::PARAMETER_STATUS);
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
    finish(out, at);
}

/// Appends BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(out, backend::BACKEND_KEY_DATA);
    out.put_i32(pid);
    out.put_i32(secret);
    finish(out, at);
}

/// Appends ReadyForQuery with a transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let at = begin(out, backend::READY_FOR_QUERY);
    out.put_u8(status);
    finish(out, at);
}

/// Appends an empty-bodied message such as ParseComplete (`1`) or CloseComplete (`3`).
pub fn empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_u32(4);
}

/// Appends a CommandComplete with the given tag text.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin(out, backend::COMMAND_COMPLETE);
    put_cstr(out, tag.as_bytes());
    finish(out, at);
}

/// Appends a RowDescription of text columns.
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    let at = begin(out, backend::ROW_DESCRIPTION);
    out.put_u16(columns.len() as u16);
    for c in columns {
        put_cstr(out, c.as_bytes());
        out.put_u32(0); // table oid
        out.put_u16(0); // column number
        out.put_u32(25); // type: text
        out.put_i16(-1); // type size
        out.put_i32(-1); // type modifier
        out.put_u16(0); // text format
    }
    finish(out, at);
}

/// Appends a DataRow of text values (`None` is NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let at = begin(out, backend::DATA_ROW);
    out.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.extend_from_slice(v.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    finish(out, at);
}

/// Appends a simple Query.
pub fn query(out: &mut BytesMut, sql: &str) {
    let at = begin(out, frontend::QUERY);
    put_cstr(out, sql.as_bytes());
    finish(out, at);
}

/// Appends a Parse message.
pub fn parse(out: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    let at = begin(out, frontend::PARSE);
    put_cstr(out, name);
    put_cstr(out, query);
    out.extend_from_slice(param_types);
    finish(out, at);
}

/// Appends a Close of a prepared statement (`S`) or portal (`P`).
pub fn close(out: &mut BytesMut, kind: u8, name: &[u8]) {
    let at = begin(out, frontend::CLOSE);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, at);
}

/// The text of a simple Query body (without the trailing NUL); `None` when malformed.
pub fn query_text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(query_bytes(body)?).ok()
}

/// The text of a Query body as bytes, whatever the client encoding.
pub fn query_bytes(body: &[u8]) -> Option<&[u8]> {
    let (text, _) = read_cstr(body)?;
    Some(text)
}

/// Appends a Bind of `portal` to `statement` with `params` (everything after the statement name, raw): how a
/// client's Bind is sent under pgsplit's name for its statement.
pub fn bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], params: &[u8]) {
    let at = begin(out, frontend::BIND);
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.extend_from_slice(params);
    finish(out, at);
}

/// Appends a Describe or Close (`tag`) of `kind`/`name`.
pub fn target_message(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let at = begin(out, tag);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, at);
}

/// Name and value of a ParameterStatus body.
pub fn parameter_status_view(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = read_cstr(body)?;
    let (value, _) = read_cstr(rest)?;
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

/// One field of an ErrorResponse or NoticeResponse body (`C` for SQLSTATE, `M` for message, …).
pub fn error_field(body: &[u8], field: u8) -> Option<&str> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let (value, after) = read_cstr(tail)?;
        if code == field {
            return std::str::from_utf8(value).ok();
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend::{BindView, ParseView};
    use crate::protocol::Frame;

    #[test]
    fn error_response_has_fields() {
        let mut out = BytesMut::new();
        error_response(
            &mut out,
            Severity::Fatal,
            "28P01",
            "password authentication failed",
        );
        let f = Frame::split(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        assert_eq!(error_field(&f.body, b'C'), Some("28P01"));
        assert_eq!(error_field(&f.body, b'S'), Some("FATAL"));
        assert_eq!(
            error_field(&f.body, b'M'),
            Some("password authentication failed")
        );
    }

    #[test]
    fn parse_and_bind_views() {
        let mut out = BytesMut::new();
        parse(&mut out, b"s1", b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let f = Frame::split(&mut out, 1 << 20).unwrap().unwrap();
        let p = ParseView::decode(&f.body).unwrap();
        assert_eq!((p.name, p.query), (&b"s1"[..], &b"SELECT $1"[..]));
        assert!(ParseView::decode(b"s1\0SELECT\0\0\x05").is_none());

        let body = b"\0s1\0\0\0\0\0\0\0";
        let b = BindView::decode(body).unwrap();
        assert_eq!(b.statement, b"s1");
        let mut out = BytesMut::new();
        bind(&mut out, b.portal, b"pgsplit_9", b.rest);
        let f = Frame::split(&mut out, 1 << 20).unwrap().unwrap();
        let b2 = BindView::decode(&f.body).unwrap();
        assert_eq!((b2.statement, b2.rest), (&b"pgsplit_9"[..], b.rest));
    }
}
