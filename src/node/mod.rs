//! A running ringlet node, and the API to embed one.
//!
//! [`start`] logs in (bounded in time, with a distinct error per cause) and spawns the node's
//! single task ([`runtime`]), which owns the XMPP session and the protocol cores. The returned
//! [`NodeHandle`] sends datagrams to members, receives [`AppEvent`]s, reads [`Status`] and
//! shuts the node down; a [`Controller`] does the same without the event stream (the control
//! socket uses one).

pub mod dht;
mod e2e;
pub mod membership;
mod reach;
pub mod revocation;
mod ring;
mod runtime;
pub mod status;
mod vpn;

use std::time::Duration;

use ringlet_xmpp::connect::{LoginConfig, LoginError, Timeouts};
use ringlet_xmpp::core;
use ringlet_xmpp::session::{Session, SessionConfig};
use ringlet_xmpp::{names, rendezvous, FullJid};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use self::status::Status;
use crate::config::Config;
use crate::identity::{IdentityError, NodeId, NodeKey};
pub use ringlet_udp::SharedSocket;

/// Events for the application embedding the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEvent {
    /// A member of the overlay came online.
    PeerUp { node: NodeId, jid: String },
    /// A member went offline.
    PeerDown { node: NodeId, jid: String },
    /// A datagram from a member, delivered exactly once.
    Datagram { from: NodeId, data: Vec<u8> },
    /// Datagrams towards a peer were given up (`dropped` of them) or refused.
    SendFailed {
        to: String,
        reason: String,
        dropped: usize,
    },
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("cannot bind the UDP socket {addr}: {source}")]
    Udp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
    #[error(transparent)]
    Vpn(#[from] vpn::VpnStartError),
}

/// Why a running node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("XMPP session failed: {0}")]
    Session(LoginError),
    #[error("XMPP session ended unexpectedly")]
    SessionEnded,
}

/// Why a datagram was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("node {0} is not online in this overlay")]
    UnknownPeer(NodeId),
    #[error(transparent)]
    Relay(#[from] core::SendError),
    #[error("the node has stopped")]
    Stopped,
    #[error("no answer from {0} within {1:?}")]
    NoAnswer(NodeId, Duration),
}

/// The answer to an overlay ping.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PingReply {
    pub node_id: String,
    /// `direct` or `xmpp`: the path the ping took.
    pub path: String,
    pub remote: String,
    pub rtt_ms: f64,
}

pub(crate) enum Command {
    Status(oneshot::Sender<Status>),
    Ping {
        to: NodeId,
        reply: oneshot::Sender<Result<PingReply, SendError>>,
    },
    Send {
        to: NodeId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), SendError>>,
    },
    DhtPut {
        key: String,
        value: Vec<u8>,
        /// None: remove the value.
        lease_s: Option<u32>,
        reply: oneshot::Sender<Result<(), dht::DhtError>>,
    },
    DhtGet {
        key: String,
        reply: dht::GetReply,
    },
    Revoke {
        revocation: crate::secure::revocation::Revocation,
        reply: oneshot::Sender<Result<crate::link::Revoked, String>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable access to a running node without its event stream.
#[derive(Clone)]
pub struct Controller {
    commands: mpsc::Sender<Command>,
}

impl Controller {
    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Queues a datagram for the member with NodeId `to` (over the XMPP relay for now).
    pub async fn send(&self, to: NodeId, data: Vec<u8>) -> Result<(), SendError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Send { to, data, reply })
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)?
    }

    /// Pings `to` over its current path (direct UDP or the relay) and waits for the answer.
    pub async fn ping(&self, to: NodeId) -> Result<PingReply, SendError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Ping { to, reply })
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)?
    }

    /// Stores `value` under the name `key` for `lease_s` seconds (kept alive while the node
    /// runs); `None` removes it.
    pub async fn dht_put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease_s: Option<u32>,
    ) -> Result<(), dht::DhtError> {
        let key = key.into();
        self.dht(|reply| Command::DhtPut {
            key,
            value,
            lease_s,
            reply,
        })
        .await
    }

    /// The values stored under the name `key` (empty: none).
    pub async fn dht_get(&self, key: &str) -> Result<Vec<Vec<u8>>, dht::DhtError> {
        let key = key.into();
        self.dht(|reply| Command::DhtGet { key, reply }).await
    }

    /// Sends a DHT command and waits for its answer.
    async fn dht<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, dht::DhtError>>) -> Command,
    ) -> Result<T, dht::DhtError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| dht::DhtError::Stopped)?;
        rx.await.map_err(|_| dht::DhtError::Stopped)?
    }

    /// Publishes a revocation signed by the group's CA: into the CRL, to every member by
    /// broadcast and into the DHT. Refused when another CA signed it.
    pub async fn revoke(
        &self,
        revocation: crate::secure::revocation::Revocation,
    ) -> Result<crate::link::Revoked, String> {
        let (reply, rx) = oneshot::channel();
        let stopped = || "the node has stopped".to_string();
        self.commands
            .send(Command::Revoke { revocation, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Asks the node to leave the overlay and stop; returns when it has.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A running node.
pub struct NodeHandle {
    controller: Controller,
    events: mpsc::Receiver<AppEvent>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
    node_id: NodeId,
    jid: FullJid,
}

impl NodeHandle {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The full JID the first session was bound to.
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    pub async fn status(&self) -> Option<Status> {
        self.controller.status().await
    }

    pub async fn send(&self, to: NodeId, data: Vec<u8>) -> Result<(), SendError> {
        self.controller.send(to, data).await
    }

    /// The next event; `None` once the node has stopped.
    pub async fn recv(&mut self) -> Option<AppEvent> {
        self.events.recv().await
    }

    /// Waits until the node stops on its own (a fatal session error) or is shut down.
    pub async fn wait(&mut self) -> Result<(), NodeError> {
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Err(NodeError::SessionEnded)),
            None => Ok(()),
        }
    }

    /// Leaves the overlay (unavailable presence) and stops the node.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.controller.shutdown().await;
        self.wait().await
    }
}

