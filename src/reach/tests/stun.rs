//! The STUN client classifies every NAT type correctly and bounds its retries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::reach::nat::{Filtering, Mapping, NatInfo, Ports, Udp};
use crate::reach::stun_client::{Config, Socket, StunClient};
use crate::reach::stun_msg;
use crate::reach::testnet::{Kind, Nat, StunServer};

struct Rig {
    now: Instant,
    client: StunClient,
    nat: Nat,
    server: StunServer,
    host: SocketAddr,
    probe_host: SocketAddr,
    sent: usize,
}

fn rig(kind: Kind) -> Rig {
    rig_asking(kind, false)
}

/// A rig whose client knows the two servers in address order, or the other way round.
fn rig_asking(kind: Kind, reversed: bool) -> Rig {
    let host: SocketAddr = if kind == Kind::Open {
        "198.51.100.7:5000"
    } else {
        "10.0.0.2:5000"
    }
    .parse()
    .unwrap();
    let now = Instant::now();
    let nat = Nat::new(kind, "198.51.100.7".parse().unwrap(), 9);
    let server = StunServer::new();
    let mut client = StunClient::new(Config::default(), host.port(), 1);
    let mut servers = vec![server.primary, SocketAddr::new(server.alt.ip(), 3478)];
    if reversed {
        servers.reverse();
    }
    client.set_servers(now, servers);
    let probe_host = SocketAddr::new(host.ip(), 5001);
    Rig {
        now,
        client,
        nat,
        server,
        host,
        probe_host,
        sent: 0,
    }
}

impl Rig {
    /// Runs until the client has nothing in flight (or 60 virtual seconds pass).
    fn run(&mut self) -> NatInfo {
        let end = self.now + Duration::from_secs(60);
        let mut inbox: BTreeMap<Instant, Vec<(Socket, SocketAddr, Vec<u8>)>> = BTreeMap::new();
        loop {
            while let Some(t) = self.client.poll_transmit() {
                self.sent += 1;
                let src = if t.socket == Socket::Main {
                    self.host
                } else {
                    self.probe_host
                };
                let Some(public_src) = self.nat.outbound(src, t.to) else {
                    continue;
                };
                if !self.server.listens_on(t.to) {
                    continue;
                }
                if let Some((from, bytes)) = self.server.answer(t.to, public_src, &t.data) {
                    if self.nat.inbound(from, public_src).is_some() {
                        inbox
                            .entry(self.now + Duration::from_millis(10))
                            .or_default()
                            .push((t.socket, from, bytes));
                    }
                }
            }
            let next_in = inbox.keys().next().copied();
            let next = [next_in, self.client.poll_timeout()].into_iter().flatten().min();
            match next {
                Some(t) if t <= end && (next_in.is_some() || self.busy()) => {
                    self.now = t.max(self.now);
                    if next_in == Some(t) {
                        for (socket, from, bytes) in inbox.remove(&t).unwrap_or_default() {
                            let msg = stun_msg::decode(&bytes).unwrap();
                            self.client.handle_response(self.now, socket, from, &msg);
                        }
                    } else {
                        self.client.handle_timeout(self.now);
                    }
                }
                _ => return self.client.nat(),
            }
        }
    }

    /// True while requests are outstanding (the re-query timer does not count).
    fn busy(&self) -> bool {
        self.client
            .poll_timeout()
            .is_some_and(|t| t < self.now + Duration::from_secs(100))
    }
}

