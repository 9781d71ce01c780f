//! Attached applications: a control connection that sent `{"id":N,"cmd":"attach"}` receives
//! the node's application events as lines `{"event":"peer-up",…}` from then on, and may still
//! send requests on the same connection (`send`, `status`, …), whose responses are interleaved
//! with the events. An attached connection has no idle timeout.
//!
//! On attach the members already online are announced as `peer-up` events, so an application
//! sees the same stream as one embedding a node. Events an application is too slow to read
//! (more than [`EVENT_BACKLOG`] behind) are dropped and reported as one `lagged` event.

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::node::AppEvent;

/// Events kept for an attached application that is slow to read them.
pub const EVENT_BACKLOG: usize = 1024;

/// One application event on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum WireEvent {
    PeerUp {
        node: String,
        jid: String,
    },
    PeerDown {
        node: String,
        jid: String,
    },
    /// `data` is standard base64.
    Datagram {
        from: String,
        data: String,
    },
    SendFailed {
        to: String,
        reason: String,
        dropped: usize,
    },
    /// `missed` events were dropped because the application read too slowly.
    Lagged {
        missed: u64,
    },
}

impl From<&AppEvent> for WireEvent {
    fn from(ev: &AppEvent) -> Self {
        match ev {
            AppEvent::PeerUp { node, jid } => WireEvent::PeerUp {
                node: node.to_string(),
                jid: jid.clone(),
            },
            AppEvent::PeerDown { node, jid } => WireEvent::PeerDown {
                node: node.to_string(),
                jid: jid.clone(),
            },
            AppEvent::Datagram { from, data } => WireEvent::Datagram {
                from: from.to_string(),
                data: encode(data),
            },
            AppEvent::SendFailed { to, reason, dropped } => WireEvent::SendFailed {
                to: to.clone(),
                reason: reason.clone(),
                dropped: *dropped,
            },
        }
    }
}

impl WireEvent {
    /// The event as the node emitted it; `None` for `lagged` and for malformed fields.
    pub fn to_app(&self) -> Option<AppEvent> {
        Some(match self {
            WireEvent::PeerUp { node, jid } => AppEvent::PeerUp {
                node: node.parse().ok()?,
                jid: jid.clone(),
            },
            WireEvent::PeerDown { node, jid } => AppEvent::PeerDown {
                node: node.parse().ok()?,
                jid: jid.clone(),
            },
            WireEvent::Datagram { from, data } => AppEvent::Datagram {
                from: from.parse().ok()?,
                data: decode(data)?,
            },
            WireEvent::SendFailed { to, reason, dropped } => AppEvent::SendFailed {
                to: to.clone(),
                reason: reason.clone(),
                dropped: *dropped,
            },
            WireEvent::Lagged { .. } => return None,
        })
    }
}

pub fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// What the daemon hands the control socket besides its [`crate::node::Controller`].
#[derive(Clone, Default)]
pub struct Hooks {
    /// The node's application events, for attached applications.
    pub events: Option<broadcast::Sender<AppEvent>>,
    /// Asks the daemon to stop (`ringlet down`).
    pub stop: Option<tokio::sync::mpsc::Sender<()>>,
}

impl Hooks {
    /// Hooks with a fresh event channel; feed it with [`Hooks::publish`].
    pub fn with_events(stop: tokio::sync::mpsc::Sender<()>) -> Self {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Self {
            events: Some(events),
            stop: Some(stop),
        }
    }

    /// Hands an event to every attached application (none attached: it is dropped).
    pub fn publish(&self, event: AppEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    #[test]
    fn events_cross_the_wire_unchanged_and_malformed_ones_are_refused() {
        let node = NodeId([7; 20]);
        let events = [
            AppEvent::PeerUp {
                node,
                jid: "a@x/r".into(),
            },
            AppEvent::PeerDown {
                node,
                jid: "a@x/r".into(),
            },
            AppEvent::Datagram {
                from: node,
                data: vec![0, 1, 255, b'\n'],
            },
            AppEvent::SendFailed {
                to: "b@x".into(),
                reason: "gone".into(),
                dropped: 3,
            },
        ];
        for ev in events {
            let line = serde_json::to_string(&WireEvent::from(&ev)).unwrap();
            assert!(!line.contains('\n'), "one event per line: {line}");
            let back: WireEvent = serde_json::from_str(&line).unwrap();
            assert_eq!(back.to_app(), Some(ev));
        }
        let bad_node = WireEvent::PeerUp {
            node: "zz".into(),
            jid: "a@x".into(),
        };
        assert_eq!(bad_node.to_app(), None);
        let bad_data = WireEvent::Datagram {
            from: node.to_string(),
            data: "!!".into(),
        };
        assert_eq!(bad_data.to_app(), None);
        assert_eq!(WireEvent::Lagged { missed: 2 }.to_app(), None);
    }
}
