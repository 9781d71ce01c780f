//! The NAT lab: network namespaces wired as a small internet with home routers.
//!
//! ```text
//!   public host (Prosody, coturn)          203.0.113.2 and .3 (two IPs for RFC 5780)
//!        |
//!   "internet" bridge, 203.0.113.0/24, in a namespace of its own
//!        |                     |                       |
//!   router i (NAT type)   router j …              open peer k: 203.0.113.(100+k)
//!   WAN 203.0.113.(10+i)
//!   LAN 10.(i+1).0.1/24
//!        |
//!   peer i: 10.(i+1).0.2
//! ```
//!
//! Every namespace name starts with a prefix unique to this lab (tag, PID, counter), so labs of
//! parallel tests never meet. Dropping the lab kills the processes it started (by PID) and then
//! deletes its namespaces; [`NatLab::new`] first removes leftovers of a crashed run with the same
//! prefix, so setup is idempotent. Traffic never leaves the namespaces.

mod delay;
mod nat;
mod topology;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use nat::NatType;

use crate::{ChildGuard, Netns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The public host's addresses.
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const PUBLIC_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);

/// One peer of the lab.
pub struct LabPeer {
    pub name: String,
    pub nat: NatType,
    /// Where the peer's processes run.
    pub ns: Netns,
    /// Its home router (none for `open`).
    pub router: Option<Netns>,
    /// The peer's own address (private behind a router).
    pub ip: Ipv4Addr,
    /// The address the internet sees.
    pub public_ip: Ipv4Addr,
}

/// Settings of a lab.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// One-way delay added on every router's WAN link (userspace delay line; netem is absent).
    pub wan_delay: Option<Duration>,
}

pub struct NatLab {
    // Field order is drop order: processes, delay lines, then peers' and routers' namespaces,
    // then the rest.
    processes: Vec<ChildGuard>,
    delays: Vec<topology::Delay>,
    peers: Vec<LabPeer>,
    public: Netns,
    inet: Netns,
}

impl NatLab {
    /// Builds the lab with one peer per `(name, NAT type)`.
    pub fn new(tag: &str, peers: &[(&str, NatType)], options: &LabOptions) -> anyhow::Result<Self> {
        crate::require_root("the NAT lab")?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("nl{}-{}-{n}", tag, std::process::id());
        topology::remove_leftovers(&prefix);
        let inet = Netns::create_named(&format!("{prefix}-inet"))?;
        topology::make_bridge(&inet)?;
        let public = Netns::create_named(&format!("{prefix}-pub"))?;
        topology::attach(
            &inet,
            &prefix,
            "pub",
            &public,
            "eth0",
            &[PUBLIC_IP, PUBLIC_IP2],
            None,
        )?;
        if options.wan_delay.is_some() {
            topology::no_offloads(&public, "eth0")?;
        }
        let mut lab = Self {
            processes: Vec::new(),
            delays: Vec::new(),
            peers: Vec::new(),
            public,
            inet,
        };
        for (i, (name, nat)) in peers.iter().enumerate() {
            let (peer, delay) = topology::add_peer(&lab.inet, &prefix, i, name, *nat, options.wan_delay)?;
            lab.peers.push(peer);
            lab.delays.extend(delay);
        }
        Ok(lab)
    }

    pub fn public(&self) -> &Netns {
        &self.public
    }

    pub fn peers(&self) -> &[LabPeer] {
        &self.peers
    }

    pub fn peer(&self, name: &str) -> &LabPeer {
        self.peers
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no lab peer {name}"))
    }

    /// Keeps `child` alive as long as the lab and kills it before the namespaces go.
    pub fn adopt(&mut self, child: ChildGuard) {
        self.processes.push(child);
    }

