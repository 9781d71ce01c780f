//! Big app datagrams over a direct path: one sealed record in fragments, rebuilt and opened
//! once; only to peers whose hello says they take fragments.

use super::secure::{build_secure_world, kind_of, secure_world, MEMBER_0, MEMBER_1};
use super::*;
use crate::link::fragment::{self, KIND_FRAGMENT};
use crate::link::{Fragments, SEALED_OVERHEAD};
use crate::secure::noise::HELLO_FRAGMENTS;
use crate::secure::transport::Cipher;

const MAX_DATAGRAM: usize = 1_349;

fn big(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A world whose two members went direct.
fn direct(hello_flags: [Option<u8>; 2]) -> World {
    let mut w = build_secure_world(
        Kind::PortRestricted,
        Kind::PortRestricted,
        [MEMBER_0, MEMBER_1],
        &Config::default(),
        &[],
        hello_flags,
    );
    w.send(0, b"hello");
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    w.run_for(Duration::from_millis(500));
    w
}

/// Node 0 sends node 1 a `len`-byte app datagram in fragments, if it may.
fn send_big(w: &mut World, len: usize) -> Option<Fragments> {
    let (now, peer) = (w.now, w.nodes[1].id);
    w.nodes[0]
        .links
        .send_fragmented(now, &peer, 7, &[&big(len)], MAX_DATAGRAM)
}

/// Each fragment in a buffer of its own.
fn apart(f: &Fragments) -> Vec<Vec<u8>> {
    f.data.chunks(f.size).map(<[u8]>::to_vec).collect()
}

/// Sends node 0's fragments in the given order (indices), through the NATs.
fn deliver(w: &mut World, f: &Fragments, order: impl IntoIterator<Item = usize>) {
    let pieces = apart(f);
    for i in order {
        w.route(0, f.socket, f.to, pieces[i].clone());
    }
    w.run_for(Duration::from_millis(100));
}

#[test]
fn a_big_datagram_crosses_as_fragments_of_one_sealed_record_in_any_order() {
    let mut w = direct([None, None]);
    let peer = w.nodes[1].id;
    let payload = big(60_000);
    let now = w.now;
    let fragments = w.nodes[0]
        .links
        .send_fragmented(now, &peer, 7, &[&payload[..2], &payload[2..]], MAX_DATAGRAM)
        .expect("a direct path, and both sides take fragments");
    let piece = MAX_DATAGRAM - fragment::HEADER_LEN;
    let pieces = apart(&fragments);
    assert_eq!(pieces.len(), (60_000 + SEALED_OVERHEAD).div_ceil(piece));
    assert_eq!(fragments.size, MAX_DATAGRAM);
    assert!(pieces.iter().all(|p| kind_of(p) == KIND_FRAGMENT));
    let path = w.nodes[0].links.path(&peer);
    assert!(matches!(path, Some(Path::Direct { remote, .. }) if remote == fragments.to));
    // Backwards.
    deliver(&mut w, &fragments, (0..pieces.len()).rev());
    let mut expected = vec![7];
    expected.extend_from_slice(&payload);
    assert_eq!(w.nodes[1].got.last(), Some(&expected));
    // What crossed the wire is sealed: no run of the payload is visible.
    let probe = &payload[1_000..1_064];
    assert!(!w.seen.iter().any(|f| f.windows(probe.len()).any(|x| x == probe)));
    let c = w.nodes[1].links.counters();
    assert_eq!((c.fragments_refused, c.records_lost, c.secure_dropped), (0, 0, 0));
}

#[test]
fn a_record_with_a_forged_or_missing_piece_is_not_delivered() {
    let mut w = direct([None, None]);
    let got_before = w.nodes[1].got.len();
    let mut forged = send_big(&mut w, 20_000).unwrap();
    // The last byte of the fourth piece.
    forged.data[4 * MAX_DATAGRAM - 1] ^= 1;
    let n = apart(&forged).len();
    deliver(&mut w, &forged, 0..n);
    assert_eq!(
        w.nodes[1].links.counters().secure_dropped,
        1,
        "the record failed to open"
    );
    let short = send_big(&mut w, 20_000).unwrap();
    deliver(&mut w, &short, (0..n).filter(|&i| i != 5));
    w.run_for(fragment::PARTIAL_TTL);
    // The next fragment that arrives finds the unfinished record out of time.
    let next = send_big(&mut w, 20_000).unwrap();
    deliver(&mut w, &next, 0..n);
    assert_eq!(w.nodes[1].links.counters().records_lost, 1);
    assert_eq!(
        w.nodes[1].got.len(),
        got_before + 1,
        "only the whole record arrived"
    );
}

#[test]
fn no_fragments_to_a_peer_that_does_not_take_them_or_over_the_relay() {
    // Node 1's hello does not say it takes fragments: node 0 sends it none.
    let mut w = direct([None, Some(Cipher::HELLO_AES)]);
    assert!(send_big(&mut w, 20_000).is_none());
    // Before any path is direct: none either.
    let mut w = secure_world(Kind::PortRestricted, Kind::PortRestricted, [MEMBER_0, MEMBER_1]);
    assert!(send_big(&mut w, 20_000).is_none());
    // And a datagram that fits in one needs none.
    let mut w = direct([Some(Cipher::HELLO_AES | HELLO_FRAGMENTS), None]);
    assert!(send_big(&mut w, 1_000).is_none());
    assert!(send_big(&mut w, 20_000).is_some());
}
