//! The node's single task: a `select!` over the XMPP session, the UDP sockets, commands from
//! handles and the control socket, STUN server lookups, room in the outgoing stanza queue, and
//! the cores' next timeout.
//!
//! Drive loop:
//! 1. wait for one input and hand it to its core with the current time;
//! 2. drain the cores until nothing moves: stanzas go to the session backlog, UDP datagrams to
//!    the sockets, link frames for the relay to the XMPP core, events to the other cores, the
//!    application and the log;
//! 3. repeat until shutdown or a fatal session error, then leave with unavailable presence.
#![allow(clippy::disallowed_methods)] // the runtime is the one place that reads the clock

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ringlet_xmpp::core::{self, Core};
use ringlet_xmpp::session::{Session, SessionEvent, SessionSender};
use ringlet_xmpp::{FullJid, NodeIdBytes, Stanza};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::reach::{self, Reach};
use super::{status, AppEvent, Command, NodeError, PingReply, SendError};
use crate::identity::NodeId;
use crate::link::{self, Path};
use crate::reach::nat::NatInfo;
use crate::reach::stun_client;

pub(super) struct Parts {
    pub core: Core,
    pub session: Session,
    pub reach: Reach,
    pub resolved: reach::Resolved,
    pub commands: mpsc::Receiver<Command>,
    pub app: mpsc::Sender<AppEvent>,
    pub node_id: NodeId,
    pub overlay: String,
    pub stun_fallback: Vec<String>,
    /// Where the CRL is kept (written when a revocation arrives).
    pub crl_path: Option<std::path::PathBuf>,
    pub e2e: crate::secure::e2e::EndToEnd,
    pub vpn: Option<super::vpn::VpnState>,
}

pub(super) fn spawn(parts: Parts) -> JoinHandle<Result<(), NodeError>> {
    tokio::spawn(run(parts))
}

/// Node state owned by the task.
pub(super) struct Runtime {
    pub core: Core,
    pub reach: Reach,
    backlog: VecDeque<Stanza>,
    app: mpsc::Sender<AppEvent>,
    pub node_id: NodeId,
    pub overlay: String,
    pub stun_fallback: Vec<String>,
    pub started: Instant,
    pub app_dropped: u64,
    pub reconnect_failures: u64,
    pub relay_send_failures: u64,
    /// Application datagrams handed to a path: (direct UDP, XMPP relay).
    pub app_sent: (u64, u64),
    /// Application and VPN payload bytes per online member: (received, sent). Touched twice
    /// per VPN packet, so a fast hash (NodeIds are public key hashes, not chosen per lookup).
    pub peer_bytes: HashMap<NodeIdBytes, (u64, u64), foldhash::fast::RandomState>,
    pings: BTreeMap<u64, PendingPing>,
    next_ping: u64,
    /// The NAT behaviour last logged at INFO (it is logged again only when it changes).
    logged_nat: Option<NatInfo>,
    /// Whether both ring neighbours were last seen listing us (logged when it changes).
    logged_ring_agreed: bool,
    pub ring: crate::overlay::Ring,
    /// Ring messages for a peer whose direct path had just gone.
    pub ring_no_path: u64,
    /// Ring messages over the XMPP relay (leaf links): (out, in).
    pub ring_relayed: (u64, u64),
    /// Application datagrams sent through ring tunnels.
    pub app_tunnelled: u64,
    /// When the ring last looked at the online members.
    pub ring_rendezvous_at: Instant,
    /// DHT gets waiting for the ring's answer, by lookup id.
    pub dht_gets: BTreeMap<u32, super::dht::GetReply>,
    pub crl_path: Option<std::path::PathBuf>,
    pub revocation_lookups: super::revocation::Lookups,
    /// Revocations (broadcast or from the DHT) that did not parse.
    pub revocations_malformed: u64,
    /// End-to-end sessions with members reached through the ring.
    pub e2e: crate::secure::e2e::EndToEnd,
    /// The VPN, when the config enables it.
    pub vpn: Option<super::vpn::VpnState>,
    /// App datagrams whose channel byte is unknown (or missing).
    pub app_malformed: u64,
}

