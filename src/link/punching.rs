//! The bridge between links and their punch agents: one [`Attempt`] per link opening a
//! direct path, its agent's output moved out, and its events (connected, moved, lost,
//! failed) turned into path changes and retries.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngExt;
use ringlet_xmpp::NodeIdBytes;

use super::{srflx_of, Event, Links, Path, Transmit};
use crate::reach::candidate::Candidate;
use crate::reach::nat::NatInfo;
use crate::reach::punch::{self, plan_birthday, PunchAgent};

pub(super) struct Attempt {
    pub(super) id: u32,
    pub(super) agent: PunchAgent,
    pub(super) initiator: bool,
    /// What the peer last told us about its NAT, and its server-reflexive address.
    peer_nat: NatInfo,
    peer_srflx: Option<SocketAddr>,
    birthday: bool,
}

impl Attempt {
    /// Boxed: `Links::drain` takes each attempt out of its link and puts it back once per
    /// frame handled, and the agent is big enough for those moves to show in profiles.
    pub(super) fn new(id: u32, agent: PunchAgent, initiator: bool) -> Box<Self> {
        Box::new(Self {
            id,
            agent,
            initiator,
            peer_nat: NatInfo::default(),
            peer_srflx: None,
            birthday: false,
        })
    }

    /// What the peer told us about itself (offer, answer or trickle).
    pub(super) fn learn(
        &mut self,
        now: Instant,
        own_nat: &NatInfo,
        peer_nat: NatInfo,
        candidates: &[Candidate],
    ) {
        self.peer_nat = peer_nat;
        if self.peer_srflx.is_none() {
            self.peer_srflx = srflx_of(candidates);
        }
        self.plan_birthday(now, own_nat);
    }

    /// Starts birthday probing once both sides' NAT info and the peer's public address call
    /// for it. Either may arrive after the offer (NAT detection takes a few round trips), so
    /// this runs again whenever one of them changes; an attempt probes this way at most once.
    pub(super) fn plan_birthday(&mut self, now: Instant, own_nat: &NatInfo) {
        if self.birthday {
            return;
        }
        if let Some(plan) = plan_birthday(own_nat, &self.peer_nat, self.peer_srflx, self.peer_nat.ports) {
            self.birthday = true;
            self.agent.set_birthday(now, plan);
        }
    }
}

impl Links {
    /// Moves every agent's output out and acts on its events.
    pub(super) fn drain(&mut self, now: Instant) {
        let peers: Vec<NodeIdBytes> = self.links.keys().copied().collect();
        for peer in peers {
            let Some(mut attempt) = self.links.get_mut(&peer).and_then(|l| l.attempt.take()) else {
                continue;
            };
            let events = self.drain_agent(peer, &mut attempt.agent);
            let finished = attempt.agent.is_done();
            let checks = attempt.agent.checks_sent;
            if let Some(link) = self.links.get_mut(&peer) {
                if !finished {
                    link.attempt = Some(attempt);
                }
            }
            for ev in events {
                self.on_agent_event(now, peer, ev, checks);
            }
        }
    }

    pub(super) fn drain_agent(&mut self, peer: NodeIdBytes, agent: &mut PunchAgent) -> Vec<punch::Event> {
        while let Some(t) = agent.poll_transmit() {
            self.transmits.push_back(Transmit::Udp {
                socket: t.socket,
                to: t.to,
                data: t.data,
            });
        }
        let mut events = Vec::new();
        while let Some(ev) = agent.poll_event() {
            match ev {
                punch::Event::OpenSockets(count) => self.events.push_back(Event::OpenSockets { peer, count }),
                punch::Event::CloseSockets(ids) => self.events.push_back(Event::CloseSockets(ids)),
                punch::Event::Reflexive(addr) => self.events.push_back(Event::Reflexive(addr)),
                other => events.push(other),
            }
        }
        events
    }

    fn on_agent_event(&mut self, now: Instant, peer: NodeIdBytes, ev: punch::Event, checks: u32) {
        let jitter = Duration::from_millis(self.rng.random_range(0..500));
        let own = self.own;
        let on_demand = self.cfg.on_demand;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let wanted = link.wanted(on_demand, now);
        let new_path = match ev {
            punch::Event::Connected(s) => {
                link.failures = 0;
                self.counters.direct_up += 1;
                self.counters.checks_for_success += u64::from(checks);
                Some(Path::Direct {
                    socket: s.socket,
                    remote: s.remote,
                    rtt: s.rtt,
                })
            }
            punch::Event::Moved(s) => Some(Path::Direct {
                socket: s.socket,
                remote: s.remote,
                rtt: s.rtt,
            }),
            punch::Event::Lost => {
                self.counters.paths_lost += 1;
                // Re-punch at once; the lower NodeId first, so that offers rarely cross.
                let delay = if own < peer {
                    Duration::ZERO
                } else {
                    self.cfg.responder_patience
                };
                link.retry_at = wanted.then_some(now + delay);
                Some(Path::Xmpp)
            }
            punch::Event::Failed => {
                self.events.push_back(Event::AttemptFailed { peer });
                link.failures += 1;
                let backoff =
                    self.cfg.first_retry * 2u32.saturating_pow(link.failures.saturating_sub(1).min(16));
                link.retry_at = wanted.then_some(now + backoff.min(self.cfg.max_retry) + jitter);
                None
            }
            _ => None,
        };
        if let Some(path) = new_path {
            let changed = match (link.path, path) {
                (
                    Path::Direct {
                        socket: a, remote: b, ..
                    },
                    Path::Direct {
                        socket: c, remote: d, ..
                    },
                ) => (a, b) != (c, d),
                (old, new) => old != new,
            };
            if changed {
                link.since = now;
            }
            link.path = path;
            if changed {
                self.events.push_back(Event::PathChanged { peer, path });
            }
        }
    }
}
