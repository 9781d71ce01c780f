//! A man in the middle of one peer's XMPP connection, in the NAT lab's public host: a TCP proxy
//! to Prosody that rewrites what the server sends that peer (equal-length byte swaps, so the
//! stream stays well-formed). Bounded: it stops accepting and forwarding after `lifetime`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlet_lab::NatLab;

/// Starts the proxy on `listen` in the lab's public host; returns the count of swaps made.
pub fn start(
    lab: &NatLab,
    listen: SocketAddr,
    upstream: SocketAddr,
    swaps: Vec<(Vec<u8>, Vec<u8>)>,
    lifetime: Duration,
) -> Arc<AtomicU64> {
    assert!(swaps.iter().all(|(a, b)| a.len() == b.len() && !a.is_empty()));
    let made = Arc::new(AtomicU64::new(0));
    let count = made.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    lab.public()
        .spawn(move || {
            let until = Instant::now() + lifetime;
            let listener = TcpListener::bind(listen).expect("the proxy's port");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while Instant::now() < until {
                match listener.accept() {
                    Ok((client, _)) => {
                        let server = TcpStream::connect(upstream).expect("Prosody");
                        for s in [&client, &server] {
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                        }
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let swaps = swaps.clone();
                        let count = count.clone();
                        std::thread::spawn(move || pump(client, server, &[], &AtomicU64::new(0), until));
                        std::thread::spawn(move || pump(s2, c2, &swaps, &count, until));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                }
            }
        })
        .expect("a thread in the public host");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the proxy listens");
    made
}

/// Copies `from` to `to`, swapping as it goes, until either side closes or `until`.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    swaps: &[(Vec<u8>, Vec<u8>)],
    count: &AtomicU64,
    until: Instant,
) {
    let mut buf = vec![0u8; 65536];
    while Instant::now() < until {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let chunk = &mut buf[..n];
        for (a, b) in swaps {
            let mut i = 0;
            while i + a.len() <= chunk.len() {
                if &chunk[i..i + a.len()] == a.as_slice() {
                    chunk[i..i + a.len()].copy_from_slice(b);
                    count.fetch_add(1, Ordering::Relaxed);
                    i += a.len();
                } else {
                    i += 1;
                }
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}
