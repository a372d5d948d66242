//! The mixed load: `clients` tasks, each connected through pgsplit, cycling through an autocommit INSERT, a
//! read, a BEGIN/INSERT/UPDATE/COMMIT transaction, a `BEGIN READ ONLY` read and a prepared INSERT (extended
//! protocol), each write with a unique id. A lost connection is recorded and the client reconnects. A side task
//! samples the primary's WAL position directly, for the staleness check.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use super::ledger::{lsn, now_ms, Ledger, Outcome, Read, ReadError, Write, WriteKind};

/// The table the load writes: create it on the primary before the load starts.
pub const TABLE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS drill_writes (id bigint PRIMARY KEY, kind text NOT NULL, v int NOT NULL DEFAULT 0)";

const READ_SQL: &str =
    "SELECT inet_server_port(), pg_is_in_recovery(), pg_last_wal_replay_lsn()::text";

/// What the load does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Connection string through pgsplit.
    pub url: String,
    /// Connection string straight to the primary (the WAL sampler), if any.
    pub primary_url: Option<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Pause between two units of one client.
    pub think: Duration,
    /// First write id (ids are unique across loads that use disjoint ranges).
    pub first_id: i64,
}

/// A running load; [`Load::stop`] ends it and returns the ledger.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Ledger>>,
    next_id: Arc<AtomicI64>,
}

impl Load {
    /// Starts the clients (each connects in its own task; a failed connect is retried).
    pub fn start(opts: &LoadOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicI64::new(opts.first_id));
        let mut tasks: Vec<JoinHandle<Ledger>> = (0..opts.clients)
            .map(|n| {
                let client = Worker {
                    url: opts.url.clone(),
                    think: opts.think,
                    stop: stop.clone(),
                    next_id: next_id.clone(),
                    step: n,
                };
                tokio::spawn(client.run())
            })
            .collect();
        if let Some(url) = &opts.primary_url {
            tasks.push(tokio::spawn(sample_primary(url.clone(), stop.clone())));
        }
        Load {
            stop,
            tasks,
            next_id,
        }
    }

    /// Stops the clients after their unit in flight and returns what they recorded.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        let mut ledger = Ledger::default();
        for task in self.tasks {
            if let Ok(part) = task.await {
                ledger.merge(part);
            }
        }
        // Read after every client stopped: a unit in flight at the stop may still have taken an id.
        ledger.next_id = self.next_id.load(Ordering::SeqCst);
        ledger
    }
}

/// The SQLSTATE of an error, `lost` when the connection went without one.
fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| "lost".to_string(), |c| c.code().to_string())
}

/// A committing statement's error: a lost connection, or a code saying the server connection broke while the
/// statement may have run (08000, 08003, 08006, 57P01, 57P02, XX000), leaves the outcome unknown. Codes that say
/// it never reached a server (08001 no connection, 57P03 cannot connect now, 53300) and all others are failures.
fn write_outcome(e: &tokio_postgres::Error) -> Outcome {
    let c = code(e);
    if matches!(
        c.as_str(),
        "lost" | "08000" | "08003" | "08006" | "57P01" | "57P02" | "XX000"
    ) {
        Outcome::Unknown(c)
    } else {
        Outcome::Failed(c)
    }
}

struct Worker {
    url: String,
    think: Duration,
    stop: Arc<AtomicBool>,
    next_id: Arc<AtomicI64>,
    step: usize,
}

struct Conn {
    client: Client,
    insert: Statement,
}

