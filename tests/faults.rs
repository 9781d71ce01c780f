//! Failure modes a user meets: wrong password, unreachable server, untrusted certificate,
//! a server crash, strangers and broken peers.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringlet_lab::TestCa;
use ringlet_xmpp::wire::overlay::OverlayTag;
use ringlet_xmpp::wire::relay::{Frag, RelayFrame};
use ringlet_xmpp::xmpp_parsers::iq::Iq;
use ringlet_xmpp::xmpp_parsers::presence::{Presence, Type as PresenceType};
use ringlet_xmpp::{names, Element, Jid};
use support::*;

/// Runs `ringlet up` to completion (it must exit by itself) and returns (code, stderr, time).
fn up_until_exit(spec: &NodeSpec, dir: &std::path::Path, limit: Duration) -> (Option<i32>, String, Duration) {
    let config = spec.write(dir);
    let start = Instant::now();
    let mut child = ringlet_lab::ChildGuard::spawn(
        "ringlet",
        Command::new(ringlet_bin())
            .args(["up", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let status = child.wait_timeout(limit);
    let elapsed = start.elapsed();
    let mut stderr = String::new();
    if status.is_some() {
        use std::io::Read;
        let mut c = child.into_child();
        c.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let _ = c.wait();
    }
    (status.and_then(|s| s.code()), stderr, elapsed)
}

#[test]
fn wrong_password_exits_nonzero_naming_the_cause() {
    let server = prosody("one.test", &["alice"], false, |_| {});
    let dir = tempdir("ringlet-badpw-");
    let mut spec = NodeSpec::new("alice@one.test", &server.c2s_addr(), "alpha", &[]);
    spec.password = "wrong".into();
    let (code, stderr, took) = up_until_exit(&spec, dir.path(), Duration::from_secs(10));
    assert!(code.is_some(), "ringlet up did not exit within 10 s");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("wrong password"), "stderr: {stderr}");
    eprintln!("wrong password reported after {took:?}");
}

#[test]
fn unreachable_server_exits_nonzero_naming_the_cause() {
    let port = ringlet_lab::free_port("127.0.0.1".parse().unwrap()).unwrap();
    let dir = tempdir("ringlet-unreach-");
    let mut spec = NodeSpec::new("alice@one.test", &format!("127.0.0.1:{port}"), "alpha", &[]);
    spec.login_timeout_s = 2;
    let (code, stderr, took) = up_until_exit(&spec, dir.path(), Duration::from_secs(10));
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stderr.contains("cannot reach XMPP server"), "stderr: {stderr}");
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} with a 2 s login timeout"
    );
}

#[test]
fn untrusted_certificate_is_refused_and_a_configured_ca_is_trusted() {
    let certs = tempdir("ringlet-ca-");
    let ca = TestCa::new(certs.path()).unwrap();
    let tls_port = ringlet_lab::free_port("127.0.0.1".parse().unwrap()).unwrap();
    let cert = ca.server_cert("one.test").unwrap();
    let server = prosody("one.test", &["alice"], false, |s| {
        s.cert = Some(cert.clone());
        s.require_encryption = true;
        s.direct_tls_port = Some(tls_port);
    });
    let dir = tempdir("ringlet-tls-");
    let mut spec = NodeSpec::new("alice@one.test", &server.c2s_addr(), "alpha", &[]);
    spec.tls = "starttls";
    let (code, stderr, _) = up_until_exit(&spec, &dir.path().join("untrusted"), Duration::from_secs(10));
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stderr.contains("not trusted"), "stderr: {stderr}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        spec.ca_file = Some(ca.ca_file.clone());
        let n = embedded(&spec, &dir.path().join("starttls")).await;
        assert_eq!(n.status().await.unwrap().state, "online");
        n.shutdown().await.unwrap();
        let mut direct = spec.clone();
        direct.tls = "direct";
        direct.server = format!("127.0.0.1:{tls_port}");
        let n = embedded(&direct, &dir.path().join("direct")).await;
        assert_eq!(n.status().await.unwrap().state, "online");
        n.shutdown().await.unwrap();
    });
}

