//! The sans-IO XMPP half of a node: one overlay on one XMPP session.
//!
//! It routes every incoming stanza to [`Rendezvous`] or [`Relay`], enforces who may talk to
//! us, and asks the server for STUN/TURN services (XEP-0215). The rules:
//! - strangers (neither our account nor a configured friend) are ignored: no answer at all;
//! - relay fragments and address requests from a friend's resource that is not online in our
//!   overlay get `<not-authorized/>` and are never delivered;
//! - malformed relay fragments get `<bad-request/>`; anything else gets
//!   `<service-unavailable/>`, as RFC 6120 asks.
//!
//! Drive loop:
//! 1. [`Core::handle_online`] / [`Core::handle_suspended`] on session changes,
//!    [`Core::handle_stanza`] for every stanza, [`Core::send_datagram`] for the application,
//!    [`Core::handle_timeout`] when [`Core::poll_timeout`] is due;
//! 2. drain [`Core::poll_transmit`] (stanzas to send) and [`Core::poll_event`];
//! 3. sleep until [`Core::poll_timeout`].

mod dispatch;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Instant;

use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use crate::relay::{self, Relay};
use crate::rendezvous::{self, Member, Rendezvous};
use crate::wire::extdisco::{self, Service};
use crate::{stanzas, FullJid, Jid, NodeIdBytes, Stanza};

/// Settings of one overlay session.
#[derive(Debug, Clone)]
pub struct Config {
    pub rendezvous: rendezvous::Config,
    pub relay: relay::Config,
}

/// What the core reports to the node.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    MemberUp {
        jid: FullJid,
        node: NodeIdBytes,
    },
    MemberDown {
        jid: FullJid,
        node: NodeIdBytes,
    },
    AddressesLearned {
        jid: FullJid,
    },
    Datagram {
        from: FullJid,
        node: Option<NodeIdBytes>,
        data: Vec<u8>,
    },
    PeerFailed {
        peer: FullJid,
        reason: relay::FailReason,
        dropped: usize,
    },
    DatagramRefused {
        peer: FullJid,
        condition: String,
    },
    /// XEP-0215 answer (empty when the server offers none or does not support it).
    Services(Vec<Service>),
}

/// Connection state of the session as seen by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Connecting,
    Online,
    /// The stream broke; it may resume without loss or reset.
    Suspended,
}

/// Why a datagram could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0} is not online in this overlay")]
    NotMember(FullJid),
    #[error(transparent)]
    Relay(#[from] relay::SendError),
}

/// Counters of the routing layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub stanzas_in: u64,
    pub stanzas_out: u64,
    pub strangers_ignored: u64,
    pub refused_not_member: u64,
    pub malformed_relay: u64,
    pub malformed_requests: u64,
    pub unsupported_requests: u64,
    pub unmatched_results: u64,
    pub messages_ignored: u64,
    pub resets: u64,
}

