//! The Noise handshake (sans-IO, over the `snow` crate): IK when the peer's static key is
//! known (rendezvous publishes it; one round trip), XX otherwise (one and a half). Both carry
//! a hello — member certificate, CRL version, timestamp, and (IK inits) early frames — as
//! encrypted payload, and the
//! prologue binds the group's CA key and the purpose (link or end-to-end), so nodes of
//! another group fail to decrypt rather than reach certificate checks.
//!
//! Use:
//! 1. the initiator calls [`Initiating::start`] and sends the packet;
//! 2. the responder calls [`respond`]: IK gives [`Responded::Done`] with the response to send;
//!    XX gives [`Responded::Awaiting`] and the response, then [`Responding::on_final`];
//! 3. the initiator calls [`Initiating::on_response`]: an [`Established`] session, plus (XX)
//!    the final packet to send.
//!
//! Each step takes a `verify` callback that judges the peer ([`Peer`]: the static key the
//! handshake proved and the certificate it presented) before any session exists.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher as NoiseCipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};
use zeroize::Zeroizing;

use super::cert::{CertError, MemberCert};
use super::transport::{Cipher, Transport};
use super::wire::{self, PATTERN_IK, PATTERN_XX};
use crate::codec::Reader;

const IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
const XX: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Version 1 added the cipher flags; version 0 hellos are still read (no flags: ChaCha).
const HELLO_VERSION: u8 = 1;

/// What the handshake protects: a link (one hop) or an end-to-end session across the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Link,
    EndToEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake message does not decrypt (another group, a stale key or a forgery)")]
    Noise,
    #[error("malformed handshake payload")]
    Hello,
    #[error("peer refused: {0}")]
    Refused(#[from] CertError),
    #[error("handshake message of the wrong pattern or step")]
    Step,
}

/// Most early frames an IK init carries, and their total size.
pub const MAX_EARLY: usize = 4;
pub const MAX_EARLY_BYTES: usize = 8 * 1024;

/// Our side: static key, group, and what our hello presents.
pub struct Local {
    secret: Zeroizing<[u8; 32]>,
    ca: [u8; 32],
    cert: Vec<u8>,
    crl_version: u64,
    /// The flags our hellos carry ([`Cipher`]'s and [`HELLO_FRAGMENTS`]).
    ciphers: u8,
}

/// The hello flag: this side rebuilds records sent in fragments (`link::fragment`).
pub const HELLO_FRAGMENTS: u8 = 2;

impl Local {
    pub fn new(secret: [u8; 32], cert: &MemberCert, crl_version: u64) -> Self {
        Local {
            secret: Zeroizing::new(secret),
            ca: cert.ca,
            cert: cert.emit(),
            crl_version,
            ciphers: Cipher::local_flags() | HELLO_FRAGMENTS,
        }
    }

    /// Overrides the hello flags this build and CPU would give (tests of the agreement).
    pub fn with_cipher_flags(mut self, flags: u8) -> Self {
        self.ciphers = flags;
        self
    }

    /// The CRL version our hellos carry from now on.
    pub fn set_crl_version(&mut self, version: u64) {
        self.crl_version = version;
    }

    fn hello(&self, timestamp: u64, early: &[Vec<u8>]) -> Vec<u8> {
        Hello::emit(&self.cert, self.crl_version, timestamp, self.ciphers, early)
    }

    fn builder(
        &self,
        pattern: u8,
        purpose: Purpose,
        seed: [u8; 32],
    ) -> Result<(Builder<'_>, Vec<u8>), HandshakeError> {
        let name = if pattern == PATTERN_IK { IK } else { XX };
        let params = name.parse().map_err(|_| HandshakeError::Step)?;
        let mut prologue = b"ringlet v0 ".to_vec();
        prologue.push(match purpose {
            Purpose::Link => b'L',
            Purpose::EndToEnd => b'E',
        });
        prologue.extend_from_slice(&self.ca);
        let builder = Builder::with_resolver(params, Box::new(Seeded(seed)));
        Ok((builder, prologue))
    }

