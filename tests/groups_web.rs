//! The group service over real HTTP on loopback: every endpoint, the administrator's login
//! and CSRF protection, what members may see, refused requests, restart with state kept, and
//! a foreign or damaged database refused and left as it was.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringlet::groups::service::{JoinState, ServiceError};
use ringlet::groups::{self, ServeOptions, Started};
use ringlet::secure::files;
use ringlet::secure::revocation::Revocation;
use support::http::{get, post_form, request};

const T0: u64 = 1_800_000_000;
const DAY: u64 = 86_400;

struct Service {
    started: Started,
    clock: Arc<AtomicU64>,
}

impl Service {
    async fn start(db: &Path) -> Self {
        let clock = Arc::new(AtomicU64::new(T0));
        let c = Arc::clone(&clock);
        let opts = ServeOptions {
            db: db.into(),
            port: 0,
            node: None,
        };
        let started = groups::serve(opts, Box::new(move || c.load(Ordering::SeqCst)))
            .await
            .expect("group service starts");
        Service { started, clock }
    }

    fn addr(&self) -> SocketAddr {
        self.started.local
    }

    /// Logs in with the secret from the file the service wrote; returns (cookie, csrf).
    async fn login(&self) -> (String, String) {
        let secret = std::fs::read_to_string(&self.started.secret_file).unwrap();
        let reply = post_form(self.addr(), "/login", None, &[("secret", secret.trim())]).await;
        assert_eq!(reply.status, 303, "{}", reply.body);
        let cookie = format!(
            "ringlet_admin={}",
            reply.cookie("ringlet_admin").expect("session cookie")
        );
        assert!(reply.header("set-cookie").contains("HttpOnly"));
        assert!(reply.header("set-cookie").contains("SameSite=Strict"));
        let page = get(self.addr(), "/", Some(&cookie)).await;
        (cookie, csrf_of(&page.body))
    }

    /// A join request as the XMPP door hands it to the service.
    fn request(&self, group: &str, user: &str, key: [u8; 32]) -> Result<JoinState, ServiceError> {
        let user = user.parse().unwrap();
        let now = self.clock.load(Ordering::SeqCst);
        match self.started.web.with(|s| Ok(s.request(group, &user, &key, now))) {
            Ok(r) => r,
            Err(e) => panic!("{}", e.message),
        }
    }
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("page has a CSRF field")
        + 19;
    page[at..at + 64].to_owned()
}

async fn create(s: &Service, cookie: &str, csrf: &str, name: &str, policy: &str) -> support::http::Reply {
    post_form(
        s.addr(),
        "/groups",
        Some(cookie),
        &[
            ("csrf", csrf),
            ("name", name),
            ("description", "<b>our LAN</b>"),
            ("policy", policy),
            ("limit", "1"),
        ],
    )
    .await
}

