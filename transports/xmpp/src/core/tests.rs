//! The XMPP core's routing and trust rules, driven with hand-made stanzas and a tiny in-memory
//! router (a stand-in for the server that stamps `from` and delivers by full JID).
#![allow(clippy::disallowed_methods)] // tests need one real Instant as the virtual epoch

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Type as PresenceType};

use super::*;
use crate::wire::overlay::OverlayTag;
use crate::wire::relay::{Frag, RelayFrame};
use crate::wire::NS_RELAY;
use crate::{names, node_id_of, BareJid, Element};

fn full(s: &str) -> FullJid {
    FullJid::new(s).unwrap()
}

fn bare(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

fn core(overlay: &str, key: u8, friends: &[&str]) -> Core {
    let key = [key; 32];
    let friends: BTreeSet<BareJid> = friends.iter().map(|f| bare(f)).collect();
    let rendezvous = rendezvous::Config::new(names::overlay_ns(overlay), node_id_of(&key), key, friends);
    Core::new(
        Config {
            rendezvous,
            relay: relay::Config::default(),
        },
        u64::from(key[0]),
    )
}

fn drain(c: &mut Core) -> Vec<Stanza> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

fn events(c: &mut Core) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn presence_of(c: &Core, from: &FullJid) -> Stanza {
    let mut p = c.rendezvous.presence();
    p.from = Some(from.clone().into());
    p.into()
}

/// Delivers every stanza `a` (at `ja`) addressed to `jb` into `b`, stamping `from`.
fn route(now: Instant, a: &mut Core, ja: &FullJid, b: &mut Core, jb: &FullJid) -> usize {
    let mut n = 0;
    for s in drain(a) {
        let to_b = match &s {
            Stanza::Iq(iq) => iq.to().is_some_and(|t| t.as_str() == jb.as_str()),
            _ => false,
        };
        if to_b {
            n += 1;
            let mut s = s;
            if let Stanza::Iq(iq) = &mut s {
                *iq.from_mut() = Some(ja.clone().into());
            }
            b.handle_stanza(now, s);
        }
    }
    n
}

struct Pair {
    now: Instant,
    a: Core,
    b: Core,
    ja: FullJid,
    jb: FullJid,
}

/// Two members of overlay "alpha", online and aware of each other.
fn pair() -> Pair {
    let now = Instant::now();
    let ja = full("alice@one.test/ringlet.a");
    let jb = full("bob@two.test/ringlet.b");
    let mut a = core("alpha", 1, &["bob@two.test"]);
    let mut b = core("alpha", 2, &["alice@one.test"]);
    a.handle_online(now, ja.clone());
    b.handle_online(now, jb.clone());
    drain(&mut a);
    drain(&mut b);
    let pa = presence_of(&a, &ja);
    let pb = presence_of(&b, &jb);
    a.handle_stanza(now, pb);
    b.handle_stanza(now, pa);
    Pair { now, a, b, ja, jb }
}

impl Pair {
    /// Exchanges stanzas until both sides are quiet, advancing virtual time 1 ms per round so
    /// pacing and timers can fire.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let moved = route(self.now, &mut self.a, &self.ja, &mut self.b, &self.jb)
                + route(self.now, &mut self.b, &self.jb, &mut self.a, &self.ja);
            self.now += Duration::from_millis(1);
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
            let pending = self
                .a
                .poll_timeout()
                .into_iter()
                .chain(self.b.poll_timeout())
                .any(|t| t <= self.now + Duration::from_millis(50));
            if moved == 0 && !pending {
                return;
            }
        }
    }
}

