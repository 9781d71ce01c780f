//! What the lobby and chat examples share: opening the overlay (attached to the running
//! `ringlet up`, or embedding a node with `--embed`) and reading stdin lines on a thread.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use ringlet::app::Overlay;
use ringlet::config::Config;
use tokio::sync::mpsc;

#[derive(clap::Args, Debug)]
pub struct Connect {
    /// The member's ringlet config (its control socket, or its account and key for --embed)
    #[arg(short, long, default_value = "ringlet.toml")]
    pub config: PathBuf,
    /// Start a node inside this program instead of using the running `ringlet up`
    #[arg(long)]
    pub embed: bool,
}

impl Connect {
    /// Opens the overlay; first sets up logging on stderr (`RUST_LOG`, warnings by default).
    pub async fn open(&self) -> anyhow::Result<Overlay> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        let config = Config::load(&self.config)?;
        let overlay = if self.embed {
            Overlay::embed(&config)
                .await
                .context("starting an embedded node")?
        } else {
            Overlay::attach(&config.control_socket)
                .await
                .context("attaching to the running node (start it with `ringlet up`, or pass --embed)")?
        };
        Ok(overlay)
    }
}

/// Lines typed on stdin; the channel closes at end of input.
pub fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Prints a line on stdout at once (tests and pipes read it as it comes).
pub fn show(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
