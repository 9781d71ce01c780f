#![allow(clippy::disallowed_methods)] // tests start their clocks from Instant::now

use super::*;
use crate::link::SEALED_OVERHEAD as SEALED;

const PATH: PathId = [7; 8];

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn record(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

/// The fragments of `record`, each in a buffer of its own.
fn cut_apart(number: u32, record: &[u8], max_datagram: usize) -> Option<Vec<Vec<u8>>> {
    let joined = cut(&PATH, number, record, max_datagram)?;
    Some(joined.chunks(max_datagram).map(<[u8]>::to_vec).collect())
}

/// Feeds fragments in the given order; returns the records that came out.
fn feed(r: &mut Reassembly, now: Instant, from: SocketAddr, fragments: &[&Vec<u8>]) -> Vec<Vec<u8>> {
    fragments
        .iter()
        .filter_map(|f| r.add(now, 0, from, f).unwrap())
        .collect()
}

#[test]
fn a_record_cut_into_fragments_comes_back_whole_in_any_order() {
    let now = Instant::now();
    let rec = record(65_000);
    let fragments = cut_apart(9, &rec, 1_349).unwrap();
    assert_eq!(fragments.len(), 65_000usize.div_ceil(1_349 - HEADER_LEN));
    assert!(fragments.iter().all(|f| f.len() <= 1_349));
    assert!(fragments[..fragments.len() - 1].iter().all(|f| f.len() == 1_349));
    assert!(fragments
        .iter()
        .all(|f| f[1] == KIND_FRAGMENT && f[2..10] == PATH));
    let mut r = Reassembly::default();
    let mut order: Vec<&Vec<u8>> = fragments.iter().rev().collect();
    order.insert(3, &fragments[5]); // a duplicate changes nothing
    assert_eq!(feed(&mut r, now, addr(1), &order), vec![rec.clone()]);
    assert_eq!(r.pending(), 0);
    // In order, and a record that ends on a full piece.
    let even = record(3 * (1_349 - HEADER_LEN));
    let pieces = cut_apart(10, &even, 1_349).unwrap();
    assert_eq!(pieces.len(), 3);
    assert_eq!(
        feed(&mut r, now, addr(1), &pieces.iter().collect::<Vec<_>>()),
        vec![even]
    );
}

#[test]
fn only_records_that_need_two_to_64_pieces_are_cut() {
    assert!(cut_apart(1, &record(1_000), 1_349).is_none(), "fits in one");
    assert!(
        cut_apart(1, &record(65_000), 500).is_none(),
        "more than 64 pieces"
    );
    assert!(
        cut_apart(1, &record(1_000), HEADER_LEN).is_none(),
        "no room for a piece"
    );
    assert!(
        cut_apart(1, &record(MAX_RECORD - 100), 1_400).is_none(),
        "no room"
    );
    // The biggest a VPN super-packet's record gets (an IPv6 packet of 64 KB) fits.
    assert!(cut_apart(1, &record(65_535 + 40 + 2 + SEALED), 1_349).is_some());
}

#[test]
fn records_of_different_sources_and_numbers_do_not_mix() {
    let now = Instant::now();
    let (a, b) = (record(5_000), record(4_000));
    let fa = cut_apart(1, &a, 1_000).unwrap();
    let fb = cut_apart(1, &b, 1_000).unwrap();
    let fc = cut_apart(2, &b, 1_000).unwrap();
    let mut r = Reassembly::default();
    let mut done = Vec::new();
    for i in 0..fa.len() {
        for (from, f) in [(addr(1), &fa), (addr(2), &fb), (addr(1), &fc)] {
            if let Some(f) = f.get(i) {
                done.extend(r.add(now, 0, from, f).unwrap());
            }
        }
    }
    assert_eq!(done, vec![b.clone(), b, a]);
}

#[test]
fn a_record_missing_a_piece_is_given_up_after_its_time_or_when_pushed_out() {
    let now = Instant::now();
    let mut r = Reassembly::default();
    let f = cut_apart(1, &record(5_000), 1_000).unwrap();
    assert_eq!(feed(&mut r, now, addr(1), &[&f[0], &f[1]]), Vec::<Vec<u8>>::new());
    // The rest comes too late: the pieces start a new record, which never completes.
    let late = now + PARTIAL_TTL;
    assert!(feed(&mut r, late, addr(1), &f[2..].iter().collect::<Vec<_>>()).is_empty());
    assert_eq!(r.lost, 1);
    // Records that never finish are pushed out by newer ones; memory stays bounded.
    for number in 0..(PARTIAL_MAX as u32 + 5) {
        let f = cut_apart(100 + number, &record(5_000), 1_000).unwrap();
        r.add(late, 0, addr(1), &f[0]).unwrap();
    }
    assert_eq!(r.pending(), PARTIAL_MAX);
    assert_eq!(r.lost, 1 + 1 + 5);
}

#[test]
fn malformed_fragments_are_refused_and_change_nothing() {
    let now = Instant::now();
    let f = cut_apart(1, &record(5_000), 1_000).unwrap();
    let mut r = Reassembly::default();
    let with = |i: usize, v: u8| {
        let mut g = f[0].clone();
        g[i] = v;
        g
    };
    let mut long_middle = f[1].clone();
    long_middle.push(0);
    let mut long_last = f[f.len() - 1].clone();
    long_last.resize(1_001, 0);
    let cases: Vec<(&str, Vec<u8>, FragmentError)> = vec![
        ("header only", f[0][..HEADER_LEN].to_vec(), FragmentError::Short),
        ("index past count", with(14, 9), FragmentError::Range),
        ("one piece", with(15, 1), FragmentError::Range),
        ("65 pieces", with(15, 65), FragmentError::Range),
        (
            "a middle piece of the wrong size",
            long_middle,
            FragmentError::Range,
        ),
        (
            "a last piece longer than the size",
            long_last,
            FragmentError::Range,
        ),
        (
            "a record bigger than any",
            {
                let mut g = with(15, 64);
                g[16..18].copy_from_slice(&2_000u16.to_be_bytes());
                g.resize(HEADER_LEN + 2_000, 0);
                g
            },
            FragmentError::Range,
        ),
    ];
    for (why, fragment, err) in cases {
        assert_eq!(r.add(now, 0, addr(1), &fragment), Err(err), "{why}");
        assert_eq!(r.pending(), 0, "{why}");
    }
    // A piece that disagrees with its record's first one is refused; the record goes on.
    r.add(now, 0, addr(1), &f[0]).unwrap();
    let other_count = {
        let mut g = f[1].clone();
        g[15] += 1;
        g
    };
    assert_eq!(r.add(now, 0, addr(1), &other_count), Err(FragmentError::Mismatch));
    let rest: Vec<&Vec<u8>> = f[1..].iter().collect();
    assert_eq!(feed(&mut r, now, addr(1), &rest), vec![record(5_000)]);
}
