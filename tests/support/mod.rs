#![allow(clippy::disallowed_methods)] // integration tests wait on real time
//! Shared harness for the integration tests: node configs, `ringlet up` processes and status
//! polling against real Prosody servers from `ringlet-lab`.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringlet::config::Config;
use ringlet::node::status::Status;
use ringlet_lab::{ChildGuard, Netns, Prosody, ProsodySpec};

pub const PASSWORD: &str = "correct horse";

/// The group every test node belongs to unless its spec says otherwise.
pub fn test_ca() -> ringlet::secure::cert::Ca {
    ringlet::secure::cert::Ca::from_seed("ringlet-tests", [0x5a; 32]).unwrap()
}

/// Which group certificate a test node gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// One of the test group, for its own key and JID.
    Member,
    /// One signed by another CA (a stranger with a valid-looking certificate).
    OtherGroup,
    /// None at all.
    None,
}

#[allow(dead_code)] // only the NAT lab tests use scenes
pub mod groups;
pub mod http;
pub mod scene;
pub mod webdriver;

#[allow(dead_code)] // only the NAT lab's man-in-the-middle test uses it
pub mod mitm;

/// One node's settings.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub jid: String,
    pub password: String,
    pub server: String,
    pub tls: &'static str,
    pub ca_file: Option<PathBuf>,
    pub overlay: String,
    pub friends: Vec<String>,
    /// Extra TOML appended at the end (whole sections).
    pub extra: String,
    pub login_timeout_s: u64,
    pub membership: Membership,
}

impl NodeSpec {
    pub fn new(jid: &str, server: &str, overlay: &str, friends: &[&str]) -> Self {
        Self {
            jid: jid.into(),
            password: PASSWORD.into(),
            server: server.into(),
            tls: "plain",
            ca_file: None,
            overlay: overlay.into(),
            friends: friends.iter().map(|f| f.to_string()).collect(),
            extra: String::new(),
            login_timeout_s: 10,
            membership: Membership::Member,
        }
    }

    pub fn toml(&self) -> String {
        let friends: Vec<String> = self.friends.iter().map(|f| format!("\"{f}\"")).collect();
        let ca = self
            .ca_file
            .as_ref()
            .map(|p| format!("ca_file = \"{}\"\n", p.display()))
            .unwrap_or_default();
        format!(
            "[xmpp]\njid = \"{}\"\npassword = \"{}\"\nserver = \"{}\"\ntls = \"{}\"\n{ca}login_timeout_s = {}\n\n\
             [overlay]\nname = \"{}\"\nfriends = [{}]\n\n{}",
            self.jid,
            self.password,
            self.server,
            self.tls,
            self.login_timeout_s,
            self.overlay,
            friends.join(", "),
            self.extra
        )
    }

    /// Writes `dir/ringlet.toml` and returns its path.
    /// Also gives the node (its key created if missing) the certificate `membership` says.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("ringlet.toml");
        std::fs::write(&path, self.toml()).unwrap();
        let ca = match self.membership {
            Membership::Member => Some(test_ca()),
            Membership::OtherGroup => {
                Some(ringlet::secure::cert::Ca::from_seed("ringlet-tests", [0x77; 32]).unwrap())
            }
            Membership::None => None,
        };
        if let Some(ca) = ca {
            #[allow(clippy::disallowed_methods)] // test support: certificates expire in wall-clock time
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let user = self.jid.parse().unwrap();
            ringlet::secure::admin::provision(
                &ca,
                &dir.join("node.key"),
                &dir.join("group.cert"),
                &user,
                unix,
            )
            .unwrap();
        }
        path
    }

    pub fn config(&self, dir: &Path) -> Config {
        Config::load(&self.write(dir)).unwrap()
    }
}