/// Tuning that is not part of the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Capacity of the application event queue; when it is full, senders are asked to wait.
    pub app_queue: usize,
    /// Seed for the protocol cores' randomness; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// The process's UDP socket for all its overlays ([`bind_shared_udp`]); `None` binds the
    /// config's `udp.bind` for this node alone.
    pub shared_udp: Option<SharedSocket>,
}

/// Binds one UDP socket at `addr` for several overlays in this process: pass it to each
/// node's [`Options::shared_udp`]. Datagrams find their overlay by the path id every frame
/// carries (STUN by the transactions and ufrags the overlays used), so one port serves all.
pub fn bind_shared_udp(addr: std::net::SocketAddr) -> Result<SharedSocket, StartError> {
    reach::bind_shared(addr).map_err(|source| StartError::Udp { addr, source })
}

impl Default for Options {
    fn default() -> Self {
        Self {
            app_queue: 1024,
            seed: None,
            shared_udp: None,
        }
    }
}

/// How `config`'s account logs in with `resource` (the node, the group service and join
/// requests each use their own resource).
pub fn login_config(config: &Config, resource: &str) -> Result<LoginConfig, LoginError> {
    let jid = config
        .jid
        .with_resource_str(resource)
        .map_err(|e| LoginError::Protocol {
            server: String::new(),
            reason: format!("bad resource: {e}"),
        })?;
    Ok(LoginConfig {
        jid,
        password: config.password.clone(),
        server: config.server.clone(),
        tls: config.tls,
        ca_file: config.ca_file.clone(),
        attempt_timeout: config.login_timeout,
        // A silent server is probed after 2 min and given up 20 s later: under the ~2 h that
        // NATs keep an idle TCP mapping (RFC 5382) by far, and each probe is a ping and its
        // answer, which an idle node would otherwise send every 30 s for nothing.
        timeouts: Timeouts {
            read_timeout: Duration::from_secs(120),
            response_timeout: Duration::from_secs(20),
        },
    })
}

/// Loads the node key, logs in and starts the node.
pub async fn start(config: &Config, options: Options) -> Result<NodeHandle, StartError> {
    let (key, created) = NodeKey::load_or_create(&config.key_file)?;
    if created {
        tracing::info!(path = %config.key_file.display(), "created a new node key");
    }
    start_with_key(config, key, options).await
}

/// Starts a node with a given key (tests and embedders that manage keys themselves).
pub async fn start_with_key(
    config: &Config,
    key: NodeKey,
    options: Options,
) -> Result<NodeHandle, StartError> {
    let seed = match options.seed {
        Some(seed) => seed,
        None => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
            u64::from_le_bytes(bytes)
        }
    };
    let node_id = key.node_id();
    let (security, cert, e2e_local) = membership::security(config, &key)?;
    let e2e = crate::secure::e2e::EndToEnd::new(
        e2e_local,
        security.ca,
        node_id.0,
        security.epoch,
        security.epoch_unix,
        seed ^ 0xe2e,
    );
    let ns = names::overlay_ns(&config.overlay);
    let instance = (seed as u32).to_le_bytes();
    let resource = names::resource(&ns, instance);
    let login = login_config(config, &resource)?;
    let mut session_cfg = SessionConfig::new(login, seed);
    session_cfg.first_login_timeout = config.login_timeout;
    let mut path = [0u8; 8];
    hex::decode_to_slice(&ns, &mut path).map_err(|_| IdentityError::BadNodeId(ns.clone()))?;
    let bind = config.udp_enabled.then_some(config.udp_bind);
    let (reach, resolved) = reach::bind(
        bind,
        options.shared_udp.as_ref(),
        node_id.0,
        path,
        config.stun_servers.clone(),
        seed,
    )
    .map_err(|source| StartError::Udp {
        addr: config.udp_bind,
        source,
    })?;
    let mut reach = reach;
    reach.links.set_security(security);
    #[allow(clippy::disallowed_methods)] // the first tick is due at once
    let now = std::time::Instant::now();
    let vpn = match &config.vpn {
        Some(cfg) => Some(vpn::open(cfg, &config.overlay, &node_id.0, now)?),
        None => None,
    };
    tracing::info!(tls = %config.tls, "logging in");
    tracing::debug!(jid = %config.jid, server = %session_cfg.login.server_name(), "login target");
    let session = Session::connect(session_cfg).await?;
    let mut rendezvous = rendezvous::Config::new(
        ns,
        node_id.0,
        key.public_bytes(),
        config.friends.iter().cloned().collect(),
    );
    rendezvous.seek_interval = config.seek_interval;
    rendezvous.cert = Some(cert);
    rendezvous.seek_jitter = config.seek_interval / 2;
    let core = core::Core::new(
        core::Config {
            rendezvous,
            relay: config.relay.clone(),
        },
        seed,
    );
    let (commands, command_rx) = mpsc::channel(64);
    let (event_tx, events) = mpsc::channel(options.app_queue.max(1));
    let jid = session.jid().clone();
    let task = runtime::spawn(runtime::Parts {
        core,
        session,
        reach,
        resolved,
        commands: command_rx,
        app: event_tx,
        node_id,
        overlay: config.overlay.clone(),
        stun_fallback: config.stun_servers.clone(),
        crl_path: Some(config.group_crl.clone()),
        e2e,
        vpn,
    });
    Ok(NodeHandle {
        controller: Controller { commands },
        events,
        task: Some(task),
        node_id,
        jid,
    })
}
