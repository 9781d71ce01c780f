//! The VPN in the daemon: the TUN device, the DHT records behind addressing, and the paths
//! packets take. `vpn::Vpn` decides; this module moves bytes:
//! - packets from the device go to a member as app datagrams on channel [`CHANNEL_VPN`] (over
//!   its direct path, sealed end to end through a ring tunnel, or over the XMPP relay while
//!   the link layer punches on demand), broadcasts over the whole ring;
//! - our IPv4 address is claimed in the DHT (`ringlet vpn ipv4 <ip>` → NodeId) and published
//!   (`ringlet vpn node <id>` → address); when a smaller online NodeId claims the same derived
//!   address, we move to the next candidate (a fixed address only logs the conflict);
//! - other members' addresses are looked up when they come online and when a packet needs one.
//!
//! Drive loop (inside the runtime's): `on_tun` per packet read, `vpn_datagram` per VPN
//! datagram or broadcast, `vpn_found` per DHT answer, `vpn_tick` at `vpn_due`; each drains
//! the core with `drain_vpn`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ringlet_tun::{Batch, SuperPacket, Tun};
use ringlet_xmpp::NodeIdBytes;

use super::dht::key_addr;
use super::runtime::Runtime;
use crate::config::VpnConfig;
use crate::link;
use crate::overlay::dht::Found;
use crate::vpn::address::{claim_key, ipv6_address, ipv6_prefix, node_key, Cidr4};
use crate::vpn::asks::MemberAsks;
use crate::vpn::{Output, Vpn};

/// App datagram channels: the first byte of every datagram between members.
pub const CHANNEL_APP: u8 = 0;
pub const CHANNEL_VPN: u8 = 1;
/// A TCP super-packet sent whole (`link::bulk`): its segment size (u16), then the packet.
pub const CHANNEL_VPN_SUPER: u8 = 3;
/// Whole-ring broadcast payload tag for VPN broadcasts and multicasts.
pub const BROADCAST_VPN: u8 = 2;

/// Lease of the address records (kept alive by the ring while the node runs, re-put at
/// half the lease). Four hours: a re-put is 16 routed puts (2 records, 8 points) and their
/// copies, ~11 B/s per idle node in a 12-node ring when done every 30 min (an estimate from
/// message sizes); the price is that a node gone for good holds its address that much
/// longer (a newcomer deriving the same one picks another).
const CLAIM_LEASE_S: u32 = 4 * 3600;
/// Frames read from the device in one loop turn at most, and packets they may hold (a TCP
/// super-packet holds up to ~50); the rest wait for the next turn, so XMPP and timers are not
/// starved.
const TUN_BURST: usize = 64;
const TUN_BURST_PACKETS: usize = 128;
/// How long after a claim its check looks (the put must reach the replicas first).
const CHECK_AFTER: Duration = Duration::from_secs(1);
/// How often membership and our claim are looked at: in the first [`STARTING`] while the claim
/// is not settled, later while it is not (alone, say), and once it is. Members whose address is
/// unknown are asked on their own schedule (`vpn::asks`).
const TICK_STARTING: Duration = Duration::from_millis(250);
const TICK_SETTLING: Duration = Duration::from_secs(1);
const TICK_SETTLED: Duration = Duration::from_secs(10);
const STARTING: Duration = Duration::from_secs(30);
/// Derived addresses tried before giving up on a conflict-free one.
const MAX_ATTEMPTS: u32 = 32;
/// What the worst path adds to a VPN packet (ring tunnel: two link frames, ring routing
/// header, end-to-end seal, channel byte) plus an IPv4/UDP underlay header, with room to spare.
pub const UNDERLAY_OVERHEAD: u32 = 192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Who holds this address (a packet waits).
    Address(Ipv4Addr),
    /// Does anyone smaller hold our address.
    OwnClaim(Ipv4Addr),
    /// Which address this member published.
    Member(NodeIdBytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Not put yet (the ring does not route).
    None,
    /// Put at this time; checked after [`CHECK_AFTER`].
    Put(Instant),
    Checking,
    Settled,
}

pub(super) struct VpnState {
    pub core: Vpn,
    pub tun: Tun,
    /// Packets for the device, written (TCP segments merged) when the loop turn ends.
    to_device: Batch,
    pub mtu: u32,
    subnet: Cidr4,
    fixed: bool,
    attempt: u32,
    claim: Claim,
    lookups: BTreeMap<u32, Lookup>,
    /// Online members, and when to ask for the published address of those still unknown.
    asks: MemberAsks,
    /// The earliest ask due (`None` while the ring does not route: the tick looks again).
    next_ask: Option<Instant>,
    next_tick: Instant,
    started: Instant,
    pub conflicts: u64,
    pub device_errors: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("VPN device {device}: {source}")]
