//! Presence rendezvous and the address exchange (sans-IO).
//!
//! A resource is a member of our overlay when its presence carries an `<overlay/>` tag with our
//! namespace id and it comes from a trusted bare JID: our own account or one of the configured
//! friends. Everyone else is ignored and never answered. Friends are subscribed to and their
//! subscription requests accepted.
//!
//! Drive loop:
//! 1. [`Rendezvous::handle_online`] after every stream reset (a new session: roster request,
//!    presence, subscriptions), then feed [`Rendezvous::handle_presence`], the IQs routed here
//!    by [`crate::core`], and [`Rendezvous::handle_timeout`];
//! 2. drain [`Rendezvous::poll_transmit`] (stanzas) and [`Rendezvous::poll_event`];
//! 3. sleep until [`Rendezvous::poll_timeout`].
//!
//! While seeking, it asks at most `max_requests_per_round` random members for their addresses
//! every `seek_interval` ± `seek_jitter` (servers filter broadcasts, so never all at once), and
//! a member that just appeared is asked at once.

mod members;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Priority, Type as PresenceType};
use xmpp_parsers::roster::{Ask, Roster, Subscription};

pub use self::members::{Addresses, Member};
use crate::stanzas;
use crate::wire::addresses::{AddressReply, AddressRequest, Endpoint};
use crate::wire::overlay::OverlayTag;
use crate::{node_id_of, BareJid, Element, FullJid, Jid, NodeIdBytes, PublicKeyBytes, Stanza};

/// Rendezvous settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The overlay namespace id ([`crate::names::overlay_ns`]).
    pub ns: String,
    pub node: NodeIdBytes,
    pub key: PublicKeyBytes,
    /// Bare JIDs we trust besides our own account.
    pub friends: BTreeSet<BareJid>,
    pub seek_interval: Duration,
    pub seek_jitter: Duration,
    pub max_requests_per_round: usize,
    pub request_timeout: Duration,
    /// Presence priority; negative so chat messages to the bare JID never land here.
    pub priority: i8,
    /// Our group certificate, handed out with our addresses (opaque here).
    pub cert: Option<Vec<u8>>,
}

impl Config {
    pub fn new(ns: String, node: NodeIdBytes, key: PublicKeyBytes, friends: BTreeSet<BareJid>) -> Self {
        Self {
            ns,
            node,
            key,
            friends,
            seek_interval: Duration::from_secs(10),
            seek_jitter: Duration::from_secs(5),
            max_requests_per_round: 10,
            request_timeout: Duration::from_secs(10),
            priority: -1,
            cert: None,
        }
    }
}

/// Membership changes and learned addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    MemberUp { jid: FullJid, node: NodeIdBytes },
    MemberDown { jid: FullJid, node: NodeIdBytes },
    AddressesLearned { jid: FullJid },
}

/// Rendezvous counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub presences_in: u64,
    pub strangers_ignored: u64,
    pub malformed_presence: u64,
    pub address_requests_in: u64,
    pub address_requests_out: u64,
    pub address_requests_refused: u64,
    pub address_replies_rejected: u64,
    pub subscriptions_accepted: u64,
    pub subscriptions_requested: u64,
}

/// Our subscription state with one contact, from the roster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RosterItem {
    /// We receive their presence (subscription `to` or `both`).
    to: bool,
    /// They receive ours (subscription `from` or `both`).
    from: bool,
    /// Our subscription request is pending.
    asked: bool,
}

impl RosterItem {
    fn of(subscription: &Subscription, ask: &Ask) -> Self {
        Self {
            to: matches!(subscription, Subscription::To | Subscription::Both),
            from: matches!(subscription, Subscription::From | Subscription::Both),
            asked: *ask == Ask::Subscribe,
        }
    }
}

const ROSTER_ID_PREFIX: &str = "q";
const ADDRESS_ID_PREFIX: &str = "a";
/// Most outstanding address requests.
const MAX_PENDING: usize = 64;