    fn build(
        &self,
        pattern: u8,
        purpose: Purpose,
        seed: [u8; 32],
        remote: Option<&[u8; 32]>,
        initiator: bool,
    ) -> Result<HandshakeState, HandshakeError> {
        let (builder, prologue) = self.builder(pattern, purpose, seed)?;
        let mut b = builder
            .local_private_key(&self.secret[..])
            .and_then(|b| b.prologue(&prologue))
            .map_err(|_| HandshakeError::Step)?;
        if let Some(key) = remote {
            b = b.remote_public_key(key).map_err(|_| HandshakeError::Step)?;
        }
        if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(|_| HandshakeError::Step)
    }
}

/// The handshake payload: `u8 version · u16 length + certificate · u64 CRL version ·
/// u64 timestamp (ms; a responder refuses inits not newer than the last it took, so a
/// replayed init cannot replace a session) · u8 flags (version ≥ 1: [`Cipher`]'s and
/// [`HELLO_FRAGMENTS`]) · u8 count ·
/// (u16 length + frame)*` (early frames: what the initiator had queued, delivered with the
/// init so that it costs no round trip).
struct Hello {
    cert: MemberCert,
    crl_version: u64,
    timestamp: u64,
    ciphers: u8,
    early: Vec<Vec<u8>>,
}

