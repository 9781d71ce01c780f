//! A userspace delay line (the kernel here has no `sch_netem`): two interfaces in a namespace
//! of their own, and one thread per direction that reads every Ethernet frame from one side
//! with an AF_PACKET socket, holds it for the delay, and writes it to the other side. ARP
//! frames pass at once (see [`is_arp`]).
//!
//! The threads stop when the [`DelayLine`] is dropped.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Netns;

pub struct DelayLine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayLine {
    /// Forwards between interfaces `a` and `b` of `ns`, delaying each frame by `delay`.
    pub fn start(ns: &Netns, a: &str, b: &str, delay: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (from, to) in [(a, b), (b, a)] {
            let label = format!("{from} → {to}");
            let (from, to, stop) = (from.to_owned(), to.to_owned(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(ns.spawn(move || {
                let sockets = PacketSocket::open(&from).and_then(|rx| Ok((rx, PacketSocket::open(&to)?)));
                match sockets {
                    Ok((rx, tx)) => {
                        let _ = ready_tx.send(Ok(()));
                        forward(&rx, &tx, delay, &stop);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            })?);
            ready_rx
                .recv()?
                .map_err(|e| anyhow::anyhow!("delay line {label}: {e}"))?;
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn forward(rx: &PacketSocket, tx: &PacketSocket, delay: Duration, stop: &AtomicBool) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        // Wait at most until the next frame is due (and never more than 5 ms, to see `stop`).
        let wait = queue.front().map_or(Duration::from_millis(5), |(due, _)| {
            due.saturating_duration_since(Instant::now())
        });
        if rx.poll_readable(wait.min(Duration::from_millis(5))) {
            while let Some(n) = rx.recv_incoming(&mut buf) {
                if is_arp(&buf[..n]) {
                    tx.send(&buf[..n]);
                } else {
                    queue.push_back((Instant::now() + delay, buf[..n].to_vec()));
                }
            }
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, frame)) = queue.pop_front() {
                tx.send(&frame);
            }
        }
    }
}

/// ARP passes undelayed: it only exists because the lab's "internet" is one Ethernet segment,
/// and real WAN paths have no neighbour resolution between the two ends. Delaying it would add
/// two extra one-way delays to the first packet towards every new host.
fn is_arp(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&ETH_P_ARP.to_be_bytes()[..])
}

/// A raw AF_PACKET socket bound to one interface.
struct PacketSocket {
    fd: i32,
    ifindex: i32,
}

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_ARP: u16 = 0x0806;

impl PacketSocket {
    fn open(ifname: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(ifname).map_err(|_| io::Error::other("bad interface name"))?;
        // SAFETY: plain libc calls with valid arguments; the fd is owned by the returned value.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(ETH_P_ALL.to_be()),
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let sock = Self { fd, ifindex };
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = ifindex;
            let rc = libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(sock)
        }
    }

    fn poll_readable(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        n > 0
    }

    /// The next frame that arrived on the interface (frames we sent ourselves are skipped).
    fn recv_incoming(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            // SAFETY: buf and addr are valid for the lengths given.
            unsafe {
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut addr as *mut _ as *mut libc::sockaddr,
                    &mut len,
                );
                if n <= 0 {
                    return None;
                }
                if addr.sll_pkttype != libc::PACKET_OUTGOING {
                    return Some(n as usize);
                }
            }
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: addr is a valid sockaddr_ll for our interface; frame is a valid buffer.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = self.ifindex;
            libc::sendto(
                self.fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
        }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}
