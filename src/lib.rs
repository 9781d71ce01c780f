//! ringlet: a private, encrypted peer-to-peer overlay built from ordinary XMPP accounts.
//!
//! The crate holds the node runtime and everything above the transports:
//! - [`config`]: the TOML configuration;
//! - [`identity`]: the node key and its `NodeId`;
//! - [`node`]: a running node and the API to embed one;
//! - [`app`]: the application API (members, send, broadcast, receive), embedded or attached;
//! - [`control`]: the local control socket (`ringlet status`);
//! - [`secure`]: group certificates, the Noise handshake and datagram protection;
//! - [`vpn`]: the P2P VPN's addressing and forwarding core.
//!
//! The XMPP transport (session, rendezvous, relay) lives in the `ringlet-xmpp` crate.

pub mod app;
pub mod codec;
pub mod config;
pub mod control;
pub mod fuzzing;
pub mod groups;
pub mod identity;
pub mod link;
pub mod node;
pub mod overlay;
pub mod reach;
pub mod secure;
pub mod sim;
pub mod vpn;

pub use identity::NodeId;
