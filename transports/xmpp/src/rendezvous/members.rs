//! What rendezvous knows about one member resource.

use std::time::{Duration, Instant};

use crate::wire::addresses::Endpoint;
use crate::{FullJid, NodeIdBytes, PublicKeyBytes};

/// Addresses a member told us in the address exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub key: PublicKeyBytes,
    pub endpoints: Vec<Endpoint>,
    pub learned: Instant,
    /// The member's group certificate, if it sent one (checked by the link layer).
    pub cert: Option<Vec<u8>>,
}

/// One resource online in our overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub jid: FullJid,
    pub node: NodeIdBytes,
    /// When its presence arrived.
    pub since: Instant,
    pub addresses: Option<Addresses>,
    /// Round trip of the last address exchange (through the XMPP server).
    pub rtt: Option<Duration>,
    /// Static key and group certificate from its presence, when it sent them.
    pub key: Option<crate::PublicKeyBytes>,
    pub cert: Option<Vec<u8>>,
}

impl Member {
    pub fn new(jid: FullJid, node: NodeIdBytes, since: Instant) -> Self {
        Self {
            jid,
            node,
            since,
            addresses: None,
            key: None,
            cert: None,
            rtt: None,
        }
    }
}
