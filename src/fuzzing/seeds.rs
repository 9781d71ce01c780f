//! Valid samples of every wire format: the starting corpus of the fuzz targets and the
//! randomized decoder tests, and the round-trip tests' inputs.

use crate::link::frame::{Body, Frame, Offer};
use crate::overlay::addr::RingAddr;
use crate::overlay::wire::{Message, Mode, Purpose, Record, Routed, RoutedBody, MAX_VALUE};
use crate::reach::candidate::{Candidate, Kind as CandidateKind};
use crate::reach::nat::{Filtering, Mapping, NatInfo, Ports};
use crate::reach::punch::Credentials;
use crate::secure::cert::Ca;
use crate::secure::noise::{Initiating, Local, Purpose as SecurePurpose};
use crate::secure::wire;

fn addr(byte: u8) -> RingAddr {
    RingAddr::from_bytes([byte; 20])
}

pub fn overlay_messages() -> Vec<Message> {
    let routed = |body| {
        Message::Routed(Routed {
            src: addr(1),
            dst: addr(2),
            mode: Mode::Closest,
            ttl: 40,
            hops: 3,
            uphill: true,
            body,
        })
    };
    vec![
        Message::Ping(7),
        Message::Pong(8),
        Message::Coord(crate::overlay::coords::Packed([0, 9, 255, 3, 0, 40, 12])),
        routed(RoutedBody::Ctm {
            token: 9,
            purpose: Purpose::Shortcut,
            reply_via: addr(3),
            candidates: vec![1, 2, 3],
        }),
        routed(RoutedBody::CtmReply {
            token: 9,
            candidates: vec![4],
            neighbours: vec![addr(5), addr(6)],
            coords: vec![crate::overlay::coords::Packed([1, 2, 3, 4, 5, 6, 7]); 3],
        }),
        routed(RoutedBody::DhtPut {
            key: addr(7),
            lease_s: 60,
            value: vec![0; MAX_VALUE],
        }),
        routed(RoutedBody::DhtGet { req: 1, key: addr(7) }),
        routed(RoutedBody::DhtValues {
            req: 1,
            values: vec![(30, b"v".to_vec()), (5, vec![])],
        }),
        routed(RoutedBody::App(b"hello".to_vec())),
        routed(RoutedBody::NeighboursRequest {
            req: 4,
            reply_via: addr(5),
        }),
        routed(RoutedBody::Via {
            to: addr(6),
            inner: Box::new(RoutedBody::App(b"x".to_vec())),
        }),
        routed(RoutedBody::NeighboursReply {
            req: 4,
            neighbours: vec![addr(9)],
        }),
        routed(RoutedBody::Broadcast {
            seq: 3,
            end: addr(8),
            payload: vec![1, 2],
        }),
        Message::Broadcast {
            origin: addr(1),
            seq: 2,
            start: addr(3),
            end: addr(4),
            payload: vec![5],
        },
        Message::Relay {
            to: addr(3),
            inner: Message::Ping(1).emit(),
        },
        Message::Relayed {
            from: addr(3),
            inner: Message::Pong(1).emit(),
        },
        Message::Unrelayed {
            to: addr(3),
            inner: Message::Ping(2).emit(),
        },
        Message::Replicate(vec![Record {
            point: addr(1),
            key: addr(2),
            lease_s: 3,
            value: vec![4],
        }]),
        Message::Bye,
        Message::Neighbours(vec![addr(1), addr(2)]),
        Message::Links(vec![addr(1).prefix(), addr(5).prefix(), u64::MAX]),
    ]
}

pub fn offer() -> Offer {
    Offer {
        attempt: 7,
        creds: Credentials {
            ufrag: "abcdefgh".into(),
            pwd: "0123456789abcdefghijklmn".into(),
        },
        nat: NatInfo {
            mapping: Some(Mapping::EndpointDependent),
            ports: Some(Ports::Sequential { step: -2 }),
            filtering: Some(Filtering::AddressAndPortDependent),
            udp: None,
        },
        candidates: vec![
            Candidate::new(CandidateKind::Host, "10.0.0.2:4000".parse().unwrap(), 1),
            Candidate::new(
                CandidateKind::ServerReflexive,
                "[2001:db8::7]:5000".parse().unwrap(),
                2,
            ),
        ],
    }
}

