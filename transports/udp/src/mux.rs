//! The sockets: the main one (IPv4, plus an IPv6 twin where the host has IPv6, chosen by the
//! destination's family and reported as [`MAIN_SOCKET`] too) and temporary extras.
//!
//! Receiving drains up to `quinn_udp::BATCH_SIZE` datagrams per system call (recvmmsg) from
//! whichever socket is readable. Sending never blocks: a full socket buffer drops the datagram
//! and counts it, as a congested link would. [`UdpMux::send_batch`] sends a run of equal-sized
//! datagrams to one destination in one system call where the kernel offers UDP segmentation
//! offload (GSO); elsewhere, and for mixed batches, it is one call per datagram.

use std::collections::BTreeMap;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::ops::Bound::{Excluded, Unbounded};
use std::task::{Context, Poll};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::shared::{Member, PathKey, SharedSocket};

/// Identifies one socket of the mux.
pub type SocketId = u16;

/// The socket every node binds first; STUN and established links use it.
pub const MAIN_SOCKET: SocketId = 0;

/// Internal id of the main socket's IPv6 twin.
const MAIN_SOCKET_V6: SocketId = SocketId::MAX;

/// Most temporary sockets open at once.
pub const MAX_EXTRA_SOCKETS: usize = 256;

const BUF_SIZE: usize = 65_536;

/// Most payload bytes in one segmented send (the kernel's limit is one IP datagram).
const MAX_GSO_BYTES: usize = 60_000;

/// One datagram for [`UdpMux::send_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub data: &'a [u8],
}

/// What [`UdpMux::poll_readable`] found.
enum Ready {
    /// A socket of this mux is readable.
    Socket(SocketId),
    /// The shared socket's dispatcher handed over a batch.
    Shared(Vec<Received>),
}

/// One received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub socket: SocketId,
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

pub(crate) struct Slot {
    pub(crate) socket: UdpSocket,
    pub(crate) state: UdpSocketState,
}

pub struct UdpMux {
    slots: BTreeMap<SocketId, Slot>,
    next_id: SocketId,
    bufs: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    last_drained: SocketId,
    /// Datagrams dropped because a socket buffer was full or the send failed.
    pub send_errors: u64,
    /// Send system calls made, and datagrams they carried (their ratio is the batching gain).
    pub send_calls: u64,
    pub datagrams_sent: u64,
    /// The overlay's place on a [`SharedSocket`]: then the main socket and its twin are the
    /// shared ones, and `slots` holds only extras.
    shared: Option<Member>,
}

/// Kernel buffer asked for on main sockets, each way. The default (~208 KiB) overflowed
/// under a VPN transfer: the receive side dropped datagrams between two loop turns.
const MAIN_BUFFER_BYTES: usize = 4 << 20;

/// Gives a main socket bigger kernel buffers: past `net.core.rmem_max` where the process may
/// (CAP_NET_ADMIN, as the VPN needs anyway), else as far as that limit lets it.
pub(crate) fn enlarge_buffers(slot: &Slot) {
    use std::os::fd::AsRawFd;
    let fd = slot.socket.as_raw_fd();
    let bytes = MAIN_BUFFER_BYTES as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, force, bytes).is_err() {
            if let Err(e) = setsockopt_int(fd, plain, bytes) {
                tracing::debug!(error = %e, "UDP socket buffer left at its default");
            }
        }
    }
}

fn setsockopt_int(fd: std::os::fd::RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An IPv6-only socket, so that it can share the port number with the IPv4 main socket.
pub(crate) fn open_v6(port: u16) -> io::Result<Slot> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.set_only_v6(true)?;
    sock.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    let std_sock: StdUdpSocket = sock.into();
    std_sock.set_nonblocking(true)?;
    let state = UdpSocketState::new(UdpSockRef::from(&std_sock))?;
    Ok(Slot {
        socket: UdpSocket::from_std(std_sock)?,
        state,
    })
}

pub(crate) fn open(addr: SocketAddr) -> io::Result<Slot> {
    let std_sock = StdUdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    let state = UdpSocketState::new(UdpSockRef::from(&std_sock))?;
    Ok(Slot {
        socket: UdpSocket::from_std(std_sock)?,
        state,
    })
}

