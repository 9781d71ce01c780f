//! The node's single task: a `select!` over the XMPP session, commands from handles and the
//! control socket, room in the outgoing queue, and the cores' next timeout.
//!
//! Drive loop:
//! 1. wait for one input (session event, command, queue room, or the timeout the core asked
//!    for) and hand it to the core with the current time;
//! 2. move the core's stanzas into the outgoing backlog and send what the queue takes;
//! 3. turn the core's events into [`AppEvent`]s and log lines;
//! 4. repeat until shutdown or a fatal session error, then leave with unavailable presence.
#![allow(clippy::disallowed_methods)] // the runtime is the one place that reads the clock

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ringlet_xmpp::core::{self, Core};
use ringlet_xmpp::session::{Session, SessionEvent, SessionSender};
use ringlet_xmpp::Stanza;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{status, AppEvent, Command, NodeError, SendError};
use crate::identity::NodeId;

pub(super) struct Parts {
    pub core: Core,
    pub session: Session,
    pub commands: mpsc::Receiver<Command>,
    pub app: mpsc::Sender<AppEvent>,
    pub node_id: NodeId,
    pub overlay: String,
    pub stun_fallback: Vec<String>,
}

pub(super) fn spawn(parts: Parts) -> JoinHandle<Result<(), NodeError>> {
    tokio::spawn(run(parts))
}

/// Node state owned by the task.
pub(super) struct Runtime {
    pub core: Core,
    backlog: VecDeque<Stanza>,
    app: mpsc::Sender<AppEvent>,
    pub node_id: NodeId,
    pub overlay: String,
    pub stun_fallback: Vec<String>,
    pub started: Instant,
    pub app_dropped: u64,
    pub reconnect_failures: u64,
}

async fn run(parts: Parts) -> Result<(), NodeError> {
    let Parts {
        core,
        mut session,
        mut commands,
        app,
        node_id,
        overlay,
        stun_fallback,
    } = parts;
    let sender = session.sender();
    let mut rt = Runtime {
        core,
        backlog: VecDeque::new(),
        app,
        node_id,
        overlay,
        stun_fallback,
        started: Instant::now(),
        app_dropped: 0,
        reconnect_failures: 0,
    };
    // `Session::connect` returned with the first session bound: start from it.
    tracing::info!(jid = %session.jid(), "online");
    rt.core.handle_online(Instant::now(), session.jid().clone());
    rt.after_input(&sender);
    let result = loop {
        rt.core.set_app_can_deliver(rt.app.capacity() > 0);
        let deadline = rt.core.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            ev = session.next_event() => match ev {
                None => break Err(NodeError::SessionEnded),
                Some(SessionEvent::Failed(e)) => break Err(NodeError::Session(e)),
                Some(ev) => rt.on_session(ev),
            },
            cmd = commands.recv() => match cmd {
                None => break Ok(None),
                Some(Command::Shutdown(done)) => break Ok(Some(done)),
                Some(cmd) => rt.on_command(cmd),
            },
            permit = sender.reserve(), if !rt.backlog.is_empty() => {
                if let (Some(permit), Some(stanza)) = (permit, rt.backlog.pop_front()) {
                    permit.send(stanza);
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                rt.core.handle_timeout(Instant::now());
            },
        }
        rt.after_input(&sender);
    };
    let last = rt.core.shutdown();
    rt.after_input(&sender);
    if let Err(e) = &result {
        tracing::error!(error = %e, "node stopping");
    }
    session.close(Some(last), Duration::from_secs(2)).await;
    tracing::info!("left the overlay");
    match result {
        Ok(done) => {
            if let Some(done) = done {
                let _ = done.send(());
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl Runtime {
    fn on_session(&mut self, ev: SessionEvent) {
        let now = Instant::now();
        match ev {
            SessionEvent::Online { jid } => {
                tracing::info!(%jid, "online again");
                self.core.handle_online(now, jid);
            }
            SessionEvent::Suspended => {
                tracing::warn!("XMPP connection lost; reconnecting");
                self.core.handle_suspended();
            }
            SessionEvent::Stanza(stanza) => self.core.handle_stanza(now, *stanza),
            SessionEvent::Retrying { error, retry_in } => {
                self.reconnect_failures += 1;
                tracing::warn!(%error, "reconnect failed; retrying in {:.1} s", retry_in.as_secs_f64());
            }
            SessionEvent::Failed(_) => {}
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(status::build(self, Instant::now()));
            }
            Command::Send { to, data, reply } => {
                let _ = reply.send(self.send(to, &data));
            }
            Command::Shutdown(_) => {}
        }
    }

    fn send(&mut self, to: NodeId, data: &[u8]) -> Result<(), SendError> {
        let jid = self
            .core
            .members()
            .filter(|m| m.node == to.0)
            .max_by_key(|m| m.since)
            .map(|m| m.jid.clone())
            .ok_or(SendError::UnknownPeer(to))?;
        self.core.send_datagram(Instant::now(), &jid, data)?;
        Ok(())
    }

    /// Moves the core's output to the session and the application.
    fn after_input(&mut self, sender: &SessionSender) {
        while let Some(stanza) = self.core.poll_transmit() {
            self.backlog.push_back(stanza);
        }
        while let Some(stanza) = self.backlog.pop_front() {
            if let Err(stanza) = sender.try_send(stanza) {
                self.backlog.push_front(stanza);
                break;
            }
        }
        while let Some(ev) = self.core.poll_event() {
            self.on_core_event(ev);
        }
        let seeking = self.core.members().any(|m| m.addresses.is_none());
        self.core.set_seeking(Instant::now(), seeking);
    }

    fn on_core_event(&mut self, ev: core::Event) {
        let app = match ev {
            core::Event::MemberUp { jid, node } => {
                let node = NodeId(node);
                tracing::info!(peer = %node, %jid, "peer online");
                AppEvent::PeerUp {
                    node,
                    jid: jid.to_string(),
                }
            }
            core::Event::MemberDown { jid, node } => {
                let node = NodeId(node);
                tracing::info!(peer = %node, %jid, "peer offline");
                AppEvent::PeerDown {
                    node,
                    jid: jid.to_string(),
                }
            }
            core::Event::AddressesLearned { jid } => {
                tracing::debug!(%jid, "learned addresses");
                return;
            }
            core::Event::Datagram { from, node, data } => {
                let Some(node) = node else {
                    tracing::debug!(%from, "datagram from a resource that just left; dropped");
                    self.app_dropped += 1;
                    return;
                };
                AppEvent::Datagram {
                    from: NodeId(node),
                    data,
                }
            }
            core::Event::PeerFailed {
                peer,
                reason,
                dropped,
            } => {
                tracing::warn!(%peer, ?reason, dropped, "relay to peer failed");
                AppEvent::SendFailed {
                    to: peer.to_string(),
                    reason: format!("{reason:?}"),
                    dropped,
                }
            }
            core::Event::DatagramRefused { peer, condition } => {
                tracing::warn!(%peer, %condition, "peer refused a datagram");
                AppEvent::SendFailed {
                    to: peer.to_string(),
                    reason: condition,
                    dropped: 1,
                }
            }
            core::Event::Services(services) => {
                tracing::info!(count = services.len(), "XEP-0215 external services");
                return;
            }
        };
        if self.app.try_send(app).is_err() {
            self.app_dropped += 1;
        }
    }
}