pub struct VpnStartError {
    device: String,
    source: std::io::Error,
}

/// Creates and configures the TUN device: the address (fixed, or the first derived one),
/// the overlay's IPv6 address, the MTU, up.
pub(super) fn open(
    cfg: &VpnConfig,
    overlay: &str,
    node: &NodeIdBytes,
    now: Instant,
) -> Result<VpnState, VpnStartError> {
    let err = |source| VpnStartError {
        device: cfg.device.clone(),
        source,
    };
    let address = cfg.address.unwrap_or_else(|| cfg.subnet.derive(node, 0));
    let mtu = cfg.mtu.unwrap_or_else(underlay_mtu);
    let prefix6 = ipv6_prefix(overlay);
    let tun = Tun::create(&cfg.device).map_err(err)?;
    tun.set_ipv4(address.addr, address.prefix).map_err(err)?;
    if let Err(e) = tun.add_ipv6(ipv6_address(prefix6, node), 64) {
        // Hosts with IPv6 disabled still get the IPv4 VPN.
        tracing::warn!(error = %e, "VPN without IPv6");
    }
    tun.set_mtu(mtu).map_err(err)?;
    tun.up().map_err(err)?;
    tracing::info!(device = %cfg.device, %address, mtu, offload = tun.offload(), "VPN device up");
    Ok(VpnState {
        core: Vpn::new(address, prefix6, node),
        tun,
        to_device: Batch::default(),
        mtu,
        subnet: cfg.subnet,
        fixed: cfg.address.is_some(),
        attempt: 0,
        claim: Claim::None,
        lookups: BTreeMap::new(),
        asks: MemberAsks::default(),
        next_ask: None,
        next_tick: now,
        started: now,
        conflicts: 0,
        device_errors: 0,
    })
}

/// The VPN MTU for this host: the smallest MTU of the interfaces that are up (loopback
/// aside) minus [`UNDERLAY_OVERHEAD`], so that no path fragments in the underlay, and no more
/// than a ring tunnel carries.
fn underlay_mtu() -> u32 {
    let smallest = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != "lo")
        .filter(|e| std::fs::read_to_string(e.path().join("operstate")).is_ok_and(|s| s.trim() != "down"))
        .filter_map(|e| {
            std::fs::read_to_string(e.path().join("mtu"))
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        })
        .filter(|&mtu| mtu >= 1280)
        .min()
        .unwrap_or(1500);
    // A packet past the tunnel limit (with its channel byte) would leave the tunnel for the
    // XMPP relay.
    let tunnel_fits = (super::ring::MAX_TUNNEL_PAYLOAD - 1) as u32;
    (smallest - UNDERLAY_OVERHEAD).clamp(*crate::config::VPN_MTU_RANGE.start(), tunnel_fits)
}

impl Runtime {
    /// A packet read from the device.
    fn on_tun(&mut self, now: Instant, packet: Vec<u8>) {
        let Some(vpn) = self.vpn.as_mut() else { return };
        vpn.core.handle_tun(now, packet);
        self.drain_vpn(now);
    }

