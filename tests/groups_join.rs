//! Joining a group without a URL, for real: a Prosody, the administrator's `ringlet group
//! serve` and node, and a requester that is not yet a member.
//!
//! Alice creates a group on the service's pages (her node becomes its first member); Bob's
//! `ringlet group request` reaches her service over XMPP and shows up as pending; she approves
//! in the page; Bob's certificate comes back over XMPP and is installed; Bob's node joins the
//! ring with a direct link to Alice's. She revokes Bob on the page, and her node cuts him off.
//! On the way: the page is served on Alice's VPN address, a request for a group that does not
//! exist and a second request while one is pending get clear refusals.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::time::Duration;

use support::groups::{finish, request, spec, text, Admin, GroupService, DOMAIN};
use support::{prosody, tempdir, wait, NodeProcess};

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_xmpp_is_approved_in_the_page_joins_the_ring_and_is_revoked() {
    ringlet_lab::require_root("the group service test (a TUN device for the VPN address)").unwrap();
    let server = prosody(DOMAIN, &["alice", "bob", "carol"], true, |_| {});
    let dir = tempdir("ringlet-groups-join-");
    let vpn = "[vpn]\nenabled = true\ndevice = \"rgrp0\"\naddress = \"10.79.0.1/16\"\n";
    let alice_spec = spec(&server.c2s_addr(), "alice", "bob", vpn);
    let alice_cfg = alice_spec.write(&dir.path().join("alice"));
    let mut service = GroupService::start(&alice_cfg).await;
    let admin = Admin::login(&service).await;

    let made = admin
        .post(
            "/groups",
            &[
                ("name", "friends"),
                ("description", "LAN party"),
                ("policy", "manual"),
            ],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.body);
    assert!(
        made.header("location").contains("first%20member"),
        "{}",
        made.header("location")
    );
    assert!(
        dir.path().join("alice/group.cert").exists(),
        "alice's node was not enrolled"
    );
    let alice = NodeProcess::spawn("alice", &alice_spec, &dir.path().join("alice"), None);
    let alice_status = alice.online(Duration::from_secs(20)).await;

    // The page is also served on the node's VPN address once the node has one.
    let vpn_addr: std::net::SocketAddr = format!("10.79.0.1:{}", service.addr.port()).parse().unwrap();
    let over_vpn = wait(Duration::from_secs(15), || async {
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            support::http::get(vpn_addr, "/groups/friends", None),
        )
        .await
        .ok()?;
        (reply.status == 200).then_some(reply.body)
    })
    .await
    .unwrap_or_else(|| panic!("not served on the VPN address:\n{}", service.log()));
    assert!(over_vpn.contains("LAN party") && !over_vpn.contains("class=\"approve\""));

    // Refusals come back as clear errors.
    let bob_spec = spec(&server.c2s_addr(), "bob", "alice", "");
    let bob_cfg = bob_spec.write(&dir.path().join("bob"));
    let nowhere = finish(request(&bob_cfg, "nosuchgroup", 30)).await;
    assert_ne!(nowhere.status.code(), Some(0));
    assert!(text(&nowhere).contains("item-not-found"), "{}", text(&nowhere));

    // Bob asks; the request appears as pending on the page.
    let asking = request(&bob_cfg, "friends", 60);
    let id = admin
        .pending_request("friends", &format!("bob@{DOMAIN}"), Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("bob's request never showed as pending:\n{}", service.log()));
    // A second request from the same node while one is pending waits for the same decision.
    let again = request(&bob_cfg, "friends", 60);
    assert_eq!(
        admin
            .page("/groups/friends")
            .await
            .matches("class=\"request\"")
            .count(),
        1,
        "a duplicate request was filed"
    );
    let approved = admin
        .post(&format!("/groups/friends/requests/{id}/approve"), &[])
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    for out in [finish(asking).await, finish(again).await] {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("pending") || text(&out).contains("joined"),
            "{}",
            text(&out)
        );
    }
    let cert = ringlet::secure::files::read_cert(&dir.path().join("bob/group.cert")).expect("installed");
    assert_eq!(cert.group, "friends");
    assert_eq!(cert.user, format!("bob@{DOMAIN}"));

    // Bob's node joins the ring: alice sees it directly.
    let bob = NodeProcess::spawn("bob", &bob_spec, &dir.path().join("bob"), None);
    let bob_id = bob.online(Duration::from_secs(20)).await.node_id;
    let path_to_bob = || async {
        let s = alice.status().await?;
        s.peers
            .iter()
            .find(|p| p.node_id == bob_id)
            .map(|p| p.path.clone())
    };
    let joined = wait(Duration::from_secs(20), || async {
        path_to_bob().await.filter(|p| p == "direct")
    })
    .await;
    assert!(joined.is_some(), "bob never linked to alice:\n{}", alice.log());
    assert_ne!(alice_status.node_id, bob_id);

    // One click revokes him; alice's node publishes it and cuts him off.
    let revoked = admin
        .post("/groups/friends/revoke", &[("user", &format!("bob@{DOMAIN}"))])
        .await;
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    assert!(
        revoked.header("location").contains("published"),
        "{}",
        revoked.header("location")
    );
    let cut = wait(Duration::from_secs(10), || async {
        path_to_bob()
            .await
            .filter(|p| p == "revoked")
            .or((path_to_bob().await.is_none()).then(String::new))
    })
    .await;
    assert!(
        cut.is_some(),
        "bob still linked after the revocation:\n{}",
        alice.log()
    );
    let crl = support::http::get(service.addr, "/groups/friends/crl", None)
        .await
        .body;
    assert_eq!(crl.lines().count(), 1);

    assert_eq!(service.stop(), Some(0), "{}", service.log());
}

