use std::time::Duration;

use super::*;
use crate::{UdpMux, FRAME_MARKER, STUN_MAGIC_COOKIE};

const A: PathKey = [0xaa; 8];
const B: PathKey = [0xbb; 8];

fn frame(key: PathKey, body: &[u8]) -> Vec<u8> {
    let mut f = vec![FRAME_MARKER, 1];
    f.extend_from_slice(&key);
    f.extend_from_slice(body);
    f
}

/// A STUN message of type `kind` with transaction id `[tid; 12]` and an optional USERNAME.
fn stun(kind: u16, tid: u8, username: Option<&str>) -> Vec<u8> {
    let mut attrs = Vec::new();
    if let Some(u) = username {
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(u.len() as u16).to_be_bytes());
        attrs.extend_from_slice(u.as_bytes());
        attrs.resize(attrs.len().next_multiple_of(4), 0);
    }
    let mut m = kind.to_be_bytes().to_vec();
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&STUN_MAGIC_COOKIE);
    m.extend_from_slice(&[tid; 12]);
    m.extend_from_slice(&attrs);
    m
}

const REQUEST: u16 = 0x0001;
const RESPONSE: u16 = 0x0101;

async fn recv(mux: &mut UdpMux) -> Vec<Received> {
    tokio::time::timeout(Duration::from_secs(5), mux.recv())
        .await
        .expect("no datagram within 5 s")
        .unwrap()
}

/// Nothing arrives within 200 ms.
async fn quiet(mux: &mut UdpMux) {
    let got = tokio::time::timeout(Duration::from_millis(200), mux.recv()).await;
    assert!(got.is_err(), "unexpected datagrams: {got:?}");
}

/// Waits until the dispatcher has read `n` datagrams.
async fn read_by_dispatcher(shared: &SharedSocket, n: u64) -> SharedStats {
    for _ in 0..100 {
        let stats = shared.stats();
        if stats.datagrams_in >= n {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the dispatcher read {} of {n} datagrams",
        shared.stats().datagrams_in
    );
}

#[tokio::test]
async fn frames_go_to_the_overlay_their_path_id_names() {
    let shared = SharedSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let mut a = UdpMux::join(&shared, A).unwrap();
    let mut b = UdpMux::join(&shared, B).unwrap();
    let port = shared.local_addr().unwrap();
    assert_eq!(a.local_addr(MAIN_SOCKET), Some(port));
    assert_eq!(b.local_addr(MAIN_SOCKET), Some(port));
    assert_eq!(shared.members(), 2);

    let mut peer = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(peer.send(MAIN_SOCKET, port, &frame(B, b"to b")));
    assert!(peer.send(MAIN_SOCKET, port, &frame(A, b"to a")));
    assert!(peer.send(MAIN_SOCKET, port, &frame([0xcc; 8], b"nobody's")));
    assert!(peer.send(MAIN_SOCKET, port, b"garbage"));
    assert_eq!(recv(&mut a).await[0].data, frame(A, b"to a"));
    let got = recv(&mut b).await;
    assert_eq!(
        (got[0].socket, got[0].data.clone()),
        (MAIN_SOCKET, frame(B, b"to b"))
    );
    let stats = read_by_dispatcher(&shared, 4).await;
    assert_eq!(stats.unclaimed, 2, "{stats:?}");
    quiet(&mut a).await;

    // Both send from the one port.
    assert!(a.send(MAIN_SOCKET, peer.local_addr(MAIN_SOCKET).unwrap(), b"from a"));
    assert!(b.send(MAIN_SOCKET, peer.local_addr(MAIN_SOCKET).unwrap(), b"from b"));
    let mut from = Vec::new();
    while from.len() < 2 {
        from.extend(recv(&mut peer).await.into_iter().map(|r| r.from));
    }
    assert_eq!(from, vec![port, port]);
}

#[tokio::test]
async fn stun_answers_go_to_the_asking_overlay_and_checks_to_the_ufrag_owner() {
    let shared = SharedSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let mut a = UdpMux::join(&shared, A).unwrap();
    let mut b = UdpMux::join(&shared, B).unwrap();
    let port = shared.local_addr().unwrap();
    let mut server = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server.local_addr(MAIN_SOCKET).unwrap();

    // b asks (a check carrying b's ufrag "bfrag" second), the answer comes back to b only.
    assert!(b.send(MAIN_SOCKET, server_addr, &stun(REQUEST, 7, Some("peer:bfrag"))));
    assert_eq!(
        recv(&mut server).await[0].data,
        stun(REQUEST, 7, Some("peer:bfrag"))
    );
    assert!(server.send(MAIN_SOCKET, port, &stun(RESPONSE, 7, None)));
    assert_eq!(recv(&mut b).await[0].data, stun(RESPONSE, 7, None));
    // A response nobody asked for is nobody's.
    assert!(server.send(MAIN_SOCKET, port, &stun(RESPONSE, 8, None)));
    let stats = read_by_dispatcher(&shared, 2).await;
    assert_eq!(stats.unclaimed, 1, "{stats:?}");

    // The peer's check for "bfrag" goes to b alone; one for an unknown ufrag to both.
    assert!(server.send(MAIN_SOCKET, port, &stun(REQUEST, 9, Some("bfrag:peer"))));
    assert_eq!(recv(&mut b).await[0].data, stun(REQUEST, 9, Some("bfrag:peer")));
    assert!(server.send(MAIN_SOCKET, port, &stun(REQUEST, 10, Some("early:peer"))));
    assert_eq!(recv(&mut a).await[0].data, stun(REQUEST, 10, Some("early:peer")));
    assert_eq!(recv(&mut b).await[0].data, stun(REQUEST, 10, Some("early:peer")));
    quiet(&mut a).await;
    let stats = read_by_dispatcher(&shared, 4).await;
    assert_eq!((stats.fanned_out, stats.unclaimed), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn an_overlay_joins_once_and_its_key_is_free_again_after_it_leaves() {
    let shared = SharedSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let a = UdpMux::join(&shared, A).unwrap();
    let err = UdpMux::join(&shared, A).err().expect("a second join of A");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    drop(a);
    assert_eq!(shared.members(), 0);
    let mut again = UdpMux::join(&shared, A).unwrap();
    let mut peer = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(peer.send(MAIN_SOCKET, shared.local_addr().unwrap(), &frame(A, b"back")));
    assert_eq!(recv(&mut again).await[0].data, frame(A, b"back"));
}

#[tokio::test]
async fn a_joined_mux_keeps_its_own_extra_sockets() {
    let shared = SharedSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let mut a = UdpMux::join(&shared, A).unwrap();
    let extra = a.open_extra("127.0.0.1".parse().unwrap(), 1)[0];
    assert_ne!(a.local_addr(extra), a.local_addr(MAIN_SOCKET));
    let mut peer = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(peer.send(MAIN_SOCKET, a.local_addr(extra).unwrap(), b"to the extra"));
    assert!(peer.send(MAIN_SOCKET, shared.local_addr().unwrap(), &frame(A, b"to main")));
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(recv(&mut a).await.into_iter().map(|r| (r.socket, r.data)));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (MAIN_SOCKET, frame(A, b"to main")),
            (extra, b"to the extra".to_vec())
        ]
    );
    assert_eq!(a.extra_count(), 1);
    assert!(a.add_ipv6().is_err(), "bound without an IPv6 twin");
}
