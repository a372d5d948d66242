//! The session's one timer, for the idle timeout (`timeouts.client_idle`) and for giving buffers back after a
//! while idle. Re-armed lazily from the last activity instead of on every message: it may fire early, and then
//! only re-arms.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A client idle this long gives its buffers back.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// What a firing of the timer calls for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Nothing yet: it fired early.
    Nothing,
    /// Give the buffers back.
    Shrink,
    /// The client was idle past the idle timeout: close it.
    Close,
}

pub(super) struct IdleClock {
    /// Made when first needed; dropped once the buffers are given back without an idle timeout to watch, so an
    /// idle client holds none (busy clients keep theirs: no allocation per unit).
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// The last I/O event.
    last_active: Instant,
    /// When the buffers were last given back.
    last_shrink: Instant,
    /// `timeouts.client_idle` (zero: none).
    timeout: Duration,
}

impl IdleClock {
    pub(super) fn new(timeout: Duration) -> IdleClock {
        let now = Instant::now();
        IdleClock {
            timer: None,
            armed: false,
            last_active: now,
            last_shrink: now,
            timeout,
        }
    }

    /// Something happened on either side.
    pub(super) fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    /// Arms the timer if a wait between units needs it (`shrink_due`: the session holds buffers it could give
    /// back); returns whether the wait must watch it.
    pub(super) fn arm(&mut self, between_units: bool, shrink_due: bool) -> bool {
        let watch_idle = between_units && !self.timeout.is_zero();
        let needed = watch_idle || shrink_due;
        if !needed {
            return false;
        }
        if !self.armed {
            let shrink_at = self.last_active.max(self.last_shrink) + SHRINK_AFTER;
            let idle_at = self.last_active + self.timeout;
            let due = match (watch_idle, shrink_due) {
                (true, true) => shrink_at.min(idle_at),
                (true, false) => idle_at,
                _ => shrink_at,
            };
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(due),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
            self.armed = true;
        }
        true
    }

    /// Polls the timer armed by [`IdleClock::arm`] (pending when none is).
    pub(super) fn poll_timer(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        }
    }

    /// The timer fired: what is due, for a session that is `idle` between units.
    pub(super) fn fired(&mut self, idle: bool) -> Due {
        self.armed = false;
        let now = Instant::now();
        if !self.timeout.is_zero() && now.duration_since(self.last_active) >= self.timeout && idle {
            return Due::Close;
        }
        if now.duration_since(self.last_active.max(self.last_shrink)) >= SHRINK_AFTER {
            self.last_shrink = now;
            if self.timeout.is_zero() {
                self.timer = None;
            }
            return Due::Shrink;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_closes_an_idle_client_after_the_timeout_and_shrinks_before() {
        let mut clock = IdleClock::new(Duration::from_secs(5));
        assert!(clock.arm(true, true));
        std::future::poll_fn(|cx| clock.poll_timer(cx)).await;
        assert_eq!(clock.fired(true), Due::Shrink);
        assert!(clock.arm(true, false));
        std::future::poll_fn(|cx| clock.poll_timer(cx)).await;
        assert_eq!(clock.fired(true), Due::Close);
        // Busy: the timeout does not close it, and no timer is needed without buffers to give back.
        let mut clock = IdleClock::new(Duration::from_secs(5));
        assert!(!clock.arm(false, false));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_ne!(clock.fired(false), Due::Close);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_deadline_back() {
        let mut clock = IdleClock::new(Duration::ZERO);
        tokio::time::advance(Duration::from_millis(900)).await;
        clock.touch();
        assert!(clock.arm(true, true));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(clock.fired(true), Due::Nothing);
    }
}
