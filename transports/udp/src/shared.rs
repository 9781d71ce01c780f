//! One UDP port for several overlays of one process: a [`SharedSocket`] owns the main socket
//! (and its IPv6 twin), a dispatcher task reads it and hands each datagram to the overlay it
//! belongs to; every overlay's [`UdpMux`](crate::UdpMux) joins it under its 8-byte path id
//! and sends on the shared socket directly.
//!
//! Which overlay a datagram belongs to, without any protocol state:
//! 1. a ringlet frame names it: bytes 2..10 are the path id;
//! 2. a STUN response answers a request one overlay sent: the dispatcher remembers the
//!    transaction ids of requests leaving through the shared socket (the last 4,096);
//! 3. a STUN connectivity check names our ufrag first in its USERNAME (`ours:theirs`); the
//!    dispatcher remembers the ufrags our own checks carried (`theirs:ours`). A check for a
//!    ufrag not seen yet (it raced ours) goes to every overlay, and the one that owns the
//!    ufrag answers it;
//! 4. anything else is dropped and counted as unclaimed.
//!
//! Each overlay's queue holds 256 batches; a full queue drops the batch and counts it, as a
//! full socket buffer would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::mux::{drain_slot, enlarge_buffers, open, open_v6, recv_buffers, Slot};
use crate::{classify, PacketKind, Received, MAIN_SOCKET};

/// An overlay's key on the shared socket: its path id (bytes 2..10 of every frame).
pub type PathKey = [u8; 8];

/// Batches waiting for one overlay.
const QUEUE_BATCHES: usize = 256;
/// Transaction ids and ufrags remembered.
const REMEMBERED: usize = 4096;

/// What the dispatcher did with the datagrams it read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    pub datagrams_in: u64,
    /// Datagrams no overlay claims (unknown path id, stray STUN response, garbage).
    pub unclaimed: u64,
    /// STUN checks for a ufrag not seen yet, handed to every overlay.
    pub fanned_out: u64,
    /// Datagrams dropped because an overlay's queue was full.
    pub queue_full: u64,
    pub recv_errors: u64,
}

/// The main socket of a process running several overlays; cheap to clone.
#[derive(Clone)]
pub struct SharedSocket {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSocket")
            .field("local_addr", &self.local_addr().ok())
            .field("members", &self.members())
            .finish()
    }
}

struct Inner {
    sockets: Arc<Sockets>,
    table: Arc<Mutex<Table>>,
    dispatcher: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

pub(crate) struct Sockets {
    pub(crate) v4: Slot,
    pub(crate) v6: Option<Slot>,
}

#[derive(Default)]
struct Table {
    members: BTreeMap<PathKey, mpsc::Sender<Vec<Received>>>,
    requests: Recent<[u8; 12]>,
    ufrags: Recent<String>,
    stats: SharedStats,
}

/// Where a received datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    To(PathKey),
    Everyone,
    Nobody,
}

impl SharedSocket {
    /// Binds the main socket at `addr`, and an IPv6 twin on the same port when `ipv6` (a
    /// twin that cannot be bound is left out); must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr, ipv6: bool) -> io::Result<Self> {
        let v4 = open(addr)?;
        enlarge_buffers(&v4);
        let port = v4.socket.local_addr()?.port();
        let v6 = ipv6.then(|| open_v6(port).ok()).flatten();
        if let Some(v6) = &v6 {
            enlarge_buffers(v6);
        }
        let sockets = Arc::new(Sockets { v4, v6 });
        let table = Arc::new(Mutex::new(Table::default()));
        let dispatcher = tokio::spawn(dispatch(sockets.clone(), table.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                sockets,
                table,
                dispatcher,
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sockets.v4.socket.local_addr()
    }

    pub fn local_addr_v6(&self) -> Option<SocketAddr> {
        self.inner.sockets.v6.as_ref()?.socket.local_addr().ok()
    }

    pub fn stats(&self) -> SharedStats {
        lock(&self.inner.table).stats
    }

    /// How many overlays use the socket now.
    pub fn members(&self) -> usize {
        lock(&self.inner.table).members.len()
    }

    /// Registers the overlay `key`; refused if one with that key is already on the socket.
    pub(crate) fn join(&self, key: PathKey) -> io::Result<Member> {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let mut table = lock(&self.inner.table);
        if table.members.contains_key(&key) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "this overlay already uses the shared socket",
            ));
        }
        table.members.insert(key, tx);
        Ok(Member {
            shared: self.clone(),
            key,
            rx,
        })
    }
}

/// One overlay's membership, held by its [`UdpMux`](crate::UdpMux); leaving is dropping it.
pub(crate) struct Member {
    shared: SharedSocket,
    key: PathKey,
    rx: mpsc::Receiver<Vec<Received>>,
}

impl Member {
    pub(crate) fn sockets(&self) -> &Sockets {
        &self.shared.inner.sockets
    }

    pub(crate) fn shared(&self) -> &SharedSocket {
        &self.shared
    }