    /// The frame read into `buf[..first]`, then the rest of the burst waiting on the device,
    /// up to [`TUN_BURST`] frames or [`TUN_BURST_PACKETS`] packets: their datagrams leave in
    /// one batch (GSO) when the loop turn ends, not one system call each. A TCP super-packet
    /// goes whole where it can ([`Runtime::send_super`]), after the packets read before it.
    pub(super) fn on_tun_burst(&mut self, now: Instant, buf: &mut [u8], first: usize) {
        let mut packets = Vec::new();
        // Packets the burst stands for: a super-packet sent whole counts its segments.
        let mut taken = 0;
        let mut frame = first;
        for read in 1..=TUN_BURST {
            let Some(vpn) = self.vpn.as_ref() else { return };
            let sent_whole = vpn.tun.super_packet(&buf[..frame]).filter(|&whole| {
                for packet in packets.drain(..) {
                    self.on_tun(now, packet);
                }
                self.send_super(now, whole)
            });
            let Some(vpn) = self.vpn.as_mut() else { return };
            if let Some(whole) = sent_whole {
                taken += whole.packet.len().div_ceil(usize::from(whole.gso_size));
            } else {
                let before = packets.len();
                if let Err(e) = vpn.tun.unpack(&buf[..frame], &mut packets) {
                    vpn.device_errors += 1;
                    tracing::debug!(error = %e, "VPN device frame refused");
                }
                taken += packets.len() - before;
            }
            if read == TUN_BURST || taken >= TUN_BURST_PACKETS {
                break;
            }
            match vpn.tun.try_recv(buf) {
                Ok(n) => frame = n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.vpn_read_failed(&e);
                    break;
                }
            }
        }
        for packet in packets {
            self.on_tun(now, packet);
        }
    }

    /// Sends a TCP super-packet read from the device whole to its member, sealed once and
    /// carried in fragments, when the member is known and its direct path takes them; false
    /// when nothing was sent (the caller cuts it into packets).
    fn send_super(&mut self, now: Instant, whole: SuperPacket<'_>) -> bool {
        let Some(vpn) = self.vpn.as_mut() else {
            return false;
        };
        // Fragments as big as the datagram of a full-size packet: what the MTU was chosen for.
        let max_datagram = vpn.mtu as usize + link::SEALED_OVERHEAD;
        let gso = whole.gso_size.to_be_bytes();
        let links = &mut self.reach.links;
        let mut sent = None;
        let to = vpn.core.route_super(now, whole.packet, |to| {
            sent = links.send_fragmented(now, to, CHANNEL_VPN_SUPER, &[&gso, whole.packet], max_datagram);
            sent.is_some()
        });
        let (Some(to), Some(fragments)) = (to, sent) else {
            return false;
        };
        self.peer_bytes.entry(to).or_default().1 += (gso.len() + whole.packet.len()) as u64;
        self.app_sent.0 += 1;
        let link::Fragments {
            socket,
            to,
            data,
            size,
        } = fragments;
        self.reach.send_segments(socket, to, &data, size);
        self.drain_vpn(now);
        true
    }

    /// Writes the packets the loop turn delivered to the device.
    pub(super) fn flush_device(&mut self) {
        let Some(vpn) = self.vpn.as_mut() else { return };
        if !vpn.to_device.is_empty() {
            vpn.device_errors += vpn.tun.write_batch(&mut vpn.to_device).dropped;
        }
    }

    pub(super) fn vpn_read_failed(&mut self, e: &std::io::Error) {
        if let Some(vpn) = self.vpn.as_mut() {
            vpn.device_errors += 1;
        }
        tracing::warn!(error = %e, "VPN device read failed");
    }

    /// A TCP super-packet member `from` sent whole: `data` is the channel byte, the segment
    /// size (u16) and the packet.
    pub(super) fn vpn_super_datagram(&mut self, now: Instant, from: NodeIdBytes, mut data: Vec<u8>) {
        let Some(vpn) = self.vpn.as_mut() else { return };
        let Some(&[_, a, b]) = data.first_chunk::<3>() else {
            vpn.core.counters.malformed += 1;
            return;
        };
        // Channel byte and size leave in one move of a big buffer.
        data.drain(..3);
        vpn.core
            .handle_overlay_super(from, data, u16::from_be_bytes([a, b]));
        self.drain_vpn(now);
    }

    /// A VPN packet from member `from` (a datagram on the VPN channel, or a broadcast).
    pub(super) fn vpn_datagram(&mut self, now: Instant, from: NodeIdBytes, packet: Vec<u8>) {
        let Some(vpn) = self.vpn.as_mut() else { return };
        vpn.core.handle_overlay(from, packet);
        self.drain_vpn(now);
    }

    pub(super) fn drain_vpn(&mut self, now: Instant) {
        while let Some(out) = self.vpn.as_mut().and_then(|v| v.core.poll_output()) {
            match out {
                Output::Send { to, packet } => {
                    if let Err(e) = self.send_on(crate::NodeId(to), CHANNEL_VPN, &packet) {
                        tracing::trace!(error = %e, "VPN packet not sent");
                    }
                }
                Output::Broadcast(packet) => {
                    let mut payload = Vec::with_capacity(packet.len() + 1);
                    payload.push(BROADCAST_VPN);
                    payload.extend_from_slice(&packet);
                    let me = self.ring.me();
                    if self.ring.broadcast(now, me, me, payload).is_err() {
                        self.ring_no_path += 1;
                    }
                }
                Output::Lookup(ip) => self.vpn_lookup(now, Lookup::Address(ip)),
                Output::Deliver(packet) => {
                    let vpn = self.vpn.as_mut().expect("output came from it");
                    vpn.to_device.push(packet);
                }
                Output::DeliverSuper { packet, gso_size } => {
                    let vpn = self.vpn.as_mut().expect("output came from it");
                    vpn.deliver_super(packet, gso_size);
                }
            }
        }
    }

    fn vpn_lookup(&mut self, now: Instant, what: Lookup) {
        let key = match what {
            Lookup::Address(ip) | Lookup::OwnClaim(ip) => claim_key(ip),
            Lookup::Member(node) => node_key(&node),
        };
        match self.ring.dht_get(now, key_addr(&key)) {
            Ok(id) => {
                if let Some(vpn) = self.vpn.as_mut() {
                    vpn.lookups.insert(id, what);
                }
            }
            Err(_) => self.vpn_unanswered(now, what),
        }
    }

    fn vpn_unanswered(&mut self, now: Instant, what: Lookup) {
        let Some(vpn) = self.vpn.as_mut() else { return };
        match what {
            Lookup::Address(ip) => vpn.core.handle_unanswered(now, ip),
            Lookup::OwnClaim(_) => vpn.claim = Claim::Put(now),
            Lookup::Member(_) => {} // asked again at a later tick
        }
    }

    /// A DHT answer; returns whether it was one of ours.
    pub(super) fn vpn_found(&mut self, now: Instant, found: &Found) -> bool {
        let Some(what) = self.vpn.as_mut().and_then(|v| v.lookups.remove(&found.id)) else {
            return false;
        };
        tracing::trace!(
            ?what,
            answered = found.answered,
            values = found.values.len(),
            "VPN lookup answered"
        );
        if found.answered == 0 {
            self.vpn_unanswered(now, what);
        } else {
            match what {
                Lookup::Address(ip) => {
                    let holder = self.holder(found);
                    if let Some(vpn) = self.vpn.as_mut() {
                        vpn.core.handle_resolved(now, ip, holder);
                    }
                }
                Lookup::OwnClaim(ip) => self.check_claim(now, ip, self.holder(found)),
                Lookup::Member(node) => {
                    let published = found
                        .values
                        .iter()
                        .find_map(|(v, _)| <[u8; 4]>::try_from(v.as_slice()).ok());
                    if let (Some(vpn), Some(ip)) = (self.vpn.as_mut(), published) {
                        vpn.core.learn(now, Ipv4Addr::from(ip), node);
                    }
                }
            }
        }
        self.drain_vpn(now);
        true
    }

    /// Who holds an address: the smallest NodeId among the online, unrevoked claimants (us
    /// included).
    fn holder(&self, found: &Found) -> Option<NodeIdBytes> {
        let online = self.vpn_members();
        found
            .values
            .iter()
            .filter_map(|(v, _)| NodeIdBytes::try_from(v.as_slice()).ok())
            .filter(|n| *n == self.node_id.0 || online.contains(n))
            .min()
    }

    /// The members online and not revoked: the ones the VPN carries packets for.
    fn vpn_members(&self) -> BTreeSet<NodeIdBytes> {
        self.core
            .members()
            .map(|m| m.node)
            .filter(|n| !self.reach.links.is_revoked(n))
            .collect()
    }

    fn check_claim(&mut self, now: Instant, ip: Ipv4Addr, holder: Option<NodeIdBytes>) {
        let me = self.node_id.0;
        let Some(vpn) = self.vpn.as_mut() else { return };
        if ip != vpn.core.address().addr {
            return; // we moved meanwhile
        }
        match holder {
            Some(h) if h != me && vpn.fixed => {
                vpn.conflicts += 1;
                vpn.claim = Claim::Settled;
                tracing::warn!(address = %ip, holder = %crate::NodeId(h), "fixed VPN address also claimed by another member");
            }
            Some(h) if h != me && vpn.attempt < MAX_ATTEMPTS => {
                vpn.conflicts += 1;
                let old = vpn.core.address();
                vpn.attempt += 1;
                let next = vpn.subnet.derive(&me, vpn.attempt);
                tracing::info!(taken = %old, next = %next, "VPN address taken by a smaller NodeId; moving");
                if let Err(e) = vpn.tun.set_ipv4(next.addr, next.prefix) {
                    tracing::error!(error = %e, "cannot change the VPN address");
                    return;
                }
                vpn.core.set_address(next);
                vpn.claim = Claim::None;
                let _ = self
                    .ring
                    .dht_remove(now, key_addr(&claim_key(old.addr)), me.to_vec());
                let _ = self
                    .ring
                    .dht_remove(now, key_addr(&node_key(&me)), old.addr.octets().to_vec());
                vpn_claim(self, now);
            }
            Some(_) => vpn.claim = Claim::Settled,
            // Our own claim is not there (it went to replicas the ring has since replaced).
            None => vpn.claim = Claim::None,
        }
    }

    /// When the VPN wants `vpn_tick` next: its own tick, or sooner a member's next ask.
    pub(super) fn vpn_due(&self) -> Option<Instant> {
        let vpn = self.vpn.as_ref()?;
        Some(vpn.next_ask.map_or(vpn.next_tick, |a| a.min(vpn.next_tick)))
    }

    /// Whether DHT requests reach the right replicas: records put before the ring has both
    /// neighbours may land on the wrong ones; a leaf's relay links carry its requests.
    fn ring_routes(&self) -> bool {
        let table = self.ring.table();
        if self.is_leaf() {
            !table.is_empty()
        } else {
            table.nearest_left().is_some() && table.nearest_right().is_some()
        }
    }

    /// Claims our address once the ring routes, checks the claim, and asks for the addresses
    /// of members that came online; members that left are forgotten.
    pub(super) fn vpn_tick(&mut self, now: Instant) {
        let routes = self.ring_routes();
        let online = self.vpn_members();
        let Some(vpn) = self.vpn.as_mut() else { return };
        let changes = vpn.asks.sync(now, &online);
        for node in changes.left {
            vpn.core.handle_member(node, false);
        }
        for node in changes.joined {
            vpn.core.handle_member(node, true);
        }
        vpn.next_tick = now
            + if vpn.claim == Claim::Settled {
                TICK_SETTLED
            } else if now < vpn.started + STARTING {
                TICK_STARTING
            } else {
                TICK_SETTLING
            };
        vpn.next_ask = None;
        if !routes {
            return;
        }
        match vpn.claim {
            Claim::None => vpn_claim(self, now),
            Claim::Put(at) if now >= at + CHECK_AFTER => {
                let ip = vpn.core.address().addr;
                vpn.claim = Claim::Checking;
                self.vpn_lookup(now, Lookup::OwnClaim(ip));
            }
            _ => {}
        }
        let Some(vpn) = self.vpn.as_mut() else { return };
        let core = &vpn.core;
        let due = vpn.asks.take_due(now, |n| core.address_of(n).is_some());
        // Answers only make it later: a stale early value costs one quiet tick.
        vpn.next_ask = vpn.asks.next_due(|n| core.address_of(n).is_some());
        for node in due {
            self.vpn_lookup(now, Lookup::Member(node));
        }
        self.drain_vpn(now);
    }
}