impl Worker {
    async fn connect(&self) -> Option<Conn> {
        while !self.stop.load(Ordering::SeqCst) {
            if let Ok((client, conn)) = tokio_postgres::connect(&self.url, NoTls).await {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let prepared = client
                    .prepare("INSERT INTO drill_writes (id, kind) VALUES ($1, 'prepared')")
                    .await;
                if let Ok(insert) = prepared {
                    return Some(Conn { client, insert });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn run(mut self) -> Ledger {
        let mut ledger = Ledger::default();
        let mut conn = None;
        while !self.stop.load(Ordering::SeqCst) {
            let c = match conn.take() {
                Some(c) => c,
                None => match self.connect().await {
                    Some(c) => c,
                    None => break,
                },
            };
            self.step = self.step.wrapping_add(1);
            let started = Instant::now();
            let ok = self.unit(&c, &mut ledger).await;
            if ok {
                let us = started.elapsed().as_micros() as u64;
                ledger.latencies.push((now_ms(), us));
            }
            if c.client.is_closed() {
                ledger.reconnects += 1;
            } else {
                conn = Some(c);
            }
            if !self.think.is_zero() {
                tokio::time::sleep(self.think).await;
            }
        }
        ledger
    }

    /// One unit of work; true when it was answered without error.
    async fn unit(&self, c: &Conn, ledger: &mut Ledger) -> bool {
        match self.step % 5 {
            0 => self.write(c, WriteKind::Autocommit, ledger).await,
            1 => self.read(c, false, ledger).await,
            2 => self.write(c, WriteKind::Transaction, ledger).await,
            3 => self.read(c, true, ledger).await,
            _ => self.write(c, WriteKind::Prepared, ledger).await,
        }
    }

    async fn write(&self, c: &Conn, kind: WriteKind, ledger: &mut Ledger) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let start_ms = now_ms();
        let result = match kind {
            WriteKind::Autocommit => c
                .client
                .simple_query(&format!(
                    "INSERT INTO drill_writes (id, kind) VALUES ({id}, 'auto')"
                ))
                .await
                .map(drop)
                .map_err(|e| write_outcome(&e)),
            WriteKind::Prepared => c
                .client
                .execute(&c.insert, &[&id])
                .await
                .map(drop)
                .map_err(|e| write_outcome(&e)),
            WriteKind::Transaction => transaction(&c.client, id).await,
        };
        let outcome = match result {
            Ok(()) => Outcome::Acknowledged,
            Err(o) => o,
        };
        let ok = outcome == Outcome::Acknowledged;
        ledger.writes.push(Write {
            id,
            kind,
            start_ms,
            end_ms: now_ms(),
            outcome,
        });
        ok
    }

    async fn read(&self, c: &Conn, in_transaction: bool, ledger: &mut Ledger) -> bool {
        let start_ms = now_ms();
        let result = if in_transaction {
            read_only_transaction(&c.client).await
        } else {
            c.client.simple_query(READ_SQL).await
        };
        let end_ms = now_ms();
        let row = result.as_ref().ok().and_then(|msgs| {
            msgs.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((
                    r.get(0).and_then(|p| p.parse::<u16>().ok()),
                    r.get(1) == Some("t"),
                    r.get(2).and_then(lsn),
                )),
                _ => None,
            })
        });
        match (result, row) {
            (Ok(_), Some((Some(port), in_recovery, replay_lsn))) => {
                ledger.reads.push(Read {
                    start_ms,
                    end_ms,
                    port,
                    in_recovery,
                    replay_lsn,
                    in_transaction,
                });
                true
            }
            (Err(e), _) => {
                ledger.read_errors.push(ReadError {
                    start_ms,
                    end_ms,
                    code: code(&e),
                });
                false
            }
            (Ok(_), _) => {
                ledger.read_errors.push(ReadError {
                    start_ms,
                    end_ms,
                    code: "no row".into(),
                });
                false
            }
        }
    }
}

/// BEGIN READ ONLY; the read; COMMIT as three statements; the read's rows.
async fn read_only_transaction(
    client: &Client,
) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
    client.simple_query("BEGIN READ ONLY").await?;
    match client.simple_query(READ_SQL).await {
        Ok(rows) => client.simple_query("COMMIT").await.map(|_| rows),
        Err(e) => {
            let _ = client.simple_query("ROLLBACK").await;
            Err(e)
        }
    }
}

/// BEGIN; INSERT; UPDATE; COMMIT as four statements. Only COMMIT's error leaves the outcome unknown.
async fn transaction(client: &Client, id: i64) -> Result<(), Outcome> {
    let failed = |e: tokio_postgres::Error| Outcome::Failed(code(&e));
    client.simple_query("BEGIN").await.map_err(failed)?;
    let body = async {
        client
            .simple_query(&format!(
                "INSERT INTO drill_writes (id, kind) VALUES ({id}, 'tx')"
            ))
            .await?;
        client
            .simple_query(&format!(
                "UPDATE drill_writes SET v = v + 1 WHERE id = {id}"
            ))
            .await
    };
    if let Err(e) = body.await {
        let _ = client.simple_query("ROLLBACK").await;
        return Err(failed(e));
    }
    client
        .simple_query("COMMIT")
        .await
        .map(drop)
        .map_err(|e| write_outcome(&e))
}

/// Samples `pg_current_wal_lsn()` on the primary every 50 ms until stopped (reconnecting across restarts).
async fn sample_primary(url: String, stop: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger::default();
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match tokio_postgres::connect(&url, NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Some(c)
                }
                Err(_) => None,
            };
        }
        if let Some(c) = &client {
            let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END";
            if let Ok(msgs) = c.simple_query(sql).await {
                let at = now_ms();
                for m in msgs {
                    if let SimpleQueryMessage::Row(r) = m {
                        if let Some(l) = r.get(0).and_then(lsn) {
                            ledger.primary_lsn.push((at, l));
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ledger
}
