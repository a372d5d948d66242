//! The SQL admin console on the virtual database `pgsplit` (admin users only, simple query protocol), in the
//! spirit of PgBouncer's: SHOW SERVERS | POOLS | CLIENTS | STATS | LAG | CONFIG | VERSION, RELOAD, PAUSE, RESUME.

use std::sync::Arc;

use crate::tls::Transport;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::status::Status;
use crate::protocol::frame::{read_frame, ReadError};
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::protocol::{backend, frontend};
use crate::state::Shared;

/// Largest message the console accepts.
const MAX_MESSAGE: usize = 1 << 20;

/// Writes `out` and pushes it out (TLS buffers it otherwise).
async fn send(socket: &mut Transport, out: &[u8]) -> std::io::Result<()> {
    socket.write_all(out).await?;
    socket.flush().await
}

/// Serves an authenticated admin client until it leaves.
pub async fn serve(shared: Arc<Shared>, mut socket: Transport, mut buf: BytesMut) {
    let mut out = BytesMut::new();
    messages::authentication(&mut out, messages::AUTH_OK, &[]);
    for (k, v) in [
        ("server_version", "15.0 (pgsplit admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        messages::parameter_status(&mut out, k, v);
    }
    messages::backend_key_data(&mut out, 0, 0);
    messages::ready_for_query(&mut out, backend::IDLE);
    if send(&mut socket, &out).await.is_err() {
        return;
    }
    loop {
        let frame = match read_frame(&mut socket, &mut buf, MAX_MESSAGE).await {
            Ok(f) => f,
            Err(ReadError::Frame(e)) => {
                let msg = messages::error_bytes(
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &e.to_string(),
                );
                let _ = send(&mut socket, &msg).await;
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        };
        out.clear();
        match frame.tag {
            frontend::QUERY => {
                let text = messages::query_text(&frame.body).unwrap_or("");
                answer(&shared, text, &mut out);
                messages::ready_for_query(&mut out, backend::IDLE);
            }
            frontend::TERMINATE => return,
            frontend::SYNC => messages::ready_for_query(&mut out, backend::IDLE),
            _ => messages::error_response(
                &mut out,
                Severity::Error,
                sqlstate::FEATURE_NOT_SUPPORTED,
                "the pgsplit admin console speaks the simple query protocol only",
            ),
        }
        if send(&mut socket, &out).await.is_err() {
            return;
        }
    }
}

/// Appends the answer to one console command (without ReadyForQuery).
pub fn answer(shared: &Shared, text: &str, out: &mut BytesMut) {
    let cmd = text
        .trim()
        .trim_end_matches(';')
        .trim()
        .to_ascii_uppercase();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        ["SHOW", what] => show(shared, what, out),
        ["RELOAD"] => reload(shared, out),
        ["PAUSE"] => {
            shared.set_paused(true);
            tracing::warn!("PAUSE from the admin console: new units of work wait until RESUME");
            messages::command_complete(out, "PAUSE");
        }
        ["RESUME"] => {
            shared.set_paused(false);
            tracing::info!("RESUME from the admin console");
            messages::command_complete(out, "RESUME");
        }
        [] => messages::empty(out, backend::EMPTY_QUERY_RESPONSE),
        _ => messages::error_response(
            out,
            Severity::Error,
            sqlstate::SYNTAX_ERROR,
            &format!("unknown admin command \"{}\"; try SHOW HELP", text.trim()),
        ),
    }
}

/// RELOAD: re-reads the configuration file and puts it in force (a notice says what changed), or answers the
/// refusal's error; the function catalog is read again either way.
fn reload(shared: &Shared, out: &mut BytesMut) {
    tracing::info!("RELOAD from the admin console");
    shared.classifier.request_refresh();
    match shared.reload() {
        Ok(done) => {
            messages::notice_response(out, "00000", &done.summary());
            messages::command_complete(out, "RELOAD");
        }
        Err(refused) => messages::error_response(
            out,
            Severity::Error,
            refused.sqlstate,
            &format!("configuration reload refused: {refused}"),
        ),
    }
}

fn table(out: &mut BytesMut, columns: &[&str], rows: &[Vec<Option<String>>]) {
    messages::row_description(out, columns);
    for r in rows {
        let values: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
        messages::data_row(out, &values);
    }
    messages::command_complete(out, &format!("SHOW {}", rows.len()));
}

fn show(shared: &Shared, what: &str, out: &mut BytesMut) {
    let s = super::status::status(shared);
    match what {
        "SERVERS" => show_servers(&s, out),
        "LAG" => show_lag(&s, out),
        "POOLS" => show_pools(&s, out),
        "CLIENTS" => show_clients(shared, out),
        "STATS" => show_stats(&s, out),
        "CONFIG" => show_config(shared, out),
        "VERSION" => table(
            out,
            &["version"],
            &[vec![some(format!("pgsplit {}", env!("CARGO_PKG_VERSION")))]],
        ),
        "HELP" => show_help(out),
        other => messages::error_response(
            out,
            Severity::Error,
            sqlstate::SYNTAX_ERROR,
            &format!(
                "unknown SHOW target \"{}\"; try SHOW HELP",
                other.to_ascii_lowercase()
            ),
        ),
    }
}

fn some(v: String) -> Option<String> {
    Some(v)
}

/// SHOW SERVERS: every server, its role and health.
fn show_servers(s: &Status, out: &mut BytesMut) {
    let rows: Vec<Vec<Option<String>>> = s
        .servers
        .iter()
        .map(|v| {
            vec![
                some(v.name.clone()),
                some(v.address.clone()),
                some(v.role.into()),
                some(v.up.to_string()),
                some(v.eligible.to_string()),
                some(v.reason.clone()),
                some(v.outstanding.to_string()),
            ]
        })
        .collect();
    table(
        out,
        &[
            "name",
            "address",
            "role",
            "up",
            "eligible",
            "reason",
            "outstanding",
        ],
        &rows,
    );
}

/// SHOW LAG: every server's lag and read eligibility.
fn show_lag(s: &Status, out: &mut BytesMut) {
    let rows: Vec<Vec<Option<String>>> = s
        .servers
        .iter()
        .map(|v| {
            vec![
                some(v.name.clone()),
                some(v.role.into()),
                v.lag_seconds.map(|l| format!("{l:.3}")),
                v.lag_bytes.map(|b| b.to_string()),
                some(v.eligible.to_string()),
                some(v.reason.clone()),
                some(v.replay_paused.to_string()),
                v.last_probe_age_seconds.map(|a| format!("{a:.3}")),
            ]
        })
        .collect();
    table(
        out,
        &[
            "server",
            "role",
            "lag_seconds",
            "lag_bytes",
            "eligible",
            "reason",
            "replay_paused",
            "probe_age_seconds",
        ],
        &rows,
    );
}

/// SHOW POOLS: every pool's connections and waiting clients.
fn show_pools(s: &Status, out: &mut BytesMut) {
    let rows: Vec<Vec<Option<String>>> = s
        .pools
        .iter()
        .map(|p| {
            vec![
                some(p.database.clone()),
                some(p.user.clone()),
                some(p.server.clone()),
                some(p.kind.into()),
                some(p.active.to_string()),
                some(p.idle.to_string()),
                some(p.waiting.to_string()),
                some(p.size.to_string()),
            ]
        })
        .collect();
    table(
        out,
        &[
            "database",
            "user",
            "server",
            "pool",
            "sv_active",
            "sv_idle",
            "cl_waiting",
            "pool_size",
        ],
        &rows,
    );
}

/// SHOW CLIENTS: every connected client.
fn show_clients(shared: &Shared, out: &mut BytesMut) {
    let rows: Vec<Vec<Option<String>>> = shared
        .stats
        .clients
        .list()
        .iter()
        .map(|c| {
            let since = c
                .connected_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            vec![
                some(c.id.to_string()),
                some(c.user.clone()),
                some(c.database.clone()),
                some(c.state().label().into()),
                some(c.peer.to_string()),
                some(since.to_string()),
            ]
        })
        .collect();
    table(
        out,
        &["id", "user", "database", "state", "addr", "connect_time"],
        &rows,
    );
}

/// SHOW STATS: routing counters and latency percentiles.
fn show_stats(s: &Status, out: &mut BytesMut) {
    let mut rows: Vec<Vec<Option<String>>> = s
        .routing
        .routed
        .iter()
        .map(|r| {
            vec![
                some(r.destination.into()),
                some(r.reason.into()),
                some(r.count.to_string()),
            ]
        })
        .collect();
    rows.push(vec![
        some("primary".into()),
        some("transaction_pinned".into()),
        some(s.routing.pinned_primary.to_string()),
    ]);
    rows.push(vec![
        some("replica".into()),
        some("transaction_pinned".into()),
        some(s.routing.pinned_replica.to_string()),
    ]);
    for p in &s.routing.primary_reads {
        rows.push(vec![
            some("primary".into()),
            some(format!("read_fallback:{}", p.reason)),
            some(p.count.to_string()),
        ]);
    }
    rows.push(vec![
        some("none".into()),
        some("read_refused".into()),
        some(s.routing.refused_reads.to_string()),
    ]);
    for o in &s.routing.causal_reads.outcomes {
        let dest = if o.reason == "primary_fallback" {
            "primary"
        } else {
            "replica"
        };
        rows.push(vec![
            some(dest.into()),
            some(format!("causal:{}", o.reason)),
            some(o.count.to_string()),
        ]);
    }
    for (dest, l) in [
        ("primary", &s.latency.primary),
        ("replica", &s.latency.replica),
    ] {
        rows.push(vec![
            some(dest.into()),
            some("latency_p50_ms".into()),
            some(format!("{:.3}", l.p50_ms)),
        ]);
        rows.push(vec![
            some(dest.into()),
            some("latency_p99_ms".into()),
            some(format!("{:.3}", l.p99_ms)),
        ]);
    }
    table(out, &["destination", "counter", "value"], &rows);
}

/// SHOW CONFIG: the effective configuration, one setting a row, then the reload log as `# reload.…` rows.
fn show_config(shared: &Shared, out: &mut BytesMut) {
    let mut rows: Vec<Vec<Option<String>>> = shared
        .config()
        .effective_toml()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| vec![some(l.to_string())])
        .collect();
    let r = super::status::reload(shared);
    let ms = |t: Option<u128>| t.map_or("never".to_string(), utc);
    rows.extend(
        [
            format!(
                "# reload.config_file = {:?}",
                r.config_file.unwrap_or_default()
            ),
            format!("# reload.reloads_ok = {}", r.reloads_ok),
            format!("# reload.reloads_refused = {}", r.reloads_refused),
            format!("# reload.last_reload = {}", ms(r.last_reload_unix_ms)),
            format!("# reload.last_refused = {}", ms(r.last_refused_unix_ms)),
            format!(
                "# reload.last_refused_error = {:?}",
                r.last_refused_error.unwrap_or_default()
            ),
        ]
        .map(|l| vec![some(l)]),
    );
    table(out, &["setting"], &rows);
}

/// A time in Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm UTC` (days to a civil date as in H. Hinnant's
/// `civil_from_days`).
fn utc(unix_ms: u128) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        unix_ms % 1000
    )
}

/// SHOW HELP: the console's commands.
fn show_help(out: &mut BytesMut) {
    let rows: Vec<Vec<Option<String>>> = [
        "SHOW SERVERS",
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW STATS",
        "SHOW LAG",
        "SHOW CONFIG",
        "SHOW VERSION",
        "RELOAD",
        "PAUSE",
        "RESUME",
    ]
    .iter()
    .map(|c| vec![some((*c).to_string())])
    .collect();
    table(out, &["command"], &rows);
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(super::utc(1_796_211_084_500), "2026-12-02 11:31:24.500 UTC");
    }
}
