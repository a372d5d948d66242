//! A fault-injecting TCP relay: listens on a free 127.0.0.1 port and forwards every connection to a server.
//! Its [`Fault`] is switched at run time: pass, a real added latency per chunk, a black hole (stall) or a cut.
//! Point pgsplit's configuration at [`Relay::port`] instead of the server's port for the server under test.
//!
//! Plain threads (two per relayed connection, one for the listener), so it runs beside any async runtime.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often a blocked thread looks at the fault again.
const TICK: Duration = Duration::from_millis(10);
/// Bytes read per chunk.
const CHUNK: usize = 64 * 1024;

/// What the relay does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward as it comes.
    Pass,
    /// Forward each chunk, in each direction, this long after it was read (added latency, not a throttle).
    Delay(Duration),
    /// Black hole: connections stay open, nothing is forwarded, new connections are accepted and never answered.
    Stall,
    /// Close every connection; new ones are closed as soon as they are accepted.
    Cut,
}

struct State {
    fault: Mutex<Fault>,
    /// Bumped by every cut: connections opened before it close.
    generation: AtomicU64,
    stopped: AtomicBool,
}

impl State {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running relay; dropping it stops the listener and closes every relayed connection.
pub struct Relay {
    port: u16,
    target: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("port", &self.port)
            .field("target", &self.target)
            .field("fault", &self.state.fault())
            .finish()
    }
}

impl Relay {
    /// Starts a relay in front of `127.0.0.1:target_port`, passing traffic.
    pub fn start(target_port: u16) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let state = Arc::new(State {
            fault: Mutex::new(Fault::Pass),
            generation: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let accept_state = state.clone();
        thread::Builder::new()
            .name(format!("relay-{port}"))
            .spawn(move || accept_loop(listener, target, accept_state))?;
        Ok(Relay {
            port,
            target,
            state,
        })
    }

    /// The port clients (pgsplit) connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.state.fault()
    }

    /// Switches the fault; [`Fault::Cut`] also closes every open connection now.
    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
        if fault == Fault::Cut {
            self.state.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, state: Arc<State>) {
    while !state.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let state = state.clone();
                let _ = thread::Builder::new()
                    .name("relay-conn".into())
                    .spawn(move || open(client, target, state));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(_) => thread::sleep(TICK),
        }
    }
}

/// One accepted connection: waits out a stall, refuses under a cut, then relays both ways.
fn open(client: TcpStream, target: SocketAddr, state: Arc<State>) {
    let generation = state.generation.load(Ordering::SeqCst);
    let _ = client.set_nonblocking(false);
    loop {
        if state.stopped.load(Ordering::SeqCst)
            || state.generation.load(Ordering::SeqCst) != generation
        {
            return;
        }
        match state.fault() {
            Fault::Cut => return,
            Fault::Stall => thread::sleep(TICK),
            Fault::Pass | Fault::Delay(_) => break,
        }
    }
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back_state = state.clone();
    let back = thread::Builder::new()
        .name("relay-back".into())
        .spawn(move || pump(server2, client2, back_state, generation));
    pump(client, server, state, generation);
    if let Ok(back) = back {
        let _ = back.join();
    }
}

/// Copies `from` → `to` under the fault in force until either side closes or a cut ends this generation.
fn pump(mut from: TcpStream, mut to: TcpStream, state: Arc<State>, generation: u64) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; CHUNK];
    let alive = |s: &State| {
        !s.stopped.load(Ordering::SeqCst) && s.generation.load(Ordering::SeqCst) == generation
    };
    'outer: while alive(&state) {
        // Under a stall nothing is read, so nothing is forwarded and the sender's buffers fill up.
        if state.fault() == Fault::Stall {
            thread::sleep(TICK);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        // What was read before a stall is held until the stall ends.
        loop {
            if !alive(&state) {
                break 'outer;
            }
            match state.fault() {
                Fault::Stall => thread::sleep(TICK),
                Fault::Delay(d) => {
                    thread::sleep(d);
                    break;
                }
                Fault::Pass | Fault::Cut => break,
            }
        }
        if !alive(&state) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
