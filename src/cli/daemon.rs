//! Running in the background: `ringlet up --daemon` starts a detached `ringlet up` (its own
//! session, output to a log file) and returns once it is online; every `up` writes its PID to
//! a pid file next to the control socket and removes it on exit; `ringlet down` asks the
//! running node to leave and waits until its process has gone.

#![allow(clippy::disallowed_methods)] // the command line waits on real time

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use ringlet::config::Config;
use ringlet::control;

/// How long `down` waits for the node to leave the overlay and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);

/// The default pid file: beside the control socket.
pub fn pid_file(config: &Config) -> PathBuf {
    config.control_socket.with_extension("pid")
}

/// The default log file of a daemon.
pub fn log_file(config: &Config) -> PathBuf {
    config.control_socket.with_extension("log")
}

/// Our PID in a file for as long as the guard lives.
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn write(path: &Path) -> anyhow::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", path.display()))?;
        Ok(Self(path.into()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    state != Some('Z')
}

/// Starts `ringlet up` detached, for one overlay or several in one process, and waits until
/// every one is online (or the daemon has failed); the log is the first config's. `flags`
/// are the logging flags to pass on (`-v`, `-q`).
pub async fn start(configs: &[Config], flags: &[&str]) -> anyhow::Result<()> {
    for config in configs {
        if control::request(&config.control_socket, "status").await.is_ok() {
            anyhow::bail!(
                "a ringlet node is already running with control socket {}",
                config.control_socket.display()
            );
        }
    }
    let config = &configs[0];
    let log_path = log_file(config);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the ringlet executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("up");
    for c in configs {
        cmd.arg("--config").arg(&c.path);
    }
    cmd.args(flags)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    let pid = child.id();
    let deadline = tokio::time::Instant::now() + config.login_timeout + Duration::from_secs(10);
    loop {
        if let Some(exit) = child.try_wait()? {
            anyhow::bail!(
                "the daemon exited ({exit}); its log {} ends with:\n{}",
                log_path.display(),
                tail(&log_path, 5)
            );
        }
        if all_online(configs).await {
            println!("ringlet is up (pid {pid}, log {})", log_path.display());
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            println!(
                "ringlet started (pid {pid}) but is not online yet; see {}",
                log_path.display()
            );
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn all_online(configs: &[Config]) -> bool {
    for c in configs {
        match control::request(&c.control_socket, "status").await {
            Ok(v) if v["state"] == "online" => {}
            _ => return false,
        }
    }
    true
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Asks the running node to stop and waits until its process has exited.
pub async fn stop(config: &Config) -> anyhow::Result<()> {
    let pid = read_pid(&pid_file(config));
    control::request(&config.control_socket, "shutdown").await?;
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    loop {
        let gone = match pid {
            Some(pid) => !alive(pid),
            None => tokio::net::UnixStream::connect(&config.control_socket)
                .await
                .is_err(),
        };
        if gone {
            println!("ringlet stopped");
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the node did not stop within {STOP_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}
