//! What each server is known to have replayed (a replica) or written (the primary), for reads that must see a
//! WAL position (read-your-writes, docs/ARCHITECTURE.md §4). The monitor's probes keep it current every
//! `lag_check_interval`; in between, a reader that needs a replica at its floor asks for an on-demand check. Checks
//! are coalesced: one in flight per server, and every reader waiting on it is served by its answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::causal::Lsn;
use crate::config::{Config, LiveConfig};
use crate::router::{Backend, ReadTarget, Router};

/// The shortest time between two on-demand checks of one server: a reader waiting for a replica polls it, and
/// this bounds the poll's rate.
const MIN_CHECK_GAP: Duration = Duration::from_micros(500);

/// What a check reads: the replay position of a replica; the insert position of a primary, at or past the end
/// of every commit it has acknowledged (even with `synchronous_commit = off`), with its offset in its WAL segment
/// and the WAL page size (see [`end_of_wal`]).
const CHECK: &str = "SELECT r, l.lsn::text, \
     CASE WHEN r THEN NULL ELSE (pg_walfile_name_offset(l.lsn)).file_offset END, \
     current_setting('wal_block_size')::int4 \
     FROM (SELECT pg_is_in_recovery() AS r) s, LATERAL (SELECT CASE WHEN r \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END AS lsn) l";

/// Size of the header of a WAL page: of the first page of a segment, of the others (64-bit builds).
const LONG_PAGE_HEADER: i32 = 40;
const SHORT_PAGE_HEADER: i32 = 24;

/// The end of what a primary has written, from its insert position `lsn` at `offset` in its segment. The insert
/// position of a page that holds nothing yet points past the page's header, where no record ends; the records
/// written so far end at the page's start, and that is as far as a replica replays while the primary is idle
/// (right after a segment switch, say). A floor past the header would keep every read on the primary until the
/// next write.
fn end_of_wal(lsn: u64, offset: Option<i32>, block_size: i32) -> u64 {
    let empty_page_header = match offset {
        Some(LONG_PAGE_HEADER) => LONG_PAGE_HEADER,
        Some(o) if block_size > 0 && o > block_size && o % block_size == SHORT_PAGE_HEADER => {
            SHORT_PAGE_HEADER
        }
        _ => 0,
    };
    lsn.saturating_sub(u64::from(empty_page_header.unsigned_abs()))
}

/// A position the monitor's probe read. A replica's replay position counts; a primary's is its write position,
/// which can lag behind an asynchronous commit: the primary's position comes from checks only.
pub fn probed(router: &Router, index: usize, in_recovery: bool, lsn: u64, asked_at: Instant) {
    if in_recovery {
        observed(router, index, in_recovery, lsn, asked_at);
    }
}

/// Asks the current primary's checker for its position (coalesced with any check already asked for).
pub fn request_primary_check(router: &Router) {
    if let Some(b) = router.primary().ok().and_then(|i| router.servers.get(i)) {
        b.check.notify_one();
    }
}

/// Records a position read from server `index` by a query sent at `asked_at`, and wakes the readers waiting for
/// one.
pub fn observed(router: &Router, index: usize, in_recovery: bool, lsn: u64, asked_at: Instant) {
    if let Some(b) = router.servers.get(index) {
        if b.note_position(in_recovery, lsn, asked_at) {
            router.positions.notify_waiters();
        }
    }
}

/// Runs the on-demand checkers, one per server (servers a reload adds included; a retired server's ends), for as
/// long as pgsplit runs.
pub async fn run_checkers(config: LiveConfig, router: Arc<Router>) {
    let r = router.clone();
    crate::router::per_server(&r, move |index| {
        check_loop(config.clone(), router.clone(), index)
    })
    .await
}

