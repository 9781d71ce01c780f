//! Handshake tests: two in-memory peers run IK and XX to the end and exchange datagrams;
//! strangers, borrowed certificates and tampered messages get nowhere.
#![allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch

use std::time::Instant;

use ringlet_xmpp::BareJid;

use super::cert::{Ca, CertError, MemberCert};
use super::noise::{respond, Established, HandshakeError, Initiating, Local, Purpose, Responded};
use super::transport::Cipher;
use super::wire::{self, Packet};
use super::{member_check, Expect};
use crate::identity::{NodeId, NodeKey};

const NOW_UNIX: u64 = 1_000;

struct Member {
    key: NodeKey,
    cert: MemberCert,
    jid: BareJid,
    /// The cipher flags its hellos carry (as if its CPU had AES instructions).
    ciphers: u8,
}

impl Member {
    fn new(ca: &Ca, seed: u8, jid: &str) -> Self {
        let key = NodeKey::from_secret([seed; 32]);
        let jid: BareJid = jid.parse().unwrap();
        let cert = ca.sign(key.public_bytes(), &jid, u64::from(seed), 0, 2_000);
        Member {
            key,
            cert,
            jid,
            ciphers: Cipher::HELLO_AES,
        }
    }

    fn local(&self) -> Local {
        Local::new(self.key.secret_bytes(), &self.cert, 0).with_cipher_flags(self.ciphers)
    }
}

fn ca() -> Ca {
    Ca::from_seed("friends", [42; 32]).unwrap()
}

/// Runs a whole handshake; `ik` uses the responder's known key.
fn handshake(a: &Member, b: &Member, ik: bool) -> Result<(Established, Established), HandshakeError> {
    let now = Instant::now();
    let (la, lb) = (a.local(), b.local());
    let (ca_a, ca_b) = (a.cert.ca, b.cert.ca);
    let remote = b.key.public_bytes();
    let early = [b"offer".to_vec()];
    let (init, packet) =
        Initiating::start(&la, Purpose::Link, ik.then_some(&remote), 11, [1; 32], 7, &early)?;
    let Ok(Packet::Init {
        pattern,
        sender,
        noise,
        ..
    }) = Packet::parse(&packet)
    else {
        panic!("not an init packet");
    };
    let b_expects = Expect {
        node: None,
        jid: Some(&a.jid),
        crl: None,
    };
    let responded = respond(
        now,
        &lb,
        Purpose::Link,
        pattern,
        sender,
        noise,
        22,
        [2; 32],
        member_check(&ca_b, NOW_UNIX, b_expects),
    )?;
    let a_expects = Expect {
        node: Some(b.key.node_id()),
        jid: Some(&b.jid),
        crl: None,
    };
    let (done, pending, response) = match responded {
        Responded::Done(est_b, response) => (Some(*est_b), None, response),
        Responded::Awaiting(responding, response) => (None, Some(responding), response),
    };
    let Ok(Packet::Response { sender, noise, .. }) = Packet::parse(&response) else {
        panic!("not a response");
    };
    let (est_a, finale) =
        init.on_response(now, &la, sender, noise, member_check(&ca_a, NOW_UNIX, a_expects))?;
    match (done, pending, finale) {
        (Some(est_b), None, None) => {
            assert_eq!(est_b.peer.early, early, "IK carries what waited");
            assert_eq!(est_b.peer.timestamp, 7);
            Ok((est_a, est_b))
        }
        (None, Some(responding), Some(finale)) => {
            let Ok(Packet::Final { noise, .. }) = Packet::parse(&finale) else {
                panic!("not a final message");
            };
            let est_b = responding.on_final(now, noise, member_check(&ca_b, NOW_UNIX, b_expects))?;
            assert!(
                est_b.peer.early.is_empty(),
                "XX sends nothing before it is encrypted"
            );
            assert_eq!(est_b.peer.timestamp, 7);
            Ok((est_a, est_b))
        }
        _ => panic!("IK takes one round trip, XX ends with a final message"),
    }
}

fn talk(a: &mut Established, b: &mut Established) {
    let now = Instant::now();
    let header = wire::data_header(a.remote_index, a.transport.next_counter());
    let mut buf = b"hello bob".to_vec();
    let counter = a.transport.seal(now, &header, &mut buf).unwrap();
    assert_eq!(b.local_index, a.remote_index);
    b.transport.open(now, &header, counter, &mut buf).unwrap();
    assert_eq!(buf, b"hello bob");
}

