//! The runtime half of NAT traversal: the UDP sockets, host candidates, STUN server
//! resolution, and the routing of datagrams to the STUN client and the links (both sans-IO).
//!
//! Packets are classified on arrival: STUN responses to our server queries go to the STUN
//! client, every other STUN packet to the links (peer checks); ringlet frames go to the links;
//! anything else is dropped and counted.
#![allow(clippy::disallowed_methods)] // runtime: address lookups and interface enumeration

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ringlet_udp::{classify, Outgoing, PacketKind, Received, SharedSocket, SocketId, UdpMux, MAIN_SOCKET};
use ringlet_xmpp::wire::addresses::Endpoint;
use ringlet_xmpp::wire::extdisco::Service;
use ringlet_xmpp::NodeIdBytes;
use tokio::sync::mpsc;

use crate::link::{self, frame::PathId, Links};
use crate::reach::candidate::{Candidate, Kind as CandidateKind};
use crate::reach::nat::Mapping;
use crate::reach::stun_client::{self, StunClient};
use crate::reach::stun_msg;

/// Where a resolved STUN server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerSource {
    Config,
    Xep0215,
}

/// Counters of the UDP side.
#[derive(Debug, Clone, Default)]
pub(super) struct UdpCounters {
    pub datagrams_in: u64,
    pub stun_in: u64,
    pub frames_in: u64,
    pub unknown_in: u64,
    pub stun_malformed: u64,
    pub stun_unclaimed: u64,
    pub recv_errors: u64,
}

/// What the sockets report.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SocketStats {
    /// Datagrams dropped on send (full socket buffer, closed socket, refused).
    pub send_errors: u64,
    pub send_calls: u64,
    pub datagrams_sent: u64,
    pub extra_sockets: u64,
    /// Overlays on the shared socket (0: the node has a socket of its own).
    pub shared_overlays: u64,
    /// Datagrams the shared socket's dispatcher could give no overlay (process-wide).
    pub shared_unclaimed: u64,
}

pub(super) struct Reach {
    /// `None` when UDP is disabled: every path is the XMPP relay.
    mux: Option<UdpMux>,
    probe_socket: Option<SocketId>,
    pub stun: StunClient,
    pub links: Links,
    host_ips: Vec<IpAddr>,
    port: u16,
    /// Port of the IPv6 twin socket, if there is one.
    port6: Option<u16>,
    /// Our addresses as peers saw them that no STUN server reported (at most 4).
    prflx: Vec<SocketAddr>,
    config_servers: Vec<String>,
    resolved_config: Vec<SocketAddr>,
    resolved_xep: Vec<SocketAddr>,
    resolved_tx: mpsc::Sender<(ServerSource, Vec<SocketAddr>)>,
    last_requery: Option<Instant>,
    /// Datagrams queued this turn of the runtime loop; [`Reach::flush`] sends them together.
    outbox: Vec<(SocketId, SocketAddr, Vec<u8>)>,
    pub counters: UdpCounters,
}

/// The outbox is flushed early when it holds this many datagrams.
const OUTBOX_LIMIT: usize = 256;

/// Lookups of STUN server names, answered to the runtime loop.
pub(super) type Resolved = mpsc::Receiver<(ServerSource, Vec<SocketAddr>)>;

/// Binds the sockets, or joins the process's `shared` socket (unless `bind` is `None`: UDP
/// disabled), and builds the cores. Must run inside the tokio runtime.
pub(super) fn bind(
    bind: Option<SocketAddr>,
    shared: Option<&SharedSocket>,
    own: NodeIdBytes,
    path: PathId,
    config_servers: Vec<String>,
    seed: u64,
) -> std::io::Result<(Reach, Resolved)> {
    let mut mux = match (bind, shared) {
        (None, _) => None,
        (Some(_), Some(shared)) => Some(UdpMux::join(shared, path)?),
        (Some(addr), None) => Some(UdpMux::bind(addr)?),
    };
    let local = mux.as_ref().and_then(|m| m.local_addr(MAIN_SOCKET));
    // A second socket for the STUN filtering test (see stun_client).
    let probe_socket = match (&mut mux, bind) {
        (Some(m), Some(b)) => m.open_extra(b.ip(), 1).first().copied(),
        _ => None,
    };
    let (resolved_tx, resolved_rx) = mpsc::channel(8);
    let link_cfg = link::Config {
        direct: mux.is_some(),
        on_demand: true,
        ..link::Config::default()
    };
    let port = local.map_or(0, |l| l.port());
    let host_ips = bind.map(|b| host_ips(b.ip())).unwrap_or_default();
    // Where the host has IPv6, also an IPv6 twin of the main socket (a shared socket was
    // bound with one by the same rule, see [`bind_shared`]).
    let port6 = match &mut mux {
        Some(m) if host_ips.iter().any(IpAddr::is_ipv6) => match m.add_ipv6() {
            Ok(addr) => Some(addr.port()),
            Err(e) => {
                tracing::warn!(error = %e, "no IPv6 socket");
                None
            }
        },
        _ => None,
    };
    let reach = Reach {
        mux,
        probe_socket,
        stun: StunClient::new(stun_client::Config::default(), port, seed),
        links: Links::new(link_cfg, own, path, seed.wrapping_add(7)),
        host_ips,
        port,
        port6,
        prflx: Vec::new(),
        config_servers,
        resolved_config: Vec::new(),
        resolved_xep: Vec::new(),
        resolved_tx,
        last_requery: None,
        outbox: Vec::new(),
        counters: UdpCounters::default(),
    };
    Ok((reach, resolved_rx))
}

