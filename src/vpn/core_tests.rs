#![allow(clippy::disallowed_methods)] // tests pick an arbitrary start instant
use super::super::packet::tests::{v4, v6};
use super::*;

const A: NodeIdBytes = [0xaa; 20];
const B: NodeIdBytes = [0xbb; 20];

fn vpn() -> (Vpn, Instant) {
    let me: Cidr4 = "10.77.0.1/16".parse().unwrap();
    (Vpn::new(me, [0xfd, 1, 2, 3, 4, 5, 6, 7], &A), Instant::now())
}

fn drain(v: &mut Vpn) -> Vec<Output> {
    std::iter::from_fn(|| v.poll_output()).collect()
}

const PEER_IP: [u8; 4] = [10, 77, 0, 2];

#[test]
fn a_packet_waits_for_its_lookup_then_goes_to_the_member_holding_the_address() {
    let (mut v, now) = vpn();
    let p = v4([10, 77, 0, 1], PEER_IP, 1, b"ping");
    v.handle_tun(now, p.clone());
    v.handle_tun(now, p.clone());
    assert_eq!(
        drain(&mut v),
        vec![Output::Lookup(Ipv4Addr::from(PEER_IP))],
        "one lookup for both"
    );
    v.handle_resolved(now, Ipv4Addr::from(PEER_IP), Some(B));
    let sent = vec![
        Output::Send {
            to: B,
            packet: p.clone()
        };
        2
    ];
    assert_eq!(drain(&mut v), sent);
    // Cached now; refreshed (while still used) once the route is old.
    v.handle_tun(now, p.clone());
    assert_eq!(drain(&mut v).len(), 1);
    v.handle_tun(now + ROUTE_TTL, p.clone());
    let out = drain(&mut v);
    assert!(
        out.contains(&Output::Lookup(Ipv4Addr::from(PEER_IP))) && out.len() == 2,
        "{out:?}"
    );
    assert_eq!(v.address_of(&B), Some(Ipv4Addr::from(PEER_IP)));
}

#[test]
fn nobody_holding_an_address_drops_its_packets_and_stops_asking_for_a_while() {
    let (mut v, now) = vpn();
    let p = v4([10, 77, 0, 1], PEER_IP, 1, b"x");
    v.handle_tun(now, p.clone());
    drain(&mut v);
    v.handle_resolved(now, Ipv4Addr::from(PEER_IP), None);
    v.handle_tun(now, p.clone());
    assert!(drain(&mut v).is_empty(), "no lookup storm for an unused address");
    assert_eq!(v.counters.unresolved, 2);
    v.handle_timeout(now + UNKNOWN_TTL);
    v.handle_tun(now + UNKNOWN_TTL, p);
    assert_eq!(drain(&mut v), vec![Output::Lookup(Ipv4Addr::from(PEER_IP))]);
    // A lookup that never answers gives the packets up.
    v.handle_timeout(now + UNKNOWN_TTL + LOOKUP_TIMEOUT);
    assert_eq!(v.counters.unresolved, 3);
    assert_eq!(v.poll_timeout(), None);
}

#[test]
fn waiting_packets_are_bounded() {
    let (mut v, now) = vpn();
    for host in 0..(PENDING_MAX as u8 + 10) {
        for _ in 0..HELD_PER_DESTINATION + 3 {
            v.handle_tun(now, v4([10, 77, 0, 1], [10, 77, 1, host], 1, b"x"));
        }
    }
    assert_eq!(drain(&mut v).len(), PENDING_MAX, "lookups");
    assert_eq!(
        v.counters.held_dropped,
        (PENDING_MAX * 3 + 10 * (HELD_PER_DESTINATION + 3)) as u64
    );
}

#[test]
fn broadcasts_and_multicasts_go_to_everyone_but_only_udp() {
    let (mut v, now) = vpn();
    for dst in [
        [255, 255, 255, 255],
        [10, 77, 255, 255],
        [224, 0, 0, 251],
        [239, 255, 255, 250],
    ] {
        v.handle_tun(now, v4([10, 77, 0, 1], dst, UDP, b"game?"));
    }
    v.handle_tun(now, v6(v.address6(), "ff02::fb".parse().unwrap(), UDP, b"mdns"));
    v.handle_tun(now, v4([10, 77, 0, 1], [224, 0, 0, 22], 2, b"igmp"));
    v.handle_tun(
        now,
        v6(
            v.address6(),
            "ff02::2".parse().unwrap(),
            58,
            b"router solicitation",
        ),
    );
    let out = drain(&mut v);
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|o| matches!(o, Output::Broadcast(_))));
    assert_eq!(v.counters.not_carried, 2);
}

#[test]
fn ipv6_resolves_from_the_member_list_and_other_destinations_are_not_carried() {
    let (mut v, now) = vpn();
    let prefix = [0xfd, 1, 2, 3, 4, 5, 6, 7];
    let to_b = v6(v.address6(), ipv6_address(prefix, &B), 6, b"tcp");
    v.handle_tun(now, to_b.clone());
    assert!(drain(&mut v).is_empty(), "B is not online");
    v.handle_member(B, true);
    v.handle_tun(now, to_b.clone());
    assert_eq!(drain(&mut v), vec![Output::Send { to: B, packet: to_b }]);
    for dst in [[8, 8, 8, 8], [10, 78, 0, 1], [10, 77, 0, 1]] {
        v.handle_tun(now, v4([10, 77, 0, 1], dst, 1, b"x"));
    }
    v.handle_tun(now, vec![0x45, 0, 0]);
    assert!(drain(&mut v).is_empty());
    assert_eq!((v.counters.not_carried, v.counters.malformed), (3, 1));
}

