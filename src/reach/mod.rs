//! Reachability: how this node can be reached over UDP, and how two nodes punch through
//! their NATs. Everything here is sans-IO.
//!
//! - [`stun_msg`]: STUN messages (server queries, authenticated peer checks);
//! - [`stun_client`]: server-reflexive addresses and NAT behaviour discovery;
//! - [`nat`]: what is known about our NAT;
//! - [`candidate`]: addresses a node may be reachable at;
//! - [`punch`]: the punch agent, one direct path attempt and its upkeep.

pub mod candidate;
pub mod nat;
pub mod punch;
pub mod stun_client;
pub mod stun_msg;
#[cfg(test)]
pub(crate) mod testnet;
#[cfg(test)]
mod tests;
