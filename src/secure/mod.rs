//! Security: who may be in the group and how their traffic is protected.
//!
//! - [`cert`]: the group CA (Ed25519) and member certificates binding a node key, a user's
//!   bare JID, the group and an expiry;
//! - [`noise`]: the Noise IK/XX handshake that proves a peer holds the static key behind its
//!   NodeId and presents a valid certificate of our group;
//! - [`transport`]: ChaCha20-Poly1305 datagram protection with a replay window and rekeying
//!   limits; [`replay`]: the window;
//! - [`wire`]: the secure packet format;
//! - [`files`]: the CA key file and the certificate's text form.
//! - [`admin`]: what `ringlet group init | sign | join` do;
//! - [`revocation`]: signed revocations and the CRL a node keeps.

pub mod admin;
pub mod cert;
pub mod e2e;
pub mod files;
pub mod noise;
pub mod replay;
pub mod revocation;
#[cfg(test)]
mod tests;
pub mod transport;
pub mod wire;

use ringlet_xmpp::BareJid;

use self::cert::CertError;
use self::noise::Peer;
use crate::identity::NodeId;

/// What we expect of a peer beyond group membership: the NodeId we meant to reach and the
/// JID it speaks as on XMPP, when we know them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    pub node: Option<NodeId>,
    pub jid: Option<&'a BareJid>,
    /// Revocations to honour.
    pub crl: Option<&'a revocation::Crl>,
}

/// A session index not yet in `index`, taken for `peer`: how packets find their session
/// without trusting addresses.
pub fn fresh_index(
    index: &mut std::collections::BTreeMap<u32, ringlet_xmpp::NodeIdBytes>,
    rng: &mut impl rand::RngExt,
    peer: ringlet_xmpp::NodeIdBytes,
) -> u32 {
    loop {
        let i: u32 = rng.random();
        if let std::collections::btree_map::Entry::Vacant(e) = index.entry(i) {
            e.insert(peer);
            return i;
        }
    }
}

/// Judges a handshake's peer: a certificate of group `ca`, valid at `unix_now`, for the key
/// the peer proved, for the node and user we expected.
pub fn member_check<'a>(
    ca: &'a [u8; 32],
    unix_now: u64,
    expect: Expect<'a>,
) -> impl FnOnce(&Peer) -> Result<(), CertError> + 'a {
    move |peer: &Peer| {
        if expect.node.is_some_and(|n| n != NodeId::of_public_key(&peer.key)) {
            return Err(CertError::OtherNode);
        }
        peer.cert.verify_peer(ca, unix_now, &peer.key, expect.jid)?;
        if expect.crl.is_some_and(|crl| crl.revokes(&peer.cert)) {
            return Err(CertError::Revoked);
        }
        Ok(())
    }
}
