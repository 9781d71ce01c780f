//! The ring in the daemon: the runtime feeds the ring core (`overlay::Ring`) what links and
//! rendezvous see, carries its messages on direct paths, and turns its deliveries (sealed end
//! to end, `node::e2e`) into application datagrams. The ring decides which members get a
//! direct path: its `Connect` makes the link layer punch (both ends dial, as the CTM asks),
//! its `Disconnect` lets the path go; application traffic keeps its own paths (links are
//! `on_demand`). Where punching fails the ring tunnels through a common neighbour, so the
//! path order is direct > tunnel > XMPP relay.
//!
//! Drive loop (inside the runtime's):
//! 1. path changes, attempt failures and overlay frames from `Links`, and membership changes
//!    from rendezvous, go to the ring with the current time;
//! 2. `drain_ring` sends its transmits over the peer's direct path and acts on its events;
//! 3. the ring's `poll_timeout` joins the runtime's deadline.

use std::time::{Duration, Instant};

use ringlet_xmpp::NodeIdBytes;

use super::runtime::Runtime;
use crate::identity::NodeId;
use crate::link::{self, Path};
use crate::overlay::{self, Event, LinkKind, RingAddr};

/// App datagrams bigger than this take the XMPP relay rather than a tunnel (a tunnelled
/// datagram carries ring headers and must stay under the direct-path MTU).
pub(super) const MAX_TUNNEL_PAYLOAD: usize = 1300;

/// How often the ring looks at the online members again: while it has no link to route
/// through (bootstrap attempts may all have failed), and once it has.
const RENDEZVOUS_SEEKING: Duration = Duration::from_secs(10);
const RENDEZVOUS_EVERY: Duration = Duration::from_secs(60);

/// What the ring assumes a relay link's round trip is (two server hops each way).
const RELAY_RTT: Duration = Duration::from_millis(200);

pub(super) fn new_ring(now: Instant, node: NodeId) -> overlay::Ring {
    let seed = u64::from_be_bytes(node.0[..8].try_into().unwrap_or_default());
    overlay::Ring::new(now, RingAddr::from(node), overlay::Config::default(), seed)
}

fn addr(peer: NodeIdBytes) -> RingAddr {
    RingAddr::from(NodeId(peer))
}

impl Runtime {
    pub(super) fn ring_path_changed(&mut self, now: Instant, peer: NodeIdBytes, path: Path) {
        match path {
            Path::Direct { rtt, .. } => {
                self.ring.handle_link_up(now, addr(peer), LinkKind::Direct, rtt);
                if self.ring.table().get(&addr(peer)).is_some() {
                    // A path the peer opened is our ring link too, and the ring pings it: the
                    // path's own keepalive stands back as on the paths we asked for (without
                    // this it checked the path after every 25 s of silence between pings).
                    self.reach.links.want(now, &peer, true);
                }
            }
            Path::Xmpp => self.ring.handle_link_down(now, addr(peer)),
        }
        // A first link turns bootstrap into linking the members that are near; a lost one
        // may leave us without a ring to route through.
        self.ring_members(now, None);
    }

    /// When the ring should look at the members again (joins and leaves also do it).
    pub(super) fn ring_rendezvous_due(&self) -> Instant {
        let every = if self.ring.table().has_routing_links() {
            RENDEZVOUS_EVERY
        } else {
            RENDEZVOUS_SEEKING
        };
        self.ring_rendezvous_at + every
    }

    /// Punching `peer` failed: the ring tunnels where it needs the peer; the link layer keeps
    /// retrying (with backoff) only for such peers, to upgrade the tunnel.
    pub(super) fn ring_attempt_failed(&mut self, now: Instant, peer: NodeIdBytes) {
        self.ring.handle_connect_failed(now, addr(peer));
        if !self.ring.wants_direct(addr(peer)) {
            self.reach.links.want(now, &peer, false);
        }
    }

    /// A ring message from a member. One over the relay comes from a leaf (a UDP-blocked
    /// member): its first message makes the relay our ring link to it, a leaf link.
    pub(super) fn ring_message(&mut self, now: Instant, from: NodeIdBytes, data: &[u8], relayed: bool) {
        self.ring_relayed.1 += u64::from(relayed);
        if relayed && self.ring.table().get(&addr(from)).is_none() {
            self.ring
                .handle_link_up(now, addr(from), LinkKind::Relay, RELAY_RTT);
        }
        self.ring.handle_message(now, addr(from), data);
    }

