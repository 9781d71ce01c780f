//! A simulated network for the reach cores' unit tests: NAT boxes of every type and an
//! RFC 5780 STUN server, no sockets, no clock (callers pass virtual time).
#![allow(dead_code)] // each test uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::OtherAddress;
use stun_codec::{MessageClass, TransactionId};

use super::stun_msg::{self, StunMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Full,
    Restricted,
    PortRestricted,
    /// Endpoint-dependent mapping with random ports.
    Symmetric,
    /// Endpoint-dependent mapping with sequential ports.
    SymmetricSequential,
    UdpBlocked,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Open,
        Kind::Full,
        Kind::Restricted,
        Kind::PortRestricted,
        Kind::Symmetric,
        Kind::SymmetricSequential,
        Kind::UdpBlocked,
    ];
}

/// One NAT box with one public IP.
pub struct Nat {
    pub kind: Kind,
    pub public_ip: IpAddr,
    /// (private source, destination if endpoint-dependent) → public port.
    mappings: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port → private source.
    owners: BTreeMap<u16, SocketAddr>,
    /// public port → endpoints contacted through it.
    contacted: BTreeMap<u16, BTreeSet<SocketAddr>>,
    next_port: u16,
    rng: StdRng,
}

impl Nat {
    pub fn new(kind: Kind, public_ip: IpAddr, seed: u64) -> Self {
        Self {
            kind,
            public_ip,
            mappings: BTreeMap::new(),
            owners: BTreeMap::new(),
            contacted: BTreeMap::new(),
            next_port: 40_000,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Translates an outbound packet's source; `None` if the NAT drops it.
    pub fn outbound(&mut self, src: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        let key_dst = match self.kind {
            Kind::Open => return Some(src),
            Kind::UdpBlocked => return None,
            Kind::Symmetric | Kind::SymmetricSequential => Some(dst),
            _ => None,
        };
        let port = match self.mappings.get(&(src, key_dst)) {
            Some(p) => *p,
            None => {
                let port = self.allocate(src.port());
                self.mappings.insert((src, key_dst), port);
                self.owners.insert(port, src);
                port
            }
        };
        self.contacted.entry(port).or_default().insert(dst);
        Some(SocketAddr::new(self.public_ip, port))
    }

    fn allocate(&mut self, wanted: u16) -> u16 {
        let free = |p: u16, owners: &BTreeMap<u16, SocketAddr>| p >= 1024 && !owners.contains_key(&p);
        match self.kind {
            Kind::Symmetric => loop {
                let p = self.rng.random_range(1024..=65535);
                if free(p, &self.owners) {
                    return p;
                }
            },
            Kind::SymmetricSequential => loop {
                self.next_port = self.next_port.wrapping_add(1).max(1024);
                if free(self.next_port, &self.owners) {
                    return self.next_port;
                }
            },
            _ if free(wanted, &self.owners) => wanted,
            _ => loop {
                self.next_port = self.next_port.wrapping_add(1).max(1024);
                if free(self.next_port, &self.owners) {
                    return self.next_port;
                }
            },
        }
    }

    /// Translates an inbound packet to a public port; `None` if filtered or unmapped.
    pub fn inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        if self.kind == Kind::Open {
            return Some(to);
        }
        let owner = *self.owners.get(&to.port())?;
        let contacted = self.contacted.get(&to.port())?;
        let allowed = match self.kind {
            Kind::Full => true,
            Kind::Restricted => contacted.iter().any(|c| c.ip() == from.ip()),
            Kind::PortRestricted | Kind::Symmetric | Kind::SymmetricSequential => contacted.contains(&from),
            Kind::Open | Kind::UdpBlocked => false,
        };
        allowed.then_some(owner)
    }

    /// Forgets every mapping (a router reboot or `conntrack -F`).
    pub fn flush(&mut self) {
        self.mappings.clear();
        self.owners.clear();
        self.contacted.clear();
    }
}

/// An RFC 5780 STUN server on two IPs and two ports.
pub struct StunServer {
    pub primary: SocketAddr,
    pub alt: SocketAddr,
}

impl StunServer {
    pub fn new() -> Self {
        Self {
            primary: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)), 3478),
            alt: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3)), 3479),
        }
    }

    /// Whether a packet to `addr` reaches this server.
    pub fn listens_on(&self, addr: SocketAddr) -> bool {
        [self.primary.ip(), self.alt.ip()].contains(&addr.ip()) && [3478, 3479].contains(&addr.port())
    }

    /// Answers a binding request that arrived at `at` from `from`: (answer source, bytes).
    pub fn answer(&self, at: SocketAddr, from: SocketAddr, request: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let msg: StunMessage = stun_msg::decode(request).ok()?;
        if msg.class() != MessageClass::Request {
            return None;
        }
        let change = change_request_flags(request);
        let ip = if change.0 {
            other_ip(at.ip(), self)
        } else {
            at.ip()
        };
        let port = if change.1 {
            if at.port() == 3478 {
                3479
            } else {
                3478
            }
        } else {
            at.port()
        };
        let mut resp = StunMessage::new(
            MessageClass::SuccessResponse,
            BINDING,
            TransactionId::new(*msg.transaction_id().as_bytes()),
        );
        resp.add_attribute(XorMappedAddress::new(from));
        let other = SocketAddr::new(
            other_ip(at.ip(), self),
            if at.port() == 3478 { 3479 } else { 3478 },
        );
        resp.add_attribute(OtherAddress::new(other));
        Some((SocketAddr::new(ip, port), stun_msg::encode(resp)))
    }
}

