//! Datagram protection for an established session: an AEAD ([`Cipher`]: AES-256-GCM when
//! both sides have AES instructions, else ChaCha20-Poly1305; ring's assembly for both) keyed
//! by the Noise handshake's split, an explicit 64-bit counter per datagram (the Noise transport nonce:
//! 4 zero bytes then the counter, little-endian), the packet header as associated data, a
//! replay window, and the age and volume after which a fresh handshake must replace the
//! session. Keys are erased when the transport is dropped.
//!
//! Busy sessions live as WireGuard's do (a new handshake after 2 min, dead after 3). A quiet
//! one — an idle overlay link whose only traffic is keepalives and upkeep, fewer than
//! [`BUSY_AFTER_MESSAGES`] datagrams both ways — rekeys after 30 min instead (OpenVPN's
//! default is an hour, SSH's is a volume limit only): a handshake carries both certificates,
//! and at one per link every 2 min they were a fifth of an idle node's traffic, at one every
//! 10 min still a sixth. The price is a longer forward-secrecy window for that control
//! traffic only; once a session turns busy it is due for a handshake at once (or at 2 min of
//! age) and dies a minute after that.

use std::time::{Duration, Instant};

use std::mem::MaybeUninit;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use zeroize::Zeroize;

use super::replay::ReplayWindow;

pub const TAG_LEN: usize = 16;
/// A busy session this old asks for a new handshake (WireGuard's REKEY_AFTER_TIME).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session is dead this long after its handshake was due: nothing is sealed or opened with
/// it any more (WireGuard's REJECT_AFTER_TIME − REKEY_AFTER_TIME).
pub const REJECT_GRACE: Duration = Duration::from_secs(60);
/// A quiet session this old asks for a new handshake.
pub const QUIET_REKEY_AFTER_TIME: Duration = Duration::from_secs(1800);
/// Datagrams, sealed and opened together, after which a session counts as busy.
pub const BUSY_AFTER_MESSAGES: u64 = 512;
/// The session's responder starts a handshake this long after the initiator would, so the
/// two rarely cross.
pub const RESPONDER_REKEY_DELAY: Duration = Duration::from_secs(10);
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

/// The AEAD that seals a session's datagrams. Each side says in its hello whether its CPU has
/// AES instructions ([`Cipher::HELLO_AES`]); with both, AES-256-GCM (3.8 GB/s against
/// ChaCha20-Poly1305's 1.5 for 1,300-byte packets on the build machine's CPU), else
/// ChaCha20-Poly1305, which is the faster one without AES hardware and constant-time in
/// software. Both take the 32-byte keys and the 96-bit counter nonce as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    ChaCha20Poly1305,
    Aes256Gcm,
}

impl Cipher {
    /// The hello flag: this side has AES instructions.
    pub const HELLO_AES: u8 = 1;

    /// The flags our hello carries on this CPU.
    pub fn local_flags() -> u8 {
        if hardware_aes() {
            Cipher::HELLO_AES
        } else {
            0
        }
    }

