//! Messages a client sends (the frontend side of the protocol): their tags, and [`Message`], the typed view a
//! client frame is decoded into once, then passed along (routing, rewriting, forwarding) without decoding again.

use bytes::Bytes;

use super::frame::read_cstr;
use super::Frame;

/// Query (simple protocol).
pub const QUERY: u8 = b'Q';
/// Parse.
pub const PARSE: u8 = b'P';
/// Bind.
pub const BIND: u8 = b'B';
/// Describe.
pub const DESCRIBE: u8 = b'D';
/// Execute.
pub const EXECUTE: u8 = b'E';
/// Close.
pub const CLOSE: u8 = b'C';
/// Sync.
pub const SYNC: u8 = b'S';
/// Flush.
pub const FLUSH: u8 = b'H';
/// FunctionCall.
pub const FUNCTION_CALL: u8 = b'F';
/// CopyData.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';
/// CopyFail.
pub const COPY_FAIL: u8 = b'f';
/// Terminate.
pub const TERMINATE: u8 = b'X';
/// PasswordMessage (and the SASL responses, which share its tag).
pub const PASSWORD: u8 = b'p';

/// Describe/Close kind byte: a prepared statement.
pub const KIND_STATEMENT: u8 = b'S';
/// Describe/Close kind byte: a portal.
pub const KIND_PORTAL: u8 = b'P';

/// What a Describe or Close names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement (empty: the unnamed one).
    Statement(Bytes),
    /// A portal (empty: the unnamed one).
    Portal(Bytes),
}

/// A Parse, as zero-copy slices of its frame's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    /// Statement name (empty: the unnamed statement).
    pub name: Bytes,
    /// Statement text, in the client's encoding.
    pub query: Bytes,
    /// The parameter-type section, raw (count + OIDs).
    pub param_types: Bytes,
}

/// A Bind, as zero-copy slices of its frame's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Destination portal name.
    pub portal: Bytes,
    /// Source prepared statement name.
    pub statement: Bytes,
    /// Everything after the statement name (formats, parameters, result formats), raw.
    pub params: Bytes,
}

/// A client message, decoded from its frame once. Names and texts are zero-copy slices of the frame's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Query: its text, without the terminating NUL (in the client's encoding).
    Query {
        text: Bytes,
    },
    Parse(Parse),
    Bind(Bind),
    Describe(Target),
    Close(Target),
    Execute,
    Sync,
    Flush,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
    Terminate,
    /// A password message after authentication (a protocol violation there).
    Password,
}

/// A client frame and its decoded view.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The raw frame, forwarded as it is unless a rewrite is needed.
    pub frame: Frame,
    pub message: Message,
}

/// Why a client frame could not be decoded; the text is what the client is told (08P01).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid Query message")]
    Query,
    #[error("invalid Parse message")]
    Parse,
    #[error("invalid Bind message")]
    Bind,
    #[error("invalid Describe or Close message")]
    Target,
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}

impl Decoded {
    /// Decodes a client frame. Only what routing reads is looked at: names, texts, Describe/Close targets.
    pub fn decode(frame: Frame) -> Result<Decoded, DecodeError> {
        let body = &frame.body;
        let slice = |part: &[u8]| body.slice_ref(part);
        let message = match frame.tag {
            QUERY => {
                let (text, _) = read_cstr(body).ok_or(DecodeError::Query)?;
                Message::Query { text: slice(text) }
            }
            PARSE => {
                let view = ParseView::decode(body).ok_or(DecodeError::Parse)?;
                Message::Parse(Parse {
                    name: slice(view.name),
                    query: slice(view.query),
                    param_types: slice(view.param_types),
                })
            }
            BIND => {
                let view = BindView::decode(body).ok_or(DecodeError::Bind)?;
                Message::Bind(Bind {
                    portal: slice(view.portal),
                    statement: slice(view.statement),
                    params: slice(view.rest),
                })
            }
            DESCRIBE | CLOSE => {
                let (kind, name) = target(body).ok_or(DecodeError::Target)?;
                let name = slice(name);
                let target = if kind == KIND_STATEMENT {
                    Target::Statement(name)
                } else {
                    Target::Portal(name)
                };
                if frame.tag == DESCRIBE {
                    Message::Describe(target)
                } else {
                    Message::Close(target)
                }
            }
            EXECUTE => Message::Execute,
            SYNC => Message::Sync,
            FLUSH => Message::Flush,
            FUNCTION_CALL => Message::FunctionCall,
            COPY_DATA => Message::CopyData,
            COPY_DONE => Message::CopyDone,
            COPY_FAIL => Message::CopyFail,
            TERMINATE => Message::Terminate,
            PASSWORD => Message::Password,
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(Decoded { frame, message })
    }
}

/// The target of a Describe or Close body: `S` (statement) or `P` (portal), and its name.
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, tail) = read_cstr(rest)?;
    (matches!(kind, KIND_STATEMENT | KIND_PORTAL) && tail.is_empty()).then_some((kind, name))
}