#[test]
fn every_nat_type_is_classified() {
    for kind in Kind::ALL {
        let mut r = rig(kind);
        let nat = r.run();
        let want = match kind {
            Kind::Open | Kind::Full => (
                Some(Mapping::EndpointIndependent),
                Some(Ports::Preserving),
                Some(Filtering::EndpointIndependent),
            ),
            Kind::Restricted => (
                Some(Mapping::EndpointIndependent),
                Some(Ports::Preserving),
                Some(Filtering::AddressDependent),
            ),
            Kind::PortRestricted => (
                Some(Mapping::EndpointIndependent),
                Some(Ports::Preserving),
                Some(Filtering::AddressAndPortDependent),
            ),
            Kind::Symmetric => (
                Some(Mapping::EndpointDependent),
                Some(Ports::Random),
                Some(Filtering::AddressAndPortDependent),
            ),
            Kind::SymmetricSequential => (
                Some(Mapping::EndpointDependent),
                Some(Ports::Sequential { step: 1 }),
                Some(Filtering::AddressAndPortDependent),
            ),
            Kind::UdpBlocked => (None, None, None),
        };
        assert_eq!((nat.mapping, nat.ports, nat.filtering), want, "{kind:?}: {nat:?}");
        let udp = if kind == Kind::UdpBlocked {
            Udp::Blocked
        } else {
            Udp::Ok
        };
        assert_eq!(nat.udp, Some(udp), "{kind:?}");
        if kind != Kind::UdpBlocked {
            assert!(
                r.client.reflexive().iter().all(|a| a.ip() == r.nat.public_ip),
                "{kind:?}"
            );
        }
    }
}

/// A sequential allocator's step is measured in the order the NAT allocated the ports, not in
/// the order the servers' addresses sort.
#[test]
fn sequential_ports_are_measured_in_allocation_order() {
    for reversed in [false, true] {
        let mut r = rig_asking(Kind::SymmetricSequential, reversed);
        let nat = r.run();
        assert_eq!(
            nat.ports,
            Some(Ports::Sequential { step: 1 }),
            "reversed: {reversed}"
        );
        let ports: Vec<u16> = r.client.reflexive().iter().map(|a| a.port()).collect();
        assert!(
            ports.windows(2).all(|w| w[1] > w[0]),
            "allocation order: {ports:?}"
        );
    }
}

#[test]
fn retries_are_bounded_and_blocked_udp_is_reported_in_seconds() {
    let mut r = rig(Kind::UdpBlocked);
    let start = r.now;
    r.run();
    let took = r.now - start;
    // 2 servers × 5 tries, plus 3 + 3 filtering probes; RTO 250 ms doubling: 7.75 s
    assert_eq!(r.sent, 16);
    assert!(took <= Duration::from_secs(8), "took {took:?}");
}

#[test]
fn requery_picks_up_a_changed_mapping() {
    let mut r = rig(Kind::PortRestricted);
    r.run();
    let before = r.client.reflexive().to_vec();
    // Another host took our port at the router, and the router forgot us.
    r.nat.flush();
    let squatter: SocketAddr = "10.0.0.9:5000".parse().unwrap();
    r.nat.outbound(squatter, "203.0.113.99:1".parse().unwrap());
    let now = r.now;
    r.client.requery(now);
    r.run();
    assert_ne!(r.client.reflexive(), before.as_slice(), "new mapping found");
    assert_eq!(r.client.reflexive().len(), 1);
}

#[test]
fn responses_from_unexpected_sources_or_garbage_are_ignored() {
    let mut r = rig(Kind::Open);
    let t = r.client.poll_transmit().unwrap();
    let (_, bytes) = r.server.answer(t.to, r.host, &t.data).unwrap();
    let msg = stun_msg::decode(&bytes).unwrap();
    let now = r.now;
    r.client
        .handle_response(now, Socket::Main, "192.0.2.66:3478".parse().unwrap(), &msg);
    assert!(
        r.client.reflexive().is_empty(),
        "a response from elsewhere must not count"
    );
    r.client.handle_response(now, Socket::Probe, t.to, &msg);
    assert!(
        r.client.reflexive().is_empty(),
        "a response on the wrong socket must not count"
    );
    r.client.handle_response(now, Socket::Main, t.to, &msg);
    assert_eq!(r.client.reflexive(), &[r.host]);
}
