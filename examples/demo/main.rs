//! The demo behind `scripts/demo.sh` (the README's first command). As root it builds a NAT
//! lab ([`natlab`]): a public Prosody and coturn, five peers behind different NATs with the
//! VPN on, the ring forming, the connectivity matrix and a ping across the VPN. Without root
//! it runs the loopback variant ([`loopback`]: three nodes, no NATs, no VPN) and says so.
//! Everything it starts is stopped and removed on exit, also on Ctrl-C.
#![allow(clippy::disallowed_methods)] // a demo measures real time

#[path = "../common/home.rs"]
mod home;
mod loopback;
mod natlab;

use std::time::Instant;

use home::{member_home, ringlet_bin, start_vpn_member, status};

fn say(start: Instant, msg: impl std::fmt::Display) {
    println!("[{:>6.2} s] {msg}", start.elapsed().as_secs_f64());
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
