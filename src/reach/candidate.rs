//! Candidates: addresses where a node may be reachable over UDP, as ICE defines them (RFC 8445
//! priorities), and their `udp://ip:port` URIs in the address exchange.

use std::net::SocketAddr;

/// How a candidate was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A local interface address.
    Host,
    /// Our address as a STUN server sees it.
    ServerReflexive,
    /// Our address as a peer sees it.
    PeerReflexive,
}

impl Kind {
    /// RFC 8445 type preference.
    fn type_preference(self) -> u32 {
        match self {
            Kind::Host => 126,
            Kind::PeerReflexive => 110,
            Kind::ServerReflexive => 100,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::ServerReflexive => "srflx",
            Kind::PeerReflexive => "prflx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub priority: u32,
}

impl Candidate {
    /// A candidate with the RFC 8445 priority for its kind; `local` orders several of one kind
    /// (higher first).
    pub fn new(kind: Kind, addr: SocketAddr, local: u16) -> Self {
        let priority = (kind.type_preference() << 24) | (u32::from(local) << 8) | 255;
        Self { kind, addr, priority }
    }

    /// `udp://ip:port` (IPv6 in brackets).
    pub fn uri(&self) -> String {
        format!("udp://{}", self.addr)
    }

    /// Parses an endpoint of the address exchange; `None` for other schemes or bad addresses.
    pub fn from_uri(uri: &str, priority: u32) -> Option<Self> {
        let addr: SocketAddr = uri.strip_prefix("udp://")?.parse().ok()?;
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return None;
        }
        let kind = match priority >> 24 {
            126 => Kind::Host,
            110 => Kind::PeerReflexive,
            _ => Kind::ServerReflexive,
        };
        Some(Self { kind, addr, priority })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_priorities_order_kinds() {
        let host = Candidate::new(Kind::Host, "10.0.0.2:4000".parse().unwrap(), 1);
        let srflx = Candidate::new(Kind::ServerReflexive, "[2001:db8::1]:4000".parse().unwrap(), 1);
        assert!(host.priority > srflx.priority);
        assert_eq!(srflx.uri(), "udp://[2001:db8::1]:4000");
        for c in [host, srflx] {
            assert_eq!(Candidate::from_uri(&c.uri(), c.priority), Some(c));
        }
        assert_eq!(Candidate::from_uri("xmpp://a@b/c", 1), None);
        assert_eq!(Candidate::from_uri("udp://0.0.0.0:1", 1), None);
        assert_eq!(Candidate::from_uri("udp://10.0.0.1:0", 1), None);
        assert_eq!(Candidate::from_uri("udp://nonsense", 1), None);
    }
}
