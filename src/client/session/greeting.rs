//! The end of the login: AuthenticationOk, the server's parameters as a server connection with this client's
//! settings reports them, BackendKeyData and ReadyForQuery.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use super::checkout::Checkout;
use super::{End, Session};
use crate::classify::Route;
use crate::protocol::backend;
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::router::Target;

impl Session {
    /// Sends AuthenticationOk, the server's parameters (as a server connection with this client's settings
    /// reports them), BackendKeyData and ReadyForQuery.
    pub(super) async fn greet(&mut self) -> Result<(), End> {
        self.apply_startup_pgsplit()?;
        let params = self.greeting_params().await?;
        let mut out = BytesMut::with_capacity(512);
        messages::authentication(&mut out, messages::AUTH_OK, &[]);
        let mut names: Vec<&String> = params.keys().collect();
        names.sort();
        for name in names {
            messages::parameter_status(&mut out, name, &params[name]);
        }
        messages::backend_key_data(&mut out, self.key.0, self.key.1);
        messages::ready_for_query(&mut out, backend::IDLE);
        self.cout.extend_from_slice(&out);
        self.settings.greeted(&params);
        Ok(())
    }

    /// The ParameterStatus values to greet with: what a server connection with this client's settings reports.
    /// A login never waits for a busy pool (a synchronous client may hold it while it logs in another
    /// connection): when no connection is free, the last greeting's values serve, with this client's own.
    async fn greeting_params(&mut self) -> Result<Arc<HashMap<String, String>>, End> {
        let free = match self.shared.router.primary() {
            Ok(i) => match self.pools.pool(Target::Primary(i)) {
                Some(pool) => pool.try_checkout().await,
                None => None,
            },
            Err(_) => None,
        };
        let cached = self.pools.greeting.lock().ok().and_then(|g| g.clone());
        let conn = match (free, cached) {
            (Some(Ok(conn)), _) => Some(conn),
            (_, Some(cached)) => {
                // This client's own values for the settings a server echoes; the shared map when equal.
                let mut own = Vec::new();
                for (name, value) in self.settings.startup_values() {
                    let reported =
                        matches!(name, "application_name" | "timezone" | "intervalstyle")
                            || (name == "client_encoding" && !value.eq_ignore_ascii_case("auto"));
                    let key = cached.keys().find(|k| k.eq_ignore_ascii_case(name));
                    if let (true, Some(key)) = (reported, key) {
                        if cached.get(key).map(String::as_str) != Some(value) {
                            own.push((key.clone(), value.to_string()));
                        }
                    }
                }
                if own.is_empty() {
                    return Ok(cached);
                }
                let mut params = (*cached).clone();
                params.extend(own);
                return Ok(Arc::new(params));
            }
            _ => None,
        };
        let mut last_error = None;
        let mut held = None;
        if let Some(conn) = conn {
            let target = Target::Primary(self.shared.router.primary().unwrap_or(0));
            let mut h = self.new_held(conn, target);
            match self.sync_params(&mut h).await {
                Ok(()) => held = Some(h),
                Err(e) => return Err(self.refuse_greeting(e)),
            }
        } else {
            // With no primary (a failover) a replica gives the parameters; a login waits for a primary
            // (`failover_wait`) only when no replica can.
            let order = match self.shared.router.primary() {
                Ok(_) => [Route::Write, Route::Read],
                Err(_) => [Route::Read, Route::Write],
            };
            for route in order {
                match self.checkout(route, false).await {
                    Ok(h) => {
                        held = Some(h);
                        break;
                    }
                    Err(Checkout::Failed(e)) => last_error = Some(e),
                    Err(e) => return Err(self.refuse_greeting(e)),
                }
            }
        }
        let Some(h) = held else {
            let msg =
                last_error.map_or_else(|| "no server is available".to_string(), |e| e.to_string());
            self.queue_error(Severity::Fatal, sqlstate::CANNOT_CONNECT_NOW, &msg);
            return Err(End::Fatal);
        };
        let params = match self.pools.greeting.lock() {
            Ok(mut g) => match g.as_ref() {
                Some(cached) if **cached == h.conn.params => cached.clone(),
                _ => {
                    let fresh = Arc::new(h.conn.params.clone());
                    *g = Some(fresh.clone());
                    fresh
                }
            },
            Err(_) => Arc::new(h.conn.params.clone()),
        };
        // The greeting connection only served to learn the parameters: it goes back to the pool.
        self.cancel.clear();
        h.conn.release();
        Ok(params)
    }

    /// The `pgsplit.*` startup parameters (`options=-c pgsplit.min_lsn=…`): a bad value refuses the login, as
    /// PostgreSQL refuses a bad startup setting.
    fn apply_startup_pgsplit(&mut self) -> Result<(), End> {
        match self.settings.startup_causal() {
            Ok((mode, floor)) => {
                if let Some(mode) = mode {
                    self.causal.set_mode(mode);
                }
                if let Some(floor) = floor {
                    self.causal.raise_floor(floor.0);
                }
            }
            Err(e) => {
                self.queue_error(Severity::Fatal, e.sqlstate, &e.message);
                return Err(End::Fatal);
            }
        }
        if let Some(route) = self.settings.startup_route() {
            self.route_override = route.route();
        }
        Ok(())
    }

    /// Refuses the login after a server rejected this client's settings (e.g. a bad client_encoding).
    fn refuse_greeting(&mut self, e: Checkout) -> End {
        match e {
            Checkout::Server(frame) => {
                let msg = messages::error_field(&frame.body, backend::FIELD_MESSAGE)
                    .unwrap_or("invalid startup parameter");
                let code = messages::error_field(&frame.body, backend::FIELD_CODE)
                    .unwrap_or(sqlstate::PROTOCOL_VIOLATION);
                self.queue_error(Severity::Fatal, code, msg);
            }
            Checkout::Failed(e) => self.queue_error(
                Severity::Fatal,
                sqlstate::CANNOT_CONNECT_NOW,
                &e.to_string(),
            ),
            // Not asked for here (a greeting waits for its connection).
            Checkout::Busy => self.queue_error(
                Severity::Fatal,
                sqlstate::CANNOT_CONNECT_NOW,
                "no server connection is free",
            ),
        }
        End::Fatal
    }
}
