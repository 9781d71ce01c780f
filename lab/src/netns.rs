//! Network namespaces owned by a guard: created with loopback up, deleted on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    name: String,
}

pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run ip: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Netns {
    /// Creates a namespace named `rl-<tag>-<pid>-<n>` with `lo` up (all of 127.0.0.0/8 local).
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        crate::require_root("creating a network namespace")?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("rl-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with exactly this name (a leftover of that name is replaced).
    pub fn create_named(name: &str) -> anyhow::Result<Self> {
        crate::require_root("creating a network namespace")?;
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, same PID).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Moves the calling thread into the namespace: sockets it creates afterwards live there.
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        let file = File::open(format!("/run/netns/{}", self.name))?;
        // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        anyhow::ensure!(
            rc == 0,
            "setns({}) failed: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<T>> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path)?;
        Ok(std::thread::spawn(move || {
            // SAFETY: as in enter_current_thread; the fd stays open until after the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}) failed: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