    /// Remembers what a STUN request leaving through the shared socket tells about replies.
    pub(crate) fn learn(&self, datagram: &[u8]) {
        if classify(datagram) != PacketKind::Stun || stun_class(datagram) != StunClass::Request {
            return;
        }
        let mut table = lock(&self.shared.inner.table);
        table.requests.insert(transaction_id(datagram), self.key);
        if let Some((_, ours)) = username(datagram).and_then(|u| u.split_once(':')) {
            table.ufrags.insert(ours.to_owned(), self.key);
        }
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Vec<Received>>> {
        self.rx
            .poll_recv(cx)
            .map(|batch| batch.ok_or_else(|| io::Error::other("the shared socket's dispatcher has stopped")))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        lock(&self.shared.inner.table).members.remove(&self.key);
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // A panic while holding the lock leaves plain maps behind, still usable.
    table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the shared sockets until the last [`SharedSocket`] is dropped (which aborts it).
async fn dispatch(sockets: Arc<Sockets>, table: Arc<Mutex<Table>>) {
    let mut bufs = recv_buffers();
    let mut v6_first = false;
    loop {
        let ready = std::future::poll_fn(|cx| poll_ready(&sockets, v6_first, cx)).await;
        v6_first = !ready_is_v6(&sockets, ready);
        let batch = match drain_slot(ready, &mut bufs, MAIN_SOCKET) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::debug!(error = %e, "shared socket receive error");
                lock(&table).stats.recv_errors += 1;
                continue;
            }
        };
        deliver(&mut lock(&table), batch);
    }
}

fn ready_is_v6(sockets: &Sockets, slot: &Slot) -> bool {
    sockets.v6.as_ref().is_some_and(|v6| std::ptr::eq(v6, slot))
}

/// A readable socket, alternating between the two so that neither starves the other.
fn poll_ready<'a>(sockets: &'a Sockets, v6_first: bool, cx: &mut Context<'_>) -> Poll<&'a Slot> {
    let mut order = [Some(&sockets.v4), sockets.v6.as_ref()];
    if v6_first {
        order.reverse();
    }
    for slot in order.into_iter().flatten() {
        // A readiness error surfaces again in the read, which counts it.
        if slot.socket.poll_recv_ready(cx).is_ready() {
            return Poll::Ready(slot);
        }
    }
    Poll::Pending
}

/// Hands a batch to the overlays it belongs to, one queue entry per overlay.
fn deliver(table: &mut Table, batch: Vec<Received>) {
    let mut per_member: BTreeMap<PathKey, Vec<Received>> = BTreeMap::new();
    for r in batch {
        table.stats.datagrams_in += 1;
        match table.route(&r.data) {
            Route::To(key) => per_member.entry(key).or_default().push(r),
            Route::Everyone => {
                table.stats.fanned_out += 1;
                for key in table.members.keys() {
                    per_member.entry(*key).or_default().push(r.clone());
                }
            }
            Route::Nobody => table.stats.unclaimed += 1,
        }
    }
    for (key, datagrams) in per_member {
        let n = datagrams.len() as u64;
        let sent = table.members.get(&key).map(|tx| tx.try_send(datagrams));
        match sent {
            Some(Ok(())) => {}
            Some(Err(mpsc::error::TrySendError::Full(_))) => table.stats.queue_full += n,
            // The overlay is leaving: its datagrams have nobody to go to.
            _ => table.stats.unclaimed += n,
        }
    }
}

impl Table {
    fn route(&self, datagram: &[u8]) -> Route {
        let known = |key: Option<&PathKey>| match key {
            Some(k) if self.members.contains_key(k) => Route::To(*k),
            _ => Route::Nobody,
        };
        match classify(datagram) {
            PacketKind::Frame if datagram.len() >= 10 => {
                let mut key = [0u8; 8];
                key.copy_from_slice(&datagram[2..10]);
                known(Some(&key))
            }
            PacketKind::Stun => match stun_class(datagram) {
                StunClass::Request => {
                    let ours = username(datagram).and_then(|u| u.split_once(':')).map(|(o, _)| o);
                    match ours.and_then(|o| self.ufrags.get(o)) {
                        Some(key) => known(Some(key)),
                        None if ours.is_some() => Route::Everyone,
                        None => Route::Nobody,
                    }
                }
                StunClass::Indication => Route::Everyone,
                StunClass::Response => known(self.requests.get(&transaction_id(datagram))),
            },
            _ => Route::Nobody,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StunClass {
    Request,
    Indication,
    Response,
}

/// The class bits of a STUN message type (RFC 5389 §6): C1 is bit 8, C0 bit 4.
fn stun_class(datagram: &[u8]) -> StunClass {
    let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
    match ((kind >> 7) & 0b10) | ((kind >> 4) & 0b01) {
        0 => StunClass::Request,
        1 => StunClass::Indication,
        _ => StunClass::Response,
    }
}

/// Bytes 8..20 of a STUN message (callers have classified it, so it has 20 bytes).
fn transaction_id(datagram: &[u8]) -> [u8; 12] {
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&datagram[8..20]);
    tid
}

/// The USERNAME attribute (type 0x0006), if present and UTF-8.
fn username(datagram: &[u8]) -> Option<&str> {
    let mut rest = datagram.get(20..)?;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == 0x0006 {
            return std::str::from_utf8(value).ok();
        }
        rest = rest.get(4 + len.next_multiple_of(4)..)?;
    }
    None
}

/// A bounded map that forgets its oldest entries first.
struct Recent<K> {
    map: HashMap<K, PathKey>,
    order: VecDeque<K>,
}

impl<K> Default for Recent<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Recent<K> {
    fn insert(&mut self, k: K, v: PathKey) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn get<Q>(&self, k: &Q) -> Option<&PathKey>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