    /// The cipher two sides with these hello flags use.
    pub fn agreed(ours: u8, theirs: u8) -> Cipher {
        if ours & theirs & Cipher::HELLO_AES != 0 {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }
}

/// Whether this CPU has the instructions ring's fast AES-GCM needs (AES and carry-less
/// multiplication).
fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A ring AEAD key that is overwritten with zeros when dropped: ring keeps key material in
/// the key object and does not erase it.
struct ErasedKey(Box<MaybeUninit<LessSafeKey>>);

// Overwriting is sound only because the key has no destructor of its own to run afterwards.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

impl ErasedKey {
    fn new(cipher: Cipher, bytes: &[u8; 32]) -> Self {
        let key = UnboundKey::new(cipher.algorithm(), bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is what both ciphers take"));
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
    cipher: Cipher,
    send: ErasedKey,
    recv: ErasedKey,
    next_counter: u64,
    opened: u64,
    replay: ReplayWindow,
    started: Instant,
    /// When sealed + opened reached [`BUSY_AFTER_MESSAGES`].
    busy_since: Option<Instant>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transport(sent {})", self.next_counter)
    }
}

impl Transport {
    /// Takes the keys (and erases the caller's copies).
    pub fn new(now: Instant, cipher: Cipher, send_key: &mut [u8; 32], recv_key: &mut [u8; 32]) -> Self {
        let t = Transport {
            cipher,
            send: ErasedKey::new(cipher, send_key),
            recv: ErasedKey::new(cipher, recv_key),
            next_counter: 0,
            opened: 0,
            replay: ReplayWindow::default(),
            started: now,
            busy_since: None,
        };
        send_key.zeroize();
        recv_key.zeroize();
        t
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The counter the next sealed datagram will carry (for the header it is bound to).
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// When this session asks for a new handshake: 2 min after it started if it is busy (or
    /// when it turned busy, if that was later), else 30 min after.
    pub fn rekey_at(&self) -> Instant {
        match self.busy_since {
            Some(busy) => (self.started + REKEY_AFTER_TIME).max(busy),
            None => self.started + QUIET_REKEY_AFTER_TIME,
        }
    }

    /// When this session stops sealing and opening.
    pub fn reject_at(&self) -> Instant {
        self.rekey_at() + REJECT_GRACE
    }

    pub fn wants_rekey(&self, now: Instant) -> bool {
        now >= self.rekey_at() || self.next_counter >= REKEY_AFTER_MESSAGES
    }

    /// Whether the side that sealed with this session should start a handshake now: the
    /// session's initiator as soon as one is wanted, the responder a little later.
    pub fn rekey_due(&self, now: Instant, initiator: bool) -> bool {
        self.wants_rekey(now) && (initiator || now >= self.rekey_at() + RESPONDER_REKEY_DELAY)
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.reject_at() || self.next_counter >= REJECT_AFTER_MESSAGES
    }

    fn count(&mut self, now: Instant) {
        if self.busy_since.is_none() && self.next_counter + self.opened >= BUSY_AFTER_MESSAGES {
            self.busy_since = Some(now);
        }
    }

    /// Encrypts `buf` in place and appends the tag; `header` (which must hold
    /// [`Transport::next_counter`]) is authenticated with it. Returns the counter used.
    pub fn seal(&mut self, now: Instant, header: &[u8], buf: &mut Vec<u8>) -> Result<u64, TransportError> {
        let (counter, tag) = self.seal_in_place(now, header, buf)?;
        buf.extend_from_slice(&tag);
        Ok(counter)
    }

    /// Encrypts `buf` in place and returns the counter used and the tag, which the caller
    /// puts right after it (for a caller that built the whole datagram around `buf`).
    pub fn seal_in_place(
        &mut self,
        now: Instant,
        header: &[u8],
        buf: &mut [u8],
    ) -> Result<(u64, [u8; TAG_LEN]), TransportError> {
        if self.expired(now) {
            return Err(TransportError::Expired);
        }
        let counter = self.next_counter;
        let tag = self
            .send
            .key()
            .seal_in_place_separate_tag(nonce(counter), Aad::from(header), buf)
            .map_err(|_| TransportError::Expired)?;
        self.next_counter += 1;
        self.count(now);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok((counter, out))
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
        self.open_at(now, header, counter, buf, 0)
    }

    /// [`Transport::open`] of the ciphertext and tag in `buf[at..]`: the plaintext replaces
    /// all of `buf` (decrypted and moved to the front in one pass), so a caller can open a
    /// received datagram where it lies, headers and all.
    pub fn open_at(
        &mut self,
        now: Instant,
        header: &[u8],
        counter: u64,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<(), TransportError> {
        if now >= self.reject_at() {
            return Err(TransportError::Expired);
        }
        if buf.len() < at + TAG_LEN {
            return Err(TransportError::Short);
        }
        if !self.replay.fresh(counter) {
            return Err(TransportError::Replay);
        }
        let opened = self
            .recv
            .key()
            .open_within(nonce(counter), Aad::from(header), buf, at..)
            .map(|plain| plain.len());
        match opened {
            Ok(len) => {
                buf.truncate(len);
                self.replay.accept(counter);
                self.opened += 1;
                self.count(now);
                Ok(())
            }
            Err(_) => {
                // Whatever was decrypted before the tag failed is not left behind.
                buf.zeroize();
                Err(TransportError::Forged)
            }
        }
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

    fn pair_with(now: Instant, cipher: Cipher) -> (Transport, Transport) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let alice = Transport::new(now, cipher, &mut a.clone(), &mut b.clone());
        let bob = Transport::new(now, cipher, &mut b.clone(), &mut a.clone());
        (alice, bob)
    }

    fn pair(now: Instant) -> (Transport, Transport) {
        pair_with(now, Cipher::ChaCha20Poly1305)
    }

    #[test]
    fn aes_gcm_only_when_both_sides_have_aes_instructions() {
        let aes = Cipher::HELLO_AES;
        assert_eq!(Cipher::agreed(aes, aes), Cipher::Aes256Gcm);
        assert_eq!(Cipher::agreed(aes, 0), Cipher::ChaCha20Poly1305);
        assert_eq!(Cipher::agreed(0, aes), Cipher::ChaCha20Poly1305);
        assert_eq!(
            Cipher::agreed(0xfe, 0xff),
            Cipher::ChaCha20Poly1305,
            "unknown flags mean nothing"
        );
        // The two ciphers do not open each other's datagrams.
        let now = Instant::now();
        let (mut aes_alice, mut aes_bob) = pair_with(now, Cipher::Aes256Gcm);
        let (_, mut chacha_bob) = pair(now);
        let mut buf = b"over aes".to_vec();
        let c = aes_alice.seal(now, b"hdr", &mut buf).unwrap();
        let mut copy = buf.clone();
        assert_eq!(
            chacha_bob.open(now, b"hdr", c, &mut copy),
            Err(TransportError::Forged)
        );
        aes_bob.open(now, b"hdr", c, &mut buf).unwrap();
        assert_eq!(buf, b"over aes");
    }

    #[test]
    fn sealed_datagrams_open_once_in_any_order() {
        for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            sealed_datagrams_open_once_with(cipher);
        }
    }

    fn sealed_datagrams_open_once_with(cipher: Cipher) {
        let now = Instant::now();
        let (mut alice, mut bob) = pair_with(now, cipher);
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
    fn a_datagram_opens_where_it_lies_behind_its_headers() {
        for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            let now = Instant::now();
            let (mut alice, mut bob) = pair_with(now, cipher);
            let mut sealed = b"inner frame".to_vec();
            let c = alice.seal(now, b"hdr", &mut sealed).unwrap();
            let mut datagram = [b"outer+hdr".as_slice(), &sealed].concat();
            let mut forged = datagram.clone();
            forged[12] ^= 1;
            assert_eq!(
                bob.open_at(now, b"hdr", c, &mut forged, 9),
                Err(TransportError::Forged)
            );
            assert!(forged.iter().all(|&b| b == 0), "nothing decrypted is left behind");
            let mut short = datagram[..9 + TAG_LEN - 1].to_vec();
            assert_eq!(
                bob.open_at(now, b"hdr", c, &mut short, 9),
                Err(TransportError::Short)
            );
            bob.open_at(now, b"hdr", c, &mut datagram, 9).unwrap();
            assert_eq!(datagram, b"inner frame", "{cipher:?}");
        }
    }

    /// Makes a session busy: `n` datagrams from alice to bob at `at`.
    fn traffic(alice: &mut Transport, bob: &mut Transport, at: Instant, n: u64) {
        for _ in 0..n {
            let mut buf = vec![0u8; 8];
            let c = alice.seal(at, b"", &mut buf).unwrap();
            bob.open(at, b"", c, &mut buf).unwrap();
        }
    }

    #[test]
    fn busy_sessions_ask_for_a_handshake_at_2_min_then_refuse_to_work_at_3() {
        let now = Instant::now();
        let (mut alice, mut bob) = pair(now);
        traffic(&mut alice, &mut bob, now, BUSY_AFTER_MESSAGES);
        assert!(!alice.wants_rekey(now));
        assert!(alice.wants_rekey(now + REKEY_AFTER_TIME));
        assert!(
            bob.wants_rekey(now + REKEY_AFTER_TIME),
            "the receiver counts opened datagrams"
        );
        assert!(alice.rekey_due(now + REKEY_AFTER_TIME, true));
        assert!(
            !alice.rekey_due(now + REKEY_AFTER_TIME, false),
            "the responder waits"
        );
        let late = now + REKEY_AFTER_TIME + REJECT_GRACE;
        assert!(alice.expired(late));
        assert_eq!(alice.seal(late, b"", &mut vec![0]), Err(TransportError::Expired));
        let mut buf = vec![0u8; TAG_LEN];
        assert_eq!(
            bob.open(late, b"", 99_999, &mut buf),
            Err(TransportError::Expired)
        );
    }

    #[test]
    fn quiet_sessions_live_30_min_and_turning_busy_late_rekeys_at_once() {
        let now = Instant::now();
        let (mut alice, mut bob) = pair(now);
        traffic(&mut alice, &mut bob, now, BUSY_AFTER_MESSAGES - 2);
        let later = now + Duration::from_secs(300);
        assert!(
            !alice.wants_rekey(later),
            "a quiet session keeps its keys past 2 min"
        );
        assert!(!alice.expired(later));
        assert!(alice.wants_rekey(now + QUIET_REKEY_AFTER_TIME));
        assert!(alice.expired(now + QUIET_REKEY_AFTER_TIME + REJECT_GRACE));
        // At 5 min the session turns busy: a handshake is due now, and the keys die 1 min on.
        traffic(&mut alice, &mut bob, later, 2);
        assert!(alice.wants_rekey(later) && bob.wants_rekey(later));
        assert!(!alice.expired(later + REJECT_GRACE - Duration::from_secs(1)));
        assert!(alice.expired(later + REJECT_GRACE) && bob.expired(later + REJECT_GRACE));
    }
}