/// Prosody is killed and restarted: both nodes reconnect and see each other again within
/// 10 s of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_after_the_server_restarts() {
    let mut server = prosody("one.test", &["alice", "bob"], true, |_| {});
    let addr = server.c2s_addr();
    let friends = ["alice@one.test", "bob@one.test"];
    let dir = tempdir("ringlet-restart-");
    let a = NodeProcess::spawn(
        "alice",
        &NodeSpec::new("alice@one.test", &addr, "alpha", &friends),
        &dir.path().join("a"),
        None,
    );
    let b = NodeProcess::spawn(
        "bob",
        &NodeSpec::new("bob@one.test", &addr, "alpha", &friends),
        &dir.path().join("b"),
        None,
    );
    let ida = a.online(Duration::from_secs(10)).await.node_id;
    let idb = b.online(Duration::from_secs(10)).await.node_id;
    let both_see = || async {
        let (sa, sb) = (a.status().await?, b.status().await?);
        (sa.state == "online"
            && sb.state == "online"
            && peer_ids(&sa) == vec![idb.clone()]
            && peer_ids(&sb) == vec![ida.clone()])
        .then_some(())
    };
    assert!(wait(Duration::from_secs(3), both_see).await.is_some());

    server.kill();
    let noticed = wait(Duration::from_secs(5), || async {
        let (sa, sb) = (a.status().await?, b.status().await?);
        (sa.state != "online" && sb.state != "online").then_some(())
    })
    .await;
    assert!(noticed.is_some(), "nodes did not notice the server crash");
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.launch().unwrap();
    let restarted = Instant::now();
    let back = wait(Duration::from_secs(10), both_see).await;
    assert!(
        back.is_some(),
        "not reconnected within 10 s:\n{}\n{}",
        a.log(),
        b.log()
    );
    eprintln!("reconnected {:?} after the restart", restarted.elapsed());
    let sa = a.status().await.unwrap();
    assert!(sa.counters["session_resets"] >= 2);
}

fn relay_iq(id: &str, to: &Jid, seq: u64, data: &[u8]) -> Iq {
    let frame = RelayFrame {
        stream: 7,
        seq,
        frag: Frag::WHOLE,
        data: data.to_vec(),
    };
    Iq::Set {
        from: None,
        to: Some(to.clone()),
        id: id.into(),
        payload: frame.emit(),
    }
}

fn address_iq(id: &str, to: &Jid) -> Iq {
    let request = ringlet_xmpp::wire::addresses::AddressRequest {
        ns: names::overlay_ns("alpha"),
    };
    Iq::Get {
        from: None,
        to: Some(to.clone()),
        id: id.into(),
        payload: request.emit(),
    }
}

/// A stranger gets no answer at all; a friend who is not online in the overlay gets
/// `<not-authorized/>`; neither's datagram is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_non_members_are_refused() {
    let server = prosody("one.test", &["alice", "bob", "mallory"], true, |_| {});
    let addr = server.c2s_addr();
    let dir = tempdir("ringlet-refuse-");
    let alice = NodeProcess::spawn(
        "alice",
        &NodeSpec::new("alice@one.test", &addr, "alpha", &["bob@one.test"]),
        &dir.path().join("a"),
        None,
    );
    let target: Jid = Jid::new(&alice.online(Duration::from_secs(10)).await.jid.unwrap()).unwrap();

    let mut mallory = RawClient::connect("mallory@one.test", &addr).await;
    mallory.send(relay_iq("m1", &target, 0, b"let me in")).await;
    mallory.send(address_iq("m2", &target)).await;
    assert!(
        mallory.reply("m1", Duration::from_millis(800)).await.is_none(),
        "a stranger got an answer"
    );
    assert!(
        mallory.reply("m2", Duration::from_millis(200)).await.is_none(),
        "a stranger got an answer"
    );

    let mut bob = RawClient::connect("bob@one.test", &addr).await;
    bob.send(relay_iq("b1", &target, 0, b"not a member")).await;
    let r = bob
        .reply("b1", Duration::from_secs(3))
        .await
        .expect("friend gets an answer");
    assert_eq!(error_condition(&r), Some("not-authorized"));
    bob.send(address_iq("b2", &target)).await;
    let r = bob
        .reply("b2", Duration::from_secs(3))
        .await
        .expect("friend gets an answer");
    assert_eq!(error_condition(&r), Some("not-authorized"));

    let s = alice.status().await.unwrap();
    assert_eq!(s.counters["relay_datagrams_in"], 0);
    assert!(s.counters["strangers_ignored"] >= 2, "{:?}", s.counters);
    assert!(s.counters["refused_not_member"] >= 1);
    assert!(s.counters["address_requests_refused"] >= 1);
}

