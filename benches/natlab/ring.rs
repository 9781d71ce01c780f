//! The `ring` section: twelve peers behind cone NATs with 20 ms one-way WAN delay and the VPN
//! on. Measures, from the first process start: a consistent ring whose near-neighbour links
//! are all direct, the first VPN ping answered (p0 → p1 through the TUN devices), every VPN
//! address known everywhere; then, idle, the traffic per node on its LAN interface (XMPP and
//! UDP together) over a window, and the daemons' memory.

use std::time::{Duration, Instant};

use ringlet::node::status::Status;
use ringlet_lab::natlab::LabOptions;
use ringlet_lab::NatType;

use crate::support::scene::Scene;
use crate::support::NodeSpec;

const PEERS: usize = 12;
const DELAY: Duration = Duration::from_millis(20);
const FORM_LIMIT: Duration = Duration::from_secs(60);

/// Consistent, with both neighbours reached directly.
fn ring_direct(st: &Status) -> bool {
    let direct = |n: &Option<String>| {
        n.as_ref()
            .is_some_and(|id| st.peers.iter().any(|p| &p.node_id == id && p.path == "direct"))
    };
    st.ring.consistent == Some(true) && direct(&st.ring.left) && direct(&st.ring.right)
}

/// Rx + tx bytes of every interface in a peer's namespace but loopback and the TUN device.
fn lan_bytes(scene: &Scene, name: &str) -> u64 {
    let out = scene
        .lab
        .peer(name)
        .ns
        .command("cat")
        .arg("/proc/net/dev")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (iface, rest) = l.split_once(':')?;
            let iface = iface.trim();
            if iface == "lo" || iface.starts_with("ringlet") {
                return None;
            }
            let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            Some(f.first()? + f.get(8)?)
        })
        .sum()
}

/// Per node: every status counter, the kernel's UDP and TCP packet counts (`snmp_*`), and
/// how many peers it reaches directly (`direct_peers`).
async fn idle_counters(scene: &Scene) -> Vec<std::collections::BTreeMap<String, u64>> {
    let mut out = Vec::new();
    for (i, st) in scene.statuses().await.into_iter().enumerate() {
        let mut c = st.as_ref().map(|s| s.counters.clone()).unwrap_or_default();
        let direct = st
            .as_ref()
            .map_or(0, |s| s.peers.iter().filter(|p| p.path == "direct").count());
        c.insert("direct_peers".into(), direct as u64);
        if let Some(s) = &st {
            c.insert("ring_links_now".into(), s.ring.links as u64);
            c.insert("ring_shortcuts_now".into(), s.ring.shortcuts as u64);
        }
        let snmp = scene
            .lab
            .peer(&format!("r{i}"))
            .ns
            .command("cat")
            .arg("/proc/net/snmp")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&snmp.stdout).into_owned();
        for (proto, fields) in [
            ("Udp:", ["InDatagrams", "OutDatagrams"]),
            ("Tcp:", ["InSegs", "OutSegs"]),
        ] {
            let mut rows = text.lines().filter(|l| l.starts_with(proto));
            let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
                continue;
            };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                if fields.contains(&name) {
                    c.insert(
                        format!("snmp_{}{name}", &proto[..3].to_lowercase()),
                        value.parse().unwrap_or(0),
                    );
                }
            }
        }
        out.push(c);
    }
    out
}