    /// Starts coturn (STUN only, RFC 5780 on both public IPs) on the public host.
    pub fn start_coturn(&mut self, dir: &std::path::Path) -> anyhow::Result<()> {
        let log = dir.join("coturn.log");
        let mut cmd = self.public.command("turnserver");
        cmd.args([
            "-n",
            "--stun-only",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--simple-log",
        ])
        .args(["-L", &PUBLIC_IP.to_string(), "-L", &PUBLIC_IP2.to_string()])
        .args(["--listening-port", "3478", "--alt-listening-port", "3479"])
        .arg("--log-file")
        .arg(&log)
        .arg("--pidfile")
        .arg(dir.join("coturn.pid"))
        .arg("--userdb")
        .arg(dir.join("turndb"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let child = ChildGuard::spawn("coturn", &mut cmd)?;
        self.processes.push(child);
        let probe = self.public.spawn(|| {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            // Generous: coturn initialises slowly on a loaded 2-core machine.
            crate::wait_for(Duration::from_secs(15), || {
                [PUBLIC_IP, PUBLIC_IP2]
                    .iter()
                    .all(|ip| stun_answers(&sock, (*ip, 3478).into()))
                    .then_some(())
            })
            .ok_or_else(|| std::io::Error::other("no STUN answer"))
        })?;
        let answered = probe
            .join()
            .map_err(|_| anyhow::anyhow!("coturn probe panicked"))?;
        anyhow::ensure!(
            answered.is_ok(),
            "coturn did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Ok(())
    }

    /// The STUN servers of the lab, as `host:port` (both public IPs, port 3478).
    pub fn stun_servers(&self) -> Vec<String> {
        vec![format!("{PUBLIC_IP}:3478"), format!("{PUBLIC_IP2}:3478")]
    }

    /// Flushes the connection tracking table of `peer`'s router: every NAT mapping is gone.
    /// `conntrack -F` on `peer`'s router: every mapping is gone. Returns how many UDP flows
    /// the router had tracked just before, so that a test can tell the flush hit something.
    pub fn flush_conntrack(&self, peer: &str) -> anyhow::Result<usize> {
        let router = self
            .peer(peer)
            .router
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{peer} has no router"))?;
        let run = |args: &[&str]| -> anyhow::Result<String> {
            let out = router.command("conntrack").args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "conntrack {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let udp_flows = run(&["-L", "-p", "udp"])?
            .lines()
            .filter(|l| l.starts_with("udp"))
            .count();
        run(&["-F"])?;
        Ok(udp_flows)
    }

    /// A command run inside the internet namespace (for diagnostics).
    pub fn inet_command(&self, program: &str) -> Command {
        self.inet.command(program)
    }
}

/// True if a STUN binding request to `server` gets a binding success within the socket timeout.
fn stun_answers(sock: &std::net::UdpSocket, server: std::net::SocketAddr) -> bool {
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[0x5a; 12]);
    if sock.send_to(&req, server).is_err() {
        return false;
    }
    // Answers from the other server (or to an earlier, late request) may be queued ahead of
    // this one; skip them, or one late answer would put every later read out of step.
    let mut buf = [0u8; 512];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == server && n >= 20 && buf[..2] == [0x01, 0x01] => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stun_answers;
    use std::net::UdpSocket;
    use std::time::Duration;

    const BINDING_SUCCESS: [u8; 20] = [
        0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// A late answer from another server, queued ahead of the real one, must not hide it.
    #[test]
    fn an_answer_queued_from_another_server_is_skipped() {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other
            .send_to(&BINDING_SUCCESS, client.local_addr().unwrap())
            .unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_addr = server.local_addr().unwrap();
        let answering = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (_, from) = server.recv_from(&mut buf).unwrap();
            server.send_to(&BINDING_SUCCESS, from).unwrap();
        });
        assert!(stun_answers(&client, server_addr));
        answering.join().unwrap();
    }

    #[test]
    fn no_answer_is_false_after_the_timeout() {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!stun_answers(&client, silent.local_addr().unwrap()));
    }
}