pub fn link_frames() -> Vec<Frame> {
    let path = [1, 2, 3, 4, 5, 6, 7, 8];
    let bodies = [
        Body::Data(vec![]),
        Body::Data(vec![0xc0; 1400]),
        Body::Offer(offer()),
        Body::Answer(offer()),
        Body::Candidates {
            attempt: 9,
            nat: offer().nat,
            candidates: offer().candidates,
        },
        Body::Ping(u64::MAX),
        Body::Pong(1),
        Body::Overlay(vec![0, 1, 2]),
        Body::Close,
        Body::Secure(wire::data_header(1, 2).to_vec()),
        Body::Revocation(b"RR".to_vec()),
    ];
    bodies.into_iter().map(|body| Frame { path, body }).collect()
}

/// The CA, member key seeds and group the secure samples use.
pub fn test_ca() -> Ca {
    Ca::from_seed("fuzz", [42; 32]).unwrap_or_else(|_| unreachable!("a valid group name"))
}

pub fn member(seed: u8) -> (crate::identity::NodeKey, Local) {
    let key = crate::identity::NodeKey::from_secret([seed; 32]);
    let jid = format!("m{seed}@fuzz.test")
        .parse()
        .unwrap_or_else(|_| unreachable!("a valid JID"));
    let cert = test_ca().sign(key.public_bytes(), &jid, u64::from(seed), 0, u64::MAX);
    let local = Local::new(key.secret_bytes(), &cert, 0);
    (key, local)
}

pub fn member_certs() -> Vec<Vec<u8>> {
    let jid = "alice@example.org"
        .parse()
        .unwrap_or_else(|_| unreachable!("a valid JID"));
    vec![test_ca().sign([7; 32], &jid, 1, 2, 3).emit()]
}

/// Init packets (IK toward member 2, and XX) from member 1, plus a data packet.
pub fn secure_packets() -> Vec<Vec<u8>> {
    let (_, alice) = member(1);
    let (bob, _) = member(2);
    let bob_key = bob.public_bytes();
    let mut out = Vec::new();
    for remote in [Some(&bob_key), None] {
        if let Ok((_, packet)) = Initiating::start(
            &alice,
            SecurePurpose::Link,
            remote,
            5,
            [3; 32],
            1,
            &[b"early".to_vec()],
        ) {
            out.push(packet);
        }
    }
    let mut data = wire::data_header(5, 0).to_vec();
    data.extend_from_slice(&[0; 40]);
    out.push(data);
    out.push(wire::response(1, 2, &[0; 48]));
    out.push(wire::final_message(1, &[0; 64]));
    out.push(wire::cookie(1, &[7; wire::COOKIE_LEN]));
    if let Some(init) = out.first().cloned() {
        out.push(wire::with_cookie(&init, &[7; wire::COOKIE_LEN]));
    }
    out
}

/// XML payloads of the XMPP transport, serialized.
pub fn xmpp_payloads() -> Vec<Vec<u8>> {
    use ringlet_xmpp::wire::relay::{Frag, RelayFrame};
    let frame = RelayFrame {
        stream: 3,
        seq: 9,
        frag: Frag { index: 0, count: 2 },
        data: vec![1, 2, 3, 0xff],
    };
    let mut xml = Vec::new();
    let _ = frame.emit().write_to(&mut xml);
    vec![
        xml,
        b"<addresses xmlns='urn:ringlet:rendezvous:0' ns='0123456789abcdef'/>".to_vec(),
        b"<services xmlns='urn:xmpp:extdisco:2'><service type='stun' host='h' port='3478' transport='udp'/></services>".to_vec(),
        b"<overlay xmlns='urn:ringlet:overlay:0' ns='0123456789abcdef' node='0000000000000000000000000000000000000000'/>".to_vec(),
    ]
}

pub fn revocations() -> Vec<Vec<u8>> {
    use crate::secure::revocation::{Revocation, Target};
    let ca = test_ca();
    [
        Target::User("alice@example.org".into()),
        Target::Serial(7),
        Target::NodeKey([9; 32]),
    ]
    .into_iter()
    .map(|t| Revocation::sign(&ca, t, 1).emit())
    .collect()
}

/// Fragments of a record (`link::fragment`): a middle piece and the short last one.
pub fn fragments() -> Vec<Vec<u8>> {
    let record: Vec<u8> = (0..3_000u32).map(|i| i as u8).collect();
    let joined = crate::link::fragment::cut(&[7; 8], 1, &record, 1_000).expect("three pieces");
    joined.chunks(1_000).map(<[u8]>::to_vec).collect()
}
