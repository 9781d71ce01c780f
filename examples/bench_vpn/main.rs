//! The VPN throughput benchmark (root): iperf3 TCP and UDP in one NAT lab and one run, between
//! two peers behind port-restricted cone NATs (every system punches a direct path) and two
//! behind symmetric NATs (every system relays), over
//! 1. the raw underlay (no VPN: a port forward on the receiver's router, so the packets cross
//!    both NATs exactly as the VPNs' UDP does),
//! 2. ringlet's VPN (`ringlet up` with `[vpn] enabled = true`, all four peers in one overlay:
//!    direct path, and a ring tunnel through another member for the symmetric pair),
//! 3. tinc 1.0 (a meeting-point node on the public host, router mode, default ciphers),
//! 4. n2n 1.3 (a supernode on the public host, an edge per peer),
//! 5. "bare", direct pair only: the userspace ceiling, an unencrypted TUN↔UDP forwarder with
//!    ringlet's kernel offloads and no user-space copy (`bare.rs`; what no userspace TUN VPN
//!    can beat here), and its variants `bare-1t`, `bare-1t-aead` and `bare-aead` (one thread,
//!    sealed frames; not run unless named in `--only`).
//!
//! Repetitions are interleaved (rep 1 of every system, then rep 2, …) so that drift of the
//! shared 2-core machine hits every system alike; medians and ratios are printed at the end.
//! Everything started is owned by guards: processes are killed by PID and namespaces deleted
//! on return, on panic and on Ctrl-C.
//!
//! `cargo build --release --bin ringlet --example bench_vpn && ./target/release/examples/bench_vpn`
//! Options: `--reps N` (5), `--time S` (5 s per run), `--udp-rate M[,M…]` (offered Mbit/s;
//! 200,1000), `--only raw,ringlet,tinc,n2n,bare,bare-1t,bare-1t-aead,bare-aead` (the first
//! five), `--quiet P` (before each run wait up to 10 min for the rest of the machine to use at
//! most P % CPU, of 100 % per core; 25; a run that started anyway is marked `*`),
//! `--direct-only` (leave out the symmetric pair).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

mod bare;
#[path = "../common/home.rs"]
mod home;
mod iperf;
mod systems;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use iperf::{Daemons, Sample, Test};
use ringlet_lab::natlab::{LabOptions, PUBLIC_IP, PUBLIC_IP2};
use ringlet_lab::{NatLab, NatType, Prosody, ProsodySpec};

pub const DOMAIN: &str = "lab.bench";
pub const PASSWORD: &str = "bench-password";
/// The lab's peers: pairs of (sender, receiver). The first pair is behind port-restricted cone
/// NATs, so every system can punch; the second behind symmetric NATs, so every system relays
/// (tinc and n2n through the public host, ringlet through a ring tunnel via another member).
const PEERS: [(&str, NatType); 4] = [
    ("alice", NatType::PortRestricted),
    ("bob", NatType::PortRestricted),
    ("carol", NatType::Symmetric),
    ("dave", NatType::Symmetric),
];

fn pair_name(sender: usize) -> &'static str {
    if sender == 0 {
        "direct"
    } else {
        "relay"
    }
}

/// Programs the benchmark runs, and the Debian package of each.
const TOOLS: [(&str, &str); 9] = [
    ("iperf3", "iperf3"),
    ("tincd", "tinc"),
    ("edge", "n2n"),
    ("supernode", "n2n"),
    ("prosody", "prosody"),
    ("turnserver", "coturn"),
    ("iptables", "iptables"),
    ("ping", "iputils-ping"),
    ("ss", "iproute2"),
];

struct Options {
    reps: usize,
    secs: u32,
    udp_rates: Vec<u32>,
    only: Vec<String>,
    quiet: f64,
    relay: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        reps: 5,
        secs: 5,
        udp_rates: vec![200, 1000],
        only: ["raw", "ringlet", "tinc", "n2n", "bare"]
            .map(String::from)
            .to_vec(),
        quiet: 25.0,
        relay: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--reps" => o.reps = value()?.parse()?,
            "--time" => o.secs = value()?.parse()?,
            "--udp-rate" => o.udp_rates = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--quiet" => o.quiet = value()?.parse()?,
            "--direct-only" => o.relay = false,
            "--only" => o.only = value()?.split(',').map(String::from).collect(),
            _ => bail!("unknown argument {a}; see the doc comment of examples/bench_vpn/main.rs"),
        }
    }
    anyhow::ensure!(o.reps > 0 && o.secs > 0, "--reps and --time must be positive");
    Ok(o)
}

