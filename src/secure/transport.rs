//! Datagram protection for an established session: ChaCha20-Poly1305 (ring's assembly
//! implementation, ~4x the portable one here) keyed by the Noise handshake's split, an explicit 64-bit counter per datagram (the Noise transport nonce:
//! 4 zero bytes then the counter, little-endian), the packet header as associated data, a
//! replay window, and the age and volume after which a fresh handshake must replace the
//! session. Keys are erased when the transport is dropped.

use std::time::{Duration, Instant};

use std::mem::MaybeUninit;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

use super::replay::ReplayWindow;

pub const TAG_LEN: usize = 16;
/// A session this old asks for a new handshake (WireGuard's REKEY_AFTER_TIME).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session this old is dead: nothing is sealed or opened with it any more.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Datagrams sealed before a session asks for a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 40;
/// Datagrams after which a session seals nothing more (far below nonce reuse).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 16);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("session too old or used up; a new handshake is needed")]
    Expired,
    #[error("datagram replayed or older than the replay window")]
    Replay,
    #[error("datagram does not authenticate")]
    Forged,
    #[error("datagram shorter than its tag")]
    Short,
}

/// A ring AEAD key that is overwritten with zeros when dropped: ring keeps key material in
/// the key object and does not erase it.
struct ErasedKey(Box<MaybeUninit<LessSafeKey>>);

// Overwriting is sound only because the key has no destructor of its own to run afterwards.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

impl ErasedKey {
    fn new(bytes: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is what ChaCha20-Poly1305 takes"));
        ErasedKey(Box::new(MaybeUninit::new(LessSafeKey::new(key))))
    }

    fn key(&self) -> &LessSafeKey {
        // SAFETY: initialised in `new`; overwritten only in `drop`, after which it is unused.
        unsafe { self.0.assume_init_ref() }
    }
}

impl Drop for ErasedKey {
    fn drop(&mut self) {
        let p = self.0.as_mut_ptr().cast::<u8>();
        for i in 0..std::mem::size_of::<LessSafeKey>() {
            // SAFETY: in bounds of the boxed key; volatile so the erasure is not optimised
            // away as a dead store before the memory is freed.
            unsafe { std::ptr::write_volatile(p.add(i), 0) };
        }
    }
}

pub struct Transport {
    send: ErasedKey,
    recv: ErasedKey,
    next_counter: u64,
    replay: ReplayWindow,
    started: Instant,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transport(sent {})", self.next_counter)
    }
}

impl Transport {
    /// Takes the keys (and erases the caller's copies).
    pub fn new(now: Instant, send_key: &mut [u8; 32], recv_key: &mut [u8; 32]) -> Self {
        let t = Transport {
            send: ErasedKey::new(send_key),
            recv: ErasedKey::new(recv_key),
            next_counter: 0,
            replay: ReplayWindow::default(),
            started: now,
        };
        send_key.zeroize();
        recv_key.zeroize();
        t
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The counter the next sealed datagram will carry (for the header it is bound to).
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    pub fn wants_rekey(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= REKEY_AFTER_TIME
            || self.next_counter >= REKEY_AFTER_MESSAGES
    }

    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= REJECT_AFTER_TIME
            || self.next_counter >= REJECT_AFTER_MESSAGES
    }

    /// Encrypts `buf` in place and appends the tag; `header` (which must hold
    /// [`Transport::next_counter`]) is authenticated with it. Returns the counter used.
    pub fn seal(&mut self, now: Instant, header: &[u8], buf: &mut Vec<u8>) -> Result<u64, TransportError> {
        if self.expired(now) {
            return Err(TransportError::Expired);
        }
        let counter = self.next_counter;
        let tag = self
            .send
            .key()
            .seal_in_place_separate_tag(nonce(counter), Aad::from(header), buf)
            .map_err(|_| TransportError::Expired)?;
        buf.extend_from_slice(tag.as_ref());
        self.next_counter += 1;
        Ok(counter)
    }

    /// Authenticates and decrypts `buf` (ciphertext then tag) in place, leaving the plaintext.
    /// Replays, forgeries and datagrams of a dead session change nothing.
    pub fn open(
        &mut self,
        now: Instant,
        header: &[u8],
        counter: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        if now.saturating_duration_since(self.started) >= REJECT_AFTER_TIME {
            return Err(TransportError::Expired);
        }
        if buf.len() < TAG_LEN {
            return Err(TransportError::Short);
        }
        if !self.replay.fresh(counter) {
            return Err(TransportError::Replay);
        }
        let split = buf.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buf[split..]);
        let mut body = std::mem::take(buf);
        body.truncate(split);
        let opened = self.recv.key().open_in_place_separate_tag(
            nonce(counter),
            Aad::from(header),
            Tag::from(tag),
            &mut body,
            0..,
        );
        if opened.is_err() {
            body.zeroize();
            return Err(TransportError::Forged);
        }
        self.replay.accept(counter);
        *buf = body;
        Ok(())
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
mod tests {
    use super::*;

    fn pair(now: Instant) -> (Transport, Transport) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let alice = Transport::new(now, &mut a.clone(), &mut b.clone());
        let bob = Transport::new(now, &mut b.clone(), &mut a.clone());
        (alice, bob)
    }

    #[test]
    fn sealed_datagrams_open_once_in_any_order() {
        let now = Instant::now();
        let (mut alice, mut bob) = pair(now);
        let mut sealed = Vec::new();
        for i in 0..3u8 {
            let mut buf = vec![i; 100];
            let c = alice.seal(now, b"hdr", &mut buf).unwrap();
            assert_eq!(buf.len(), 100 + TAG_LEN);
            sealed.push((c, buf));
        }
        for (c, buf) in sealed.iter().rev() {
            let mut b = buf.clone();
            bob.open(now, b"hdr", *c, &mut b).unwrap();
            assert_eq!(b, vec![*c as u8; 100]);
        }
        let mut again = sealed[1].1.clone();
        assert_eq!(bob.open(now, b"hdr", 1, &mut again), Err(TransportError::Replay));
    }

    #[test]
    fn forged_truncated_or_rebound_datagrams_are_refused_and_leave_the_window_alone() {
        let now = Instant::now();
        let (mut alice, mut bob) = pair(now);
        let mut buf = b"secret".to_vec();
        let c = alice.seal(now, b"hdr", &mut buf).unwrap();
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(bob.open(now, b"hdr", c, &mut b), Err(TransportError::Forged));
        }
        let mut other_header = buf.clone();
        assert_eq!(
            bob.open(now, b"hdX", c, &mut other_header),
            Err(TransportError::Forged)
        );
        let mut other_counter = buf.clone();
        assert_eq!(
            bob.open(now, b"hdr", c + 1, &mut other_counter),
            Err(TransportError::Forged)
        );
        let mut short = buf[..TAG_LEN - 1].to_vec();
        assert_eq!(bob.open(now, b"hdr", c, &mut short), Err(TransportError::Short));
        // None of that consumed the counter: the real datagram still opens.
        bob.open(now, b"hdr", c, &mut buf).unwrap();
        assert_eq!(buf, b"secret");
    }

    #[test]
    fn old_sessions_ask_for_a_handshake_then_refuse_to_work() {
        let now = Instant::now();
        let (mut alice, _) = pair(now);
        assert!(!alice.wants_rekey(now));
        assert!(alice.wants_rekey(now + REKEY_AFTER_TIME));
        let late = now + REJECT_AFTER_TIME;
        assert!(alice.expired(late));
        assert_eq!(alice.seal(late, b"", &mut vec![0]), Err(TransportError::Expired));
    }
}
