//! Socket reads for the data path.
//!
//! tokio forgets a socket's read readiness only when a read fails with `WouldBlock`, so a loop of "wait until
//! readable, read" costs one extra `recv` per message that finds nothing. A read that returns less than the
//! room it was given has emptied the socket's receive queue: [`read_available`] clears the readiness right
//! there. Data that arrives afterwards raises a new edge-triggered event, so nothing is missed.

use std::io;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads what `stream` has into `buf`'s spare room. `Ok(0)` is end of stream; `WouldBlock` when nothing was
/// waiting. The caller makes room first (a full buffer gets 64 bytes from `BytesMut`).
pub fn read_available(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = 0;
    let result = stream.try_io(Interest::READABLE, || {
        got = stream.try_read_buf(buf)?;
        if got > 0 && got < room {
            // Drained: report WouldBlock to tokio so it clears readiness; the bytes are kept in `got`.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reads_everything_across_drains() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut writer = TcpStream::connect(addr).await.unwrap();
        let (reader, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::with_capacity(1024);
        let mut total = 0;
        for round in 0..50u8 {
            writer.write_all(&[round; 100]).await.unwrap();
            // Each message is shorter than the room: the read drains and readiness is cleared; the next
            // message must wake `readable` again.
            while total < (usize::from(round) + 1) * 100 {
                reader.readable().await.unwrap();
                match read_available(&reader, &mut buf) {
                    Ok(n) => total += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                if buf.capacity() - buf.len() < 256 {
                    buf.clear();
                }
            }
        }
        assert_eq!(total, 5000);
        drop(writer);
        reader.readable().await.unwrap();
        assert_eq!(read_available(&reader, &mut buf).unwrap(), 0);
    }
}