/// Installs missing Debian packages (as `scripts/demo.sh` does), or says which are missing.
fn ensure_tools() -> anyhow::Result<()> {
    let found = |bin: &str| {
        let path = std::env::var("PATH").unwrap_or_default();
        let on_path = path
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|d| Path::new(d).join(bin).is_file());
        on_path
    };
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !found(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench_vpn: installing {}", missing.join(" "));
    let ok = std::process::Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
    anyhow::ensure!(
        ok && TOOLS.iter().all(|(bin, _)| found(bin)),
        "bench_vpn needs the Debian packages: {} (apt-get install -y {})",
        missing.join(" "),
        missing.join(" ")
    );
    Ok(())
}

fn say(start: Instant, msg: impl std::fmt::Display) {
    println!("[{:>6.1} s] {msg}", start.elapsed().as_secs_f64());
}

/// One system under test, on one pair.
struct System {
    name: &'static str,
    /// (sender, receiver) indices into the members.
    pair: (usize, usize),
    /// The path the system reported, if it does ("" → judged by the public host's bytes).
    path: String,
    server_ip: Ipv4Addr,
    /// The sender's and the receiver's daemon (CPU sampled).
    daemons: Daemons,
    /// Device on the sender (its MTU, its drops).
    device: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, variant, address, peer] = &args[..] {
        if mode == "--bare-forwarder" {
            return bare::run(variant, address.parse()?, peer.parse()?);
        }
    }
    let opts = options()?;
    ringlet_lab::require_root("bench_vpn (network namespaces)")?;
    ensure_tools()?;
    let dir = tempfile::Builder::new().prefix("ringlet-bench-vpn-").tempdir()?;
    tokio::select! {
        result = run(start, dir.path(), &opts) => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; cleaning up");
            Ok(())
        }
    }
}

