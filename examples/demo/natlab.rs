//! The NAT-lab demo (root): network namespaces for a public internet with Prosody (XEP-0215
//! advertising coturn as STUN) and five friends behind different home routers: full cone,
//! address-restricted, port-restricted, symmetric, and one whose router blocks UDP. Each runs
//! `ringlet up` with the VPN on. The demo prints progress as the overlay forms, the
//! connectivity matrix (path and RTT from every peer to every other), and pings across the VPN
//! between two NATed peers. Dropping what it built (also on Ctrl-C) stops every process by
//! PID and deletes the namespaces.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringlet::node::status::Status;
use ringlet_lab::natlab::{LabOptions, PUBLIC_IP, PUBLIC_IP2};
use ringlet_lab::{ChildGuard, NatLab, NatType, Prosody, ProsodySpec};

use super::{ringlet_bin, say, start_vpn_member, status};

const DOMAIN: &str = "lab.demo";
const PASSWORD: &str = "demo-password";
const PEERS: [(&str, NatType, &str); 5] = [
    ("alice", NatType::Full, "full cone"),
    ("bob", NatType::Restricted, "address-restricted"),
    ("carol", NatType::PortRestricted, "port-restricted"),
    ("dave", NatType::Symmetric, "symmetric"),
    ("erin", NatType::UdpBlocked, "UDP blocked"),
];
/// How long the overlay may take to form before the demo gives up.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

struct Peer {
    name: &'static str,
    socket: PathBuf,
    log: PathBuf,
    process: ChildGuard,
}

pub async fn run(start: Instant, dir: &Path) -> anyhow::Result<()> {
    let bin = ringlet_bin()?;
    let lab_peers: Vec<(&str, NatType)> = PEERS.iter().map(|(n, t, _)| (*n, *t)).collect();
    // Declared first, dropped last: the processes below stop before the namespaces go.
    let mut lab = NatLab::new("demo", &lab_peers, &LabOptions::default()).context("building the NAT lab")?;
    lab.start_coturn(dir)?;
    let users: Vec<String> = PEERS.iter().map(|(n, ..)| format!("{n}@{DOMAIN}")).collect();
    let mut spec = ProsodySpec::new(DOMAIN)?;
    spec.interface = PUBLIC_IP.into();
    spec.c2s_port = 5222;
    spec.netns = Some(lab.public().name().to_owned());
    spec.shared_roster = users.clone();
    spec.stun = vec![(PUBLIC_IP.to_string(), 3478), (PUBLIC_IP2.to_string(), 3478)];
    let mut server = Prosody::new(spec)?;
    for (name, ..) in PEERS {
        server.register(name, PASSWORD)?;
    }
    server.launch()?;
    say(
        start,
        format!("NAT lab up: Prosody and coturn on the public address {PUBLIC_IP}"),
    );
    for (name, _, kind) in PEERS {
        let p = lab.peer(name);
        say(
            start,
            format!(
                "  {name:<6} {:<15} behind a {kind} NAT (public {})",
                p.ip, p.public_ip
            ),
        );
    }

    let group_ca = ringlet::secure::admin::init("demo", &dir.join("demo.ca.key"))?;
    let mut peers = Vec::new();
    for (name, ..) in PEERS {
        let jid = format!("{name}@{DOMAIN}");
        let (home, log, process) = start_vpn_member(
            &lab.peer(name).ns,
            &bin,
            dir,
            name,
            (&jid, PASSWORD),
            &users,
            &group_ca,
        )?;
        peers.push(Peer {
            name,
            socket: home.join("ringlet.sock"),
            log,
            process,
        });
    }
    say(
        start,
        "started `ringlet up` for each friend, each in its own namespace with a TUN device",
    );

    let statuses = watch_forming(start, &mut peers).await?;
    print_matrix(&statuses);

    // A ping across the VPN between two NATed peers.
    let (from, to) = (1, 3);
    let to_ip = vpn_ip(&statuses[to]).context("no VPN address")?;
    say(
        start,
        format!(
            "$ ping {to_ip}   # from {} to {}'s VPN address",
            PEERS[from].0, PEERS[to].0
        ),
    );
    let out = lab
        .peer(PEERS[from].0)
        .ns
        .command("ping")
        .args(["-c", "4", "-i", "0.3", "-W", "3"])
        .arg(to_ip)
        .output();
    match out {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                let log = |i: usize| std::fs::read_to_string(&peers[i].log).unwrap_or_default();
                bail!(
                    "the VPN ping failed:\n{}\n{}'s log:\n{}\n{}'s log:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    PEERS[from].0,
                    log(from),
                    PEERS[to].0,
                    log(to)
                );
            }
        }
        Err(e) => bail!("cannot run ping ({e}); install iputils-ping"),
    }

    for p in &mut peers {
        p.process.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    }
    drop(peers);
    server.stop();
    drop(lab);
    say(
        start,
        "demo finished; processes stopped, namespaces and TUN devices removed",
    );
    Ok(())
}