#[derive(Debug)]
pub struct Core {
    rendezvous: Rendezvous,
    relay: Relay,
    state: SessionState,
    extdisco_id: Option<String>,
    services: Option<Vec<Service>>,
    app_can_deliver: bool,
    next_id: u64,
    transmits: VecDeque<Stanza>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Core {
    pub fn new(cfg: Config, seed: u64) -> Self {
        Self {
            rendezvous: Rendezvous::new(cfg.rendezvous, seed),
            relay: Relay::new(cfg.relay, seed.wrapping_add(1)),
            state: SessionState::Connecting,
            extdisco_id: None,
            services: None,
            app_can_deliver: true,
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn own_jid(&self) -> Option<&FullJid> {
        self.rendezvous.own_jid()
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.rendezvous.members()
    }

    pub fn member(&self, jid: &FullJid) -> Option<&Member> {
        self.rendezvous.member(jid)
    }

    /// XEP-0215 services, once the server answered.
    pub fn services(&self) -> Option<&[Service]> {
        self.services.as_deref()
    }

    pub fn relay_stats(&self, peer: &FullJid) -> Option<relay::PeerStats> {
        self.relay.peer_stats(peer)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn relay_counters(&self) -> &relay::Counters {
        self.relay.counters()
    }

    pub fn rendezvous_counters(&self) -> &rendezvous::Counters {
        self.rendezvous.counters()
    }

    /// Our endpoints besides the XMPP relay (UDP candidates), announced in the address exchange.
    pub fn set_endpoints(&mut self, endpoints: Vec<crate::wire::addresses::Endpoint>) {
        self.rendezvous.set_endpoints(endpoints);
    }

    pub fn relay_config(&self) -> &relay::Config {
        self.relay.config()
    }

    pub fn set_seeking(&mut self, now: Instant, seeking: bool) {
        self.rendezvous.set_seeking(now, seeking);
    }

    /// False while the application cannot take more datagrams; senders are asked to wait.
    pub fn set_app_can_deliver(&mut self, can: bool) {
        self.app_can_deliver = can;
    }

    /// A new session is bound to `jid` (at start and after every reconnect).
    pub fn handle_online(&mut self, now: Instant, jid: FullJid) {
        self.state = SessionState::Online;
        self.counters.resets += 1;
        self.relay.set_own_jid(&jid);
        let domain: Jid = crate::BareJid::from_parts(None, jid.domain()).into();
        self.rendezvous.handle_online(now, jid);
        // Members vanish with the old session, but their relay streams stay: they usually come
        // back at once, and the relay resends what was in flight.
        self.pump(false);
        self.relay.handle_reset(now);
        let id = self.iq_id("x");
        self.transmits.push_back(
            xmpp_parsers::iq::Iq::Get {
                from: None,
                to: Some(domain),
                id: id.clone(),
                payload: extdisco::request(),
            }
            .into(),
        );
        self.extdisco_id = Some(id);
        self.pump(true);
    }

    /// The connection broke. Without stream management the session is lost with it, so every
    /// member is gone until the new session sees them again; relay streams stay so that data
    /// in flight is resent after the reconnect.
    pub fn handle_suspended(&mut self) {
        self.state = SessionState::Suspended;
        self.rendezvous.session_lost();
        self.pump(false);
    }

    pub fn handle_stanza(&mut self, now: Instant, stanza: Stanza) {
        self.counters.stanzas_in += 1;
        match stanza {
            Stanza::Presence(p) => self.rendezvous.handle_presence(now, p),
            Stanza::Message(_) => self.counters.messages_ignored += 1,
            Stanza::Iq(iq) => self.handle_iq(now, iq),
        }
        self.pump(true);
    }

    /// Queues a datagram for a member resource.
    pub fn send_datagram(&mut self, now: Instant, to: &FullJid, data: &[u8]) -> Result<(), SendError> {
        if !self.rendezvous.is_member(to) {
            return Err(SendError::NotMember(to.clone()));
        }
        self.relay.send(now, to, data)?;
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.rendezvous.handle_timeout(now);
        self.relay.handle_timeout(now);
        self.pump(true);
    }

    /// Leaves the overlay: returns the unavailable presence to send before closing the stream.
    pub fn shutdown(&mut self) -> Stanza {
        self.rendezvous.session_lost();
        self.pump(true);
        self.rendezvous.unavailable().into()
    }

    pub fn poll_transmit(&mut self) -> Option<Stanza> {
        let stanza = self
            .transmits
            .pop_front()
            .or_else(|| self.rendezvous.poll_transmit())
            .or_else(|| self.relay.poll_transmit().map(relay_stanza))?;
        self.counters.stanzas_out += 1;
        Some(stanza)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.rendezvous.poll_timeout(), self.relay.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Moves events of the inner cores out; `peers_gone` tells whether a member that went
    /// down really left (its relay state is dropped) or only vanished with our old session.
    fn pump(&mut self, peers_gone: bool) {
        while let Some(e) = self.rendezvous.poll_event() {
            self.events.push_back(match e {
                rendezvous::Event::MemberUp { jid, node } => Event::MemberUp { jid, node },
                rendezvous::Event::MemberDown { jid, node } => {
                    if peers_gone {
                        self.relay.peer_gone(&jid);
                    }
                    Event::MemberDown { jid, node }
                }
                rendezvous::Event::AddressesLearned { jid } => Event::AddressesLearned { jid },
            });
        }
        while let Some(e) = self.relay.poll_event() {
            self.events.push_back(match e {
                relay::Event::Datagram { from, data } => {
                    let node = self.rendezvous.member(&from).map(|m| m.node);
                    Event::Datagram { from, node, data }
                }
                relay::Event::PeerFailed {
                    peer,
                    reason,
                    dropped,
                } => Event::PeerFailed {
                    peer,
                    reason,
                    dropped,
                },
                relay::Event::DatagramRefused { peer, condition } => {
                    Event::DatagramRefused { peer, condition }
                }
            });
        }
    }

    fn iq_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }
}

/// The stanza for one relay transmission.
fn relay_stanza(t: relay::Transmit) -> Stanza {
    match t {
        relay::Transmit::Data { to, id, frame } => stanzas::set(&to, &id, frame.emit()).into(),
        relay::Transmit::Ack { to, id } => stanzas::empty_result(Some(to.into()), &id).into(),
        relay::Transmit::Reject { to, id, reason } => {
            let (type_, condition) = match reason {
                relay::RejectReason::BadRequest => (ErrorType::Modify, DefinedCondition::BadRequest),
                relay::RejectReason::TooLarge => (ErrorType::Modify, DefinedCondition::NotAcceptable),
                relay::RejectReason::Busy => (ErrorType::Wait, DefinedCondition::ResourceConstraint),
            };
            stanzas::error(to.into(), &id, type_, condition).into()
        }
    }
}