async fn run(start: Instant, dir: &Path, opts: &Options) -> anyhow::Result<()> {
    let bin = home::ringlet_bin()?;
    let pairs: &[(usize, usize)] = if opts.relay { &[(0, 1), (2, 3)] } else { &[(0, 1)] };
    let members: Vec<&str> = PEERS[..pairs.len() * 2].iter().map(|p| p.0).collect();
    let lab_peers: Vec<(&str, NatType)> = PEERS[..members.len()].iter().map(|p| (p.0, p.1)).collect();
    // Declared first, dropped last: every process below stops before the namespaces go.
    let mut lab = NatLab::new("bv", &lab_peers, &LabOptions::default()).context("building the NAT lab")?;
    lab.start_coturn(dir)?;
    let mut spec = ProsodySpec::new(DOMAIN)?;
    spec.interface = PUBLIC_IP.into();
    spec.c2s_port = 5222;
    spec.netns = Some(lab.public().name().to_owned());
    spec.shared_roster = members.iter().map(|n| format!("{n}@{DOMAIN}")).collect();
    spec.stun = vec![(PUBLIC_IP.to_string(), 3478), (PUBLIC_IP2.to_string(), 3478)];
    let mut server = Prosody::new(spec)?;
    for name in &members {
        server.register(name, PASSWORD)?;
    }
    server.launch()?;
    for &(i, j) in pairs {
        let (a, b) = (lab.peer(members[i]), lab.peer(members[j]));
        say(
            start,
            format!(
                "pair {}: {} {} ({} NAT, public {}) → {} {} ({} NAT, public {}); public host {PUBLIC_IP}",
                pair_name(i),
                members[i],
                a.ip,
                a.nat,
                a.public_ip,
                members[j],
                b.ip,
                b.nat,
                b.public_ip
            ),
        );
    }

    let want = |s: &str| opts.only.iter().any(|o| o == s);
    let mut systems = Vec::new();
    if want("raw") {
        for &(i, j) in pairs {
            // The raw path: the receiver's router forwards the iperf3 port (TCP and UDP) to it.
            let b = lab.peer(members[j]);
            let router = b.router.as_ref().context("the receiver has a router")?;
            for proto in ["tcp", "udp"] {
                let out = router
                    .command("iptables")
                    .args(["-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", proto])
                    .args(["--dport", &iperf::PORT.to_string(), "-j", "DNAT"])
                    .args(["--to-destination", &b.ip.to_string()])
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "iptables DNAT: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            systems.push(System {
                name: "raw",
                pair: (i, j),
                path: "port forward".into(),
                server_ip: b.public_ip,
                daemons: vec![],
                device: "eth0".into(),
            });
        }
    }
    let mut vpns = Vec::new();
    // Sender, receiver and, for a relayed pair, the relay: processes[relay].
    let daemons = |vpn: &systems::Vpn, idx: &[usize]| -> Daemons {
        idx.iter()
            .map(|&k| &vpn.processes[k])
            .map(|p| (p.name().to_owned(), p.pid().unwrap_or(0)))
            .collect()
    };
    if want("ringlet") {
        let vpn = systems::ringlet(&lab, &members, pairs, &bin, dir).await?;
        let mut st = Vec::new();
        for s in &vpn.sockets {
            st.push(home::status(s).await.context("ringlet status")?);
        }
        for &(i, j) in pairs {
            let path = systems::pair_path(&st.iter().cloned().map(Some).collect::<Vec<_>>(), &members, i, j)
                .unwrap_or_default();
            let relay = systems::relay_of(&st, &members, i, j);
            let (path, idx) = match relay {
                Some(r) => (format!("{path} via {}", members[r]), vec![i, j, r]),
                None => (path, vec![i, j]),
            };
            say(
                start,
                format!("ringlet {}: {path}, receiver {}", pair_name(i), vpn.addresses[j]),
            );
            systems.push(System {
                name: "ringlet",
                pair: (i, j),
                path,
                server_ip: vpn.addresses[j],
                daemons: daemons(&vpn, &idx),
                device: vpn.device.clone(),
            });
        }
        vpns.push(vpn);
    }
    for name in ["tinc", "n2n"] {
        if !want(name) {
            continue;
        }
        let vpn = if name == "tinc" {
            systems::tinc(&lab, &members, pairs, dir).await?
        } else {
            systems::n2n(&lab, &members, pairs, dir).await?
        };
        let hub = vpn.processes.len() - 1;
        for &(i, j) in pairs {
            say(
                start,
                format!(
                    "{name} {}: answering ping, receiver {}",
                    pair_name(i),
                    vpn.addresses[j]
                ),
            );
            systems.push(System {
                name,
                pair: (i, j),
                path: String::new(),
                server_ip: vpn.addresses[j],
                daemons: daemons(&vpn, &[i, j, hub]),
                device: vpn.device.clone(),
            });
        }
        vpns.push(vpn);
    }
    for (v, name) in bare::VARIANTS.iter().enumerate().filter(|(_, n)| want(n)) {
        let (i, j) = pairs[0];
        let vpn = systems::bare(&lab, &members, (i, j), v, dir).await?;
        say(
            start,
            format!("{name} direct: answering ping, receiver {}", vpn.addresses[j]),
        );
        systems.push(System {
            name,
            pair: (i, j),
            path: String::new(),
            server_ip: vpn.addresses[j],
            daemons: daemons(&vpn, &[i, j]),
            device: vpn.device.clone(),
        });
        vpns.push(vpn);
    }
    // Pair by pair, systems in the order raw, ringlet, tinc, n2n, bare.
    systems.sort_by_key(|s| s.pair);

    let tests: Vec<Test> = std::iter::once(Test::Tcp)
        .chain(opts.udp_rates.iter().map(|r| Test::Udp(*r)))
        .collect();
    let mut results: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    let mut failures: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for rep in 0..opts.reps {
        for (si, sys) in systems.iter().enumerate() {
            let bench = iperf::Bench {
                client: &lab.peer(members[sys.pair.0]).ns,
                server: &lab.peer(members[sys.pair.1]).ns,
                public: lab.public(),
                secs: opts.secs,
                dir,
                quiet: opts.quiet,
            };
            // Wake the path (a peer entry may have expired while the others were measured).
            let _ = bench
                .client
                .command("ping")
                .args(["-c", "3", "-i", "0.2", "-W", "1"])
                .arg(sys.server_ip.to_string())
                .output();
            for (ti, test) in tests.iter().enumerate() {
                let sample = match bench
                    .measure(sys.server_ip, &sys.device, &sys.daemons, *test)
                    .await
                {
                    Ok(sample) => sample,
                    Err(e) => {
                        // One failed run is a result too: counted and shown, the rest goes on.
                        say(
                            start,
                            format!(
                                "rep {}/{} {:<6} {:<8} {:<10} FAILED: {e:#}",
                                rep + 1,
                                opts.reps,
                                pair_name(sys.pair.0),
                                sys.name,
                                test.label()
                            ),
                        );
                        *failures.entry((si, ti)).or_default() += 1;
                        continue;
                    }
                };
                say(
                    start,
                    format!(
                        "rep {}/{} {:<6} {:<8} {:<10} {:>8.1} Mbit/s  {}  drops dev {} rcvbuf {}  public host {:.2} B/B  CPU {} (machine {:.0}%, before {:.0}%)",
                        rep + 1,
                        opts.reps,
                        pair_name(sys.pair.0),
                        sys.name,
                        test.label(),
                        sample.mbps,
                        loss_label(test, sample.loss),
                        sample.drops.device,
                        sample.drops.rcvbuf,
                        sample.via_public,
                        cpu_label(&sys.daemons, &sample.cpu),
                        sample.machine,
                        sample.background
                    ),
                );
                results.entry((si, ti)).or_default().push(sample);
            }
        }
    }

    // ringlet's own view after the runs: its path, and how its UDP sends were batched.
    if let Some(vpn) = vpns.iter().find(|v| !v.sockets.is_empty()) {
        for (name, socket) in members.iter().zip(&vpn.sockets) {
            let Some(st) = home::status(socket).await else {
                continue;
            };
            let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
            let paths: Vec<String> = st
                .peers
                .iter()
                .map(|p| format!("{} {}", p.jid.split('@').next().unwrap_or("?"), p.path))
                .collect();
            let path = paths.join(", ");
            say(
                start,
                format!(
                    "ringlet {name}: paths {path}; relayed out {}, tunnelled out {}; from TUN {}, to TUN {} \
                     (TCP super-packets whole: out {}, in {}; records lost {}); \
                     UDP datagrams out {} in {} send calls ({:.2} per call), send errors {}, VPN device errors {}",
                    c("link_relayed_out"),
                    c("link_tunnelled_out"),
                    c("vpn_from_tun"),
                    c("vpn_to_tun"),
                    c("vpn_whole_out"),
                    c("vpn_whole_in"),
                    c("link_records_lost"),
                    c("udp_datagrams_out"),
                    c("udp_send_calls"),
                    c("udp_datagrams_out") as f64 / c("udp_send_calls").max(1) as f64,
                    c("udp_send_errors"),
                    c("vpn_device_errors"),
                ),
            );
        }
    }
    print_table(&lab, &members, &systems, &tests, &results, &failures, opts);
    drop(vpns);
    server.stop();
    drop(lab);
    Ok(())
}