/// Polls every node until all see each other with a VPN address and the ring is consistent,
/// printing each state change once; returns the last statuses.
async fn watch_forming(start: Instant, peers: &mut [Peer]) -> anyhow::Result<Vec<Status>> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    let mut said: std::collections::BTreeSet<String> = Default::default();
    loop {
        let mut all = Vec::new();
        for p in peers.iter_mut() {
            if p.process.try_wait().is_some() {
                bail!(
                    "ringlet for {} exited:\n{}",
                    p.name,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            all.push(status(&p.socket).await);
        }
        for (p, s) in peers.iter().zip(&all) {
            let Some(s) = s else { continue };
            let mut news = vec![];
            if s.state == "online" {
                news.push(format!("{} logged in to XMPP", p.name));
            }
            if let Some(nat) = s
                .nat
                .as_ref()
                .and_then(|n| n.get("mapping"))
                .filter(|m| !m.is_null())
            {
                news.push(format!("{} reflected through STUN: NAT mapping {nat}", p.name));
            }
            if s.peers.len() == PEERS.len() - 1 {
                news.push(format!(
                    "{} found all {} friends through presence",
                    p.name,
                    s.peers.len()
                ));
            }
            if s.ring.left.is_some() && s.ring.right.is_some() {
                news.push(format!("{} joined the ring ({} links)", p.name, s.ring.links));
            }
            if s.peers.iter().all(|q| q.vpn_address.is_some()) && s.peers.len() == PEERS.len() - 1 {
                let vpn = s.vpn.as_ref().map_or("?".into(), |v| v.address.clone());
                news.push(format!(
                    "{} is {vpn} on the VPN and knows everyone's address",
                    p.name
                ));
            }
            for n in news {
                if said.insert(n.clone()) {
                    say(start, n);
                }
            }
        }
        if let Some(done) = formed(&all) {
            say(start, "overlay formed: everyone online, linked and addressable");
            return Ok(done);
        }
        if Instant::now() > deadline {
            bail!("the overlay did not form within {FORM_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn formed(all: &[Option<Status>]) -> Option<Vec<Status>> {
    let all: Vec<Status> = all.iter().cloned().collect::<Option<_>>()?;
    let ok = all.iter().all(|s| {
        s.peers.len() == PEERS.len() - 1
            && s.peers
                .iter()
                .all(|p| p.vpn_address.is_some() && p.path != "revoked")
    });
    // The routing peers (all but the UDP-blocked one) have both ring neighbours.
    let ring = all.iter().zip(PEERS).all(|(s, (_, nat, _))| {
        nat == NatType::UdpBlocked || (s.ring.left.is_some() && s.ring.right.is_some())
    });
    (ok && ring).then_some(all)
}

fn vpn_ip(s: &Status) -> Option<String> {
    Some(s.vpn.as_ref()?.address.split('/').next()?.to_owned())
}

fn print_matrix(all: &[Status]) {
    let name_of = |id: &str| {
        all.iter()
            .position(|s| s.node_id == id)
            .map_or("?", |i| PEERS[i].0)
    };
    println!("\nconnectivity matrix (row → column: path, RTT)");
    print!("{:<8}", "");
    for (name, ..) in PEERS {
        print!("{name:<18}");
    }
    println!();
    for (s, (name, ..)) in all.iter().zip(PEERS) {
        print!("{name:<8}");
        for (col, ..) in PEERS {
            let cell = if col == name {
                "-".to_string()
            } else {
                s.peers
                    .iter()
                    .find(|p| name_of(&p.node_id) == col)
                    .map_or("none".into(), |p| match p.rtt_ms {
                        Some(rtt) => format!("{} {:.1} ms", p.path, rtt),
                        None => p.path.clone(),
                    })
            };
            print!("{cell:<18}");
        }
        println!();
    }
    println!("\nVPN addresses:");
    for (s, (name, ..)) in all.iter().zip(PEERS) {
        println!(
            "  {name:<6} {}",
            s.vpn.as_ref().map_or("-", |v| v.address.as_str())
        );
    }
    println!();
}