/// Bad base64, a bad sequence number and an oversized datagram from a member are refused
/// with errors; the node keeps running and still accepts a good datagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_relay_payloads_are_rejected_without_crashing() {
    let server = prosody("one.test", &["alice", "bob"], true, |_| {});
    let addr = server.c2s_addr();
    let dir = tempdir("ringlet-malformed-");
    let mut spec = NodeSpec::new("alice@one.test", &addr, "alpha", &["bob@one.test"]);
    spec.extra = "[relay]\nmax_datagram = 4096\n".into();
    let alice = NodeProcess::spawn("alice", &spec, &dir.path().join("a"), None);
    let target: Jid = Jid::new(&alice.online(Duration::from_secs(10)).await.jid.unwrap()).unwrap();

    // bob joins the overlay by hand: presence with the overlay tag
    let mut bob = RawClient::connect("bob@one.test", &addr).await;
    let mut presence = Presence::new(PresenceType::None);
    presence.payloads.push(
        OverlayTag {
            ns: names::overlay_ns("alpha"),
            node: [0xb0; 20],
            key: None,
            cert: None,
        }
        .emit(),
    );
    bob.send(presence).await;
    let member = wait(Duration::from_secs(3), || async {
        alice
            .status()
            .await
            .filter(|s| s.peers.iter().any(|p| p.node_id == hex_id()))
            .map(|_| ())
    })
    .await;
    assert!(member.is_some(), "bob did not become a member");

    let bad = |id: &str, body: String| {
        let payload: Element = body.parse().unwrap();
        Iq::Set {
            from: None,
            to: Some(target.clone()),
            id: id.into(),
            payload,
        }
    };
    let ns = "urn:ringlet:relay:0";
    bob.send(bad(
        "x1",
        format!("<d xmlns='{ns}' stream='00000001' seq='0'>not*base64</d>"),
    ))
    .await;
    bob.send(bad(
        "x2",
        format!("<d xmlns='{ns}' stream='00000001' seq='-5'>AAAA</d>"),
    ))
    .await;
    bob.send(relay_iq("x3", &target, 0, &[7u8; 6000])).await;
    for (id, want) in [
        ("x1", "bad-request"),
        ("x2", "bad-request"),
        ("x3", "not-acceptable"),
    ] {
        let r = bob
            .reply(id, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("no answer to {id}"));
        assert_eq!(error_condition(&r), Some(want), "answer to {id}");
    }
    bob.send(relay_iq("x4", &target, 1, b"a good one")).await;
    let r = bob
        .reply("x4", Duration::from_secs(3))
        .await
        .expect("answer to the good datagram");
    assert_eq!(error_condition(&r), None);

    let s = alice.status().await.expect("node still running");
    assert_eq!(s.counters["malformed_relay"], 2);
    assert_eq!(s.counters["relay_refused_in"], 3);
    assert_eq!(s.counters["relay_datagrams_in"], 1);
}

fn hex_id() -> String {
    "b0".repeat(20)
}
