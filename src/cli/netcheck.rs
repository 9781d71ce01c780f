//! `ringlet netcheck`: what the network lets this node do — the STUN/TURN services the XMPP
//! server advertises (XEP-0215), our server-reflexive addresses, and the NAT's behaviour
//! (mapping, port allocation, filtering, whether UDP works at all), with what that means for
//! links. It asks the running node; with none running it logs in briefly itself (and goes
//! online in the overlay for those seconds).

#![allow(clippy::disallowed_methods)] // the command line waits on real time

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use ringlet::config::Config;
use ringlet::control::{self, ControlError};
use ringlet::node::{self, Options, Status};

/// How long a brief login waits for the NAT verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(12);

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let status = match control::request(&config.control_socket, "status").await {
        Ok(v) => {
            eprintln!("asking the running node");
            serde_json::from_value(v).context("unexpected status answer")?
        }
        Err(ControlError::NotRunning { .. }) => probe(config).await?,
        Err(e) => return Err(e.into()),
    };
    print!("{}", report(&status));
    Ok(())
}

/// Starts a node, waits for its NAT verdict, and stops it again.
async fn probe(config: &Config) -> anyhow::Result<Status> {
    eprintln!("no node running: logging in briefly to ask the server and its STUN services");
    let handle = node::start(config, Options::default()).await?;
    let deadline = tokio::time::Instant::now() + VERDICT_TIMEOUT;
    let status = loop {
        let status = handle.status().await.context("the node stopped")?;
        if decided(&status) || tokio::time::Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = handle.shutdown().await;
    Ok(status)
}

/// Whether the NAT behaviour is known: UDP blocked, or mapping and filtering observed.
fn decided(status: &Status) -> bool {
    let Some(nat) = &status.nat else { return false };
    nat["udp"] == "blocked" || (!nat["mapping"].is_null() && !nat["filtering"].is_null())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "unknown".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn report(status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if status.services.is_empty() {
        let _ = writeln!(
            out,
            "services   none (the server advertises no STUN service and none is configured)"
        );
    }
    for svc in &status.services {
        let _ = writeln!(out, "services   {}", svc.describe());
    }
    match status.reflexive.is_empty() {
        true => {
            let _ = writeln!(out, "reflexive  none");
        }
        false => {
            let _ = writeln!(out, "reflexive  {}", status.reflexive.join(" "));
        }
    }
    let nat = status.nat.clone().unwrap_or(Value::Null);
    let _ = writeln!(
        out,
        "nat        udp {}, mapping {}, ports {}, filtering {}",
        text(&nat["udp"]),
        text(&nat["mapping"]),
        text(&nat["ports"]),
        text(&nat["filtering"])
    );
    let _ = writeln!(out, "verdict    {}", verdict(&nat));
    out
}

/// What the NAT behaviour means for links.
fn verdict(nat: &Value) -> &'static str {
    match (nat["udp"].as_str(), nat["mapping"].as_str(), nat["filtering"].as_str()) {
        (Some("blocked"), ..) => "UDP is blocked: every path goes through the XMPP relay or a ring peer",
        (_, Some("endpoint-dependent"), _) => {
            "symmetric NAT: direct links with cone-NAT and public peers; ring tunnels to other symmetric peers"
        }
        (_, Some("endpoint-independent"), Some("endpoint-independent")) => {
            "open (public address or full-cone NAT): direct links with everyone reachable"
        }
        (_, Some("endpoint-independent"), Some(_)) => {
            "cone NAT: direct links by hole punching with nearly every peer"
        }
        _ => "not known yet (no STUN answer so far)",
    }
}
