//! The NAT types of the lab and the iptables rules that make a router behave like each.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Netns;

/// NAT behaviour of a home router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatType {
    /// No NAT: the peer has a public address.
    Open,
    /// Full cone: endpoint-independent mapping, no filtering.
    Full,
    /// Address-restricted cone: endpoint-independent mapping, inbound only from IPs contacted.
    Restricted,
    /// Port-restricted cone: endpoint-independent mapping, inbound only from exact endpoints.
    PortRestricted,
    /// Symmetric: a random public port per destination (`MASQUERADE --random-fully`).
    Symmetric,
    /// UDP blocked entirely (TCP works, so XMPP does).
    UdpBlocked,
}

impl NatType {
    pub const ALL: [NatType; 6] = [
        NatType::Open,
        NatType::Full,
        NatType::Restricted,
        NatType::PortRestricted,
        NatType::Symmetric,
        NatType::UdpBlocked,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            NatType::Open => "open",
            NatType::Full => "full",
            NatType::Restricted => "restricted",
            NatType::PortRestricted => "port-restricted",
            NatType::Symmetric => "symmetric",
            NatType::UdpBlocked => "udp-blocked",
        }
    }

    /// Endpoint-independent mapping (everything but symmetric; blocked has no UDP at all).
    pub fn maps_independently(&self) -> bool {
        !matches!(self, NatType::Symmetric | NatType::UdpBlocked)
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NatType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown NAT type '{s}'"))
    }
}

fn iptables(router: &Netns, args: &str) -> anyhow::Result<()> {
    let out = router
        .command("iptables")
        .args(args.split_whitespace())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "iptables {args}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Installs the rules of `nat` on `router`, whose WAN is `wan` and whose peer is `peer_ip`.
pub(super) fn apply(router: &Netns, nat: NatType, peer_ip: Ipv4Addr) -> anyhow::Result<()> {
    let masquerade = match nat {
        NatType::Symmetric => "-t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully",
        _ => "-t nat -A POSTROUTING -o wan -j MASQUERADE",
    };
    iptables(router, masquerade)?;
    match nat {
        NatType::Open => anyhow::bail!("an open peer has no router"),
        NatType::Full => {
            // Every inbound UDP packet reaches the peer on the same port (MASQUERADE keeps ports).
            iptables(
                router,
                &format!("-t nat -A PREROUTING -i wan -p udp -j DNAT --to-destination {peer_ip}"),
            )?;
        }
        NatType::Restricted => {
            // Remember every IP the peer sent UDP to; admit new inbound UDP only from those.
            iptables(
                router,
                "-A FORWARD -o wan -p udp -m recent --name contacted --set --rdest",
            )?;
            iptables(
                router,
                &format!(
                    "-t nat -A PREROUTING -i wan -p udp -m recent --name contacted --rcheck --rsource \
                     -j DNAT --to-destination {peer_ip}"
                ),
            )?;
        }
        NatType::PortRestricted | NatType::Symmetric | NatType::UdpBlocked => {}
    }
    // Unsolicited inbound packets must not create conntrack entries on the router itself:
    // one would make MASQUERADE pick another port for the peer's flow (REFERENCE.md).
    iptables(router, "-A INPUT -i wan -m conntrack --ctstate NEW -j DROP")?;
    if nat == NatType::UdpBlocked {
        iptables(router, "-A FORWARD -p udp -j DROP")?;
    }
    Ok(())
}
