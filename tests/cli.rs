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
    for key in ["node_id", "jid", "path", "remote", "rtt_ms", "since_s"] {
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
