//! VPN addresses: the group's IPv4 subnet (CIDR), an address derived from a NodeId inside it
//! (the n-th candidate when earlier ones are taken), the member's IPv6 address (a ULA prefix
//! from the overlay name, the NodeId's first 64 bits as interface id, so it resolves from the
//! member list alone), and the DHT names that map addresses to NodeIds.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The subnet members derive their addresses in when the config names none.
pub const DEFAULT_SUBNET: &str = "10.77.0.0/16";

/// An IPv4 address with its prefix length, as in `10.77.0.1/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr4 {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not IPv4 CIDR notation like 10.77.0.1/16")]
    Syntax(String),
    #[error("prefix /{0} leaves no room for members (use /8 to /30)")]
    Prefix(u8),
    #[error("{addr} is the network or broadcast address of {subnet}")]
    Reserved { addr: Ipv4Addr, subnet: Cidr4 },
}

impl FromStr for Cidr4 {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Cidr4, AddressError> {
        let syntax = || AddressError::Syntax(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if !(8..=30).contains(&prefix) {
            return Err(AddressError::Prefix(prefix));
        }
        Ok(Cidr4 { addr, prefix })
    }
}

impl fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr4 {
    fn mask(self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Refuses the network and broadcast addresses as a member's address.
    pub fn usable(self) -> Result<Cidr4, AddressError> {
        if self.addr == self.network() || self.addr == self.broadcast() {
            return Err(AddressError::Reserved {
                addr: self.addr,
                subnet: self,
            });
        }
        Ok(self)
    }

    /// The `attempt`-th address derived for `node` in this subnet: a hash of both picks a
    /// host number other than the network and broadcast ones.
    pub fn derive(self, node: &[u8; 20], attempt: u32) -> Cidr4 {
        let mut h = Sha256::new();
        h.update(b"ringlet vpn ipv4");
        h.update(node);
        h.update(attempt.to_be_bytes());
        let digest = h.finalize();
        let hosts = (!self.mask()) - 1; // usable host numbers: 1 ..= hosts
        let pick = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % hosts + 1;
        Cidr4 {
            addr: Ipv4Addr::from(u32::from(self.network()) | pick),
            prefix: self.prefix,
        }
    }
}

/// The overlay's IPv6 /64: `fd` and 56 bits of a hash of the overlay name.
pub fn ipv6_prefix(overlay: &str) -> [u8; 8] {
    let digest = Sha256::digest(format!("ringlet vpn ipv6 {overlay}").as_bytes());
    let mut prefix = [0u8; 8];
    prefix[0] = 0xfd;
    prefix[1..].copy_from_slice(&digest[..7]);
    prefix
}

/// A member's IPv6 address: the overlay's prefix and the NodeId's first 64 bits.
pub fn ipv6_address(prefix: [u8; 8], node: &[u8; 20]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets[..8].copy_from_slice(&prefix);
    octets[8..].copy_from_slice(&node[..8]);
    Ipv6Addr::from(octets)
}

/// DHT name under which members claim an IPv4 address (values: 20-byte NodeIds).
pub fn claim_key(ip: Ipv4Addr) -> String {
    format!("ringlet vpn ipv4 {ip}")
}

/// DHT name under which a member publishes its IPv4 address (value: 4 bytes).
pub fn node_key(node: &[u8; 20]) -> String {
    format!("ringlet vpn node {}", hex::encode(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_refuses_what_cannot_hold_members() {
        let c: Cidr4 = "10.77.3.4/16".parse().unwrap();
        assert_eq!(
            (c.network(), c.broadcast()),
            (Ipv4Addr::new(10, 77, 0, 0), Ipv4Addr::new(10, 77, 255, 255))
        );
        assert!(c.contains(Ipv4Addr::new(10, 77, 200, 1)) && !c.contains(Ipv4Addr::new(10, 78, 0, 1)));
        for bad in ["10.77.0.1", "10.77.0.1/", "10.77.0/16", "x/16", "10.77.0.1/16/1"] {
            assert!(
                matches!(bad.parse::<Cidr4>(), Err(AddressError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!("10.0.0.1/31".parse::<Cidr4>(), Err(AddressError::Prefix(31)));
        assert_eq!("10.0.0.1/7".parse::<Cidr4>(), Err(AddressError::Prefix(7)));
        assert!("10.77.0.0/16".parse::<Cidr4>().unwrap().usable().is_err());
        assert!("10.77.255.255/16".parse::<Cidr4>().unwrap().usable().is_err());
    }

    #[test]
    fn derived_addresses_stay_inside_and_avoid_reserved_ones() {
        let subnet: Cidr4 = "192.168.7.0/30".parse().unwrap();
        for i in 0..200u8 {
            let d = subnet.derive(&[i; 20], u32::from(i));
            assert!(d.usable().is_ok() && subnet.contains(d.addr), "{d}");
        }
        let wide: Cidr4 = DEFAULT_SUBNET.parse().unwrap();
        assert_ne!(
            wide.derive(&[1; 20], 0),
            wide.derive(&[1; 20], 1),
            "attempts differ"
        );
        assert_eq!(
            wide.derive(&[1; 20], 0),
            wide.derive(&[1; 20], 0),
            "and are stable"
        );
    }

    #[test]
    fn ipv6_addresses_carry_the_node_id() {
        let prefix = ipv6_prefix("lab");
        let a = ipv6_address(prefix, &[0xab; 20]);
        assert_eq!(a.octets()[0], 0xfd);
        assert_eq!(&a.octets()[8..], &[0xab; 8]);
        assert_ne!(ipv6_prefix("lab"), ipv6_prefix("other"));
    }
}
