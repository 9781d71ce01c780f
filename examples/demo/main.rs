//! The demo behind `scripts/demo.sh` (the README's first command). As root it builds a NAT
//! lab ([`natlab`]): a public Prosody and coturn, five peers behind different NATs with the
//! VPN on, the ring forming, the connectivity matrix and a ping across the VPN. Without root
//! it runs the loopback variant ([`loopback`]: three nodes, no NATs, no VPN) and says so.
//! Everything it starts is stopped and removed on exit, also on Ctrl-C.
#![allow(clippy::disallowed_methods)] // a demo measures real time

mod loopback;
mod natlab;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use ringlet::node::status::Status;

fn ringlet_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("RINGLET_BIN") {
        return Ok(p.into());
    }
    // target/<profile>/examples/demo → target/<profile>/ringlet
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ringlet"))
        .context("cannot locate target dir")?;
    anyhow::ensure!(
        bin.exists(),
        "{} not found; build it with `cargo build --bin ringlet`",
        bin.display()
    );
    Ok(bin)
}

fn say(start: Instant, msg: impl std::fmt::Display) {
    println!("[{:>6.2} s] {msg}", start.elapsed().as_secs_f64());
}

/// Sets up a member's home `dir/name`: its config file (`config` text) and a node key with a
/// certificate for `jid` signed by the group's CA (what `ringlet group sign` / `join` do when
/// people run them on their own machines). Returns (home, config path).
fn member_home(
    dir: &Path,
    name: &str,
    jid: &str,
    config: &str,
    group_ca: &ringlet::secure::cert::Ca,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    let config_file = home.join("ringlet.toml");
    std::fs::write(&config_file, config)?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    ringlet::secure::admin::provision(
        group_ca,
        &home.join("node.key"),
        &home.join("group.cert"),
        &jid.parse()?,
        unix,
    )?;
    Ok((home, config_file))
}

async fn status(socket: &Path) -> Option<Status> {
    let v = ringlet::control::request(socket, "status").await.ok()?;
    serde_json::from_value(v).ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let start = Instant::now();
    let dir = tempfile::Builder::new().prefix("ringlet-demo-").tempdir()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let force_loopback = std::env::var_os("RINGLET_DEMO_LOOPBACK").is_some();
    let run = async {
        if root && !force_loopback {
            natlab::run(start, dir.path()).await
        } else {
            println!(
                "demo: not root, so no NAT lab (network namespaces need root): running the loopback variant"
            );
            loopback::run(start, dir.path()).await
        }
    };
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; cleaning up");
            Ok(())
        }
    }
}
