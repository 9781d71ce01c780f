//! The punch agent (sans-IO): one attempt to open a direct UDP path to one peer, and the upkeep
//! of that path once it is open.
//!
//! Both peers run an agent at the same time (the link layer's connect-to-me makes them start
//! together, the simultaneous open). Each agent paces authenticated STUN checks over every pair
//! of (local socket, remote candidate); a check is keyed with the peer's short-term password,
//! so stray or spoofed packets cannot validate a pair. An authenticated request from an unknown
//! address adds it as a peer-reflexive candidate and triggers a check to it at once. The first
//! authenticated answer wins: its pair is usable at once ([`Event::Connected`]). Checks go on
//! for a short settle period, after which the pair with the lowest RTT is kept ([`Event::Moved`]
//! if that is another one) and checks stop. A side that then closes extra sockets nominates
//! the pair it keeps (a check with USE-CANDIDATE), and the peer keeps that pair too: its own
//! lowest-RTT pair may go through a socket just closed.
//!
//! Drive loop:
//! 1. [`PunchAgent::set_remote`] once the peer's credentials and candidates are known (more
//!    candidates may follow); [`PunchAgent::set_birthday`] for a hard NAT pairing;
//! 2. feed [`PunchAgent::handle_request`] / [`PunchAgent::handle_response`] with the STUN
//!    packets routed here, [`PunchAgent::heard`] with any other packet from the selected peer
//!    address, and [`PunchAgent::handle_timeout`] when [`PunchAgent::poll_timeout`] is due;
//! 3. drain [`PunchAgent::poll_transmit`] and [`PunchAgent::poll_event`].
//!
//! Once connected, the agent keeps the NAT mappings alive: after `keepalive` of silence from
//! the peer it sends a check; `keepalive_tries` unanswered checks mean the path is lost. A check
//! from the peer that arrives from a new address (a NAT rebinding) is verified by a check back,
//! then the path moves there. Traffic from the peer over another proved pair makes the agent
//! probe its own; if that goes unanswered, the path moves to the peer's.
//!
//! Hard NATs: when one side maps per destination and the other does not, the hard side opens up
//! to `birthday_sockets` extra sockets and sends one check from each to the peer's address,
//! while the easy side checks as many ports of the hard side's public IP (predicted ports first,
//! for sequential allocators, then random ones). Both are paced and bounded; then they stop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use ringlet_udp::{SocketId, MAIN_SOCKET};
use stun_codec::MessageClass;

use super::candidate::Candidate;
use super::nat::{Filtering, NatInfo, Ports};
use super::stun_msg::{self, StunMessage};

/// Short-term credentials of one side of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

impl Credentials {
    /// Random credentials: 8 and 24 alphanumeric characters (ICE asks for ≥ 4 and ≥ 22).
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut text = |n: usize| -> String {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            (0..n)
                .map(|_| ALPHABET[(rng.next_u32() % ALPHABET.len() as u32) as usize] as char)
                .collect()
        };
        Self {
            ufrag: text(8),
            pwd: text(24),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Gap between two checks of an attempt (triggered checks, answering a peer's check from a
    /// new address, are not paced).
    pub pace: Duration,
    /// Gap between two tries of one pair.
    pub pair_retry: Duration,
    pub pair_tries: u32,
    /// An attempt that has not connected by then fails, unless the peer's checks reached us
    /// lately: see [`LATE_CHECK_GRACE`].
    pub attempt_timeout: Duration,
    /// Wait after the first success for lower-RTT pairs.
    pub settle: Duration,
    /// Silence from the peer before a keepalive check (≤ 25 s keeps NAT mappings alive).
    pub keepalive: Duration,
    pub keepalive_rto: Duration,
    pub keepalive_tries: u32,
    /// Extra sockets (hard side) or guessed ports (easy side) per birthday attempt.
    pub birthday_sockets: usize,
    /// Gap between two checks while birthday probing runs (500 packets/s at 2 ms).
    pub birthday_pace: Duration,
    /// How long the easy side waits before guessing, so that the hard side has begun to open
    /// its mappings. Order matters little beyond that: a guess that reaches a port before its
    /// mapping exists still leaves a mapping on the easy side that the hard side's check from
    /// that port then passes (measured in the lab: 55 % either way, twice as fast this way).
    pub birthday_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pace: Duration::from_millis(5),
            pair_retry: Duration::from_millis(100),
            pair_tries: 40,
            attempt_timeout: Duration::from_secs(6),
            settle: Duration::from_millis(30),
            keepalive: Duration::from_secs(25),
            keepalive_rto: Duration::from_secs(1),
            keepalive_tries: 3,
            birthday_sockets: 256,
            birthday_pace: Duration::from_millis(2),
            birthday_delay: Duration::from_millis(150),
        }
    }
}

