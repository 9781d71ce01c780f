//! Cookies, WireGuard's defence against handshake floods, fitted to NATed peers. Reading an
//! init costs Diffie-Hellman work and a slot of half-open state; when more than
//! `Config::cookie_after` inits arrive within a second, a node answers inits that carry no
//! valid cookie with a cookie and nothing else — no state kept, no key work done. The cookie is
//! a MAC over the peer's NodeId and the path the init came by (the relay, or the socket and
//! address), under a secret that changes every two minutes; the initiator sends its init
//! again carrying it, which proves it receives on that path. Addresses alone would not do: a
//! NAT puts many peers behind one, and rebinds them.

use std::time::{Duration, Instant};

use rand::RngExt;
use ring::hmac;
use ringlet_xmpp::NodeIdBytes;

use super::secure::Via;
use crate::secure::wire::COOKIE_LEN;

/// How long a secret makes cookies; a cookie is taken under the current and the previous one.
pub const SECRET_FOR: Duration = Duration::from_secs(120);
/// How long an initiator uses a cookie it was given.
pub const COOKIE_FOR: Duration = Duration::from_secs(120);

#[derive(Default)]
pub(super) struct Cookies {
    /// Current and previous secrets, and when the current one was made.
    secrets: Option<([u8; 32], [u8; 32], Instant)>,
    /// Inits seen in the second that began at `.0`.
    load: Option<(Instant, u32)>,
}

impl Cookies {
    /// Counts an init; true when more than `limit` came within the current second.
    pub(super) fn busy(&mut self, now: Instant, limit: u32) -> bool {
        let (start, count) = match self.load {
            Some((start, count)) if now < start + Duration::from_secs(1) => (start, count + 1),
            _ => (now, 1),
        };
        self.load = Some((start, count));
        count > limit
    }

    /// A cookie for `peer` on `via`, under the current secret (made or rotated as needed).
    pub(super) fn make(
        &mut self,
        now: Instant,
        rng: &mut impl RngExt,
        peer: &NodeIdBytes,
        via: Via,
    ) -> [u8; COOKIE_LEN] {
        let current = match self.secrets {
            Some((current, _, made)) if now < made + SECRET_FOR => current,
            Some((current, _, _)) => {
                let fresh = rng.random();
                self.secrets = Some((fresh, current, now));
                fresh
            }
            None => {
                let fresh = rng.random();
                self.secrets = Some((fresh, rng.random(), now));
                fresh
            }
        };
        mac(&current, peer, via)
    }

    /// Whether `cookie` is one we made for `peer` on `via` lately.
    pub(super) fn check(
        &self,
        now: Instant,
        peer: &NodeIdBytes,
        via: Via,
        cookie: &[u8; COOKIE_LEN],
    ) -> bool {
        let Some((current, previous, made)) = self.secrets else {
            return false;
        };
        let fresh = now < made + SECRET_FOR * 2;
        fresh
            && [current, previous].iter().any(|secret| {
                // Compared in constant time: the MAC must not leak byte by byte.
                let diff = mac(secret, peer, via)
                    .iter()
                    .zip(cookie)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                diff == 0
            })
    }
}

fn mac(secret: &[u8; 32], peer: &NodeIdBytes, via: Via) -> [u8; COOKIE_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"ringlet cookie v0\0");
    ctx.update(peer);
    match via {
        Via::Relay(_) => ctx.update(b"R"),
        Via::Udp(socket, from) => {
            ctx.update(b"U");
            ctx.update(&socket.to_be_bytes());
            ctx.update(from.to_string().as_bytes());
        }
    }
    let tag = ctx.sign();
    let mut out = [0u8; COOKIE_LEN];
    out.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
    out
}
