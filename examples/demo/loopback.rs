//! The loopback demo (no root needed): a Prosody on loopback (STARTTLS with a throwaway CA,
//! XEP-0215 STUN entry, a shared roster) and three `ringlet up` nodes for alice, bob and carol
//! in overlay "friends". It shows them find each other, prints each node's `ringlet status`,
//! stops one node to show it leaving, and cleans everything up (also on Ctrl-C).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringlet_lab::{ChildGuard, Prosody, ProsodySpec, TestCa};

use super::{member_home, ringlet_bin, say, status};

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const DOMAIN: &str = "demo.test";
const PASSWORD: &str = "demo-password";

pub struct Node {
    user: &'static str,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    process: ChildGuard,
}

pub async fn run(start: Instant, dir: &Path) -> anyhow::Result<()> {
    let bin = ringlet_bin()?;
    let ca = TestCa::new(dir)?;
    let mut spec = ProsodySpec::new(DOMAIN)?;
    spec.cert = Some(ca.server_cert(DOMAIN)?);
    spec.require_encryption = true;
    spec.shared_roster = USERS.iter().map(|u| format!("{u}@{DOMAIN}")).collect();
    let mut server = Prosody::new(spec)?;
    for u in USERS {
        server.register(u, PASSWORD)?;
    }
    server.launch()?;
    say(
        start,
        format!(
            "Prosody for {DOMAIN} listening on {} (STARTTLS required, XEP-0215 STUN entry)",
            server.c2s_addr()
        ),
    );

    let friends: Vec<String> = USERS.iter().map(|u| format!("\"{u}@{DOMAIN}\"")).collect();
    // One group for the three friends: a fresh CA signs each node's certificate (what `ringlet
    // group init` / `sign` / `join` do when people run it on their own machines).
    let group_ca = ringlet::secure::admin::init("demo", &dir.join("demo.ca.key"))?;
    let mut nodes = Vec::new();
    for user in USERS {
        let (home, config) = member_home(
            dir,
            user,
            &format!("{user}@{DOMAIN}"),
            &format!(
                "[xmpp]\njid = \"{user}@{DOMAIN}\"\npassword = \"{PASSWORD}\"\nserver = \"{}\"\ntls = \"starttls\"\n\
                 ca_file = \"{}\"\n\n[overlay]\nname = \"friends\"\nfriends = [{}]\n",
                server.c2s_addr(),
                ca.ca_file.display(),
                friends.join(", ")
            ),
            &group_ca,
        )?;
        let log = home.join("ringlet.log");
        let mut cmd = Command::new(&bin);
        cmd.args(["up", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd.stderr(std::fs::File::create(&log)?);
        let process = ChildGuard::spawn(user, &mut cmd)?;
        say(start, format!("started ringlet for {user}@{DOMAIN}"));
        nodes.push(Node {
            user,
            socket: home.join("ringlet.sock"),
            config,
            log,
            process,
        });
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut online = [false; 3];
    loop {
        let mut all = true;
        for (i, n) in nodes.iter_mut().enumerate() {
            if n.process.try_wait().is_some() {
                bail!(
                    "ringlet for {} exited:\n{}",
                    n.user,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                );
            }
            match status(&n.socket).await {
                Some(s) if s.state == "online" && s.peers.len() == USERS.len() - 1 => {
                    if !online[i] {
                        online[i] = true;
                        say(
                            start,
                            format!(
                                "{} is online as node {} and sees {} peers",
                                n.user,
                                &s.node_id[..12],
                                s.peers.len()
                            ),
                        );
                    }
                }
                _ => all = false,
            }
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!("the nodes did not find each other within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(
        start,
        "all three nodes see each other (rendezvous over presence, address exchange over IQ)",
    );

    for n in &nodes {
        let out = Command::new(&bin)
            .args(["status", "--config"])
            .arg(&n.config)
            .output()?;
        println!(
            "\n$ ringlet status   # {}@{DOMAIN}\n{}",
            n.user,
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let carol = nodes.pop().context("three nodes")?;
    let carol_id = status(&carol.socket).await.map(|s| s.node_id).unwrap_or_default();
    let mut carol_process = carol.process;
    let code = carol_process
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .and_then(|s| s.code());
    say(
        start,
        format!(
            "stopped carol (exit code {})",
            code.map_or("?".into(), |c| c.to_string())
        ),
    );
    let left = Instant::now();
    loop {
        let gone = futures_all_without(&nodes, &carol_id).await;
        if gone {
            say(
                start,
                format!(
                    "alice and bob saw carol leave after {:.0} ms",
                    left.elapsed().as_secs_f64() * 1000.0
                ),
            );
            break;
        }
        if left.elapsed() > Duration::from_secs(5) {
            bail!("carol still listed after 5 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for mut n in nodes {
        n.process.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    }
    server.stop();
    say(start, "demo finished; everything stopped and removed");
    Ok(())
}

async fn futures_all_without(nodes: &[Node], id: &str) -> bool {
    for n in nodes {
        match status(&n.socket).await {
            Some(s) if s.peers.iter().all(|p| p.node_id != id) => {}
            _ => return false,
        }
    }
    true
}
