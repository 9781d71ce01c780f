//! The command-line contract: exit codes, messages, and the status output.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::*;

fn ringlet(args: &[&str]) -> Output {
    Command::new(ringlet_bin()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn status_without_a_running_node_says_so() {
    let dir = tempdir("ringlet-cli-");
    let spec = NodeSpec::new("alice@one.test", "127.0.0.1:1", "alpha", &[]);
    let config = spec.write(dir.path());
    let out = ringlet(&["status", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no ringlet node is running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_or_missing_config_exits_2_naming_the_problem() {
    let dir = tempdir("ringlet-cli-");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[xmpp]\njid = \"alice@one.test\"\npassword = \"x\"\ntls = \"maybe\"\n[overlay]\nname = \"a\"\n",
    )
    .unwrap();
    let out = ringlet(&["up", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("xmpp.tls"), "{}", stderr(&out));
    let out = ringlet(&[
        "status",
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read config"), "{}", stderr(&out));
    std::fs::write(
        &path,
        "[xmpp]\njid = \"alice@one.test\"\npasword = \"x\"\n[overlay]\nname = \"a\"\n",
    )
    .unwrap();
    let out = ringlet(&["up", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown field"), "{}", stderr(&out));
}

/// `status` prints a table and, with `--json`, the documented schema with every key present
/// (unknown values as null); a second node on the same control socket is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_table_and_json_schema() {
    let server = prosody("one.test", &["alice", "bob"], true, |_| {});
    let friends = ["alice@one.test", "bob@one.test"];
    let dir = tempdir("ringlet-cli-status-");
    let alice = NodeProcess::spawn(
        "alice",
        &NodeSpec::new("alice@one.test", &server.c2s_addr(), "alpha", &friends),
        &dir.path().join("a"),
        None,
    );
    let bob = NodeProcess::spawn(
        "bob",
        &NodeSpec::new("bob@one.test", &server.c2s_addr(), "alpha", &friends),
        &dir.path().join("b"),
        None,
    );
    alice.online(Duration::from_secs(10)).await;
    let bob_id = bob.online(Duration::from_secs(10)).await.node_id;
    wait(Duration::from_secs(3), || async {
        alice.status().await.filter(|s| s.peers.len() == 1)
    })
    .await
    .unwrap();
    let config = alice.config.to_str().unwrap().to_owned();

    let table = ringlet(&["status", "--config", &config]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("overlay   alpha (online"), "{text}");
    assert!(text.contains(&bob_id[..12]), "{text}");

    let json = ringlet(&["status", "--config", &config, "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for key in [
        "node_id",
        "jid",
        "overlay",
        "state",
        "reflexive",
        "nat",
        "peers",
        "ring",
        "counters",
    ] {
        assert!(v.get(key).is_some(), "status lacks key {key}: {v}");
    }
    for key in ["mapping", "ports", "filtering", "udp"] {
        assert!(v["nat"].get(key).is_some(), "nat lacks {key}: {}", v["nat"]);
    }
    assert_eq!(v["node_id"].as_str().unwrap().len(), 40);
    let peer = &v["peers"][0];
    for key in [
        "node_id",
        "jid",
        "path",
        "remote",
        "rtt_ms",
        "since_s",
        "nat",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(peer.get(key).is_some(), "peer lacks key {key}: {peer}");
    }
    assert!(peer["path"] == "xmpp" || peer["path"] == "direct", "{peer}");
    assert_eq!(peer["node_id"], bob_id.as_str());

    // A second node with the same control socket refuses to start and leaves the first alone.
    let second = tokio::task::spawn_blocking({
        let config = config.clone();
        move || ringlet(&["up", "--config", &config])
    })
    .await
    .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(stderr(&second).contains("already running"), "{}", stderr(&second));
    assert_eq!(alice.status().await.unwrap().state, "online");
}

/// `id`, then `group init`, `sign`, `join` and `show` as a user would run them; a certificate
/// for another node or a damaged one is refused and nothing is installed.
#[test]
fn group_init_sign_join_and_show() {
    let dir = tempdir("ringlet-cli-");
    let mut spec = NodeSpec::new("alice@one.test", "127.0.0.1:1", "alpha", &[]);
    spec.membership = Membership::None;
    let config = spec.write(dir.path());
    let config = config.to_str().unwrap();
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let out = ringlet(&["id", "--config", config]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("node-key").map(|k| k.trim().to_owned()))
        .expect("id prints node-key");
    let ca = dir.path().join("friends.ca.key");
    let ca = ca.to_str().unwrap();
    let out = ringlet(&["group", "init", "friends", "--ca", ca]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = ringlet(&["group", "init", "friends", "--ca", ca]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    let cert = dir.path().join("alice.cert");
    let cert = cert.to_str().unwrap();
    let other_key = "11".repeat(32);
    let other = dir.path().join("other.cert");
    let out = ringlet(&[
        "group",
        "sign",
        "--ca",
        ca,
        "--node-key",
        &other_key,
        "--user",
        "alice@one.test",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ringlet(&["group", "join", "--config", config, other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("for node"), "{}", stderr(&out));
    let out = ringlet(&["group", "show", "--config", config]);
    assert_eq!(out.status.code(), Some(1), "a refused certificate was installed");

    let out = ringlet(&[
        "group",
        "sign",
        "--ca",
        ca,
        "--node-key",
        &key,
        "--user",
        "alice@one.test",
        "--expires",
        "30",
        "--out",
        cert,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut damaged = std::fs::read_to_string(cert).unwrap();
    damaged.insert(20, 'A');
    let bad = dir.path().join("bad.cert");
    std::fs::write(&bad, damaged).unwrap();
    let out = ringlet(&["group", "join", "--config", config, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    let out = ringlet(&["group", "join", "--config", config, cert]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ringlet(&["group", "show", "--config", config]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = text(&out);
    assert!(shown.contains("group      friends"), "{shown}");
    assert!(shown.contains("user       alice@one.test"), "{shown}");
    assert!(
        shown.contains("in 29 days") || shown.contains("in 30 days"),
        "{shown}"
    );
    let out = ringlet(&[
        "group",
        "sign",
        "--ca",
        ca,
        "--node-key",
        &key,
        "--user",
        "nobody",
        "--expires",
        "2001-01-01",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// `group revoke` signs a revocation with the CA key, adds it to the node's list once, and a
/// node whose own certificate is revoked refuses to start; a bad target is refused.
#[test]
fn group_revoke_fills_the_list_and_a_revoked_node_does_not_start() {
    let dir = tempdir("ringlet-cli-");
    let mut spec = NodeSpec::new("alice@one.test", "127.0.0.1:1", "alpha", &[]);
    spec.membership = Membership::None;
    let config = spec.write(dir.path());
    let config = config.to_str().unwrap();
    let ca = dir.path().join("friends.ca.key");
    let ca = ca.to_str().unwrap();
    assert!(ringlet(&["group", "init", "friends", "--ca", ca])
        .status
        .success());
    let out = ringlet(&["id", "--config", config]);
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("node-key").map(|k| k.trim().to_owned()))
        .unwrap();
    let cert = dir.path().join("alice.cert");
    let signed = ringlet(&[
        "group",
        "sign",
        "--ca",
        ca,
        "--node-key",
        &key,
        "--user",
        "alice@one.test",
        "--out",
        cert.to_str().unwrap(),
    ]);
    assert!(signed.status.success(), "{}", stderr(&signed));
    assert!(
        ringlet(&["group", "join", "--config", config, cert.to_str().unwrap()])
            .status
            .success()
    );

    let out = ringlet(&[
        "group",
        "revoke",
        "--ca",
        ca,
        "--user",
        "mallory@one.test",
        "--config",
        config,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ringlet-revocation "));
    assert!(stderr(&out).contains("now 1 revocations"), "{}", stderr(&out));
    let again = ringlet(&[
        "group",
        "revoke",
        "--ca",
        ca,
        "--user",
        "mallory@one.test",
        "--config",
        config,
    ]);
    assert!(stderr(&again).contains("already in"), "{}", stderr(&again));
    let bad = ringlet(&["group", "revoke", "--ca", ca, "--serial", "xyz"]);
    assert_eq!(bad.status.code(), Some(1));
    let none = ringlet(&["group", "revoke", "--ca", ca]);
    assert!(stderr(&none).contains("name what to revoke"), "{}", stderr(&none));

    let out = ringlet(&[
        "group",
        "revoke",
        "--ca",
        ca,
        "--node-key",
        &key,
        "--config",
        config,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let up = ringlet(&["up", "--config", config]);
    assert_eq!(up.status.code(), Some(1));
    assert!(stderr(&up).contains("revoked"), "{}", stderr(&up));
}

/// Kills a detached daemon by the PID in its pid file if a test fails before `down`.
struct DaemonGuard(std::path::PathBuf);

impl DaemonGuard {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill with the PID the daemon wrote; at worst the signal finds nobody.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Whether `pid` runs (a zombie no init has reaped yet does not).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    state.is_some_and(|s| s != 'Z')
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `up --daemon` returns once the node is online and leaves a pid file; `down` stops it and
/// waits for its exit; both say clearly when there is nothing (or already something) to do.
/// `--quiet` keeps the log to warnings; by default it shows the start's progress.
#[test]
fn up_daemon_and_down() {
    let server = prosody("one.test", &["alice", "bob"], true, |_| {});
    let dir = tempdir("ringlet-cli-daemon-");
    let spec = NodeSpec::new("alice@one.test", &server.c2s_addr(), "alpha", &["bob@one.test"]);
    let config = spec.write(dir.path());
    let cfg = config.to_str().unwrap();
    let guard = DaemonGuard(dir.path().join("ringlet.pid"));
    let log = dir.path().join("ringlet.log");

    for quiet in [true, false] {
        let mut args = vec!["up", "--daemon", "-c", cfg];
        if quiet {
            args.push("--quiet");
        }
        let out = ringlet(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("ringlet is up (pid"), "{}", stdout(&out));
        let pid = guard.pid().expect("a pid file");
        assert!(alive(pid));
        let status = ringlet(&["status", "-c", cfg]);
        assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
        let again = ringlet(&["up", "--daemon", "-c", cfg]);
        assert_eq!(again.status.code(), Some(1));
        assert!(stderr(&again).contains("already running"), "{}", stderr(&again));

        let down = ringlet(&["down", "-c", cfg]);
        assert_eq!(down.status.code(), Some(0), "{}", stderr(&down));
        assert!(stdout(&down).contains("ringlet stopped"));
        assert!(!alive(pid), "the daemon still runs after down");
        assert!(guard.pid().is_none(), "the pid file outlived the daemon");
        assert!(!dir.path().join("ringlet.sock").exists());
        let text = std::fs::read_to_string(&log).unwrap();
        let infos = text.lines().filter(|l| l.contains("INFO")).count();
        if quiet {
            assert_eq!(infos, 0, "--quiet logged progress:\n{text}");
        } else {
            for step in ["logging in", "online", "node up"] {
                assert!(text.contains(step), "no {step:?} progress in the log:\n{text}");
            }
        }
    }
    let down = ringlet(&["down", "-c", cfg]);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        stderr(&down).contains("no ringlet node is running"),
        "{}",
        stderr(&down)
    );

    // A daemon that cannot log in: `up --daemon` fails and shows the end of its log.
    let mut wrong = spec.clone();
    wrong.password = "not-the-password".into();
    let config = wrong.write(&dir.path().join("wrong"));
    let out = ringlet(&["up", "--daemon", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the daemon exited") && stderr(&out).contains("wrong password"),
        "{}",
        stderr(&out)
    );
}

/// `config check` passes a complete member setup and names what is missing otherwise.
#[test]
fn config_check_success_and_errors() {
    let dir = tempdir("ringlet-cli-check-");
    let mut spec = NodeSpec::new("alice@one.test", "127.0.0.1:5222", "alpha", &["bob@one.test"]);
    spec.extra = "[vpn]\nenabled = true\naddress = \"10.77.0.9/16\"\n".into();
    let config = spec.write(&dir.path().join("ok"));
    let out = ringlet(&["config", "check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "config",
        "account    alice@one.test",
        "overlay    alpha (1 friends)",
        "group",
        "vpn        ringlet0 10.77.0.9/16",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }

    spec.membership = support::Membership::None;
    let bare = spec.write(&dir.path().join("bare"));
    let out = ringlet(&["config", "check", "-c", bare.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no node key"), "{}", stderr(&out));

    let out = ringlet(&["id", "-c", bare.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let out = ringlet(&["config", "check", "-c", bare.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no usable group certificate"),
        "{}",
        stderr(&out)
    );

    // Alice's key and certificate under Bob's account.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("alice@one.test", "bob@one.test");
    std::fs::write(&config, text).unwrap();
    let out = ringlet(&["config", "check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is for alice@one.test"), "{}", stderr(&out));

    let out = ringlet(&[
        "config",
        "check",
        "-c",
        dir.path().join("none.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read config"), "{}", stderr(&out));
}

/// `netcheck` in the NAT lab: from the running node (symmetric NAT), and alone when no node
/// runs (port-restricted cone): the XEP-0215 STUN services, reflexive address and verdict.
#[tokio::test(flavor = "multi_thread")]
async fn netcheck_from_the_daemon_and_alone() {
    ringlet_lab::require_root("the netcheck lab test").expect("this test needs root");
    use ringlet_lab::natlab::LabOptions;
    use ringlet_lab::NatType;
    let peers = [("cone", NatType::PortRestricted), ("sym", NatType::Symmetric)];
    let mut scene = support::scene::Scene::start("netcheck", &peers, LabOptions::default()).await;
    let cfg = |i: usize| scene.nodes[i].config.to_str().unwrap().to_owned();
    let (cone_cfg, sym_cfg) = (cfg(0), cfg(1));
    // The daemon's verdict needs a moment after login.
    let verdict = wait(Duration::from_secs(15), || async {
        let out = scene
            .lab
            .peer("sym")
            .ns
            .command(ringlet_bin())
            .args(["netcheck", "-c", &sym_cfg])
            .output()
            .unwrap();
        stdout(&out).contains("mapping endpoint-dependent").then_some(out)
    })
    .await
    .expect("netcheck never showed the symmetric NAT");
    let text = stdout(&verdict);
    assert!(stderr(&verdict).contains("asking the running node"));
    assert!(text.contains("services   stun 203.0.113.2:3478"), "{text}");
    assert!(text.contains("verdict    symmetric NAT"), "{text}");

    scene.nodes[0].stop();
    let out = scene
        .lab
        .peer("cone")
        .ns
        .command(ringlet_bin())
        .args(["netcheck", "-c", &cone_cfg])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no node running"), "{}", stderr(&out));
    assert!(text.contains("udp ok, mapping endpoint-independent"), "{text}");
    assert!(text.contains("filtering address-and-port-dependent"), "{text}");
    assert!(text.contains("verdict    cone NAT"), "{text}");
    assert!(!text.contains("reflexive  none"), "{text}");
}

/// `up -c alpha -c beta` runs two overlays in one process on one UDP socket: each overlay's
/// peer links to it directly at the same address, each config answers `status` and `ping` for
/// its own overlay, and `down` on either stops the process. When the second overlay cannot
/// start, the first leaves cleanly before the process fails. Configs that cannot share a
/// process are refused with exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_several_overlays_on_one_udp_socket() {
    let server = prosody("one.test", &["alice", "bob", "carol"], true, |_| {});
    let dir = tempdir("ringlet-cli-overlays-");
    let loopback_udp = "[udp]\nbind = \"127.0.0.1:0\"\n";
    let spec = |jid: &str, overlay: &str, friend: &str| {
        let mut s = NodeSpec::new(jid, &server.c2s_addr(), overlay, &[friend]);
        s.extra = loopback_udp.into();
        s
    };
    let alpha = spec("alice@one.test", "alpha", "bob@one.test").write(&dir.path().join("alpha"));
    let beta = spec("alice@one.test", "beta", "carol@one.test").write(&dir.path().join("beta"));
    let bob = NodeProcess::spawn(
        "bob",
        &spec("bob@one.test", "alpha", "alice@one.test"),
        &dir.path().join("bob"),
        None,
    );
    let carol = NodeProcess::spawn(
        "carol",
        &spec("carol@one.test", "beta", "alice@one.test"),
        &dir.path().join("carol"),
        None,
    );
    let (alpha_cfg, beta_cfg) = (alpha.to_str().unwrap(), beta.to_str().unwrap());
    let guard = DaemonGuard(dir.path().join("alpha/ringlet.pid"));
    let out = tokio::task::spawn_blocking({
        let (a, b) = (alpha_cfg.to_owned(), beta_cfg.to_owned());
        move || ringlet(&["up", "--daemon", "-c", &a, "-c", &b])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pid = guard.pid().expect("a pid file for alpha");
    let beta_pid = std::fs::read_to_string(dir.path().join("beta/ringlet.pid")).unwrap();
    assert_eq!(beta_pid.trim(), pid.to_string(), "one process runs both");

    // Each peer reaches alice directly, at one and the same address.
    let timeout = Duration::from_secs(15);
    let via_alpha = wait(timeout, || direct_remote(&bob, "alice@")).await;
    let via_beta = wait(timeout, || direct_remote(&carol, "alice@")).await;
    let log = || std::fs::read_to_string(dir.path().join("alpha/ringlet.log")).unwrap_or_default();
    let via_alpha = via_alpha.unwrap_or_else(|| panic!("bob has no direct path:\n{}", log()));
    let via_beta = via_beta.unwrap_or_else(|| panic!("carol has no direct path:\n{}", log()));
    assert_eq!(via_alpha, via_beta, "two UDP sockets");

    // Each config speaks for its own overlay.
    for (cfg, overlay, peer) in [(alpha_cfg, "alpha", &bob), (beta_cfg, "beta", &carol)] {
        let json = ringlet(&["status", "-c", cfg, "--json"]);
        assert!(json.status.success(), "{}", stderr(&json));
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["overlay"], overlay);
        assert_eq!(v["counters"]["udp_shared_overlays"], 2, "{}", v["counters"]);
        let peer_id = peer.status().await.unwrap().node_id;
        let ping = ringlet(&["ping", "-c", cfg, "-n", "1", &peer_id]);
        assert!(ping.status.success(), "{}", stderr(&ping));
        assert!(stdout(&ping).contains("direct"), "{}", stdout(&ping));
    }

    let down = ringlet(&["down", "-c", beta_cfg]);
    assert_eq!(down.status.code(), Some(0), "{}", stderr(&down));
    assert!(!alive(pid), "the process still runs after down");
    assert!(!dir.path().join("alpha/ringlet.sock").exists());
    assert!(!dir.path().join("beta/ringlet.pid").exists());

    // A second overlay that cannot start (its account refuses the password): the process
    // fails naming it, and the first overlay, already up, leaves the server cleanly.
    let mut refused = spec("alice@one.test", "delta", "carol@one.test");
    refused.password = "not-the-password".into();
    let delta = refused.write(&dir.path().join("delta"));
    let out = tokio::task::spawn_blocking({
        let (a, d) = (alpha_cfg.to_owned(), delta.to_str().unwrap().to_owned());
        move || ringlet(&["up", "-c", &a, "-c", &d])
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("overlay 'delta'"), "{err}");
    assert!(err.contains("stopping the overlays already up"), "{err}");
    assert!(
        err.contains("left the overlay"),
        "alpha did not leave cleanly:\n{err}"
    );
    assert!(!dir.path().join("alpha/ringlet.sock").exists());
    assert!(!dir.path().join("alpha/ringlet.pid").exists());

    // What cannot share a process.
    let mut other_port = spec("alice@one.test", "gamma", "bob@one.test");
    other_port.extra = "[udp]\nbind = \"127.0.0.1:4999\"\n".into();
    let gamma = other_port.write(&dir.path().join("gamma"));
    for (args, want) in [
        (
            vec!["up", "-c", alpha_cfg, "-c", alpha_cfg],
            "named by two configs",
        ),
        (
            vec!["up", "-c", alpha_cfg, "-c", gamma.to_str().unwrap()],
            "give them the same udp.bind",
        ),
    ] {
        let out = ringlet(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
}

/// Where `node`'s direct path to the member whose JID starts with `jid` leads, if it has one.
async fn direct_remote(node: &NodeProcess, jid: &str) -> Option<String> {
    let s = node.status().await?;
    let peer = s.peers.iter().find(|p| p.jid.starts_with(jid))?;
    (peer.path == "direct").then(|| peer.remote.clone()).flatten()
}
