//! Starting each VPN on the lab's two peers (and, where it needs one, a meeting point on the
//! public host): ringlet, tinc 1.0 and n2n 1.3. Every process is a [`ChildGuard`] in the
//! returned [`Vpn`]; dropping it stops them by PID.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringlet::node::status::Status;
use ringlet_lab::natlab::PUBLIC_IP;
use ringlet_lab::{ChildGuard, NatLab, Netns};

use crate::bare;
use crate::home::{start_vpn_member, status};
use crate::{DOMAIN, PASSWORD};

/// A running VPN: its processes (one per member, in the members' order, then the meeting
/// point if any), the device on the peers and each member's VPN address.
pub struct Vpn {
    pub processes: Vec<ChildGuard>,
    pub device: String,
    pub addresses: Vec<Ipv4Addr>,
    /// ringlet only: the members' control sockets.
    pub sockets: Vec<PathBuf>,
}

/// Pairs of members (sender, receiver) whose path must be up before measuring.
pub type Pairs<'a> = &'a [(usize, usize)];

/// `ringlet up` on every member with `[vpn] enabled = true` (as the demo runs it); returns once
/// every member knows every other's VPN address and each pair's path is `direct` (a `tunnel`
/// once the pair had 20 s to punch, any path after 60 s: the caller reports which).
pub async fn ringlet(
    lab: &NatLab,
    peers: &[&str],
    pairs: Pairs<'_>,
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<Vpn> {
    let group_ca = ringlet::secure::admin::init("bench", &dir.join("bench.ca.key"))?;
    let friends: Vec<String> = peers.iter().map(|n| format!("{n}@{DOMAIN}")).collect();
    let mut processes = Vec::new();
    let mut sockets = Vec::new();
    let mut logs = Vec::new();
    for name in peers {
        let jid = format!("{name}@{DOMAIN}");
        let (home, log, process) = start_vpn_member(
            &lab.peer(name).ns,
            bin,
            dir,
            name,
            (&jid, PASSWORD),
            &friends,
            &group_ca,
        )?;
        processes.push(process);
        sockets.push(home.join("ringlet.sock"));
        logs.push(log);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        for (p, log) in processes.iter_mut().zip(&logs) {
            if p.try_wait().is_some() {
                bail!(
                    "{} exited:\n{}",
                    p.name(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        let mut st = Vec::new();
        for s in &sockets {
            st.push(status(s).await);
        }
        let known = st.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.peers.len() == peers.len() - 1 && s.peers.iter().all(|p| p.vpn_address.is_some())
            })
        });
        // Direct at once; a tunnel once the pair had 20 s to punch; anything after 60 s.
        let waited = started.elapsed();
        let paths_ok = pairs
            .iter()
            .all(|&(i, j)| match pair_path(&st, peers, i, j).as_deref() {
                Some("direct") => true,
                Some("tunnel") => waited > Duration::from_secs(20),
                Some(_) => waited > Duration::from_secs(60),
                None => false,
            });
        if known && paths_ok {
            let st: Vec<Status> = st.into_iter().flatten().collect();
            let mut addresses = Vec::new();
            for s in &st {
                let vpn = s.vpn.as_ref().context("the VPN is off")?;
                addresses.push(vpn.address.split('/').next().unwrap_or("").parse()?);
            }
            let device = st[0].vpn.as_ref().context("the VPN is off")?.device.clone();
            return Ok(Vpn {
                processes,
                device,
                addresses,
                sockets,
            });
        }
        if Instant::now() > deadline {
            bail!("ringlet: paths not up within 90 s: {st:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Member `i`'s path to member `j` (`direct`, `tunnel`, `xmpp`).
pub fn pair_path(st: &[Option<Status>], peers: &[&str], i: usize, j: usize) -> Option<String> {
    let s = st[i].as_ref()?;
    let p = s
        .peers
        .iter()
        .find(|p| p.jid.starts_with(&format!("{}@", peers[j])))?;
    Some(p.path.clone())
}

/// The member through which `i` tunnels to `j`, if it does.
pub fn relay_of(st: &[Status], peers: &[&str], i: usize, j: usize) -> Option<usize> {
    let p = st[i]
        .peers
        .iter()
        .find(|p| p.jid.starts_with(&format!("{}@", peers[j])))?;
    let via = p.via.as_deref()?;
    st.iter()
        .position(|s| s.node_id == via || via.contains(&s.node_id))
}

/// tinc 1.0: a node `hub` on the public host (the only one with an `Address`), and one node
/// per peer with `ConnectTo = hub`, router mode, subnet 10.78.0.0/16, defaults otherwise
/// (Blowfish-CBC, SHA-1 with 4-byte MACs, no compression, PMTU discovery and MSS clamping on).
pub async fn tinc(lab: &NatLab, peers: &[&str], pairs: Pairs<'_>, dir: &Path) -> anyhow::Result<Vpn> {
    let root = dir.join("tinc");
    let mut nodes: Vec<(&str, &Netns, Ipv4Addr)> = vec![("hub", lab.public(), Ipv4Addr::new(10, 78, 0, 254))];
    for (i, name) in peers.iter().enumerate() {
        nodes.push((name, &lab.peer(name).ns, Ipv4Addr::new(10, 78, 0, i as u8 + 1)));
    }
    // Each node's own directory; its host file gets a key, then all host files go everywhere.
    for (name, _, ip) in &nodes {
        let d = root.join(name);
        std::fs::create_dir_all(d.join("hosts"))?;
        let mut conf = format!("Name = {name}\nInterface = tinc0\nAddressFamily = ipv4\nMode = router\n");
        if *name != "hub" {
            conf.push_str("ConnectTo = hub\n");
        }
        std::fs::write(d.join("tinc.conf"), conf)?;
        let mut host = format!("Subnet = {ip}/32\n");
        if *name == "hub" {
            host = format!("Address = {PUBLIC_IP}\nPort = 655\n{host}");
        }
        std::fs::write(d.join("hosts").join(name), host)?;
        let up = d.join("tinc-up");
        std::fs::write(
            &up,
            format!("#!/bin/sh\nip addr add {ip}/16 dev $INTERFACE\nip link set $INTERFACE up\n"),
        )?;
        std::fs::set_permissions(&up, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let out = std::process::Command::new("tincd")
            .args(["-n", "bench", "-c"])
            .arg(&d)
            .arg("-K2048")
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "tincd -K: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (from, ..) in &nodes {
        for (to, ..) in &nodes {
            if from != to {
                std::fs::copy(
                    root.join(from).join("hosts").join(from),
                    root.join(to).join("hosts").join(from),
                )?;
            }
        }
    }
    let mut processes = Vec::new();
    for (name, ns, _) in &nodes {
        let d = root.join(name);
        let mut cmd = ns.command("tincd");
        cmd.args(["-n", "bench", "-D", "-d1", "-c"])
            .arg(&d)
            .arg(format!("--pidfile={}", d.join("tinc.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("tinc.log"))?);
        processes.push(ChildGuard::spawn(&format!("tincd {name}"), &mut cmd)?);
    }
    // The members first, the hub (meeting point) last.
    processes.rotate_left(1);
    let addresses: Vec<Ipv4Addr> = nodes[1..].iter().map(|n| n.2).collect();
    for &(i, j) in pairs {
        wait_ping(lab, peers[i], addresses[j], "tinc", &mut processes, &root).await?;
    }
    Ok(Vpn {
        processes,
        device: "tinc0".into(),
        addresses,
        sockets: vec![],
    })
}

/// n2n 1.3: a supernode on the public host, an `edge` per peer (TAP device n2n0, community
/// and key given, subnet 10.79.0.0/24, default MTU 1400; Twofish is the only cipher).
/// Processes: the edges in the members' order, then the supernode.
pub async fn n2n(lab: &NatLab, peers: &[&str], pairs: Pairs<'_>, dir: &Path) -> anyhow::Result<Vpn> {
    let root = dir.join("n2n");
    std::fs::create_dir_all(&root)?;
    let port = "7654";
    // The supernode first, listening before any edge registers: an edge whose first REGISTER
    // meets a closed port retries only after n2n's long registration interval.
    let mut cmd = lab.public().command("supernode");
    cmd.args(["-l", port])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(root.join("supernode.log"))?)
        .stderr(Stdio::null());
    let supernode = ChildGuard::spawn("supernode", &mut cmd)?;
    let mut listening = false;
    for _ in 0..100 {
        let out = lab
            .public()
            .command("ss")
            .args(["-Hlun", &format!("sport = :{port}")])
            .output()?;
        if !out.stdout.is_empty() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(listening, "the n2n supernode did not listen within 5 s");
    let mut processes = Vec::new();
    for (i, name) in peers.iter().enumerate() {
        let mut cmd = lab.peer(name).ns.command("edge");
        cmd.args(["-d", "n2n0", "-a", &format!("10.79.0.{}", i + 1)])
            .args(["-c", "bench", "-k", "bench-secret"])
            .args(["-l", &format!("{PUBLIC_IP}:{port}")])
            .args(["-m", &format!("02:00:00:79:00:{:02x}", i + 1)])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(root.join(format!("{name}.log")))?)
            .stderr(Stdio::null());
        processes.push(ChildGuard::spawn(&format!("edge {name}"), &mut cmd)?);
    }
    processes.push(supernode);
    let addresses: Vec<Ipv4Addr> = (0..peers.len())
        .map(|i| Ipv4Addr::new(10, 79, 0, i as u8 + 1))
        .collect();
    for &(i, j) in pairs {
        wait_ping(lab, peers[i], addresses[j], "n2n", &mut processes, &root).await?;
    }
    Ok(Vpn {
        processes,
        device: "n2n0".into(),
        addresses,
        sockets: vec![],
    })
}

/// Bare variant `v` (`bare.rs`) on the two members of `pair`, each sending to the other's
/// NAT; member `i` gets `bare::address(v, i)`.
pub async fn bare(
    lab: &NatLab,
    peers: &[&str],
    pair: (usize, usize),
    v: usize,
    dir: &Path,
) -> anyhow::Result<Vpn> {
    let name = bare::VARIANTS[v];
    let root = dir.join(name);
    std::fs::create_dir_all(&root)?;
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("the benchmark's path is not UTF-8")?;
    let addresses: Vec<Ipv4Addr> = (0..peers.len()).map(|i| bare::address(v, i)).collect();
    let mut processes = Vec::new();
    for (me, other) in [(pair.0, pair.1), (pair.1, pair.0)] {
        let mut cmd = lab.peer(peers[me]).ns.command(exe);
        cmd.args(["--bare-forwarder", name])
            .arg(addresses[me].to_string())
            .arg(lab.peer(peers[other]).public_ip.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join(format!("{}.log", peers[me])))?);
        processes.push(ChildGuard::spawn(&format!("{name} {}", peers[me]), &mut cmd)?);
    }
    // Processes in the members' order.
    if pair.0 > pair.1 {
        processes.reverse();
    }
    wait_ping(lab, peers[pair.0], addresses[pair.1], name, &mut processes, &root).await?;
    Ok(Vpn {
        processes,
        device: bare::device(v),
        addresses,
        sockets: vec![],
    })
}

/// Pings `to` from `peer` once a second (≤ 30 tries) until it answers, then five more times so
/// that the systems settle on their path; fails with the logs in `logs_dir` if it never does.
async fn wait_ping(
    lab: &NatLab,
    peer: &str,
    to: Ipv4Addr,
    what: &str,
    processes: &mut [ChildGuard],
    logs_dir: &Path,
) -> anyhow::Result<()> {
    for _ in 0..30 {
        for p in processes.iter_mut() {
            if let Some(status) = p.try_wait() {
                bail!("{} exited ({status}):\n{}", p.name(), logs(logs_dir));
            }
        }
        let out = lab
            .peer(peer)
            .ns
            .command("ping")
            .args(["-c", "1", "-W", "1"])
            .arg(to.to_string())
            .output()?;
        if out.status.success() {
            lab.peer(peer)
                .ns
                .command("ping")
                .args(["-c", "5", "-i", "0.2", "-W", "1"])
                .arg(to.to_string())
                .output()?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!(
        "{what}: {to} did not answer a ping within 30 tries:\n{}",
        logs(logs_dir)
    )
}

/// The last lines of every `*.log` under `dir` (one level of subdirectories), for errors.
fn logs(dir: &Path) -> String {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else {
            files.push(path);
        }
    }
    let mut text = String::new();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "log")) {
        let body = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = body.lines().collect();
        text.push_str(&format!("--- {}\n", f.display()));
        for l in &lines[lines.len().saturating_sub(15)..] {
            text.push_str(l);
            text.push('\n');
        }
    }
    text
}
