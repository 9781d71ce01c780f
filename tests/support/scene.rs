//! A NAT lab scene: coturn and Prosody on the public host, one `ringlet up` per lab peer, all
//! friends in one overlay. Dropping it stops the nodes, then Prosody, then removes the lab.

use std::process::Command;
use std::time::Duration;

use ringlet::node::status::Status;
use ringlet_lab::natlab::{LabOptions, PUBLIC_IP, PUBLIC_IP2};
use ringlet_lab::{NatLab, NatType, Prosody, ProsodySpec};

use super::*;

pub const DOMAIN: &str = "lab.test";

pub struct Scene {
    // Field order is drop order.
    pub nodes: Vec<NodeProcess>,
    pub prosody: Prosody,
    pub lab: NatLab,
    pub ids: Vec<String>,
    pub dir: tempfile::TempDir,
    /// When the first node process was spawned (servers already up).
    pub started: std::time::Instant,
}

impl Scene {
    /// Builds the lab, starts the servers and one node per peer, and waits until all are online.
    pub async fn start(tag: &str, peers: &[(&str, NatType)], options: LabOptions) -> Scene {
        let scene = Scene::start_timed(tag, peers, options).await;
        for n in &scene.nodes {
            n.online(Duration::from_secs(15)).await;
        }
        scene
    }

    /// Like [`Scene::start`], but returns as soon as every node answers on its control socket,
    /// so that callers can time the way to `online` and beyond from [`Scene::started`].
    pub async fn start_timed(tag: &str, peers: &[(&str, NatType)], options: LabOptions) -> Scene {
        Scene::start_with_keys(tag, peers, options, &[]).await
    }

    /// Like [`Scene::start_timed`], with the node keys (and so the NodeIds, and the ring
    /// positions) given: `keys[i]` for `peers[i]`; peers without one generate their own.
    pub async fn start_with_keys(
        tag: &str,
        peers: &[(&str, NatType)],
        options: LabOptions,
        keys: &[ringlet::identity::NodeKey],
    ) -> Scene {
        Scene::start_with_strangers(tag, peers, options, keys, &[]).await
    }

    /// Like [`Scene::start_with_keys`]; the peers in `strangers` hold certificates of another
    /// group (valid XMPP accounts on everyone's roster, not members).
    pub async fn start_with_strangers(
        tag: &str,
        peers: &[(&str, NatType)],
        options: LabOptions,
        keys: &[ringlet::identity::NodeKey],
        strangers: &[usize],
    ) -> Scene {
        let tweak = |_: &NatLab, i: usize, spec: &mut NodeSpec| {
            if strangers.contains(&i) {
                spec.membership = Membership::OtherGroup;
            }
        };
        Scene::start_custom(tag, peers, options, keys, &tweak).await
    }

    /// Like [`Scene::start_with_keys`]; `tweak` may change each peer's spec before it starts
    /// (and use the lab, e.g. to put something on its path).
    pub async fn start_custom(
        tag: &str,
        peers: &[(&str, NatType)],
        options: LabOptions,
        keys: &[ringlet::identity::NodeKey],
        tweak: &dyn Fn(&NatLab, usize, &mut NodeSpec),
    ) -> Scene {
        let mut lab =
            NatLab::new(tag, peers, &options).expect("the NAT lab needs root and iproute2/iptables");
        let mut dir = tempdir("ringlet-lab-");
        if std::env::var_os("RINGLET_KEEP_LAB").is_some() {
            eprintln!("RINGLET_KEEP_LAB: keeping {}", dir.path().display());
            dir.disable_cleanup(true);
        }
        lab.start_coturn(dir.path()).unwrap();
        let users: Vec<String> = peers.iter().map(|(name, _)| format!("{name}@{DOMAIN}")).collect();
        let mut spec = ProsodySpec::new(DOMAIN).unwrap();
        spec.interface = PUBLIC_IP.into();
        spec.c2s_port = 5222;
        spec.netns = Some(lab.public().name().to_owned());
        spec.shared_roster = users.clone();
        spec.stun = vec![(PUBLIC_IP.to_string(), 3478), (PUBLIC_IP2.to_string(), 3478)];
        let mut prosody = Prosody::new(spec).unwrap();
        for (name, _) in peers {
            prosody.register(name, PASSWORD).unwrap();
        }
        prosody.launch().unwrap();
        let friends: Vec<&str> = users.iter().map(String::as_str).collect();
        let mut nodes = Vec::new();
        #[allow(clippy::disallowed_methods)] // test support measures real time
        let started = std::time::Instant::now();
        for (i, (name, _)) in peers.iter().enumerate() {
            if let Some(key) = keys.get(i) {
                key.write_new(&dir.path().join(name).join("node.key")).unwrap();
            }
            let mut spec = NodeSpec::new(
                &format!("{name}@{DOMAIN}"),
                &format!("{PUBLIC_IP}:5222"),
                "lab",
                &friends,
            );
            tweak(&lab, i, &mut spec);
            let ns = &lab.peer(name).ns;
            nodes.push(NodeProcess::spawn(name, &spec, &dir.path().join(name), Some(ns)));
        }
        let mut ids = Vec::new();
        for n in &nodes {
            let status = wait(Duration::from_secs(15), || n.status()).await;
            let status = status.unwrap_or_else(|| panic!("{} has no control socket:\n{}", n.name, n.log()));
            ids.push(status.node_id);
        }
        Scene {
            nodes,
            prosody,
            lab,
            ids,
            dir,
            started,
        }
    }