fn other_ip(ip: IpAddr, s: &StunServer) -> IpAddr {
    if ip == s.primary.ip() {
        s.alt.ip()
    } else {
        s.primary.ip()
    }
}

/// CHANGE-REQUEST flags (change IP, change port) read from the raw request. stun_codec 0.4.0
/// encodes them per RFC 5780 (0x04, 0x02) but decodes 0x02 and 0x01, so its decoder is not used.
fn change_request_flags(request: &[u8]) -> (bool, bool) {
    let mut at = 20;
    while at + 4 <= request.len() {
        let kind = u16::from_be_bytes([request[at], request[at + 1]]);
        let len = usize::from(u16::from_be_bytes([request[at + 2], request[at + 3]]));
        if kind == 0x0003 && len == 4 && at + 8 <= request.len() {
            let flags = request[at + 7];
            return (flags & 0x04 != 0, flags & 0x02 != 0);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    (false, false)
}

/// Packets in flight on a simulated wire, delivered in time order (ties in sending order).
pub struct Wire<P> {
    in_flight: BTreeMap<(Instant, u64), P>,
    sent: u64,
}

/// What a simulation does next.
pub enum Step<P> {
    /// Deliver this packet, due now.
    Deliver(P),
    /// A timer is due now.
    Timer,
    /// Nothing happens before the end.
    End,
}

impl<P> Default for Wire<P> {
    fn default() -> Self {
        Self {
            in_flight: BTreeMap::new(),
            sent: 0,
        }
    }
}

impl<P> Wire<P> {
    pub fn send(&mut self, arrives: Instant, packet: P) {
        self.sent += 1;
        self.in_flight.insert((arrives, self.sent), packet);
    }

    /// Advances `now` to the earlier of the next delivery and `next_timer`, unless that lies
    /// beyond `end` (then `now` becomes `end`).
    pub fn step(&mut self, now: &mut Instant, end: Instant, next_timer: Option<Instant>) -> Step<P> {
        let next_delivery = self.in_flight.keys().next().map(|k| k.0);
        let Some(next) = [next_delivery, next_timer]
            .into_iter()
            .flatten()
            .min()
            .filter(|t| *t <= end)
        else {
            *now = end;
            return Step::End;
        };
        *now = next.max(*now);
        match self.in_flight.first_entry() {
            Some(e) if e.key().0 == next => Step::Deliver(e.remove()),
            _ => Step::Timer,
        }
    }
}