/// The counters that moved while idle, per node per minute (mean over the nodes), busiest
/// first: where the idle bytes come from.
fn print_idle_breakdown(
    before: &[std::collections::BTreeMap<String, u64>],
    after: &[std::collections::BTreeMap<String, u64>],
    idle: Duration,
) {
    let minutes = idle.as_secs_f64() / 60.0;
    let mut rates: Vec<(String, f64)> = after[0]
        .keys()
        .map(|k| {
            let delta: u64 = before
                .iter()
                .zip(after)
                .map(|(b, a)| {
                    a.get(k)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(b.get(k).copied().unwrap_or(0))
                })
                .sum();
            (k.clone(), delta as f64 / before.len() as f64 / minutes)
        })
        .filter(|(_, r)| *r > 0.0)
        .collect();
    rates.sort_by(|a, b| b.1.total_cmp(&a.1));
    let now = |k: &str| {
        after
            .iter()
            .map(|c| c.get(k).copied().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    println!(
        "idle breakdown: per node direct peers {:?}, ring links {:?}, shortcuts {:?}; counters per node per minute:",
        now("direct_peers"),
        now("ring_links_now"),
        now("ring_shortcuts_now"),
    );
    for (k, r) in rates
        .iter()
        .filter(|(k, _)| !k.ends_with("_now") && k != "direct_peers")
        .take(32)
    {
        println!("  {k:<32} {r:>10.1}");
    }
}

/// (VmRSS, VmHWM) of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub async fn bench_ring(idle: Duration) {
    println!(
        "\n{PEERS} peers behind cone NATs, {} ms one-way WAN delay, VPN on (one run)",
        DELAY.as_millis()
    );
    let names: Vec<String> = (0..PEERS).map(|i| format!("r{i}")).collect();
    let kinds = [NatType::Full, NatType::Restricted, NatType::PortRestricted];
    let spec: Vec<(&str, NatType)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), kinds[i % kinds.len()]))
        .collect();
    let vpn = |_: &ringlet_lab::NatLab, _: usize, s: &mut NodeSpec| {
        s.extra = "[vpn]\nenabled = true\n".into();
    };
    let options = LabOptions {
        wan_delay: Some(DELAY),
    };
    let scene = Scene::start_custom("ring", &spec, options, &[], &vpn).await;
    let start = scene.started;
    let (mut formed, mut pinged, mut addresses) = (None, None, None);
    let deadline = Instant::now() + FORM_LIMIT;
    while (formed.is_none() || pinged.is_none() || addresses.is_none()) && Instant::now() < deadline {
        let st: Vec<Option<Status>> = scene.statuses().await;
        let t = start.elapsed().as_secs_f64();
        let all = |f: &dyn Fn(&Status) -> bool| st.iter().all(|s| s.as_ref().is_some_and(f));
        if formed.is_none() && all(&|s| s.peers.len() == PEERS - 1 && ring_direct(s)) {
            formed = Some(t);
        }
        if addresses.is_none()
            && all(&|s| s.peers.len() == PEERS - 1 && s.peers.iter().all(|p| p.vpn_address.is_some()))
        {
            addresses = Some(t);
        }
        let target = st[0]
            .as_ref()
            .and_then(|s| s.peers.iter().find(|p| p.node_id == scene.ids[1]))
            .and_then(|p| p.vpn_address.clone());
        if let (None, Some(ip)) = (pinged, target) {
            let ok = scene
                .lab
                .peer("r0")
                .ns
                .command("ping")
                .args(["-c", "1", "-W", "1", &ip])
                .output();
            if ok.is_ok_and(|o| o.status.success()) {
                pinged = Some(start.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let show = |t: Option<f64>| t.map_or("not within 60 s".to_owned(), |t| format!("{t:.3} s"));
    println!(
        "{:<52} {:>16} {:>8}",
        "from the first process start to", "time", "target"
    );
    println!(
        "{:<52} {:>16} {:>8}",
        "consistent ring, near-neighbour links direct",
        show(formed),
        "≤ 2 s"
    );
    println!(
        "{:<52} {:>16} {:>8}",
        "first VPN ping answered (r0 → r1)",
        show(pinged),
        ""
    );
    println!(
        "{:<52} {:>16} {:>8}",
        "every VPN address known on every node",
        show(addresses),
        ""
    );

    // Settle (address lookups, DHT puts), then count idle traffic.
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The first minutes still hold start-up work (the start-up mesh trimmed after its grace,
    // keepalive waits growing from 20 s to their cap); the rest of the window is the steady
    // state, measured too.
    let warm = (idle / 3).min(Duration::from_secs(180));
    let bytes_now = || names.iter().map(|n| lan_bytes(&scene, n)).collect::<Vec<u64>>();
    let before = bytes_now();
    let counters_before = idle_counters(&scene).await;
    tokio::time::sleep(warm).await;
    let steady_before = bytes_now();
    let counters_steady = idle_counters(&scene).await;
    tokio::time::sleep(idle - warm).await;
    let after = bytes_now();
    let counters_after = idle_counters(&scene).await;
    print_idle_breakdown(&counters_before, &counters_after, idle);
    println!("steady part (after the first {} s):", warm.as_secs());
    print_idle_breakdown(&counters_steady, &counters_after, idle - warm);
    if let Ok(keep) = std::env::var("RINGLET_BENCH_KEEP_LOGS") {
        for n in &names {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                scene.dir.path().join(n).join("stderr.log"),
                format!("{keep}/{n}.log"),
            );
        }
    }
    for (what, from, secs) in [
        ("the whole window", &before, idle),
        ("its steady part", &steady_before, idle - warm),
    ] {
        let mut rates: Vec<f64> = after
            .iter()
            .zip(from)
            .map(|(a, b)| (a - b) as f64 / secs.as_secs_f64())
            .collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        println!(
            "idle traffic per node, {what} ({} s; rx+tx on its LAN link, XMPP + UDP): median {:.1} B/s, max {:.1} B/s (target ≤ 30 B/s)",
            secs.as_secs(),
            rates[rates.len() / 2],
            rates[rates.len() - 1]
        );
    }
    let mem: Vec<(u64, u64)> = names
        .iter()
        .map(|n| {
            let pid_file = scene.dir.path().join(n).join("ringlet.pid");
            let pid = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok());
            pid.map_or((0, 0), memory_kib)
        })
        .collect();
    let rss_max = mem.iter().map(|m| m.0).max().unwrap_or(0);
    let hwm_max = mem.iter().map(|m| m.1).max().unwrap_or(0);
    println!(
        "daemon memory: RSS max {:.1} MiB, peak (VmHWM) max {:.1} MiB (target ≤ 20 MiB)",
        rss_max as f64 / 1024.0,
        hwm_max as f64 / 1024.0
    );
}
