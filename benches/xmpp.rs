//! XMPP-layer benchmarks on loopback against a real Prosody (nagle off), with a baseline
//! measured in the same run for every row:
//! - login time, plaintext and STARTTLS (baseline: TCP connect);
//! - relay echo round trip for 16 B and 4 KiB datagrams (baseline: a raw IQ between two other
//!   clients of the same server, carrying the same payload there and back);
//! - relay throughput unthrottled (baseline: the same datagrams as raw IQs, split into the same
//!   fragments, with 16 outstanding and stop-and-wait) and with `mod_limits` at Debian's
//!   default 10 KiB/s (baseline: the configured rate);
//! - raw IQ throughput by stanza size and window, which explains the relay's short queues.
//!
//! Run: `cargo bench --bench xmpp` (add `-- --quick` for fewer repetitions, or section names:
//! `sizes login rtt throughput shaped`). `BENCH_RELAY` may hold extra TOML for the nodes,
//! e.g. a `[relay]` section, to compare settings.
#![allow(clippy::disallowed_methods)] // benchmarks measure real time

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringlet::config::Config;
use ringlet::node::{self, AppEvent, NodeHandle, Options};
use ringlet_lab::{Prosody, ProsodySpec, TestCa};
use ringlet_xmpp::connect::{LoginConfig, Timeouts, TlsMode};
use ringlet_xmpp::session::{Session, SessionConfig, SessionEvent};
use ringlet_xmpp::xmpp_parsers::iq::Iq;
use ringlet_xmpp::{Element, FullJid, Jid, Stanza};

const PASSWORD: &str = "bench-password";

