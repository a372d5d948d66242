//! `postgres://` connection URLs as given to `pgsplit run --primary URL --replica URL`: parsed by hand (no URL
//! crate is in the dependency tree), percent-decoded, with only the query parameters that have an obvious
//! pgsplit equivalent. Error messages never contain the password.

use std::fmt;
use std::path::PathBuf;

use super::tls::ServerTlsMode;

/// Port used when a URL names none.
pub const DEFAULT_PORT: u16 = 5432;

/// One server's connection URL, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// User name, percent-decoded.
    pub user: Option<String>,
    /// Password, percent-decoded (secret: `Debug` redacts it).
    pub password: Option<String>,
    /// Host name or IP address (an IPv6 literal without its brackets).
    pub host: String,
    /// TCP port; [`DEFAULT_PORT`] when the URL names none.
    pub port: u16,
    /// Database name, percent-decoded.
    pub dbname: Option<String>,
    /// `sslmode`, as the server's `tls_mode`.
    pub tls_mode: Option<ServerTlsMode>,
    /// `sslrootcert`, as the server's `tls_ca_file`.
    pub tls_ca_file: Option<PathBuf>,
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgUrl")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| super::REDACTED))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("tls_mode", &self.tls_mode)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

/// Query parameters understood, for the message refusing the others.
const KNOWN_PARAMS: &str = "sslmode, sslrootcert";

impl PgUrl {
    /// Parses `postgres://[user[:password]@]host[:port][/dbname][?sslmode=…&sslrootcert=…]` (also
    /// `postgresql://`). The error says what is wrong without repeating the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// or postgresql://")?;
        if rest.contains('#') {
            return Err("a fragment (#…) is not allowed".into());
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        // The user information ends at the last `@`: an unencoded `@` in a password still parses.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = decode(u).map_err(|e| format!("user name: {e}"))?;
                let password = p
                    .map(decode)
                    .transpose()
                    .map_err(|_| "password: invalid percent-encoding".to_string())?;
                (Some(user).filter(|u| !u.is_empty()), password)
            }
        };
        let (host, port) = host_port(hostport)?;
        let dbname = match path {
            None => None,
            Some(p) => Some(decode(p).map_err(|e| format!("database name: {e}"))?)
                .filter(|d| !d.is_empty()),
        };
        let mut parsed = PgUrl {
            user,
            password,
            host,
            port,
            dbname,
            tls_mode: None,
            tls_ca_file: None,
        };
        for pair in query.unwrap_or_default().split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k).map_err(|e| format!("query parameter: {e}"))?;
            let value = decode(v).map_err(|e| format!("query parameter `{key}`: {e}"))?;
            match key.as_str() {
                "sslmode" => parsed.tls_mode = Some(ssl_mode(&value)?),
                "sslrootcert" if !value.is_empty() => {
                    parsed.tls_ca_file = Some(PathBuf::from(value))
                }
                "sslrootcert" => return Err("sslrootcert must not be empty".into()),
                _ => {
                    return Err(format!(
                        "query parameter `{key}` has no pgsplit equivalent (understood: {KNOWN_PARAMS}); \
                         set the rest in a configuration file or with PGSPLIT_* variables"
                    ))
                }
            }
        }
        Ok(parsed)
    }
}

/// `host[:port]`, `[v6][:port]`; one host only, TCP only.
fn host_port(s: &str) -> Result<(String, u16), String> {
    if s.contains(',') {
        return Err("one host per URL (repeat --replica for more servers)".into());
    }
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address must be closed with `]`")?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("expected `:port` after the IPv6 address")?,
            ),
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`[{host}]` is not an IPv6 address"));
        }
        (host.to_string(), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        (decode(host).map_err(|e| format!("host: {e}"))?, port)
    };
    if host.is_empty() {
        return Err(
            "a host is required (pgsplit connects to servers over TCP, not Unix sockets)".into(),
        );
    }
    if host.starts_with('/') {
        return Err(
            "pgsplit connects to servers over TCP: a Unix socket directory is not a host".into(),
        );
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            // Not echoed: with the `@` forgotten, what stands here is the password.
            _ => return Err("the port must be a number from 1 to 65535".to_string()),
        },
    };
    Ok((host, port))
}