/// Binds one main socket for several overlays of this process (with an IPv6 twin where the
/// host has global IPv6 addresses, as a node's own socket would have).
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<SharedSocket> {
    SharedSocket::bind(addr, host_ips(addr.ip()).iter().any(IpAddr::is_ipv6))
}

/// Addresses of the host's interfaces when bound to 0.0.0.0: IPv4 except loopback and
/// link-local, and IPv6 except loopback, link-local and multicast.
fn host_ips(bind: IpAddr) -> Vec<IpAddr> {
    if !bind.is_unspecified() {
        return vec![bind];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback() && !i.is_link_local() && !i.ip().is_multicast())
        .map(|i| i.ip())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

impl Reach {
    /// Resolves the configured STUN servers (used at once, before XEP-0215 answers).
    pub fn start(&mut self) -> Vec<Candidate> {
        self.resolve(ServerSource::Config, self.config_servers.clone());
        self.candidates()
    }

    /// Waits for datagrams; never resolves when UDP is disabled.
    pub async fn recv(&mut self) -> std::io::Result<Vec<Received>> {
        match &mut self.mux {
            Some(mux) => mux.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Queues one datagram for [`Reach::flush`], which the runtime calls after every turn of
    /// its loop, so that a burst (a TUN batch, birthday probes) leaves in few system calls.
    pub fn send(&mut self, socket: SocketId, to: SocketAddr, data: Vec<u8>) {
        if self.mux.is_none() {
            return;
        }
        self.outbox.push((socket, to, data));
        if self.outbox.len() >= OUTBOX_LIMIT {
            self.flush();
        }
    }

    /// Sends `data` as datagrams of `size` bytes (the last may be shorter) to one destination
    /// now, after what was queued before them, without copying it into the queue.
    pub fn send_segments(&mut self, socket: SocketId, to: SocketAddr, data: &[u8], size: usize) {
        self.flush();
        if let Some(mux) = &mut self.mux {
            mux.send_segments(socket, to, data, size);
        }
    }

    /// Sends the queued datagrams (dropped ones are counted in the mux's `send_errors`).
    pub fn flush(&mut self) {
        let Some(mux) = &mut self.mux else {
            self.outbox.clear();
            return;
        };
        let batch: Vec<Outgoing<'_>> = self
            .outbox
            .iter()
            .map(|(socket, to, data)| Outgoing {
                socket: *socket,
                to: *to,
                data,
            })
            .collect();
        mux.send_batch(&batch);
        self.outbox.clear();
    }

    pub fn close_socket(&mut self, id: SocketId) {
        self.flush(); // what was queued for the socket still leaves through it
        if let Some(m) = &mut self.mux {
            m.close(id);
        }
    }

    pub fn socket_stats(&self) -> SocketStats {
        self.mux
            .as_ref()
            .map_or_else(SocketStats::default, |m| SocketStats {
                send_errors: m.send_errors,
                send_calls: m.send_calls,
                datagrams_sent: m.datagrams_sent,
                extra_sockets: m.extra_count() as u64,
                shared_overlays: m.shared().map_or(0, |s| s.members() as u64),
                shared_unclaimed: m.shared().map_or(0, |s| s.stats().unclaimed),
            })
    }

    /// XEP-0215 named these services: resolve the UDP STUN ones.
    pub fn on_services(&mut self, services: &[Service]) {
        let stun: Vec<String> = services
            .iter()
            .filter(|s| s.kind == "stun" && s.transport.as_deref().is_none_or(|t| t == "udp"))
            .map(|s| format!("{}:{}", s.host, s.port.unwrap_or(3478)))
            .collect();
        self.resolve(ServerSource::Xep0215, stun);
    }

    fn resolve(&self, source: ServerSource, names: Vec<String>) {
        if names.is_empty() || self.mux.is_none() {
            return;
        }
        let tx = self.resolved_tx.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for name in names {
                let lookup =
                    tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(name.clone())).await;
                match lookup {
                    Ok(Ok(addrs)) => out.extend(addrs.filter(SocketAddr::is_ipv4)),
                    _ => tracing::warn!(server = %name, "cannot resolve STUN server"),
                }
            }
            let _ = tx.send((source, out)).await;
        });
    }

    pub fn on_resolved(&mut self, now: Instant, source: ServerSource, addrs: Vec<SocketAddr>) {
        match source {
            ServerSource::Config => self.resolved_config = addrs,
            ServerSource::Xep0215 => self.resolved_xep = addrs,
        }
        let mut all: Vec<SocketAddr> = self.resolved_xep.clone();
        all.extend(
            self.resolved_config
                .iter()
                .filter(|a| !self.resolved_xep.contains(a)),
        );
        self.stun.set_servers(now, all);
    }

    /// Hands received datagrams to the cores.
    pub fn on_datagrams(&mut self, now: Instant, batch: Vec<Received>) {
        for r in batch {
            self.counters.datagrams_in += 1;
            match classify(&r.data) {
                PacketKind::Stun => self.on_stun(now, r),
                PacketKind::Frame => {
                    self.counters.frames_in += 1;
                    self.links.handle_frame(now, r.socket, r.from, r.data);
                }
                PacketKind::Unknown => self.counters.unknown_in += 1,
            }
        }
    }

    fn on_stun(&mut self, now: Instant, r: Received) {
        self.counters.stun_in += 1;
        let Ok(msg) = stun_msg::decode(&r.data) else {
            self.counters.stun_malformed += 1;
            return;
        };
        let tid = *msg.transaction_id().as_bytes();
        if self.stun.owns(&tid) {
            let socket = if Some(r.socket) == self.probe_socket {
                stun_client::Socket::Probe
            } else {
                stun_client::Socket::Main
            };
            self.stun.handle_response(now, socket, r.from, &msg);
        } else if !self.links.handle_stun(now, r.socket, r.from, &msg) {
            self.counters.stun_unclaimed += 1;
        }
    }

    /// Sends the STUN client's queries.
    pub fn flush_stun(&mut self) {
        while let Some(t) = self.stun.poll_transmit() {
            let socket = match t.socket {
                stun_client::Socket::Main => MAIN_SOCKET,
                stun_client::Socket::Probe => match self.probe_socket {
                    Some(s) => s,
                    None => continue,
                },
            };
            self.send(socket, t.to, t.data);
        }
    }

    /// Our candidates: host addresses, then server-reflexive ones (none without UDP).
    /// Within a kind, earlier addresses rank higher; a new address of one kind leaves the
    /// others' priorities alone (so they are not announced again as new).
    pub fn candidates(&self) -> Vec<Candidate> {
        let host: Vec<SocketAddr> = self
            .host_ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(_) => Some(SocketAddr::new(*ip, self.port)),
                IpAddr::V6(_) => self.port6.map(|p| SocketAddr::new(*ip, p)),
            })
            .collect();
        let kinds = [
            (CandidateKind::Host, host.as_slice()),
            (CandidateKind::ServerReflexive, self.stun.reflexive()),
            (CandidateKind::PeerReflexive, self.prflx.as_slice()),
        ];
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (kind, addrs) in kinds {
            for (i, addr) in addrs.iter().enumerate() {
                if seen.insert(*addr) {
                    out.push(Candidate::new(kind, *addr, u16::MAX - i as u16));
                }
            }
        }
        out
    }

    /// Candidates as endpoints for the address exchange.
    pub fn endpoints(candidates: &[Candidate]) -> Vec<Endpoint> {
        candidates
            .iter()
            .map(|c| Endpoint {
                uri: c.uri(),
                priority: c.priority,
            })
            .collect()
    }

    /// A peer saw us at `addr`. Behind an endpoint-independent NAT that differs from our
    /// server-reflexive address only if the mapping changed: ask the STUN servers again
    /// (at most every 30 s).
    /// Returns true if our candidates changed (a new peer-reflexive address to announce).
    pub fn on_peer_reflexive(&mut self, now: Instant, addr: SocketAddr) -> bool {
        let independent = self.stun.nat().mapping == Some(Mapping::EndpointIndependent);
        let known = self.stun.reflexive().contains(&addr) || self.host_ips.contains(&addr.ip());
        // Behind endpoint-dependent mapping the address is good for that one peer only.
        let announce = !known && !self.stun.nat().is_hard() && !self.prflx.contains(&addr);
        if announce {
            if self.prflx.len() == 4 {
                self.prflx.remove(0);
            }
            self.prflx.push(addr);
        }
        let recent = self
            .last_requery
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(30));
        if independent && !known && !recent {
            tracing::debug!(%addr, "a peer sees us at a new address; querying STUN again");
            self.last_requery = Some(now);
            self.stun.requery(now);
        }
        announce
    }

    /// Opens the extra sockets an attempt asked for (on the main socket's IP).
    pub fn open_sockets(&mut self, count: usize) -> Vec<SocketId> {
        let Some(mux) = &mut self.mux else {
            return Vec::new();
        };
        let ip = mux
            .local_addr(MAIN_SOCKET)
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        mux.open_extra(ip, count)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.stun.poll_timeout(), self.links.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.stun.handle_timeout(now);
        self.links.handle_timeout(now);
    }
}
