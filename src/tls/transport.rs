//! [`Transport`]: a TCP socket, plain or carrying TLS, with the readiness-based non-blocking calls the data path
//! makes (`readable`, [`Transport::read_available`], `writable`, [`Transport::try_write`]) and tokio's
//! `AsyncRead`/`AsyncWrite` for the login and the console.
//!
//! Plain TCP goes straight to the socket: no cost when TLS is off. With TLS, reads pull ciphertext with
//! `try_read` into rustls and copy *all* the plaintext it has into the caller's buffer, so nothing waits inside
//! rustls between wake-ups (`buffered` covers plaintext left by the handshake or an `AsyncRead` call); writes
//! hand plaintext to rustls and push ciphertext with `try_write`. Ciphertext that did not fit waits in rustls:
//! [`Transport::wants_write`] tells the loop to wait for `writable` until it is sent.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::net;

/// Plaintext copied out of rustls by one [`Transport::read_available`] before it yields (fairness).
const MAX_READ_PER_CALL: usize = 512 * 1024;

/// A client or server connection: TCP, with TLS when negotiated.
pub struct Transport {
    tcp: TcpStream,
    tls: Option<Box<Tls>>,
}

struct Tls {
    conn: rustls::Connection,
    /// tls-server-end-point data of the certificate pgsplit presented on this connection.
    binding: Option<Arc<[u8]>>,
    /// rustls may hold plaintext not yet copied out: the next read must not wait for the socket.
    buffered: bool,
}

/// `io::Read`/`io::Write` over a tokio socket's non-blocking calls (readiness is cleared on `WouldBlock`).
struct Sock<'a>(&'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Transport {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport { tcp, tls: None }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether TLS is in use.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS connection, when TLS is in use (peer certificates, ALPN, …).
    pub fn tls_connection(&self) -> Option<&rustls::Connection> {
        self.tls.as_deref().map(|t| &t.conn)
    }