fn loss_label(test: &Test, loss: f64) -> String {
    match test {
        Test::Tcp => format!("{loss:>5.0} retr"),
        Test::Udp(_) => format!("{loss:>5.1}% lost"),
    }
}

fn cpu_label(daemons: &Daemons, cpu: &[f64]) -> String {
    if daemons.is_empty() {
        return "-".into();
    }
    cpu.iter()
        .map(|c| format!("{c:.0}%"))
        .collect::<Vec<_>>()
        .join("/")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn print_table(
    lab: &NatLab,
    members: &[&str],
    systems: &[System],
    tests: &[Test],
    results: &BTreeMap<(usize, usize), Vec<Sample>>,
    failures: &BTreeMap<(usize, usize), usize>,
    opts: &Options,
) {
    println!(
        "\nmedians of {} runs of {} s each (TCP: iperf3 -O 1); UDP datagrams of {} bytes",
        opts.reps,
        opts.secs,
        iperf::UDP_LEN
    );
    println!(
        "| pair | system | path | MTU | test | Mbit/s (median) | runs | loss / retr | drops device / rcvbuf | daemon CPU% sender/receiver[/relay] | machine CPU% (of {:.0}) | before |",
        100.0 * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
    );
    println!("|---|---|---|---:|---|---:|---|---:|---:|---|---:|---:|");
    let mut medians: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    for (si, sys) in systems.iter().enumerate() {
        let sender = &lab.peer(members[sys.pair.0]).ns;
        let mtu = iperf::mtu(sender, &sys.device).map_or("?".into(), |m| m.to_string());
        let pair = format!("{} → {}", members[sys.pair.0], members[sys.pair.1]);
        for (ti, test) in tests.iter().enumerate() {
            let failed = failures.get(&(si, ti)).copied().unwrap_or(0);
            let Some(samples) = results.get(&(si, ti)) else {
                println!(
                    "| {pair} | {} | - | {mtu} | {} | - | failed ×{failed} | | | | | |",
                    sys.name,
                    test.label()
                );
                continue;
            };
            let m = median(samples.iter().map(|s| s.mbps).collect());
            medians.insert((si, ti), m);
            let via = median(samples.iter().map(|s| s.via_public).collect());
            let path = if !sys.path.is_empty() {
                sys.path.clone()
            } else if via < 0.05 {
                "direct".to_string()
            } else {
                format!("via public host ({via:.2} B/B)")
            };
            // A run that started on a busy machine (others' load above --quiet) is marked *.
            let mut runs: Vec<String> = samples
                .iter()
                .map(|s| {
                    let busy = if s.background > opts.quiet { "*" } else { "" };
                    format!("{:.0}{busy}", s.mbps)
                })
                .collect();
            runs.extend((0..failed).map(|_| "failed".to_string()));
            let loss = median(samples.iter().map(|s| s.loss).collect());
            let cpu: Vec<f64> = (0..sys.daemons.len())
                .map(|d| median(samples.iter().map(|s| s.cpu[d]).collect()))
                .collect();
            let machine = median(samples.iter().map(|s| s.machine).collect());
            let before = median(samples.iter().map(|s| s.background).collect());
            let dev = median(samples.iter().map(|s| s.drops.device as f64).collect());
            let rcvbuf = median(samples.iter().map(|s| s.drops.rcvbuf as f64).collect());
            println!(
                "| {pair} | {} | {path} | {mtu} | {} | {m:.1} | {} | {} | {dev:.0} / {rcvbuf:.0} | {} | {machine:.0} | {before:.0} |",
                sys.name,
                test.label(),
                runs.join(", "),
                loss_label(test, loss).trim(),
                cpu_label(&sys.daemons, &cpu)
            );
        }
    }
    println!("\nratios of medians (ringlet / other; targets: ≥ 2× tinc, ≥ 2× n2n, ≥ 0.5× raw)");
    for (r, ringlet) in systems.iter().enumerate().filter(|(_, s)| s.name == "ringlet") {
        for (ti, test) in tests.iter().enumerate() {
            let mut cells = Vec::new();
            for (si, sys) in systems.iter().enumerate() {
                if si == r || sys.pair != ringlet.pair {
                    continue;
                }
                if let (Some(x), Some(y)) = (medians.get(&(r, ti)), medians.get(&(si, ti))) {
                    cells.push(format!("ringlet/{} {:.2}×", sys.name, x / y));
                }
            }
            println!(
                "  {:<6} {:<10} {}",
                pair_name(ringlet.pair.0),
                test.label(),
                cells.join("   ")
            );
        }
    }
    // TCP only: bare sends one datagram per call, so its UDP is no ceiling.
    let raw = systems.iter().position(|s| s.name == "raw" && s.pair == (0, 1));
    let bares = systems
        .iter()
        .enumerate()
        .filter(|(_, s)| bare::VARIANTS.contains(&s.name));
    for (n, (b, sys)) in bares.enumerate() {
        if n == 0 {
            println!(
                "the userspace ceiling (bare variants / raw, TCP; no userspace TUN VPN beats bare here)"
            );
        }
        if let (Some(x), Some(y)) = (medians.get(&(b, 0)), raw.and_then(|r| medians.get(&(r, 0)))) {
            println!("  direct TCP        {}/raw {:.2}×", sys.name, x / y);
        }
    }
}