#[test]
fn members_may_send_only_to_us_and_only_from_addresses_they_hold() {
    let (mut v, now) = vpn();
    v.learn(now, Ipv4Addr::from(PEER_IP), B);
    let ok = v4(PEER_IP, [10, 77, 0, 1], 1, b"x");
    v.handle_overlay(B, ok.clone());
    v.handle_overlay(B, v4(PEER_IP, [10, 77, 255, 255], UDP, b"x"));
    assert_eq!(drain(&mut v).len(), 2);
    const C: NodeIdBytes = [0xcc; 20];
    v.handle_overlay(C, ok); // claims B's address
    v.handle_overlay(B, v4(PEER_IP, [10, 77, 0, 9], 1, b"x")); // not for us
    v.handle_overlay(B, v4([192, 168, 1, 1], [10, 77, 0, 1], 1, b"x")); // outside the subnet
    let prefix = [0xfd, 1, 2, 3, 4, 5, 6, 7];
    v.handle_overlay(C, v6(ipv6_address(prefix, &B), v.address6(), 6, b"x")); // B's v6 from C
    v.handle_overlay(B, b"garbage".to_vec());
    assert!(drain(&mut v).is_empty());
    assert_eq!((v.counters.refused, v.counters.malformed), (4, 1));
    v.handle_overlay(C, v6(ipv6_address(prefix, &C), v.address6(), 6, b"x"));
    assert_eq!(drain(&mut v).len(), 1);
}

#[test]
fn a_member_leaving_forgets_its_address_and_an_unanswered_refresh_keeps_the_route() {
    let (mut v, now) = vpn();
    let ip = Ipv4Addr::from(PEER_IP);
    v.learn(now, ip, B);
    v.handle_tun(now + ROUTE_TTL, v4([10, 77, 0, 1], PEER_IP, 1, b"x"));
    drain(&mut v);
    v.handle_unanswered(now + ROUTE_TTL, ip);
    assert_eq!(v.address_of(&B), Some(ip));
    v.handle_member(B, false);
    assert_eq!(v.address_of(&B), None);
}

#[test]
fn a_super_packet_goes_whole_only_to_a_known_member_that_carries_it() {
    let (mut v, now) = vpn();
    let p = v4([10, 77, 0, 1], PEER_IP, 6, &[0; 3_000]);
    let mut asked = Vec::new();
    // Unknown destination: the caller cuts it; nothing is counted or looked up here.
    let ask = |to: &NodeIdBytes| {
        asked.push(*to);
        true
    };
    assert_eq!(v.route_super(now, &p, ask), None);
    assert!(asked.is_empty() && drain(&mut v).is_empty());
    v.learn(now, Ipv4Addr::from(PEER_IP), B);
    // The path cannot carry it: not counted either.
    assert_eq!(v.route_super(now, &p, |_| false), None);
    assert_eq!((v.counters.from_tun, v.counters.sent), (0, 0));
    assert_eq!(v.route_super(now, &p, |to| *to == B), Some(B));
    assert_eq!(
        (v.counters.from_tun, v.counters.sent, v.counters.whole_out),
        (1, 1, 1)
    );
    // A stale route is used and looked up again, as for any packet.
    assert_eq!(v.route_super(now + ROUTE_TTL, &p, |_| true), Some(B));
    assert_eq!(drain(&mut v), vec![Output::Lookup(Ipv4Addr::from(PEER_IP))]);
    // Never for broadcasts, our own address, IPv6 non-members or garbage.
    let prefix = [0xfd, 1, 2, 3, 4, 5, 6, 7];
    for packet in [
        v4([10, 77, 0, 1], [10, 77, 255, 255], 6, b"x"),
        v4([10, 77, 0, 1], [10, 77, 0, 1], 6, b"x"),
        v6(v.address6(), ipv6_address(prefix, &B), 6, b"x"),
        b"garbage".to_vec(),
    ] {
        assert_eq!(v.route_super(now, &packet, |_| true), None);
    }
    v.handle_member(B, true);
    let to_b6 = v6(v.address6(), ipv6_address(prefix, &B), 6, b"x");
    assert_eq!(v.route_super(now, &to_b6, |_| true), Some(B));
}

#[test]
fn a_super_packet_from_a_member_passes_the_same_checks_as_any_packet() {
    let (mut v, now) = vpn();
    v.learn(now, Ipv4Addr::from(PEER_IP), B);
    let ok = v4(PEER_IP, [10, 77, 0, 1], 6, &[1; 3_000]);
    v.handle_overlay_super(B, ok.clone(), 1_000);
    const C: NodeIdBytes = [0xcc; 20];
    v.handle_overlay_super(C, ok.clone(), 1_000); // claims B's address
    v.handle_overlay_super(B, b"garbage".to_vec(), 1_000);
    assert_eq!(
        drain(&mut v),
        vec![Output::DeliverSuper {
            packet: ok,
            gso_size: 1_000
        }]
    );
    assert_eq!(
        (
            v.counters.whole_in,
            v.counters.to_tun,
            v.counters.refused,
            v.counters.malformed
        ),
        (1, 1, 1, 1)
    );
}
