//! The group service in a real browser: headless Chromium from Debian, driven through
//! chromedriver, against `ringlet group serve` with real Prosody and real nodes.
//!
//! The administrator logs in and creates a group in the page, sees a pending request that a
//! second node sent over XMPP, approves it, watches that node join the ring (its status), revokes
//! it with the page's button, and watches it drop off. A screenshot of each step is saved under
//! `target/tmp/groups-browser/` (the test prints the path).
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::groups::{finish, request, spec, text, GroupService, DOMAIN};
use support::webdriver::Browser;
use support::{prosody, tempdir, wait, NodeProcess};

#[tokio::test(flavor = "multi_thread")]
async fn create_approve_watch_join_revoke_watch_leave_in_chromium() {
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("groups-browser");
    let _ = std::fs::remove_dir_all(&shots);
    let shot = |n: &str| shots.join(format!("{n}.png"));
    let server = prosody(DOMAIN, &["alice", "bob"], true, |_| {});
    let dir = tempdir("ringlet-groups-browser-");
    let alice_spec = spec(&server.c2s_addr(), "alice", "bob", "");
    let alice_cfg = alice_spec.write(&dir.path().join("alice"));
    let service = GroupService::start(&alice_cfg).await;
    let base = format!("http://{}", service.addr);
    let browser = Browser::start().await;

    // 1. Log in with the secret and create a group.
    browser.open(&format!("{base}/login")).await;
    browser.type_into("#secret", &service.secret).await;
    browser.click("#login-submit").await;
    browser.element("#create").await;
    browser.type_into("#name", "friends").await;
    browser.type_into("#description", "Saturday LAN party").await;
    browser.click("#create-submit").await;
    let notice = browser.text("#notice").await;
    assert!(notice.contains("first member"), "{notice}");
    assert!(browser.url().await.contains("/groups/friends?notice="));
    browser.screenshot(&shot("1-group-created")).await;
    let alice = NodeProcess::spawn("alice", &alice_spec, &dir.path().join("alice"), None);
    alice.online(Duration::from_secs(20)).await;

    // 2. Bob's node asks over XMPP; the request shows as pending after a reload.
    let bob_spec = spec(&server.c2s_addr(), "bob", "alice", "");
    let bob_cfg = bob_spec.write(&dir.path().join("bob"));
    let asking = request(&bob_cfg, "friends", 90);
    let bob_row = format!(r#"tr.request[data-user="bob@{DOMAIN}"]"#);
    let seen = wait(Duration::from_secs(20), || async {
        browser.open(&format!("{base}/groups/friends")).await;
        browser.find(&bob_row).await
    })
    .await;
    assert!(
        seen.is_some(),
        "no pending request in the page:\n{}",
        service.log()
    );
    browser.screenshot(&shot("2-request-pending")).await;

    // 3. Approve with the row's button; the certificate goes back over XMPP and is installed.
    browser.click(&format!("{bob_row} button.approve")).await;
    assert!(browser.text("#notice").await.contains("approved"));
    let member_row = format!(r#"tr.member[data-user="bob@{DOMAIN}"]"#);
    browser.element(&member_row).await;
    browser.screenshot(&shot("3-request-approved")).await;
    let out = finish(asking).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // 4. Bob's node joins the ring: alice's status shows a direct link to it.
    let bob = NodeProcess::spawn("bob", &bob_spec, &dir.path().join("bob"), None);
    let bob_id = bob.online(Duration::from_secs(20)).await.node_id;
    let path_to_bob = || async {
        let s = alice.status().await?;
        Some(
            s.peers
                .iter()
                .find(|p| p.node_id == bob_id)
                .map(|p| p.path.clone()),
        )
    };
    let joined = wait(Duration::from_secs(20), || async {
        path_to_bob().await.flatten().filter(|p| p == "direct")
    })
    .await;
    assert!(joined.is_some(), "bob never joined the ring:\n{}", alice.log());
    browser.open(&format!("{base}/groups/friends")).await;
    assert!(
        browser.source().await.contains(&bob_id[..8]),
        "bob's node id not on the page"
    );
    browser.screenshot(&shot("4-member-in-ring")).await;

    // 5. Revoke him with the button (its confirm() is accepted); alice's node cuts him off.
    browser.click(&format!("{member_row} button.revoke-user")).await;
    assert!(browser.text("#notice").await.contains("published"));
    browser
        .element(&format!(r#"tr.member.revoked[data-user="bob@{DOMAIN}"]"#))
        .await;
    browser.screenshot(&shot("5-member-revoked")).await;
    let left = wait(Duration::from_secs(10), || async {
        path_to_bob()
            .await
            .filter(|p| p.as_deref().is_none_or(|p| p == "revoked"))
    })
    .await;
    assert!(
        left.is_some(),
        "bob still linked after the revocation:\n{}",
        alice.log()
    );
    for n in [
        "1-group-created",
        "2-request-pending",
        "3-request-approved",
        "4-member-in-ring",
        "5-member-revoked",
    ] {
        assert!(
            std::fs::metadata(shot(n)).is_ok_and(|m| m.len() > 1000),
            "screenshot {n} missing"
        );
    }
    println!("screenshots in {}", shots.display());
}