impl UdpMux {
    /// Binds the main socket (must be called inside a tokio runtime).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let mut slots = BTreeMap::new();
        let main = open(addr)?;
        enlarge_buffers(&main);
        slots.insert(MAIN_SOCKET, main);
        Ok(Self::with(slots, None))
    }

    /// Uses `shared` as the main socket, for the overlay whose frames carry path id `key`;
    /// refused when that overlay is already on it.
    pub fn join(shared: &SharedSocket, key: PathKey) -> io::Result<Self> {
        Ok(Self::with(BTreeMap::new(), Some(shared.join(key)?)))
    }

    fn with(slots: BTreeMap<SocketId, Slot>, shared: Option<Member>) -> Self {
        Self {
            slots,
            next_id: 1,
            bufs: recv_buffers(),
            scratch: Vec::new(),
            last_drained: MAIN_SOCKET,
            send_errors: 0,
            send_calls: 0,
            datagrams_sent: 0,
            shared,
        }
    }

    /// The shared socket this mux joined, if any.
    pub fn shared(&self) -> Option<&SharedSocket> {
        self.shared.as_ref().map(Member::shared)
    }

    /// The socket behind `id`: the shared ones for the main socket and its twin if joined.
    fn slot(&self, id: SocketId) -> Option<&Slot> {
        match (&self.shared, id) {
            (Some(m), MAIN_SOCKET) => Some(&m.sockets().v4),
            (Some(m), MAIN_SOCKET_V6) => m.sockets().v6.as_ref(),
            _ => self.slots.get(&id),
        }
    }

    pub fn local_addr(&self, id: SocketId) -> Option<SocketAddr> {
        self.slot(id).and_then(|s| s.socket.local_addr().ok())
    }

    /// Binds the IPv6 twin of the main socket (the main socket's port if it is free there);
    /// on a shared socket, the twin it was bound with.
    pub fn add_ipv6(&mut self) -> io::Result<SocketAddr> {
        if let Some(m) = &self.shared {
            return m.shared().local_addr_v6().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "the shared socket has no IPv6 twin",
                )
            });
        }
        let port = self.local_addr(MAIN_SOCKET).map_or(0, |a| a.port());
        let slot = open_v6(port).or_else(|_| open_v6(0))?;
        enlarge_buffers(&slot);
        let addr = slot.socket.local_addr()?;
        self.slots.insert(MAIN_SOCKET_V6, slot);
        Ok(addr)
    }

    /// Opens up to `count` extra sockets on `ip` (ephemeral ports); returns their ids.
    pub fn open_extra(&mut self, ip: std::net::IpAddr, count: usize) -> Vec<SocketId> {
        let room = MAX_EXTRA_SOCKETS.saturating_sub(self.extra_count());
        let mut ids = Vec::new();
        for _ in 0..count.min(room) {
            let Ok(slot) = open(SocketAddr::new(ip, 0)) else {
                break;
            };
            while self.slots.contains_key(&self.next_id)
                || self.next_id == MAIN_SOCKET
                || self.next_id == MAIN_SOCKET_V6
            {
                self.next_id = self.next_id.wrapping_add(1);
            }
            self.slots.insert(self.next_id, slot);
            ids.push(self.next_id);
            self.next_id = self.next_id.wrapping_add(1);
        }
        ids
    }

    /// Closes an extra socket (the main socket stays).
    pub fn close(&mut self, id: SocketId) {
        if id != MAIN_SOCKET && id != MAIN_SOCKET_V6 {
            self.slots.remove(&id);
        }
    }

    pub fn extra_count(&self) -> usize {
        self.slots
            .keys()
            .filter(|id| **id != MAIN_SOCKET && **id != MAIN_SOCKET_V6)
            .count()
    }

    /// Sends one datagram without waiting; returns false if it was dropped.
    pub fn send(&mut self, id: SocketId, to: SocketAddr, data: &[u8]) -> bool {
        let sent = self.try_send(id, to, data, None);
        if sent {
            self.datagrams_sent += 1;
        } else {
            self.send_errors += 1;
        }
        sent
    }

    /// Sends datagrams in order without waiting; returns how many were dropped. A run of
    /// datagrams from one socket to one destination, all of one size but the last, which may
    /// be shorter, leaves in a single segmented send where the kernel offers it.
    pub fn send_batch(&mut self, batch: &[Outgoing<'_>]) -> usize {
        let mut dropped = 0;
        let mut rest = batch;
        while !rest.is_empty() {
            let run = self.gso_run(rest);
            if run > 1 && self.send_segmented(&rest[..run]) {
                self.datagrams_sent += run as u64;
            } else {
                // One by one: no run, or the kernel refused the segmented send.
                for o in &rest[..run.max(1)] {
                    if !self.send(o.socket, o.to, o.data) {
                        dropped += 1;
                    }
                }
            }
            rest = &rest[run.max(1)..];
        }
        dropped
    }

    /// Sends `data` as datagrams of `size` bytes each (the last may be shorter) from one
    /// socket to one destination: segmented sends straight from `data` where the kernel
    /// offers them, else one by one. Returns how many were dropped.
    pub fn send_segments(&mut self, socket: SocketId, to: SocketAddr, data: &[u8], size: usize) -> usize {
        let size = size.max(1);
        let max_segments = self
            .slot(self.route(socket, to))
            .map_or(1, |s| s.state.max_gso_segments());
        let per_send = (MAX_GSO_BYTES / size).min(max_segments).max(1);
        let mut dropped = 0;
        for run in data.chunks(per_send * size) {
            let count = run.len().div_ceil(size);
            if count > 1 && self.try_send(socket, to, run, Some(size)) {
                self.datagrams_sent += count as u64;
                continue;
            }
            for datagram in run.chunks(size) {
                if !self.send(socket, to, datagram) {
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// How many datagrams at the head of `batch` can leave as one segmented send.
    fn gso_run(&self, batch: &[Outgoing<'_>]) -> usize {
        let first = batch[0];
        let max_segments = self
            .slot(self.route(first.socket, first.to))
            .map_or(1, |s| s.state.max_gso_segments());
        let size = first.data.len();
        if max_segments < 2 || size == 0 {
            return 1;
        }
        let mut n = 1;
        let mut bytes = size;
        for o in &batch[1..] {
            let same_flow = o.socket == first.socket && o.to == first.to;
            if !same_flow || o.data.len() > size || n == max_segments || bytes + o.data.len() > MAX_GSO_BYTES
            {
                break;
            }
            n += 1;
            bytes += o.data.len();
            if o.data.len() < size {
                break; // only the last segment may be short
            }
        }
        n
    }

    fn send_segmented(&mut self, run: &[Outgoing<'_>]) -> bool {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        for o in run {
            buf.extend_from_slice(o.data);
        }
        let sent = self.try_send(run[0].socket, run[0].to, &buf, Some(run[0].data.len()));
        self.scratch = buf;
        sent
    }

    /// The slot a send from `id` to `to` uses: IPv6 destinations leave through the main
    /// socket's IPv6 twin.
    fn route(&self, id: SocketId, to: SocketAddr) -> SocketId {
        if id == MAIN_SOCKET && to.is_ipv6() {
            MAIN_SOCKET_V6
        } else {
            id
        }
    }

    fn try_send(
        &mut self,
        id: SocketId,
        to: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> bool {
        let route = self.route(id, to);
        if let (Some(m), MAIN_SOCKET | MAIN_SOCKET_V6) = (&self.shared, route) {
            let segment = segment_size.unwrap_or(contents.len()).max(1);
            contents.chunks(segment).for_each(|d| m.learn(d));
        }
        self.send_calls += 1;
        let Some(slot) = self.slot(route) else {
            return false;
        };
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        // The socket is non-blocking and nothing ever waits for writability, so the send is
        // attempted directly rather than through tokio's readiness cache.
        slot.state
            .try_send(UdpSockRef::from(&slot.socket), &transmit)
            .is_ok()
    }

    /// Waits until some socket has datagrams and returns a batch of them.
    pub async fn recv(&mut self) -> io::Result<Vec<Received>> {
        loop {
            let batch = match std::future::poll_fn(|cx| self.poll_readable(cx)).await? {
                Ready::Socket(id) => {
                    self.last_drained = id;
                    self.drain(id)?
                }
                Ready::Shared(batch) => {
                    self.last_drained = MAIN_SOCKET;
                    batch
                }
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// The first readable socket, looking from the one after the socket drained last, so
    /// that a busy socket cannot starve the others. A joined mux's main socket is its queue
    /// on the shared socket, looked at first unless it was drained last.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        let shared_first = self.last_drained != MAIN_SOCKET;
        if shared_first {
            if let Some(ready) = self.poll_shared(cx) {
                return ready;
            }
        }
        let after = self.slots.range((Excluded(self.last_drained), Unbounded));
        let before = self.slots.range(..=self.last_drained);
        for (id, slot) in after.chain(before) {
            match slot.socket.poll_recv_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Ready::Socket(*id))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        match self.poll_shared(cx) {
            Some(ready) if !shared_first => ready,
            _ => Poll::Pending,
        }
    }

    /// A batch from the shared socket's dispatcher (`None`: not joined, or nothing yet).
    fn poll_shared(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Ready>>> {
        match self.shared.as_mut()?.poll_recv(cx) {
            Poll::Ready(batch) => Some(Poll::Ready(batch.map(Ready::Shared))),
            Poll::Pending => None,
        }
    }

    fn drain(&mut self, id: SocketId) -> io::Result<Vec<Received>> {
        let Some(slot) = self.slots.get(&id) else {
            return Ok(Vec::new());
        };
        let reported = if id == MAIN_SOCKET_V6 { MAIN_SOCKET } else { id };
        drain_slot(slot, &mut self.bufs, reported)
    }
}

/// Buffers for one [`drain_slot`] call.
pub(crate) fn recv_buffers() -> Vec<Vec<u8>> {
    vec![vec![0u8; BUF_SIZE]; BATCH_SIZE]
}

/// Reads what one system call returns from `slot` (nothing if it would block), splitting
/// coalesced (GRO) datagrams; each is reported as coming through socket `reported`.
pub(crate) fn drain_slot(slot: &Slot, bufs: &mut [Vec<u8>], reported: SocketId) -> io::Result<Vec<Received>> {
    let mut meta = [RecvMeta::default(); BATCH_SIZE];
    let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
    let result = slot.socket.try_io(Interest::READABLE, || {
        slot.state
            .recv(UdpSockRef::from(&slot.socket), &mut slices, &mut meta)
    });
    let n = match result {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Vec::new()),
        // ICMP errors (port unreachable) surface here on Linux; they concern one peer only.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
        let stride = if m.stride == 0 { m.len } else { m.stride };
        for chunk in buf[..m.len].chunks(stride.max(1)) {
            out.push(Received {
                socket: reported,
                from: normalise(m.addr),
                data: chunk.to_vec(),
            });
        }
    }
    Ok(out)
}

/// IPv4-mapped IPv6 source addresses are reported as plain IPv4.
fn normalise(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One `recv`, failing the test instead of hanging if nothing comes.
    async fn recv(mux: &mut UdpMux) -> Vec<Received> {
        tokio::time::timeout(Duration::from_secs(5), mux.recv())
            .await
            .expect("no datagram within 5 s")
            .unwrap()
    }

    #[tokio::test]
    async fn a_busy_socket_does_not_starve_the_others() {
        let mut a = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let extra = b.open_extra("127.0.0.1".parse().unwrap(), 1)[0];
        for i in 0..150u8 {
            assert!(a.send(MAIN_SOCKET, b.local_addr(MAIN_SOCKET).unwrap(), &[i; 10]));
        }
        assert!(a.send(MAIN_SOCKET, b.local_addr(extra).unwrap(), b"extra"));
        let first = recv(&mut b).await;
        assert!(first.len() < 150, "one batch does not drain the busy socket");
        let second = recv(&mut b).await;
        assert!(
            first.iter().chain(&second).any(|r| r.socket == extra),
            "the extra socket's datagram waited behind the main socket's backlog"
        );
    }

    #[tokio::test]
    async fn sends_and_receives_batches_on_main_and_extra_sockets() {
        let mut a = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b_addr = b.local_addr(MAIN_SOCKET).unwrap();
        for i in 0..40u8 {
            assert!(a.send(MAIN_SOCKET, b_addr, &[i; 100]));
        }
        let mut got = Vec::new();
        while got.len() < 40 {
            got.extend(recv(&mut b).await);
        }
        assert_eq!(got.len(), 40);
        assert!(got
            .iter()
            .all(|r| r.socket == MAIN_SOCKET && r.from == a.local_addr(MAIN_SOCKET).unwrap()));
        let v6 = b.add_ipv6().unwrap();
        assert_eq!(v6.port(), b_addr.port(), "the twin shares the port");
        let mut a6 = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        a6.add_ipv6().unwrap();
        assert!(a6.send(
            MAIN_SOCKET,
            SocketAddr::new("::1".parse().unwrap(), v6.port()),
            b"over v6"
        ));
        let r = recv(&mut b).await;
        assert_eq!(
            (r[0].socket, r[0].data.as_slice()),
            (MAIN_SOCKET, &b"over v6"[..])
        );
        assert!(r[0].from.is_ipv6());
        let extra = b.open_extra("127.0.0.1".parse().unwrap(), 3);
        assert_eq!(extra.len(), 3);
        let target = b.local_addr(extra[1]).unwrap();
        assert!(a.send(MAIN_SOCKET, target, b"to extra"));
        let r = recv(&mut b).await;
        assert_eq!((r[0].socket, r[0].data.as_slice()), (extra[1], &b"to extra"[..]));
        b.close(extra[1]);
        assert_eq!(b.extra_count(), 2);
    }

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order_and_equal_runs_share_system_calls() {
        let mut a = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut c = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (to_b, to_c) = (
            b.local_addr(MAIN_SOCKET).unwrap(),
            c.local_addr(MAIN_SOCKET).unwrap(),
        );
        // 30 full-sized datagrams and a short one to b, then one to c, then 5 more to b.
        let payloads: Vec<Vec<u8>> = (0..37u8)
            .map(|i| vec![i; if i == 30 { 17 } else { 1200 }])
            .collect();
        let batch: Vec<Outgoing<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Outgoing {
                socket: MAIN_SOCKET,
                to: if i == 31 { to_c } else { to_b },
                data: p,
            })
            .collect();
        assert_eq!(a.send_batch(&batch), 0);
        assert_eq!(a.datagrams_sent, 37);
        let mut got = Vec::new();
        while got.len() < 36 {
            got.extend(recv(&mut b).await);
        }
        let want: Vec<&Vec<u8>> = payloads
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 31)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(got.iter().map(|r| &r.data).collect::<Vec<_>>(), want);
        assert_eq!(recv(&mut c).await[0].data, payloads[31]);
        let gso = a.slots[&MAIN_SOCKET].state.max_gso_segments();
        eprintln!(
            "GSO: {gso} segments per call; {} calls for 37 datagrams",
            a.send_calls
        );
        if gso > 1 {
            // Three runs: 0..=30 (the short one ends it), 31 alone, 32..=36.
            assert_eq!(a.send_calls, 3, "GSO offers {gso} segments per call");
        } else {
            assert_eq!(a.send_calls, 37);
        }
    }

    #[tokio::test]
    async fn segments_laid_end_to_end_arrive_as_their_datagrams_in_order() {
        let mut a = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to_b = b.local_addr(MAIN_SOCKET).unwrap();
        // 70 datagrams of 1,300 bytes and a short one: more than one segmented send holds.
        let datagrams: Vec<Vec<u8>> = (0..71u8)
            .map(|i| vec![i; if i == 70 { 100 } else { 1_300 }])
            .collect();
        let data = datagrams.concat();
        assert_eq!(a.send_segments(MAIN_SOCKET, to_b, &data, 1_300), 0);
        assert_eq!(a.datagrams_sent, 71);
        let mut got = Vec::new();
        while got.len() < 71 {
            got.extend(recv(&mut b).await.into_iter().map(|r| r.data));
        }
        assert_eq!(got, datagrams);
        let gso = a.slots[&MAIN_SOCKET].state.max_gso_segments();
        if gso > 1 {
            // 46 segments of 1,300 bytes fit under MAX_GSO_BYTES: two sends.
            assert_eq!(a.send_calls, 2, "GSO offers {gso} segments per call");
        }
    }
}
