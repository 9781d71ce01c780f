//! Group chat over the overlay: every line typed goes to every online member; lines from
//! others are printed as `<alice@example.org> text`, members coming and going as `* …`.
//!
//! ```text
//! ringlet up -c alice.toml &          # the member's node
//! cargo run --example chat -- -c alice.toml
//! cargo run --example chat -- -c bob.toml --embed   # or a node inside the chat program
//! ```
//! Messages are JSON datagrams `{"chat":1,"text":"…"}`; anything else on the overlay is
//! ignored, so the chat runs next to other applications of the same node.

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use ringlet::app::{Event, MAX_DATAGRAM};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Group chat over a ringlet overlay")]
struct Args {
    #[command(flatten)]
    connect: common::Connect,
}

#[derive(Serialize, Deserialize)]
struct Line {
    chat: u8,
    text: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut overlay = args.connect.open().await?;
    common::show(format!(
        "* you are {} — type to talk, Ctrl-D to leave",
        overlay.node_id()
    ));
    let mut input = common::stdin_lines();
    loop {
        tokio::select! {
            line = input.recv() => {
                let Some(text) = line else { break };
                let msg = serde_json::to_vec(&Line { chat: 1, text })?;
                if msg.len() > MAX_DATAGRAM {
                    common::show("* too long: not sent");
                    continue;
                }
                let sent = overlay.broadcast(&msg).await?;
                if sent == 0 {
                    common::show("* nobody is online");
                }
            }
            ev = overlay.recv() => match ev {
                None => anyhow::bail!("the node stopped"),
                Some(Event::Joined(m)) => common::show(format!("* {} is online", m.account())),
                Some(Event::Left(m)) => common::show(format!("* {} left", m.account())),
                Some(Event::Message { from, data }) => {
                    if let Ok(Line { chat: 1, text }) = serde_json::from_slice(&data) {
                        common::show(format!("<{}> {text}", from.account()));
                    }
                }
                Some(Event::Undelivered { to, reason }) => {
                    common::show(format!("* not delivered to {to}: {reason}"))
                }
            }
        }
    }
    overlay.leave().await;
    Ok(())
}
