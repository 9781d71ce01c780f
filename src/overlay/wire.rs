//! Overlay messages (version 0): what ring nodes say to each other inside link data frames.
//!
//! ```text
//! byte 0   version (0)
//! byte 1   kind: 1 ping, 2 pong, 3 routed, 4 broadcast, 5 relay, 6 replicate, 7 bye,
//!          8 neighbours, 9 relayed, 10 links, 11 unrelayed, 12 coordinate
//! ping/pong   nonce u32
//! routed      src 20, dst 20, mode u8 (0 exact, 1 closest, 2 path, 3 right, 4 left), ttl u8, hops u8, flags u8, then a routed body:
//!             kind u8 (1 ctm, 2 ctm reply, 3 dht put, 4 dht get, 5 dht values, 6 app,
//!             7 neighbours request, 8 neighbours reply, 9 broadcast, 10 via: to 20 and one
//!             body that is not a via) and its fields
//! broadcast   origin 20, seq u32, start 20, end 20, payload (u16 length)
//! relay       to 20, inner message (a tunnel end asks the common neighbour to pass it on)
//! relayed     from 20, inner message (the common neighbour passing it on)
//! replicate   count u8, then per record: point 20, key 20, lease seconds u32, value (u16 len)
//! bye         nothing
//! neighbours  count u8, addresses 20 each
//! links       count u8, address prefixes (top 8 bytes) of the sender's routing links
//! unrelayed   to 20, inner message (the common neighbour handing back what it cannot pass on)
//! coordinate  the sender's network coordinate (7 bytes, `coords::Packed`)
//! ```
//! A ctm reply ends with the coordinates of its sender and of each neighbour it lists, in
//! order (count u8, 0 when it sends none).
//! Integers are big-endian. Parsing never panics; anything short, long or unknown is an error.

use thiserror::Error;

use super::addr::RingAddr;
use super::coords::{Packed, WIRE_LEN as COORD_LEN};

pub const VERSION: u8 = 0;
/// Largest DHT value.
pub const MAX_VALUE: usize = 1024;
/// Largest opaque candidate blob carried by a CTM.
pub const MAX_CANDIDATES: usize = 1024;
/// Most addresses in one neighbour list.
pub const MAX_NEIGHBOURS: usize = 16;
/// Most address prefixes in one links message.
pub const MAX_LINKS: usize = 64;
/// Most records in one replicate message and values in one DHT answer.
pub const MAX_RECORDS: usize = 16;
/// Largest app or broadcast payload.
pub const MAX_PAYLOAD: usize = 60_000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("overlay message too short")]
    Short,
    #[error("unsupported overlay message version {0}")]
    Version(u8),
    #[error("unknown overlay message kind {0}")]
    Kind(u8),
    #[error("unknown routing mode {0}")]
    Mode(u8),
    #[error("{0} longer than allowed")]
    TooLong(&'static str),
    #[error("trailing bytes after overlay message")]
    Trailing,
}

/// Where a routed message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only at the node whose address is `dst`.
    Exact,
    /// At the node closest to `dst` (never back at the source unless it is alone).
    Closest,
    /// At every node on the way, and at the last one.
    Path,
    /// At the first node clockwise from `dst` (its successor, or the node at `dst`).
    Right,
    /// At the first node counter-clockwise from `dst` (its predecessor, or the node at `dst`).
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub src: RingAddr,
    pub dst: RingAddr,
    pub mode: Mode,
    pub ttl: u8,
    pub hops: u8,
    /// The one uphill step annealing allows has been taken.
    pub uphill: bool,
    pub body: RoutedBody,
}

