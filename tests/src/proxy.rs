//! A TCP proxy in front of a cluster that can lose one reply: the test arms
//! it with a marker (text of an SQL statement), and the first connection
//! whose client sends that marker has its *next* message (the execution
//! that follows the prepare) delivered to the server, then the connection is
//! cut before the server's answer reaches the client. The server runs and
//! commits the statement; the client never learns it did. That is the
//! "connection dropped between the write and its reply" fault, made exact.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The marker armed, until a connection has been cut for it.
    marker: Mutex<Option<Vec<u8>>>,
    cuts: AtomicUsize,
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
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
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
        *self.shared.marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    /// How many replies were lost so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let cut = Arc::new(AtomicBool::new(false));
    // Server -> client: stops forwarding once the connection is cut, but
    // keeps reading, so that the server can finish and commit undisturbed.
    {
        let (mut from, mut to, cut) = (server.try_clone().unwrap(), client.try_clone().unwrap(), cut.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
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
    let mut saw_marker = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if to.write_all(chunk).is_err() {
            break;
        }
        if saw_marker {
            // The execution went through: lose the answer.
            cut.store(true, Ordering::SeqCst);
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        let mut marker = shared.marker.lock().unwrap();
        if marker.as_deref().is_some_and(|m| contains(chunk, m)) {
            *marker = None;
            saw_marker = true;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
