//! Ringlet frames: what links carry, over UDP and over the XMPP relay alike (version 0).
//!
//! ```text
//! byte 0      0b11 + 6-bit version (0xc0 for version 0); tells frames from STUN
//! byte 1      kind: 1 data, 2 offer, 3 answer, 4 candidates, 5 ping, 6 pong, 7 overlay,
//!             8 close, 9 secure (a `secure::wire` packet sealing one inner frame),
//!             10 fragment (a piece of a secure frame too big for one datagram: `fragment`)
//! bytes 2..10 path id: the overlay's namespace id, so one socket serves every overlay
//! bytes 10..  body
//! ```
//!
//! Offer/answer bodies (the connect-to-me exchange): attempt id (u32), ufrag and pwd (u8
//! length + UTF-8), NAT info (mapping u8, ports u8 + step i16, filtering u8), candidate count
//! (u8), and per
//! candidate: kind u8, priority u32, address (4 → IPv4, 6 → IPv6, then port u16).
//! A candidates body (trickled after the offer or answer) is the attempt id, the sender's NAT
//! info as it is now, and the candidates it learned since; ping and pong bodies are a u64
//! nonce. All integers are big-endian.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ringlet_udp::FRAME_MARKER;

use crate::reach::candidate::{Candidate, Kind as CandidateKind};
use crate::reach::nat::{Filtering, Mapping, NatInfo, Ports};
use crate::reach::punch::Credentials;

pub const VERSION: u8 = 0;
pub const HEADER_LEN: usize = 10;
pub const KIND_DATA: u8 = 1;
pub const KIND_SECURE: u8 = 9;
/// Most candidates one offer may carry.
pub const MAX_CANDIDATES: usize = 32;

/// Identifies an overlay on a shared socket.
pub type PathId = [u8; 8];

/// The connect-to-me message: credentials and candidates for one punch attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub attempt: u32,
    pub creds: Credentials,
    pub nat: NatInfo,
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Data(Vec<u8>),
    Offer(Offer),
    Answer(Offer),
    Candidates {
        attempt: u32,
        nat: NatInfo,
        candidates: Vec<Candidate>,
    },
    Ping(u64),
    Pong(u64),
    /// A ring message (`overlay::wire`), carried on direct paths only.
    Overlay(Vec<u8>),
    /// The sender closed this direct path (nobody on its side needs it): close yours now
    /// rather than after the keepalive notices, so nothing is sent into the void meanwhile.
    Close,
    /// A secure packet (`secure::wire`): a handshake message, or another frame sealed.
    Secure(Vec<u8>),
    /// A revocation (`secure::revocation`) a peer with a newer CRL hands us after a handshake.
    Revocation(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub path: PathId,
    pub body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame shorter than its header")]
    Short,
    #[error("unsupported frame version {0}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("truncated or malformed frame body")]
    Body,
    #[error("too many candidates")]
    TooManyCandidates,
}