#[test]
fn sessions_use_aes_gcm_only_when_both_hellos_say_aes() {
    let ca = ca();
    let (mut alice, mut bob) = (
        Member::new(&ca, 1, "alice@a.example"),
        Member::new(&ca, 2, "bob@b.example"),
    );
    let aes = Cipher::HELLO_AES;
    for (a_flags, b_flags, expected) in [
        (aes, aes, Cipher::Aes256Gcm),
        (aes, 0, Cipher::ChaCha20Poly1305),
        (0, aes, Cipher::ChaCha20Poly1305),
        (0, 0, Cipher::ChaCha20Poly1305),
    ] {
        (alice.ciphers, bob.ciphers) = (a_flags, b_flags);
        for ik in [true, false] {
            let (mut a, mut b) = handshake(&alice, &bob, ik).unwrap();
            let what = format!("alice {a_flags}, bob {b_flags}, ik {ik}");
            assert_eq!(
                (a.transport.cipher(), b.transport.cipher()),
                (expected, expected),
                "{what}"
            );
            talk(&mut a, &mut b);
            talk(&mut b, &mut a);
        }
    }
}

#[test]
fn ik_and_xx_handshakes_prove_keys_exchange_certificates_and_carry_data() {
    let ca = ca();
    let (alice, bob) = (
        Member::new(&ca, 1, "alice@a.example"),
        Member::new(&ca, 2, "bob@b.example"),
    );
    for ik in [true, false] {
        let (mut a, mut b) = handshake(&alice, &bob, ik).unwrap();
        assert_eq!(a.peer.key, bob.key.public_bytes());
        assert_eq!(b.peer.key, alice.key.public_bytes());
        assert_eq!(b.peer.cert.user, "alice@a.example");
        assert_eq!(NodeId::of_public_key(&a.peer.key), bob.key.node_id());
        talk(&mut a, &mut b);
        talk(&mut b, &mut a);
    }
}

#[test]
fn a_node_of_another_group_cannot_complete_a_handshake() {
    let (ours, theirs) = (ca(), Ca::from_seed("friends", [7; 32]).unwrap());
    let alice = Member::new(&ours, 1, "alice@a.example");
    let mallory = Member::new(&theirs, 3, "mallory@m.example");
    for ik in [true, false] {
        assert_eq!(handshake(&mallory, &alice, ik).err(), Some(HandshakeError::Noise));
        assert_eq!(handshake(&alice, &mallory, ik).err(), Some(HandshakeError::Noise));
    }
}

#[test]
fn a_certificate_presented_by_another_key_is_refused() {
    let ca = ca();
    let alice = Member::new(&ca, 1, "alice@a.example");
    let mut thief = Member::new(&ca, 3, "alice@a.example");
    thief.cert = alice.cert.clone();
    for ik in [true, false] {
        assert_eq!(
            handshake(&thief, &alice, ik).err(),
            Some(HandshakeError::Refused(CertError::OtherNode))
        );
    }
}

#[test]
fn a_member_speaking_as_another_jid_or_with_an_expired_certificate_is_refused() {
    let ca = ca();
    let alice = Member::new(&ca, 1, "alice@a.example");
    let mut bob = Member::new(&ca, 2, "bob@b.example");
    bob.jid = "eve@b.example".parse().unwrap();
    assert!(matches!(
        handshake(&alice, &bob, true),
        Err(HandshakeError::Refused(CertError::OtherUser { .. }))
    ));
    let mut late = Member::new(&ca, 4, "carol@c.example");
    late.cert = ca.sign(late.key.public_bytes(), &late.jid, 4, 0, NOW_UNIX - 1);
    assert_eq!(
        handshake(&alice, &late, false).err(),
        Some(HandshakeError::Refused(CertError::Expired))
    );
}

#[test]
fn a_tampered_init_is_refused_without_a_response() {
    let ca = ca();
    let (alice, bob) = (
        Member::new(&ca, 1, "alice@a.example"),
        Member::new(&ca, 2, "bob@b.example"),
    );
    let remote = bob.key.public_bytes();
    let (_, packet) =
        Initiating::start(&alice.local(), Purpose::Link, Some(&remote), 1, [1; 32], 1, &[]).unwrap();
    for i in (6..packet.len()).step_by(7) {
        let mut p = packet.clone();
        p[i] ^= 0x20;
        let Ok(Packet::Init {
            pattern,
            sender,
            noise,
            ..
        }) = Packet::parse(&p)
        else {
            panic!("header untouched");
        };
        let r = respond(
            Instant::now(),
            &bob.local(),
            Purpose::Link,
            pattern,
            sender,
            noise,
            2,
            [2; 32],
            |_| Ok(()),
        );
        assert!(r.is_err(), "byte {i} flipped and the init was accepted");
    }
    // An end-to-end init is no link init: the prologue differs.
    let (_, e2e) = Initiating::start(
        &alice.local(),
        Purpose::EndToEnd,
        Some(&remote),
        1,
        [1; 32],
        1,
        &[],
    )
    .unwrap();
    let Ok(Packet::Init {
        pattern,
        sender,
        noise,
        ..
    }) = Packet::parse(&e2e)
    else {
        panic!("init");
    };
    let r = respond(
        Instant::now(),
        &bob.local(),
        Purpose::Link,
        pattern,
        sender,
        noise,
        2,
        [2; 32],
        |_| Ok(()),
    );
    assert!(matches!(r, Err(HandshakeError::Noise)));
}