    /// A leaf: UDP is disabled or blocked, so every ring link rides the XMPP relay and none
    /// routes; the ring reaches the others through the members it links to.
    pub(super) fn is_leaf(&self) -> bool {
        !self.reach.links.direct_enabled() || self.reach.stun.nat().udp_blocked()
    }

    /// Rendezvous changed (or is due again): the ring learns who is online (a member gone is
    /// a link gone). Members closer than a neighbour get linked: rings formed apart merge.
    pub(super) fn ring_members(&mut self, now: Instant, gone: Option<NodeIdBytes>) {
        self.ring_rendezvous_at = now;
        if let Some(peer) = gone {
            self.ring.handle_link_down(now, addr(peer));
        }
        // Revoked members are online but no longer part of the ring.
        let online: Vec<RingAddr> = self
            .core
            .members()
            .filter(|m| !self.reach.links.is_revoked(&m.node))
            .map(|m| addr(m.node))
            .collect();
        self.ring.handle_rendezvous(now, &online);
        self.start_revocation_lookups(now);
    }

    /// Whether an app datagram to `to` should ride a ring tunnel (no direct path, a tunnel).
    pub(super) fn tunnel_to(&self, to: &NodeIdBytes, len: usize) -> bool {
        let direct = matches!(self.reach.links.path(to), Some(Path::Direct { .. }));
        let tunnel = matches!(
            self.ring.table().get(&addr(*to)).map(|l| l.kind),
            Some(LinkKind::Tunnel { .. })
        );
        !direct && tunnel && len <= MAX_TUNNEL_PAYLOAD
    }

    /// Moves the ring's output; returns whether anything moved.
    pub(super) fn drain_ring(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(t) = self.ring.poll_transmit() {
            moved = true;
            let peer = t.peer.to_bytes();
            let relayed = matches!(
                self.ring.table().get(&t.peer).map(|l| l.kind),
                Some(LinkKind::Relay)
            );
            let transmit = if relayed {
                self.reach.links.send_overlay_relayed(now, &peer, t.bytes)
            } else {
                self.reach.links.send_overlay(now, &peer, t.bytes)
            };
            match transmit {
                Ok(Some(link::Transmit::Udp { socket, to, data })) => self.reach.send(socket, to, data),
                Ok(Some(link::Transmit::Relay { to, data })) => {
                    self.ring_relayed.0 += 1;
                    self.relay(now, &to, &data)
                }
                // Waits for the link's handshake; the links' own output sends it.
                Ok(None) => {}
                Err(_) => self.ring_no_path += 1,
            }
        }
        while let Some(ev) = self.ring.poll_event() {
            moved = true;
            match ev {
                Event::Connect { peer, .. } if self.is_leaf() => {
                    if self.reach.links.path(&peer.to_bytes()).is_some() {
                        self.ring.handle_link_up(now, peer, LinkKind::Relay, RELAY_RTT);
                    } else {
                        self.ring.handle_connect_failed(now, peer);
                    }
                }
                Event::Connect { peer, .. } => {
                    let id = peer.to_bytes();
                    if !self.reach.links.want(now, &id, true) {
                        // Not an online member: nothing to punch.
                        self.ring.handle_connect_failed(now, peer);
                    } else if let Some(Path::Direct { rtt, .. }) = self.reach.links.path(&id) {
                        // Application traffic opened it already: a ring link at once.
                        self.ring.handle_link_up(now, peer, LinkKind::Direct, rtt);
                    }
                }
                Event::Disconnect { peer } => {
                    tracing::debug!(peer = %NodeId::from(peer), "ring released a link");
                    self.reach.links.want(now, &peer.to_bytes(), false);
                }
                Event::Deliver { src, payload, .. } => self.e2e_deliver(now, src, &payload),
                Event::TunnelUp { peer, .. } if self.reach.links.is_revoked(&peer.to_bytes()) => {
                    self.ring.handle_link_down(now, peer)
                }
                Event::TunnelUp { peer, via } => {
                    tracing::info!(peer = %NodeId::from(peer), via = %NodeId::from(via), "tunnel up")
                }
                Event::TunnelDown { peer } => tracing::info!(peer = %NodeId::from(peer), "tunnel down"),
                Event::DhtFound(found) => {
                    if !self.revocation_found(&found) && !self.vpn_found(now, &found) {
                        self.dht_found(found)
                    }
                }
                Event::Broadcast { origin, payload } => self.on_broadcast(now, origin, &payload),
            }
        }
        moved
    }
}
