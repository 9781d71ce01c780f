//! The overlay layer: the private Symphony ring the friends' nodes form over their links.
//!
//! - [`addr`]: 160-bit ring addresses and distances;
//! - [`wire`]: the overlay messages;
//! - [`table`]: links, near neighbours, the size estimate and the greedy next hop;
//! - [`ring`]: the node core (linking, keepalive, tunnels, routing, DHT, broadcast);
//! - [`dht`], [`broadcast`]: the state those services keep.
//!
//! Everything here is sans-IO: the node runtime and the simulator drive the same code.

pub mod addr;
pub mod broadcast;
pub mod coords;
pub mod dht;
pub mod ring;
pub mod table;
pub mod wire;

pub use addr::RingAddr;
pub use ring::{Config, Event, Ring, Transmit};
pub use table::LinkKind;
