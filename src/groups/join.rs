//! Join requests over XMPP, without I/O: the requester's proof that it holds its node key, and
//! the service's answer to each query.
//!
//! The XMPP server vouches for the requester's JID (it authenticated the account). The node key
//! is vouched for by `proof` = HMAC-SHA256 keyed with X25519(node secret, service key) over
//! the group, the requester's bare JID, the node key and a timestamp: only the holder of the
//! node's secret (or the service) can compute it, and it is bound to that JID and group.
//! Proofs older or newer than [`MAX_SKEW_S`] are refused, so a captured one soon stops working.

use ring::hmac;
use ringlet_xmpp::wire::join::{Answer, Query, Signed};
use ringlet_xmpp::BareJid;
use x25519_dalek::{PublicKey, StaticSecret};

use super::service::{JoinState, Service, ServiceError};
use crate::identity::NodeKey;

/// How far a request's timestamp may be from the service's clock.
pub const MAX_SKEW_S: u64 = 300;
const CONTEXT: &[u8] = b"ringlet join request v0\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("the node key is not a usable X25519 key")]
    WeakKey,
    #[error("the proof does not match: this request was not made by the holder of the node key")]
    Mismatch,
    #[error("the request is {0} s away from the service's clock (at most {MAX_SKEW_S})")]
    Stale(u64),
}

/// Signs a request (or poll) for `group` as `user` with `node`, for the service key `service`.
pub fn sign(
    node: &NodeKey,
    service: &[u8; 32],
    user: &BareJid,
    group: &str,
    ts: u64,
) -> Result<Signed, ProofError> {
    let node_key = node.public_bytes();
    let proof = compute(&node.secret_bytes(), service, user, group, &node_key, ts)?;
    Ok(Signed {
        group: group.to_owned(),
        node_key,
        ts,
        proof,
    })
}

/// Checks a request's proof with the service's own key.
pub fn verify(service: &NodeKey, user: &BareJid, signed: &Signed, now: u64) -> Result<(), ProofError> {
    let skew = now.abs_diff(signed.ts);
    if skew > MAX_SKEW_S {
        return Err(ProofError::Stale(skew));
    }
    let expected = compute(
        &service.secret_bytes(),
        &signed.node_key,
        user,
        &signed.group,
        &signed.node_key,
        signed.ts,
    )?;
    if super::constant_time_eq(&expected, &signed.proof) {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

fn compute(
    secret: &[u8; 32],
    peer: &[u8; 32],
    user: &BareJid,
    group: &str,
    node_key: &[u8; 32],
    ts: u64,
) -> Result<[u8; 32], ProofError> {
    let shared = StaticSecret::from(*secret).diffie_hellman(&PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(ProofError::WeakKey);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, shared.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(CONTEXT);
    for part in [group.as_bytes(), user.as_str().as_bytes()] {
        ctx.update(&(part.len() as u16).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(node_key);
    ctx.update(&ts.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    Ok(out)
}

/// Why a query was refused, as a stanza error condition name and a text for the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// RFC 6120 condition: `item-not-found`, `conflict`, `forbidden`, `not-acceptable`,
    /// `resource-constraint`, `bad-request` or `internal-server-error`.
    pub condition: &'static str,
    pub text: String,
}

/// The service's answer to one query from `from` (a bare JID the server authenticated).
pub fn answer(
    service: &Service,
    key: &NodeKey,
    from: &BareJid,
    query: Query,
    now: u64,
) -> Result<Answer, Refusal> {
    let refuse = |condition, text: String| Refusal { condition, text };
    let (signed, is_request) = match query {
        Query::Service => {
            return Ok(Answer::Service {
                key: key.public_bytes(),
            })
        }
        Query::Request(s) => (s, true),
        Query::State(s) => (s, false),
    };
    verify(key, from, &signed, now).map_err(|e| {
        let condition = if matches!(e, ProofError::Stale(_)) {
            "not-acceptable"
        } else {
            "forbidden"
        };
        refuse(condition, e.to_string())
    })?;
    let state = if is_request {
        service.request(&signed.group, from, &signed.node_key, now)
    } else {
        service.join_state(&signed.group, &signed.node_key)
    };
    match state {
        Ok(JoinState::Pending { request }) => Ok(Answer::Pending {
            request: request as u64,
        }),
        Ok(JoinState::Denied) => Ok(Answer::Denied),
        Ok(JoinState::Approved { cert }) => Ok(Answer::Approved { cert }),
        Err(e) => Err(refuse(
            match e {
                ServiceError::UnknownGroup(_) | ServiceError::NotFound(_) => "item-not-found",
                ServiceError::Duplicate(_) => "conflict",
                ServiceError::Refused(_) => "forbidden",
                ServiceError::Invalid(_) => "bad-request",
                ServiceError::Store(_) | ServiceError::Random(_) => "internal-server-error",
            },
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn only_the_key_holder_proves_a_request_for_its_jid_and_group() {
        let service = NodeKey::from_secret([1; 32]);
        let bob = NodeKey::from_secret([2; 32]);
        let jid: BareJid = "bob@example.org".parse().unwrap();
        let signed = sign(&bob, &service.public_bytes(), &jid, "friends", NOW).unwrap();
        assert_eq!(verify(&service, &jid, &signed, NOW + 10), Ok(()));

        let mallory: BareJid = "mallory@example.org".parse().unwrap();
        assert_eq!(
            verify(&service, &mallory, &signed, NOW),
            Err(ProofError::Mismatch)
        );
        let other_group = Signed {
            group: "others".into(),
            ..signed.clone()
        };
        assert_eq!(
            verify(&service, &jid, &other_group, NOW),
            Err(ProofError::Mismatch)
        );
        // Someone else's node key with a proof made from another secret.
        let eve = NodeKey::from_secret([3; 32]);
        let forged = Signed {
            node_key: bob.public_bytes(),
            ..sign(&eve, &service.public_bytes(), &jid, "friends", NOW).unwrap()
        };
        assert_eq!(verify(&service, &jid, &forged, NOW), Err(ProofError::Mismatch));
        assert!(matches!(
            verify(&service, &jid, &signed, NOW + 301),
            Err(ProofError::Stale(301))
        ));
        // A low-order "key" would make the shared secret known to everyone.
        let weak = Signed {
            node_key: [0; 32],
            proof: [0; 32],
            ..signed
        };
        assert_eq!(verify(&service, &jid, &weak, NOW), Err(ProofError::WeakKey));
    }
}
