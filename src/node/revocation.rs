//! Revocation in the daemon, all three ways the seed paper asks for. A revocation handed to
//! the node (`ringlet group revoke --config`, through the control socket) is checked against
//! the group's CA, added to the CRL file, pushed to every member by whole-ring broadcast and
//! stored in the DHT under the name of what it revokes. Members that receive it close their
//! links to the revoked node at once (the link layer does) and keep it in their CRL file.
//! Members that missed the broadcast catch up when they next shake hands with anyone whose
//! CRL is newer (the link layer pushes it), or from the DHT: each member that comes online is
//! looked up under its node and user names once the ring can route.

use std::collections::BTreeSet;
use std::time::Instant;

use ringlet_xmpp::NodeIdBytes;

use super::dht::key_addr;
use super::runtime::Runtime;
use crate::identity::NodeId;
use crate::link::Revoked;
use crate::overlay::dht::Found;
use crate::overlay::RingAddr;
use crate::secure::revocation::{Revocation, Target};

/// First byte of a broadcast payload that carries a revocation.
pub const BROADCAST_REVOCATION: u8 = 1;
/// How long a revocation stays in the DHT per put (the publisher re-puts it at half).
const DHT_LEASE_S: u32 = 7 * 24 * 3600;

/// Where the DHT keeps revocations that name `target`.
pub fn dht_name(target: &Target) -> String {
    match target {
        Target::NodeKey(key) => node_name(&NodeId::of_public_key(key).0),
        Target::User(user) => user_name(user),
        Target::Serial(serial) => format!("ringlet revoked serial {serial:016x}"),
    }
}

/// A revocation as a broadcast carries it.
pub fn broadcast_payload(rev: &Revocation) -> Vec<u8> {
    let mut payload = vec![BROADCAST_REVOCATION];
    payload.extend_from_slice(&rev.emit());
    payload
}

fn node_name(node: &NodeIdBytes) -> String {
    format!("ringlet revoked node {}", NodeId(*node))
}

fn user_name(user: &str) -> String {
    format!("ringlet revoked user {user}")
}

/// Revocation lookups waiting: members to look up once the ring routes, lookups in flight.
#[derive(Default)]
pub(super) struct Lookups {
    due: BTreeSet<NodeIdBytes>,
    waiting: BTreeSet<u32>,
}

impl Runtime {
    /// Publishes a revocation: into the CRL (closing the links it names), to every member by
    /// broadcast, and into the DHT. A known one is published again (the caller may be
    /// retrying after a broadcast that reached no one).
    pub(super) fn publish_revocation(&mut self, now: Instant, rev: Revocation) -> Result<Revoked, String> {
        let outcome = self.take_revocation(rev.clone());
        if outcome == Revoked::Refused {
            return Err("the revocation is not signed by this group's CA".into());
        }
        let me = self.ring.me();
        self.ring
            .broadcast(now, me, me, broadcast_payload(&rev))
            .map_err(|e| format!("cannot broadcast: {e}"))?;
        let key = key_addr(&dht_name(&rev.target));
        if let Err(e) = self.ring.dht_put(now, key, rev.emit(), DHT_LEASE_S) {
            tracing::warn!(error = %e, "revocation not stored in the DHT");
        }
        tracing::info!(target = ?rev.target, ?outcome, "revocation published");
        Ok(outcome)
    }

    /// A whole-ring broadcast from a member.
    pub(super) fn on_broadcast(&mut self, now: Instant, origin: RingAddr, payload: &[u8]) {
        match payload.split_first() {
            Some((&BROADCAST_REVOCATION, rev)) => match Revocation::parse(rev) {
                Ok(rev) => {
                    if self.take_revocation(rev) == Revoked::Added {
                        tracing::info!(origin = %NodeId::from(origin), "revocation received by broadcast");
                    }
                }
                Err(e) => {
                    self.revocations_malformed += 1;
                    tracing::debug!(error = %e, "malformed revocation broadcast");
                }
            },
            Some((&super::vpn::BROADCAST_VPN, packet)) => {
                self.vpn_datagram(now, origin.to_bytes(), packet.to_vec())
            }
            _ => tracing::debug!(origin = %NodeId::from(origin), "unknown broadcast dropped"),
        }
    }

    /// Gives a revocation to the link layer; keeps the CRL file in step when it is new.
    pub(super) fn take_revocation(&mut self, rev: Revocation) -> Revoked {
        let outcome = self.reach.links.revoke(rev);
        if outcome == Revoked::Added {
            self.save_crl();
        }
        outcome
    }

    /// Writes the CRL file (a failure is logged: the list is still enforced in memory), and
    /// tells end-to-end hellos its new version.
    pub(super) fn save_crl(&mut self) {
        let (Some(crl), Some(path)) = (self.reach.links.crl(), self.crl_path.as_ref()) else {
            return;
        };
        self.e2e.set_crl_version(crl.version());
        if let Err(e) = crl.save(path) {
            tracing::error!(error = %e, "cannot write the revocation list");
        }
    }

    /// Looks `peer` up in the DHT (once the ring can route): revocations stored under its
    /// node name and its user's name.
    pub(super) fn check_revocations_of(&mut self, peer: NodeIdBytes) {
        self.revocation_lookups.due.insert(peer);
    }

    /// Starts the lookups that are due, if the ring can route.
    pub(super) fn start_revocation_lookups(&mut self, now: Instant) {
        if !self.ring.table().has_routing_links() || self.reach.links.crl().is_none() {
            return;
        }
        for peer in std::mem::take(&mut self.revocation_lookups.due) {
            let user = self
                .core
                .members()
                .find(|m| m.node == peer)
                .map(|m| m.jid.to_bare().to_string());
            let names = std::iter::once(node_name(&peer)).chain(user.as_deref().map(user_name));
            for name in names {
                match self.ring.dht_get(now, key_addr(&name)) {
                    Ok(id) => {
                        self.revocation_lookups.waiting.insert(id);
                    }
                    Err(_) => {
                        // Busy: try again with the next batch.
                        self.revocation_lookups.due.insert(peer);
                    }
                }
            }
        }
    }

    /// A DHT answer; true when it was one of ours.
    pub(super) fn revocation_found(&mut self, found: &Found) -> bool {
        if !self.revocation_lookups.waiting.remove(&found.id) {
            return false;
        }
        for (value, _) in &found.values {
            match Revocation::parse(value) {
                Ok(rev) => {
                    if self.take_revocation(rev) == Revoked::Added {
                        tracing::info!("revocation found in the DHT");
                    }
                }
                Err(_) => self.revocations_malformed += 1,
            }
        }
        true
    }

    /// The link layer cut `peer` off: so does the ring, which passes a revocation that just
    /// arrived on to the nodes behind the revoked one (see `Ring::cut_off`).
    pub(super) fn on_peer_revoked(&mut self, now: Instant, peer: NodeIdBytes, by: Option<Revocation>) {
        self.e2e.forget(&peer);
        let peer = RingAddr::from(NodeId(peer));
        match by {
            Some(rev) => {
                if let Err(e) = self.ring.cut_off(now, peer, broadcast_payload(&rev)) {
                    tracing::warn!(error = %e, "revocation not passed on");
                }
            }
            None => self.ring.handle_link_down(now, peer),
        }
    }
}