fn server(domain: &str, users: &[&str], tweak: impl FnOnce(&mut ProsodySpec)) -> Prosody {
    let mut spec = ProsodySpec::new(domain).unwrap();
    spec.shared_roster = users.iter().map(|u| format!("{u}@{domain}")).collect();
    tweak(&mut spec);
    let mut p = Prosody::new(spec).unwrap();
    for u in users {
        p.register(u, PASSWORD).unwrap();
    }
    p.launch().unwrap();
    p
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

fn login_config(jid: &str, server: &str, tls: TlsMode, ca: Option<&std::path::Path>) -> LoginConfig {
    LoginConfig {
        jid: FullJid::new(jid).unwrap(),
        password: PASSWORD.into(),
        server: Some(server.into()),
        tls,
        ca_file: ca.map(Into::into),
        attempt_timeout: Duration::from_secs(5),
        timeouts: Timeouts::tight(),
    }
}

async fn raw_session(jid: &str, server: &str) -> Session {
    Session::connect(SessionConfig::new(
        login_config(jid, server, TlsMode::Plain, None),
        1,
    ))
    .await
    .unwrap()
}

/// Login: connect + (STARTTLS) + SCRAM + resource binding, n times each.
async fn bench_login(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let cert = ca.server_cert("bench.test").unwrap();
    let p = server("bench.test", &["alice"], |s| s.cert = Some(cert));
    let addr = p.c2s_addr();
    let mut tcp = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        drop(TcpStream::connect(&addr).unwrap());
        tcp.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let tcp_p50 = median(tcp);
    println!("\nlogin: connect + TLS + SCRAM + bind, n={n} each");
    println!(
        "{:<12} {:>9} {:>9} {:>22} {:>8}",
        "mode", "p50 ms", "p99 ms", "baseline TCP p50 ms", "ratio"
    );
    for (name, tls) in [("plaintext", TlsMode::Plain), ("STARTTLS", TlsMode::StartTls)] {
        let mut samples = Vec::new();
        for i in 0..n {
            let cfg = login_config(&format!("alice@bench.test/l{i}"), &addr, tls, Some(&ca.ca_file));
            let t = Instant::now();
            let s = Session::connect(SessionConfig::new(cfg, i as u64)).await.unwrap();
            samples.push(t.elapsed().as_secs_f64() * 1e3);
            s.close(None, Duration::from_secs(1)).await;
        }
        let p50 = percentile(&mut samples, 0.5);
        let p99 = percentile(&mut samples, 0.99);
        println!(
            "{name:<12} {p50:>9.2} {p99:>9.2} {tcp_p50:>22.3} {:>7.0}x",
            p50 / tcp_p50
        );
    }
}

async fn node_pair(addr: &str, dir: &std::path::Path) -> (NodeHandle, NodeHandle) {
    let start = |user: &str| {
        let home = dir.join(user);
        std::fs::create_dir_all(&home).unwrap();
        let path = home.join("ringlet.toml");
        std::fs::write(
            &path,
            format!(
                "[xmpp]\njid = \"{user}@bench.test\"\npassword = \"{PASSWORD}\"\nserver = \"{addr}\"\ntls = \"plain\"\n\
                 [overlay]\nname = \"bench\"\nfriends = [\"alice@bench.test\", \"bob@bench.test\"]\n{}",
                std::env::var("BENCH_RELAY").unwrap_or_default()
            ),
        )
        .unwrap();
        let ca = ringlet::secure::cert::Ca::from_seed("bench", [0x42; 32]).unwrap();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let user_jid = format!("{user}@bench.test").parse().unwrap();
        ringlet::secure::admin::provision(
            &ca,
            &home.join("node.key"),
            &home.join("group.cert"),
            &user_jid,
            unix,
        )
        .unwrap();
        Config::load(&path).unwrap()
    };
    let a = node::start(&start("alice"), Options::default()).await.unwrap();
    let b = node::start(&start("bob"), Options::default()).await.unwrap();
    for (n, peer) in [(&a, b.node_id()), (&b, a.node_id())] {
        let want = peer.to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !n.status().await.unwrap().peers.iter().any(|p| p.node_id == want) {
            assert!(Instant::now() < deadline, "nodes did not meet");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (a, b)
}

/// Answers every IQ get/set addressed to `session` with a result, forever; with `echo` the
/// result carries the request's payload back.
fn spawn_responder(mut session: Session, echo: bool) {
    tokio::spawn(async move {
        let sender = session.sender();
        while let Some(ev) = session.next_event().await {
            if let SessionEvent::Stanza(stanza) = ev {
                if let Stanza::Iq(
                    Iq::Get {
                        from, id, payload, ..
                    }
                    | Iq::Set {
                        from, id, payload, ..
                    },
                ) = *stanza
                {
                    let payload = echo.then_some(payload);
                    let reply = Iq::Result {
                        from: None,
                        to: from,
                        id,
                        payload,
                    };
                    if let Some(p) = sender.reserve().await {
                        p.send(reply.into());
                    }
                }
            }
        }
    });
}

/// Sends IQs from `session` to `to` with up to `window` outstanding; returns the round trip of
/// each (in ms) and the elapsed time.
async fn iq_blast(
    session: &mut Session,
    to: &Jid,
    payloads: &[Element],
    window: usize,
) -> (Vec<f64>, Duration) {
    let sender = session.sender();
    let start = Instant::now();
    let mut sent_at = std::collections::HashMap::new();
    let mut rtts = Vec::new();
    let mut next = 0;
    while rtts.len() < payloads.len() {
        while next < payloads.len() && sent_at.len() < window {
            let id = format!("b{next}");
            let iq = Iq::Set {
                from: None,
                to: Some(to.clone()),
                id: id.clone(),
                payload: payloads[next].clone(),
            };
            sender.reserve().await.unwrap().send(iq.into());
            sent_at.insert(id, Instant::now());
            next += 1;
        }
        if let Some(SessionEvent::Stanza(stanza)) = session.next_event().await {
            if let Stanza::Iq(Iq::Result { id, .. }) = *stanza {
                if let Some(t) = sent_at.remove(&id) {
                    rtts.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    (rtts, start.elapsed())
}

fn blob(len: usize) -> Element {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(vec![0x5au8; len]);
    Element::builder("q", "urn:ringlet:bench").append(text).build()
}

async fn recv_datagram(n: &mut NodeHandle) -> Vec<u8> {
    loop {
        match n.recv().await {
            Some(AppEvent::Datagram { data, .. }) => return data,
            Some(_) => {}
            None => panic!("node stopped"),
        }
    }
}

async fn bench_rtt(n: usize) {
    let p = server("bench.test", &["alice", "bob", "carol", "dave"], |_| {});
    let addr = p.c2s_addr();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = node_pair(&addr, dir.path()).await;
    let b_node = b.node_id();
    // bob echoes every datagram back
    let (b_ctl, a_node) = (b.controller(), a.node_id());
    let echo = tokio::spawn(async move {
        loop {
            let d = recv_datagram(&mut b).await;
            b_ctl.send(a_node, d).await.unwrap();
        }
    });
    let mut carol = raw_session("carol@bench.test/raw", &addr).await;
    let dave = raw_session("dave@bench.test/raw", &addr).await;
    let dave_jid: Jid = dave.jid().clone().into();
    spawn_responder(dave, true);
    println!("\nrelay echo round trip (datagram there and back through the server), n={n} each");
    println!("(baseline: a raw IQ carrying the same payload, echoed back in its result)");
    println!(
        "{:<8} {:>9} {:>9} {:>20} {:>20} {:>8}",
        "size", "p50 ms", "p99 ms", "baseline p50 ms", "baseline p99 ms", "ratio"
    );
    for size in [16usize, 4096] {
        let mut samples = Vec::new();
        for i in 0..n + 20 {
            let t = Instant::now();
            a.send(b_node, vec![i as u8; size]).await.unwrap();
            let back = recv_datagram(&mut a).await;
            assert_eq!(back.len(), size);
            if i >= 20 {
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (mut base, _) = iq_blast(&mut carol, &dave_jid, &vec![blob(size); n], 1).await;
        let base_p50 = percentile(&mut base, 0.5);
        let base_p99 = percentile(&mut base, 0.99);
        let p50 = percentile(&mut samples, 0.5);
        let p99 = percentile(&mut samples, 0.99);
        let label = format!("{size} B");
        println!(
            "{label:<8} {p50:>9.3} {p99:>9.3} {base_p50:>20.3} {base_p99:>20.3} {:>7.2}x",
            p50 / base_p50
        );
    }
    echo.abort();
    a.shutdown().await.unwrap();
}

/// Sends `data` from `a` to `b`; returns (payload bytes, elapsed) once all arrived.
async fn transfer(a: &NodeHandle, b: &mut NodeHandle, data: &[Vec<u8>]) -> (usize, Duration) {
    let to = b.node_id();
    let ctl = a.controller();
    let owned: Vec<Vec<u8>> = data.to_vec();
    let total: usize = data.iter().map(Vec::len).sum();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for d in owned {
            while let Err(e) = ctl.send(to, d.clone()).await {
                assert!(e.to_string().contains("queue"), "send failed: {e}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    for _ in 0..data.len() {
        recv_datagram(b).await;
    }
    let elapsed = start.elapsed();
    sender.await.unwrap();
    (total, elapsed)
}

async fn bench_throughput(runs: usize, quick: bool) {
    let p = server("bench.test", &["alice", "bob", "carol", "dave"], |_| {});
    let addr = p.c2s_addr();
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = node_pair(&addr, dir.path()).await;
    let data = ringlet_lab::data::datagrams(if quick { 200 } else { 600 }, 200 * 1024, 9);
    let mut rates = Vec::new();
    for _ in 0..runs {
        let (bytes, t) = transfer(&a, &mut b, &data).await;
        rates.push(bytes as f64 / 1e6 / t.as_secs_f64());
    }
    // Baselines: the same datagrams as raw IQs, split like the relay splits them (12 KiB
    // fragments), without relay logic: 16 outstanding (a naive sender) and stop-and-wait.
    let mut carol = raw_session("carol@bench.test/raw", &addr).await;
    let dave = raw_session("dave@bench.test/raw", &addr).await;
    let dave_jid: Jid = dave.jid().clone().into();
    spawn_responder(dave, false);
    let total: usize = data.iter().map(Vec::len).sum();
    let payloads: Vec<Element> = data
        .iter()
        .flat_map(|d| d.chunks(12 * 1024))
        .map(|c| blob(c.len()))
        .collect();
    let mut naive = Vec::new();
    let mut stop_and_wait = Vec::new();
    for _ in 0..runs {
        for (window, out) in [(16, &mut naive), (1, &mut stop_and_wait)] {
            let (_, t) = iq_blast(&mut carol, &dave_jid, &payloads, window).await;
            out.push(total as f64 / 1e6 / t.as_secs_f64());
        }
    }
    let r = median(rates.clone());
    println!(
        "\nrelay throughput, unthrottled: {} datagrams 1 B..200 KiB, {:.1} MB payload, {runs} runs",
        data.len(),
        total as f64 / 1e6
    );
    println!("{:<34} {:>12} {:>18}", "", "median MB/s", "relay / this");
    println!("{:<34} {r:>12.2} {:>18}", "ringlet relay", "");
    for (name, v) in [
        ("raw IQs (same fragments), window 16", &naive),
        ("raw IQs (same fragments), window 1", &stop_and_wait),
    ] {
        let m = median(v.clone());
        println!("{name:<34} {m:>12.2} {:>17.2}x", r / m);
    }
    println!("  runs MB/s: relay {rates:.2?}, window 16 {naive:.2?}, window 1 {stop_and_wait:.2?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn bench_shaped(runs: usize, quick: bool) {
    let p = server("bench.test", &["alice", "bob"], |s| s.limits = true);
    let addr = p.c2s_addr();
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = node_pair(&addr, dir.path()).await;
    let count = if quick { 10 } else { 25 };
    let data: Vec<Vec<u8>> = (0..count)
        .map(|i| vec![0x3c; 4096 + (i * 2731) % 12_288])
        .collect();
    let configured = 10.0 * 1024.0;
    // With Prosody's epoll backend mod_limits uses conn:setlimit(): after each read it pauses
    // for bytes/rate seconds; there is no burst allowance.
    let envelope = relay_envelope(&b.jid().to_string());
    let mut wire_rates = Vec::new();
    let mut payload_rates = Vec::new();
    for _ in 0..runs {
        let before = a.status().await.unwrap().counters;
        let (bytes, t) = transfer(&a, &mut b, &data).await;
        let after = a.status().await.unwrap().counters;
        let fragments = after["relay_fragments_acked"] - before["relay_fragments_acked"];
        // Bytes the server had to read from the sender: base64 payload plus the serialised
        // envelope of each fragment stanza (pings and presence are left out).
        let wire = bytes.div_ceil(3) * 4 + fragments as usize * envelope;
        wire_rates.push(wire as f64 / t.as_secs_f64());
        payload_rates.push(bytes as f64 / t.as_secs_f64());
    }
    let counters = a.status().await.unwrap().counters;
    let w = median(wire_rates.clone());
    println!(
        "\nrelay throughput with mod_limits (c2s 10 KiB/s): {count} datagrams of 4..16 KiB, {runs} runs"
    );
    println!("(wire = what the server reads: base64 payload + {envelope} B of stanza per fragment)");
    println!(
        "{:<16} {:>10} {:>12} {:>15} {:>9}",
        "", "wire B/s", "payload B/s", "configured B/s", "ratio"
    );
    println!(
        "{:<16} {w:>10.0} {:>12.0} {configured:>15.0} {:>8.1}%",
        "ringlet relay",
        median(payload_rates),
        100.0 * w / configured
    );
    println!(
        "  sender session resets: {} (1 = never reconnected), retransmits: {}",
        counters["session_resets"], counters["relay_retransmits"]
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Raw IQ throughput by stanza size: how Prosody's cost per byte depends on stanza size.
async fn bench_stanza_sizes() {
    let p = server("bench.test", &["carol", "dave"], |_| {});
    let addr = p.c2s_addr();
    let mut carol = raw_session("carol@bench.test/raw", &addr).await;
    let dave = raw_session("dave@bench.test/raw", &addr).await;
    let dave_jid: Jid = dave.jid().clone().into();
    spawn_responder(dave, false);
    println!("\nraw IQ throughput by payload size and window (4 MB each): why the relay keeps queues short");
    println!(
        "{:<10} {:>16} {:>16} {:>16}",
        "payload", "window 1 MB/s", "window 4 MB/s", "window 16 MB/s"
    );
    for chunk in [1024usize, 4096, 12 * 1024, 32 * 1024, 96 * 1024] {
        let payloads: Vec<Element> = (0..(4 << 20) / chunk).map(|_| blob(chunk)).collect();
        let mut row = format!("{:<10}", format!("{} KiB", chunk / 1024));
        for window in [1, 4, 16] {
            let (_, t) = iq_blast(&mut carol, &dave_jid, &payloads, window).await;
            let mbs = (payloads.len() * chunk) as f64 / 1e6 / t.as_secs_f64();
            row.push_str(&format!(" {mbs:>16.2}"));
        }
        println!("{row}");
    }
}

/// Serialised size of a relay stanza around its base64 text, as the sender writes it.
fn relay_envelope(to: &str) -> usize {
    use ringlet_xmpp::wire::relay::{Frag, RelayFrame};
    let frame = RelayFrame {
        stream: 0xdead_beef,
        seq: 12_345,
        frag: Frag { index: 3, count: 17 },
        data: vec![1; 300],
    };
    let iq = Iq::Set {
        from: None,
        to: Some(Jid::new(to).unwrap()),
        id: "rdeadbeef.12345.1".into(),
        payload: frame.emit(),
    };
    let text = String::from(&Element::from(iq));
    text.len() - 400
}

#[tokio::main]
async fn main() {
    let args = common::Args::parse();
    let (quick, run) = (args.quick, |name: &str| args.wants(name));
    println!(
        "ringlet XMPP benchmarks: Prosody 0.12 on loopback, nagle off, {} build",
        common::build()
    );
    if run("sizes") {
        bench_stanza_sizes().await;
    }
    if run("login") {
        bench_login(if quick { 10 } else { 50 }).await;
    }
    if run("rtt") {
        bench_rtt(if quick { 100 } else { 1000 }).await;
    }
    if run("throughput") {
        bench_throughput(if quick { 1 } else { 3 }, quick).await;
    }
    if run("shaped") {
        bench_shaped(if quick { 1 } else { 3 }, quick).await;
    }
}
