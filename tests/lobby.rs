//! The application API through its two examples, for real.
//!
//! NAT lab (root): three members behind different NATs run `ringlet up`; the lobby example
//! attaches to each daemon. Alice hosts, Bob and Carol join, chat and game messages flow
//! between all three, and a member that leaves disappears from everyone's lobby within 5 s —
//! both when its lobby program dies without a word (the host stops hearing from it) and when
//! its node goes offline (the overlay reports it).
//!
//! Loopback: the chat example embeds its own node (`--embed`); two of them talk. Without a
//! running daemon, attaching fails with a clear error.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::time::{Duration, Instant};

use ringlet_lab::natlab::LabOptions;
use ringlet_lab::NatType;
use support::scene::Scene;
use support::{AppProcess, NodeSpec};

const LEAVE_LIMIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn three_lab_peers_play_in_a_lobby_and_a_leaver_disappears_within_5_s() {
    ringlet_lab::require_root("the lobby lab test").expect("this test needs root");
    let peers = [
        ("alice", NatType::PortRestricted),
        ("bob", NatType::Symmetric),
        ("carol", NatType::Full),
    ];
    let mut scene = Scene::start("lobby", &peers, LabOptions::default()).await;
    let dir = scene.dir.path().to_owned();
    let config = |name: &str| dir.join(name).join("ringlet.toml").display().to_string();
    let (ca, cb, cc) = (config("alice"), config("bob"), config("carol"));
    let wait = Duration::from_secs(20);

    let alice = AppProcess::spawn("lobby", "alice-lobby", &["-c", &ca, "host", "Duel"], &dir);
    alice.expect_line("hosting \"Duel\"", wait).await;
    let mut bob = AppProcess::spawn("lobby", "bob-lobby", &["-c", &cb, "join"], &dir);
    let mut carol = AppProcess::spawn("lobby", "carol-lobby", &["-c", &cc, "join", "Duel"], &dir);
    for player in [&bob, &carol] {
        player
            .expect_line("game \"Duel\" hosted by alice@lab.test", wait)
            .await;
        player.expect_line("joined \"Duel\"", wait).await;
    }
    alice.expect_line("joined: bob@lab.test", wait).await;
    alice.expect_line("joined: carol@lab.test", wait).await;
    alice
        .expect_line("players: alice@lab.test bob@lab.test carol@lab.test", wait)
        .await;
    // Each sender must know the other player before it types: a player learns the others
    // from the host's announcements, so one may know of the other a second before the
    // reverse holds (carol's move then went to alice only, and the test failed 1 run in 4).
    bob.expect_line("joined: carol@lab.test", wait).await;
    carol.expect_line("joined: bob@lab.test", wait).await;

    bob.type_line("hello from bob");
    carol.type_line("/game move e4");
    for (who, other) in [
        (&alice, "<bob@lab.test> hello from bob"),
        (&carol, "<bob@lab.test> hello from bob"),
    ] {
        who.expect_line(other, wait).await;
    }
    for who in [&alice, &bob] {
        who.expect_line("[game] <carol@lab.test> move e4", wait).await;
    }

    // Carol's program dies without a word: the host stops hearing from her.
    carol.kill();
    let t0 = Instant::now();
    alice.expect_line("left: carol@lab.test", LEAVE_LIMIT).await;
    bob.expect_line("left: carol@lab.test", LEAVE_LIMIT).await;
    let silent_leave = t0.elapsed();
    bob.expect_line("players: alice@lab.test bob@lab.test", LEAVE_LIMIT)
        .await;

    // Bob's node goes offline: the overlay tells the host at once.
    let t1 = Instant::now();
    scene.nodes[1].stop();
    alice.expect_line("left: bob@lab.test", LEAVE_LIMIT).await;
    let offline_leave = t1.elapsed();
    assert!(
        bob.finish(Duration::from_secs(5)).is_some(),
        "bob's lobby did not end when his node stopped"
    );
    println!(
        "lobby: a silent leaver gone after {:.2} s, an offline node after {:.2} s",
        silent_leave.as_secs_f64(),
        offline_leave.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_chat_programs_with_embedded_nodes_talk() {
    let server = support::prosody("chat.test", &["ann", "ben"], true, |_| {});
    let dir = support::tempdir("ringlet-chat-");
    let friends = ["ann@chat.test", "ben@chat.test"];
    let spec = |jid: &str| NodeSpec::new(jid, &server.c2s_addr(), "chat", &friends);
    let ann_cfg = spec("ann@chat.test").write(&dir.path().join("ann"));
    let ben_cfg = spec("ben@chat.test").write(&dir.path().join("ben"));
    let (ann_cfg, ben_cfg) = (ann_cfg.display().to_string(), ben_cfg.display().to_string());

    // No `ringlet up` runs for Ann: attaching fails and says what to do.
    let mut lone = AppProcess::spawn("chat", "no-daemon", &["-c", &ann_cfg], dir.path());
    let status = lone
        .finish(Duration::from_secs(10))
        .expect("chat exits without a daemon");
    assert!(!status.success());
    let stderr = std::fs::read_to_string(dir.path().join("no-daemon.stderr")).unwrap();
    assert!(
        stderr.contains("attaching to the running node") && stderr.contains("no ringlet node is running"),
        "unclear error: {stderr}"
    );

    let wait = Duration::from_secs(20);
    let mut ann = AppProcess::spawn("chat", "ann-chat", &["-c", &ann_cfg, "--embed"], dir.path());
    let ben = AppProcess::spawn("chat", "ben-chat", &["-c", &ben_cfg, "--embed"], dir.path());
    ann.expect_line("* ben@chat.test is online", wait).await;
    ben.expect_line("* ann@chat.test is online", wait).await;
    ann.type_line("hi ben, this is ann");
    ben.expect_line("<ann@chat.test> hi ben, this is ann", wait).await;
    // Ann leaves (end of input): her node goes offline and Ben sees it.
    assert!(ann.finish(Duration::from_secs(10)).is_some_and(|s| s.success()));
    ben.expect_line("* ann@chat.test left", Duration::from_secs(5))
        .await;
}
