//! Counters shared by the session tasks and (later) the admin endpoint: every routing decision by destination
//! and reason.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::classify::Reason;

/// Why a read ran on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryRead {
    /// No replica is configured.
    NoReplicas,
    /// Every replica is down or excluded.
    NoEligibleReplica,
    /// `primary_reads = "include"` and the balancer chose the primary.
    Included,
    /// `read_write_split = false`.
    SplitOff,
}

impl PrimaryRead {
    /// Every variant, in counter order.
    pub const ALL: [PrimaryRead; 4] = [
        PrimaryRead::NoReplicas,
        PrimaryRead::NoEligibleReplica,
        PrimaryRead::Included,
        PrimaryRead::SplitOff,
    ];

    /// A stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            PrimaryRead::NoReplicas => "no_replicas",
            PrimaryRead::NoEligibleReplica => "no_eligible_replica",
            PrimaryRead::Included => "primary_included",
            PrimaryRead::SplitOff => "split_off",
        }
    }
}

/// Where a unit of work went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The primary.
    Primary,
    /// A replica.
    Replica,
}

/// Routing decisions counted by destination and reason.
#[derive(Default)]
pub struct RoutingStats {
    by_reason: [[AtomicU64; Reason::ALL.len()]; 2],
    primary_reads: [AtomicU64; PrimaryRead::ALL.len()],
    pinned: [AtomicU64; 2],
    refused_reads: AtomicU64,
}

fn dest_index(d: Destination) -> usize {
    match d {
        Destination::Primary => 0,
        Destination::Replica => 1,
    }
}

impl RoutingStats {
    /// A unit routed afresh.
    pub fn routed(&self, dest: Destination, reason: Reason) {
        self.by_reason[dest_index(dest)][reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A read that went to the primary, and why.
    pub fn primary_read(&self, why: PrimaryRead) {
        self.primary_reads[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A unit that followed the server its transaction (or pipeline) is pinned to.
    pub fn pinned(&self, dest: Destination) {
        self.pinned[dest_index(dest)].fetch_add(1, Ordering::Relaxed);
    }

    /// A read refused because no server could take it (`fallback = "error"`).
    pub fn refused_read(&self) {
        self.refused_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Units routed to `dest` for `reason`.
    pub fn count(&self, dest: Destination, reason: Reason) -> u64 {
        self.by_reason[dest_index(dest)][reason as usize].load(Ordering::Relaxed)
    }

    /// Reads that went to the primary for `why`.
    pub fn primary_reads(&self, why: PrimaryRead) -> u64 {
        self.primary_reads[why as usize].load(Ordering::Relaxed)
    }

    /// Units that followed a pinned server.
    pub fn pinned_count(&self, dest: Destination) -> u64 {
        self.pinned[dest_index(dest)].load(Ordering::Relaxed)
    }

    /// Reads refused.
    pub fn refused_reads(&self) -> u64 {
        self.refused_reads.load(Ordering::Relaxed)
    }
}
