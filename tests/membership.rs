//! Group membership at start: a node without a certificate does not start, and says what to
//! do. (A roster member with another group's certificate is refused in the NAT lab:
//! `tests/ringlab.rs`.)
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::process::Command;

use support::*;

#[test]
fn a_node_without_a_certificate_does_not_start_and_says_why() {
    let dir = tempdir("ringlet-membership-");
    let mut spec = NodeSpec::new("alice@one.test", "127.0.0.1:1", "alpha", &[]);
    spec.membership = Membership::None;
    let config = spec.write(dir.path());
    let out = Command::new(ringlet_bin())
        .args(["up", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no usable group certificate"), "{stderr}");
    assert!(stderr.contains("ringlet group join"), "{stderr}");
}