    /// Runs a TLS handshake over this (plain) connection. `early` holds bytes already read from the socket that
    /// belong to the handshake (direct TLS). Plaintext that arrived with the handshake's end stays for the next
    /// read.
    pub async fn handshake(
        &mut self,
        conn: impl Into<rustls::Connection>,
        early: &[u8],
    ) -> io::Result<()> {
        let mut conn = conn.into();
        let mut early = early;
        while !early.is_empty() {
            conn.read_tls(&mut early)?;
            conn.process_new_packets().map_err(tls_error)?;
        }
        self.tls = Some(Box::new(Tls {
            conn,
            binding: None,
            buffered: true,
        }));
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Transport { tcp, tls } = self;
        let Some(tls) = tls.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            while tls.conn.wants_write() {
                match tls.conn.write_tls(&mut Sock(tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(tcp.poll_write_ready(cx))?;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if !tls.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match tls.conn.read_tls(&mut Sock(tcp)) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed during the TLS handshake",
                    )))
                }
                Ok(_) => {
                    if let Err(e) = tls.conn.process_new_packets() {
                        // Send the alert that says why, then fail.
                        let _ = tls.conn.write_tls(&mut Sock(tcp));
                        return Poll::Ready(Err(tls_error(e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Records the channel binding data of the certificate pgsplit presented here (see [`Transport::channel_binding`]).
    pub fn set_channel_binding(&mut self, data: Option<Arc<[u8]>>) {
        if let Some(t) = self.tls.as_deref_mut() {
            t.binding = data;
        }
    }

    /// The tls-server-end-point data of this connection's certificate (pgsplit's), when on TLS and known.
    pub fn channel_binding(&self) -> Option<&[u8]> {
        self.tls.as_deref().and_then(|t| t.binding.as_deref())
    }

    /// Waits until a read may find something: at once when rustls holds plaintext.
    pub async fn readable(&self) -> io::Result<()> {
        match &self.tls {
            Some(t) if t.buffered => Ok(()),
            _ => self.tcp.readable().await,
        }
    }

    /// Waits until the socket takes writes.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// [`Transport::readable`] as a poll: no future to keep, the waker sits in the socket's own slot (one task
    /// per connection).
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.tls {
            Some(t) if t.buffered => Poll::Ready(Ok(())),
            _ => self.tcp.poll_read_ready(cx),
        }
    }

    /// [`Transport::writable`] as a poll.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    /// Whether ciphertext waits to be sent: keep waiting for `writable` and call [`Transport::try_write`].
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.wants_write())
    }

    /// Reads what is available into `buf` (plaintext). `Ok(0)` is end of stream; `WouldBlock` when nothing was
    /// waiting. With TLS, all the plaintext rustls has is copied (`buf` grows as needed).
    pub fn read_available(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let Transport { tcp, tls } = self;
        let Some(tls) = tls.as_deref_mut() else {
            return net::read_available(tcp, buf);
        };
        let mut got = tls.drain_plaintext(buf)?;
        while got < MAX_READ_PER_CALL {
            match tls.conn.read_tls(&mut Sock(tcp)) {
                Ok(0) => {
                    if got > 0 {
                        // The end is seen again by the next read.
                        return Ok(got);
                    }
                    return Ok(0);
                }
                Ok(_) => {
                    if let Err(e) = tls.conn.process_new_packets() {
                        let _ = tls.conn.write_tls(&mut Sock(tcp));
                        return Err(tls_error(e));
                    }
                    got += tls.drain_plaintext(buf)?;
                    // Key updates and the like: answered right away when the socket takes them.
                    tls.flush(tcp)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            if tls.closed() {
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    }

    /// Writes as much of `data` as the connection takes now; `WouldBlock` when it takes nothing. With TLS the
    /// plaintext is accepted into rustls (bounded) and ciphertext sent as far as the socket allows; call it
    /// with an empty `data` to push ciphertext still waiting.
    pub fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Transport { tcp, tls } = self;
        let Some(tls) = tls.as_deref_mut() else {
            return tcp.try_write(data);
        };
        tls.flush(tcp)?;
        let n = if data.is_empty() {
            0
        } else {
            tls.conn.writer().write(data)?
        };
        tls.flush(tcp)?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Whether the connection looks idle and open: nothing unsolicited arrived and it did not close. Consumes
    /// pending TLS records (a session ticket is harmless).
    pub fn is_quiet(&mut self) -> bool {
        if self.tls.is_none() {
            let mut b = [0u8; 1];
            return matches!(self.tcp.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        }
        // Nothing arrived since the socket was last drained: quiet, without reading (the usual case).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.tcp.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = BytesMut::new();
        matches!(self.read_available(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl Tls {
    /// Copies every byte of plaintext rustls holds into `buf`.
    fn drain_plaintext(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut got = 0;
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            // Zeroed room handed out as `&mut [u8]`: bounded, so a buffer reserved for a large frame is not
            // zeroed whole on every read.
            let room = (buf.capacity() - buf.len()).min(64 * 1024);
            let start = buf.len();
            buf.resize(start + room, 0);
            let result = self.conn.reader().read(&mut buf[start..]);
            match result {
                Ok(0) => {
                    buf.truncate(start);
                    break;
                }
                Ok(n) => {
                    buf.truncate(start + n);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf.truncate(start);
                    break;
                }
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            }
        }
        self.buffered = false;
        Ok(got)
    }

    /// Whether the peer closed (close_notify, or the socket ended).
    fn closed(&mut self) -> bool {
        matches!(self.conn.process_new_packets(), Ok(s) if s.peer_has_closed())
    }

    /// Sends ciphertext while the socket takes it (`WouldBlock` is not an error here).
    fn flush(&mut self, tcp: &TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Sock(tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Transport { tcp, tls } = this;
        let Some(tls) = tls.as_deref_mut() else {
            return Pin::new(tcp).poll_read(cx, out);
        };
        loop {
            match tls.conn.reader().read(out.initialize_unfilled()) {
                Ok(n) => {
                    out.advance(n);
                    // There may be more: the next readiness wait must not block on the socket.
                    tls.buffered = n > 0;
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tls.buffered = false,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            match tls.conn.read_tls(&mut Sock(tcp)) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {
                    if let Err(e) = tls.conn.process_new_packets() {
                        let _ = tls.conn.write_tls(&mut Sock(tcp));
                        return Poll::Ready(Err(tls_error(e)));
                    }
                    tls.flush(tcp)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tls.is_none() {
            return Pin::new(&mut this.tcp).poll_write(cx, data);
        }
        loop {
            match this.try_write(data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(this.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Transport { tcp, tls } = this;
        if let Some(tls) = tls.as_deref_mut() {
            while tls.conn.wants_write() {
                tls.flush(tcp)?;
                if tls.conn.wants_write() {
                    ready!(tcp.poll_write_ready(cx))?;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = this.tls.as_deref_mut() {
            tls.conn.send_close_notify();
        }
        ready!(Pin::new(&mut *this).poll_flush(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A TLS pair over loopback: (server side, client side).
    async fn pair() -> (Transport, Transport) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, connected) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        let mut s = Transport::plain(accepted.unwrap().0);
        let mut c = Transport::plain(connected.unwrap());
        let sconn = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let cconn =
            rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
                .unwrap();
        let (a, b) = tokio::join!(s.handshake(sconn, &[]), c.handshake(cconn, &[]));
        a.unwrap();
        b.unwrap();
        (s, c)
    }

    /// Writes all of `data` the way the session does: readiness, then `try_write`, until nothing is pending.
    async fn send_all(t: &mut Transport, data: &[u8]) {
        let mut sent = 0;
        while sent < data.len() || t.wants_write() {
            t.writable().await.unwrap();
            match t.try_write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    async fn receive(t: &mut Transport, want: usize) -> BytesMut {
        let mut buf = BytesMut::new();
        while buf.len() < want {
            t.readable().await.unwrap();
            match t.read_available(&mut buf) {
                Ok(0) => panic!("closed after {} bytes", buf.len()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        buf
    }

    #[tokio::test]
    async fn large_transfers_with_partial_writes_arrive_whole() {
        let (mut server, mut client) = pair().await;
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let (_, got) = tokio::join!(
            send_all(&mut client, &data),
            receive(&mut server, data.len())
        );
        assert_eq!(got.len(), expected.len());
        assert!(got[..] == expected[..]);
        // And back, through the AsyncWrite/AsyncRead side.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (w, r) = tokio::join!(
            async {
                server.write_all(&data).await.unwrap();
                server.flush().await.unwrap();
            },
            async {
                let mut back = vec![0u8; data.len()];
                client.read_exact(&mut back).await.unwrap();
                back
            }
        );
        let () = w;
        assert!(r == expected);
    }

    #[tokio::test]
    async fn end_of_stream_is_reported() {
        let (mut server, mut client) = pair().await;
        send_all(&mut client, b"last words").await;
        use tokio::io::AsyncWriteExt;
        client.shutdown().await.unwrap();
        drop(client);
        assert_eq!(&receive(&mut server, 10).await[..], b"last words");
        let mut buf = BytesMut::new();
        loop {
            server.readable().await.unwrap();
            match server.read_available(&mut buf) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("{other:?}"),
            }
        }
    }
}