#[derive(Debug)]
pub struct Rendezvous {
    cfg: Config,
    own: Option<FullJid>,
    roster: BTreeMap<BareJid, RosterItem>,
    members: BTreeMap<FullJid, Member>,
    extra_endpoints: Vec<Endpoint>,
    seeking: bool,
    next_round: Option<Instant>,
    /// IQ id → (member asked, sent at).
    pending: BTreeMap<String, (FullJid, Instant)>,
    next_id: u64,
    rng: StdRng,
    transmits: VecDeque<Stanza>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Rendezvous {
    pub fn new(cfg: Config, seed: u64) -> Self {
        Self {
            cfg,
            own: None,
            roster: BTreeMap::new(),
            members: BTreeMap::new(),
            extra_endpoints: Vec::new(),
            seeking: true,
            next_round: None,
            pending: BTreeMap::new(),
            next_id: 0,
            rng: StdRng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn ns(&self) -> &str {
        &self.cfg.ns
    }

    pub fn own_jid(&self) -> Option<&FullJid> {
        self.own.as_ref()
    }

    /// True for our own account and configured friends.
    pub fn is_trusted(&self, jid: &Jid) -> bool {
        let bare = jid.to_bare();
        self.own.as_ref().is_some_and(|o| o.to_bare() == bare) || self.cfg.friends.contains(&bare)
    }

    pub fn is_member(&self, jid: &FullJid) -> bool {
        self.members.contains_key(jid)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, jid: &FullJid) -> Option<&Member> {
        self.members.get(jid)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether to keep asking members for addresses.
    pub fn set_seeking(&mut self, now: Instant, seeking: bool) {
        if seeking && !self.seeking {
            self.next_round = Some(now);
        }
        self.seeking = seeking;
    }

    /// Endpoints to announce besides our `xmpp://` one (UDP candidates, later issues).
    pub fn set_endpoints(&mut self, endpoints: Vec<Endpoint>) {
        self.extra_endpoints = endpoints;
    }

    /// Our endpoints as announced: the given ones and the XMPP relay, lowest priority.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all = self.extra_endpoints.clone();
        if let Some(own) = &self.own {
            all.push(Endpoint {
                uri: format!("xmpp://{own}"),
                priority: 1,
            });
        }
        all
    }

    /// A new session is bound to `jid`: everyone we knew is gone until they show up again.
    pub fn handle_online(&mut self, now: Instant, jid: FullJid) {
        self.own = Some(jid);
        self.session_lost();
        self.pending.clear();
        self.roster.clear();
        let id = self.iq_id(ROSTER_ID_PREFIX);
        self.transmits.push_back(
            Iq::from_get(
                id,
                Roster {
                    ver: None,
                    items: vec![],
                },
            )
            .into(),
        );
        self.transmits.push_back(self.presence().into());
        self.next_round = Some(now + self.round_interval());
    }

    /// The session is gone (stream reset, or shutting down): forget every member.
    pub fn session_lost(&mut self) {
        for (jid, m) in std::mem::take(&mut self.members) {
            self.events.push_back(Event::MemberDown { jid, node: m.node });
        }
    }

    /// Our available presence with the overlay tag.
    pub fn presence(&self) -> Presence {
        let mut p = Presence::new(PresenceType::None);
        p.priority = Priority(self.cfg.priority);
        p.payloads.push(
            OverlayTag {
                ns: self.cfg.ns.clone(),
                node: self.cfg.node,
                key: Some(self.cfg.key),
                cert: self.cfg.cert.clone(),
            }
            .emit(),
        );
        p
    }

    /// The unavailable presence to send before leaving.
    pub fn unavailable(&self) -> Presence {
        Presence::new(PresenceType::Unavailable)
    }

    pub fn handle_presence(&mut self, now: Instant, presence: Presence) {
        self.counters.presences_in += 1;
        let Some(from) = presence.from.clone() else {
            return;
        };
        if !self.is_trusted(&from) {
            self.counters.strangers_ignored += 1;
            return;
        }
        match presence.type_ {
            PresenceType::Subscribe => self.accept_subscription(from.to_bare()),
            PresenceType::None => match from.try_into_full() {
                Ok(full) if Some(&full) != self.own.as_ref() => self.on_available(now, full, &presence),
                _ => {}
            },
            PresenceType::Unavailable | PresenceType::Error => {
                if let Ok(full) = from.try_into_full() {
                    self.remove_member(&full);
                }
            }
            _ => {}
        }
    }

    fn on_available(&mut self, now: Instant, jid: FullJid, presence: &Presence) {
        let tag = match OverlayTag::find(&presence.payloads) {
            Some(Ok(tag)) if tag.ns == self.cfg.ns => tag,
            Some(Err(_)) => {
                self.counters.malformed_presence += 1;
                self.remove_member(&jid);
                return;
            }
            _ => {
                self.remove_member(&jid);
                return;
            }
        };
        if let Some(m) = self.members.get(&jid) {
            if m.node == tag.node {
                return;
            }
            self.remove_member(&jid);
        }
        let mut member = Member::new(jid.clone(), tag.node, now);
        member.key = tag.key;
        member.cert = tag.cert;
        self.members.insert(jid.clone(), member);
        self.events.push_back(Event::MemberUp {
            jid: jid.clone(),
            node: tag.node,
        });
        if self.seeking {
            self.request_addresses(now, jid);
        }
    }

    fn remove_member(&mut self, jid: &FullJid) {
        if let Some(m) = self.members.remove(jid) {
            self.pending.retain(|_, (asked, _)| asked != jid);
            self.events.push_back(Event::MemberDown {
                jid: jid.clone(),
                node: m.node,
            });
        }
    }

    fn accept_subscription(&mut self, from: BareJid) {
        if Some(&from) == self.own.as_ref().map(|o| o.to_bare()).as_ref() {
            return;
        }
        self.counters.subscriptions_accepted += 1;
        self.transmits
            .push_back(stanzas::subscription(PresenceType::Subscribed, &from).into());
        let item = self.roster.get(&from).copied().unwrap_or_default();
        if !item.to && !item.asked {
            self.subscribe(&from);
        }
    }

    fn subscribe(&mut self, to: &BareJid) {
        self.counters.subscriptions_requested += 1;
        self.roster.entry(to.clone()).or_default().asked = true;
        self.transmits
            .push_back(stanzas::subscription(PresenceType::Subscribe, to).into());
    }

    /// The roster arrived (result of our request, or a push): subscribe to friends we do not
    /// yet see. Returns the result stanza to acknowledge a push, if one is owed.
    pub fn handle_roster(&mut self, roster: Roster, push_id: Option<&str>) {
        for item in roster.items {
            if item.subscription == Subscription::Remove {
                self.roster.remove(&item.jid);
            } else {
                let state = RosterItem::of(&item.subscription, &item.ask);
                self.roster.insert(item.jid, state);
            }
        }
        if let Some(id) = push_id {
            self.transmits.push_back(stanzas::empty_result(None, id).into());
            return;
        }
        let own_bare = self.own.as_ref().map(|o| o.to_bare());
        let friends: Vec<BareJid> = self
            .cfg
            .friends
            .iter()
            .filter(|f| Some(*f) != own_bare.as_ref())
            .cloned()
            .collect();
        for friend in friends {
            let item = self.roster.get(&friend).copied().unwrap_or_default();
            if !item.to && !item.asked {
                self.subscribe(&friend);
            }
            if !item.from {
                // Pre-approve the friend's subscription to us (RFC 6121 §3.4).
                self.transmits
                    .push_back(stanzas::subscription(PresenceType::Subscribed, &friend).into());
            }
        }
    }

    /// A trusted resource asked for our addresses.
    pub fn handle_address_request(&mut self, from: &FullJid, id: &str, request: AddressRequest) {
        self.counters.address_requests_in += 1;
        if request.ns != self.cfg.ns || !self.members.contains_key(from) {
            self.counters.address_requests_refused += 1;
            self.transmits.push_back(stanzas::not_authorized(from, id).into());
            return;
        }
        let reply = AddressReply {
            ns: self.cfg.ns.clone(),
            node: self.cfg.node,
            key: self.cfg.key,
            endpoints: self.endpoints(),
            cert: self.cfg.cert.clone(),
        };
        self.transmits
            .push_back(stanzas::result_with(from, id, reply.emit()).into());
    }

    /// True if `id` names one of our IQs (roster or address request).
    pub fn owns_id(id: &str) -> bool {
        id.starts_with(ROSTER_ID_PREFIX) || id.starts_with(ADDRESS_ID_PREFIX)
    }

    /// True if `id` names our roster request (only the server may answer it).
    pub fn is_roster_id(id: &str) -> bool {
        id.starts_with(ROSTER_ID_PREFIX)
    }

    /// A result for one of our IQs.
    pub fn handle_result(&mut self, now: Instant, from: Option<&Jid>, id: &str, payload: Option<Element>) {
        if id.starts_with(ROSTER_ID_PREFIX) {
            if let Some(roster) = payload.and_then(|p| Roster::try_from(p).ok()) {
                self.handle_roster(roster, None);
            }
            return;
        }
        let Some((asked, sent)) = self.pending.remove(id) else {
            return;
        };
        let valid = from.is_some_and(|f| f.as_str() == asked.as_str());
        let reply = payload.as_ref().and_then(|p| AddressReply::parse(p).ok());
        let member_node = self.members.get(&asked).map(|m| m.node);
        match reply {
            Some(r)
                if valid
                    && r.ns == self.cfg.ns
                    && Some(r.node) == member_node
                    && node_id_of(&r.key) == r.node =>
            {
                if let Some(m) = self.members.get_mut(&asked) {
                    m.addresses = Some(Addresses {
                        key: r.key,
                        endpoints: r.endpoints,
                        learned: now,
                        cert: r.cert,
                    });
                    m.rtt = Some(now.duration_since(sent));
                    self.events.push_back(Event::AddressesLearned { jid: asked });
                }
            }
            _ => self.counters.address_replies_rejected += 1,
        }
    }

    /// An error for one of our IQs: the member will be asked again in a later round.
    pub fn handle_error(&mut self, id: &str) {
        self.pending.remove(id);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.cfg.request_timeout;
        self.pending
            .retain(|_, (_, sent)| now.duration_since(*sent) < timeout);
        if self.own.is_none() || !self.seeking {
            return;
        }
        if self.next_round.is_some_and(|t| t <= now) {
            self.next_round = Some(now + self.round_interval());
            self.request_round(now);
        }
    }

    fn request_round(&mut self, now: Instant) {
        let asked: BTreeSet<FullJid> = self.pending.values().map(|(j, _)| j.clone()).collect();
        let (mut unknown, mut known): (Vec<&Member>, Vec<&Member>) = self
            .members
            .values()
            .filter(|m| !asked.contains(&m.jid))
            .partition(|m| m.addresses.is_none());
        unknown.shuffle(&mut self.rng);
        known.shuffle(&mut self.rng);
        let chosen: Vec<FullJid> = unknown
            .into_iter()
            .chain(known)
            .take(self.cfg.max_requests_per_round)
            .map(|m| m.jid.clone())
            .collect();
        for jid in chosen {
            self.request_addresses(now, jid);
        }
    }

    fn request_addresses(&mut self, now: Instant, jid: FullJid) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        self.counters.address_requests_out += 1;
        let id = self.iq_id(ADDRESS_ID_PREFIX);
        let request = AddressRequest {
            ns: self.cfg.ns.clone(),
        };
        self.transmits
            .push_back(stanzas::get(&jid, &id, request.emit()).into());
        self.pending.insert(id, (jid, now));
    }

    fn round_interval(&mut self) -> Duration {
        let jitter = self.cfg.seek_jitter.as_secs_f64();
        let offset = self.rng.random_range(-jitter..=jitter);
        Duration::from_secs_f64((self.cfg.seek_interval.as_secs_f64() + offset).max(0.1))
    }

    fn iq_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    pub fn poll_transmit(&mut self) -> Option<Stanza> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self
            .pending
            .values()
            .map(|(_, sent)| *sent + self.cfg.request_timeout)
            .min();
        let round = if self.seeking && self.own.is_some() {
            self.next_round
        } else {
            None
        };
        [pending, round].into_iter().flatten().min()
    }
}
