//! A TCP proxy in front of a cluster that makes network faults exact. The
//! test arms it with a marker (text of an SQL statement) and a fault, which
//! strikes the first connection whose client sends that marker:
//!
//! - `lose_reply_to`: that connection's *next* message (the execution that
//!   follows the prepare) is delivered to the server, then the connection
//!   is cut before the server's answer reaches the client. The server runs
//!   and commits the statement; the client never learns it did: the
//!   "connection dropped between the write and its reply" fault.
//! - `down_after`: a moment after the marker went through (its reply
//!   delivered), the server is out of reach for a while: every connection
//!   is cut and new ones are refused, as when the server or the network
//!   between is down.
//! - `on_reply`: when the server's answer to the marked statement arrives
//!   and holds some bytes (`COMMIT`'s completion, say), an action runs
//!   before the client gets it: the test stops the client's process there,
//!   right after the server committed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

/// What the first connection that sends the marker suffers.
enum Fault {
    LoseReply,
    DownAfter { delay: Duration, length: Duration },
    OnReply { holding: Vec<u8>, action: Box<dyn FnOnce() + Send> },
}

#[derive(Default)]
struct Shared {
    /// The marker armed and its fault, until a connection has sent it.
    armed: Mutex<Option<(Vec<u8>, Fault)>>,
    cuts: AtomicUsize,
    /// Out of reach until then.
    down_until: Mutex<Option<Instant>>,
    /// Every connection's two ends, to cut when the server goes out of reach.
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl Shared {
    fn down(&self) -> bool {
        self.down_until.lock().unwrap().is_some_and(|t| Instant::now() < t)
    }
}

impl Proxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if s.down() {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                    s.live.lock().unwrap().push((a, b));
                }
                let s = s.clone();
                std::thread::spawn(move || relay(client, server, s));
            }
        });
        Ok(Proxy { port, shared })
    }

    /// Cut the first connection that runs a statement containing `marker`,
    /// after the server has received its execution and before the client
    /// hears back.
    pub fn lose_reply_to(&self, marker: &str) {
        self.arm(marker, Fault::LoseReply);
    }

    /// `delay` after the first statement containing `marker` went through,
    /// cut every connection and refuse new ones for `length`.
    pub fn down_after(&self, marker: &str, delay: Duration, length: Duration) {
        self.arm(marker, Fault::DownAfter { delay, length });
    }

    /// When the server's answer to the first statement containing `marker`
    /// arrives holding `holding`, run `action`, then let the client have
    /// the answer.
    pub fn on_reply(&self, marker: &str, holding: &[u8], action: impl FnOnce() + Send + 'static) {
        self.arm(marker, Fault::OnReply { holding: holding.to_vec(), action: Box::new(action) });
    }

    fn arm(&self, marker: &str, fault: Fault) {
        *self.shared.armed.lock().unwrap() = Some((marker.as_bytes().to_vec(), fault));
    }

    /// How many replies were lost so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Is the server out of reach through the proxy now?
    pub fn is_down(&self) -> bool {
        self.shared.down()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Go out of reach now, for `length`: cut every connection.
fn go_down(shared: &Shared, length: Duration) {
    *shared.down_until.lock().unwrap() = Some(Instant::now() + length);
    for (a, b) in shared.live.lock().unwrap().drain(..) {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

/// An action to run when the server's answer holds these bytes.
type Waiting = (Vec<u8>, Box<dyn FnOnce() + Send>);

fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let cut = Arc::new(AtomicBool::new(false));
    // An action waiting for the answer to a marked statement.
    let waiting: Arc<Mutex<Option<Waiting>>> = Arc::default();
    // Server -> client: stops forwarding once the connection is cut, but
    // keeps reading, so that the server can finish and commit undisturbed.
    {
        let (mut from, mut to, cut) = (server.try_clone().unwrap(), client.try_clone().unwrap(), cut.clone());
        let waiting = waiting.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut w = waiting.lock().unwrap();
                        if w.as_ref().is_some_and(|(holding, _)| contains(&buf[..n], holding)) {
                            let (_, action) = w.take().unwrap();
                            action();
                        }
                        drop(w);
                        if !cut.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    // Client -> server.
    let (mut from, mut to) = (client, server);
    let mut buf = vec![0u8; 64 * 1024];
    let mut lose_next = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if lose_next {
            // The execution goes through: lose the answer.
            let _ = to.write_all(chunk);
            cut.store(true, Ordering::SeqCst);
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        // Armed before the statement goes: its answer may come at once.
        let mut armed = shared.armed.lock().unwrap();
        if armed.as_ref().is_some_and(|(m, _)| contains(chunk, m)) {
            match armed.take().unwrap().1 {
                Fault::LoseReply => lose_next = true,
                Fault::DownAfter { delay, length } => {
                    let s = shared.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        go_down(&s, length);
                    });
                }
                Fault::OnReply { holding, action } => *waiting.lock().unwrap() = Some((holding, action)),
            }
        }
        drop(armed);
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
