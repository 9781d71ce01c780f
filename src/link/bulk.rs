//! App datagrams too big for one UDP datagram, over a direct path: sealed once as one record
//! and carried in fragments (`fragment`), then rebuilt and opened as one on the far side.
//! The VPN sends its TCP super-packets this way.

use std::net::SocketAddr;
use std::time::Instant;

use ringlet_udp::SocketId;
use ringlet_xmpp::NodeIdBytes;

use super::fragment::{self, KIND_FRAGMENT};
use super::frame;
use super::{Links, Path};
use crate::secure::transport::TAG_LEN;
use crate::secure::wire::DATA_HEADER_LEN;

/// What sealing adds to an app datagram's payload: outer frame header, secure header, inner
/// frame header, channel byte, tag.
pub const SEALED_OVERHEAD: usize = 2 * frame::HEADER_LEN + DATA_HEADER_LEN + 1 + TAG_LEN;

/// The fragments of one record for one path, end to end in `data`: datagrams of `size` bytes,
/// the last possibly shorter — one segmented send.
#[derive(Debug)]
pub struct Fragments {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub data: Vec<u8>,
    pub size: usize,
}

impl Links {
    /// Sends the app datagram `channel` + `parts` (joined) to `peer` as one sealed record in
    /// fragments of `max_datagram` bytes. None, having sent nothing, unless the peer has a
    /// direct path and a live session with a side that takes fragments, and the record needs
    /// 2 to `fragment::MAX_PIECES` of them: the caller then sends it another way.
    pub fn send_fragmented(
        &mut self,
        now: Instant,
        peer: &NodeIdBytes,
        channel: u8,
        parts: &[&[u8]],
        max_datagram: usize,
    ) -> Option<Fragments> {
        let len = SEALED_OVERHEAD + parts.iter().map(|p| p.len()).sum::<usize>();
        // Checked before sealing, which spends a nonce.
        fragment::pieces(len, max_datagram)?;
        let Some(Path::Direct { socket, remote, .. }) = self.path(peer) else {
            return None;
        };
        if !self.takes_fragments(now, peer) {
            return None;
        }
        let (record, rekey) = self.seal_record(now, *peer, channel, parts)?;
        let number = self.next_record;
        self.next_record = self.next_record.wrapping_add(1);
        let data = fragment::cut(&self.path_id, number, &record, max_datagram)?;
        self.app_traffic(now, peer);
        self.rekey_if_due(now, *peer, rekey);
        Some(Fragments {
            socket,
            to: remote,
            data,
            size: max_datagram,
        })
    }

    /// A fragment that came over UDP: the record it completes, if it does, is handled like
    /// any sealed datagram from that address.
    pub(super) fn on_fragment(&mut self, now: Instant, socket: SocketId, from: SocketAddr, bytes: &[u8]) {
        match self.reassembly.add(now, socket, from, bytes) {
            Ok(Some(record)) if frame::Frame::secure_body(&record, &self.path_id).is_some() => {
                self.handle_frame(now, socket, from, record);
            }
            Ok(Some(_)) | Err(_) => self.counters.fragments_refused += 1,
            Ok(None) => {}
        }
        self.counters.records_lost = self.reassembly.lost;
    }
}

/// Whether `bytes` is a fragment for the overlay on `path`.
pub(super) fn is_fragment(bytes: &[u8], path: &frame::PathId) -> bool {
    frame::Frame::is_kind(bytes, path, KIND_FRAGMENT)
}