/// Birthday-style probing for a pairing of endpoint-dependent and -independent mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Birthday {
    /// We map per destination: open many sockets and check the peer's address from each.
    OpenMany { target: SocketAddr },
    /// The peer maps per destination: check many ports of its public IP, `predicted` first.
    GuessPorts { ip: IpAddr, predicted: Vec<u16> },
}

/// Decides birthday probing for a pair of NATs: only when exactly one side maps per
/// destination (two such sides cannot meet, and two cone NATs need no guessing).
/// `their_srflx` is the peer's server-reflexive address, `their_ports` how its NAT allocates.
pub fn plan_birthday(
    ours: &NatInfo,
    theirs: &NatInfo,
    their_srflx: Option<SocketAddr>,
    their_ports: Option<Ports>,
) -> Option<Birthday> {
    if ours.udp_blocked() || theirs.udp_blocked() || ours.is_hard() == theirs.is_hard() {
        return None;
    }
    // A filter that admits the hard side's unknown port once we sent to its IP (or at all)
    // needs no guessing: peer-reflexive checks get through.
    let easy = if ours.is_hard() { theirs } else { ours };
    if matches!(
        easy.filtering,
        Some(Filtering::EndpointIndependent | Filtering::AddressDependent)
    ) {
        return None;
    }
    // The peer names the address to probe: never a local one.
    let srflx = their_srflx.filter(|a| usable(*a) && !a.ip().is_loopback())?;
    if ours.is_hard() {
        return Some(Birthday::OpenMany { target: srflx });
    }
    let predicted = match their_ports {
        Some(Ports::Sequential { step }) => (1..=64)
            .filter_map(|k| u16::try_from(i32::from(srflx.port()) + step * k).ok())
            .filter(|p| *p >= 1024)
            .collect(),
        _ => Vec::new(),
    };
    Some(Birthday::GuessPorts {
        ip: srflx.ip(),
        predicted,
    })
}

/// Addresses a check may go to: a unicast IP (not unspecified, multicast or broadcast) and a
/// port. Candidates come from the peer; these could never answer a check.
fn usable(addr: SocketAddr) -> bool {
    let unicast = match addr.ip() {
        IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast(),
        IpAddr::V6(ip) => !ip.is_unspecified() && !ip.is_multicast(),
    };
    unicast && addr.port() != 0
}

/// The direct path in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub socket: SocketId,
    pub remote: SocketAddr,
    pub rtt: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A direct path works (the first authenticated answer); it may still move to a lower-RTT
    /// pair when the settle period ends.
    Connected(Selected),
    /// The selected path moved (the peer's NAT rebound) or its RTT was measured anew.
    Moved(Selected),
    /// Keepalives went unanswered: the path is gone.
    Lost,
    /// The attempt ended without a path.
    Failed,
    /// The peer sees us at this address (passive reflection).
    Reflexive(SocketAddr),
    /// Open this many extra sockets and call [`PunchAgent::sockets_opened`].
    OpenSockets(usize),
    /// These extra sockets are no longer needed.
    CloseSockets(Vec<SocketId>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Checking,
    Connected,
    Done,
}

#[derive(Debug)]
struct Pair {
    socket: SocketId,
    remote: SocketAddr,
    tries: u32,
    max_tries: u32,
    next: Instant,
    rtt: Option<Duration>,
    /// The peer sent an authenticated check from this pair's remote to its socket.
    peer_checked: bool,
}

/// Most pairs one attempt keeps (candidates, birthday guesses and peer-reflexive addresses).
const MAX_PAIRS: usize = 512;
/// Most checks one attempt waits for answers to.
const MAX_TXNS: usize = 4096;
/// How long an attempt outlives its timeout after an authenticated check from the peer, so
/// that the check back can be answered. Without it, a peer whose (later) attempt finds a way
/// in just before ours times out would be connected while we had given up and closed the
/// socket it found: a half-open path (seen with birthday probing, whose hits come late).
pub const LATE_CHECK_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Txn {
    pair: usize,
    sent: Instant,
    /// A check of the selected pair (a keepalive or a nomination), not a search for one.
    keepalive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Is this pair open?
    Probe,
    /// Is the selected pair still open?
    Keepalive,
    /// A keepalive that also tells the peer this is the pair we keep.
    Nomination,
}