#[test]
fn members_find_each_other_and_exchange_addresses() {
    let mut p = pair();
    let ev = events(&mut p.a);
    assert!(ev.contains(&Event::MemberUp {
        jid: p.jb.clone(),
        node: node_id_of(&[2; 32])
    }));
    p.settle();
    let ev = events(&mut p.a);
    assert!(
        ev.contains(&Event::AddressesLearned { jid: p.jb.clone() }),
        "{ev:?}"
    );
    let m = p.a.member(&p.jb).unwrap();
    let addrs = m.addresses.as_ref().unwrap();
    assert_eq!(addrs.key, [2; 32]);
    assert_eq!(addrs.endpoints[0].uri, format!("xmpp://{}", p.jb));
}

#[test]
fn datagrams_flow_between_members() {
    let mut p = pair();
    p.settle();
    events(&mut p.b);
    let payload = vec![9u8; 40_000];
    p.a.send_datagram(p.now, &p.jb, &payload).unwrap();
    p.settle();
    let got: Vec<(FullJid, Option<NodeIdBytes>, bool)> = events(&mut p.b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Datagram { from, node, data } => Some((from, node, data == payload)),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![(p.ja.clone(), Some(node_id_of(&[1; 32])), true)]);
}

#[test]
fn strangers_get_no_answer_at_all() {
    let mut p = pair();
    drain(&mut p.a);
    let mallory = full("mallory@evil.test/x");
    let mut pres = Presence::new(PresenceType::None);
    pres.from = Some(mallory.clone().into());
    pres.payloads.push(
        OverlayTag {
            ns: names::overlay_ns("alpha"),
            node: [5; 20],
            key: None,
            cert: None,
        }
        .emit(),
    );
    p.a.handle_stanza(p.now, pres.into());
    let frame = RelayFrame {
        stream: 1,
        seq: 0,
        frag: Frag::WHOLE,
        data: b"evil".to_vec(),
    };
    let iq = Iq::Set {
        from: Some(mallory.clone().into()),
        to: Some(p.ja.clone().into()),
        id: "r1".into(),
        payload: frame.emit(),
    };
    p.a.handle_stanza(p.now, iq.into());
    let mut sub = Presence::new(PresenceType::Subscribe);
    sub.from = Some(bare("mallory@evil.test").into());
    p.a.handle_stanza(p.now, sub.into());
    assert!(drain(&mut p.a).is_empty(), "a stranger must get no answer");
    assert!(!p.a.rendezvous.is_member(&mallory));
    let ev = events(&mut p.a);
    assert!(!ev.iter().any(|e| matches!(e, Event::Datagram { .. })));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::MemberUp { jid, .. } if *jid == mallory)));
    assert_eq!(p.a.counters().strangers_ignored, 1);
    assert_eq!(p.a.rendezvous_counters().strangers_ignored, 2);
}

fn single_error(stanzas: Vec<Stanza>) -> (String, &'static str) {
    assert_eq!(stanzas.len(), 1, "{stanzas:?}");
    match &stanzas[0] {
        Stanza::Iq(Iq::Error { to, error, .. }) => (
            to.as_ref().map(|t| t.to_string()).unwrap_or_default(),
            stanzas::condition_name(&error.defined_condition),
        ),
        other => panic!("expected an IQ error, got {other:?}"),
    }
}

#[test]
fn friend_outside_the_overlay_is_refused_and_nothing_is_delivered() {
    let mut p = pair();
    drain(&mut p.a);
    events(&mut p.a);
    // bob's other instance runs overlay "beta"
    let beta = full("bob@two.test/ringlet.beta");
    let other = core("beta", 3, &[]);
    p.a.handle_stanza(p.now, presence_of(&other, &beta));
    let frame = RelayFrame {
        stream: 1,
        seq: 0,
        frag: Frag::WHOLE,
        data: b"hi".to_vec(),
    };
    let iq = Iq::Set {
        from: Some(beta.clone().into()),
        to: None,
        id: "r00000001.0.1".into(),
        payload: frame.emit(),
    };
    p.a.handle_stanza(p.now, iq.into());
    assert_eq!(
        single_error(drain(&mut p.a)),
        (beta.to_string(), "not-authorized")
    );
    let req = crate::wire::addresses::AddressRequest {
        ns: names::overlay_ns("alpha"),
    };
    let iq = Iq::Get {
        from: Some(beta.clone().into()),
        to: None,
        id: "a9".into(),
        payload: req.emit(),
    };
    p.a.handle_stanza(p.now, iq.into());
    assert_eq!(
        single_error(drain(&mut p.a)),
        (beta.to_string(), "not-authorized")
    );
    assert!(events(&mut p.a).is_empty());
    assert_eq!(p.a.counters().refused_not_member, 1);
}