/// A view of a Parse body.
#[derive(Debug, Clone, Copy)]
pub struct ParseView<'a> {
    /// Statement name (empty: the unnamed statement).
    pub name: &'a [u8],
    /// Statement text.
    pub query: &'a [u8],
    /// The parameter-type section, raw (count + OIDs).
    pub param_types: &'a [u8],
}

impl<'a> ParseView<'a> {
    /// Decodes a Parse body; `None` when malformed.
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let (name, rest) = read_cstr(body)?;
        let (query, param_types) = read_cstr(rest)?;
        if param_types.len() < 2 {
            return None;
        }
        let n = u16::from_be_bytes([param_types[0], param_types[1]]) as usize;
        if param_types.len() != 2 + 4 * n {
            return None;
        }
        Some(ParseView {
            name,
            query,
            param_types,
        })
    }
}

/// A view of a Bind body: the portal and statement names, and the rest raw.
#[derive(Debug, Clone, Copy)]
pub struct BindView<'a> {
    /// Destination portal name.
    pub portal: &'a [u8],
    /// Source prepared statement name.
    pub statement: &'a [u8],
    /// Everything after the statement name, raw.
    pub rest: &'a [u8],
}

impl<'a> BindView<'a> {
    /// Decodes the names at the start of a Bind body; `None` when malformed.
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let (portal, rest) = read_cstr(body)?;
        let (statement, rest) = read_cstr(rest)?;
        Some(BindView {
            portal,
            statement,
            rest,
        })
    }
}

/// Parameter `n` (1-based) of a Bind, from the part after its names (`rest`), as text: `Some(None)` for NULL,
/// `None` when it cannot be read as text (absent, malformed, or binary unless `binary_is_text`: the statement
/// declared the parameter's type as `text` or `varchar`, whose binary form is the text itself).
pub fn bind_text_param(rest: &[u8], n: usize, binary_is_text: bool) -> Option<Option<&[u8]>> {
    let index = n.checked_sub(1)?;
    let u16_at = |b: &[u8], i: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize)
    };
    let formats = u16_at(rest, 0)?;
    let format = match formats {
        0 => 0,
        1 => u16_at(rest, 2)?,
        _ if index < formats => u16_at(rest, 2 + 2 * index)?,
        _ => return None,
    };
    if format != 0 && !(format == 1 && binary_is_text) {
        return None;
    }
    let mut at = 2 + 2 * formats;
    let count = u16_at(rest, at)?;
    if index >= count {
        return None;
    }
    at += 2;
    for i in 0..=index {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let value = match usize::try_from(len) {
            Ok(len) => {
                let end = at.checked_add(len)?;
                let value = rest.get(at..end)?;
                at = end;
                Some(value)
            }
            Err(_) => None,
        };
        if i == index {
            return Some(value);
        }
    }
    None
}

