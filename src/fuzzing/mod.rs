//! Decoder exercises shared by the fuzz targets (`fuzz/`, cargo-fuzz) and the randomized
//! decoder tests of the normal suite (`tests/decoders.rs`). Each takes untrusted bytes, runs
//! one decoder and panics only when an invariant breaks: a decoded value must survive
//! emit → parse unchanged, a certificate must be its own canonical encoding, a secure
//! handshake or datagram made of unauthenticated bytes must be refused.

#![allow(clippy::disallowed_methods)] // a real Instant is the exercises' virtual epoch

pub mod seeds;

use std::time::Instant;

use crate::link::frame::Frame;
use crate::overlay::wire::Message;
use crate::reach::stun_msg;
use crate::secure::cert::MemberCert;
use crate::secure::noise::{respond, Purpose};
use crate::secure::transport::{Cipher, Transport};
use crate::secure::wire::Packet;

/// One decoder's exercise.
pub type Exercise = fn(&[u8]);

/// Every exercise with its name (the fuzz target's) and seed inputs.
pub fn exercises() -> Vec<(&'static str, Exercise, Vec<Vec<u8>>)> {
    vec![
        (
            "link_frame",
            link_frame as Exercise,
            seeds::link_frames().iter().map(Frame::emit).collect(),
        ),
        (
            "overlay_message",
            overlay_message,
            seeds::overlay_messages().iter().map(Message::emit).collect(),
        ),
        ("secure_packet", secure_packet, seeds::secure_packets()),
        ("handshake", handshake, seeds::secure_packets()),
        ("member_cert", member_cert, seeds::member_certs()),
        ("revocation", revocation, seeds::revocations()),
        (
            "stun",
            stun,
            vec![
                stun_msg::binding_request([1; 12], None),
                stun_msg::binding_request([2; 12], Some((true, false))),
            ],
        ),
        ("xmpp_payload", xmpp_payload, seeds::xmpp_payloads()),
        ("fragment", fragment, seeds::fragments()),
    ]
}

/// Feeds bytes to a reassembly as a fragment, then as each other piece its header names: no
/// panic, and a record that comes out fits the room records have.
pub fn fragment(data: &[u8]) {
    use crate::link::fragment::{Reassembly, MAX_RECORD};
    let mut r = Reassembly::default();
    let (now, from) = (Instant::now(), std::net::SocketAddr::from(([10, 0, 0, 1], 9)));
    let count = data.get(15).map_or(1, |&c| c.clamp(1, 64));
    for index in 0..count {
        let mut piece = data.to_vec();
        if let Some(i) = piece.get_mut(14) {
            *i = index;
        }
        if let Ok(Some(record)) = r.add(now, 0, from, &piece) {
            assert!(record.len() <= MAX_RECORD, "a {}-byte record", record.len());
        }
    }
}

pub fn link_frame(data: &[u8]) {
    if let Ok(frame) = Frame::parse(data) {
        assert_eq!(
            Frame::parse(&frame.emit()),
            Ok(frame),
            "frame does not round-trip"
        );
    }
}

pub fn overlay_message(data: &[u8]) {
    if let Ok(msg) = Message::parse(data) {
        assert_eq!(
            Message::parse(&msg.emit()),
            Ok(msg),
            "overlay message does not round-trip"
        );
    }
}

pub fn member_cert(data: &[u8]) {
    if let Ok(cert) = MemberCert::parse(data) {
        assert_eq!(
            cert.emit(),
            data,
            "a certificate decoded from bytes it does not encode to"
        );
    }
}

pub fn revocation(data: &[u8]) {
    if let Ok(r) = crate::secure::revocation::Revocation::parse(data) {
        assert_eq!(
            r.emit(),
            data,
            "a revocation decoded from bytes it does not encode to"
        );
    }
}

pub fn stun(data: &[u8]) {
    let _ = stun_msg::decode(data);
}

/// Parses a secure packet; a data packet is opened by a live session and must be refused.
pub fn secure_packet(data: &[u8]) {
    if let Ok(Packet::Data {
        counter,
        header,
        sealed,
        ..
    }) = Packet::parse(data)
    {
        let now = Instant::now();
        let mut t = Transport::new(now, Cipher::ChaCha20Poly1305, &mut [1; 32], &mut [2; 32]);
        let mut buf = sealed.to_vec();
        assert!(
            t.open(now, header, counter, &mut buf).is_err(),
            "forged datagram opened"
        );
    }
}

/// Answers an init packet as member 2 (who knows member 1): unauthenticated bytes must not
/// complete a handshake, except the one seed that is a real init from member 1.
pub fn handshake(data: &[u8]) {
    let Ok(Packet::Init {
        pattern,
        sender,
        noise,
        ..
    }) = Packet::parse(data)
    else {
        return;
    };
    let (_, bob) = seeds::member(2);
    let (alice, _) = seeds::member(1);
    let r = respond(
        Instant::now(),
        &bob,
        Purpose::Link,
        pattern,
        sender,
        noise,
        9,
        [4; 32],
        |_| Ok(()),
    );
    if let Ok(crate::secure::noise::Responded::Done(est, _)) = r {
        assert_eq!(
            est.peer.key,
            alice.public_bytes(),
            "an IK init completed for a key nobody proved"
        );
    }
}

/// Parses XML as each XMPP payload of ours; a relay frame must round-trip.
pub fn xmpp_payload(data: &[u8]) {
    use ringlet_xmpp::wire::{addresses, extdisco, join, overlay, relay};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(elem) = text.parse::<ringlet_xmpp::Element>() else {
        return;
    };
    if let Ok(frame) = relay::RelayFrame::parse(&elem, 1 << 16) {
        assert_eq!(
            relay::RelayFrame::parse(&frame.emit(), 1 << 16),
            Ok(frame),
            "relay frame does not round-trip"
        );
    }
    let _ = addresses::AddressRequest::parse(&elem);
    let _ = addresses::AddressReply::parse(&elem);
    let _ = extdisco::parse(&elem);
    let _ = overlay::OverlayTag::parse(&elem);
    if let Ok(q) = join::Query::parse(&elem) {
        assert_eq!(
            join::Query::parse(&q.emit()),
            Ok(q),
            "join query does not round-trip"
        );
    }
    if let Ok(a) = join::Answer::parse(&elem) {
        assert_eq!(
            join::Answer::parse(&a.emit()),
            Ok(a),
            "join answer does not round-trip"
        );
    }
}
