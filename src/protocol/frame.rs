//! Framing: a 1-byte tag, a 4-byte big-endian length (counting itself) and a body kept as `Bytes`.
//!
//! Reading is two steps, as in mini-redis: [`check`] says whether a whole frame is buffered (without copying),
//! then [`Frame::split`] takes it out of the buffer as zero-copy `Bytes`. Outside the data path (logins, the
//! admin console, pgsplit's own statements), [`read_frame`] reads a socket until one whole frame is in.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of a tagged message header: tag + length.
pub const HEADER_LEN: usize = 5;

/// One tagged protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte (`Q`, `P`, `Z`, …).
    pub tag: u8,
    /// The body after the length word.
    pub body: Bytes,
}

/// A frame header that cannot be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length word is below its own 4 bytes.
    #[error("invalid message length {0} for message type '{1}'")]
    TooShort(u32, char),
    /// The length word is above the accepted maximum.
    #[error("message of type '{tag}' is {len} bytes, above the limit of {max} bytes")]
    TooLong { tag: char, len: u32, max: usize },
}

/// Checks whether `buf` starts with a complete frame; returns its total length (header included).
///
/// `Ok(None)` means more bytes are needed. A length outside `4..=max` is an error: the caller answers 08P01.
#[inline]
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::TooShort(len, buf[0] as char));
    }
    if len as usize > max {
        return Err(FrameError::TooLong {
            tag: buf[0] as char,
            len,
            max,
        });
    }
    let total = len as usize + 1;
    Ok((buf.len() >= total).then_some(total))
}

impl Frame {
    /// Takes the first frame out of `buf` if it is complete.
    pub fn split(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
        let Some(total) = check(buf, max)? else {
            return Ok(None);
        };
        let mut raw = buf.split_to(total);
        let tag = raw[0];
        raw.advance(HEADER_LEN);
        Ok(Some(Frame {
            tag,
            body: raw.freeze(),
        }))
    }

    /// Appends the frame, header included, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(HEADER_LEN + self.body.len());
        out.extend_from_slice(&[self.tag]);
        out.extend_from_slice(&((self.body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// Why [`read_frame`] returned no frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The buffered header cannot be valid (the caller answers 08P01).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the connection before a whole frame came in.
    #[error("connection closed")]
    Closed,
    /// Reading the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads from `socket` into `buf` until `buf` starts with a whole frame of at most `max` bytes, and takes it out
/// (bytes after it stay in `buf`). A frame already buffered is returned without reading.
pub async fn read_frame<R: AsyncRead + Unpin>(
    socket: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, ReadError> {
    loop {
        if let Some(frame) = Frame::split(buf, max)? {
            return Ok(frame);
        }
        if socket.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the rest after the NUL.
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_waits_for_whole_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q\0\0\0\x09SEL");
        assert_eq!(check(&buf, 1024), Ok(None));
        buf.extend_from_slice(b"1\0Z");
        assert_eq!(check(&buf, 1024), Ok(Some(10)));
        let f = Frame::split(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(&f.body[..], b"SEL1\0");
        assert_eq!(&buf[..], b"Z");
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(matches!(
            check(b"Q\0\0\0\x03", 1024),
            Err(FrameError::TooShort(3, 'Q'))
        ));
        assert!(matches!(
            check(b"Q\x7f\xff\xff\xff", 1024),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[tokio::test]
    async fn read_frame_reads_whole_frames_and_tells_eof_from_bad_lengths() {
        let mut socket: &[u8] = b"Q\0\0\0\x09SEL1\0X\0\0\0\x04S\0";
        let mut buf = BytesMut::new();
        let f = read_frame(&mut socket, &mut buf, 1024).await.unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Q', &b"SEL1\0"[..]));
        let f = read_frame(&mut socket, &mut buf, 1024).await.unwrap();
        assert_eq!((f.tag, f.body.len()), (b'X', 0));
        assert!(matches!(
            read_frame(&mut socket, &mut buf, 1024).await,
            Err(ReadError::Closed)
        ));
        let mut socket: &[u8] = b"Q\0\0\x10\0";
        assert!(matches!(
            read_frame(&mut socket, &mut BytesMut::new(), 1024).await,
            Err(ReadError::Frame(FrameError::TooLong { .. }))
        ));
    }

    #[test]
    fn encode_round_trips() {
        let f = Frame {
            tag: b'X',
            body: Bytes::new(),
        };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        assert_eq!(&out[..], b"X\0\0\0\x04");
        assert_eq!(Frame::split(&mut out, 16).unwrap(), Some(f));
    }
}