async fn check_loop(config: LiveConfig, router: Arc<Router>, index: usize) {
    let mut client: Option<tokio_postgres::Client> = None;
    let Some(backend) = router.servers.get(index) else {
        return;
    };
    loop {
        backend.check.notified().await;
        if backend.is_retired() {
            return;
        }
        let started = Instant::now();
        let config = config.load_full();
        let timeout = config.lag.probe_timeout;
        match tokio::time::timeout(timeout, check(&config, &backend, &mut client)).await {
            Ok(Ok(Some((in_recovery, lsn)))) => observed(&router, index, in_recovery, lsn, started),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(server = %backend.name, error = %e, "on-demand position check failed");
                client = None;
            }
            Err(_) => client = None,
        }
        // Wake the waiters either way: they decide whether to ask again or give up.
        router.positions.notify_waiters();
        if let Some(rest) = MIN_CHECK_GAP.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// A failed on-demand check.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Connect(#[from] crate::side::SideError),
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
}

async fn check(
    config: &Config,
    backend: &Backend,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Option<(bool, u64)>, CheckError> {
    let c = match client {
        Some(c) if !c.is_closed() => c,
        _ => {
            let timeout = config.lag.probe_timeout;
            let side = crate::side::connect_server(config, backend, "pgsplit checks", timeout);
            client.insert(side.await?)
        }
    };
    let row = c.query_one(CHECK, &[]).await?;
    let in_recovery: bool = row.try_get(0)?;
    let lsn: Option<String> = row.try_get(1)?;
    let offset: Option<i32> = row.try_get(2)?;
    let block_size: i32 = row.try_get(3)?;
    Ok(lsn
        .as_deref()
        .and_then(Lsn::parse)
        .map(|l| (in_recovery, end_of_wal(l.0, offset, block_size))))
}

/// Asks the replicas that may take reads but are not known to be at `floor` for fresh positions, without waiting:
/// the reads that follow find them there (when a read went elsewhere meanwhile, e.g. to an included primary).
pub fn refresh_behind(router: &Router, floor: u64) {
    for b in router.servers.load().iter() {
        if b.is_usable() && b.position() < floor {
            b.check.notify_one();
        }
    }
}

/// Waits up to `wait` for a replica that may take reads to be known at `floor`, asking the replicas below it for
/// fresh positions; returns where the read can go then ([`ReadTarget::Behind`] if none got there in time).
pub async fn wait_for_replica(
    router: &Router,
    exclude: Option<usize>,
    floor: u64,
    wait: Duration,
) -> ReadTarget {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = router.positions.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let target = router.choose_read_from(exclude, floor);
        if target != ReadTarget::Behind {
            return target;
        }
        refresh_behind(router, floor);
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return ReadTarget::Behind;
        }
    }
}

/// The primary's position read by a check sent after `asked` (coalesced: one check serves every reader asking
/// meanwhile, and one already done since `asked` serves at once); `None` when it cannot be had within `wait`.
pub async fn primary_position_since(
    router: &Router,
    asked: Instant,
    wait: Duration,
) -> Option<u64> {
    let primary = router.servers.get(router.primary().ok()?)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = router.positions.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if primary.position_read_since(asked) {
            return Some(primary.position());
        }
        primary.check.notify_one();
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::end_of_wal;

    #[test]
    fn an_empty_pages_header_is_not_part_of_the_written_wal() {
        let segment = 0x0400_0000;
        // A segment's first page, empty: its long header.
        assert_eq!(end_of_wal(segment + 40, Some(40), 8192), segment);
        // Another page, empty: its short header.
        assert_eq!(
            end_of_wal(segment + 8192 + 24, Some(8192 + 24), 8192),
            segment + 8192
        );
        // Records on the page: their end.
        for offset in [96, 8192 + 40, 8192 + 64, 3 * 8192 + 1000] {
            assert_eq!(
                end_of_wal(segment + offset as u64, Some(offset), 8192),
                segment + offset as u64
            );
        }
        // A replica's position, or no page size: as read.
        assert_eq!(end_of_wal(segment + 40, None, 8192), segment + 40);
        assert_eq!(
            end_of_wal(segment + 8192 + 24, Some(8192 + 24), 0),
            segment + 8192 + 24
        );
    }
}