/// A Prosody on loopback with `users` registered and, if `shared_roster`, all of them in one
/// roster group. Ports are picked free just before use; if another test grabbed one in between,
/// the launch is retried with new ports.
pub fn prosody(
    domain: &str,
    users: &[&str],
    shared_roster: bool,
    tweak: impl Fn(&mut ProsodySpec),
) -> Prosody {
    let mut last_error = None;
    for _ in 0..3 {
        let mut spec = ProsodySpec::new(domain).unwrap();
        if shared_roster {
            spec.shared_roster = users.iter().map(|u| format!("{u}@{domain}")).collect();
        }
        tweak(&mut spec);
        let mut server = Prosody::new(spec).unwrap();
        for u in users {
            server.register(u, PASSWORD).unwrap();
        }
        match server.launch() {
            Ok(()) => return server,
            Err(e) => last_error = Some(e),
        }
    }
    panic!("prosody for {domain} did not start: {last_error:?}");
}

pub fn ringlet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringlet")
}

/// A `ringlet up` process.
pub struct NodeProcess {
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub stderr: PathBuf,
    child: ChildGuard,
}

impl NodeProcess {
    pub fn spawn(name: &str, spec: &NodeSpec, dir: &Path, netns: Option<&Netns>) -> Self {
        let config = spec.write(dir);
        let stderr = dir.join("stderr.log");
        let mut cmd = match netns {
            Some(ns) => ns.command(ringlet_bin()),
            None => Command::new(ringlet_bin()),
        };
        cmd.args(["up", "--config"])
            .arg(&config)
            .env("RUST_LOG", "ringlet=debug,ringlet_xmpp=debug");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = ChildGuard::spawn(name, &mut cmd).unwrap();
        Self {
            name: name.into(),
            socket: dir.join("ringlet.sock"),
            config,
            stderr,
            child,
        }
    }

    pub async fn status(&self) -> Option<Status> {
        let value = ringlet::control::request(&self.socket, "status").await.ok()?;
        serde_json::from_value(value).ok()
    }

    /// Waits until the node reports `online`.
    pub async fn online(&self, timeout: Duration) -> Status {
        wait(timeout, || async {
            self.status().await.filter(|s| s.state == "online")
        })
        .await
        .unwrap_or_else(|| panic!("{} not online within {timeout:?}:\n{}", self.name, self.log()))
    }

    /// SIGTERM, then the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.child
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
            .and_then(|s| s.code())
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Polls `f` every 25 ms until it yields `Some` or `timeout` passes.
pub async fn wait<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The node ids a status lists as peers, sorted.
pub fn peer_ids(status: &Status) -> Vec<String> {
    let mut ids: Vec<String> = status.peers.iter().map(|p| p.node_id.clone()).collect();
    ids.sort();
    ids
}

pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

#[allow(unused_imports)] // not every test binary sends datagrams
pub use ringlet_lab::data::datagrams;

/// What an exchange measured.
#[derive(Debug)]
pub struct Exchange {
    pub datagrams: usize,
    pub payload_bytes: usize,
    pub elapsed: Duration,
    pub send_failures: Vec<String>,
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = self.payload_bytes as f64 / 1e6;
        let s = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} datagrams, {mb:.1} MB in {s:.2} s = {:.2} MB/s",
            self.datagrams,
            mb / s
        )
    }
}

