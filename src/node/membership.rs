//! The node's own group membership at start: its installed certificate must be of this
//! node's key and account and valid now, or the node does not start (it could link with no
//! one). The result arms the link layer's security.

#![allow(clippy::disallowed_methods)] // the runtime reads the wall clock (certificate expiry)

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::identity::NodeKey;
use crate::link::Security;
use crate::secure::files;
use crate::secure::noise::Local;
use crate::secure::revocation::Crl;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "no usable group certificate at {path}: {reason}. Ask your group's admin for one \
         (`ringlet id` prints what they need) and install it with `ringlet group join`"
    )]
    Missing { path: String, reason: String },
    #[error("the group certificate at {path} {reason}")]
    Wrong { path: String, reason: String },
    #[error("the revocation list cannot be used: {0}")]
    Crl(String),
}

/// Loads and checks this node's certificate; returns the link layer's security settings and
/// the certificate's bytes (rendezvous hands them out with our addresses).
/// (The third part is our side of end-to-end sessions: the same key and certificate.)
/// The wall clock in unix seconds: what certificate expiries and join proofs are judged by.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn security(config: &Config, key: &NodeKey) -> Result<(Security, Vec<u8>, Local), MembershipError> {
    let path = config.group_cert.display().to_string();
    let cert = files::read_cert(&config.group_cert).map_err(|e| MembershipError::Missing {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let wrong = |reason: String| MembershipError::Wrong {
        path: path.clone(),
        reason,
    };
    if cert.node_key != key.public_bytes() {
        return Err(wrong(format!(
            "is for node {}, this node is {}",
            cert.node_id(),
            key.node_id()
        )));
    }
    if cert.user != config.jid.to_string() {
        return Err(wrong(format!(
            "is for {}, this node logs in as {}",
            cert.user, config.jid
        )));
    }
    let unix = unix_now();
    cert.verify(&cert.ca, unix)
        .map_err(|e| wrong(format!("is not valid: {e}")))?;
    let crl = Crl::load(&config.group_crl, &cert.ca).map_err(|e| MembershipError::Crl(e.to_string()))?;
    if crl.revokes(&cert) {
        return Err(wrong("is revoked (see the revocation list)".into()));
    }
    let e2e = Local::new(key.secret_bytes(), &cert, crl.version());
    let security = Security {
        local: Local::new(key.secret_bytes(), &cert, crl.version()),
        ca: cert.ca,
        epoch: Instant::now(),
        epoch_unix: unix,
        crl,
    };
    Ok((security, cert.emit(), e2e))
}
