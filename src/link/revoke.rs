//! Revocation in the link layer. A revocation our CA signed closes what it names at once —
//! the peer's sessions and direct path — and from then on the peer gets no handshake, no
//! frame and no direct path (the handshake's CRL check refuses it as well). Peers catch up
//! with each other: after a handshake, the side whose CRL holds more revocations (the version
//! both hellos carry) sends the other what it has, one sealed frame per revocation.

use std::time::Instant;

use ringlet_xmpp::NodeIdBytes;

use super::frame::Body;
use super::{Event, Link, Links};
use crate::identity::NodeId;
use crate::secure::revocation::{Crl, Revocation};

/// Revocations sent to one peer after a handshake, at most (a friend group has a handful).
pub const CRL_PUSH_MAX: usize = 1024;

/// What became of a revocation handed to the links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// New: it is in the CRL now, and the links it names are closed.
    Added,
    /// Known already.
    Known,
    /// Not our CA's signature, or not for our group (or the links are not secure).
    Refused,
}

impl Links {
    /// Takes a revocation: verified against our CA, added to the CRL, and every link it names
    /// closed (an [`Event::Revoked`] each).
    pub fn revoke(&mut self, rev: Revocation) -> Revoked {
        let Some(sec) = self.security.as_mut() else {
            return Revoked::Refused;
        };
        match sec.crl.add_checked(&sec.ca, rev.clone()) {
            Err(_) => {
                self.counters.revocations_refused += 1;
                return Revoked::Refused;
            }
            Ok(false) => return Revoked::Known,
            Ok(true) => {}
        }
        sec.local.set_crl_version(sec.crl.version());
        let named: Vec<NodeIdBytes> = self
            .links
            .iter()
            .filter(|(_, l)| revoked_by(&sec.crl, l))
            .map(|(id, _)| *id)
            .collect();
        for peer in named {
            self.cut_off(peer, Some(rev.clone()));
        }
        Revoked::Added
    }

    /// The revocations we hold (none when links are not secure).
    pub fn crl(&self) -> Option<&Crl> {
        self.security.as_ref().map(|s| &s.crl)
    }

    /// Whether `peer` is cut off by a revocation.
    pub fn is_revoked(&self, peer: &NodeIdBytes) -> bool {
        self.links.get(peer).is_some_and(|l| l.revoked)
    }

    /// Judges a link again (its JID or key may be new): a revoked peer is cut off.
    pub(super) fn recheck_revoked(&mut self, peer: NodeIdBytes) {
        let named = match (self.security.as_ref(), self.links.get(&peer)) {
            (Some(sec), Some(link)) => !link.revoked && revoked_by(&sec.crl, link),
            _ => false,
        };
        if named {
            self.cut_off(peer, None);
        }
    }

    /// Closes everything we have with `peer` and refuses it from now on.
    fn cut_off(&mut self, peer: NodeIdBytes, by: Option<Revocation>) {
        self.retire_attempt(&peer);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.revoked = true;
        link.retry_at = None;
        link.verified_key = None;
        self.counters.queue_dropped += link.session.queued_len() as u64;
        let session = std::mem::take(&mut link.session);
        self.forget_sessions(session);
        self.counters.links_revoked += 1;
        tracing::info!(peer = %NodeId(peer), "link closed: the peer is revoked");
        self.events.push_back(Event::Revoked { peer, by });
    }

    /// After a handshake with a peer whose CRL is older than ours: send it what we hold.
    pub(super) fn push_crl(&mut self, now: Instant, peer: NodeIdBytes, peer_version: u64) {
        let Some(crl) = self.crl() else {
            return;
        };
        if crl.version() <= peer_version {
            return;
        }
        let revocations: Vec<Vec<u8>> = crl
            .revocations()
            .iter()
            .take(CRL_PUSH_MAX)
            .map(Revocation::emit)
            .collect();
        for rev in revocations {
            if let Some(t) = self.out(now, peer, Body::Revocation(rev), false) {
                self.transmits.push_back(t);
            }
        }
    }

    /// A revocation a member sent us in its session.
    pub(super) fn on_revocation_frame(&mut self, from: NodeIdBytes, bytes: &[u8]) {
        let Ok(rev) = Revocation::parse(bytes) else {
            self.counters.revocations_refused += 1;
            return;
        };
        if self.revoke(rev.clone()) == Revoked::Added {
            tracing::info!(from = %NodeId(from), target = ?rev.target, "revocation learnt from a peer");
            self.events.push_back(Event::CrlGrew(rev));
        }
    }
}

/// Whether the CRL names this link's user, key or (from its session) certificate.
fn revoked_by(crl: &Crl, link: &Link) -> bool {
    let user = link.jid.to_bare().to_string();
    let cert = link.session.peer_cert();
    crl.names(&user, link.key.as_ref()) || cert.is_some_and(|c| crl.revokes(c))
}