/// Sends every datagram from `a` to `b` and checks that each arrives exactly once and intact.
/// A send failure `a` reports ends the exchange at once, with its reason.
pub async fn exchange(
    a: &mut ringlet::node::NodeHandle,
    b: &mut ringlet::node::NodeHandle,
    data: Vec<Vec<u8>>,
    timeout: Duration,
) -> Exchange {
    use ringlet::node::{AppEvent, SendError};
    let to = b.node_id();
    let from = a.node_id();
    let controller = a.controller();
    let expected = data.clone();
    let payload_bytes = data.iter().map(Vec::len).sum();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for d in data {
            loop {
                match controller.send(to, d.clone()).await {
                    Ok(()) => break,
                    Err(SendError::Relay(ringlet_xmpp::core::SendError::Relay(
                        ringlet_xmpp::relay::SendError::QueueFull { .. },
                    ))) => tokio::time::sleep(Duration::from_millis(2)).await,
                    Err(e) => panic!("send failed: {e}"),
                }
            }
        }
    });
    let mut received: Vec<Vec<u8>> = Vec::with_capacity(expected.len());
    let mut send_failures = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while received.len() < expected.len() {
        let event = tokio::select! {
            event = tokio::time::timeout_at(deadline, b.recv()) => event,
            Some(AppEvent::SendFailed { to, reason, dropped }) = a.recv() => panic!(
                "the sender gave up after {} of {} datagrams arrived: {to}: {reason} ({dropped} dropped)",
                received.len(),
                expected.len()
            ),
        };
        match event {
            Ok(Some(AppEvent::Datagram { from: f, data })) => {
                assert_eq!(f, from, "datagram from an unexpected node");
                received.push(data);
            }
            Ok(Some(AppEvent::SendFailed { to, reason, .. })) => {
                send_failures.push(format!("{to}: {reason}"))
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("receiver stopped"),
            Err(_) => panic!(
                "only {} of {} datagrams arrived within {timeout:?}; sender {}; receiver {}",
                received.len(),
                expected.len(),
                relay_counters(a).await,
                relay_counters(b).await
            ),
        }
    }
    let elapsed = start.elapsed();
    sender.await.unwrap();
    // Late duplicates would show up now.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), b.recv()).await {
        if let AppEvent::Datagram { data, .. } = ev {
            panic!("a datagram of {} bytes arrived twice", data.len());
        }
    }
    let mut want = expected.clone();
    want.sort();
    received.sort();
    assert!(want == received, "received datagrams differ from the sent ones");
    Exchange {
        datagrams: expected.len(),
        payload_bytes,
        elapsed,
        send_failures,
    }
}

/// A node's relay counters and dropped app events, for a failure message.
async fn relay_counters(node: &ringlet::node::NodeHandle) -> String {
    let Ok(Some(status)) = tokio::time::timeout(Duration::from_secs(5), node.status()).await else {
        return "(no status within 5 s)".into();
    };
    let shown: Vec<String> = status
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("relay_") || *k == "app_dropped")
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    shown.join(", ")
}

/// Starts an embedded node.
pub async fn embedded(spec: &NodeSpec, dir: &Path) -> ringlet::node::NodeHandle {
    let config = spec.config(dir);
    ringlet::node::start(&config, ringlet::node::Options::default())
        .await
        .unwrap()
}

/// Waits until `node` lists a member with NodeId `peer`.
pub async fn sees(node: &ringlet::node::NodeHandle, peer: ringlet::NodeId, timeout: Duration) {
    let want = peer.to_string();
    let found = wait(timeout, || async {
        node.status()
            .await
            .filter(|s| s.peers.iter().any(|p| p.node_id == want))
            .map(|_| ())
    })
    .await;
    assert!(found.is_some(), "{} does not see {want}", node.node_id());
}

/// A bare XMPP client (no ringlet logic) to play strangers, impostors and broken peers.
pub struct RawClient {
    pub session: ringlet_xmpp::session::Session,
    pub jid: ringlet_xmpp::FullJid,
}

impl RawClient {
    pub async fn connect(jid: &str, server: &str) -> Self {
        use ringlet_xmpp::connect::{LoginConfig, Timeouts, TlsMode};
        let full = ringlet_xmpp::FullJid::new(&format!("{jid}/raw")).unwrap();
        let login = LoginConfig {
            jid: full,
            password: PASSWORD.into(),
            server: Some(server.into()),
            tls: TlsMode::Plain,
            ca_file: None,
            attempt_timeout: Duration::from_secs(5),
            timeouts: Timeouts::tight(),
        };
        let session =
            ringlet_xmpp::session::Session::connect(ringlet_xmpp::session::SessionConfig::new(login, 1))
                .await
                .unwrap();
        let jid = session.jid().clone();
        Self { session, jid }
    }

    pub async fn send(&self, stanza: impl Into<ringlet_xmpp::Stanza>) {
        let sender = self.session.sender();
        sender.reserve().await.expect("session open").send(stanza.into());
    }

