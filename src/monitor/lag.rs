//! Lag on pgsplit's clock (docs/ARCHITECTURE.md §5): the primary's recent (time, LSN) samples, what is known of
//! the primary's position now, and the verdict on one replica's lag against the thresholds. While the primary
//! cannot be probed a replica's lag is bounded, not unknown: its lag at the last primary sample plus the time
//! since. Reads ride through a quick failover on that bound; once it passes `max_lag`, `primary_unknown` decides.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{LagConfig, PrimaryUnknown};

use super::HISTORY;

/// Primary LSN samples on pgsplit's clock.
#[derive(Debug, Default)]
pub(super) struct LsnHistory {
    pub(super) samples: VecDeque<(Instant, u64)>,
}

impl LsnHistory {
    pub(super) fn push(&mut self, now: Instant, lsn: u64) {
        let n = self.samples.len();
        // While the position does not move, keep the first time it was seen and stretch the last sample.
        if n >= 2 && self.samples[n - 1].1 == lsn && self.samples[n - 2].1 == lsn {
            self.samples[n - 1].0 = now;
        } else {
            self.samples.push_back((now, lsn));
        }
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > HISTORY)
        {
            self.samples.pop_front();
        }
    }

    pub(super) fn latest(&self) -> Option<(Instant, u64)> {
        self.samples.back().copied()
    }

    /// The position of the first sample taken at or after `at`: at or past where the primary was then.
    pub(super) fn since(&self, at: Instant) -> Option<u64> {
        let k = self.samples.partition_point(|(t, _)| *t < at);
        self.samples.get(k).map(|(_, lsn)| *lsn)
    }

    /// How long ago the primary was first seen past `replayed` (zero when it never was).
    pub(super) fn lag(&self, replayed: u64, now: Instant) -> Duration {
        let k = self.samples.partition_point(|(_, lsn)| *lsn <= replayed);
        match self.samples.get(k) {
            None => Duration::ZERO,
            Some((t, _)) => now.saturating_duration_since(*t),
        }
    }
}

/// What is known of the primary's WAL position now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrimaryView {
    /// Probed recently: its position.
    Known(u64),
    /// Not probed successfully since `at`, when it was at `lsn` (down, stalled or partitioned).
    Bounded { lsn: u64, at: Instant },
    /// Never sampled (since pgsplit started, or since the last change of primary).
    Unknown,
}

impl PrimaryView {
    /// From the samples: known if the server they follow has a fresh probe and the last one is within `stale`.
    pub(super) fn of(
        history: &LsnHistory,
        owner_fresh: bool,
        now: Instant,
        stale: Duration,
    ) -> PrimaryView {
        match history.latest() {
            Some((t, lsn)) if owner_fresh && now.saturating_duration_since(t) <= stale => {
                PrimaryView::Known(lsn)
            }
            Some((at, lsn)) => PrimaryView::Bounded { lsn, at },
            None => PrimaryView::Unknown,
        }
    }

    /// Whether the primary's position is known now.
    pub(super) fn is_known(&self) -> bool {
        matches!(self, PrimaryView::Known(_))
    }
}

/// What the probes say of one server as a read target.
pub(super) struct Verdict {
    /// Within the thresholds now.
    pub ok_now: bool,
    /// Under the (lower) re-admit threshold.
    pub under_readmit: bool,
    /// Why, for the status and the transitions.
    pub reason: String,
    pub lag: Option<Duration>,
    pub lag_bytes: Option<u64>,
}

impl Verdict {
    /// Not a read target, and why.
    pub(super) fn no(reason: String) -> Verdict {
        Verdict {
            ok_now: false,
            under_readmit: false,
            reason,
            lag: None,
            lag_bytes: None,
        }
    }
}

/// Judges a replica that passed every other check by its lag (time and bytes) against the thresholds. While
/// the primary's position is only bounded, the time lag is the bound: (lag at the last primary sample) + (time
/// since that sample) — the bytes are counted from that last sample (a lower bound).
pub(super) fn verdict(
    cfg: &LagConfig,
    primary: PrimaryView,
    replayed: Option<u64>,
    history: &LsnHistory,
    now: Instant,
) -> Verdict {
    match (primary, replayed) {
        (PrimaryView::Known(p), Some(r)) => {
            let (time, bytes) = (history.lag(r, now), p.saturating_sub(r));
            let judged = judge(cfg, time, bytes);
            let over = if judged.ok_now {
                ""
            } else {
                " over the threshold"
            };
            let reason = format!("lag {:.3}s / {bytes} bytes{over}", time.as_secs_f64());
            judged.because(reason)
        }
        (PrimaryView::Known(_), None) => Verdict::no("lag unknown: nothing replayed yet".into()),
        (PrimaryView::Bounded { lsn, at }, Some(r)) => {
            let unknown_for = now.saturating_duration_since(at);
            let bound = history.lag(r, now).max(unknown_for);
            let bytes = lsn.saturating_sub(r);
            let judged = judge(cfg, bound, bytes);
            let told = format!(
                "primary unknown for {:.1}s; lag bound {:.1}s / {bytes} bytes",
                unknown_for.as_secs_f64(),
                bound.as_secs_f64()
            );
            if judged.ok_now {
                judged.because(told)
            } else {
                beyond_bound(cfg, format!("{told} over the threshold"), Some(bound))
            }
        }
        (PrimaryView::Bounded { .. }, None) => {
            beyond_bound(cfg, "primary unknown; nothing replayed yet".into(), None)
        }
        (PrimaryView::Unknown, _) => {
            beyond_bound(cfg, "the primary's WAL position is unknown".into(), None)
        }
    }
}

/// The lag cannot be shown within the thresholds while the primary is unknown: `primary_unknown` decides.
fn beyond_bound(cfg: &LagConfig, why: String, bound: Option<Duration>) -> Verdict {
    match cfg.primary_unknown {
        PrimaryUnknown::Serve => Verdict {
            ok_now: true,
            under_readmit: true,
            reason: format!("{why}; serving as configured (primary_unknown = \"serve\")"),
            lag: bound,
            lag_bytes: None,
        },
        PrimaryUnknown::Ineligible => Verdict {
            lag: bound,
            ..Verdict::no(format!("lag unknown: {why}"))
        },
    }
}

/// Where a lag stands against the thresholds.
struct Judged {
    ok_now: bool,
    under_readmit: bool,
    lag: Duration,
    bytes: u64,
}

impl Judged {
    fn because(self, reason: String) -> Verdict {
        Verdict {
            ok_now: self.ok_now,
            under_readmit: self.under_readmit,
            reason,
            lag: Some(self.lag),
            lag_bytes: Some(self.bytes),
        }
    }
}

fn judge(cfg: &LagConfig, lag: Duration, bytes: u64) -> Judged {
    let over_bytes = cfg.max_lag_bytes > 0 && bytes > cfg.max_lag_bytes;
    let under_bytes = cfg.max_lag_bytes == 0 || bytes <= cfg.max_lag_bytes / 2;
    let ok_now = lag <= cfg.max_lag && !over_bytes;
    Judged {
        ok_now,
        under_readmit: ok_now && lag <= cfg.readmit_lag() && under_bytes,
        lag,
        bytes,
    }
}
