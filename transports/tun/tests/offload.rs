//! TCP segmentation offload through real TUN devices: two devices in two private network
//! namespaces (each made by a thread that unshares its own, so nothing reaches the host and
//! everything goes with the test), a forwarder moving packets between them the way the VPN
//! does (read, `unpack`, `Batch`, `write_batch`), and a 24 MB TCP transfer across, checked
//! byte for byte. The kernels on both sides must accept what we write: the segments cut from
//! the sender's super-packets and the super-packets merged for the receiver. Needs root
//! (CAP_NET_ADMIN); fails loudly without it.

#![allow(clippy::disallowed_methods)] // a test against real devices runs on the real clock

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringlet_tun::{Batch, Tun};

const BYTES: usize = 24 << 20;
const LIMIT: Duration = Duration::from_secs(60);

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// Runs `f` on a thread in a fresh network namespace that holds a configured device
/// `name` at `addr`/24, sent back through `devices` before `f` starts.
fn in_netns<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    name: &'static str,
    addr: Ipv4Addr,
    devices: mpsc::Sender<Tun>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let rt = rt.clone();
    std::thread::spawn(move || {
        common::unshare_network();
        let tun = {
            let _reactor = rt.enter();
            Tun::create(name).expect("create the TUN device")
        };
        assert!(
            tun.offload(),
            "this kernel refused TUN offloads (IFF_VNET_HDR + TUNSETOFFLOAD)"
        );
        tun.set_ipv4(addr, 24).unwrap();
        tun.set_mtu(1300).unwrap();
        tun.up().unwrap();
        devices.send(tun).unwrap();
        f()
    })
}

#[derive(Default, Debug)]
struct Moved {
    frames: u64,
    super_frames: u64,
    packets: u64,
    writes: u64,
    dropped: u64,
}

/// Moves what one device gives to the other until told to stop.
async fn forward(a: Tun, b: Tun, stop: Arc<AtomicBool>) -> Moved {
    let mut moved = Moved::default();
    let (mut buf_a, mut buf_b) = (
        vec![0u8; ringlet_tun::FRAME_MAX],
        vec![0u8; ringlet_tun::FRAME_MAX],
    );
    let mut more = vec![0u8; ringlet_tun::FRAME_MAX];
    let mut batch = Batch::default();
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < LIMIT {
        let (from, to, buf) = tokio::select! {
            r = a.recv(&mut buf_a) => (&a, &b, &buf_a[..r.unwrap()]),
            r = b.recv(&mut buf_b) => (&b, &a, &buf_b[..r.unwrap()]),
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let mut packets = Vec::new();
        from.unpack(buf, &mut packets)
            .expect("the kernel gave a well-formed frame");
        moved.frames += 1;
        moved.super_frames += u64::from(packets.len() > 1);
        for _ in 0..64 {
            let Ok(n) = from.try_recv(&mut more) else { break };
            let before = packets.len();
            from.unpack(&more[..n], &mut packets)
                .expect("a well-formed frame");
            moved.frames += 1;
            moved.super_frames += u64::from(packets.len() - before > 1);
        }
        for p in packets {
            batch.push(p);
        }
        let written = to.write_batch(&mut batch);
        moved.packets += written.packets;
        moved.writes += written.writes;
        moved.dropped += written.dropped;
    }
    moved
}

#[test]
fn a_tcp_transfer_crosses_two_devices_as_super_packets() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (devices, arrived) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let server_done = done.clone();
    let server = in_netns(
        rt.handle(),
        "rgloff1",
        Ipv4Addr::new(10, 98, 0, 2),
        devices.clone(),
        move || {
            let listener = TcpListener::bind("10.98.0.2:5201").unwrap();
            listener.set_nonblocking(true).unwrap();
            let start = Instant::now();
            let (mut conn, _) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(_) if start.elapsed() < LIMIT => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => {
                        server_done.store(true, Ordering::Relaxed);
                        panic!("no connection came: {e}");
                    }
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::with_capacity(BYTES);
            let result = conn.read_to_end(&mut got);
            server_done.store(true, Ordering::Relaxed);
            result.map(|_| got)
        },
    );
    let server_dev = arrived.recv_timeout(LIMIT).expect("the server's device");
    let (go, ready) = mpsc::channel::<()>();
    let client = in_netns(
        rt.handle(),
        "rgloff0",
        Ipv4Addr::new(10, 98, 0, 1),
        devices,
        move || {
            ready.recv().unwrap();
            let mut conn =
                TcpStream::connect_timeout(&"10.98.0.2:5201".parse().unwrap(), Duration::from_secs(10))?;
            conn.set_write_timeout(Some(Duration::from_secs(10)))?;
            let data: Vec<u8> = (0..BYTES).map(pattern).collect();
            conn.write_all(&data)?;
            conn.shutdown(std::net::Shutdown::Write)
        },
    );
    let client_dev = arrived.recv_timeout(LIMIT).expect("the client's device");
    go.send(()).unwrap();
    let moved = rt.block_on(forward(client_dev, server_dev, done));
    let sent = client.join().expect("the client thread panicked");
    let got = server.join().expect("the server thread panicked");
    sent.expect("the client's transfer");
    let got = got.expect("the server's read");
    assert_eq!(got.len(), BYTES, "bytes received ({moved:?})");
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == pattern(i)),
        "the data arrived changed"
    );
    // The offloads did their part: the sender's kernel gave super-packets, and merged writes
    // carried several segments each.
    assert!(moved.super_frames > 0, "no TCP super-packet was read: {moved:?}");
    assert!(
        moved.packets > 2 * moved.writes,
        "writes were not merged: {moved:?}"
    );
    assert_eq!(moved.dropped, 0, "{moved:?}");
}