/// An overlay ping waiting for its pong.
struct PendingPing {
    peer: NodeIdBytes,
    sent: Instant,
    path: String,
    remote: String,
    reply: oneshot::Sender<Result<PingReply, SendError>>,
}

/// How long a ping waits for its pong.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

async fn run(parts: Parts) -> Result<(), NodeError> {
    let Parts {
        core,
        mut session,
        reach,
        mut resolved,
        mut commands,
        app,
        node_id,
        overlay,
        stun_fallback,
        crl_path,
        e2e,
        vpn,
    } = parts;
    let sender = session.sender();
    let mut rt = Runtime {
        core,
        reach,
        backlog: VecDeque::new(),
        app,
        node_id,
        overlay,
        stun_fallback,
        started: Instant::now(),
        app_dropped: 0,
        reconnect_failures: 0,
        relay_send_failures: 0,
        app_sent: (0, 0),
        logged_nat: None,
        logged_ring_agreed: false,
        peer_bytes: HashMap::default(),
        pings: BTreeMap::new(),
        next_ping: 1,
        ring: super::ring::new_ring(Instant::now(), node_id),
        ring_no_path: 0,
        ring_relayed: (0, 0),
        app_tunnelled: 0,
        ring_rendezvous_at: Instant::now(),
        dht_gets: BTreeMap::new(),
        crl_path,
        revocation_lookups: Default::default(),
        revocations_malformed: 0,
        e2e,
        vpn,
        app_malformed: 0,
    };
    let mut tun_buf = vec![0u8; ringlet_tun::FRAME_MAX];
    // `Session::connect` returned with the first session bound: start from it.
    let now = Instant::now();
    tracing::info!("online");
    tracing::debug!(jid = %session.jid(), "bound");
    let candidates = rt.reach.start();
    rt.reach
        .links
        .set_local(now, candidates.clone(), rt.reach.stun.nat());
    rt.core.set_endpoints(Reach::endpoints(&candidates));
    rt.core.handle_online(now, session.jid().clone());
    rt.after_input(&sender);
    let result = loop {
        rt.core.set_app_can_deliver(rt.app.capacity() > 0);
        let ping_deadline = rt.pings.values().map(|p| p.sent + PING_TIMEOUT).min();
        let deadline = [
            rt.core.poll_timeout(),
            rt.reach.poll_timeout(),
            rt.ring.poll_timeout(),
            rt.e2e.poll_timeout(),
            Some(rt.ring_rendezvous_due()),
            ping_deadline,
            rt.vpn_due(),
            rt.vpn.as_ref().and_then(|v| v.core.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        let deadline = deadline.map(tokio::time::Instant::from_std);
        tokio::select! {
            ev = session.next_event() => match ev {
                None => break Err(NodeError::SessionEnded),
                Some(SessionEvent::Failed(e)) => break Err(NodeError::Session(e)),
                Some(ev) => rt.on_session(ev),
            },
            batch = rt.reach.recv() => match batch {
                Ok(batch) => rt.reach.on_datagrams(Instant::now(), batch),
                Err(e) => {
                    rt.reach.counters.recv_errors += 1;
                    tracing::warn!(error = %e, "UDP receive failed");
                }
            },
            cmd = commands.recv() => match cmd {
                None => break Ok(None),
                Some(Command::Shutdown(done)) => break Ok(Some(done)),
                Some(cmd) => rt.on_command(cmd),
            },
            read = read_tun(&rt.vpn, &mut tun_buf) => match read {
                Ok(n) => rt.on_tun_burst(Instant::now(), &mut tun_buf, n),
                Err(e) => rt.vpn_read_failed(&e),
            },
            lookup = resolved.recv() => {
                if let Some((source, addrs)) = lookup {
                    rt.reach.on_resolved(Instant::now(), source, addrs);
                }
            },
            permit = sender.reserve(), if !rt.backlog.is_empty() => {
                if let (Some(permit), Some(stanza)) = (permit, rt.backlog.pop_front()) {
                    permit.send(stanza);
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                let now = Instant::now();
                rt.core.handle_timeout(now);
                rt.reach.handle_timeout(now);
                rt.ring.handle_timeout(now);
                rt.e2e.handle_timeout(now);
                rt.drain_e2e(now);
                if now >= rt.ring_rendezvous_due() {
                    rt.ring_members(now, None);
                }
                rt.expire_pings(now);
                if rt.vpn_due().is_some_and(|due| now >= due) {
                    rt.vpn_tick(now);
                }
                if let Some(vpn) = rt.vpn.as_mut() {
                    vpn.core.handle_timeout(now);
                }
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

/// The next packet from the VPN device; never ready without one.
async fn read_tun(vpn: &Option<super::vpn::VpnState>, buf: &mut [u8]) -> std::io::Result<usize> {
    match vpn {
        Some(vpn) => vpn.tun.recv(buf).await,
        None => std::future::pending().await,
    }
}

impl Runtime {
    fn on_session(&mut self, ev: SessionEvent) {
        let now = Instant::now();
        match ev {
            SessionEvent::Online { jid } => {
                tracing::info!("online again");
                tracing::debug!(%jid, "bound");
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
                let _ = reply.send(self.send_on(to, super::vpn::CHANNEL_APP, &data));
            }
            Command::Ping { to, reply } => self.ping(to, reply),
            Command::DhtPut {
                key,
                value,
                lease_s,
                reply,
            } => {
                let now = Instant::now();
                let done = match lease_s {
                    Some(lease) => self.dht_put(now, &key, value, lease),
                    None => self.dht_remove(now, &key, value),
                };
                let _ = reply.send(done);
            }
            Command::DhtGet { key, reply } => self.dht_get(Instant::now(), &key, reply),
            Command::Revoke { revocation, reply } => {
                let _ = reply.send(self.publish_revocation(Instant::now(), revocation));
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Sends an app datagram on `channel` (application or VPN) to member `to`, counting its
    /// bytes for the member's status.
    pub(super) fn send_on(&mut self, to: NodeId, channel: u8, payload: &[u8]) -> Result<(), SendError> {
        self.send_path(to, channel, payload)?;
        self.peer_bytes.entry(to.0).or_default().1 += payload.len() as u64;
        Ok(())
    }

    /// [`Runtime::send_on`] without the counting: picks the path and hands the datagram to it.
    fn send_path(&mut self, to: NodeId, channel: u8, payload: &[u8]) -> Result<(), SendError> {
        let len = 1 + payload.len();
        // Relayed datagrams travel as link frames, which add their header.
        let max = self.core.relay_config().max_datagram - link::frame::HEADER_LEN;
        if len > max {
            let err = ringlet_xmpp::relay::SendError::TooLarge { len, limit: max };
            return Err(SendError::Relay(err.into()));
        }
        if self.tunnel_to(&to.0, len) {
            let mut data = Vec::with_capacity(len);
            data.push(channel);
            data.extend_from_slice(payload);
            self.e2e_send(Instant::now(), to.0, &data);
            self.app_tunnelled += 1;
            return Ok(());
        }
        match self
            .reach
            .links
            .send_app(Instant::now(), &to.0, channel, payload)
            .map_err(|_| SendError::UnknownPeer(to))?
        {
            Some(link::Transmit::Udp { socket, to, data }) => {
                self.reach.send(socket, to, data);
                self.app_sent.0 += 1;
                Ok(())
            }
            Some(link::Transmit::Relay { to, data }) => {
                self.core.send_datagram(Instant::now(), &to, &data)?;
                self.app_sent.1 += 1;
                Ok(())
            }
            // Held until the link's handshake completes; the links' own output sends it.
            None => Ok(()),
        }
    }

    fn ping(&mut self, to: NodeId, reply: oneshot::Sender<Result<PingReply, SendError>>) {
        let nonce = self.next_ping;
        self.next_ping += 1;
        let transmit = match self.reach.links.ping(Instant::now(), &to.0, nonce) {
            Ok(t) => t,
            Err(_) => {
                let _ = reply.send(Err(SendError::UnknownPeer(to)));
                return;
            }
        };
        let (path, remote) = match &transmit {
            // Waits for the link's handshake (the relay carries it, then the ping).
            None => ("xmpp", "handshaking".to_owned()),
            Some(link::Transmit::Udp {
                socket,
                to: addr,
                data,
            }) => {
                self.reach.send(*socket, *addr, data.clone());
                ("direct", format!("udp://{addr}"))
            }
            Some(link::Transmit::Relay { to: jid, data }) => {
                if let Err(e) = self.core.send_datagram(Instant::now(), jid, data) {
                    let _ = reply.send(Err(SendError::Relay(e)));
                    return;
                }
                ("xmpp", format!("xmpp://{jid}"))
            }
        };
        let pending = PendingPing {
            peer: to.0,
            sent: Instant::now(),
            path: path.into(),
            remote,
            reply,
        };
        self.pings.insert(nonce, pending);
    }

    fn on_pong(&mut self, now: Instant, peer: NodeIdBytes, nonce: u64) {
        if self.pings.get(&nonce).is_none_or(|p| p.peer != peer) {
            return;
        }
        if let Some(p) = self.pings.remove(&nonce) {
            let rtt_ms = now.duration_since(p.sent).as_secs_f64() * 1e3;
            let answer = PingReply {
                node_id: NodeId(peer).to_string(),
                path: p.path,
                remote: p.remote,
                rtt_ms,
            };
            let _ = p.reply.send(Ok(answer));
        }
    }

    fn expire_pings(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .pings
            .iter()
            .filter(|(_, p)| now >= p.sent + PING_TIMEOUT)
            .map(|(n, _)| *n)
            .collect();
        for nonce in late {
            if let Some(p) = self.pings.remove(&nonce) {
                let _ = p
                    .reply
                    .send(Err(SendError::NoAnswer(NodeId(p.peer), PING_TIMEOUT)));
            }
        }
    }

    /// Moves every core's output where it belongs, until nothing moves any more.
    fn after_input(&mut self, sender: &SessionSender) {
        let now = Instant::now();
        self.log_ring_progress();
        loop {
            let mut moved = false;
            while let Some(stanza) = self.core.poll_transmit() {
                self.backlog.push_back(stanza);
            }
            while let Some(ev) = self.core.poll_event() {
                moved = true;
                self.on_core_event(now, ev);
            }
            self.reach.flush_stun();
            while let Some(ev) = self.reach.stun.poll_event() {
                let stun_client::Event::Changed = ev;
                moved = true;
                self.on_nat_changed(now);
            }
            while let Some(t) = self.reach.links.poll_transmit() {
                moved = true;
                match t {
                    link::Transmit::Udp { socket, to, data } => {
                        self.reach.send(socket, to, data);
                    }
                    link::Transmit::Relay { to, data } => self.relay(now, &to, &data),
                }
            }
            while let Some(ev) = self.reach.links.poll_event() {
                moved = true;
                self.on_link_event(now, ev);
            }
            moved |= self.drain_ring(now);
            if !moved {
                break;
            }
        }
        while let Some(stanza) = self.backlog.pop_front() {
            if let Err(stanza) = sender.try_send(stanza) {
                self.backlog.push_front(stanza);
                break;
            }
        }
        self.reach.flush();
        self.flush_device();
        let seeking = self.core.members().any(|m| m.addresses.is_none());
        self.core.set_seeking(now, seeking);
    }

    /// Sends a link frame over the XMPP relay; frames whose peer just left are dropped.
    pub(super) fn relay(&mut self, now: Instant, to: &FullJid, data: &[u8]) {
        if let Err(e) = self.core.send_datagram(now, to, data) {
            self.relay_send_failures += 1;
            tracing::debug!(%to, error = %e, "relay frame not sent");
        }
    }

    /// Progress for the person starting the node: the ring is consistent once both
    /// neighbours list us.
    fn log_ring_progress(&mut self) {
        let agreed = self.ring.neighbours_agree() == Some(true);
        if agreed != self.logged_ring_agreed {
            self.logged_ring_agreed = agreed;
            match agreed {
                true => tracing::info!(links = self.ring.table().routing().count(), "ring consistent"),
                false => tracing::debug!("ring neighbours changed"),
            }
        }
    }

    fn on_nat_changed(&mut self, now: Instant) {
        let nat = self.reach.stun.nat();
        let reflexive: Vec<String> = self
            .reach
            .stun
            .reflexive()
            .iter()
            .map(|a| a.to_string())
            .collect();
        if self.logged_nat != Some(nat) {
            self.logged_nat = Some(nat);
            tracing::info!(?nat, ?reflexive, "NAT behaviour");
        } else {
            tracing::debug!(?nat, ?reflexive, "reflexive addresses");
        }
        let candidates = self.reach.candidates();
        self.reach.links.set_local(now, candidates.clone(), nat);
        self.core.set_endpoints(Reach::endpoints(&candidates));
    }

    fn on_link_event(&mut self, now: Instant, ev: link::Event) {
        match ev {
            link::Event::Datagram { from, data } => self.app_datagram(now, from, data),
            link::Event::Overlay { from, data, relayed } => self.ring_message(now, from, &data, relayed),
            link::Event::AttemptFailed { peer } => self.ring_attempt_failed(now, peer),
            link::Event::PathChanged { peer, path } => {
                self.ring_path_changed(now, peer, path);
                log_path(peer, path);
            }
            link::Event::Reflexive(addr) => {
                if self.reach.on_peer_reflexive(now, addr) {
                    self.on_nat_changed(now);
                }
            }
            link::Event::OpenSockets { peer, count } => {
                let ids = self.reach.open_sockets(count);
                tracing::debug!(peer = %NodeId(peer), opened = ids.len(), "birthday sockets");
                self.reach.links.sockets_opened(now, &peer, ids);
            }
            link::Event::Pong { peer, nonce } => self.on_pong(now, peer, nonce),
            link::Event::CloseSockets(ids) => {
                for id in ids {
                    self.reach.close_socket(id);
                }
            }
            link::Event::Revoked { peer, by } => self.on_peer_revoked(now, peer, by),
            link::Event::CrlGrew(_) => self.save_crl(),
        }
    }

    fn on_core_event(&mut self, now: Instant, ev: core::Event) {
        match ev {
            core::Event::MemberUp { jid, node } => {
                tracing::info!(peer = %NodeId(node), "peer online");
                tracing::debug!(peer = %NodeId(node), %jid, "peer resource");
                self.reach.links.member_up(now, node, jid.clone());
                self.member_identity(now, &jid);
                self.check_revocations_of(node);
                self.ring_members(now, None);
                self.emit(AppEvent::PeerUp {
                    node: NodeId(node),
                    jid: jid.to_string(),
                });
            }
            core::Event::MemberDown { jid, node } => {
                tracing::info!(peer = %NodeId(node), "peer offline");
                self.member_down(now, &node, &jid);
                self.peer_bytes.remove(&node);
                self.emit(AppEvent::PeerDown {
                    node: NodeId(node),
                    jid: jid.to_string(),
                });
            }
            core::Event::AddressesLearned { jid } => {
                tracing::debug!(%jid, "learned addresses");
                // The member's static key: its link handshake can be IK (one round trip).
                self.member_identity(now, &jid);
            }
            core::Event::Datagram { from, node, data } => match node {
                Some(node) => self.reach.links.handle_relay(now, node, &data),
                None => {
                    tracing::debug!(%from, "relay datagram from a resource that just left; dropped");
                    self.app_dropped += 1;
                }
            },
            core::Event::PeerFailed {
                peer,
                reason,
                dropped,
            } => {
                tracing::warn!(?reason, dropped, "relay to a peer failed");
                tracing::debug!(%peer, "relay failure peer");
                self.emit(AppEvent::SendFailed {
                    to: peer.to_string(),
                    reason: format!("{reason:?}"),
                    dropped,
                });
            }
            core::Event::DatagramRefused { peer, condition } => {
                tracing::warn!(%condition, "a peer refused a datagram");
                tracing::debug!(%peer, "refusing peer");
                self.emit(AppEvent::SendFailed {
                    to: peer.to_string(),
                    reason: condition,
                    dropped: 1,
                });
            }
            core::Event::Services(services) => {
                tracing::info!(count = services.len(), "XEP-0215 external services");
                self.reach.on_services(&services);
            }
        }
    }

    /// Hands the link layer a member's static key and certificate (from its presence, or from
    /// the address exchange): its handshake can be IK and carry what waits.
    fn member_identity(&mut self, now: Instant, jid: &FullJid) {
        let Some(m) = self.core.member(jid) else {
            return;
        };
        let from_addresses = m.addresses.as_ref().map(|a| (a.key, a.cert.as_deref()));
        let from_presence = m.key.map(|k| (k, m.cert.as_deref()));
        if let Some((key, cert)) = from_addresses.or(from_presence) {
            let node = m.node;
            let cert = cert.map(<[u8]>::to_vec);
            self.reach
                .links
                .set_member_identity(now, &node, key, cert.as_deref());
            self.e2e.set_key(node, key);
        }
    }

    /// A member resource left; its link goes only if no other resource of that node remains.
    fn member_down(&mut self, now: Instant, node: &NodeIdBytes, jid: &FullJid) {
        let elsewhere = self
            .core
            .members()
            .find(|m| m.node == *node && m.jid != *jid)
            .map(|m| m.jid.clone());
        match elsewhere {
            // The node is still online under another resource: the link follows it there
            // (a no-op if it was already there).
            Some(other) => self.reach.links.member_up(now, *node, other),
            None => {
                self.reach.links.member_down(node);
                self.ring_members(now, Some(*node));
            }
        }
    }

    /// An app datagram from a member: to the application or the VPN, by its channel byte.
    pub(super) fn app_datagram(&mut self, now: Instant, from: NodeIdBytes, mut data: Vec<u8>) {
        let Some(&channel) = data.first() else {
            self.app_malformed += 1;
            return;
        };
        if channel == super::vpn::CHANNEL_VPN_SUPER {
            self.peer_bytes.entry(from).or_default().0 += data.len() as u64 - 1;
            return self.vpn_super_datagram(now, from, data);
        }
        data.remove(0);
        self.peer_bytes.entry(from).or_default().0 += data.len() as u64;
        match channel {
            super::vpn::CHANNEL_APP => self.emit(AppEvent::Datagram {
                from: NodeId(from),
                data,
            }),
            super::vpn::CHANNEL_VPN => self.vpn_datagram(now, from, data),
            _ => self.app_malformed += 1,
        }
    }

    pub(super) fn emit(&mut self, ev: AppEvent) {
        if self.app.try_send(ev).is_err() {
            self.app_dropped += 1;
        }
    }
}

fn log_path(peer: NodeIdBytes, path: Path) {
    match path {
        Path::Direct { remote, rtt, .. } => {
            let rtt_ms = rtt.as_secs_f64() * 1e3;
            tracing::info!(peer = %NodeId(peer), rtt_ms, "direct path up");
            tracing::debug!(peer = %NodeId(peer), %remote, "direct path address");
        }
        Path::Xmpp => tracing::info!(peer = %NodeId(peer), "path: XMPP relay"),
    }
}
