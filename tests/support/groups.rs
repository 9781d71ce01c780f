//! A `ringlet group serve` process and the administrator's moves on its pages, for the tests
//! that drive the group service end to end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ringlet_lab::ChildGuard;

use super::http::{get, post_form};
use super::{ringlet_bin, wait, Membership, NodeSpec};

pub struct GroupService {
    pub addr: SocketAddr,
    pub secret: String,
    pub stderr: PathBuf,
    child: ChildGuard,
}

impl GroupService {
    /// Starts `ringlet group serve -c CONFIG --port 0` and waits until it listens.
    pub async fn start(config: &Path) -> Self {
        let dir = config.parent().unwrap();
        let stderr = dir.join("groups.log");
        let mut cmd = Command::new(ringlet_bin());
        cmd.args(["group", "serve", "--port", "0", "-c"])
            .arg(config)
            .env("RUST_LOG", "ringlet=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = ChildGuard::spawn("group-serve", &mut cmd).unwrap();
        let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
        let addr = wait(Duration::from_secs(20), || async {
            let text = log();
            let at = text.find("group service on http://")? + "group service on http://".len();
            text[at..].split('/').next()?.parse().ok()
        })
        .await
        .unwrap_or_else(|| panic!("group serve did not start:\n{}", log()));
        let secret = std::fs::read_to_string(dir.join("groups-admin.secret")).expect("the secret file");
        assert!(
            log().contains(secret.trim()),
            "the first start shows the login secret"
        );
        GroupService {
            addr,
            secret: secret.trim().to_owned(),
            stderr,
            child,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stop(&mut self) -> Option<i32> {
        self.child
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
            .and_then(|s| s.code())
    }
}

/// The administrator's logged-in session: cookie and CSRF token.
pub struct Admin {
    pub addr: SocketAddr,
    pub cookie: String,
    pub csrf: String,
}

impl Admin {
    pub async fn login(service: &GroupService) -> Self {
        let reply = post_form(service.addr, "/login", None, &[("secret", &service.secret)]).await;
        assert_eq!(reply.status, 303, "{}", reply.body);
        let cookie = format!("ringlet_admin={}", reply.cookie("ringlet_admin").unwrap());
        let page = get(service.addr, "/", Some(&cookie)).await.body;
        let at = page.find(r#"name="csrf" value=""#).unwrap() + 19;
        Admin {
            addr: service.addr,
            csrf: page[at..at + 64].to_owned(),
            cookie,
        }
    }

    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> super::http::Reply {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        post_form(self.addr, path, Some(&self.cookie), &all).await
    }

    pub async fn page(&self, path: &str) -> String {
        get(self.addr, path, Some(&self.cookie)).await.body
    }

    /// Waits until `user`'s request shows as pending on the group page; returns its number.
    pub async fn pending_request(&self, group: &str, user: &str, timeout: Duration) -> Option<u64> {
        wait(timeout, || async {
            let page = self.page(&format!("/groups/{group}")).await;
            let row = page.find(&format!(r#"class="request" data-user="{user}""#))?;
            let rest = &page[row..];
            let at = rest.find(&format!("/groups/{group}/requests/"))? + group.len() + 18;
            rest[at..].split('/').next()?.parse().ok()
        })
        .await
    }
}

pub const DOMAIN: &str = "groups.test";

/// A node of the test domain in overlay `friends`, without a certificate, UDP on loopback.
pub fn spec(server: &str, user: &str, friend: &str, extra: &str) -> NodeSpec {
    let mut s = NodeSpec::new(
        &format!("{user}@{DOMAIN}"),
        server,
        "friends",
        &[&format!("{friend}@{DOMAIN}")],
    );
    s.membership = Membership::None;
    s.extra = format!("[udp]\nbind = \"127.0.0.1:0\"\n{extra}");
    s
}

/// `ringlet group request` for `group` at alice's service, as a child process.
pub fn request(config: &std::path::Path, group: &str, wait_s: u64) -> std::process::Child {
    Command::new(ringlet_bin())
        .args([
            "group",
            "request",
            "--admin",
            &format!("alice@{DOMAIN}"),
            "--group",
            group,
        ])
        .args(["--wait", &wait_s.to_string(), "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub async fn finish(child: std::process::Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
