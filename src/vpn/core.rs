//! The VPN's forwarding core (sans-IO): which member an IP packet from the TUN device goes
//! to, which packets from members may enter the device, and address → NodeId resolution with
//! a cache and a bounded queue of packets waiting for it.
//!
//! Drive loop:
//! 1. `handle_tun` with each packet read from the device; `handle_overlay` with each VPN
//!    packet a member sent; `handle_resolved` with each DHT answer to a `Lookup`;
//!    `handle_member` when members come and go; `handle_timeout` at `poll_timeout`;
//! 2. drain `poll_output`: `Send` to one member, `Broadcast` to all, `Lookup` in the DHT,
//!    `Deliver` into the device.
//!
//! IPv4 addresses resolve through the DHT (cached for [`ROUTE_TTL`], refreshed while used);
//! IPv6 addresses carry the first 64 bits of the NodeId and resolve from the member list.
//! Broadcasts and multicasts go to every member, UDP only (discovery protocols), so the
//! kernel's own IGMP/MLD/router chatter stays on this host.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::address::{ipv6_address, Cidr4};
use super::packet::{Header, UDP};

pub type NodeIdBytes = [u8; 20];

/// How long a resolved address is used before it is looked up again.
pub const ROUTE_TTL: Duration = Duration::from_secs(120);
/// How long an address nobody claims is not looked up again (packets to it are dropped).
pub const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// How long packets wait for a lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Destinations waiting for a lookup at once, and packets held per destination.
pub const PENDING_MAX: usize = 64;
pub const HELD_PER_DESTINATION: usize = 16;
/// Resolved addresses kept.
pub const ROUTES_MAX: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send {
        to: NodeIdBytes,
        packet: Vec<u8>,
    },
    Broadcast(Vec<u8>),
    Lookup(Ipv4Addr),
    Deliver(Vec<u8>),
    /// A TCP super-packet to write whole, as segments of `gso_size` payload bytes.
    DeliverSuper {
        packet: Vec<u8>,
        gso_size: u16,
    },
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    pub from_tun: u64,
    pub to_tun: u64,
    pub sent: u64,
    /// TCP super-packets sent and delivered whole (each also counts once in `from_tun` and
    /// `sent`, or `to_tun`).
    pub whole_out: u64,
    pub whole_in: u64,
    pub broadcast: u64,
    pub lookups: u64,
    pub malformed: u64,
    /// Packets the VPN does not carry (outside the subnet, non-UDP multicast, link-local).
    pub not_carried: u64,
    /// Packets dropped because nobody holds their destination, or the lookup failed.
    pub unresolved: u64,
    /// Packets dropped because too many were waiting for lookups.
    pub held_dropped: u64,
    /// Packets from a member that were not addressed to us or carried a source it does not own.
    pub refused: u64,
}

struct Route {
    node: NodeIdBytes,
    expires: Instant,
    refreshing: bool,
}

struct Pending {
    since: Instant,
    packets: VecDeque<Vec<u8>>,
}

pub struct Vpn {
    me: Cidr4,
    prefix6: [u8; 8],
    me6: Ipv6Addr,
    routes: BTreeMap<Ipv4Addr, Route>,
    members6: BTreeMap<[u8; 8], NodeIdBytes>,
    pending: BTreeMap<Ipv4Addr, Pending>,
    unknown: BTreeMap<Ipv4Addr, Instant>,
    out: VecDeque<Output>,
    pub counters: Counters,
}

