//! TLS on both sides (rustls, ring provider, TLS 1.2 and 1.3 only).
//!
//! [`Transport`] is the connection the data path reads and writes, plain or TLS. [`ClientTls`] is pgsplit's
//! side of a client's handshake (certificate, client certificates, ALPN, the channel binding data);
//! [`ServerTls`] is how pgsplit connects to one server (SSLRequest, the mode's certificate checks, SNI);
//! [`PgTls`] does the same for tokio-postgres side connections. `der` reads the two certificate fields pgsplit
//! needs; `hello` explains a refused SNI; `verify` holds the `verify-ca` and `require` certificate checks.

mod accept;
mod connect;
mod der;
mod hello;
mod pg;
mod transport;
mod verify;

pub use accept::{end_point_data, ClientTls, ALPN_POSTGRESQL};
pub use connect::{clear_cache, ServerTls};
pub use pg::{PgTls, PgTlsConnect, PgTlsStream};
pub use transport::Transport;