impl Frame {
    pub fn data(path: PathId, data: Vec<u8>) -> Self {
        Self {
            path,
            body: Body::Data(data),
        }
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 64);
        out.push(FRAME_MARKER | VERSION);
        let (kind, rest): (u8, Vec<u8>) = match &self.body {
            Body::Data(d) => (1, d.clone()),
            Body::Offer(o) => (2, emit_offer(o)),
            Body::Answer(o) => (3, emit_offer(o)),
            Body::Candidates {
                attempt,
                nat,
                candidates,
            } => {
                let mut b = attempt.to_be_bytes().to_vec();
                emit_nat(&mut b, nat);
                emit_candidates(&mut b, candidates);
                (4, b)
            }
            Body::Ping(n) => (5, n.to_be_bytes().to_vec()),
            Body::Pong(n) => (6, n.to_be_bytes().to_vec()),
            Body::Overlay(m) => (7, m.clone()),
            Body::Close => (8, Vec::new()),
            Body::Secure(p) => (9, p.clone()),
            Body::Revocation(r) => (10, r.clone()),
        };
        out.push(kind);
        out.extend_from_slice(&self.path);
        out.extend_from_slice(&rest);
        out
    }

    /// Emits a data frame without building a `Frame` (the hot path).
    pub fn emit_data(path: &PathId, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + data.len());
        out.extend_from_slice(&header(path, KIND_DATA));
        out.extend_from_slice(data);
        out
    }

    /// The body of `bytes` if it is a secure frame of `path`, without copying it (the hot
    /// path: once links are secure, every frame is one).
    pub fn secure_body<'a>(bytes: &'a [u8], path: &PathId) -> Option<&'a [u8]> {
        Self::is_kind(bytes, path, KIND_SECURE).then(|| &bytes[HEADER_LEN..])
    }

    /// Whether `bytes` is a frame of this version, of `kind`, for `path` (header only).
    pub fn is_kind(bytes: &[u8], path: &PathId, kind: u8) -> bool {
        bytes.len() >= HEADER_LEN
            && bytes[0] == FRAME_MARKER | VERSION
            && bytes[1] == kind
            && bytes[2..HEADER_LEN] == path[..]
    }

    /// [`Frame::parse`] of a buffer we own: a data frame keeps the buffer (its header
    /// dropped) rather than copying the body out.
    pub fn parse_owned(mut bytes: Vec<u8>) -> Result<Self, FrameError> {
        if bytes.len() < HEADER_LEN || bytes[0] != FRAME_MARKER | VERSION || bytes[1] != KIND_DATA {
            return Self::parse(&bytes);
        }
        let mut path = [0u8; 8];
        path.copy_from_slice(&bytes[2..HEADER_LEN]);
        bytes.drain(..HEADER_LEN);
        Ok(Self::data(path, bytes))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Short);
        }
        if bytes[0] & 0xc0 != FRAME_MARKER || bytes[0] & 0x3f != VERSION {
            return Err(FrameError::Version(bytes[0] & 0x3f));
        }
        let mut path = [0u8; 8];
        path.copy_from_slice(&bytes[2..10]);
        let mut r = Reader(&bytes[HEADER_LEN..]);
        let body = match bytes[1] {
            1 => Body::Data(bytes[HEADER_LEN..].to_vec()),
            2 => Body::Offer(parse_offer(&mut r)?),
            3 => Body::Answer(parse_offer(&mut r)?),
            4 => {
                let attempt = r.u32()?;
                Body::Candidates {
                    attempt,
                    nat: parse_nat(&mut r)?,
                    candidates: parse_candidates(&mut r)?,
                }
            }
            5 => Body::Ping(r.u64()?),
            6 => Body::Pong(r.u64()?),
            7 => Body::Overlay(bytes[HEADER_LEN..].to_vec()),
            8 => Body::Close,
            9 => Body::Secure(bytes[HEADER_LEN..].to_vec()),
            10 => Body::Revocation(bytes[HEADER_LEN..].to_vec()),
            k => return Err(FrameError::Kind(k)),
        };
        let opaque = matches!(
            body,
            Body::Data(_) | Body::Overlay(_) | Body::Secure(_) | Body::Revocation(_)
        );
        if !opaque && !r.0.is_empty() {
            return Err(FrameError::Body);
        }
        Ok(Self { path, body })
    }
}

/// The header of a frame of `kind` on `path`.
pub fn header(path: &PathId, kind: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = FRAME_MARKER | VERSION;
    h[1] = kind;
    h[2..].copy_from_slice(path);
    h
}

fn emit_offer(o: &Offer) -> Vec<u8> {
    let mut b = o.attempt.to_be_bytes().to_vec();
    for s in [&o.creds.ufrag, &o.creds.pwd] {
        b.push(s.len().min(255) as u8);
        b.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
    }
    emit_nat(&mut b, &o.nat);
    emit_candidates(&mut b, &o.candidates);
    b
}

fn emit_nat(b: &mut Vec<u8>, nat: &NatInfo) {
    b.push(match nat.mapping {
        None => 0,
        Some(Mapping::EndpointIndependent) => 1,
        Some(Mapping::EndpointDependent) => 2,
    });
    let (ports, step) = match nat.ports {
        None => (0, 0),
        Some(Ports::Preserving) => (1, 0),
        Some(Ports::Sequential { step }) => (2, step.clamp(i16::MIN.into(), i16::MAX.into()) as i16),
        Some(Ports::Random) => (3, 0),
    };
    b.push(ports);
    b.extend_from_slice(&step.to_be_bytes());
    b.push(match nat.filtering {
        None => 0,
        Some(Filtering::EndpointIndependent) => 1,
        Some(Filtering::AddressDependent) => 2,
        Some(Filtering::AddressAndPortDependent) => 3,
    });
}

