//! ringlet's UDP transport: one socket per node, shared by STUN and by the overlay frames of
//! every overlay the process runs, plus a bounded set of short-lived extra sockets for
//! birthday-style NAT traversal. It knows packet classes, not protocols:
//! [`classify`] tells STUN (first two bits 00 and the magic cookie) from ringlet frames (first
//! byte `0b11xx_xxxx`) and drops anything else.

mod mux;
mod shared;

pub use mux::{Outgoing, Received, SocketId, UdpMux, MAIN_SOCKET};
pub use shared::{PathKey, SharedSocket, SharedStats};

/// Magic cookie of STUN (RFC 5389) at bytes 4..8.
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// First byte of every ringlet frame: the top two bits are `11`, the rest the frame version.
pub const FRAME_MARKER: u8 = 0xc0;
pub const FRAME_MARKER_MASK: u8 = 0xc0;

/// What a received packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    Frame,
    Unknown,
}

/// Classifies a packet by its first bytes, without parsing it.
pub fn classify(packet: &[u8]) -> PacketKind {
    match packet.first() {
        Some(b) if b & 0xc0 == 0 && packet.len() >= 20 && packet[4..8] == STUN_MAGIC_COOKIE => {
            PacketKind::Stun
        }
        Some(b) if b & FRAME_MARKER_MASK == FRAME_MARKER => PacketKind::Frame,
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_stun_frames_and_garbage() {
        let mut stun = vec![0x00, 0x01, 0x00, 0x00];
        stun.extend_from_slice(&STUN_MAGIC_COOKIE);
        stun.extend_from_slice(&[0; 12]);
        assert_eq!(classify(&stun), PacketKind::Stun);
        assert_eq!(classify(&stun[..19]), PacketKind::Unknown, "too short for STUN");
        let mut no_cookie = stun.clone();
        no_cookie[4] = 0;
        assert_eq!(classify(&no_cookie), PacketKind::Unknown);
        assert_eq!(classify(&[0xc0, 1, 2]), PacketKind::Frame);
        assert_eq!(classify(&[0x80, 1, 2]), PacketKind::Unknown);
        assert_eq!(classify(&[]), PacketKind::Unknown);
    }
}
