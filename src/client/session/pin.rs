//! Pinning: when a client keeps its server connections (and its reads go to the primary), and when it is let go
//! again. Session-bound state pins for the rest of the session, except session advisory locks: once a unit has
//! released locks and every kept connection says it holds none, the connections go back to their pools.

use super::Session;
use crate::classify::Decision;

impl Session {
    /// Keeps the client on its server connections for the rest of its session (`reads_on_primary`: its
    /// unhinted reads go to the primary too).
    pub(super) fn pin_for_good(&mut self, reads_on_primary: bool) {
        self.keep_servers = true;
        self.reads_on_primary |= reads_on_primary;
        self.pinned_by_locks = false;
    }

    /// Notes what a unit about to be placed does to the pin: session-bound state pins the client, with its
    /// reads on the primary where that state lives; advisory locks alone pin it until they are released.
    pub(super) fn note_pins(&mut self, decision: &Decision) {
        let effects = &decision.effects;
        if effects.pins {
            if !self.keep_servers {
                tracing::debug!(
                    client = self.id,
                    "statement pins the client to its server connections"
                );
            }
            self.pin_for_good(true);
        } else if effects.locks {
            self.reads_on_primary = true;
            if !self.keep_servers {
                tracing::debug!(
                    client = self.id,
                    "advisory lock: the client keeps its server connections until it holds none"
                );
                self.keep_servers = true;
                self.pinned_by_locks = true;
            }
        }
    }

    /// Between units (nothing held): if locks alone pinned the client and it has released some, asks each kept
    /// connection whether it still holds any; when none does, they go back to their pools and the client's reads
    /// are routed again. A connection that cannot answer keeps the pin.
    pub(super) async fn unpin_if_unlocked(&mut self) {
        if !std::mem::take(&mut self.locks_check_due)
            || !self.pinned_by_locks
            || self.held.is_some()
        {
            return;
        }
        for h in &mut self.parked {
            if h.busy() || h.in_transaction() || !h.conn.rbuf.is_empty() {
                return;
            }
            match h.conn.holds_advisory_locks().await {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => {
                    tracing::warn!(client = self.id, error = %e, "advisory lock check failed");
                    h.conn.broken = true;
                    return;
                }
            }
        }
        tracing::debug!(
            client = self.id,
            "no advisory lock left: the client's server connections go back to their pools"
        );
        self.keep_servers = false;
        self.reads_on_primary = false;
        self.pinned_by_locks = false;
        for h in self.parked.drain(..) {
            h.conn.release();
        }
    }
}
