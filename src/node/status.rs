//! The status report (`ringlet status --json`): every key is always present, unknown values
//! are `null`.

use std::collections::BTreeMap;
use std::time::Instant;

use ringlet_xmpp::core::SessionState;
use serde::{Deserialize, Serialize};

use super::runtime::Runtime;
use crate::identity::NodeId;
use crate::link::Path;
use crate::overlay::{LinkKind, RingAddr};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node_id: String,
    pub jid: Option<String>,
    pub overlay: String,
    /// `connecting`, `online` or `reconnecting`.
    pub state: String,
    /// Server-reflexive addresses (`ip:port`), from the NAT traversal layer.
    pub reflexive: Vec<String>,
    /// NAT behaviour: `{"mapping","ports","filtering","udp"}`, each null until observed.
    pub nat: Option<serde_json::Value>,
    pub peers: Vec<Peer>,
    pub ring: Ring,
    pub counters: BTreeMap<String, u64>,
    /// STUN/TURN services: from XEP-0215, else the configured fallback.
    pub services: Vec<Service>,
    pub uptime_s: f64,
    /// The VPN device, when the VPN is on.
    #[serde(default)]
    pub vpn: Option<Vpn>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vpn {
    pub device: String,
    /// IPv4 CIDR, e.g. `10.77.0.1/16`.
    pub address: String,
    pub address6: String,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub node_id: String,
    pub jid: String,
    /// `direct`, `tunnel` or `xmpp`; `revoked` for a member the CRL cuts off.
    pub path: String,
    /// The NodeId relaying a `tunnel` path (a neighbour both ends link to directly).
    pub via: Option<String>,
    /// Where the path leads: `xmpp://<full JID>` for the relay.
    pub remote: Option<String>,
    pub rtt_ms: Option<f64>,
    pub since_s: f64,
    /// Endpoint URIs the peer announced in the address exchange.
    pub endpoints: Vec<String>,
    /// The peer's VPN IPv4 address, once known (null without a VPN).
    #[serde(default)]
    pub vpn_address: Option<String>,
    /// The peer's NAT as it described it: `open`, `cone`, `symmetric`, `blocked`; null until
    /// it has (in its first address offer or answer).
    #[serde(default)]
    pub nat: Option<String>,
    /// Application and VPN payload bytes received from and sent to the peer, on any path.
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ring {
    /// Our nearest ring neighbours counter-clockwise and clockwise (NodeIds).
    pub left: Option<String>,
    pub right: Option<String>,
    pub size_estimate: Option<u64>,
    /// Whether both neighbours count us among their near neighbours, as their last notices
    /// said (null until the ring has neighbours on both sides).
    pub consistent: Option<bool>,
    /// Ring links (direct and tunnel) and shortcuts among them.
    pub links: usize,
    pub shortcuts: usize,
    /// Ring links over the XMPP relay, which never route: a UDP-blocked node's way into the
    /// ring (it is a leaf), or the leaves linked to us.
    #[serde(default)]
    pub leaf_links: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub kind: String,
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<String>,
    /// `xep-0215` or `config`.
    pub source: String,
}

impl Service {
    /// `stun 203.0.113.2:3478/udp (xep-0215)`.
    pub fn describe(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let transport = self
            .transport
            .as_deref()
            .map(|t| format!("/{t}"))
            .unwrap_or_default();
        format!("{} {}{port}{transport} ({})", self.kind, self.host, self.source)
    }
}

pub(super) fn build(rt: &Runtime, now: Instant) -> Status {
    let core = &rt.core;
    let links = &rt.reach.links;
    let mut peers: Vec<Peer> = core
        .members()
        .map(|m| {
            let relay_rtt = core.relay_stats(&m.jid).and_then(|s| s.srtt).or(m.rtt);
            let since = links.path_since(&m.node).unwrap_or(m.since).max(m.since);
            let ring_link = rt.ring.table().get(&RingAddr::from(NodeId(m.node)));
            let via = match ring_link.map(|l| l.kind) {
                Some(LinkKind::Tunnel { via }) => Some(NodeId::from(via).to_string()),
                _ => None,
            };
            let (path, remote, rtt) = match (links.path(&m.node), &via) {
                _ if links.is_revoked(&m.node) => ("revoked", format!("xmpp://{}", m.jid), None),
                (Some(Path::Direct { remote, rtt, .. }), _) => {
                    ("direct", format!("udp://{remote}"), Some(rtt))
                }
                (_, Some(via)) => ("tunnel", format!("ring://{via}"), ring_link.map(|l| l.rtt)),
                _ => ("xmpp", format!("xmpp://{}", m.jid), relay_rtt),
            };
            Peer {
                node_id: NodeId(m.node).to_string(),
                jid: m.jid.to_string(),
                path: path.into(),
                via,
                remote: Some(remote),
                rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                since_s: now.duration_since(since).as_secs_f64(),
                endpoints: m
                    .addresses
                    .as_ref()
                    .map(|a| a.endpoints.iter().map(|e| e.uri.clone()).collect())
                    .unwrap_or_default(),
                vpn_address: rt
                    .vpn
                    .as_ref()
                    .and_then(|v| v.core.address_of(&m.node))
                    .map(|a| a.to_string()),
                nat: links
                    .peer_nat(&m.node)
                    .map(|n| n.label())
                    .filter(|l| *l != "?")
                    .map(Into::into),
                bytes_in: rt.peer_bytes.get(&m.node).map_or(0, |b| b.0),
                bytes_out: rt.peer_bytes.get(&m.node).map_or(0, |b| b.1),
            }
        })
        .collect();
    peers.sort_by(|a, b| (&a.node_id, &a.jid).cmp(&(&b.node_id, &b.jid)));
    let state = match core.state() {
        SessionState::Connecting => "connecting",
        SessionState::Online => "online",
        SessionState::Suspended => "reconnecting",
    };
    let services = match core.services() {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|s| Service {
                kind: s.kind.clone(),
                host: s.host.clone(),
                port: s.port,
                transport: s.transport.clone(),
                source: "xep-0215".into(),
            })
            .collect(),
        _ => rt
            .stun_fallback
            .iter()
            .filter_map(|s| s.rsplit_once(':'))
            .map(|(host, port)| Service {
                kind: "stun".into(),
                host: host.to_owned(),
                port: port.parse().ok(),
                transport: Some("udp".into()),
                source: "config".into(),
            })
            .collect(),
    };
    Status {
        node_id: rt.node_id.to_string(),
        jid: core.own_jid().map(|j| j.to_string()),
        overlay: rt.overlay.clone(),
        state: state.into(),
        reflexive: rt.reach.stun.reflexive().iter().map(|a| a.to_string()).collect(),
        nat: serde_json::to_value(rt.reach.stun.nat()).ok(),
        peers,
        ring: ring(rt),
        counters: counters(rt),
        services,
        uptime_s: now.duration_since(rt.started).as_secs_f64(),
        vpn: rt.vpn.as_ref().map(|v| Vpn {
            device: v.tun.name().to_owned(),
            address: v.core.address().to_string(),
            address6: v.core.address6().to_string(),
            mtu: v.mtu,
        }),
    }
}