impl VpnState {
    /// Queues a super-packet a member sent whole for the device: as it is where the device
    /// takes super-packets, else cut into its segments. One of the wrong shape is dropped.
    fn deliver_super(&mut self, packet: Vec<u8>, gso_size: u16) {
        let refused = if self.tun.offload() {
            self.to_device.push_super(packet, gso_size)
        } else {
            let mut segments = Vec::new();
            let cut = ringlet_tun::split_super(&packet, gso_size, &mut segments);
            for segment in segments {
                self.to_device.push(segment);
            }
            cut
        };
        if let Err(e) = refused {
            self.core.counters.malformed += 1;
            tracing::debug!(error = %e, "super-packet from a member refused");
        }
    }
}

/// Puts our claim and our published address into the DHT.
fn vpn_claim(rt: &mut Runtime, now: Instant) {
    let me = rt.node_id.0;
    let Some(vpn) = rt.vpn.as_mut() else { return };
    let ip = vpn.core.address().addr;
    vpn.claim = Claim::Put(now);
    let claimed = rt
        .ring
        .dht_put(now, key_addr(&claim_key(ip)), me.to_vec(), CLAIM_LEASE_S);
    let published = rt
        .ring
        .dht_put(now, key_addr(&node_key(&me)), ip.octets().to_vec(), CLAIM_LEASE_S);
    if claimed.is_err() || published.is_err() {
        if let Some(vpn) = rt.vpn.as_mut() {
            vpn.claim = Claim::None;
        }
    }
}
