//! Reads the primary's `pg_proc` so that calls of user-defined VOLATILE functions route to the primary
//! (`volatile_functions = "catalog"`): at start, and again whenever a statement calls a function the last read
//! did not list.

use std::sync::Arc;
use std::time::Duration;

use crate::classify::{Classifier, FunctionCatalog, FunctionRow};
use crate::config::{Config, LiveConfig, ServerConfig, VolatileFunctions};
use crate::router::Router;
use crate::side::SideError;

/// Functions, their schema, whether each is user-defined (built-ins have OIDs below 16384) and VOLATILE.
const QUERY: &str = "SELECT n.nspname::text, p.proname::text, p.oid >= 16384, p.provolatile = 'v' \
                     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

/// UNLOGGED tables (a hot standby cannot read them: their reads go to the primary).
const UNLOGGED: &str = "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
                        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                        WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p')";

/// Most one read per this interval, however many unknown functions statements call.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Wait after a refresh request before reading.
const SETTLE: Duration = Duration::from_millis(300);
/// Retry interval after a failed read.
const RETRY: Duration = Duration::from_secs(5);

/// A catalog read that failed, and in which database.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The side connection could not be opened.
    #[error("{database}: {source}")]
    Connect {
        /// The database (as clients name it).
        database: String,
        /// Why.
        #[source]
        source: SideError,
    },
    /// A catalog query failed.
    #[error("{database}: {source}")]
    Query {
        /// The database (as clients name it).
        database: String,
        /// Why.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Reads the catalog of every served database on `server` (the current primary; union of all databases).
pub async fn load(config: &Config, server: &ServerConfig) -> Result<FunctionCatalog, CatalogError> {
    let mut rows = Vec::new();
    let mut unlogged = Vec::new();
    for db in &config.databases {
        let side = crate::side::connect(
            config,
            server,
            db,
            "pgsplit catalog",
            config.timeouts.server_connect,
        )
        .await
        .map_err(|source| CatalogError::Connect {
            database: db.name.clone(),
            source,
        })?;
        let query_error = |source| CatalogError::Query {
            database: db.name.clone(),
            source,
        };
        let result = side.client.query(QUERY, &[]).await.map_err(query_error);
        let unlogged_rows = side.client.query(UNLOGGED, &[]).await.map_err(query_error);
        drop(side.client);
        let _ = side.task.await;
        for r in result? {
            rows.push(FunctionRow {
                schema: r.get(0),
                name: r.get(1),
                user_defined: r.get(2),
                volatile: r.get(3),
            });
        }
        for r in unlogged_rows? {
            unlogged.push((r.get(0), r.get(1)));
        }
    }
    Ok(FunctionCatalog::new(rows).with_unlogged(unlogged))
}

/// Keeps the classifier's catalog current, read from the server that takes writes now (`router`; it follows a
/// failover), else the configured primary. `loaded` fires after the first attempt, whether it read or not. In
/// `list` mode routing ignores the catalog, but it still tells built-in functions from user-defined ones, whose
/// calls make a server connection be reset before reuse.
pub async fn maintain(
    live: LiveConfig,
    router: Arc<Router>,
    classifier: Arc<Classifier>,
    loaded: tokio::sync::oneshot::Sender<()>,
) {
    let mut loaded = Some(loaded);
    loop {
        let config = live.load_full();
        let primary = router.primary().ok().and_then(|i| router.servers.get(i));
        let primary = primary.and_then(|b| config.servers().find(|s| s.display_name() == b.name));
        match load(&config, primary.unwrap_or(&config.primary)).await {
            Ok(catalog) => {
                tracing::debug!(
                    functions = catalog.len(),
                    "function catalog read from the primary"
                );
                classifier.set_catalog(catalog);
                if let Some(tx) = loaded.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(MIN_INTERVAL).await;
                if !classifier.met_unknown_function() {
                    classifier.refresh.notified().await;
                    // Asked for by a statement about to run (CREATE UNLOGGED TABLE, a new function): give it a
                    // moment to commit.
                    tokio::time::sleep(SETTLE).await;
                }
            }
            Err(e) => {
                let effect = if config.routing.volatile_functions == VolatileFunctions::Catalog {
                    "function calls route to the primary"
                } else {
                    "connections that ran function calls are reset before reuse"
                };
                tracing::warn!(error = %e, "cannot read the function catalog from the primary; {effect} until it can");
                if let Some(tx) = loaded.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
