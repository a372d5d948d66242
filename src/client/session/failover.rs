//! Waiting for a primary during a failover (`timeouts.failover_wait`): a unit that needs the primary and finds
//! none, or finds it refusing connections, waits for the monitor to find one (a promoted replica, or the old
//! primary back) instead of failing at once. The monitor's probe that changes the primary wakes the waiters; the
//! client's CancelRequest and pgsplit's shutdown end the wait. Nothing of the unit has been sent while it waits,
//! so nothing is ever retried that may have run.

use std::time::{Duration, Instant};

use super::checkout::Checkout;
use super::Session;
use crate::error::Error;
use crate::router::{NoPrimary, Target};
use crate::stats::FailoverOutcome;

impl Session {
    /// The primary for a unit that needs it. While there is none (a failover) the unit waits up to
    /// `timeouts.failover_wait` for one.
    pub(super) async fn primary_target(&self) -> Result<Target, Checkout> {
        if let Ok(i) = self.shared.router.primary() {
            return Ok(Target::Primary(i));
        }
        let wait = self.shared.config_now().timeouts.failover_wait;
        let found = self.await_primary(wait, |p| p.is_ok()).await?;
        found.map(Target::Primary).map_err(no_primary)
    }

    /// A connection to the primary `failed` could not be opened (nothing of the unit was sent): it may have just
    /// died. Waits for the monitor's verdict — its next probes mark a server that refuses connections down at
    /// once — then, within `timeouts.failover_wait`, for a new primary. Fails with `error` when the monitor still
    /// holds `failed` for the primary (only this connection failed).
    pub(super) async fn primary_after_failure(
        &self,
        failed: usize,
        error: Error,
    ) -> Result<Target, Checkout> {
        let config = self.shared.config_now();
        let wait = config.timeouts.failover_wait;
        let verdict = (config.lag.lag_check_interval * 2 + config.lag.probe_timeout).min(wait);
        drop(config);
        if wait.is_zero() {
            return Err(Checkout::Failed(error));
        }
        tracing::warn!(client = self.id, error = %error, "the primary cannot be reached; waiting for the monitor's verdict");
        let started = Instant::now();
        let left = match self.await_primary(verdict, |p| p != &Ok(failed)).await? {
            Ok(i) if i == failed => return Err(Checkout::Failed(error)),
            Ok(i) => return Ok(Target::Primary(i)),
            Err(_) => wait.saturating_sub(started.elapsed()),
        };
        let found = self.await_primary(left, |p| p.is_ok()).await?;
        found.map(Target::Primary).map_err(no_primary)
    }

    /// Waits up to `wait` until the primary (or its absence) satisfies `done`, unless the client cancels or
    /// pgsplit shuts down first; counts the wait and how it ended.
    async fn await_primary(
        &self,
        wait: Duration,
        done: impl Fn(&Result<usize, NoPrimary>) -> bool,
    ) -> Result<Result<usize, NoPrimary>, Checkout> {
        let router = &self.shared.router;
        if wait.is_zero() {
            return Ok(router.primary());
        }
        let started = Instant::now();
        let cancelled = self.cancel.interrupted();
        let mut stop = self.stop.clone();
        let waited = tokio::select! {
            p = router.wait_for_primary(wait, &done) => Ok(p),
            _ = cancelled => Err(Error::Cancelled),
            _ = stop.wait_for(|s| *s) => Err(Error::ShuttingDown),
        };
        let outcome = match &waited {
            Ok(p) if done(p) && p.is_ok() => FailoverOutcome::Primary,
            Ok(_) => FailoverOutcome::Timeout,
            Err(_) => FailoverOutcome::Cancelled,
        };
        let took = started.elapsed();
        self.shared.stats.failover.record(outcome, took);
        tracing::info!(
            client = self.id,
            outcome = outcome.label(),
            waited_ms = took.as_millis() as u64,
            "waited for a primary"
        );
        waited.map_err(Checkout::Failed)
    }
}

/// The client's error when no primary came: 57P03 naming why.
fn no_primary(reason: NoPrimary) -> Checkout {
    Checkout::Failed(Error::Unavailable(format!(
        "no primary to take this statement: {reason}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_mean_the_primary_is_going_away_wait_for_the_monitor() {
        let server = || "primary".to_string();
        let login = |sqlstate: &str| Error::ServerLogin {
            server: server(),
            sqlstate: sqlstate.into(),
            detail: String::new(),
        };
        let unreachable = Error::Connect {
            server: server(),
            detail: "Connection refused".into(),
        };
        assert!(Error::may_mean_server_down(&unreachable));
        assert!(Error::may_mean_server_down(&Error::server_io(
            "primary", "reset"
        )));
        assert!(
            Error::may_mean_server_down(&login("57P03")),
            "the database system is starting up"
        );
        assert!(
            Error::may_mean_server_down(&login("57P01")),
            "terminating: shutting down"
        );
        assert!(
            !Error::may_mean_server_down(&login("28P01")),
            "a wrong password fails at once"
        );
        assert!(
            !Error::may_mean_server_down(&login("3D000")),
            "so does an unknown database"
        );
        let busy = Error::PoolTimeout {
            server: server(),
            waited_ms: 1,
            size: 1,
        };
        assert!(
            !Error::may_mean_server_down(&busy),
            "a full pool is not a dead primary"
        );
    }
}
