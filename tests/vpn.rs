//! The VPN in the NAT lab: six real `ringlet up` processes with `[vpn] enabled = true`, each
//! with its own TUN device in its own namespace and an address derived from its NodeId.
//! Through the devices: `ping` and a checksummed TCP transfer between two port-restricted
//! peers (direct path), between two symmetric ring neighbours (a ring tunnel, sealed end to
//! end through the relaying neighbour), and from a UDP-blocked peer (XMPP relay); a UDP
//! broadcast sent on one peer's device arrives at every other member.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ringlet::identity::NodeKey;
use ringlet::node::status::Status;
use ringlet_lab::natlab::LabOptions;
use ringlet_lab::NatType;
use sha2::{Digest, Sha256};
use support::scene::Scene;
use support::{wait, NodeSpec};

/// Peers in ring order (keys sorted by NodeId): the symmetric pair are neighbours.
const PEERS: [(&str, NatType); 6] = [
    ("v0", NatType::Full),
    ("v1", NatType::PortRestricted),
    ("v2", NatType::Symmetric),
    ("v3", NatType::Symmetric),
    ("v4", NatType::PortRestricted),
    ("v5", NatType::UdpBlocked),
];
const SYM_A: usize = 2;
const SYM_B: usize = 3;
const PR_A: usize = 1;
const PR_B: usize = 4;
const BLOCKED: usize = 5;

/// App datagrams node `i` has sent over the XMPP relay.
async fn relayed_out(scene: &Scene, i: usize) -> u64 {
    scene.nodes[i].status().await.expect("status").counters["link_relayed_out"]
}

/// TCP super-packets node `i` sent whole (`link::bulk`).
async fn whole_out(scene: &Scene, i: usize) -> u64 {
    scene.nodes[i].status().await.expect("status").counters["vpn_whole_out"]
}

/// IPv4 fragments the peers' kernels created (`FragCreates` of each namespace's
/// /proc/net/snmp), summed.
fn fragments_created(scene: &Scene) -> u64 {
    PEERS
        .iter()
        .map(|(name, _)| {
            let out = scene
                .lab
                .peer(name)
                .ns
                .command("cat")
                .arg("/proc/net/snmp")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
            let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
            let at = names
                .split_whitespace()
                .position(|n| n == "FragCreates")
                .expect("FragCreates");
            values
                .split_whitespace()
                .nth(at)
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a FragCreates value")
        })
        .sum()
}

/// The VPN IPv4 address node `i` has (from its own status).
fn vpn_ip(st: &Status) -> Ipv4Addr {
    let vpn = st.vpn.as_ref().expect("the VPN is on");
    vpn.address.split('/').next().unwrap().parse().unwrap()
}

/// Every node knows every other node's VPN address, and the routing nodes have a ring.
fn ready(st: &[Option<Status>]) -> bool {
    st.iter().enumerate().all(|(i, s)| {
        s.as_ref().is_some_and(|s| {
            let ring = i == BLOCKED || (s.ring.left.is_some() && s.ring.right.is_some());
            ring && s.peers.len() == PEERS.len() - 1 && s.peers.iter().all(|p| p.vpn_address.is_some())
        })
    })
}

fn ping(scene: &Scene, from: usize, to: Ipv4Addr) -> Result<String, String> {
    let out = scene
        .lab
        .peer(PEERS[from].0)
        .ns
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "3", "-s", "1200"])
        .arg(to.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    support::outcome(out)
}

