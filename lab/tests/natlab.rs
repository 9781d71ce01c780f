//! The NAT lab behaves as its NAT types say: mapping and filtering observed with plain UDP.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use ringlet_lab::natlab::{LabOptions, PUBLIC_IP, PUBLIC_IP2};
use ringlet_lab::{NatLab, NatType, Netns};

fn socket_in(ns: &Netns, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let sock = ns
        .spawn(move || UdpSocket::bind(addr))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    sock
}

/// Receives one datagram; returns its source, or None on timeout.
fn recv(sock: &UdpSocket) -> Option<SocketAddr> {
    let mut buf = [0u8; 64];
    sock.recv_from(&mut buf).ok().map(|(_, from)| from)
}

#[test]
fn nat_types_map_and_filter_as_named() {
    let peers: Vec<(String, NatType)> = NatType::ALL.iter().map(|t| (t.name().to_owned(), *t)).collect();
    let spec: Vec<(&str, NatType)> = peers.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let lab = NatLab::new("self", &spec, &LabOptions::default()).expect("NAT lab (needs root)");
    let s1 = socket_in(lab.public(), &format!("{PUBLIC_IP}:5000"));
    let s2 = socket_in(lab.public(), &format!("{PUBLIC_IP2}:5000"));
    let s3 = socket_in(lab.public(), &format!("{PUBLIC_IP}:5001"));
    let mut report = Vec::new();
    for (i, peer) in lab.peers().iter().enumerate() {
        let nat = peer.nat;
        // Mapping: one socket talks to two destinations.
        let p = socket_in(&peer.ns, &format!("0.0.0.0:{}", 7000 + i));
        p.send_to(b"m", (PUBLIC_IP, 5000)).unwrap();
        p.send_to(b"m", (PUBLIC_IP, 5001)).unwrap();
        let (m1, m3) = (recv(&s1), recv(&s3));
        // Filtering: a fresh socket talks to s1 only; who can reach its mapping?
        let q = socket_in(&peer.ns, &format!("0.0.0.0:{}", 7100 + i));
        q.send_to(b"f", (PUBLIC_IP, 5000)).unwrap();
        let mapped = recv(&s1);
        let reach = |from: &UdpSocket| {
            mapped.map(|m| {
                from.send_to(b"x", m).unwrap();
                recv(&q).is_some()
            })
        };
        let (other_ip, same_ip_other_port, exact) = (reach(&s2), reach(&s3), reach(&s1));
        report.push(format!("{nat}: mapped {m1:?} {m3:?}, reachable from other ip {other_ip:?} same ip {same_ip_other_port:?} exact {exact:?}"));
        match nat {
            NatType::UdpBlocked => {
                assert!(
                    m1.is_none() && m3.is_none() && mapped.is_none(),
                    "{nat}: UDP got through"
                );
            }
            _ => {
                let (m1, m3) = (m1.expect("mapping 1"), m3.expect("mapping 2"));
                assert_eq!(m1.ip(), std::net::IpAddr::V4(peer.public_ip), "{nat}");
                assert_eq!(m1 == m3, nat.maps_independently(), "{nat}: mapping {m1} vs {m3}");
                let expected = match nat {
                    NatType::Open | NatType::Full => (true, true),
                    NatType::Restricted => (false, true),
                    _ => (false, false),
                };
                assert_eq!(
                    (other_ip, same_ip_other_port),
                    (Some(expected.0), Some(expected.1)),
                    "{nat} filtering"
                );
                assert_eq!(
                    exact,
                    Some(true),
                    "{nat}: the contacted endpoint must get through"
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn coturn_answers_stun_on_both_public_addresses() {
    let mut lab = NatLab::new("stun", &[("a", NatType::PortRestricted)], &LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    lab.start_coturn(dir.path()).unwrap();
    let sock = socket_in(&lab.peer("a").ns, "0.0.0.0:0");
    // A minimal binding request: type 0x0001, length 0, magic cookie, transaction id.
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    for ip in [PUBLIC_IP, PUBLIC_IP2] {
        sock.send_to(&req, (ip, 3478)).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = sock.recv_from(&mut buf).expect("coturn answers");
        assert_eq!(from, SocketAddr::from((ip, 3478)));
        assert_eq!(&buf[..2], &[0x01, 0x01], "binding success");
        assert!(n > 20);
    }
}

#[test]
fn the_delay_line_adds_its_delay_each_way() {
    let options = LabOptions {
        wan_delay: Some(Duration::from_millis(20)),
    };
    let lab = NatLab::new(
        "delay",
        &[("a", NatType::Open), ("b", NatType::PortRestricted)],
        &options,
    )
    .unwrap();
    let server = socket_in(lab.public(), &format!("{PUBLIC_IP}:5000"));
    let a = socket_in(&lab.peer("a").ns, "0.0.0.0:6000");
    let b = socket_in(&lab.peer("b").ns, "0.0.0.0:6001");
    for (name, sock, hops) in [("open", &a, 1u32), ("behind a router", &b, 1u32)] {
        let mut rtts = Vec::new();
        for i in 0..5 {
            let t = std::time::Instant::now();
            sock.send_to(b"ping", (PUBLIC_IP, 5000)).unwrap();
            let mut buf = [0u8; 16];
            let (_, from) = server
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{name} #{i}: server got nothing: {e}"));
            server.send_to(b"pong", from).unwrap();
            sock.recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{name} #{i}: no answer: {e}"));
            rtts.push(t.elapsed());
        }
        rtts.sort();
        let median = rtts[2];
        // one delayed WAN link on the way there and back
        let want = Duration::from_millis(40) * hops;
        assert!(
            median >= want && median < want + Duration::from_millis(15),
            "{name}: rtt {median:?}"
        );
    }
}
