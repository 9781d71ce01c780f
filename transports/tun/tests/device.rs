//! A real TUN device in a private network namespace (this test's thread unshares one, so
//! nothing is visible to the host and everything goes when the thread ends): a UDP datagram
//! sent to an address in the device's subnet is read from the device, and a packet written to
//! the device is delivered to a local socket, also when it is a subnet broadcast. Needs root
//! (CAP_NET_ADMIN); fails loudly without it.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use ringlet_tun::Tun;

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet (UDP checksum 0: none, which IPv4 allows).
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        common::unshare_network();
        f()
    })
    .join()
    .expect("the namespace thread panicked")
}

#[test]
fn packets_cross_a_real_tun_device_both_ways() {
    for offload in [true, false] {
        packets_cross_both_ways(offload);
    }
}

fn packets_cross_both_ways(offload: bool) {
    in_private_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tun = if offload {
                Tun::create("rgltest0")
            } else {
                Tun::create_without_offload("rgltest0")
            }
            .expect("create the TUN device");
            assert_eq!(tun.offload(), offload, "this kernel takes TUN offloads");
            tun.set_ipv4(Ipv4Addr::new(10, 99, 0, 1), 16).unwrap();
            tun.add_ipv6("fd00:99::1".parse().unwrap(), 64).unwrap();
            tun.set_mtu(1300).unwrap();
            tun.up().unwrap();
            assert!(ringlet_tun::exists("rgltest0"));
            assert_eq!(tun.mtu().unwrap(), 1300);
            let taken = Tun::create("rgltest0")
                .err()
                .expect("a second open of a held device must fail");
            assert!(taken.to_string().contains("in use by another process"), "{taken}");

            // Out: a datagram to a subnet host comes out of the device.
            let sock = UdpSocket::bind("10.99.0.1:4000").unwrap();
            sock.send_to(b"out", "10.99.0.2:5000").unwrap();
            let mut buf = vec![0u8; ringlet_tun::FRAME_MAX];
            let packet = loop {
                let n = tokio::time::timeout(Duration::from_secs(2), tun.recv(&mut buf))
                    .await
                    .expect("nothing came out of the device")
                    .unwrap();
                let mut packets = Vec::new();
                tun.unpack(&buf[..n], &mut packets).expect("a well-formed frame");
                // The kernel may send IPv6 router solicitations first.
                if packets[0][0] >> 4 == 4 {
                    break packets.remove(0);
                }
            };
            assert_eq!(&packet[16..20], &[10, 99, 0, 2], "destination");
            assert_eq!(&packet[packet.len() - 3..], b"out");

            // In: a packet written to the device reaches a socket, unicast and broadcast (a
            // broadcast reaches sockets bound to the wildcard address only).
            let any = UdpSocket::bind("0.0.0.0:4001").unwrap();
            let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 5000);
            let cases = [
                (&sock, Ipv4Addr::new(10, 99, 0, 1), 4000),
                (&any, Ipv4Addr::new(10, 99, 255, 255), 4001),
            ];
            for (socket, dst, port) in cases {
                socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let packet = udp_packet(from, SocketAddrV4::new(dst, port), b"in");
                assert_eq!(tun.try_send(&packet).unwrap(), packet.len());
                let (n, src) = socket
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("the packet to {dst} was not delivered: {e}"));
                assert_eq!((&buf[..n], src), (&b"in"[..], from.into()), "to {dst}");
            }
            // As the daemon writes: a batch (no TCP here, so one write per packet).
            let mut batch = ringlet_tun::Batch::default();
            let to = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 4000);
            for payload in [b"b1", b"b2"] {
                batch.push(udp_packet(from, to, payload));
            }
            let written = tun.write_batch(&mut batch);
            assert_eq!((written.packets, written.writes, written.dropped), (2, 2, 0));
            for payload in [b"b1", b"b2"] {
                let (n, _) = sock
                    .recv_from(&mut buf)
                    .expect("a batched packet was not delivered");
                assert_eq!(&buf[..n], payload);
            }
        });
    });
    assert!(
        !ringlet_tun::exists("rgltest0"),
        "the device must not leak into the test's namespace"
    );
}