    /// Waits for the result or error of IQ `id`; `None` if nothing came within `timeout`.
    pub async fn reply(&mut self, id: &str, timeout: Duration) -> Option<ringlet_xmpp::xmpp_parsers::iq::Iq> {
        use ringlet_xmpp::session::SessionEvent;
        use ringlet_xmpp::Stanza;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.session.next_event()).await {
                Ok(Some(SessionEvent::Stanza(stanza))) => {
                    if let Stanza::Iq(iq) = *stanza {
                        if iq.id() == id {
                            return Some(iq);
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// The stanza error condition of an IQ error, or `None` for a result.
pub fn error_condition(iq: &ringlet_xmpp::xmpp_parsers::iq::Iq) -> Option<&'static str> {
    match iq {
        ringlet_xmpp::xmpp_parsers::iq::Iq::Error { error, .. } => {
            Some(ringlet_xmpp::stanzas::condition_name(&error.defined_condition))
        }
        _ => None,
    }
}

/// Starts two embedded nodes (in `dir/a` and `dir/b`) and waits until each sees the other.
pub async fn embedded_pair(
    a: &NodeSpec,
    b: &NodeSpec,
    dir: &Path,
) -> (ringlet::node::NodeHandle, ringlet::node::NodeHandle) {
    let na = embedded(a, &dir.join("a")).await;
    let nb = embedded(b, &dir.join("b")).await;
    sees(&na, nb.node_id(), Duration::from_secs(5)).await;
    sees(&nb, na.node_id(), Duration::from_secs(5)).await;
    (na, nb)
}

/// Asserts that every node lists exactly `want(i)` as peers before `deadline`.
pub async fn expect_peers_by(
    nodes: &[NodeProcess],
    want: impl Fn(usize) -> Vec<String>,
    deadline: Instant,
    context: impl Fn() -> String,
) {
    for (i, n) in nodes.iter().enumerate() {
        let want = want(i);
        let got = wait(deadline.saturating_duration_since(Instant::now()), || async {
            n.status().await.map(|s| peer_ids(&s)).filter(|p| *p == want)
        })
        .await;
        let seen = n.status().await.map(|s| peer_ids(&s));
        assert!(
            got.is_some(),
            "{} lists {seen:?}, not {want:?}, by the deadline:\n{}\n{}",
            n.name,
            n.log(),
            context()
        );
    }
}

/// A finished command's stdout and stderr together: `Ok` when it exited 0, `Err` otherwise.
pub fn outcome(out: std::process::Output) -> Result<String, String> {
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// An example program (`target/<profile>/examples/<name>`) with its stdin to write to and its
/// stdout lines collected as they come; killed by PID when dropped.
pub struct AppProcess {
    pub name: String,
    stderr: PathBuf,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    guard: ChildGuard,
}

impl AppProcess {
    /// Starts example `example` with `args`; stderr goes to `dir/<name>.stderr`.
    pub fn spawn(example: &str, name: &str, args: &[&str], dir: &Path) -> Self {
        // target/<profile>/deps/<test>-<hash> → target/<profile>/examples/<example>
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("examples")
            .join(example);
        assert!(bin.exists(), "{} was not built", bin.display());
        let stderr = dir.join(format!("{name}.stderr"));
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("RUST_LOG", "ringlet=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut guard = ChildGuard::spawn(name, &mut cmd).unwrap();
        let (stdin, stdout) = guard.take_stdio();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout.unwrap()).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            name: name.into(),
            stderr,
            stdin,
            lines,
            guard,
        }
    }

    /// Types a line.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Everything printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line equal to `want` appears; panics with the output after `timeout`.
    pub async fn expect_line(&self, want: &str, timeout: Duration) {
        let seen = wait(timeout, || async {
            self.output().iter().any(|l| l == want).then_some(())
        })
        .await;
        assert!(
            seen.is_some(),
            "{} did not print {want:?} within {timeout:?}; it printed:\n{}\nand logged:\n{}",
            self.name,
            self.output().join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    /// Kills the program with SIGKILL (it cannot say goodbye).
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Closes its stdin and waits for it to exit.
    pub fn finish(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.stdin = None;
        self.guard.wait_timeout(timeout)
    }
}
