//! A proxy started from a configuration FILE (as `pgsplit run --config` does), so that it can be reloaded: the
//! file is rewritten, then `RELOAD` is sent on the admin console as `trustclient` on database `pgsplit`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pgsplit::config::Config;
use pgsplit::proxy::{Proxy, Shared};

/// A running proxy whose configuration lives in a file of a temporary directory.
pub struct FileProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
    /// The proxy's shared state.
    pub shared: Arc<Shared>,
    /// The configuration file.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FileProxy {
    /// Writes `toml` to a file and starts a proxy from it on the tests' background runtime.
    pub fn start(toml: &str) -> FileProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgsplit.toml");
        std::fs::write(&path, toml).expect("write the configuration");
        let config = Config::load(&path).expect("a valid first configuration");
        let (tx, rx) = std::sync::mpsc::channel();
        let file = path.clone();
        super::runtime().spawn(async move {
            let proxy = Proxy::bind_file(config, file).await.expect("bind proxy");
            let addrs = (
                proxy.local_addr().expect("addr"),
                proxy.admin_addr().expect("admin addr"),
                proxy.shared(),
            );
            tx.send(addrs).expect("send addr");
            proxy.run(std::future::pending()).await;
        });
        let (addr, admin, shared) = rx.recv().expect("proxy address");
        FileProxy {
            addr,
            admin,
            shared,
            path,
            _dir: dir,
        }
    }

    /// Rewrites the configuration file (not reloaded yet).
    pub fn write(&self, toml: &str) {
        std::fs::write(&self.path, toml).expect("rewrite the configuration");
    }

    /// Sends `RELOAD` on the admin console: Ok(the notice saying what changed) or the ErrorResponse.
    pub async fn reload(&self) -> Result<String, tokio_postgres::error::DbError> {
        console_reload(self.addr).await
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        http_json(self.admin, "/status")
    }

    /// The `/status` document built in process (for a proxy whose admin endpoint speaks TLS).
    pub fn status_document(&self) -> serde_json::Value {
        serde_json::to_value(pgsplit::admin::status::status(&self.shared)).expect("status as JSON")
    }
}

/// `RELOAD` on the admin console of the proxy at `addr`, as the admin user `trustclient`.
pub async fn console_reload(addr: SocketAddr) -> Result<String, tokio_postgres::error::DbError> {
    let url = format!(
        "postgres://trustclient@{}:{}/pgsplit",
        addr.ip(),
        addr.port()
    );
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("console login");
    let seen = notices.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                seen.lock().expect("notices").push(n.message().to_string());
            }
        }
    });
    match client.simple_query("RELOAD").await {
        Ok(_) => Ok(notices.lock().expect("notices").join("\n")),
        Err(e) => Err(e.as_db_error().cloned().expect("an ErrorResponse")),
    }
}

/// GET `path` on an admin endpoint (HTTP/1.0: no chunking), parsed as JSON.
pub fn http_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the admin endpoint");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {raw}"))
}
