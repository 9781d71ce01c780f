//! The application API: join an overlay, see its members come and go, send a datagram to one
//! member or to all, receive. One [`Overlay`] either embeds a node in the process
//! ([`Overlay::embed`]) or attaches to a running `ringlet up` through its control socket
//! ([`Overlay::attach`]); the API is the same, so an application (a game lobby, a chat) can
//! do either.
//!
//! Datagrams are unreliable and unordered as UDP is, at most [`MAX_DATAGRAM`] bytes, and
//! travel over the member's current path (direct, ring tunnel or XMPP relay), encrypted.
//! `broadcast` sends one copy to every online member: meant for groups of friends, not for
//! thousands.

mod daemon;

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::control::ControlError;
use crate::node::{self, AppEvent, NodeHandle, Options, StartError};
use crate::NodeId;

/// The largest application datagram every path carries (the XMPP relay's limit).
pub const MAX_DATAGRAM: usize = 1024;

/// A member of the overlay as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: NodeId,
    /// The member's full JID (the account and this node's resource).
    pub jid: String,
    pub online: bool,
}

impl Member {
    /// The account part of the JID (`alice@example.org`).
    pub fn account(&self) -> &str {
        self.jid.split('/').next().unwrap_or(&self.jid)
    }
}

/// What happened in the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member came online.
    Joined(Member),
    /// A member went offline (left, crashed, lost its server).
    Left(Member),
    /// A datagram from a member.
    Message { from: Member, data: Vec<u8> },
    /// Datagrams to a member were given up.
    Undelivered { to: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("datagram of {0} bytes is larger than {MAX_DATAGRAM}")]
    TooLarge(usize),
    #[error("cannot send to {to}: {reason}")]
    Send { to: NodeId, reason: String },
    #[error("the node has stopped")]
    Stopped,
}

enum Backend {
    Embedded(NodeHandle),
    Attached(daemon::Attached),
}

/// One overlay, joined.
pub struct Overlay {
    backend: Backend,
    node: NodeId,
    jid: String,
    members: BTreeMap<NodeId, Member>,
}

impl Overlay {
    /// Starts a node of our own in this process (its key, certificate and account from
    /// `config`) and joins the overlay with it.
    pub async fn embed(config: &Config) -> Result<Self, AppError> {
        let handle = node::start(config, Options::default()).await?;
        Ok(Self {
            node: handle.node_id(),
            jid: handle.jid().to_string(),
            backend: Backend::Embedded(handle),
            members: BTreeMap::new(),
        })
    }

    /// Uses the node of the `ringlet up` whose control socket is `socket`.
    pub async fn attach(socket: &Path) -> Result<Self, AppError> {
        let (attached, node, jid) = daemon::Attached::connect(socket).await?;
        Ok(Self {
            backend: Backend::Attached(attached),
            node,
            jid,
            members: BTreeMap::new(),
        })
    }

    /// Our own NodeId.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Our own full JID.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// Every member seen so far, online or not, by NodeId.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The members online now.
    pub fn online(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.online)
    }

    /// The member with NodeId `node`, if seen.
    pub fn member(&self, node: &NodeId) -> Option<&Member> {
        self.members.get(node)
    }

    /// Sends `data` to one member.
    pub async fn send(&self, to: NodeId, data: &[u8]) -> Result<(), AppError> {
        if data.len() > MAX_DATAGRAM {
            return Err(AppError::TooLarge(data.len()));
        }
        match &self.backend {
            Backend::Embedded(h) => h.send(to, data.to_vec()).await.map_err(|e| AppError::Send {
                to,
                reason: e.to_string(),
            }),
            Backend::Attached(a) => a.send(to, data).await,
        }
    }

    /// Sends `data` to every online member; returns to how many it was sent. A member that
    /// cannot be sent to (it just left) is skipped, not an error.
    pub async fn broadcast(&self, data: &[u8]) -> Result<usize, AppError> {
        let mut sent = 0;
        let targets: Vec<NodeId> = self.online().map(|m| m.node).collect();
        for to in targets {
            match self.send(to, data).await {
                Ok(()) => sent += 1,
                Err(AppError::Send { to, reason }) => {
                    tracing::debug!(%to, %reason, "broadcast: member skipped")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// The next event; `None` once the node (or the connection to it) has gone.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let ev = match &mut self.backend {
                Backend::Embedded(h) => h.recv().await?,
                Backend::Attached(a) => a.recv().await?,
            };
            if let Some(ev) = self.apply(ev) {
                return Some(ev);
            }
        }
    }

    /// Updates the member table; `None` for events that change nothing (a repeated
    /// announcement).
    fn apply(&mut self, ev: AppEvent) -> Option<Event> {
        match ev {
            AppEvent::PeerUp { node, jid } => {
                let member = Member {
                    node,
                    jid,
                    online: true,
                };
                let before = self.members.insert(node, member.clone());
                (before.as_ref() != Some(&member)).then_some(Event::Joined(member))
            }
            AppEvent::PeerDown { node, jid } => {
                let member = self.members.entry(node).or_insert(Member {
                    node,
                    jid,
                    online: true,
                });
                let was_online = std::mem::replace(&mut member.online, false);
                was_online.then(|| Event::Left(member.clone()))
            }
            AppEvent::Datagram { from, data } => {
                let from = self.members.get(&from).cloned().unwrap_or(Member {
                    node: from,
                    jid: from.to_string(),
                    online: true,
                });
                Some(Event::Message { from, data })
            }
            AppEvent::SendFailed { to, reason, .. } => Some(Event::Undelivered { to, reason }),
        }
    }

    /// Leaves: an embedded node goes offline; an attached application just disconnects (the
    /// daemon stays up).
    pub async fn leave(self) {
        match self.backend {
            Backend::Embedded(h) => {
                let _ = h.shutdown().await;
            }
            Backend::Attached(a) => a.close(),
        }
    }
}
