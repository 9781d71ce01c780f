//! A lab for ringlet's tests, benchmarks and demo: real Prosody servers with generated
//! configs on free loopback ports, a throwaway CA for TLS, and network namespaces.
//!
//! Everything started here is owned by a guard that kills it by PID (and deletes namespaces)
//! when dropped, also when a test panics.

#![allow(clippy::disallowed_methods)] // test infrastructure: real clocks and processes

pub mod certs;
pub mod data;
pub mod natlab;
pub mod netns;
pub mod process;
pub mod prosody;

use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

pub use certs::TestCa;
pub use natlab::{NatLab, NatType};
pub use netns::Netns;
pub use process::ChildGuard;
pub use prosody::{Prosody, ProsodySpec};

/// Fails with a clear message unless running as root (namespaces and raw network setup).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    anyhow::ensure!(
        euid == 0,
        "{what} needs root (network namespaces); run the tests as root"
    );
    Ok(())
}

/// A TCP port that was free on `ip` a moment ago.
pub fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
