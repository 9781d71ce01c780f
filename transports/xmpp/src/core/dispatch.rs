//! Routing of incoming IQs: who is asking, and which core owns the request or result.

use std::time::Instant;

use xmpp_parsers::iq::Iq;
use xmpp_parsers::roster::Roster;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use super::{Core, Event};
use crate::relay::Relay;
use crate::rendezvous::Rendezvous;
use crate::wire::addresses::AddressRequest;
use crate::wire::relay::RelayFrame;
use crate::wire::{extdisco, NS_RELAY, NS_RENDEZVOUS};
use crate::{stanzas, Element, FullJid, Jid};

/// Largest fragment payload accepted: what fits base64-encoded in the 256 KiB stanza limit.
pub const MAX_FRAGMENT_PAYLOAD: usize = 192 * 1024;

const NS_ROSTER: &str = "jabber:iq:roster";
const NS_PING: &str = "urn:xmpp:ping";
/// IQ ids of tokio-xmpp's own liveness pings, whose results are not ours to count.
const LIVENESS_PROBE_PREFIX: &str = "xmpp-rs-stanzastream-liveness-probe";

/// Who sent an IQ, relative to our session.
enum Origin {
    /// Our server or our own bare JID (roster pushes, server pings).
    Server,
    /// A resource of our account or of a friend.
    Trusted(Jid),
    /// Anyone else.
    Stranger,
}

impl Core {
    fn origin(&self, from: Option<&Jid>) -> Origin {
        let Some(from) = from else {
            return Origin::Server;
        };
        let Some(own) = self.rendezvous.own_jid() else {
            return Origin::Stranger;
        };
        let own_bare = own.to_bare();
        if from.as_str() == own_bare.as_str() || from.as_str() == own_bare.domain().as_str() {
            Origin::Server
        } else if self.rendezvous.is_trusted(from) {
            Origin::Trusted(from.clone())
        } else {
            Origin::Stranger
        }
    }

    pub(super) fn handle_iq(&mut self, now: Instant, iq: Iq) {
        match iq {
            Iq::Get {
                from, id, payload, ..
            } => self.handle_request(now, from, id, payload, false),
            Iq::Set {
                from, id, payload, ..
            } => self.handle_request(now, from, id, payload, true),
            Iq::Result {
                from, id, payload, ..
            } => self.handle_result(now, from, &id, payload),
            Iq::Error { from, id, error, .. } => self.handle_error(now, from, &id, &error),
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        from: Option<Jid>,
        id: String,
        payload: Element,
        is_set: bool,
    ) {
        let reply_to = from.clone();
        match self.origin(from.as_ref()) {
            Origin::Stranger => {
                self.counters.strangers_ignored += 1;
            }
            Origin::Server => {
                if is_set && payload.is("query", NS_ROSTER) {
                    match Roster::try_from(payload) {
                        Ok(roster) => self.rendezvous.handle_roster(roster, Some(&id)),
                        Err(_) => self.refuse(reply_to, &id, ErrorType::Modify, DefinedCondition::BadRequest),
                    }
                } else if !is_set && payload.is("ping", NS_PING) {
                    self.transmits
                        .push_back(stanzas::empty_result(reply_to, &id).into());
                } else {
                    self.unsupported(reply_to, &id);
                }
            }
            Origin::Trusted(jid) => {
                let full = jid.try_into_full().ok();
                if is_set && payload.is("d", NS_RELAY) {
                    self.handle_relay_request(now, full, reply_to, &id, &payload);
                } else if !is_set && payload.is("addresses", NS_RENDEZVOUS) {
                    match (full, AddressRequest::parse(&payload)) {
                        (Some(full), Ok(request)) => {
                            self.rendezvous.handle_address_request(&full, &id, request)
                        }
                        _ => {
                            self.counters.malformed_requests += 1;
                            self.refuse(reply_to, &id, ErrorType::Modify, DefinedCondition::BadRequest);
                        }
                    }
                } else if !is_set && payload.is("ping", NS_PING) {
                    self.transmits
                        .push_back(stanzas::empty_result(reply_to, &id).into());
                } else {
                    self.unsupported(reply_to, &id);
                }
            }
        }
    }

    fn handle_relay_request(
        &mut self,
        now: Instant,
        from: Option<FullJid>,
        reply_to: Option<Jid>,
        id: &str,
        payload: &Element,
    ) {
        let Some(from) = from.filter(|f| self.rendezvous.is_member(f)) else {
            self.counters.refused_not_member += 1;
            self.refuse(reply_to, id, ErrorType::Auth, DefinedCondition::NotAuthorized);
            return;
        };
        match RelayFrame::parse(payload, MAX_FRAGMENT_PAYLOAD) {
            Ok(frame) => self
                .relay
                .handle_frame(now, &from, id, frame, self.app_can_deliver),
            Err(err) => {
                tracing::debug!(%from, %err, "malformed relay fragment");
                self.counters.malformed_relay += 1;
                self.relay.reject_malformed(&from, id);
            }
        }
    }

    fn handle_result(&mut self, now: Instant, from: Option<Jid>, id: &str, payload: Option<Element>) {
        let from_server = matches!(self.origin(from.as_ref()), Origin::Server);
        if Relay::owns_id(id) {
            if let Some(Ok(full)) = from.map(Jid::try_into_full) {
                self.relay.handle_ack(now, &full, id);
            }
        } else if self.extdisco_id.as_deref() == Some(id) && from_server {
            self.extdisco_id = None;
            let services = payload.and_then(|p| extdisco::parse(&p).ok()).unwrap_or_default();
            self.services = Some(services.clone());
            self.events.push_back(Event::Services(services));
        } else if Rendezvous::owns_id(id) && (from_server || !Rendezvous::is_roster_id(id)) {
            self.rendezvous.handle_result(now, from.as_ref(), id, payload);
        } else if !id.starts_with(LIVENESS_PROBE_PREFIX) {
            self.counters.unmatched_results += 1;
        }
    }

    fn handle_error(&mut self, now: Instant, from: Option<Jid>, id: &str, error: &StanzaError) {
        let condition = stanzas::condition_name(&error.defined_condition);
        if Relay::owns_id(id) {
            if let Some(Ok(full)) = from.map(Jid::try_into_full) {
                self.relay.handle_error(now, &full, id, condition);
            }
        } else if self.extdisco_id.as_deref() == Some(id) {
            self.extdisco_id = None;
            self.services = Some(Vec::new());
            self.events.push_back(Event::Services(Vec::new()));
        } else if Rendezvous::owns_id(id) {
            self.rendezvous.handle_error(id);
        } else if !id.starts_with(LIVENESS_PROBE_PREFIX) {
            self.counters.unmatched_results += 1;
        }
    }

    fn refuse(&mut self, to: Option<Jid>, id: &str, type_: ErrorType, condition: DefinedCondition) {
        if let Some(to) = to {
            self.transmits
                .push_back(stanzas::error(to, id, type_, condition).into());
        }
    }

    fn unsupported(&mut self, to: Option<Jid>, id: &str) {
        self.counters.unsupported_requests += 1;
        self.refuse(to, id, ErrorType::Cancel, DefinedCondition::ServiceUnavailable);
    }
}
