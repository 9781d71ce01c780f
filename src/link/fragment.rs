//! Records too big for one datagram of a direct path, carried in pieces (sans-IO). A record is
//! a whole sealed datagram (frame kind 9) of up to [`MAX_RECORD`] bytes — the VPN sends a TCP
//! super-packet of up to 64 KB as one, sealed once instead of once per 1,300-byte segment. It
//! is cut into fragments of one size (the last may be shorter), each a frame of kind
//! [`KIND_FRAGMENT`]:
//!
//! ```text
//! bytes 0..10   frame header (kind 10)
//! bytes 10..14  record number (u32, per sender)
//! byte  14      index of this piece
//! byte  15      pieces in the record (2..=64)
//! bytes 16..18  piece size (u16): every piece but the last has it, the last at most it
//! bytes 18..    the piece
//! ```
//!
//! Fragments are not sealed themselves: the record they rebuild is, so a forged or damaged
//! fragment spoils only its record, which then fails to open like any bad datagram. A
//! receiver holds at most [`PARTIAL_MAX`] unfinished records, each for at most
//! [`PARTIAL_TTL`]; a new one pushes out the oldest. One lost piece loses its record (the
//! sender's TCP resends it), so only peers that said in their hello that they take fragments
//! are sent any.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringlet_udp::SocketId;

use super::frame::{self, PathId};

pub const KIND_FRAGMENT: u8 = 10;
pub const HEADER_LEN: usize = frame::HEADER_LEN + 8;
/// Room for one record: its pieces times their size (the last piece may use less). A 64 KB IP
/// packet with the VPN's and the seal's headers fits with pieces of any size up to ~1,400.
pub const MAX_RECORD: usize = 70_000;
/// Most pieces in a record.
pub const MAX_PIECES: usize = 64;
/// Unfinished records held at once (each up to [`MAX_RECORD`] bytes).
pub const PARTIAL_MAX: usize = 16;
/// How long an unfinished record waits for its missing pieces.
pub const PARTIAL_TTL: Duration = Duration::from_millis(500);

