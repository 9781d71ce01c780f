//! The README's first command, as CI runs it (root): the NAT-lab demo must run start to
//! finish within 2 minutes, exit 0, and print the connectivity matrix and a VPN ping that
//! was answered.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_nat_lab_demo_runs_to_the_end_within_two_minutes() {
    ringlet_lab::require_root("the NAT-lab demo").expect("this test needs root");
    // target/<profile>/deps/demo-<hash> → target/<profile>/examples/demo (cargo test builds it).
    let exe = std::env::current_exe().unwrap();
    let demo = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("demo");
    assert!(demo.exists(), "{} was not built", demo.display());
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["--signal=INT", "--kill-after=10", "120"])
        .arg(&demo)
        .env("RINGLET_BIN", env!("CARGO_BIN_EXE_ringlet"))
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed after {took:?}:\n{stdout}\n{stderr}"
    );
    assert!(took < Duration::from_secs(120), "took {took:?}");
    for want in [
        "connectivity matrix",
        "direct",
        "xmpp",
        "bytes from",
        "demo finished",
    ] {
        assert!(
            stdout.contains(want),
            "no {want:?} in the demo's output:\n{stdout}"
        );
    }
    println!("demo finished in {:.1} s", took.as_secs_f64());
}
