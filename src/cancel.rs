//! Cancel requests: each client gets pgsplit's own backend key; a CancelRequest with it is forwarded to the
//! server running that client's statement, with that server's key, and to nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::tls::ServerTls;

/// A server address, the backend key of one of its connections, and how to reach the server (TLS).
type ServerKey = (Arc<str>, (i32, i32), Arc<ServerTls>);

/// Where a client's current statement runs, if anywhere.
///
/// It is set only while a unit of work of the client is in flight on a server connection, and cleared as soon
/// as the server has answered it, so a late cancel finds nothing. A cancel read from it just before that may
/// still reach the server afterwards: a connection a cancel was forwarded for is therefore closed instead of
/// going back to its pool ([`CancelSlot::release`]), and a late cancel can never hit another client's statement.
#[derive(Default)]
pub struct CancelSlot {
    current: Mutex<Slot>,
    /// Woken by a cancel for the client: a unit waiting inside pgsplit (for a primary) gives up.
    interrupt: tokio::sync::Notify,
}

#[derive(Default)]
struct Slot {
    key: Option<ServerKey>,
    /// A cancel was forwarded since the connection was last released.
    forwarded: bool,
}

impl CancelSlot {
    /// Records the server connection running the client's current unit (its address, backend key and TLS).
    pub fn set(&self, address: Arc<str>, key: (i32, i32), tls: Arc<ServerTls>) {
        lock(&self.current).key = Some((address, key, tls));
    }

    /// Clears it once nothing of the client is in flight there.
    pub fn clear(&self) {
        lock(&self.current).key = None;
    }

    /// Clears it as the connection is given up: returns whether a cancel was forwarded for it, which may still
    /// land, so the connection must not serve anyone else.
    pub fn release(&self) -> bool {
        let mut slot = lock(&self.current);
        slot.key = None;
        std::mem::take(&mut slot.forwarded)
    }

    /// Completes when a cancel for the client arrives after this was called (a wait inside pgsplit ends).
    pub fn interrupted(&self) -> tokio::sync::futures::Notified<'_> {
        self.interrupt.notified()
    }

    /// The server key to cancel, noting that a cancel goes out.
    fn take_for_cancel(&self) -> Option<ServerKey> {
        let mut slot = lock(&self.current);
        let key = slot.key.clone()?;
        slot.forwarded = true;
        Some(key)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Client keys → their slots.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

impl CancelRegistry {
    /// Registers a new client; returns its key (pid, secret) and slot. Keys are random and unique.
    pub fn register(&self) -> ((i32, i32), Arc<CancelSlot>) {
        let slot = Arc::new(CancelSlot::default());
        let mut clients = lock(&self.clients);
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 || clients.contains_key(&pid) {
                continue;
            }
            let secret = rand::random::<i32>();
            clients.insert(pid, (secret, slot.clone()));
            return ((pid, secret), slot);
        }
    }

    /// Forgets a client that left.
    pub fn unregister(&self, pid: i32) {
        lock(&self.clients).remove(&pid);
    }

    /// Forwards a cancel for `key` to the server the client is using; ignores unknown keys, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: i32, timeout: Duration) {
        let slot = match lock(&self.clients).get(&pid) {
            Some((s, slot)) if *s == secret => slot.clone(),
            _ => {
                tracing::debug!(pid, "cancel request with an unknown key ignored");
                return;
            }
        };
        slot.interrupt.notify_waiters();
        if let Some((address, key, tls)) = slot.take_for_cancel() {
            if let Err(e) = crate::server::send_cancel(&address, key, timeout, &tls).await {
                tracing::warn!(%address, error = %e, "could not forward cancel request");
            }
        }
    }
}
