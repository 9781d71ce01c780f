//! A small W3C WebDriver client for Debian's chromedriver driving headless Chromium: the few
//! commands a page test needs (open, find, type, click, read, screenshot). Each test gets its
//! own chromedriver process on a free port and its own empty Chromium profile; both end with
//! the guard.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use ringlet_lab::ChildGuard;
use serde_json::{json, Value};

use super::http::request;
use super::wait;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
    _chromedriver: ChildGuard,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; panics with the reason if either
    /// is missing or does not start.
    pub async fn start() -> Self {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = ringlet_lab::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        let driver = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let chromedriver = ChildGuard::spawn("chromedriver", &mut cmd).unwrap();
        let ready = wait(Duration::from_secs(20), || async {
            let reply = request(driver, "GET", "/status", None, None).await;
            let v: Value = serde_json::from_str(&reply.body).ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        })
        .await;
        assert!(ready.is_some(), "chromedriver did not become ready on {driver}");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1200,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The revoke buttons ask confirm(); the test says yes.
            "unhandledPromptBehavior": "accept",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let v = call(driver, "POST", "/session", Some(caps)).await;
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Browser {
            driver,
            session,
            _profile: profile,
            _chromedriver: chromedriver,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(
            self.driver,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
        .await
    }

    pub async fn open(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The element matching a CSS selector, if there is one.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits up to 10 s for an element.
    pub async fn element(&self, css: &str) -> String {
        match wait(Duration::from_secs(10), || self.find(css)).await {
            Some(el) => el,
            None => panic!(
                "no element '{css}' on {}:\n{}",
                self.url().await,
                self.source().await
            ),
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.element(css).await;
        self.cmd("POST", &format!("/element/{el}/clear"), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let el = self.element(css).await;
        self.cmd("POST", &format!("/element/{el}/click"), Some(json!({})))
            .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let el = self.element(css).await;
        self.string(&format!("/element/{el}/text")).await
    }

    pub async fn source(&self) -> String {
        self.string("/source").await
    }

    pub async fn url(&self) -> String {
        self.string("/url").await
    }

    /// A GET whose value is a string ("" when it is not).
    async fn string(&self, path: &str) -> String {
        self.cmd("GET", path, None)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Saves a PNG screenshot of the window at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: ask chromedriver to end the session (and its Chromium) before the guard
        // kills chromedriver itself.
        let (driver, session) = (self.driver, self.session.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(request(
                driver,
                "DELETE",
                &format!("/session/{session}"),
                None,
                None,
            ));
        })
        .join();
    }
}

/// One WebDriver call; returns its `value` (an error value panics with the driver's message).
async fn call(driver: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| ("application/json", b.to_string()));
    let reply = request(driver, method, path, None, body).await;
    let v: Value = serde_json::from_str(&reply.body).unwrap_or_else(|_| {
        panic!(
            "chromedriver {method} {path}: status {} {}",
            reply.status, reply.body
        )
    });
    let value = v["value"].clone();
    if reply.status != 200 {
        if path.ends_with("/element") && value["error"] == "no such element" {
            return Value::Null;
        }
        panic!("chromedriver {method} {path}: {}", value);
    }
    value
}