/// Why a node asks another to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Near,
    Shortcut,
    Leaf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub point: RingAddr,
    pub key: RingAddr,
    pub lease_s: u32,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutedBody {
    /// `reply_via`: a link of the requester (its first hop) the reply may be sent through, so
    /// that it arrives even where greedy routing cannot reach the requester yet.
    Ctm {
        token: u32,
        purpose: Purpose,
        reply_via: RingAddr,
        candidates: Vec<u8>,
    },
    CtmReply {
        token: u32,
        candidates: Vec<u8>,
        neighbours: Vec<RingAddr>,
        /// The sender's network coordinate, then each neighbour's (empty: none sent).
        coords: Vec<Packed>,
    },
    /// Stores `value` under `key` at the replica point `dst`; a zero lease removes it.
    DhtPut {
        key: RingAddr,
        lease_s: u32,
        value: Vec<u8>,
    },
    DhtGet {
        req: u32,
        key: RingAddr,
    },
    /// Values with their remaining lease in seconds.
    DhtValues {
        req: u32,
        values: Vec<(u32, Vec<u8>)>,
    },
    App(Vec<u8>),
    NeighboursRequest {
        req: u32,
        reply_via: RingAddr,
    },
    NeighboursReply {
        req: u32,
        neighbours: Vec<RingAddr>,
    },
    /// A bounded broadcast on its way to the first node of [dst, end).
    Broadcast {
        seq: u32,
        end: RingAddr,
        payload: Vec<u8>,
    },
    /// Routed to `dst`, which passes `inner` on to its link `to` (replies to a requester that
    /// greedy routing cannot reach yet).
    Via {
        to: RingAddr,
        inner: Box<RoutedBody>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ping(u32),
    Pong(u32),
    Routed(Routed),
    Broadcast {
        origin: RingAddr,
        seq: u32,
        start: RingAddr,
        end: RingAddr,
        payload: Vec<u8>,
    },
    /// Tunnel traffic for the relay to pass to `to`.
    Relay {
        to: RingAddr,
        inner: Vec<u8>,
    },
    /// Tunnel traffic the relay passes on from `from`.
    Relayed {
        from: RingAddr,
        inner: Vec<u8>,
    },
    /// Tunnel traffic handed back by the relay: it has no link to `to` (any more).
    Unrelayed {
        to: RingAddr,
        inner: Vec<u8>,
    },
    Replicate(Vec<Record>),
    Bye,
    Neighbours(Vec<RingAddr>),
    /// The sender's routing links as address prefixes (`RingAddr::prefix`): lookahead.
    Links(Vec<u64>),
    /// The sender's network coordinate (told at link-up).
    Coord(Packed),
}

impl Message {
    pub fn emit(&self) -> Vec<u8> {
        // Most messages fit: growing from one byte would reallocate five times.
        let mut out = Vec::with_capacity(96);
        out.push(VERSION);
        match self {
            Message::Ping(n) => {
                out.push(1);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Message::Pong(n) => {
                out.push(2);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Message::Routed(r) => {
                out.push(3);
                emit_routed(r, &mut out);
            }
            Message::Broadcast {
                origin,
                seq,
                start,
                end,
                payload,
            } => {
                out.push(4);
                out.extend_from_slice(&origin.to_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&start.to_bytes());
                out.extend_from_slice(&end.to_bytes());
                put_blob(&mut out, payload);
            }
            Message::Relay { to: peer, inner }
            | Message::Relayed { from: peer, inner }
            | Message::Unrelayed { to: peer, inner } => {
                out.push(match self {
                    Message::Relay { .. } => 5,
                    Message::Relayed { .. } => 9,
                    _ => 11,
                });
                out.extend_from_slice(&peer.to_bytes());
                out.extend_from_slice(inner);
            }
            Message::Replicate(records) => {
                out.push(6);
                out.push(records.len() as u8);
                for r in records {
                    out.extend_from_slice(&r.point.to_bytes());
                    out.extend_from_slice(&r.key.to_bytes());
                    out.extend_from_slice(&r.lease_s.to_be_bytes());
                    put_blob(&mut out, &r.value);
                }
            }
            Message::Bye => out.push(7),
            Message::Neighbours(list) => {
                out.push(8);
                put_addrs(&mut out, list);
            }
            Message::Links(prefixes) => {
                out.push(10);
                out.push(prefixes.len() as u8);
                for p in prefixes {
                    out.extend_from_slice(&p.to_be_bytes());
                }
            }
            Message::Coord(c) => {
                out.push(12);
                out.extend_from_slice(&c.0);
            }
        }
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Message, Error> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let msg = match r.u8()? {
            1 => Message::Ping(r.u32()?),
            2 => Message::Pong(r.u32()?),
            3 => Message::Routed(parse_routed(&mut r)?),
            4 => Message::Broadcast {
                origin: r.addr()?,
                seq: r.u32()?,
                start: r.addr()?,
                end: r.addr()?,
                payload: r.blob(MAX_PAYLOAD, "broadcast payload")?,
            },
            5 => {
                let to = r.addr()?;
                Message::Relay {
                    to,
                    inner: std::mem::take(&mut r.0).to_vec(),
                }
            }
            9 => {
                let from = r.addr()?;
                Message::Relayed {
                    from,
                    inner: std::mem::take(&mut r.0).to_vec(),
                }
            }
            11 => {
                let to = r.addr()?;
                Message::Unrelayed {
                    to,
                    inner: std::mem::take(&mut r.0).to_vec(),
                }
            }
            6 => {
                let count = r.u8()? as usize;
                if count > MAX_RECORDS {
                    return Err(Error::TooLong("replicate"));
                }
                let mut records = Vec::with_capacity(count);
                for _ in 0..count {
                    records.push(Record {
                        point: r.addr()?,
                        key: r.addr()?,
                        lease_s: r.u32()?,
                        value: r.blob(MAX_VALUE, "value")?,
                    });
                }
                Message::Replicate(records)
            }
            7 => Message::Bye,
            8 => Message::Neighbours(r.addrs()?),
            10 => {
                let count = r.u8()? as usize;
                if count > MAX_LINKS {
                    return Err(Error::TooLong("links"));
                }
                Message::Links((0..count).map(|_| r.u64()).collect::<Result<_, _>>()?)
            }
            12 => Message::Coord(r.coord()?),
            kind => return Err(Error::Kind(kind)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Where a routed message's body tag sits: after version, kind, src, dst, mode, ttl, hops and
/// uphill.
const ROUTED_BODY_AT: usize = 2 + 2 * 20 + 4;

/// An emitted message's kind byte and, for a routed one, its body's tag: what the ring counts
/// its traffic by, read without parsing the whole message.
pub fn kind_and_body(bytes: &[u8]) -> (Option<u8>, Option<u8>) {
    let kind = bytes.get(1).copied();
    let body = (kind == Some(3))
        .then(|| bytes.get(ROUTED_BODY_AT).copied())
        .flatten();
    (kind, body)
}

fn emit_routed(r: &Routed, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.src.to_bytes());
    out.extend_from_slice(&r.dst.to_bytes());
    out.push(match r.mode {
        Mode::Exact => 0,
        Mode::Closest => 1,
        Mode::Path => 2,
        Mode::Right => 3,
        Mode::Left => 4,
    });
    out.push(r.ttl);
    out.push(r.hops);
    out.push(r.uphill as u8);
    emit_body(&r.body, out);
}

fn emit_body(body: &RoutedBody, out: &mut Vec<u8>) {
    match body {
        RoutedBody::Ctm {
            token,
            purpose,
            reply_via,
            candidates,
        } => {
            out.push(1);
            out.extend_from_slice(&token.to_be_bytes());
            out.push(match purpose {
                Purpose::Near => 0,
                Purpose::Shortcut => 1,
                Purpose::Leaf => 2,
            });
            out.extend_from_slice(&reply_via.to_bytes());
            put_blob(out, candidates);
        }
        RoutedBody::CtmReply {
            token,
            candidates,
            neighbours,
            coords,
        } => {
            out.push(2);
            out.extend_from_slice(&token.to_be_bytes());
            put_blob(out, candidates);
            put_addrs(out, neighbours);
            out.push(coords.len() as u8);
            for c in coords {
                out.extend_from_slice(&c.0);
            }
        }
        RoutedBody::DhtPut { key, lease_s, value } => {
            out.push(3);
            out.extend_from_slice(&key.to_bytes());
            out.extend_from_slice(&lease_s.to_be_bytes());
            put_blob(out, value);
        }
        RoutedBody::DhtGet { req, key } => {
            out.push(4);
            out.extend_from_slice(&req.to_be_bytes());
            out.extend_from_slice(&key.to_bytes());
        }
        RoutedBody::DhtValues { req, values } => {
            out.push(5);
            out.extend_from_slice(&req.to_be_bytes());
            out.push(values.len() as u8);
            for (lease, value) in values {
                out.extend_from_slice(&lease.to_be_bytes());
                put_blob(out, value);
            }
        }
        RoutedBody::App(payload) => {
            out.push(6);
            put_blob(out, payload);
        }
        RoutedBody::NeighboursRequest { req, reply_via } => {
            out.push(7);
            out.extend_from_slice(&req.to_be_bytes());
            out.extend_from_slice(&reply_via.to_bytes());
        }
        RoutedBody::NeighboursReply { req, neighbours } => {
            out.push(8);
            out.extend_from_slice(&req.to_be_bytes());
            put_addrs(out, neighbours);
        }
        RoutedBody::Broadcast { seq, end, payload } => {
            out.push(9);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&end.to_bytes());
            put_blob(out, payload);
        }
        RoutedBody::Via { to, inner } => {
            out.push(10);
            out.extend_from_slice(&to.to_bytes());
            emit_body(inner, out);
        }
    }
}

fn parse_routed(r: &mut Reader) -> Result<Routed, Error> {
    let src = r.addr()?;
    let dst = r.addr()?;
    let mode = match r.u8()? {
        0 => Mode::Exact,
        1 => Mode::Closest,
        2 => Mode::Path,
        3 => Mode::Right,
        4 => Mode::Left,
        m => return Err(Error::Mode(m)),
    };
    let ttl = r.u8()?;
    let hops = r.u8()?;
    let uphill = r.u8()? & 1 == 1;
    let body = parse_body(r, true)?;
    Ok(Routed {
        src,
        dst,
        mode,
        ttl,
        hops,
        uphill,
        body,
    })
}

/// One routed body; `outer`: a `Via` may wrap it (but not another `Via`).
fn parse_body(r: &mut Reader, outer: bool) -> Result<RoutedBody, Error> {
    let body = match r.u8()? {
        1 => RoutedBody::Ctm {
            token: r.u32()?,
            purpose: match r.u8()? {
                0 => Purpose::Near,
                1 => Purpose::Shortcut,
                2 => Purpose::Leaf,
                p => return Err(Error::Kind(p)),
            },
            reply_via: r.addr()?,
            candidates: r.blob(MAX_CANDIDATES, "candidates")?,
        },
        2 => {
            let (token, candidates, neighbours) =
                (r.u32()?, r.blob(MAX_CANDIDATES, "candidates")?, r.addrs()?);
            let count = r.u8()? as usize;
            if count > neighbours.len() + 1 {
                return Err(Error::TooLong("coordinates"));
            }
            let coords = (0..count).map(|_| r.coord()).collect::<Result<_, _>>()?;
            RoutedBody::CtmReply {
                token,
                candidates,
                neighbours,
                coords,
            }
        }
        3 => RoutedBody::DhtPut {
            key: r.addr()?,
            lease_s: r.u32()?,
            value: r.blob(MAX_VALUE, "value")?,
        },
        4 => RoutedBody::DhtGet {
            req: r.u32()?,
            key: r.addr()?,
        },
        5 => {
            let req = r.u32()?;
            let count = r.u8()? as usize;
            if count > MAX_RECORDS {
                return Err(Error::TooLong("dht values"));
            }
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                values.push((r.u32()?, r.blob(MAX_VALUE, "value")?));
            }
            RoutedBody::DhtValues { req, values }
        }
        6 => RoutedBody::App(r.blob(MAX_PAYLOAD, "app payload")?),
        7 => RoutedBody::NeighboursRequest {
            req: r.u32()?,
            reply_via: r.addr()?,
        },
        8 => RoutedBody::NeighboursReply {
            req: r.u32()?,
            neighbours: r.addrs()?,
        },
        9 => RoutedBody::Broadcast {
            seq: r.u32()?,
            end: r.addr()?,
            payload: r.blob(MAX_PAYLOAD, "broadcast payload")?,
        },
        10 if outer => RoutedBody::Via {
            to: r.addr()?,
            inner: Box::new(parse_body(r, false)?),
        },
        kind => return Err(Error::Kind(kind)),
    };
    Ok(body)
}

fn put_blob(out: &mut Vec<u8>, blob: &[u8]) {
    out.extend_from_slice(&(blob.len() as u16).to_be_bytes());
    out.extend_from_slice(blob);
}

fn put_addrs(out: &mut Vec<u8>, list: &[RingAddr]) {
    out.push(list.len() as u8);
    for a in list {
        out.extend_from_slice(&a.to_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        if self.0.len() < n {
            return Err(Error::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn coord(&mut self) -> Result<Packed, Error> {
        let mut c = [0u8; COORD_LEN];
        c.copy_from_slice(self.take(COORD_LEN)?);
        Ok(Packed(c))
    }

    fn addr(&mut self) -> Result<RingAddr, Error> {
        let mut a = [0u8; 20];
        a.copy_from_slice(self.take(20)?);
        Ok(RingAddr::from_bytes(a))
    }

    fn blob(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, Error> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(Error::TooLong(what));
        }
        Ok(self.take(len)?.to_vec())
    }

    fn addrs(&mut self) -> Result<Vec<RingAddr>, Error> {
        let count = self.u8()? as usize;
        if count > MAX_NEIGHBOURS {
            return Err(Error::TooLong("neighbour list"));
        }
        (0..count).map(|_| self.addr()).collect()
    }

    fn finish(&self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::addr::filled as addr;
    use proptest::prelude::*;

    #[test]
    fn every_message_round_trips() {
        for msg in crate::fuzzing::seeds::overlay_messages() {
            assert_eq!(Message::parse(&msg.emit()), Ok(msg));
        }
    }

    #[test]
    fn kind_and_body_read_the_tags_emit_wrote() {
        let mut routed = 0;
        for msg in crate::fuzzing::seeds::overlay_messages() {
            let bytes = msg.emit();
            let body = match &msg {
                Message::Routed(r) => {
                    routed += 1;
                    let mut alone = Vec::new();
                    emit_body(&r.body, &mut alone);
                    Some(alone[0])
                }
                _ => None,
            };
            assert_eq!(kind_and_body(&bytes), (Some(bytes[1]), body), "{msg:?}");
        }
        assert!(routed > 0, "the seeds hold routed messages");
        assert_eq!(kind_and_body(&[0]), (None, None));
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        assert_eq!(Message::parse(&[]), Err(Error::Short));
        assert_eq!(Message::parse(&[1, 1]), Err(Error::Version(1)));
        assert_eq!(Message::parse(&[0, 99]), Err(Error::Kind(99)));
        let mut ping = Message::Ping(1).emit();
        ping.push(0);
        assert_eq!(Message::parse(&ping), Err(Error::Trailing));
        let routed = |body| {
            Message::Routed(Routed {
                src: addr(1),
                dst: addr(2),
                mode: Mode::Exact,
                ttl: 1,
                hops: 0,
                uphill: false,
                body,
            })
        };
        let mut put = routed(RoutedBody::DhtPut {
            key: addr(3),
            lease_s: 1,
            value: vec![],
        })
        .emit();
        let len = put.len();
        put[len - 2..].copy_from_slice(&((MAX_VALUE + 1) as u16).to_be_bytes());
        assert_eq!(Message::parse(&put), Err(Error::TooLong("value")));
        let mut links = Message::Links(vec![7; MAX_LINKS + 1]).emit();
        assert_eq!(Message::parse(&links), Err(Error::TooLong("links")));
        links.truncate(3 + 8 * MAX_LINKS);
        links[2] = MAX_LINKS as u8;
        assert_eq!(Message::parse(&links), Ok(Message::Links(vec![7; MAX_LINKS])));
        // A ctm reply's coordinates: its sender's and one per neighbour at most.
        let reply = |coords: usize| {
            routed(RoutedBody::CtmReply {
                token: 1,
                candidates: vec![],
                neighbours: vec![addr(3)],
                coords: vec![Packed([1; COORD_LEN]); coords],
            })
        };
        assert!(Message::parse(&reply(2).emit()).is_ok());
        assert_eq!(
            Message::parse(&reply(3).emit()),
            Err(Error::TooLong("coordinates"))
        );
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::parse(&bytes);
        }

        #[test]
        fn truncations_are_errors(cut in 0usize..200) {
            for msg in crate::fuzzing::seeds::overlay_messages() {
                let bytes = msg.emit();
                if cut < bytes.len() && !matches!(
                    msg,
                    Message::Relay { .. } | Message::Relayed { .. } | Message::Unrelayed { .. }
                ) {
                    prop_assert!(Message::parse(&bytes[..cut]).is_err());
                }
            }
        }
    }
}