fn emit_candidates(b: &mut Vec<u8>, candidates: &[Candidate]) {
    let list = &candidates[..candidates.len().min(MAX_CANDIDATES)];
    b.push(list.len() as u8);
    for c in list {
        b.push(match c.kind {
            CandidateKind::Host => 1,
            CandidateKind::ServerReflexive => 2,
            CandidateKind::PeerReflexive => 3,
        });
        b.extend_from_slice(&c.priority.to_be_bytes());
        match c.addr.ip() {
            IpAddr::V4(ip) => {
                b.push(4);
                b.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                b.push(6);
                b.extend_from_slice(&ip.octets());
            }
        }
        b.extend_from_slice(&c.addr.port().to_be_bytes());
    }
}

fn parse_offer(r: &mut Reader) -> Result<Offer, FrameError> {
    let attempt = r.u32()?;
    let ufrag = r.string()?;
    let pwd = r.string()?;
    if ufrag.is_empty() || pwd.len() < 16 || ufrag.contains(':') {
        return Err(FrameError::Body);
    }
    let nat = parse_nat(r)?;
    let candidates = parse_candidates(r)?;
    Ok(Offer {
        attempt,
        creds: Credentials { ufrag, pwd },
        nat,
        candidates,
    })
}

fn parse_nat(r: &mut Reader) -> Result<NatInfo, FrameError> {
    let mapping = match r.u8()? {
        0 => None,
        1 => Some(Mapping::EndpointIndependent),
        2 => Some(Mapping::EndpointDependent),
        _ => return Err(FrameError::Body),
    };
    let kind = r.u8()?;
    let step = i16::from_be_bytes([r.u8()?, r.u8()?]);
    let ports = match kind {
        0 => None,
        1 => Some(Ports::Preserving),
        2 => Some(Ports::Sequential {
            step: i32::from(step),
        }),
        3 => Some(Ports::Random),
        _ => return Err(FrameError::Body),
    };
    let filtering = match r.u8()? {
        0 => None,
        1 => Some(Filtering::EndpointIndependent),
        2 => Some(Filtering::AddressDependent),
        3 => Some(Filtering::AddressAndPortDependent),
        _ => return Err(FrameError::Body),
    };
    Ok(NatInfo {
        mapping,
        ports,
        filtering,
        udp: None,
    })
}

fn parse_candidates(r: &mut Reader) -> Result<Vec<Candidate>, FrameError> {
    let n = usize::from(r.u8()?);
    if n > MAX_CANDIDATES {
        return Err(FrameError::TooManyCandidates);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = match r.u8()? {
            1 => CandidateKind::Host,
            2 => CandidateKind::ServerReflexive,
            3 => CandidateKind::PeerReflexive,
            _ => return Err(FrameError::Body),
        };
        let priority = r.u32()?;
        let ip: IpAddr = match r.u8()? {
            4 => Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).map_err(|_| FrameError::Body)?).into(),
            6 => Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).map_err(|_| FrameError::Body)?).into(),
            _ => return Err(FrameError::Body),
        };
        let port = u16::from_be_bytes([r.u8()?, r.u8()?]);
        if port == 0 || ip.is_unspecified() || ip.is_multicast() {
            return Err(FrameError::Body);
        }
        out.push(Candidate {
            kind,
            addr: SocketAddr::new(ip, port),
            priority,
        });
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Body);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let n = usize::from(self.u8()?);
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| FrameError::Body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::seeds::offer;
    use proptest::prelude::*;

    #[test]
    fn every_kind_round_trips() {
        let frames = crate::fuzzing::seeds::link_frames();
        assert_eq!(frames.len(), 11, "a frame kind without a sample");
        for f in frames {
            assert_eq!(Frame::parse(&f.emit()), Ok(f.clone()));
        }
        let path = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            Frame::emit_data(&path, b"x"),
            Frame::data(path, b"x".to_vec()).emit()
        );
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let good = Frame {
            path: [0; 8],
            body: Body::Offer(offer()),
        }
        .emit();
        assert_eq!(Frame::parse(&good[..5]), Err(FrameError::Short));
        assert_eq!(Frame::parse(&good[..good.len() - 1]), Err(FrameError::Body));
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(Frame::parse(&extra), Err(FrameError::Body));
        let mut version = good.clone();
        version[0] = 0xc1;
        assert_eq!(Frame::parse(&version), Err(FrameError::Version(1)));
        let mut kind = good;
        kind[1] = 99;
        assert_eq!(Frame::parse(&kind), Err(FrameError::Kind(99)));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Frame::parse(&bytes);
        }

        #[test]
        fn mutated_offers_never_panic(flip in 0usize..200, bit in 0u8..8) {
            let mut bytes = Frame { path: [3; 8], body: Body::Offer(offer()) }.emit();
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = Frame::parse(&bytes);
        }
    }
}
