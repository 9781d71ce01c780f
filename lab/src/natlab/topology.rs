//! Namespaces, veth pairs and the bridge of the NAT lab.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use super::delay::DelayLine;
use super::{nat, LabPeer, NatType};
use crate::netns::ip;
use crate::Netns;

/// A veth pair: `a` in namespace `ns_a`, its peer `b` in `ns_b`.
fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> anyhow::Result<()> {
    ip(&[
        "-n",
        ns_a.name(),
        "link",
        "add",
        a,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b.name(),
    ])
}

/// Deletes namespaces left by an earlier run that used the same prefix.
pub(super) fn remove_leftovers(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(prefix) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

pub(super) fn make_bridge(inet: &Netns) -> anyhow::Result<()> {
    ip(&["-n", inet.name(), "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", inet.name(), "link", "set", "br0", "up"])
}

/// A delay line between a host and the bridge, with the namespace it lives in.
pub(super) type Delay = (DelayLine, Netns);

/// Connects `host` to the internet bridge: `port` on the bridge side, `host_if` with `ips` on
/// the host side. With a delay, the link passes through a delay line in a namespace of its own
/// (`<prefix>-d<port>`).
pub(super) fn attach(
    inet: &Netns,
    prefix: &str,
    port: &str,
    host: &Netns,
    host_if: &str,
    ips: &[Ipv4Addr],
    delay: Option<Duration>,
) -> anyhow::Result<Option<Delay>> {
    let mut line = None;
    match delay {
        None => {
            veth(inet, port, host, host_if)?;
        }
        Some(delay) => {
            let d = Netns::create_named(&format!("{prefix}-d{port}"))?;
            veth(&d, "x", host, host_if)?;
            veth(inet, port, &d, "y")?;
            for dev in ["x", "y"] {
                ip(&["-n", d.name(), "link", "set", dev, "promisc", "on", "up"])?;
            }
            line = Some((DelayLine::start(&d, "x", "y", delay)?, d));
        }
    }
    ip(&["-n", inet.name(), "link", "set", port, "master", "br0", "up"])?;
    for addr in ips {
        ip(&[
            "-n",
            host.name(),
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            host_if,
        ])?;
    }
    ip(&["-n", host.name(), "link", "set", host_if, "up"])?;
    if let Some((_, d)) = &line {
        for (ns, dev) in [(host, host_if), (inet, port), (d, "x"), (d, "y")] {
            wait_carrier(ns, dev)?;
        }
    }
    if delay.is_some() {
        // The delay line copies raw frames: the kernel must finish checksums and segmentation
        // itself instead of leaving them to a (virtual) NIC.
        no_offloads(host, host_if)?;
    }
    Ok(line)
}

/// Turns off checksum and segmentation offloads of `dev` in `ns`.
pub(super) fn no_offloads(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    let out = ns
        .command("ethtool")
        .args([
            "-K", dev, "tx", "off", "sg", "off", "tso", "off", "gso", "off", "gro", "off",
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("ethtool is needed for WAN delay (apt-get install ethtool): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "ethtool -K {dev}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Waits until `dev` in `ns` has carrier: a veth whose peer came up in another namespace
/// reports it asynchronously, up to a second later.
fn wait_carrier(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    let up = crate::wait_for(Duration::from_secs(5), || {
        let out = Command::new("ip")
            .args(["-n", ns.name(), "-o", "link", "show", "dev", dev])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        (!text.contains("NO-CARRIER") && text.contains("state UP")).then_some(())
    });
    anyhow::ensure!(up.is_some(), "{dev} in {} got no carrier", ns.name());
    Ok(())
}

/// Creates peer `i` (and its router unless it is open).
pub(super) fn add_peer(
    inet: &Netns,
    prefix: &str,
    i: usize,
    name: &str,
    nat_type: NatType,
    delay: Option<Duration>,
) -> anyhow::Result<(LabPeer, Option<Delay>)> {
    anyhow::ensure!(i < 80, "the lab addresses at most 80 peers");
    let ns = Netns::create_named(&format!("{prefix}-p{i}"))?;
    if nat_type == NatType::Open {
        let addr = Ipv4Addr::new(203, 0, 113, 100 + i as u8);
        let line = attach(inet, prefix, &format!("h{i}"), &ns, "eth0", &[addr], delay)?;
        let peer = LabPeer {
            name: name.into(),
            nat: nat_type,
            ns,
            router: None,
            ip: addr,
            public_ip: addr,
        };
        return Ok((peer, line));
    }
    let router = Netns::create_named(&format!("{prefix}-r{i}"))?;
    let wan = Ipv4Addr::new(203, 0, 113, 10 + i as u8);
    let line = attach(inet, prefix, &format!("r{i}"), &router, "wan", &[wan], delay)?;
    let gw = Ipv4Addr::new(10, i as u8 + 1, 0, 1);
    let addr = Ipv4Addr::new(10, i as u8 + 1, 0, 2);
    veth(&router, "lan", &ns, "eth0")?;
    ip(&[
        "-n",
        router.name(),
        "addr",
        "add",
        &format!("{gw}/24"),
        "dev",
        "lan",
    ])?;
    ip(&["-n", router.name(), "link", "set", "lan", "up"])?;
    ip(&[
        "-n",
        ns.name(),
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns.name(), "link", "set", "eth0", "up"])?;
    ip(&["-n", ns.name(), "route", "add", "default", "via", &gw.to_string()])?;
    let out = router
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sysctl ip_forward: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nat::apply(&router, nat_type, addr)?;
    let peer = LabPeer {
        name: name.into(),
        nat: nat_type,
        ns,
        router: Some(router),
        ip: addr,
        public_ip: wan,
    };
    Ok((peer, line))
}
