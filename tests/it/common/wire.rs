//! The protocol spoken by hand, for message sequences drivers do not produce and byte-exact comparisons with
//! PostgreSQL: frontend messages built as raw bytes (the SQL may be in any client encoding, so it is taken as
//! bytes, not necessarily UTF-8), and [`Raw`], a blocking client that sends them and reads what comes back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One backend message: its tag and body.
pub type Msg = (u8, Vec<u8>);

/// A blocking raw-protocol client.
pub struct Raw(pub TcpStream);

impl Raw {
    /// Connects without sending anything; a read waits at most `timeout`.
    pub fn open(proxy: SocketAddr, timeout: Duration) -> Raw {
        let s = TcpStream::connect(proxy).expect("connect");
        s.set_read_timeout(Some(timeout)).expect("timeout");
        Raw(s)
    }

    /// Connects and logs in as `trustclient` (trust auth; `postgres` on the servers) on `app`, with `extra`
    /// startup parameters; panics if the login fails.
    pub fn login(proxy: SocketAddr, timeout: Duration, extra: &[(&str, &str)]) -> Raw {
        let mut raw = Raw::open(proxy, timeout);
        let mut params = vec![("user", "trustclient"), ("database", "app")];
        params.extend_from_slice(extra);
        let mut out = bytes::BytesMut::new();
        pgsplit::protocol::startup::encode_startup(&mut out, &params);
        raw.send(&out);
        let replies = raw.until_ready();
        assert!(
            replies.last().is_some_and(|(t, _)| *t == b'Z')
                && replies.iter().all(|(t, _)| *t != b'E'),
            "login failed: {replies:?}"
        );
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).expect("send");
    }

    /// Parse of `sql` as statement `name`, no parameter types.
    pub fn parse(&mut self, name: &str, sql: &str) {
        self.send(&parse(name, sql, &[]));
    }

    pub fn bind_execute(&mut self, name: &str) {
        self.send(&bind_execute(name));
    }

    pub fn sync(&mut self) {
        self.send(&sync());
    }

    pub fn query(&mut self, sql: &str) {
        self.send(&query(sql));
    }

    /// Reads one message; `None` at EOF (or when the read times out).
    pub fn read(&mut self) -> Option<Msg> {
        let mut head = [0u8; 5];
        self.0.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.0.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    /// Messages up to and including the next ReadyForQuery (fewer at EOF).
    pub fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.read() {
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }
}

/// A tagged message: `tag`, length, `body`.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Appends `s` and its terminating NUL.
pub fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// Query (simple protocol).
pub fn query(sql: impl AsRef<[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql.as_ref());
    msg(b'Q', &body)
}

/// Parse of `sql` as statement `name` with the given parameter type OIDs.
pub fn parse(name: &str, sql: impl AsRef<[u8]>, types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name.as_bytes());
    cstr(&mut body, sql.as_ref());
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    msg(b'P', &body)
}

/// Bind with text parameters (`None` is NULL) and text results.
pub fn bind(portal: &str, statement: &str, params: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal.as_bytes());
    cstr(&mut body, statement.as_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    msg(b'B', &body)
}

/// Bind of statement `name` without parameters to the unnamed portal, then Execute of all its rows.
pub fn bind_execute(name: &str) -> Vec<u8> {
    [bind("", name, &[]), execute("", 0)].concat()
}

/// Describe of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    cstr(&mut body, name.as_bytes());
    msg(b'D', &body)
}

/// Execute of `portal`, at most `max_rows` rows (0: all).
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal.as_bytes());
    body.extend_from_slice(&max_rows.to_be_bytes());
    msg(b'E', &body)
}

/// Close of a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    cstr(&mut body, name.as_bytes());
    msg(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}

pub fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

pub fn copy_fail(reason: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, reason.as_bytes());
    msg(b'f', &body)
}

/// FunctionCall with text arguments and a text result.
pub fn function_call(oid: u32, args: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&oid.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        match a {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    msg(b'F', &body)
}

/// An untagged startup packet: protocol `version` and parameters.
pub fn startup(version: u32, params: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k.as_bytes());
        cstr(&mut body, v);
    }
    body.push(0);
    let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

pub fn ssl_request() -> Vec<u8> {
    let mut out = 8u32.to_be_bytes().to_vec();
    out.extend_from_slice(&80_877_103u32.to_be_bytes());
    out
}

/// Protocol version 3.0.
pub const V3: u32 = 0x0003_0000;

/// The field `code` (`b'C'`: SQLSTATE, `b'M'`: message, …) of an ErrorResponse or NoticeResponse body.
pub fn error_field(body: &[u8], code: u8) -> Option<String> {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[code]))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

/// The first column of the first DataRow among `messages`, as text.
pub fn first_value(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, row) = messages.iter().find(|(t, _)| *t == b'D')?;
    let len = i32::from_be_bytes([row[2], row[3], row[4], row[5]]) as usize;
    Some(String::from_utf8_lossy(&row[6..6 + len]).to_string())
}
