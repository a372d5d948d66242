//! The drills themselves, shared by the CI test and the `drills` bench program: each starts the load, injects
//! a fault, waits for pgsplit to react, recovers, waits for service to come back and runs the checks. What is
//! pgsplit's own (starting it, SIGTERM) stays with the caller, which points [`Drills::url`] and
//! [`Drills::admin`] at the pgsplit in use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use super::check::{check, Expect, Report, Window};
use super::ledger::{lsn, now_ms};
use super::load::{Load, LoadOptions};
use super::status::wait_eligible;
use crate::relay::{Fault, Relay};
use crate::{Cluster, StopMode};

/// A fault on the replica under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaFault {
    /// SIGKILL, then started again.
    Kill,
    /// `pg_wal_replay_pause()`, then resumed.
    PauseReplay,
    /// Black-holed through the relay, then passing again.
    Stall,
    /// This much latency per chunk each way through the relay, then none.
    Delay(Duration),
}

/// pgsplit's probe settings, for the targets.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `lag_check_interval`.
    pub probe_interval: Duration,
    /// `probe_timeout`.
    pub probe_timeout: Duration,
    /// `max_lag`.
    pub max_lag: Duration,
}

/// Where the drills run.
pub struct Drills<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The relay in front of [`Drills::target`] (pgsplit's configuration points at its port).
    pub relay: &'a Relay,
    /// The replica under test (pgsplit's name for it, and the cluster's).
    pub target: String,
    /// Connection string through pgsplit for the load.
    pub url: String,
    /// pgsplit's admin endpoint.
    pub admin: SocketAddr,
    /// Connection string straight to the primary, in the load's database.
    pub primary_url: String,
    /// Each server's real port → pgsplit's name for it.
    pub ports: HashMap<u16, String>,
    /// pgsplit's probe settings.
    pub timing: Timing,
    /// The load's clients.
    pub clients: usize,
    /// The load's pause between units.
    pub think: Duration,
    /// Load before the fault and after recovery.
    pub settle: Duration,
    /// The next write id.
    pub next_id: i64,
}