/// Join queries that are malformed, forged, stale or for something else get clear stanza
/// errors, change nothing, and the service keeps answering.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_refuses_malformed_forged_and_stale_queries() {
    use ringlet::groups::join;
    use ringlet::identity::NodeKey;
    use ringlet_xmpp::wire::join::{Answer, Query, Signed};
    use ringlet_xmpp::xmpp_parsers::iq::Iq;
    use ringlet_xmpp::Element;
    use support::{error_condition, RawClient};

    let server = prosody(DOMAIN, &["alice", "mallory"], false, |_| {});
    let dir = tempdir("ringlet-groups-refuse-");
    let alice_cfg = spec(&server.c2s_addr(), "alice", "bob", "").write(&dir.path().join("alice"));
    let service = GroupService::start(&alice_cfg).await;
    let admin = Admin::login(&service).await;
    assert_eq!(
        admin
            .post("/groups", &[("name", "friends"), ("policy", "manual")])
            .await
            .status,
        303
    );

    let mut mallory = RawClient::connect(&format!("mallory@{DOMAIN}"), &server.c2s_addr()).await;
    let to: ringlet_xmpp::Jid = format!("alice@{DOMAIN}/ringlet-groups").parse().unwrap();
    let mut n = 0;
    let mut ask = |payload: Element, set: bool| {
        n += 1;
        let id = format!("q{n}");
        let (to, id2) = (Some(to.clone()), id.clone());
        let iq = if set {
            Iq::Set {
                from: None,
                to,
                id: id2,
                payload,
            }
        } else {
            Iq::Get {
                from: None,
                to,
                id: id2,
                payload,
            }
        };
        (iq, id)
    };
    // The service is online once it answers the key query (bounded: 40 tries, 20 s).
    let mut service_key = None;
    for _ in 0..40 {
        let (iq, id) = ask(Query::Service.emit(), false);
        mallory.send(iq).await;
        if let Some(Iq::Result { payload: Some(p), .. }) = mallory.reply(&id, Duration::from_secs(1)).await {
            if let Ok(Answer::Service { key }) = Answer::parse(&p) {
                service_key = Some(key);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let service_key =
        service_key.unwrap_or_else(|| panic!("the service never answered over XMPP:\n{}", service.log()));

    let key = NodeKey::from_secret([0x42; 32]);
    let user: ringlet_xmpp::BareJid = format!("mallory@{DOMAIN}").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid = join::sign(&key, &service_key, &user, "friends", now).unwrap();
    let cases: Vec<(&str, Element, bool, &str)> = vec![
        (
            "malformed",
            r#"<request xmlns="urn:ringlet:join:0" group="friends"/>"#
                .parse()
                .unwrap(),
            true,
            "bad-request",
        ),
        (
            "forged proof",
            Query::Request(Signed {
                proof: [7; 32],
                ..valid.clone()
            })
            .emit(),
            true,
            "forbidden",
        ),
        (
            "stale",
            Query::Request(join::sign(&key, &service_key, &user, "friends", now - 3600).unwrap()).emit(),
            true,
            "not-acceptable",
        ),
        (
            "unknown group",
            Query::Request(join::sign(&key, &service_key, &user, "others", now).unwrap()).emit(),
            true,
            "item-not-found",
        ),
        (
            "poll before asking",
            Query::State(valid.clone()).emit(),
            false,
            "item-not-found",
        ),
        (
            "not a join query",
            r#"<query xmlns="jabber:iq:version"/>"#.parse().unwrap(),
            false,
            "service-unavailable",
        ),
    ];
    for (what, payload, set, expected) in cases {
        let (iq, id) = ask(payload, set);
        mallory.send(iq).await;
        let reply = mallory.reply(&id, Duration::from_secs(5)).await;
        let condition = reply.as_ref().and_then(error_condition);
        assert_eq!(condition, Some(expected), "{what}: {reply:?}");
    }
    let page = admin.page("/groups/friends").await;
    assert!(!page.contains("mallory@"), "a refused query filed a request");

    // The service still works: a valid request is filed and shows as pending.
    let (iq, id) = ask(Query::Request(valid).emit(), true);
    mallory.send(iq).await;
    let reply = mallory.reply(&id, Duration::from_secs(5)).await;
    assert!(matches!(reply, Some(Iq::Result { .. })), "{reply:?}");
    assert!(admin
        .pending_request("friends", &user.to_string(), Duration::from_secs(5))
        .await
        .is_some());
}