#[derive(Debug)]
pub struct PunchAgent {
    cfg: Config,
    local: Credentials,
    remote: Option<Credentials>,
    pairs: Vec<Pair>,
    txns: BTreeMap<[u8; 12], Txn>,
    state: State,
    selected: Option<Selected>,
    started: Instant,
    first_success: Option<Instant>,
    /// When the peer's last authenticated check arrived while we were still checking.
    last_peer_check: Option<Instant>,
    next_check: Instant,
    last_heard: Instant,
    keepalive_tries: u32,
    keepalive_sent: Option<Instant>,
    /// Once connected: another pair that answered; the path moves there if the selected pair
    /// stops answering (the peer's NAT rebound, or it settled on a pair through a socket we
    /// closed).
    alternative: Option<Selected>,
    /// When the peer's traffic over another pair last made us probe the selected one.
    probed_for_elsewhere: Option<Instant>,
    /// The pair the peer said it keeps (it closed its other extra sockets): we keep it too.
    nominated: Option<usize>,
    extra_sockets: BTreeSet<SocketId>,
    pending_birthday: Option<Birthday>,
    /// Birthday probing runs: checks are paced by `birthday_pace`.
    birthday: bool,
    reported_reflexive: Option<SocketAddr>,
    rng: StdRng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Checks sent, all kinds (for the probes-per-punch benchmark).
    pub checks_sent: u32,
    /// Packets that failed authentication or did not belong to this attempt.
    pub refused: u32,
}

impl PunchAgent {
    pub fn new(now: Instant, cfg: Config, local: Credentials, seed: u64) -> Self {
        Self {
            cfg,
            local,
            remote: None,
            pairs: Vec::new(),
            txns: BTreeMap::new(),
            state: State::Checking,
            selected: None,
            started: now,
            first_success: None,
            last_peer_check: None,
            next_check: now,
            last_heard: now,
            keepalive_tries: 0,
            keepalive_sent: None,
            alternative: None,
            probed_for_elsewhere: None,
            nominated: None,
            extra_sockets: BTreeSet::new(),
            pending_birthday: None,
            birthday: false,
            reported_reflexive: None,
            rng: StdRng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            checks_sent: 0,
            refused: 0,
        }
    }

    pub fn local(&self) -> &Credentials {
        &self.local
    }