/// Sends `len` pseudo-random bytes over TCP from peer `from` to peer `to`'s VPN address;
/// returns (bytes received, whether both SHA-256 digests agree, seconds taken).
fn tcp_transfer(
    scene: &Scene,
    from: usize,
    to: usize,
    to_ip: Ipv4Addr,
    len: usize,
    limit: Duration,
) -> (usize, bool, f64) {
    let listener_ns = &scene.lab.peer(PEERS[to].0).ns;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = listener_ns
        .spawn(move || {
            let listener = TcpListener::bind("0.0.0.0:5001").expect("bind the receiver");
            ready_tx.send(()).unwrap();
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(limit)).unwrap();
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                got += n;
            }
            (got, hash.finalize().to_vec())
        })
        .unwrap();
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    let sender = scene
        .lab
        .peer(PEERS[from].0)
        .ns
        .spawn(move || {
            let started = Instant::now();
            let mut conn =
                TcpStream::connect_timeout(&SocketAddr::from((to_ip, 5001)), Duration::from_secs(10))
                    .expect("connect through the VPN");
            conn.set_write_timeout(Some(limit)).unwrap();
            let mut hash = Sha256::new();
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                for b in chunk.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state as u8;
                }
                let n = chunk.len().min(len - sent);
                conn.write_all(&chunk[..n]).expect("send through the VPN");
                hash.update(&chunk[..n]);
                sent += n;
            }
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            // Wait for the receiver to close: everything arrived.
            let _ = conn.read(&mut [0u8; 1]);
            (hash.finalize().to_vec(), started.elapsed().as_secs_f64())
        })
        .unwrap();
    let (sent_hash, secs) = sender.join().expect("sender");
    let (got, got_hash) = receiver.join().expect("receiver");
    (got, got_hash == sent_hash, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_tcp_and_broadcast_cross_the_vpn_on_every_kind_of_path() {
    let mut keys: Vec<NodeKey> = (0..PEERS.len()).map(|_| NodeKey::generate().unwrap()).collect();
    keys.sort_by_key(|k| k.node_id().0);
    let vpn_on = |_: &ringlet_lab::NatLab, _: usize, spec: &mut NodeSpec| {
        spec.extra = "[vpn]\nenabled = true\n".into();
    };
    let scene = Scene::start_custom("vpn6", &PEERS, LabOptions::default(), &keys, &vpn_on).await;
    let formed = wait(Duration::from_secs(60), || async {
        ready(&scene.statuses().await).then_some(())
    })
    .await;
    let st = scene.statuses().await;
    assert!(
        formed.is_some(),
        "VPN addresses not all known within 60 s: {st:#?}"
    );
    let st: Vec<Status> = st.into_iter().map(Option::unwrap).collect();
    let ips: Vec<Ipv4Addr> = st.iter().map(vpn_ip).collect();
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ips.len(), "two members hold one address: {ips:?}");
    for (i, s) in st.iter().enumerate() {
        for p in &s.peers {
            let j = scene.ids.iter().position(|id| *id == p.node_id).unwrap();
            assert_eq!(
                p.vpn_address.as_deref(),
                Some(ips[j].to_string().as_str()),
                "v{i} sees v{j}'s address"
            );
        }
    }
    eprintln!(
        "VPN addresses: {ips:?} ({:.1} s after start)",
        scene.started.elapsed().as_secs_f64()
    );

    // The symmetric neighbours reach each other through a ring tunnel.
    let tunnelled = scene
        .wait_path(SYM_A, SYM_B, "tunnel", Duration::from_secs(30))
        .await;
    assert!(
        tunnelled,
        "no tunnel between the symmetric neighbours: {:?}",
        scene.path(SYM_A, SYM_B).await
    );
    assert!(
        scene
            .wait_path(PR_A, PR_B, "direct", Duration::from_secs(10))
            .await,
        "port-restricted pair not direct"
    );

    for (a, b, path) in [
        (PR_A, PR_B, "direct"),
        (SYM_A, SYM_B, "tunnel"),
        (BLOCKED, 0, "xmpp"),
    ] {
        let out = ping(&scene, a, ips[b])
            .unwrap_or_else(|e| panic!("ping v{a} → v{b} ({path}) failed:\n{e}\n{}", scene.nodes[a].log()));
        let rtt = out.lines().last().unwrap_or_default().to_owned();
        eprintln!("ping v{a} → v{b} over {path}: {rtt}");
        assert_eq!(scene.path(a, b).await.as_deref(), Some(path));
    }

    // `ringlet ping` takes a VPN address or a JID as well as a NodeId.
    let cli_ping = |who: String| {
        let out = std::process::Command::new(support::ringlet_bin())
            .args(["ping", "-n", "2", "--config"])
            .arg(&scene.nodes[PR_A].config)
            .arg(who)
            .output()
            .unwrap();
        support::outcome(out)
    };
    let st_pr = scene.status(PR_A).await.expect("status");
    let row = st_pr.peers.iter().find(|p| p.node_id == scene.ids[PR_B]).unwrap();
    assert_eq!(row.nat.as_deref(), Some("cone"), "v{PR_A}'s view of v{PR_B}");
    let by_ip = cli_ping(ips[PR_B].to_string()).expect("ping by VPN address");
    assert!(by_ip.contains("via direct"), "{by_ip}");
    let by_jid = cli_ping(format!("{}@{}", PEERS[PR_B].0, support::scene::DOMAIN)).expect("ping by JID");
    assert!(by_jid.contains("reply from"), "{by_jid}");
    let nobody = cli_ping("10.77.0.0".into()).expect_err("nobody holds the network address");
    assert!(nobody.contains("no online member holds VPN address"), "{nobody}");

    // End to end through the relaying neighbour: both ends ran the handshake and tunnelled.
    let st_after = scene.statuses().await;
    for i in [SYM_A, SYM_B] {
        let c = &st_after[i].as_ref().unwrap().counters;
        assert!(
            c["e2e_handshakes"] >= 1 && c["link_tunnelled_out"] >= 3,
            "v{i}: {c:?}"
        );
    }

    let relayed_before = relayed_out(&scene, SYM_A).await;
    let fragments_before = fragments_created(&scene);
    let whole_before = whole_out(&scene, PR_A).await;
    for (a, b, len, what) in [
        (PR_A, PR_B, 50 << 20, "direct"),
        (SYM_A, SYM_B, 50 << 20, "tunnel"),
        (BLOCKED, 0, 2 << 20, "xmpp"),
    ] {
        let (got, same, secs) = tcp_transfer(&scene, a, b, ips[b], len, Duration::from_secs(120));
        eprintln!(
            "TCP v{a} → v{b} over {what}: {got} bytes in {secs:.2} s ({:.1} Mbit/s)",
            got as f64 * 8.0 / secs / 1e6
        );
        assert!(
            got == len && same,
            "TCP over {what}: {got} of {len} bytes, digests agree: {same}"
        );
        // The receiver's status counts the payload on the peer's row, whatever the path.
        let st_b = scene.status(b).await.expect("status");
        let row = st_b
            .peers
            .iter()
            .find(|p| p.node_id == scene.ids[a])
            .expect("a row for the sender");
        assert!(
            row.bytes_in >= len as u64,
            "v{b} counts {} bytes from v{a}",
            row.bytes_in
        );
        if what == "direct" {
            // TCP super-packets crossed whole, sealed once each, in fragments that fit the
            // path (the FragCreates check below).
            let whole = whole_out(&scene, PR_A).await - whole_before;
            let lost = scene.status(b).await.expect("status").counters["link_records_lost"];
            eprintln!("direct: {whole} super-packets whole, {lost} records lost");
            assert!(whole >= 50, "only {whole} super-packets went whole");
        }
        if what == "tunnel" {
            // Full-size segments fit the tunnel (the MTU allows for it): none took the relay.
            let relayed = relayed_out(&scene, SYM_A).await - relayed_before;
            assert!(
                relayed < 100,
                "{relayed} VPN packets of the tunnelled transfer took the XMPP relay"
            );
        }
        // Nothing fragmented in the underlay, on any peer (the relaying neighbour included).
        assert_eq!(
            fragments_created(&scene),
            fragments_before,
            "IP fragments after the {what} transfer"
        );
    }

    // A subnet broadcast sent on v0's device arrives at every other member.
    let broadcast: Ipv4Addr = {
        let vpn = st[0].vpn.as_ref().unwrap();
        let cidr: ringlet::vpn::Cidr4 = vpn.address.parse().unwrap();
        cidr.broadcast()
    };
    let mut listeners = Vec::new();
    for (name, _) in &PEERS[1..] {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = scene
            .lab
            .peer(name)
            .ns
            .spawn(move || {
                let sock = UdpSocket::bind("0.0.0.0:47000").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                sock.recv_from(&mut buf)
                    .ok()
                    .map(|(n, from)| (buf[..n].to_vec(), from))
            })
            .unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        listeners.push((name, handle));
    }
    let sender = scene
        .lab
        .peer("v0")
        .ns
        .spawn(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_broadcast(true).unwrap();
            for _ in 0..3 {
                sock.send_to(b"who hosts a game?", (broadcast, 47000)).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
        .unwrap();
    sender.join().unwrap();
    for (name, handle) in listeners {
        let got = handle.join().unwrap();
        let (data, from) = got.unwrap_or_else(|| {
            let i = PEERS.iter().position(|(n, _)| n == name).unwrap();
            panic!(
                "{name} got no broadcast\n--- v0 log tail ---\n{}\n--- {name} log tail ---\n{}",
                log_tail(&scene.nodes[0].log()),
                log_tail(&scene.nodes[i].log())
            )
        });
        assert_eq!(data, b"who hosts a game?", "{name}");
        assert_eq!(from.ip(), std::net::IpAddr::V4(ips[0]), "{name}: source");
    }
}

/// The last lines of a daemon log: enough to see the ring around a failure.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}