#[test]
fn malformed_relay_payloads_are_rejected_and_counted() {
    let mut p = pair();
    drain(&mut p.a);
    events(&mut p.a);
    let bodies = [
        "<d xmlns='urn:ringlet:relay:0' stream='00000001' seq='1'>***</d>".to_string(),
        "<d xmlns='urn:ringlet:relay:0' stream='00000001' seq='x'>AA==</d>".to_string(),
        "<d xmlns='urn:ringlet:relay:0' seq='1'>AA==</d>".to_string(),
        format!(
            "<d xmlns='{NS_RELAY}' stream='00000001' seq='2'>{}</d>",
            "A".repeat(300 * 1024)
        ),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let payload: Element = body.parse().unwrap();
        let iq = Iq::Set {
            from: Some(p.jb.clone().into()),
            to: None,
            id: format!("m{i}"),
            payload,
        };
        p.a.handle_stanza(p.now, iq.into());
        assert_eq!(single_error(drain(&mut p.a)), (p.jb.to_string(), "bad-request"));
    }
    assert_eq!(p.a.counters().malformed_relay, bodies.len() as u64);
    assert!(events(&mut p.a).is_empty());
    // the node still works
    p.b.send_datagram(p.now, &p.ja, b"still alive").unwrap();
    p.settle();
    assert!(events(&mut p.a)
        .iter()
        .any(|e| matches!(e, Event::Datagram { data, .. } if data == b"still alive")));
}

#[test]
fn unavailable_presence_removes_the_member_and_fails_pending_datagrams() {
    let mut p = pair();
    p.settle();
    events(&mut p.a);
    p.a.send_datagram(p.now, &p.jb, b"lost").unwrap();
    drain(&mut p.a);
    let mut gone = Presence::new(PresenceType::Unavailable);
    gone.from = Some(p.jb.clone().into());
    p.a.handle_stanza(p.now, gone.into());
    let ev = events(&mut p.a);
    assert!(ev.contains(&Event::MemberDown {
        jid: p.jb.clone(),
        node: node_id_of(&[2; 32])
    }));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::PeerFailed { dropped: 1, .. })));
    assert!(matches!(
        p.a.send_datagram(p.now, &p.jb, b"x"),
        Err(SendError::NotMember(_))
    ));
}

