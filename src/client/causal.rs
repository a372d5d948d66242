//! The client's read-your-writes state, without I/O: its consistency mode and its floor, the WAL position its
//! reads must see (docs/ARCHITECTURE.md §4).

use std::time::Instant;

use crate::causal::{Consistency, Lsn};
use crate::router::Router;

/// A client's consistency mode and floor.
#[derive(Debug)]
pub(super) struct Causal {
    mode: Consistency,
    /// The highest WAL position the client must see: its own last commit, or a token it was given.
    floor: u64,
    /// When the floor last rose (a primary position read later that is still below it means the floor is lost).
    raised_at: Instant,
    /// The cap after a failover was logged.
    capped: bool,
    /// When the client's last writes were committed, until the floor has been raised past them.
    unsettled: Option<Instant>,
}

/// What a read must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadFloor {
    /// Anything: no floor.
    Any,
    /// Every position up to this one.
    At(u64),
    /// The primary's position when the read began (`strict`).
    PrimaryNow,
}

impl Causal {
    pub(super) fn new(mode: Consistency, floor: u64) -> Causal {
        Causal {
            mode,
            floor,
            raised_at: Instant::now(),
            capped: false,
            unsettled: None,
        }
    }

    pub(super) fn mode(&self) -> Consistency {
        self.mode
    }

    pub(super) fn set_mode(&mut self, mode: Consistency) {
        self.mode = mode;
    }

    /// The floor (0: none).
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Whether the session keeps a floor after its writes (`session` mode).
    pub(super) fn learns_floor(&self) -> bool {
        self.mode == Consistency::Session
    }

    /// The client's writes so far are committed: its floor must reach the primary's position read from now on.
    pub(super) fn wrote(&mut self) {
        self.unsettled = Some(Instant::now());
    }

    /// When the writes the floor does not cover yet were committed.
    pub(super) fn unsettled_write(&self) -> Option<Instant> {
        self.unsettled
    }

    /// The primary's position read after the last commit: the floor covers the client's writes.
    pub(super) fn settle(&mut self, lsn: u64) {
        self.unsettled = None;
        self.raise_floor(lsn);
    }

    /// When the floor is above the primary's known position and no check of the primary has been read since the
    /// floor rose: the time to read one after (then `read_floor` caps it if the primary really is behind).
    pub(super) fn floor_to_confirm(&self, router: &Router) -> Option<Instant> {
        let primary = router.primary().ok().and_then(|i| router.servers.get(i))?;
        (self.mode == Consistency::Session
            && self.floor > primary.position()
            && !primary.position_read_since(self.raised_at))
        .then_some(self.raised_at)
    }

    /// Raises the floor (a commit's position, or a token); never lowers it.
    pub(super) fn raise_floor(&mut self, lsn: u64) {
        if lsn > self.floor {
            self.floor = lsn;
            self.raised_at = Instant::now();
        }
    }

    /// What a read must see now; `statement_floor` is a `/* pgsplit:min_lsn=… */` of the statement. In session
    /// mode a floor above what the primary has written — read after the floor was set, so not merely late — is
    /// capped there: writes lost in a failover (or a token from elsewhere) must not keep the session's reads on
    /// the primary forever.
    pub(super) fn read_floor(&mut self, router: &Router, statement_floor: u64) -> ReadFloor {
        match self.mode {
            Consistency::Eventual if statement_floor == 0 => ReadFloor::Any,
            Consistency::Eventual => ReadFloor::At(statement_floor),
            Consistency::Strict => ReadFloor::PrimaryNow,
            // The client's last writes are not covered yet (the primary could not be asked): only the primary has
            // them for sure.
            Consistency::Session if self.unsettled.is_some() => ReadFloor::At(u64::MAX),
            Consistency::Session => {
                self.cap(router);
                match self.floor.max(statement_floor) {
                    0 => ReadFloor::Any,
                    floor => ReadFloor::At(floor),
                }
            }
        }
    }

    fn cap(&mut self, router: &Router) {
        let Some(primary) = router.primary().ok().and_then(|i| router.servers.get(i)) else {
            return;
        };
        let written = primary.position();
        if self.floor > written && primary.position_read_since(self.raised_at) {
            if !self.capped {
                self.capped = true;
                tracing::warn!(
                    floor = %Lsn(self.floor),
                    primary = %Lsn(written),
                    "a client's read-your-writes floor is past what the primary has written (writes lost in a failover?): lowered to the primary's position"
                );
            }
            self.floor = written;
        }
    }
}