impl Hello {
    fn emit(cert: &[u8], crl_version: u64, timestamp: u64, ciphers: u8, early: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![HELLO_VERSION];
        out.extend_from_slice(&(cert.len() as u16).to_be_bytes());
        out.extend_from_slice(cert);
        out.extend_from_slice(&crl_version.to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out.push(ciphers);
        out.push(early.len() as u8);
        for f in early {
            out.extend_from_slice(&(f.len() as u16).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn parse(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        let mut r = Reader::new(bytes);
        let bad = |_| HandshakeError::Hello;
        let version = r.u8().map_err(bad)?;
        if version > HELLO_VERSION {
            return Err(HandshakeError::Hello);
        }
        let cert = MemberCert::parse(r.bytes16().map_err(bad)?).map_err(|_| HandshakeError::Hello)?;
        let crl_version = r.u64().map_err(bad)?;
        let timestamp = r.u64().map_err(bad)?;
        let ciphers = if version >= 1 { r.u8().map_err(bad)? } else { 0 };
        let count = usize::from(r.u8().map_err(bad)?);
        if count > MAX_EARLY {
            return Err(HandshakeError::Hello);
        }
        let early = (0..count)
            .map(|_| r.bytes16().map(<[u8]>::to_vec).map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        if !r.is_empty() || early.iter().map(Vec::len).sum::<usize>() > MAX_EARLY_BYTES {
            return Err(HandshakeError::Hello);
        }
        Ok(Hello {
            cert,
            crl_version,
            timestamp,
            ciphers,
            early,
        })
    }
}

/// The peer as the handshake proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The static key the peer proved it holds.
    pub key: [u8; 32],
    pub cert: MemberCert,
    pub crl_version: u64,
    /// When the peer says it sent its hello (ms; only ever compared with its own earlier ones).
    pub timestamp: u64,
    /// Its hello flags ([`Cipher`]'s and [`HELLO_FRAGMENTS`]).
    pub ciphers: u8,
    /// Frames the initiator sent with its IK init (empty otherwise).
    pub early: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub struct Established {
    pub transport: Transport,
    pub peer: Peer,
    pub local_index: u32,
    pub remote_index: u32,
}

/// A handshake we started.
pub struct Initiating {
    hs: HandshakeState,
    pattern: u8,
    index: u32,
    timestamp: u64,
}

impl Initiating {
    /// IK when `remote` (the peer's static key) is known, else XX. Returns the init packet.
    /// An IK init carries `early` frames (at most [`MAX_EARLY`], [`MAX_EARLY_BYTES`]); XX
    /// cannot (its first message is not encrypted) and ignores them.
    pub fn start(
        local: &Local,
        purpose: Purpose,
        remote: Option<&[u8; 32]>,
        index: u32,
        seed: [u8; 32],
        timestamp: u64,
        early: &[Vec<u8>],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let pattern = if remote.is_some() { PATTERN_IK } else { PATTERN_XX };
        let mut hs = local.build(pattern, purpose, seed, remote, true)?;
        let payload = if pattern == PATTERN_IK {
            if early.len() > MAX_EARLY || early.iter().map(Vec::len).sum::<usize>() > MAX_EARLY_BYTES {
                return Err(HandshakeError::Hello);
            }
            local.hello(timestamp, early)
        } else {
            Vec::new()
        };
        let noise = write(&mut hs, &payload)?;
        let init = Initiating {
            hs,
            pattern,
            index,
            timestamp,
        };
        Ok((init, wire::init(pattern, index, &noise)))
    }

    /// Whether the init carried the early frames (IK) or left them queued (XX).
    pub fn carries_early(&self) -> bool {
        self.pattern == PATTERN_IK
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Reads the responder's answer; XX also returns the final packet to send.
    pub fn on_response(
        mut self,
        now: Instant,
        local: &Local,
        sender: u32,
        noise: &[u8],
        verify: impl FnOnce(&Peer) -> Result<(), CertError>,
    ) -> Result<(Established, Option<Vec<u8>>), HandshakeError> {
        let payload = read(&mut self.hs, noise)?;
        // IK and XX alike: the responder's certificate came in this message.
        let peer = judge(&self.hs, &payload, verify)?;
        let packet = if self.pattern == PATTERN_XX {
            let noise = write(&mut self.hs, &local.hello(self.timestamp, &[]))?;
            Some(wire::final_message(sender, &noise))
        } else {
            None
        };
        let transport = split(now, self.hs, true, Cipher::agreed(local.ciphers, peer.ciphers))?;
        Ok((
            Established {
                transport,
                peer,
                local_index: self.index,
                remote_index: sender,
            },
            packet,
        ))
    }
}

/// What answering an init gave.
pub enum Responded {
    /// IK: the session is up; send the response.
    Done(Box<Established>, Vec<u8>),
    /// XX: send the response, then wait for the final message.
    Awaiting(Box<Responding>, Vec<u8>),
}

/// Answers an init packet (pattern, sender index and Noise message as parsed).
#[allow(clippy::too_many_arguments)] // the parts of one parsed packet, plus who we are
pub fn respond(
    now: Instant,
    local: &Local,
    purpose: Purpose,
    pattern: u8,
    sender: u32,
    noise: &[u8],
    index: u32,
    seed: [u8; 32],
    verify: impl FnOnce(&Peer) -> Result<(), CertError>,
) -> Result<Responded, HandshakeError> {
    let mut hs = local.build(pattern, purpose, seed, None, false)?;
    let payload = read(&mut hs, noise)?;
    if pattern == PATTERN_IK {
        let peer = judge(&hs, &payload, verify)?;
        let noise = write(&mut hs, &local.hello(0, &[]))?;
        let transport = split(now, hs, false, Cipher::agreed(local.ciphers, peer.ciphers))?;
        let est = Established {
            transport,
            peer,
            local_index: index,
            remote_index: sender,
        };
        return Ok(Responded::Done(
            Box::new(est),
            wire::response(index, sender, &noise),
        ));
    }
    if !payload.is_empty() {
        return Err(HandshakeError::Hello);
    }
    let noise = write(&mut hs, &local.hello(0, &[]))?;
    Ok(Responded::Awaiting(
        Box::new(Responding {
            hs,
            index,
            remote_index: sender,
            ciphers: local.ciphers,
        }),
        wire::response(index, sender, &noise),
    ))
}

/// An XX handshake we answered, waiting for the initiator's final message.
pub struct Responding {
    hs: HandshakeState,
    index: u32,
    remote_index: u32,
    /// Our cipher flags (the hello that carried them is sent).
    ciphers: u8,
}

impl Responding {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn on_final(
        mut self,
        now: Instant,
        noise: &[u8],
        verify: impl FnOnce(&Peer) -> Result<(), CertError>,
    ) -> Result<Established, HandshakeError> {
        let payload = read(&mut self.hs, noise)?;
        let peer = judge(&self.hs, &payload, verify)?;
        let transport = split(now, self.hs, false, Cipher::agreed(self.ciphers, peer.ciphers))?;
        Ok(Established {
            transport,
            peer,
            local_index: self.index,
            remote_index: self.remote_index,
        })
    }
}

fn write(hs: &mut HandshakeState, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; payload.len() + 256];
    let n = hs
        .write_message(payload, &mut out)
        .map_err(|_| HandshakeError::Step)?;
    out.truncate(n);
    Ok(out)
}

fn read(hs: &mut HandshakeState, noise: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    if noise.len() > wire::MAX_NOISE {
        return Err(HandshakeError::Noise);
    }
    let mut out = vec![0u8; noise.len()];
    let n = hs
        .read_message(noise, &mut out)
        .map_err(|_| HandshakeError::Noise)?;
    out.truncate(n);
    Ok(out)
}

/// Parses the peer's hello and asks `verify` about the static key the handshake proved.
fn judge(
    hs: &HandshakeState,
    payload: &[u8],
    verify: impl FnOnce(&Peer) -> Result<(), CertError>,
) -> Result<Peer, HandshakeError> {
    let Hello {
        cert,
        crl_version,
        timestamp,
        ciphers,
        early,
    } = Hello::parse(payload)?;
    let key: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::Step)?;
    if cert.node_key != key {
        return Err(HandshakeError::Refused(CertError::OtherNode));
    }
    let peer = Peer {
        key,
        cert,
        crl_version,
        timestamp,
        ciphers,
        early,
    };
    verify(&peer)?;
    Ok(peer)
}

fn split(
    now: Instant,
    mut hs: HandshakeState,
    initiator: bool,
    cipher: Cipher,
) -> Result<Transport, HandshakeError> {
    if !hs.is_handshake_finished() {
        return Err(HandshakeError::Step);
    }
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (mut send, mut recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    Ok(Transport::new(now, cipher, &mut send, &mut recv))
}

/// snow's default primitives, with randomness from a seed the caller's RNG drew (cores never
/// read the operating system's randomness themselves).
struct Seeded([u8; 32]);

struct SeededRandom(StdRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for Seeded {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(StdRng::from_seed(self.0))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn NoiseCipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::cert::Ca;

    #[test]
    fn a_version_0_hello_still_reads_and_means_chacha() {
        let ca = Ca::from_seed("friends", [42; 32]).unwrap();
        let cert = ca
            .sign([3; 32], &"carol@c.example".parse().unwrap(), 1, 0, 2_000)
            .emit();
        let v1 = Hello::emit(&cert, 5, 7, Cipher::HELLO_AES, &[b"early".to_vec()]);
        assert_eq!(Hello::parse(&v1).unwrap().ciphers, Cipher::HELLO_AES);
        // Version 0: no flags byte after the timestamp.
        let flags_at = 1 + 2 + cert.len() + 16;
        let mut v0 = v1.clone();
        v0[0] = 0;
        v0.remove(flags_at);
        let hello = Hello::parse(&v0).unwrap();
        assert_eq!((hello.ciphers, hello.crl_version, hello.timestamp), (0, 5, 7));
        assert_eq!(hello.early, vec![b"early".to_vec()]);
        let mut future = v1.clone();
        future[0] = HELLO_VERSION + 1;
        assert!(matches!(Hello::parse(&future), Err(HandshakeError::Hello)));
        assert!(matches!(
            Hello::parse(&v1[..flags_at]),
            Err(HandshakeError::Hello)
        ));
    }
}
