//! Just enough of IPv4 and IPv6 headers to forward a packet: its version, source,
//! destination, and the transport protocol (which decides whether a broadcast or multicast is
//! carried). Nothing is trusted: a packet shorter than its header, or whose length fields
//! disagree with what arrived, is an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// UDP's protocol number: the one transport whose broadcasts and multicasts the VPN carries
/// (game discovery, mDNS, SSDP); IGMP, MLD and router solicitations stay local.
pub const UDP: u8 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 next header (extension headers are not followed).
    pub protocol: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    #[error("{len}-byte packet is shorter than its {need}-byte header")]
    Short { len: usize, need: usize },
    #[error("length field says {said} bytes, {got} arrived")]
    Length { said: usize, got: usize },
}

impl Header {
    pub fn parse(packet: &[u8]) -> Result<Header, PacketError> {
        let first = *packet.first().ok_or(PacketError::Empty)?;
        match first >> 4 {
            4 => parse_v4(packet),
            6 => parse_v6(packet),
            v => Err(PacketError::Version(v)),
        }
    }
}

fn parse_v4(p: &[u8]) -> Result<Header, PacketError> {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let need = ihl.max(20);
    if p.len() < need {
        return Err(PacketError::Short { len: p.len(), need });
    }
    let said = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if said != p.len() || said < ihl {
        return Err(PacketError::Length { said, got: p.len() });
    }
    let addr = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    Ok(Header {
        src: addr(12).into(),
        dst: addr(16).into(),
        protocol: p[9],
    })
}

fn parse_v6(p: &[u8]) -> Result<Header, PacketError> {
    if p.len() < 40 {
        return Err(PacketError::Short {
            len: p.len(),
            need: 40,
        });
    }
    let said = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
    if said != p.len() {
        return Err(PacketError::Length { said, got: p.len() });
    }
    let addr = |at: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&p[at..at + 16]);
        Ipv6Addr::from(octets)
    };
    Ok(Header {
        src: addr(8).into(),
        dst: addr(24).into(),
        protocol: p[6],
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 packet with `payload` (checksum left 0: nothing here checks it).
    pub fn v4(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn headers_parse_and_bad_ones_are_errors() {
        let p = v4([10, 77, 0, 1], [10, 77, 0, 2], UDP, b"hi");
        let h = Header::parse(&p).unwrap();
        assert_eq!(
            (h.src, h.dst, h.protocol),
            ("10.77.0.1".parse().unwrap(), "10.77.0.2".parse().unwrap(), UDP)
        );
        let q = v6("fd00::1".parse().unwrap(), "ff02::fb".parse().unwrap(), UDP, b"x");
        assert_eq!(
            Header::parse(&q).unwrap().dst,
            "ff02::fb".parse::<IpAddr>().unwrap()
        );

        assert_eq!(Header::parse(&[]), Err(PacketError::Empty));
        assert_eq!(Header::parse(&[0x50; 40]), Err(PacketError::Version(5)));
        assert!(matches!(Header::parse(&p[..19]), Err(PacketError::Short { .. })));
        assert!(matches!(Header::parse(&p[..21]), Err(PacketError::Length { .. })));
        let mut long_ihl = p.clone();
        long_ihl[0] = 0x4f; // 60-byte header in a 22-byte packet
        assert!(matches!(Header::parse(&long_ihl), Err(PacketError::Short { .. })));
        assert!(matches!(Header::parse(&q[..39]), Err(PacketError::Short { .. })));
        assert!(matches!(Header::parse(&q[..40]), Err(PacketError::Length { .. })));
    }
}