#[test]
fn friends_are_subscribed_and_their_requests_accepted() {
    let now = Instant::now();
    let mut a = core("alpha", 1, &["bob@two.test"]);
    a.handle_online(now, full("alice@one.test/ringlet.a"));
    let first = drain(&mut a);
    assert!(first.iter().any(
        |s| matches!(s, Stanza::Iq(Iq::Get { payload, .. }) if payload.is("query", "jabber:iq:roster"))
    ));
    let roster: Element = "<query xmlns='jabber:iq:roster'/>".parse().unwrap();
    let id = first.iter().find_map(|s| match s {
        Stanza::Iq(Iq::Get { id, payload, .. }) if payload.is("query", "jabber:iq:roster") => {
            Some(id.clone())
        }
        _ => None,
    });
    a.handle_stanza(
        now,
        Iq::Result {
            from: None,
            to: None,
            id: id.unwrap(),
            payload: Some(roster),
        }
        .into(),
    );
    let out = drain(&mut a);
    let kinds: Vec<PresenceType> = out
        .iter()
        .filter_map(|s| match s {
            Stanza::Presence(p) if p.to.as_ref().is_some_and(|t| t.as_str() == "bob@two.test") => {
                Some(p.type_.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec![PresenceType::Subscribe, PresenceType::Subscribed]);
    let mut req = Presence::new(PresenceType::Subscribe);
    req.from = Some(bare("bob@two.test").into());
    a.handle_stanza(now, req.into());
    let out = drain(&mut a);
    assert!(out
        .iter()
        .any(|s| matches!(s, Stanza::Presence(p) if p.type_ == PresenceType::Subscribed)));
}

#[test]
fn extdisco_answer_is_reported() {
    let now = Instant::now();
    let mut a = core("alpha", 1, &[]);
    a.handle_online(now, full("alice@one.test/ringlet.a"));
    let id = drain(&mut a).into_iter().find_map(|s| match s {
        Stanza::Iq(Iq::Get { id, payload, .. }) if payload.is("services", crate::wire::NS_EXTDISCO) => {
            Some(id)
        }
        _ => None,
    });
    let services = vec![extdisco::Service {
        kind: "stun".into(),
        host: "127.0.0.1".into(),
        port: Some(3478),
        transport: Some("udp".into()),
        username: None,
        password: None,
        expires: None,
    }];
    // a forged answer from someone else is ignored
    let forged = Iq::Result {
        from: Some(full("mallory@evil.test/x").into()),
        to: None,
        id: id.clone().unwrap(),
        payload: Some(extdisco::emit(&services)),
    };
    a.handle_stanza(now, forged.into());
    assert_eq!(a.services(), None);
    let answer = Iq::Result {
        from: Some(bare("one.test").into()),
        to: None,
        id: id.unwrap(),
        payload: Some(extdisco::emit(&services)),
    };
    a.handle_stanza(now, answer.into());
    assert_eq!(a.services(), Some(&services[..]));
    assert!(events(&mut a).contains(&Event::Services(services)));
}

#[test]
fn seeking_asks_at_most_ten_members_per_round() {
    let now = Instant::now();
    let ja = full("alice@one.test/ringlet.a");
    let mut a = core("alpha", 1, &["bob@two.test"]);
    a.set_seeking(now, false);
    a.handle_online(now, ja);
    drain(&mut a);
    for i in 0..25u8 {
        let m = core("alpha", 10 + i, &[]);
        a.handle_stanza(now, presence_of(&m, &full(&format!("bob@two.test/r{i}"))));
    }
    assert!(drain(&mut a).is_empty(), "not seeking: no requests");
    a.set_seeking(now, true);
    let later = now + Duration::from_secs(16);
    a.handle_timeout(later);
    let asked = drain(&mut a)
        .iter()
        .filter(|s| matches!(s, Stanza::Iq(Iq::Get { .. })))
        .count();
    assert_eq!(asked, 10);
    let next = a.poll_timeout().unwrap();
    let gap = next.duration_since(later);
    assert!(
        gap >= Duration::from_secs(5) && gap <= Duration::from_secs(15),
        "next round in {gap:?}"
    );
}

#[test]
fn a_broken_connection_forgets_members_until_the_new_session_sees_them() {
    let mut p = pair();
    p.settle();
    events(&mut p.a);
    p.a.handle_suspended();
    assert_eq!(p.a.state(), SessionState::Suspended);
    assert_eq!(p.a.members().count(), 0);
    assert!(events(&mut p.a).contains(&Event::MemberDown {
        jid: p.jb.clone(),
        node: node_id_of(&[2; 32])
    }));
    assert!(matches!(
        p.a.send_datagram(p.now, &p.jb, b"x"),
        Err(SendError::NotMember(_))
    ));
    p.a.handle_online(p.now, p.ja.clone());
    let pb = presence_of(&p.b, &p.jb);
    p.a.handle_stanza(p.now, pb);
    assert!(p.a.member(&p.jb).is_some());
    assert_eq!(p.a.state(), SessionState::Online);
}
