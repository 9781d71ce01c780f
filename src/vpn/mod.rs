//! The P2P VPN: IP packets between the members' TUN devices over the overlay. `core` decides
//! where a packet goes (sans-IO); `asks` when members' addresses are looked up; `address`
//! owns the addressing plan; `packet` reads IP headers. The daemon's side (device, DHT
//! claims and lookups, paths) is `node::vpn`.

pub mod address;
pub mod asks;
pub mod core;
pub mod packet;

pub use self::address::Cidr4;
pub use self::core::{Output, Vpn};
