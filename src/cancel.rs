//! Cancel requests: each client gets pgsplit's own backend key; a CancelRequest with it is forwarded to the
//! server running that client's statement, with that server's key, and to nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A server address and the backend key of one of its connections.
type ServerKey = (Arc<str>, (i32, i32));

/// Where a client's current statement runs, if anywhere.
#[derive(Default)]
pub struct CancelSlot {
    current: Mutex<Option<ServerKey>>,
}

impl CancelSlot {
    /// Records the server connection the client now holds.
    pub fn set(&self, address: Arc<str>, key: (i32, i32)) {
        *lock(&self.current) = Some((address, key));
    }

    /// Clears it when the connection goes back to a pool.
    pub fn clear(&self) {
        *lock(&self.current) = None;
    }

    fn get(&self) -> Option<ServerKey> {
        lock(&self.current).clone()
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
        if let Some((address, key)) = slot.get() {
            if let Err(e) = crate::server::send_cancel(&address, key, timeout).await {
                tracing::warn!(%address, error = %e, "could not forward cancel request");
            }
        }
    }
}