impl Vpn {
    pub fn new(me: Cidr4, prefix6: [u8; 8], node: &NodeIdBytes) -> Vpn {
        Vpn {
            me,
            prefix6,
            me6: ipv6_address(prefix6, node),
            routes: BTreeMap::new(),
            members6: BTreeMap::new(),
            pending: BTreeMap::new(),
            unknown: BTreeMap::new(),
            out: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn address(&self) -> Cidr4 {
        self.me
    }

    pub fn address6(&self) -> Ipv6Addr {
        self.me6
    }

    /// Our IPv4 address changed (the derived one was taken).
    pub fn set_address(&mut self, me: Cidr4) {
        self.me = me;
    }

    /// The IPv4 address `node` is known to hold, if any.
    pub fn address_of(&self, node: &NodeIdBytes) -> Option<Ipv4Addr> {
        self.routes
            .iter()
            .find(|(_, r)| &r.node == node)
            .map(|(ip, _)| *ip)
    }

    /// A packet read from the TUN device.
    pub fn handle_tun(&mut self, now: Instant, packet: Vec<u8>) {
        self.counters.from_tun += 1;
        let Ok(h) = Header::parse(&packet) else {
            self.counters.malformed += 1;
            return;
        };
        match h.dst {
            IpAddr::V4(dst) if dst.is_broadcast() || dst == self.me.broadcast() || dst.is_multicast() => {
                self.broadcast(h, packet)
            }
            IpAddr::V4(dst) if self.me.contains(dst) && dst != self.me.addr => self.send_v4(now, dst, packet),
            IpAddr::V6(dst) if dst.is_multicast() => self.broadcast(h, packet),
            IpAddr::V6(dst) if dst.octets()[..8] == self.prefix6 => match self.member6(dst) {
                Some(to) => self.send(to, packet),
                None => self.counters.unresolved += 1,
            },
            _ => self.counters.not_carried += 1,
        }
    }

    fn broadcast(&mut self, h: Header, packet: Vec<u8>) {
        if h.protocol != UDP {
            self.counters.not_carried += 1;
            return;
        }
        self.counters.broadcast += 1;
        self.out.push_back(Output::Broadcast(packet));
    }

    fn send(&mut self, to: NodeIdBytes, packet: Vec<u8>) {
        self.counters.sent += 1;
        self.out.push_back(Output::Send { to, packet });
    }

    /// A TCP super-packet read from the device (`ringlet_tun::SuperPacket`): the member it
    /// goes to, counted as sent, when its route is known now and `carry` (asked with that
    /// member) took it whole. None: the caller cuts it into packets for [`Vpn::handle_tun`],
    /// which resolve, wait or are refused as any packet.
    pub fn route_super(
        &mut self,
        now: Instant,
        packet: &[u8],
        carry: impl FnOnce(&NodeIdBytes) -> bool,
    ) -> Option<NodeIdBytes> {
        let h = Header::parse(packet).ok()?;
        let to = match h.dst {
            IpAddr::V4(dst) if self.unicast_member(dst) => self.route_to(now, dst)?,
            IpAddr::V6(dst) if !dst.is_multicast() && dst.octets()[..8] == self.prefix6 => {
                self.member6(dst)?
            }
            _ => return None,
        };
        if !carry(&to) {
            return None;
        }
        self.counters.from_tun += 1;
        self.counters.sent += 1;
        self.counters.whole_out += 1;
        Some(to)
    }

    /// The online member whose IPv6 address (in our prefix) is `dst`.
    fn member6(&self, dst: Ipv6Addr) -> Option<NodeIdBytes> {
        let iid: [u8; 8] = dst.octets()[8..].try_into().expect("16 - 8 bytes");
        self.members6.get(&iid).copied()
    }

    /// Whether `dst` is another member's unicast address in our subnet.
    fn unicast_member(&self, dst: Ipv4Addr) -> bool {
        self.me.contains(dst) && dst != self.me.addr && dst != self.me.broadcast() && !dst.is_multicast()
    }

    /// The member holding `dst` by the route cache; a stale route is still used while it is
    /// looked up again.
    fn route_to(&mut self, now: Instant, dst: Ipv4Addr) -> Option<NodeIdBytes> {
        let route = self.routes.get_mut(&dst)?;
        let to = route.node;
        if now >= route.expires && !route.refreshing {
            // Still used meanwhile: a stale route beats dropping traffic.
            route.refreshing = true;
            self.lookup(dst);
        }
        Some(to)
    }

    fn send_v4(&mut self, now: Instant, dst: Ipv4Addr, packet: Vec<u8>) {
        if let Some(to) = self.route_to(now, dst) {
            self.send(to, packet);
            return;
        }
        if self.unknown.get(&dst).is_some_and(|&until| now < until) {
            self.counters.unresolved += 1;
            return;
        }
        if let Some(p) = self.pending.get_mut(&dst) {
            if p.packets.len() >= HELD_PER_DESTINATION {
                self.counters.held_dropped += 1;
            } else {
                p.packets.push_back(packet);
            }
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.counters.held_dropped += 1;
            return;
        }
        self.pending.insert(
            dst,
            Pending {
                since: now,
                packets: VecDeque::from([packet]),
            },
        );
        self.lookup(dst);
    }

    fn lookup(&mut self, ip: Ipv4Addr) {
        self.counters.lookups += 1;
        self.out.push_back(Output::Lookup(ip));
    }

    /// The DHT's answer for `ip`: the member that holds it, or none.
    pub fn handle_resolved(&mut self, now: Instant, ip: Ipv4Addr, node: Option<NodeIdBytes>) {
        let held = self.pending.remove(&ip).map(|p| p.packets).unwrap_or_default();
        match node {
            Some(node) => {
                self.learn(now, ip, node);
                for packet in held {
                    self.send(node, packet);
                }
            }
            None => {
                self.routes.remove(&ip);
                self.counters.unresolved += held.len() as u64;
                self.unknown.insert(ip, now + UNKNOWN_TTL);
            }
        }
    }

    /// The DHT gave no answer for `ip` (the ring may be forming): held packets are dropped, a
    /// route in use is kept and asked for again a little later.
    pub fn handle_unanswered(&mut self, now: Instant, ip: Ipv4Addr) {
        let held = self.pending.remove(&ip).map_or(0, |p| p.packets.len());
        self.counters.unresolved += held as u64;
        if let Some(route) = self.routes.get_mut(&ip) {
            route.refreshing = false;
            route.expires = now + UNKNOWN_TTL;
        }
    }

    /// `node` holds `ip` (a lookup answered, or the member published it).
    pub fn learn(&mut self, now: Instant, ip: Ipv4Addr, node: NodeIdBytes) {
        if !self.me.contains(ip) || ip == self.me.addr {
            return;
        }
        if self.routes.len() >= ROUTES_MAX && !self.routes.contains_key(&ip) {
            return;
        }
        // One address per member: an older one it held is gone.
        self.routes.retain(|_, r| r.node != node);
        self.unknown.remove(&ip);
        let route = Route {
            node,
            expires: now + ROUTE_TTL,
            refreshing: false,
        };
        self.routes.insert(ip, route);
    }

    /// A member came online or left.
    pub fn handle_member(&mut self, node: NodeIdBytes, online: bool) {
        let iid: [u8; 8] = node[..8].try_into().expect("20 > 8 bytes");
        if online {
            self.members6.insert(iid, node);
        } else {
            self.members6.remove(&iid);
            self.routes.retain(|_, r| r.node != node);
        }
    }

    /// A VPN packet from member `from`: delivered when it is for us and its source is one
    /// `from` may use.
    pub fn handle_overlay(&mut self, from: NodeIdBytes, packet: Vec<u8>) {
        if self.admit(from, &packet) {
            self.out.push_back(Output::Deliver(packet));
        }
    }

    /// [`Vpn::handle_overlay`] of a TCP super-packet a member sent whole.
    pub fn handle_overlay_super(&mut self, from: NodeIdBytes, packet: Vec<u8>, gso_size: u16) {
        if self.admit(from, &packet) {
            self.counters.whole_in += 1;
            self.out.push_back(Output::DeliverSuper { packet, gso_size });
        }
    }

    /// Whether a packet from member `from` may enter the device (counted either way).
    fn admit(&mut self, from: NodeIdBytes, packet: &[u8]) -> bool {
        let Ok(h) = Header::parse(packet) else {
            self.counters.malformed += 1;
            return false;
        };
        let ok = match (h.src, h.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let for_us = dst == self.me.addr
                    || dst.is_broadcast()
                    || dst == self.me.broadcast()
                    || dst.is_multicast();
                let owner = self.routes.get(&src).map(|r| r.node);
                for_us && self.me.contains(src) && owner.is_none_or(|o| o == from)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                (dst == self.me6 || dst.is_multicast()) && src == ipv6_address(self.prefix6, &from)
            }
            _ => false,
        };
        if ok {
            self.counters.to_tun += 1;
        } else {
            self.counters.refused += 1;
        }
        ok
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<Ipv4Addr> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.since + LOOKUP_TIMEOUT)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in expired {
            self.handle_resolved(now, ip, None);
        }
        self.unknown.retain(|_, until| now < *until);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.since + LOOKUP_TIMEOUT).min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
