//! `ringlet up`: runs one overlay, or several in this one process (`-c a.toml -c b.toml`),
//! until SIGINT, SIGTERM, `ringlet down` on any of them, or a node stopping on its own.
//!
//! Several overlays share one UDP socket (bound at their common `udp.bind`), and each keeps
//! what is its own: control socket, pid file beside it, XMPP session, key, VPN device. `down`,
//! `status` and `ping` name an overlay by its config; `down` on any of them stops the process.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use ringlet::config::Config;
use ringlet::control::{self, ControlServer};
use ringlet::node::{self, NodeHandle, Options, SharedSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::daemon::{self, PidFile};

/// One running overlay: its control socket, pid file, and the task that hands its events to
/// attached applications until told to shut the node down.
struct Running {
    overlay: String,
    _server: ControlServer,
    _pid: PidFile,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

pub async fn run(configs: Vec<Config>, pid_file: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let shared = shared_socket(&configs)?;
    let (stop_tx, mut stop) = mpsc::channel(1);
    let (ended_tx, mut ended) = mpsc::channel(configs.len());
    let mut running = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let pid_path = match (&pid_file, i) {
            (Some(path), 0) => path.clone(),
            _ => daemon::pid_file(config),
        };
        let ctx = Start {
            shared: shared.clone(),
            stop: stop_tx.clone(),
            ended: ended_tx.clone(),
        };
        match start(config, i, &pid_path, ctx).await {
            Ok(r) => running.push(r),
            Err(e) => {
                // The overlays already up leave cleanly (their servers see them go) rather
                // than being dropped with the process.
                if !running.is_empty() {
                    tracing::info!(started = running.len(), "stopping the overlays already up");
                }
                stop_all(running).await.ok();
                return Err(e);
            }
        }
    }
    if let Some(shared) = &shared {
        tracing::info!(
            addr = %shared.local_addr()?,
            overlays = running.len(),
            "overlays share one UDP socket"
        );
    }
    let ended_alone = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
        _ = stop.recv() => None,
        i = ended.recv() => i,
    };
    if ended_alone.is_none() {
        tracing::info!("shutting down");
    }
    stop_all(running).await?;
    match ended_alone {
        Some(_) => anyhow::bail!("the node stopped"),
        None => Ok(()),
    }
}

/// What every overlay of the process shares.
struct Start {
    shared: Option<SharedSocket>,
    stop: mpsc::Sender<()>,
    ended: mpsc::Sender<usize>,
}

/// Starts overlay number `index`: control socket, pid file, node, and its event task.
async fn start(
    config: &Config,
    index: usize,
    pid_path: &std::path::Path,
    ctx: Start,
) -> anyhow::Result<Running> {
    let mut server = ControlServer::bind(&config.control_socket).await?;
    // After the control socket: holding it means no other node of this config runs.
    let pid = PidFile::write(pid_path)?;
    let options = Options {
        shared_udp: ctx.shared,
        ..Options::default()
    };
    let handle = node::start(config, options)
        .await
        .with_context(|| format!("overlay '{}'", config.overlay))?;
    tracing::info!(node = %handle.node_id(), overlay = %config.overlay, "node up");
    tracing::debug!(jid = %handle.jid(), "node jid");
    let hooks = control::Hooks::with_events(ctx.stop);
    server.serve(handle.controller(), hooks.clone());
    let (stop_node, stop_rx) = oneshot::channel();
    let task = tokio::spawn(forward(handle, hooks, stop_rx, ctx.ended, index));
    Ok(Running {
        overlay: config.overlay.clone(),
        _server: server,
        _pid: pid,
        stop: stop_node,
        task,
    })
}

/// Shuts every running overlay down and waits for each; the first failure is returned.
async fn stop_all(running: Vec<Running>) -> anyhow::Result<()> {
    let mut failure = None;
    for r in running {
        let _ = r.stop.send(());
        let result = r.task.await.context("the node's task panicked")?;
        if let Err(e) = result {
            failure.get_or_insert(e.context(format!("overlay '{}'", r.overlay)));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Hands the node's events to attached applications until `stop` (then shuts the node down)
/// or until the node stops on its own (then says so on `ended` and returns why).
async fn forward(
    mut handle: NodeHandle,
    hooks: control::Hooks,
    mut stop: oneshot::Receiver<()>,
    ended: mpsc::Sender<usize>,
    index: usize,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = &mut stop => {
                handle.shutdown().await?;
                return Ok(());
            }
            ev = handle.recv() => match ev {
                Some(ev) => hooks.publish(ev),
                None => break,
            },
        }
    }
    let _ = ended.send(index).await;
    handle.wait().await?;
    anyhow::bail!("the node stopped")
}

/// Refuses configs that cannot run in one process: the same overlay twice, a control socket
/// used twice, or UDP overlays that disagree on where their shared socket is bound.
pub fn check_together(configs: &[Config]) -> anyhow::Result<()> {
    let mut overlays = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    for c in configs {
        anyhow::ensure!(
            overlays.insert(c.overlay.as_str()),
            "overlay '{}' is named by two configs ({}); one process runs an overlay once",
            c.overlay,
            c.path.display()
        );
        anyhow::ensure!(
            sockets.insert(&c.control_socket),
            "{} uses control socket {} like another config; each overlay needs its own",
            c.path.display(),
            c.control_socket.display()
        );
    }
    let mut udp = configs.iter().filter(|c| c.udp_enabled);
    if let Some(first) = udp.next() {
        if let Some(other) = udp.find(|c| c.udp_bind != first.udp_bind) {
            anyhow::bail!(
                "overlays in one process share one UDP socket, but {} binds {} and {} binds {}; \
                 give them the same udp.bind",
                first.path.display(),
                first.udp_bind,
                other.path.display(),
                other.udp_bind
            );
        }
    }
    Ok(())
}

/// One UDP socket for the overlays that use UDP, when there are several ([`check_together`]
/// has made sure they agree on where).
fn shared_socket(configs: &[Config]) -> anyhow::Result<Option<SharedSocket>> {
    let udp: Vec<&Config> = configs.iter().filter(|c| c.udp_enabled).collect();
    if udp.len() < 2 {
        return Ok(None);
    }
    Ok(Some(node::bind_shared_udp(udp[0].udp_bind)?))
}
