//! The DHT in the daemon: keys are names hashed onto the ring (the first 160 bits of their
//! SHA-256), values are at most 1 KiB. A put goes out at once and is kept alive (re-put at
//! half its lease) while the node runs; a get waits for the ring's answer, which comes when
//! enough replica points answered or after the ring's retries gave up.

use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::runtime::Runtime;
use crate::overlay::dht::Found;
use crate::overlay::ring::ServiceError;
use crate::overlay::RingAddr;

/// Lease of a put when none is given.
pub const DEFAULT_LEASE_S: u32 = 3600;

/// Most gets waiting for an answer at once.
const MAX_WAITING_GETS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    #[error(transparent)]
    Ring(#[from] ServiceError),
    #[error("no replica answered (is the ring formed? see `ringlet status`)")]
    NoAnswer,
    #[error("a lease of 0 s would remove the value; use remove")]
    ZeroLease,
    #[error("the node has stopped")]
    Stopped,
}

pub type GetReply = oneshot::Sender<Result<Vec<Vec<u8>>, DhtError>>;

/// Where the name `key` lives on the ring.
pub fn key_addr(key: &str) -> RingAddr {
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&digest[..20]);
    RingAddr::from_bytes(bytes)
}

impl Runtime {
    pub(super) fn dht_put(
        &mut self,
        now: Instant,
        key: &str,
        value: Vec<u8>,
        lease_s: u32,
    ) -> Result<(), DhtError> {
        if lease_s == 0 {
            return Err(DhtError::ZeroLease);
        }
        Ok(self.ring.dht_put(now, key_addr(key), value, lease_s)?)
    }

    pub(super) fn dht_remove(&mut self, now: Instant, key: &str, value: Vec<u8>) -> Result<(), DhtError> {
        Ok(self.ring.dht_remove(now, key_addr(key), value)?)
    }

    pub(super) fn dht_get(&mut self, now: Instant, key: &str, reply: GetReply) {
        if self.dht_gets.len() >= MAX_WAITING_GETS {
            let _ = reply.send(Err(DhtError::Ring(ServiceError::Busy)));
            return;
        }
        match self.ring.dht_get(now, key_addr(key)) {
            Ok(id) => {
                self.dht_gets.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// The ring finished a lookup: answer whoever waits for it.
    pub(super) fn dht_found(&mut self, found: Found) {
        let Some(reply) = self.dht_gets.remove(&found.id) else {
            return;
        };
        let answer = if found.answered == 0 {
            Err(DhtError::NoAnswer)
        } else {
            Ok(found.values.into_iter().map(|(v, _)| v).collect())
        };
        let _ = reply.send(answer);
    }
}