#[tokio::test]
async fn only_the_administrator_changes_anything_and_only_with_the_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Service::start(&dir.path().join("groups.db")).await;
    assert!(
        s.started.first_secret.is_some(),
        "a new database prints its login secret"
    );

    let anon = get(s.addr(), "/", None).await;
    assert_eq!(anon.status, 200);
    assert!(!anon.body.contains("Create a group") && !anon.body.contains("name=\"csrf\""));
    assert_eq!(get(s.addr(), "/login", None).await.status, 200);
    let wrong = post_form(s.addr(), "/login", None, &[("secret", "guess")]).await;
    assert_eq!(wrong.status, 403);
    assert!(wrong.cookie("ringlet_admin").is_none());

    let (cookie, csrf) = s.login().await;
    // Refused: no session, no token, a wrong token, a forged cookie.
    let no_session = create(&s, "", &csrf, "friends", "manual").await;
    assert_eq!(no_session.status, 403, "{}", no_session.body);
    let no_token = post_form(
        s.addr(),
        "/groups",
        Some(&cookie),
        &[("name", "friends"), ("policy", "manual")],
    )
    .await;
    assert_eq!(no_token.status, 403);
    assert!(no_token.body.contains("CSRF"), "{}", no_token.body);
    assert_eq!(
        create(&s, &cookie, &"0".repeat(64), "friends", "manual")
            .await
            .status,
        403
    );
    assert_eq!(
        create(&s, "ringlet_admin=forged", &csrf, "friends", "manual")
            .await
            .status,
        403
    );
    assert!(
        !get(s.addr(), "/", None).await.body.contains("friends"),
        "a refused form changed something"
    );

    let made = create(&s, &cookie, &csrf, "friends", "manual").await;
    assert_eq!(made.status, 303, "{}", made.body);
    assert!(
        made.header("location").starts_with("/groups/friends?notice="),
        "{}",
        made.header("location")
    );
    let dup = create(&s, &cookie, &csrf, "friends", "auto").await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    assert_eq!(create(&s, &cookie, &csrf, "bad name!", "auto").await.status, 400);
    assert_eq!(create(&s, &cookie, &csrf, "other", "sometimes").await.status, 400);

    let page = get(s.addr(), "/groups/friends", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("&lt;b&gt;our LAN&lt;/b&gt;"),
        "description not escaped"
    );
    assert_eq!(get(s.addr(), "/groups/nobody", None).await.status, 404);

    // Logging out needs the token too, and ends the session.
    assert_eq!(
        post_form(s.addr(), "/logout", Some(&cookie), &[]).await.status,
        403
    );
    assert_eq!(
        post_form(s.addr(), "/logout", Some(&cookie), &[("csrf", &csrf)])
            .await
            .status,
        303
    );
    assert_eq!(create(&s, &cookie, &csrf, "later", "auto").await.status, 403);
}