/// libpq's `sslmode` as a server `tls_mode`; `allow` (plain first, TLS if refused) has no equivalent.
fn ssl_mode(value: &str) -> Result<ServerTlsMode, String> {
    Ok(match value {
        "disable" => ServerTlsMode::Disable,
        "prefer" => ServerTlsMode::Prefer,
        "require" => ServerTlsMode::Require,
        "verify-ca" => ServerTlsMode::VerifyCa,
        "verify-full" => ServerTlsMode::VerifyFull,
        "allow" => {
            return Err(
                "sslmode=allow has no pgsplit equivalent: use disable or prefer".to_string(),
            )
        }
        other => {
            return Err(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        }
    })
}

/// Percent-decoding (`%41` → `A`; `+` stays a plus, as in libpq); the result must be UTF-8.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-encoding (expected % and two hex digits)")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decodes to invalid UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> PgUrl {
        match PgUrl::parse(url) {
            Ok(u) => u,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    fn err(url: &str) -> String {
        match PgUrl::parse(url) {
            Ok(u) => panic!("{url}: expected an error, got {u:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn full_url() {
        let u = ok("postgres://app:s3cret@db.example:6543/shop");
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.host, "db.example");
        assert_eq!(u.port, 6543);
        assert_eq!(u.dbname.as_deref(), Some("shop"));
        assert_eq!(u.tls_mode, None);
        assert!(!format!("{u:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_and_postgresql_scheme() {
        let u = ok("postgresql://app@db");
        assert_eq!(u.port, DEFAULT_PORT);
        assert_eq!(u.password, None);
        assert_eq!(u.dbname, None);
        let u = ok("postgres://db:/");
        assert_eq!((u.user, u.port, u.dbname), (None, DEFAULT_PORT, None));
    }

    #[test]
    fn percent_decoding() {
        let u = ok("postgres://us%40er:p%3Aa%2Fss%25w+rd@h/d%20b");
        assert_eq!(u.user.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:a/ss%w+rd"));
        assert_eq!(u.dbname.as_deref(), Some("d b"));
        // An unencoded `@` in the password: the user information ends at the last `@`.
        assert_eq!(ok("postgres://u:p@ss@h").password.as_deref(), Some("p@ss"));
        assert!(err("postgres://u:%zz@h").contains("percent"));
        assert!(!err("postgres://u:%zzhunter2@h").contains("hunter2"));
        assert!(err("postgres://u:p@h/%ff").contains("UTF-8"));
    }

    #[test]
    fn ipv6_hosts() {
        let u = ok("postgres://u:p@[::1]:5433/db");
        assert_eq!((u.host.as_str(), u.port), ("::1", 5433));
        assert_eq!(ok("postgres://[fe80::1]/db").port, DEFAULT_PORT);
        assert!(err("postgres://[::1/db").contains("]"));
        assert!(err("postgres://[nothost]:5432").contains("IPv6"));
        assert!(err("postgres://[::1]5432").contains(":port"));
    }

    #[test]
    fn query_parameters() {
        let u = ok("postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem");
        assert_eq!(u.tls_mode, Some(ServerTlsMode::VerifyFull));
        assert_eq!(u.tls_ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            ok("postgres://h?sslmode=require").tls_mode,
            Some(ServerTlsMode::Require)
        );
        assert!(err("postgres://h/db?sslmode=allow").contains("disable or prefer"));
        assert!(err("postgres://h/db?sslmode=bogus").contains("bogus"));
        let e = err("postgres://h/db?application_name=x");
        assert!(
            e.contains("application_name") && e.contains("sslmode"),
            "{e}"
        );
    }

    #[test]
    fn refusals() {
        assert!(err("mysql://h").contains("postgres://"));
        assert!(err("postgres://u:p@/db").contains("host is required"));
        assert!(err("postgres://%2Ftmp/db").contains("Unix"));
        assert!(err("postgres://h1,h2/db").contains("one host"));
        assert!(err("postgres://h:0/db").contains("port"));
        assert!(err("postgres://h:99999/db").contains("port"));
        assert!(err("postgres://h:abc/db").contains("port"));
        assert!(err("postgres://h/db#x").contains("fragment"));
        // Never the password, whatever is wrong.
        assert!(!err("postgres://u:hunter2@h:abc/db").contains("hunter2"));
        assert!(!err("postgres://u:hunter2/db").contains("hunter2"));
    }
}