fn ring(rt: &Runtime) -> Ring {
    let table = rt.ring.table();
    let (left, right) = (table.nearest_left(), table.nearest_right());
    Ring {
        left: left.map(|a| NodeId::from(a).to_string()),
        right: right.map(|a| NodeId::from(a).to_string()),
        size_estimate: table
            .has_routing_links()
            .then(|| rt.ring.size_estimate().round() as u64),
        consistent: rt.ring.neighbours_agree(),
        links: table.routing().count(),
        shortcuts: table.iter().filter(|(_, l)| l.our_shortcut).count(),
        leaf_links: table.iter().filter(|(_, l)| !l.kind.routes()).count(),
    }
}

fn counters(rt: &Runtime) -> BTreeMap<String, u64> {
    let c = rt.core.counters();
    let r = rt.core.relay_counters();
    let z = rt.core.rendezvous_counters();
    let u = &rt.reach.counters;
    let l = rt.reach.links.counters();
    let sockets = rt.reach.socket_stats();
    [
        ("stanzas_in", c.stanzas_in),
        ("stanzas_out", c.stanzas_out),
        ("session_resets", c.resets),
        ("reconnect_failures", rt.reconnect_failures),
        ("strangers_ignored", c.strangers_ignored + z.strangers_ignored),
        ("refused_not_member", c.refused_not_member),
        ("malformed_relay", c.malformed_relay),
        ("malformed_requests", c.malformed_requests),
        ("malformed_presence", z.malformed_presence),
        ("unsupported_requests", c.unsupported_requests),
        ("unmatched_results", c.unmatched_results),
        ("messages_ignored", c.messages_ignored),
        ("address_requests_in", z.address_requests_in),
        ("address_requests_out", z.address_requests_out),
        ("address_requests_refused", z.address_requests_refused),
        ("address_replies_rejected", z.address_replies_rejected),
        ("relay_datagrams_in", r.datagrams_in),
        ("relay_datagrams_out", r.datagrams_out),
        ("relay_bytes_in", r.bytes_in),
        ("relay_bytes_out", r.bytes_out),
        ("relay_fragments_in", r.fragments_in),
        ("relay_fragments_acked", r.fragments_out),
        ("relay_duplicates_in", r.duplicates_in),
        ("relay_retransmits", r.retransmits),
        ("relay_refused_in", r.refused_in),
        ("relay_busy_in", r.busy_in),
        ("relay_peer_failures", r.peer_failures),
        ("app_dropped", rt.app_dropped),
        ("relay_send_failures", rt.relay_send_failures),
        ("udp_datagrams_in", u.datagrams_in),
        ("udp_stun_in", u.stun_in),
        ("udp_frames_in", u.frames_in),
        ("udp_unknown_in", u.unknown_in),
        ("udp_stun_malformed", u.stun_malformed + rt.reach.stun.malformed),
        ("udp_stun_unclaimed", u.stun_unclaimed),
        ("udp_recv_errors", u.recv_errors),
        ("udp_datagrams_out", sockets.datagrams_sent),
        ("udp_send_calls", sockets.send_calls),
        ("udp_send_errors", sockets.send_errors),
        ("udp_extra_sockets", sockets.extra_sockets),
        ("udp_shared_overlays", sockets.shared_overlays),
        ("udp_shared_unclaimed", sockets.shared_unclaimed),
        ("link_attempts", l.attempts),
        ("link_direct_up", l.direct_up),
        ("link_paths_lost", l.paths_lost),
        ("link_direct_out", rt.app_sent.0),
        ("link_relayed_out", rt.app_sent.1),
        ("link_frames_in", l.frames_in),
        ("link_malformed_frames", l.malformed_frames),
        ("link_foreign_path", l.foreign_path),
        ("link_unknown_source", l.unknown_source),
        ("link_stun_refused", l.stun_refused),
        ("link_checks_for_success", l.checks_for_success),
        ("link_offers_refused", l.offers_refused),
        ("link_handshakes", l.handshakes),
        ("link_handshakes_refused", l.handshakes_refused),
        ("link_secure_dropped", l.secure_dropped),
        ("link_plaintext_refused", l.plaintext_refused),
        ("link_queue_dropped", l.queue_dropped),
        ("link_handshake_packets_out", l.handshake_packets_out),
        ("link_held_out", l.held_out),
        ("link_early_out", l.early_out),
        ("link_overtaken_held", l.overtaken_held),
        ("link_inits_limited", l.inits_limited),
        ("link_revoked", l.links_revoked),
        ("link_revoked_refused", l.revoked_refused),
        ("link_fragments_refused", l.fragments_refused),
        ("link_records_lost", l.records_lost),
        (
            "revocations_refused",
            l.revocations_refused + rt.revocations_malformed,
        ),
        ("crl_version", rt.reach.links.crl().map_or(0, |c| c.version())),
        ("link_tunnelled_out", rt.app_tunnelled),
        ("e2e_handshakes", rt.e2e.counters().handshakes),
        ("e2e_refused", rt.e2e.counters().refused),
        ("e2e_dropped", rt.e2e.counters().dropped),
        ("e2e_queue_dropped", rt.e2e.counters().queue_dropped),
        ("ring_messages_out", rt.ring.stats().messages_out),
        ("ring_bytes_out", rt.ring.stats().bytes_out),
        ("ring_malformed", rt.ring.stats().malformed),
        ("ring_dropped", rt.ring.stats().dropped),
        ("ring_no_path", rt.ring_no_path),
        ("ring_relayed_out", rt.ring_relayed.0),
        ("ring_relayed_in", rt.ring_relayed.1),
        ("ring_links_up", rt.ring.stats().links_up),
        ("ring_links_down", rt.ring.stats().links_down),
    ]
    .into_iter()
    .chain(ring_kind_counters(rt))
    .chain(vpn_counters(rt))
    .chain([("app_malformed", rt.app_malformed)])
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Ring messages out per kind: what the ring spends its traffic on.
fn ring_kind_counters(rt: &Runtime) -> impl Iterator<Item = (&'static str, u64)> {
    const NAMES: [&str; 13] = [
        "ring_out_other",
        "ring_out_ping",
        "ring_out_pong",
        "ring_out_routed",
        "ring_out_broadcast",
        "ring_out_relay",
        "ring_out_replicate",
        "ring_out_bye",
        "ring_out_neighbours",
        "ring_out_relayed",
        "ring_out_links",
        "ring_out_unrelayed",
        "ring_out_coord",
    ];
    const BODIES: [&str; 11] = [
        "ring_routed_other",
        "ring_routed_ctm",
        "ring_routed_ctm_reply",
        "ring_routed_dht_put",
        "ring_routed_dht_get",
        "ring_routed_dht_values",
        "ring_routed_app",
        "ring_routed_neighbours_request",
        "ring_routed_neighbours_reply",
        "ring_routed_broadcast",
        "ring_routed_via",
    ];
    let stats = rt.ring.stats();
    NAMES
        .into_iter()
        .zip(stats.out_by_kind)
        .chain(BODIES.into_iter().zip(stats.routed_by_body))
}

/// The VPN's counters (zeros without a VPN, so every key is always present).
fn vpn_counters(rt: &Runtime) -> Vec<(&'static str, u64)> {
    let (c, conflicts, device_errors) = match &rt.vpn {
        Some(v) => (v.core.counters.clone(), v.conflicts, v.device_errors),
        None => Default::default(),
    };
    vec![
        ("vpn_from_tun", c.from_tun),
        ("vpn_to_tun", c.to_tun),
        ("vpn_sent", c.sent),
        ("vpn_whole_out", c.whole_out),
        ("vpn_whole_in", c.whole_in),
        ("vpn_broadcast", c.broadcast),
        ("vpn_lookups", c.lookups),
        ("vpn_malformed", c.malformed),
        ("vpn_not_carried", c.not_carried),
        ("vpn_unresolved", c.unresolved),
        ("vpn_held_dropped", c.held_dropped),
        ("vpn_refused", c.refused),
        ("vpn_address_conflicts", conflicts),
        ("vpn_device_errors", device_errors),
    ]
}
