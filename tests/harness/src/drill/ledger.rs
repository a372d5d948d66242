//! What a drill records: every write by id with its outcome, every read with the server that answered it, every
//! read error, and the primary's WAL position over time. Times are unix milliseconds (pgsplit's `/status` uses
//! the same clock).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A `pg_lsn` text (`16/B374D848`) as a number.
pub fn lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// How a write was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// One INSERT in autocommit (simple query).
    Autocommit,
    /// BEGIN; INSERT; UPDATE; COMMIT.
    Transaction,
    /// An INSERT through an extended-protocol prepared statement.
    Prepared,
}

/// What the client heard of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// CommandComplete (autocommit) or COMMIT's CommandComplete seen: must be on the primary.
    Acknowledged,
    /// An error answered before anything committed, with its SQLSTATE.
    Failed(String),
    /// The connection was lost (or a connection-class error came) before the answer: may or may not be there.
    Unknown(String),
}

/// One write.
#[derive(Debug, Clone)]
pub struct Write {
    /// The unique id the row carries.
    pub id: i64,
    /// How it was sent.
    pub kind: WriteKind,
    /// When it was sent and when its answer (or the loss) came, unix ms.
    pub start_ms: u64,
    /// See `start_ms`.
    pub end_ms: u64,
    /// What the client heard.
    pub outcome: Outcome,
}

/// One answered read.
#[derive(Debug, Clone)]
pub struct Read {
    /// When it was sent and answered, unix ms.
    pub start_ms: u64,
    /// See `start_ms`.
    pub end_ms: u64,
    /// `inet_server_port()` of the server that answered.
    pub port: u16,
    /// `pg_is_in_recovery()` there.
    pub in_recovery: bool,
    /// `pg_last_wal_replay_lsn()` there (none on a primary).
    pub replay_lsn: Option<u64>,
    /// Inside a `BEGIN READ ONLY` transaction.
    pub in_transaction: bool,
}

/// One read that got an error.
#[derive(Debug, Clone)]
pub struct ReadError {
    /// When it was sent and answered, unix ms.
    pub start_ms: u64,
    /// See `start_ms`.
    pub end_ms: u64,
    /// The SQLSTATE, or `lost` when the connection was lost without one.
    pub code: String,
}

/// Everything one drill's load recorded.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Every write.
    pub writes: Vec<Write>,
    /// Every answered read.
    pub reads: Vec<Read>,
    /// Every read error.
    pub read_errors: Vec<ReadError>,
    /// The primary's `pg_current_wal_lsn()` sampled directly (not through pgsplit): (unix ms, lsn).
    pub primary_lsn: Vec<(u64, u64)>,
    /// Reconnections the clients made after losing their connection.
    pub reconnects: u64,
    /// The first id a later load may use (every id below it was taken by this one).
    pub next_id: i64,
    /// Each answered unit (read or acknowledged write): when it ended (unix ms) and its latency (µs).
    pub latencies: Vec<(u64, u64)>,
}

impl Ledger {
    /// Adds another client's records.
    pub fn merge(&mut self, other: Ledger) {
        self.writes.extend(other.writes);
        self.reads.extend(other.reads);
        self.read_errors.extend(other.read_errors);
        self.primary_lsn.extend(other.primary_lsn);
        self.reconnects += other.reconnects;
        self.next_id = self.next_id.max(other.next_id);
        self.latencies.extend(other.latencies);
    }

    /// The ids of acknowledged writes.
    pub fn acknowledged(&self) -> Vec<i64> {
        self.ids(|o| *o == Outcome::Acknowledged)
    }

    /// The ids of writes whose outcome is unknown.
    pub fn unknown(&self) -> Vec<i64> {
        self.ids(|o| matches!(o, Outcome::Unknown(_)))
    }

    /// The ids of writes that failed.
    pub fn failed(&self) -> Vec<i64> {
        self.ids(|o| matches!(o, Outcome::Failed(_)))
    }

    fn ids(&self, pick: impl Fn(&Outcome) -> bool) -> Vec<i64> {
        self.writes
            .iter()
            .filter(|w| pick(&w.outcome))
            .map(|w| w.id)
            .collect()
    }

    /// The latency percentile `p` (0..=100) of answered units, in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        self.latency_ms_between(p, 0, u64::MAX)
    }

    /// The latency percentile `p` of units that ended in `[from_ms, to_ms)`, in milliseconds (0 when none).
    pub fn latency_ms_between(&self, p: f64, from_ms: u64, to_ms: u64) -> f64 {
        let mut v: Vec<u64> = self
            .latencies
            .iter()
            .filter(|(at, _)| (from_ms..to_ms).contains(at))
            .map(|(_, us)| *us)
            .collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_reads_as_postgres_prints_it() {
        assert_eq!(lsn("0/0"), Some(0));
        assert_eq!(lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(lsn("garbage"), None);
        assert_eq!(lsn(""), None);
    }

    #[test]
    fn latency_percentiles_cover_the_units_in_the_range() {
        let l = Ledger {
            latencies: (1..=100).map(|i| (i, i * 1000)).collect(),
            ..Ledger::default()
        };
        assert_eq!(l.latency_ms(50.0), 51.0);
        assert_eq!(l.latency_ms(99.0), 99.0);
        assert_eq!(l.latency_ms_between(99.0, 1, 11), 10.0);
        assert_eq!(l.latency_ms_between(50.0, 500, 600), 0.0);
    }
}