#[tokio::test]
async fn requests_are_approved_denied_bundled_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Service::start(&dir.path().join("groups.db")).await;
    let (cookie, csrf) = s.login().await;
    assert_eq!(create(&s, &cookie, &csrf, "friends", "manual").await.status, 303);

    let bob = [0xb0; 32];
    let JoinState::Pending { request } = s.request("friends", "bob@example.org", bob).unwrap() else {
        panic!("a manual group keeps requests pending")
    };
    assert!(matches!(
        s.request("friends", "bob@example.org", bob),
        Err(ServiceError::Duplicate(_))
    ));
    assert!(matches!(
        s.request("nobody", "bob@example.org", bob),
        Err(ServiceError::UnknownGroup(_))
    ));
    let JoinState::Pending { request: mallory } =
        s.request("friends", "mallory@example.org", [0x11; 32]).unwrap()
    else {
        panic!()
    };

    // Pending requests are for the administrator's eyes only.
    assert!(!get(s.addr(), "/groups/friends", None)
        .await
        .body
        .contains("bob@example.org"));
    let admin_page = get(s.addr(), "/groups/friends", Some(&cookie)).await.body;
    assert!(admin_page.contains("bob@example.org") && admin_page.contains("class=\"approve\""));

    let approve = format!("/groups/friends/requests/{request}/approve");
    assert_eq!(
        post_form(s.addr(), &approve, None, &[("csrf", &csrf)])
            .await
            .status,
        403
    );
    assert_eq!(
        post_form(s.addr(), &approve, Some(&cookie), &[]).await.status,
        403
    );
    assert_eq!(
        post_form(s.addr(), &approve, Some(&cookie), &[("csrf", &csrf)])
            .await
            .status,
        303
    );
    assert_eq!(
        post_form(s.addr(), &approve, Some(&cookie), &[("csrf", &csrf)])
            .await
            .status,
        409
    );
    let deny = format!("/groups/friends/requests/{mallory}/deny");
    assert_eq!(
        post_form(s.addr(), &deny, Some(&cookie), &[("csrf", &csrf)])
            .await
            .status,
        303
    );
    assert_eq!(
        post_form(
            s.addr(),
            "/groups/friends/requests/999/approve",
            Some(&cookie),
            &[("csrf", &csrf)]
        )
        .await
        .status,
        404
    );
    assert_eq!(
        post_form(
            s.addr(),
            "/groups/nobody/requests/1/approve",
            Some(&cookie),
            &[("csrf", &csrf)]
        )
        .await
        .status,
        404
    );

    // The requester's answer: an approved certificate for its key, signed by the group's CA.
    let JoinState::Approved { cert } = s.started.web.with(|sv| sv.join_state("friends", &bob)).unwrap()
    else {
        panic!("approved")
    };
    let cert = files::cert_from_text(&cert).unwrap();
    assert_eq!((cert.node_key, cert.user.as_str()), (bob, "bob@example.org"));
    cert.verify(&cert.ca, T0).unwrap();
    assert!(matches!(
        s.started
            .web
            .with(|sv| sv.join_state("friends", &[0x11; 32]))
            .unwrap(),
        JoinState::Denied
    ));
    assert!(matches!(
        s.request("friends", "bob@example.org", bob),
        Err(ServiceError::Duplicate(_))
    ));

    let members = get(s.addr(), "/groups/friends", None).await.body;
    assert!(members.contains("bob@example.org") && !members.contains("mallory@example.org"));
    assert!(!members.contains("/bundle/"), "members see no bundles");

    let serial = format!("{:016x}", cert.serial);
    let bundle_path = format!("/groups/friends/bundle/{serial}");
    assert_eq!(get(s.addr(), &bundle_path, None).await.status, 403);
    let bundle = get(s.addr(), &bundle_path, Some(&cookie)).await;
    assert_eq!(bundle.status, 200);
    assert!(bundle.header("content-disposition").contains("attachment"));
    assert_eq!(
        files::cert_from_text(&bundle.body).unwrap(),
        cert,
        "the bundle installs as is"
    );
    assert_eq!(
        get(s.addr(), "/groups/friends/bundle/00000000000000ff", Some(&cookie))
            .await
            .status,
        404
    );

    // Revocation: one click, signed by the group CA, on the machine endpoint at once.
    let revoke = "/groups/friends/revoke";
    let user = [("csrf", csrf.as_str()), ("user", "bob@example.org")];
    assert_eq!(
        post_form(s.addr(), revoke, Some(&cookie), &user[1..])
            .await
            .status,
        403
    );
    assert_eq!(post_form(s.addr(), revoke, None, &user).await.status, 403);
    assert_eq!(get(s.addr(), "/groups/friends/crl", None).await.body, "");
    assert_eq!(
        post_form(s.addr(), revoke, Some(&cookie), &user).await.status,
        303
    );
    assert_eq!(
        post_form(s.addr(), revoke, Some(&cookie), &user).await.status,
        409
    );
    let both = [
        ("csrf", csrf.as_str()),
        ("user", "bob@example.org"),
        ("serial", serial.as_str()),
    ];
    assert_eq!(
        post_form(s.addr(), revoke, Some(&cookie), &both).await.status,
        400
    );
    let node = [("csrf", csrf.as_str()), ("node_key", &hex::encode([0x11; 32]))];
    assert_eq!(
        post_form(s.addr(), revoke, Some(&cookie), &node).await.status,
        303
    );

    let crl = get(s.addr(), "/groups/friends/crl", None).await;
    assert_eq!(crl.status, 200);
    let revs: Vec<Revocation> = crl
        .body
        .lines()
        .map(|l| Revocation::from_line(l).unwrap())
        .collect();
    assert_eq!(revs.len(), 2);
    for r in &revs {
        r.verify(&cert.ca).unwrap();
    }
    assert!(revs[0].covers(&cert));
    assert_eq!(get(s.addr(), "/groups/nobody/crl", None).await.status, 404);
    assert!(get(s.addr(), "/groups/friends", None)
        .await
        .body
        .contains("member revoked"));
    assert!(matches!(
        s.request("friends", "bob@example.org", [0xb1; 32]),
        Err(ServiceError::Refused(_))
    ));
}