/// Cuts `record` into fragments of `max_datagram` bytes (headers included; the last may be
/// shorter) for `path`, numbered `number`, laid end to end in one buffer: what one segmented
/// send (UDP GSO) takes as it is. None when it would need more than [`MAX_PIECES`] pieces, or
/// fits in one datagram and so needs none.
pub fn cut(path: &PathId, number: u32, record: &[u8], max_datagram: usize) -> Option<Vec<u8>> {
    let (count, piece) = pieces(record.len(), max_datagram)?;
    let mut out = Vec::with_capacity(count * HEADER_LEN + record.len());
    for (index, chunk) in record.chunks(piece).enumerate() {
        out.extend_from_slice(&frame::header(path, KIND_FRAGMENT));
        out.extend_from_slice(&number.to_be_bytes());
        out.push(index as u8);
        out.push(count as u8);
        out.extend_from_slice(&(piece as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    Some(out)
}

/// How a `len`-byte record is cut for datagrams of `max_datagram` bytes: the number of pieces
/// and their size. None when it fits in one datagram, or needs more than [`MAX_PIECES`] pieces
/// or more room than [`MAX_RECORD`].
pub fn pieces(len: usize, max_datagram: usize) -> Option<(usize, usize)> {
    let piece = max_datagram.checked_sub(HEADER_LEN).filter(|&p| p > 0)?;
    let count = len.div_ceil(piece);
    ((2..=MAX_PIECES).contains(&count) && count * piece <= MAX_RECORD).then_some((count, piece))
}

/// Why a fragment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("fragment shorter than its header")]
    Short,
    #[error("fragment index, count or piece size out of range")]
    Range,
    #[error("fragment disagrees with the others of its record")]
    Mismatch,
}

/// One fragment's header fields.
struct Piece<'a> {
    number: u32,
    index: usize,
    count: usize,
    size: usize,
    data: &'a [u8],
}

impl<'a> Piece<'a> {
    fn parse(fragment: &'a [u8]) -> Result<Piece<'a>, FragmentError> {
        if fragment.len() <= HEADER_LEN {
            return Err(FragmentError::Short);
        }
        let h = &fragment[frame::HEADER_LEN..HEADER_LEN];
        let piece = Piece {
            number: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            index: usize::from(h[4]),
            count: usize::from(h[5]),
            size: usize::from(u16::from_be_bytes([h[6], h[7]])),
            data: &fragment[HEADER_LEN..],
        };
        let last = piece.index + 1 == piece.count;
        let sized = if last {
            piece.data.len() <= piece.size
        } else {
            piece.data.len() == piece.size
        };
        let fits = (2..=MAX_PIECES).contains(&piece.count)
            && piece.index < piece.count
            && piece.count * piece.size <= MAX_RECORD;
        if !fits || !sized {
            return Err(FragmentError::Range);
        }
        Ok(piece)
    }
}

/// Where a record comes from: the socket and address, and the sender's record number.
type Key = (SocketId, SocketAddr, u32);

struct Partial {
    key: Key,
    started: Instant,
    count: usize,
    size: usize,
    /// Bit `i`: piece `i` is in.
    have: u64,
    /// Length of the last piece, once it is in.
    last_len: usize,
    /// The pieces in their places; pieces not in yet past its end, or zeros.
    buf: Vec<u8>,
}

/// Unfinished records, rebuilt from their fragments.
#[derive(Default)]
pub struct Reassembly {
    partials: Vec<Partial>,
    /// Unfinished records given up (pushed out, or their time ran out).
    pub lost: u64,
}

impl Reassembly {
    /// Takes one fragment that came from `from` through `socket`; returns the record when it
    /// was the last piece missing.
    pub fn add(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        fragment: &[u8],
    ) -> Result<Option<Vec<u8>>, FragmentError> {
        let piece = Piece::parse(fragment)?;
        let key = (socket, from, piece.number);
        self.expire(now);
        let at = match self.partials.iter().position(|p| p.key == key) {
            Some(at) => at,
            None => self.start(now, key, &piece),
        };
        let p = &mut self.partials[at];
        if p.count != piece.count || p.size != piece.size {
            return Err(FragmentError::Mismatch);
        }
        let bit = 1u64 << piece.index;
        if p.have & bit == 0 {
            let start = piece.index * p.size;
            let end = start + piece.data.len();
            if start >= p.buf.len() {
                // In order (the usual case) this only appends; a piece that came early
                // leaves a gap of zeros for the ones before it.
                p.buf.resize(start, 0);
                p.buf.extend_from_slice(piece.data);
            } else {
                p.buf[start..end].copy_from_slice(piece.data);
            }
            p.have |= bit;
            if piece.index + 1 == p.count {
                p.last_len = piece.data.len();
            }
        }
        if p.have.count_ones() as usize != p.count {
            return Ok(None);
        }
        let done = self.partials.swap_remove(at);
        debug_assert_eq!(done.buf.len(), (done.count - 1) * done.size + done.last_len);
        Ok(Some(done.buf))
    }

    fn start(&mut self, now: Instant, key: Key, piece: &Piece<'_>) -> usize {
        if self.partials.len() >= PARTIAL_MAX {
            let oldest = self
                .partials
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.started)
                .map(|(i, _)| i)
                .expect("full, so not empty");
            self.partials.swap_remove(oldest);
            self.lost += 1;
        }
        self.partials.push(Partial {
            key,
            started: now,
            count: piece.count,
            size: piece.size,
            have: 0,
            last_len: 0,
            buf: Vec::with_capacity(piece.count * piece.size),
        });
        self.partials.len() - 1
    }

    fn expire(&mut self, now: Instant) {
        let before = self.partials.len();
        self.partials.retain(|p| now < p.started + PARTIAL_TTL);
        self.lost += (before - self.partials.len()) as u64;
    }

    /// Unfinished records held now.
    pub fn pending(&self) -> usize {
        self.partials.len()
    }
}

#[cfg(test)]
#[path = "tests/reassembly.rs"]
mod tests;