    pub async fn status(&self, i: usize) -> Option<Status> {
        self.nodes[i].status().await
    }

    /// Every node's status, in node order (`None` for a node that does not answer).
    pub async fn statuses(&self) -> Vec<Option<Status>> {
        let mut out = Vec::new();
        for n in &self.nodes {
            out.push(n.status().await);
        }
        out
    }

    /// The path node `i` uses towards node `j`, as its status says.
    pub async fn path(&self, i: usize, j: usize) -> Option<String> {
        let s = self.status(i).await?;
        s.peers
            .iter()
            .find(|p| p.node_id == self.ids[j])
            .map(|p| p.path.clone())
    }

    /// Waits until `i` and `j` both report `want` for each other.
    pub async fn wait_path(&self, i: usize, j: usize, want: &str, timeout: Duration) -> bool {
        wait(timeout, || async {
            let both = self.path(i, j).await.as_deref() == Some(want)
                && self.path(j, i).await.as_deref() == Some(want);
            both.then_some(())
        })
        .await
        .is_some()
    }

    /// `ringlet ping` from `i` to `j` with the CLI; returns its output if it succeeded.
    pub fn ping(&self, i: usize, j: usize) -> Result<String, String> {
        let out = Command::new(ringlet_bin())
            // Two tries: one lost UDP datagram is not unreachability.
            .args(["ping", "-n", "2", "--config"])
            .arg(&self.nodes[i].config)
            .arg(&self.ids[j])
            .output()
            .map_err(|e| e.to_string())?;
        outcome(out)
    }

    /// Paths read with the CLI, as `ringlet status --json` prints them.
    pub fn cli_paths(&self, i: usize) -> Vec<(String, String)> {
        let out = Command::new(ringlet_bin())
            .args(["status", "--json", "--config"])
            .arg(&self.nodes[i].config)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["peers"]
            .as_array()
            .map(|peers| {
                peers
                    .iter()
                    .map(|p| {
                        (
                            p["node_id"].as_str().unwrap_or("").to_owned(),
                            p["path"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The path the issue requires for a pair of NAT types (`None`: either is fine, but connected).
pub fn expected_path(a: NatType, b: NatType) -> Option<&'static str> {
    use NatType::*;
    match (a, b) {
        (UdpBlocked, _) | (_, UdpBlocked) | (Symmetric, Symmetric) => Some("xmpp"),
        (Symmetric, PortRestricted) | (PortRestricted, Symmetric) => None,
        _ => Some("direct"),
    }
}

/// Runs `ringlet dht --config <node's> ARGS…`; returns (exit success, stdout, stderr).
pub fn dht_cli(node: &NodeProcess, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ringlet_bin())
        .arg("dht")
        .arg("--config")
        .arg(&node.config)
        .args(args)
        .output()
        .expect("run ringlet dht");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Gets `key` at `node` until its values are exactly `want` (a put takes a moment to reach
/// the replicas); returns the last values seen otherwise.
pub async fn dht_values_become(node: &NodeProcess, key: &str, want: &[&str]) -> Result<(), Vec<String>> {
    let mut last = Vec::new();
    for _ in 0..20 {
        let (ok, stdout, stderr) = dht_cli(node, &["get", key]);
        assert!(ok, "dht get {key} failed: {stderr}");
        last = stdout.lines().map(str::to_owned).collect::<Vec<_>>();
        if last == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}