#[tokio::test]
async fn policies_sign_by_themselves_and_renewal_needs_a_live_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Service::start(&dir.path().join("groups.db")).await;
    let (cookie, csrf) = s.login().await;
    // auto-up-to with limit 1: the first request is signed, the second waits.
    assert_eq!(create(&s, &cookie, &csrf, "lan", "auto-up-to").await.status, 303);
    let JoinState::Approved { cert } = s.request("lan", "ann@example.org", [1; 32]).unwrap() else {
        panic!("first request signed automatically")
    };
    assert!(matches!(
        s.request("lan", "ben@example.org", [2; 32]),
        Ok(JoinState::Pending { .. })
    ));

    let renew = |body: String| {
        request(
            s.addr(),
            "POST",
            "/groups/lan/renew",
            None,
            Some(("text/plain", body)),
        )
    };
    let renewed = renew(cert.clone()).await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    let new = files::cert_from_text(&renewed.body).unwrap();
    let old = files::cert_from_text(&cert).unwrap();
    assert_eq!((new.node_key, &new.user), (old.node_key, &old.user));
    assert_ne!(new.serial, old.serial);
    assert_eq!(renew("ringlet-cert AAAA".into()).await.status, 400);
    assert_eq!(
        request(
            s.addr(),
            "POST",
            "/groups/nobody/renew",
            None,
            Some(("text/plain", cert.clone()))
        )
        .await
        .status,
        404
    );
    s.clock.store(T0 + 400 * DAY, Ordering::SeqCst);
    let expired = renew(cert).await;
    assert_eq!(expired.status, 403);
    assert!(expired.body.contains("expired"), "{}", expired.body);
}

#[tokio::test]
async fn a_restart_keeps_everything_and_a_foreign_or_damaged_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("groups.db");
    let (cookie, csrf) = {
        let s = Service::start(&db).await;
        let (cookie, csrf) = s.login().await;
        assert_eq!(create(&s, &cookie, &csrf, "friends", "manual").await.status, 303);
        s.request("friends", "bob@example.org", [3; 32]).unwrap();
        (cookie, csrf)
    };
    let s = Service::start(&db).await;
    assert!(
        s.started.first_secret.is_none(),
        "the secret is printed only once"
    );
    let page = get(s.addr(), "/groups/friends", Some(&cookie)).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("bob@example.org"),
        "pending request lost over a restart"
    );
    assert_eq!(csrf_of(&page.body), csrf, "the session survives a restart");
    drop(s);

    let foreign = dir.path().join("notes.db");
    std::fs::write(&foreign, b"SQLite format 3\0 but really a note".repeat(100)).unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let err = groups::serve(opts(&foreign), Box::new(|| T0))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a ringlet group database"), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);

    // Damage the real database in the middle: refused with a reason, bytes left as they were.
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 8192);
    for b in &mut bytes[4096..8192] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let err = groups::serve(opts(&db), Box::new(|| T0))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("groups.db"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
}

fn opts(db: &Path) -> ServeOptions {
    ServeOptions {
        db: db.into(),
        port: 0,
        node: None,
    }
}

/// The command itself: `group serve` on a file that is not its database stops with the reason
/// and a non-zero exit, and leaves the file alone.
#[test]
fn group_serve_refuses_a_foreign_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = support::NodeSpec::new("alice@example.org", "127.0.0.1:1", "friends", &[]);
    let config = support::NodeSpec {
        membership: support::Membership::None,
        ..spec
    }
    .write(dir.path());
    let foreign = dir.path().join("photos.db");
    std::fs::write(&foreign, b"not sqlite at all\n".repeat(300)).unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let out = std::process::Command::new(support::ringlet_bin())
        .args(["group", "serve", "--port", "0", "--db"])
        .arg(&foreign)
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("not a ringlet group database"), "{stderr}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
}