/// The type OID the Parse section `param_types` (count + OIDs) declares for parameter `n` (1-based); 0 when
/// not declared.
pub fn declared_param_type(param_types: &[u8], n: usize) -> u32 {
    let at = 2 + 4 * n.saturating_sub(1);
    param_types
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages;
    use bytes::BytesMut;

    fn decode(build: impl FnOnce(&mut BytesMut)) -> Result<Message, DecodeError> {
        let mut out = BytesMut::new();
        build(&mut out);
        let frame = Frame::split(&mut out, 1 << 20).unwrap().unwrap();
        Decoded::decode(frame).map(|d| d.message)
    }

    #[test]
    fn bind_parameters_are_read_as_text_when_they_are_text() {
        // formats: none (all text); params: 'UTC', NULL.
        let mut rest = vec![0, 0, 0, 2, 0, 0, 0, 3];
        rest.extend_from_slice(b"UTC");
        rest.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(bind_text_param(&rest, 1, false), Some(Some(&b"UTC"[..])));
        assert_eq!(bind_text_param(&rest, 2, false), Some(None));
        assert_eq!(bind_text_param(&rest, 3, false), None);
        assert_eq!(bind_text_param(&rest, 0, false), None);
        // One binary format for all: only when the declared type makes binary the text.
        let mut binary = vec![0, 1, 0, 1, 0, 1, 0, 0, 0, 1, b'x'];
        assert_eq!(bind_text_param(&binary, 1, false), None);
        assert_eq!(bind_text_param(&binary, 1, true), Some(Some(&b"x"[..])));
        // Per-parameter formats: text then binary.
        binary = vec![0, 2, 0, 0, 0, 1, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 1, b'b'];
        assert_eq!(bind_text_param(&binary, 1, false), Some(Some(&b"a"[..])));
        assert_eq!(bind_text_param(&binary, 2, false), None);
        // Truncated or malformed: nothing.
        for bad in [
            &[][..],
            &[0],
            &[0, 0, 0, 1, 0, 0, 0, 9, b'a'],
            &[0, 0, 0, 1, 0, 0],
        ] {
            assert_eq!(bind_text_param(bad, 1, false), None, "{bad:?}");
        }
        assert_eq!(declared_param_type(&[0, 2, 0, 0, 0, 25, 0, 0, 0, 0], 1), 25);
        assert_eq!(declared_param_type(&[0, 2, 0, 0, 0, 25, 0, 0, 0, 0], 2), 0);
        assert_eq!(declared_param_type(&[0, 0], 1), 0);
    }

    #[test]
    fn messages_decode_into_slices_of_the_frame() {
        assert_eq!(
            decode(|o| messages::query(o, "SELECT 1")),
            Ok(Message::Query {
                text: Bytes::from_static(b"SELECT 1")
            })
        );
        assert_eq!(
            decode(|o| messages::parse(o, b"s1", b"SELECT $1", &[0, 1, 0, 0, 0, 23])),
            Ok(Message::Parse(Parse {
                name: Bytes::from_static(b"s1"),
                query: Bytes::from_static(b"SELECT $1"),
                param_types: Bytes::from_static(&[0, 1, 0, 0, 0, 23]),
            }))
        );
        assert_eq!(
            decode(|o| messages::target_message(o, DESCRIBE, KIND_PORTAL, b"p")),
            Ok(Message::Describe(Target::Portal(Bytes::from_static(b"p"))))
        );
        assert_eq!(
            decode(|o| messages::close(o, KIND_STATEMENT, b"")),
            Ok(Message::Close(Target::Statement(Bytes::new())))
        );
        assert_eq!(decode(|o| messages::empty(o, SYNC)), Ok(Message::Sync));
    }

    #[test]
    fn malformed_messages_are_decode_errors() {
        let frame = |tag: u8, body: &'static [u8]| Frame {
            tag,
            body: Bytes::from_static(body),
        };
        let err = |f: Frame| Decoded::decode(f).err();
        assert_eq!(err(frame(QUERY, b"no nul")), Some(DecodeError::Query));
        // A parameter count that says more OIDs than there are.
        assert_eq!(
            err(frame(PARSE, b"s1\0SELECT\0\0\x05")),
            Some(DecodeError::Parse)
        );
        assert_eq!(err(frame(PARSE, b"s1\0SELECT\0")), Some(DecodeError::Parse));
        assert_eq!(err(frame(BIND, b"portal\0")), Some(DecodeError::Bind));
        assert_eq!(err(frame(DESCRIBE, b"Xname\0")), Some(DecodeError::Target));
        assert_eq!(err(frame(CLOSE, b"S")), Some(DecodeError::Target));
        assert_eq!(err(frame(b'?', b"")), Some(DecodeError::UnknownType(b'?')));
    }

    #[test]
    fn target_rejects_garbage() {
        assert_eq!(target(b"Sname\0"), Some((b'S', &b"name"[..])));
        assert_eq!(target(b"Xname\0"), None);
        assert_eq!(target(b"S"), None);
        assert_eq!(target(b"Sname\0tail"), None);
    }
}
