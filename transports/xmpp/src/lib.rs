//! ringlet's XMPP transport: everything that moves bytes over an XMPP account.
//!
//! It owns four things and no ring logic:
//! - [`session`]: the one task that owns the `tokio-xmpp` stanza stream, logs in with bounded
//!   time and distinct errors, and reconnects with backoff (the only module here that does I/O);
//! - [`rendezvous`]: presence-based rendezvous and the address exchange (sans-IO);
//! - [`relay`]: reliable, paced, fragmenting datagram relay over IQ stanzas (sans-IO);
//! - [`core`]: the sans-IO front door that routes stanzas to the two cores above, enforces who
//!   may talk to us, and runs the XEP-0215 service discovery.
//!
//! Wire formats live in [`wire`], one module per format.

pub mod connect;
pub mod core;
pub mod names;
pub mod relay;
pub mod rendezvous;
pub mod session;
pub mod stanzas;
pub mod wire;

pub use tokio_xmpp::jid::{BareJid, FullJid, Jid};
pub use tokio_xmpp::minidom::Element;
pub use tokio_xmpp::Stanza;
pub use xmpp_parsers;

/// The first 160 bits of SHA-256 of a node's public key (the root crate wraps it as `NodeId`).
pub type NodeIdBytes = [u8; 20];

/// A node's static X25519 public key.
pub type PublicKeyBytes = [u8; 32];

/// Computes the NodeId bytes of a public key: the first 160 bits of its SHA-256.
pub fn node_id_of(key: &PublicKeyBytes) -> NodeIdBytes {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key);
    let mut id = [0u8; 20];
    id.copy_from_slice(&digest[..20]);
    id
}