impl Drills<'_> {
    /// Starts the mixed load through pgsplit.
    pub fn load(&self) -> Load {
        Load::start(&LoadOptions {
            url: self.url.clone(),
            primary_url: Some(self.primary_url.clone()),
            clients: self.clients,
            think: self.think,
            first_id: self.next_id,
        })
    }

    /// A window for a drill named `name` on `target` (none: the fault is not a replica's).
    pub fn window(&self, name: &str, target: Option<&str>, lag_fault: bool) -> Window {
        Window {
            name: name.into(),
            target: target.map(str::to_string),
            fault_ms: 0,
            restore_ms: 0,
            recovered_ms: 0,
            writes_back_ms: None,
            probe_interval: self.timing.probe_interval,
            probe_timeout: self.timing.probe_timeout,
            max_lag: self.timing.max_lag,
            lag_fault,
        }
    }

    /// Lets the load run on for `settle`, stops it and runs the checks. `Ok` when they pass; `Err` holds the
    /// summary and the violations.
    pub async fn finish(
        &mut self,
        load: Load,
        window: &Window,
        expect: &Expect,
    ) -> Result<Report, String> {
        tokio::time::sleep(self.settle).await;
        let ledger = load.stop().await;
        self.next_id = ledger.next_id;
        let report = check(&ledger, window, &self.primary_url, self.admin, &self.ports).await?;
        let violations = report.violations(expect);
        if violations.is_empty() {
            Ok(report)
        } else {
            Err(format!("{}\n{violations:#?}", report.summary()))
        }
    }

    /// Waits until pgsplit's `/status` shows `name` eligible (or not).
    pub async fn wait_eligible(&self, name: &str, eligible: bool) -> Result<u64, String> {
        wait_eligible(self.admin, name, eligible, Duration::from_secs(30))
            .await
            .ok_or_else(|| format!("{name} never became eligible={eligible}"))
    }

    /// Injects `fault` on the target.
    pub fn apply(&self, fault: ReplicaFault) -> Result<(), String> {
        let name = self.target.as_str();
        let r = match fault {
            ReplicaFault::Kill => self.cluster.kill(name),
            ReplicaFault::PauseReplay => self.cluster.pause_replay(name),
            ReplicaFault::Stall => {
                self.relay.set(Fault::Stall);
                Ok(())
            }
            ReplicaFault::Delay(d) => {
                self.relay.set(Fault::Delay(d));
                Ok(())
            }
        };
        r.map_err(|e| e.to_string())
    }

    /// Ends `fault` on the target.
    pub fn restore(&self, fault: ReplicaFault) -> Result<(), String> {
        let name = self.target.as_str();
        let r = match fault {
            ReplicaFault::Kill => self.cluster.start_server(name),
            ReplicaFault::PauseReplay => self.cluster.resume_replay(name),
            ReplicaFault::Stall | ReplicaFault::Delay(_) => {
                self.relay.set(Fault::Pass);
                Ok(())
            }
        };
        r.map_err(|e| e.to_string())
    }

    /// A replica fault under load: injected, pgsplit must exclude the target when `excluded`, `hold` passes,
    /// recovered, pgsplit must readmit it; no write may fail.
    pub async fn replica_drill(
        &mut self,
        name: &str,
        fault: ReplicaFault,
        excluded: bool,
        hold: Duration,
    ) -> Result<Report, String> {
        let target = self.target.clone();
        self.wait_eligible(&target, true).await?;
        let load = self.load();
        tokio::time::sleep(self.settle).await;
        let lag_fault = fault == ReplicaFault::PauseReplay;
        let mut window = self.window(name, Some(&target), lag_fault);
        window.fault_ms = now_ms();
        tokio::task::block_in_place(|| self.apply(fault))?;
        if excluded {
            self.wait_eligible(&target, false).await?;
        }
        tokio::time::sleep(hold).await;
        window.restore_ms = now_ms();
        tokio::task::block_in_place(|| self.restore(fault))?;
        window.recovered_ms = self.wait_eligible(&target, true).await?;
        let expect = Expect {
            write_errors: false,
            excluded,
        };
        self.finish(load, &window, &expect).await
    }

    /// The primary stopped (fast shutdown) for `down`, then started again without promotion.
    pub async fn primary_restart_drill(&mut self, down: Duration) -> Result<Report, String> {
        let load = self.load();
        tokio::time::sleep(self.settle).await;
        let mut window = self.window("primary-restart", None, false);
        window.fault_ms = now_ms();
        tokio::task::block_in_place(|| self.cluster.stop("primary", StopMode::Fast))
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(down).await;
        window.restore_ms = now_ms();
        tokio::task::block_in_place(|| self.cluster.start_server("primary"))
            .map_err(|e| e.to_string())?;
        window.recovered_ms = self.writes_flow().await?;
        window.writes_back_ms = Some(window.recovered_ms);
        for (_, name) in self.ports.clone() {
            if name != "primary" {
                self.wait_eligible(&name, true).await?;
            }
        }
        let expect = Expect {
            write_errors: true,
            excluded: false,
        };
        self.finish(load, &window, &expect).await
    }

    /// Makes commits on the primary wait until one replica has flushed them (`synchronous_standby_names =
    /// 'ANY 1 (every server)'`, by ALTER SYSTEM): with asynchronous replication a failover loses what the dead
    /// primary acknowledged but had not streamed, and the ledger would (rightly) count those writes as lost.
    pub fn synchronous(&self) -> Result<(), String> {
        let names: Vec<&str> = self.ports.values().map(String::as_str).collect();
        let value = format!("ANY 1 ({})", names.join(", "));
        self.cluster
            .set_config("primary", "synchronous_standby_names", Some(&value))
            .map_err(|e| e.to_string())
    }

    /// The replica that has received the most WAL (the one to promote: it holds every synchronous commit).
    fn most_advanced(&self) -> Result<String, String> {
        let mut best: Option<(u64, String)> = None;
        for replica in self.cluster.replicas() {
            let out = self
                .cluster
                .psql(&replica.name, "SELECT pg_last_wal_receive_lsn()")
                .map_err(|e| e.to_string())?;
            let at = lsn(&out).unwrap_or(0);
            if best.as_ref().is_none_or(|(b, _)| at > *b) {
                best = Some((at, replica.name.clone()));
            }
        }
        best.map(|(_, name)| name)
            .ok_or_else(|| "no replica to promote".to_string())
    }

    /// The primary killed (SIGKILL); `gap` later the replica that received the most WAL is promoted, the other
    /// re-pointed at it and the old primary rebuilt as its replica. Writes fail while there is no primary (their
    /// outcome may be unknown); service is back when every server is eligible again. Run it last: the roles stay
    /// changed. Run [`Drills::synchronous`] first, or acknowledged writes not yet streamed are lost.
    pub async fn promote_drill(&mut self, gap: Duration) -> Result<Report, String> {
        let load = self.load();
        tokio::time::sleep(self.settle).await;
        let mut window = self.window("primary-kill-promote", None, false);
        let err = |e: crate::ClusterError| e.to_string();
        window.fault_ms = now_ms();
        tokio::task::block_in_place(|| self.cluster.kill("primary")).map_err(err)?;
        tokio::time::sleep(gap).await;
        window.restore_ms = now_ms();
        let promote = tokio::task::block_in_place(|| {
            let name = self.most_advanced()?;
            self.cluster.promote(&name).map_err(err)?;
            Ok::<_, String>(name)
        })?;
        window.writes_back_ms = Some(self.writes_flow().await?);
        let followers: Vec<String> = self
            .cluster
            .replicas()
            .iter()
            .filter(|r| r.name != promote)
            .map(|r| r.name.clone())
            .collect();
        for follower in &followers {
            tokio::task::block_in_place(|| self.cluster.follow(follower, &promote)).map_err(err)?;
        }
        tokio::task::block_in_place(|| self.cluster.rebuild_as_replica("primary", &promote))
            .map_err(err)?;
        for follower in &followers {
            self.wait_eligible(follower, true).await?;
        }
        window.recovered_ms = self.wait_eligible("primary", true).await?;
        println!("drill primary-kill-promote: promoted {promote}");
        let expect = Expect {
            write_errors: true,
            excluded: false,
        };
        self.finish(load, &window, &expect).await
    }

    /// Waits until a write through pgsplit succeeds; returns when (unix ms).
    pub async fn writes_flow(&self) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((c, conn)) = tokio_postgres::connect(&self.url, NoTls).await {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                if c.simple_query("SELECT pg_current_xact_id()").await.is_ok() {
                    return Ok(now_ms());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("writes never flowed again".into())
    }

    /// The standard drills in sequence: replica killed, replay paused, replica black-holed, 50 ms then 500 ms
    /// delay, primary stopped and started. `hold` scales how long each fault lasts (CI: short; full: the
    /// issue's 10 s pause).
    pub async fn standard(&mut self, hold: Duration) -> Vec<Result<Report, String>> {
        let pause = if hold >= Duration::from_secs(5) {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(3)
        };
        let mut out = Vec::new();
        out.push(
            self.replica_drill("replica-kill", ReplicaFault::Kill, true, hold / 4)
                .await,
        );
        let name = format!("replay-pause-{}s", pause.as_secs());
        out.push(
            self.replica_drill(&name, ReplicaFault::PauseReplay, true, pause)
                .await,
        );
        out.push(
            self.replica_drill("replica-stall", ReplicaFault::Stall, true, hold)
                .await,
        );
        for ms in [50, 500] {
            let fault = ReplicaFault::Delay(Duration::from_millis(ms));
            let name = format!("delay-{ms}ms");
            out.push(self.replica_drill(&name, fault, false, hold).await);
        }
        out.push(self.primary_restart_drill(hold / 4).await);
        out
    }
}
