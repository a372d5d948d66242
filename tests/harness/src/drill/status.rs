//! pgsplit's `/status` as a drill needs it: each server's role, eligibility and eligibility transitions, read
//! over plain HTTP/1.1 from the admin endpoint (no token: loopback).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One eligibility change as pgsplit recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// When, unix ms.
    pub at_ms: u64,
    /// Eligible after it.
    pub eligible: bool,
    /// Why.
    pub reason: String,
}

/// One server in `/status`.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Configured name.
    pub name: String,
    /// `primary`, `replica` or `unknown`.
    pub role: String,
    /// Up.
    pub up: bool,
    /// May take reads.
    pub eligible: bool,
    /// Recent eligibility changes, oldest first.
    pub transitions: Vec<Transition>,
}

/// Reads `/status` from the admin endpoint at `admin`.
pub async fn fetch_status(admin: SocketAddr) -> Result<Vec<ServerState>, String> {
    let body = get(admin, "/status").await?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/status is not JSON: {e}"))?;
    let servers = json["servers"]
        .as_array()
        .ok_or_else(|| "/status has no servers".to_string())?;
    Ok(servers.iter().map(server).collect())
}

fn server(v: &serde_json::Value) -> ServerState {
    let transitions = v["transitions"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| Transition {
                    at_ms: t["at_unix_ms"].as_u64().unwrap_or(0),
                    eligible: t["eligible"].as_bool().unwrap_or(false),
                    reason: t["reason"].as_str().unwrap_or("").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    ServerState {
        name: v["name"].as_str().unwrap_or("").to_string(),
        role: v["role"].as_str().unwrap_or("").to_string(),
        up: v["up"].as_bool().unwrap_or(false),
        eligible: v["eligible"].as_bool().unwrap_or(false),
        transitions,
    }
}

async fn get(admin: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(admin)
        .await
        .map_err(|e| format!("connect {admin}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no HTTP body".to_string())?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{path}: {}", head.lines().next().unwrap_or("")));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `/status` until the named server's eligibility is `eligible`; returns when (unix ms) or `None` on
/// timeout.
pub async fn wait_eligible(
    admin: SocketAddr,
    name: &str,
    eligible: bool,
    timeout: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(servers) = fetch_status(admin).await {
            if servers
                .iter()
                .any(|s| s.name == name && s.eligible == eligible)
            {
                return Some(super::now_ms());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