    pub fn remote_ufrag(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.ufrag.as_str())
    }

    /// Changes how long the peer may stay silent before a keepalive check.
    pub fn set_keepalive(&mut self, every: Duration) {
        self.cfg.keepalive = every;
    }

    pub fn selected(&self) -> Option<Selected> {
        self.selected.filter(|_| self.state == State::Connected)
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True if `tid` is one of our checks.
    pub fn owns(&self, tid: &[u8; 12]) -> bool {
        self.txns.contains_key(tid)
    }

    /// The peer's credentials and candidates (more candidates may be added later).
    pub fn set_remote(&mut self, now: Instant, creds: Credentials, candidates: &[Candidate]) {
        if self.remote.as_ref().is_some_and(|r| r.ufrag != creds.ufrag) {
            return;
        }
        self.remote = Some(creds);
        let mut sorted = candidates.to_vec();
        sorted.sort_by_key(|c| std::cmp::Reverse(c.priority));
        for c in sorted {
            self.add_pair(now, MAIN_SOCKET, c.addr, self.cfg.pair_tries);
        }
        self.pump(now);
    }

    /// More of the peer's candidates (trickled after the offer or answer).
    pub fn add_candidates(&mut self, now: Instant, candidates: &[Candidate]) {
        if self.remote.is_none() || self.state != State::Checking {
            return;
        }
        for c in candidates {
            self.add_pair(now, MAIN_SOCKET, c.addr, self.cfg.pair_tries);
        }
        self.pump(now);
    }

    /// Starts birthday-style probing.
    pub fn set_birthday(&mut self, now: Instant, plan: Birthday) {
        if self.state != State::Checking {
            return;
        }
        self.birthday = true;
        match plan {
            Birthday::OpenMany { .. } => {
                self.events
                    .push_back(Event::OpenSockets(self.cfg.birthday_sockets));
                self.pending_birthday = Some(plan);
            }
            Birthday::GuessPorts { ip, predicted } => {
                let mut ports: Vec<u16> = Vec::new();
                let mut seen = BTreeSet::new();
                for p in predicted
                    .into_iter()
                    .chain(std::iter::from_fn(|| Some(self.rng.random_range(1024..=65535))))
                {
                    if ports.len() == self.cfg.birthday_sockets {
                        break;
                    }
                    if seen.insert(p) {
                        ports.push(p);
                    }
                }
                let start = now + self.cfg.birthday_delay;
                for (i, port) in ports.into_iter().enumerate() {
                    let at = start + self.cfg.birthday_pace * i as u32;
                    self.add_pair(at, MAIN_SOCKET, SocketAddr::new(ip, port), 1);
                }
            }
        }
        self.pump(now);
    }

    /// The extra sockets asked for with [`Event::OpenSockets`] are open.
    pub fn sockets_opened(&mut self, now: Instant, ids: Vec<SocketId>) {
        let Some(Birthday::OpenMany { target }) = self.pending_birthday.take() else {
            self.events.push_back(Event::CloseSockets(ids));
            return;
        };
        for (i, id) in ids.into_iter().enumerate() {
            self.extra_sockets.insert(id);
            self.add_pair(now + self.cfg.birthday_pace * i as u32, id, target, 2);
        }
        self.pump(now);
    }

    /// The pair of `socket` and `remote`, added if it is new and the attempt has room.
    fn add_pair(
        &mut self,
        next: Instant,
        socket: SocketId,
        remote: SocketAddr,
        max_tries: u32,
    ) -> Option<usize> {
        if let Some(i) = self.pair_of(socket, remote) {
            return Some(i);
        }
        if self.pairs.len() >= MAX_PAIRS || !usable(remote) {
            return None;
        }
        self.pairs.push(Pair {
            socket,
            remote,
            tries: 0,
            max_tries,
            next,
            rtt: None,
            peer_checked: false,
        });
        Some(self.pairs.len() - 1)
    }

    fn pair_of(&self, socket: SocketId, remote: SocketAddr) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.socket == socket && p.remote == remote)
    }

    fn is_selected(&self, socket: SocketId, remote: SocketAddr) -> bool {
        self.selected
            .is_some_and(|s| s.socket == socket && s.remote == remote)
    }

    /// True if frames from `from` on `socket` come from this attempt's peer: the selected
    /// pair, or one the peer proved with an authenticated check or answer. The peer may use
    /// another pair than we do, and may be connected before we are.
    pub fn accepts(&self, socket: SocketId, from: SocketAddr) -> bool {
        self.state != State::Done
            && (self.is_selected(socket, from)
                || self
                    .pair_of(socket, from)
                    .is_some_and(|i| self.pairs[i].rtt.is_some() || self.pairs[i].peer_checked))
    }

    /// A packet other than a check arrived from `from` on `socket`: if that is the selected
    /// pair, the path is alive and needs no keepalive yet; if it is another proved pair, the
    /// peer sends over that one (see `heard_elsewhere`).
    pub fn heard(&mut self, now: Instant, socket: SocketId, from: SocketAddr) {
        if self.is_selected(socket, from) {
            self.last_heard = now;
            self.keepalive_tries = 0;
            self.keepalive_sent = None;
            self.alternative = None;
        } else {
            self.heard_elsewhere(now, socket, from);
        }
    }

    /// The peer reaches us over a proved pair other than the selected one. Each side keeps the
    /// pair with the lowest RTT it measured, so the two may differ, and the peer's pair may go
    /// through one of its extra sockets that it has closed since: then everything we send is
    /// lost. That pair becomes the alternative and the selected pair is probed at once (at most
    /// once per `keepalive`); if the probe goes unanswered, the path moves (as on a rebinding).
    fn heard_elsewhere(&mut self, now: Instant, socket: SocketId, from: SocketAddr) {
        if self.state != State::Connected {
            return;
        }
        let Some(rtt) = self.pair_of(socket, from).and_then(|i| self.pairs[i].rtt) else {
            return;
        };
        if self.alternative.is_none() {
            self.alternative = Some(Selected {
                socket,
                remote: from,
                rtt,
            });
        }
        let due = self
            .probed_for_elsewhere
            .is_none_or(|t| now >= t + self.cfg.keepalive);
        if let (true, None, Some(selected)) = (due, self.keepalive_sent, self.selected) {
            self.probed_for_elsewhere = Some(now);
            self.send_keepalive(now, selected);
        }
    }

    /// A binding request whose USERNAME names our ufrag.
    pub fn handle_request(&mut self, now: Instant, socket: SocketId, from: SocketAddr, msg: &StunMessage) {
        let sender_ok = match (stun_msg::check_username(msg), &self.remote) {
            (Some((to, _)), _) if to != self.local.ufrag => false,
            (Some((_, sender)), Some(remote)) => sender == remote.ufrag,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !sender_ok || !stun_msg::verify(msg, &self.local.pwd) || self.state == State::Done {
            self.refused += 1;
            return;
        }
        if self.state == State::Checking {
            self.last_peer_check = Some(now);
        }
        let response = stun_msg::check_response(msg.transaction_id(), from, &self.local.pwd);
        self.transmits.push_back(Transmit {
            socket,
            to: from,
            data: response,
        });
        if self.state == State::Connected && self.is_selected(socket, from) {
            self.heard(now, socket, from);
            return;
        }
        // A new address: a peer-reflexive candidate, or the peer's NAT rebound. Check it back.
        // The check goes out at once, ahead of the paced queue (which may hold hundreds of
        // birthday probes): the peer's NAT is open for it right now. Without the peer's
        // credentials yet (its check overtook its answer) it waits, due, for them.
        let Some(i) = self.add_pair(now, socket, from, self.cfg.pair_tries.min(5)) else {
            return;
        };
        let pair = &mut self.pairs[i];
        pair.peer_checked = true;
        if stun_msg::nominates(msg) {
            self.nominated = Some(i);
        }
        if pair.rtt.is_some() {
            if self.nominated == Some(i) {
                self.follow_nomination(now);
            } else {
                self.heard_elsewhere(now, socket, from);
            }
        } else {
            tracing::trace!(%from, "punch: check from a new address");
            if pair.tries >= pair.max_tries {
                pair.max_tries = pair.tries + 3;
            }
            pair.next = now;
            if self.remote.is_some() {
                pair.tries += 1;
                pair.next = now + self.cfg.pair_retry;
                self.send_check(now, i, Check::Probe);
            }
        }
        self.pump(now);
    }

    /// A binding response to one of our checks.
    pub fn handle_response(&mut self, now: Instant, socket: SocketId, from: SocketAddr, msg: &StunMessage) {
        let tid = *msg.transaction_id().as_bytes();
        let Some(txn) = self.txns.get(&tid).copied() else {
            return;
        };
        let valid = msg.class() == MessageClass::SuccessResponse
            && self
                .remote
                .as_ref()
                .is_some_and(|r| stun_msg::verify(msg, &r.pwd))
            && self
                .pairs
                .get(txn.pair)
                .is_some_and(|p| p.socket == socket && p.remote == from);
        if !valid {
            self.refused += 1;
            return;
        }
        self.txns.remove(&tid);
        let rtt = now.duration_since(txn.sent);
        self.pairs[txn.pair].rtt = Some(rtt);
        if let Some(mapped) = stun_msg::mapped_address(msg) {
            if self.reported_reflexive != Some(mapped) && socket == MAIN_SOCKET {
                self.reported_reflexive = Some(mapped);
                self.events.push_back(Event::Reflexive(mapped));
            }
        }
        match self.state {
            State::Checking => {
                tracing::debug!(%from, ?rtt, checks = self.checks_sent, "punch: check answered");
                if self.first_success.is_none() {
                    self.first_success = Some(now);
                    let pair = &self.pairs[txn.pair];
                    let first = Selected {
                        socket: pair.socket,
                        remote: pair.remote,
                        rtt,
                    };
                    self.selected = Some(first);
                    self.events.push_back(Event::Connected(first));
                }
            }
            State::Connected => {
                let pair = &self.pairs[txn.pair];
                let answered = Selected {
                    socket: pair.socket,
                    remote: pair.remote,
                    rtt,
                };
                if self.is_selected(answered.socket, answered.remote) {
                    // Alive; the event carries the RTT measured anew.
                    self.heard(now, answered.socket, answered.remote);
                    self.selected = Some(answered);
                    self.events.push_back(Event::Moved(answered));
                } else if self.nominated == Some(txn.pair) {
                    self.follow_nomination(now);
                } else if !txn.keepalive {
                    // Another pair works. Moving at once would make two sides that prefer
                    // different pairs swap forever; move only if the selected pair stopped
                    // answering, which a keepalive sent now finds out.
                    self.alternative = Some(answered);
                    if let (None, Some(selected)) = (self.keepalive_sent, self.selected) {
                        self.send_keepalive(now, selected);
                    }
                }
            }
            State::Done => {}
        }
        self.pump(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }

    /// Closes the attempt (the link no longer needs it).
    pub fn close(&mut self) {
        if self.state != State::Done {
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.state = State::Done;
        self.txns.clear();
        let extra: Vec<SocketId> = std::mem::take(&mut self.extra_sockets).into_iter().collect();
        if !extra.is_empty() {
            self.events.push_back(Event::CloseSockets(extra));
        }
    }

    fn pump(&mut self, now: Instant) {
        match self.state {
            State::Checking => self.pump_checks(now),
            State::Connected => self.pump_keepalive(now),
            State::Done => {}
        }
    }

    fn pump_checks(&mut self, now: Instant) {
        if self.first_success.is_some_and(|t| now >= t + self.cfg.settle) {
            self.select(now);
            return;
        }
        if now >= self.deadline() {
            self.events.push_back(Event::Failed);
            self.finish();
            return;
        }
        if self.remote.is_none() {
            return;
        }
        while self.next_check <= now {
            let due = self
                .pairs
                .iter()
                .enumerate()
                .filter(|(_, p)| p.rtt.is_none() && p.tries < p.max_tries && p.next <= now);
            let Some(i) = due.min_by_key(|(_, p)| (p.tries, p.next)).map(|(i, _)| i) else {
                break;
            };
            self.send_check(now, i, Check::Probe);
            let pair = &mut self.pairs[i];
            if pair.tries == 0 && pair.max_tries > 2 {
                tracing::trace!(to = %pair.remote, "punch: first check");
            }
            pair.tries += 1;
            pair.next = now + self.cfg.pair_retry;
            let pace = if self.birthday {
                self.cfg.birthday_pace
            } else {
                self.cfg.pace
            };
            self.next_check = self.next_check.max(now.checked_sub(pace).unwrap_or(now)) + pace;
        }
    }

    /// When checking gives up: the attempt's timeout, or later if the peer checked lately.
    fn deadline(&self) -> Instant {
        let timeout = self.started + self.cfg.attempt_timeout;
        self.last_peer_check
            .map_or(timeout, |t| timeout.max(t + LATE_CHECK_GRACE))
    }

    fn send_check(&mut self, now: Instant, pair: usize, check: Check) {
        let Some(remote) = &self.remote else {
            return;
        };
        let tid: [u8; 12] = self.rng.random();
        let request = match check {
            Check::Nomination => stun_msg::nomination_request,
            Check::Probe | Check::Keepalive => stun_msg::check_request,
        };
        let data = request(tid, &remote.ufrag, &self.local.ufrag, &remote.pwd);
        let p = &self.pairs[pair];
        self.transmits.push_back(Transmit {
            socket: p.socket,
            to: p.remote,
            data,
        });
        self.txns.insert(
            tid,
            Txn {
                pair,
                sent: now,
                keepalive: check != Check::Probe,
            },
        );
        self.checks_sent += 1;
        // Bound the transaction table: forget the oldest checks.
        while self.txns.len() > MAX_TXNS {
            let oldest = self.txns.iter().min_by_key(|(_, t)| t.sent).map(|(tid, _)| *tid);
            if let Some(tid) = oldest {
                self.txns.remove(&tid);
            }
        }
    }

    fn select(&mut self, now: Instant) {
        // The pair the peer nominated if it is proved, else the lowest RTT.
        let best = self
            .pairs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let not_nominated = self.nominated != Some(i);
                p.rtt
                    .map(|rtt| (not_nominated, rtt, p.socket != MAIN_SOCKET, p.socket, p.remote))
            })
            .min();
        let Some((_, rtt, _, socket, remote)) = best else {
            return;
        };
        let selected = Selected { socket, remote, rtt };
        let first = self.selected.replace(selected);
        self.state = State::Connected;
        self.last_heard = now;
        self.txns.clear();
        // Checks stop: pairs that did not answer are not tried again (pairs the peer checks
        // from later, after a rebinding, are).
        self.birthday = false;
        for p in self.pairs.iter_mut().filter(|p| p.rtt.is_none()) {
            p.max_tries = p.tries;
        }
        let unused: Vec<SocketId> = self
            .extra_sockets
            .iter()
            .copied()
            .filter(|s| *s != socket)
            .collect();
        self.extra_sockets.retain(|s| *s == socket);
        if first != Some(selected) {
            self.events.push_back(Event::Moved(selected));
        }
        if !unused.is_empty() {
            self.events.push_back(Event::CloseSockets(unused));
            // The peer may have kept a pair through one of them: tell it which one stays.
            self.send_selected_check(now, selected, Check::Nomination);
        }
    }

    fn pump_keepalive(&mut self, now: Instant) {
        let Some(selected) = self.selected else {
            return;
        };
        // Rebinding checks to a new peer address go out like normal checks.
        self.pump_rebinding_checks(now, selected);
        match self.keepalive_sent {
            None if now >= self.last_heard + self.cfg.keepalive => self.send_keepalive(now, selected),
            Some(sent) if now >= sent + self.cfg.keepalive_rto => {
                if let Some(alternative) = self.alternative.take() {
                    // The selected pair went quiet while another answers: move there.
                    self.selected = Some(alternative);
                    self.heard(now, alternative.socket, alternative.remote);
                    self.events.push_back(Event::Moved(alternative));
                } else if self.keepalive_tries >= self.cfg.keepalive_tries {
                    self.events.push_back(Event::Lost);
                    self.finish();
                } else {
                    self.send_keepalive(now, selected);
                }
            }
            _ => {}
        }
    }

    fn pump_rebinding_checks(&mut self, now: Instant, selected: Selected) {
        let due: Vec<usize> = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.rtt.is_none()
                    && p.tries < p.max_tries
                    && p.next <= now
                    && p.socket == selected.socket
                    && p.remote != selected.remote
            })
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.send_check(now, i, Check::Probe);
            let pair = &mut self.pairs[i];
            pair.tries += 1;
            pair.next = now + self.cfg.pair_retry;
        }
    }

    fn send_keepalive(&mut self, now: Instant, selected: Selected) {
        self.send_selected_check(now, selected, Check::Keepalive);
    }

    fn send_selected_check(&mut self, now: Instant, selected: Selected, check: Check) {
        let Some(i) = self.pair_of(selected.socket, selected.remote) else {
            return;
        };
        self.keepalive_tries += 1;
        self.keepalive_sent = Some(now);
        self.send_check(now, i, check);
    }

    /// Moves to the pair the peer nominated, once our check proved it.
    fn follow_nomination(&mut self, now: Instant) {
        let Some(pair) = self.nominated.map(|i| &self.pairs[i]) else {
            return;
        };
        let (Some(rtt), State::Connected) = (pair.rtt, self.state) else {
            return;
        };
        let (socket, remote) = (pair.socket, pair.remote);
        if self.is_selected(socket, remote) {
            return;
        }
        let nominated = Selected { socket, remote, rtt };
        self.selected = Some(nominated);
        self.heard(now, socket, remote);
        self.events.push_back(Event::Moved(nominated));
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Done => None,
            State::Checking => {
                let settle = self.first_success.map(|t| t + self.cfg.settle);
                let deadline = Some(self.deadline());
                let check = if self.remote.is_some() {
                    self.pairs
                        .iter()
                        .filter(|p| p.rtt.is_none() && p.tries < p.max_tries)
                        .map(|p| p.next.max(self.next_check))
                        .min()
                } else {
                    None
                };
                [settle, deadline, check].into_iter().flatten().min()
            }
            State::Connected => {
                let keepalive = match self.keepalive_sent {
                    None => self.last_heard + self.cfg.keepalive,
                    Some(sent) => sent + self.cfg.keepalive_rto,
                };
                let selected = self.selected;
                let rebinding = self
                    .pairs
                    .iter()
                    .filter(|p| {
                        p.rtt.is_none()
                            && p.tries < p.max_tries
                            && selected.is_some_and(|s| p.socket == s.socket && p.remote != s.remote)
                    })
                    .map(|p| p.next)
                    .min();
                [Some(keepalive), rebinding].into_iter().flatten().min()
            }
        }
    }
}
