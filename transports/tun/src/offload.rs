//! The device side of TCP segmentation offload for a TUN opened with `IFF_VNET_HDR`: every
//! read and write carries a 10-byte `virtio_net_hdr` ([`VnetHdr`]). With TSO offered, the
//! kernel hands over TCP super-packets of up to 64 KB in one read, which [`split`] cuts into
//! packets of the device MTU, each with its own headers and checksums — what a NIC would do.
//! The write side is in `coalesce`. Pure functions on bytes: no system calls here.

use crate::checksum;

/// Size of `struct virtio_net_hdr` (no `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the L4 checksum is to be finished from `csum_start` (the field at
/// `csum_start + csum_offset` holds the pseudo-header sum).
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Linux's `struct virtio_net_hdr`, in host byte order (as TUN uses it unless told otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a frame read from the device could not be turned into packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("frame shorter than its virtio header")]
    NoHeader,
    #[error("checksum offset {start}+{offset} outside a {len}-byte packet")]
    ChecksumOutside { start: u16, offset: u16, len: usize },
    #[error("GSO type {0} not offered")]
    GsoType(u8),
    #[error("GSO packet with a bad IP or TCP header")]
    Headers,
    #[error("GSO segment size 0")]
    SegmentSize,
}

/// Turns one frame read from a device with virtio headers into IP packets, appended to `out`:
/// the packet itself (its checksum finished if the kernel left that to us), or the segments
/// of a TCP super-packet.
pub fn split(frame: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), Malformed> {
    let (hdr, packet) = frame
        .split_first_chunk::<VNET_HDR_LEN>()
        .ok_or(Malformed::NoHeader)?;
    let hdr = VnetHdr::decode(hdr);
    match hdr.gso_type {
        GSO_NONE => {
            let mut packet = packet.to_vec();
            if hdr.flags & F_NEEDS_CSUM != 0 {
                finish_checksum(&hdr, &mut packet)?;
            }
            out.push(packet);
            Ok(())
        }
        GSO_TCPV4 | GSO_TCPV6 => segment_tcp(&hdr, packet, out),
        other => Err(Malformed::GsoType(other)),
    }
}

/// A TCP super-packet that can travel whole to another host's TUN, which takes it back in one
/// write ([`crate::Batch::push_super`]): the IP packet and its payload bytes per segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperPacket<'a> {
    pub packet: &'a [u8],
    pub gso_size: u16,
}

/// The frame as a [`SuperPacket`], if it is a TCP super-packet of the shape that travels whole
/// (`coalesce::whole_shape`); anything else is for [`split`].
pub fn super_packet(frame: &[u8]) -> Option<SuperPacket<'_>> {
    let (hdr, packet) = frame.split_first_chunk::<VNET_HDR_LEN>()?;
    let hdr = VnetHdr::decode(hdr);
    let layout = TcpLayout::of(packet)?;
    let gso_type = if layout.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    let fits = hdr.gso_type == gso_type
        && hdr.flags & F_NEEDS_CSUM != 0
        && usize::from(hdr.csum_start) == layout.tcp
        && hdr.csum_offset == 16
        && crate::coalesce::whole_shape(packet, layout, hdr.gso_size);
    fits.then_some(SuperPacket {
        packet,
        gso_size: hdr.gso_size,
    })
}

/// The segments of a super-packet that came whole from another host (see [`super_packet`]),
/// appended to `out`, for a device without offloads; refused unless it has the shape that
/// travels whole.
pub fn split_super(packet: &[u8], gso_size: u16, out: &mut Vec<Vec<u8>>) -> Result<(), Malformed> {
    let layout = TcpLayout::of(packet).ok_or(Malformed::Headers)?;
    if !crate::coalesce::whole_shape(packet, layout, gso_size) {
        return Err(Malformed::Headers);
    }
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if layout.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: layout.headers as u16,
        gso_size,
        csum_start: layout.tcp as u16,
        csum_offset: 16,
    };
    segment_tcp(&hdr, packet, out)
}

/// Completes a partial L4 checksum: the sum from `csum_start` to the end (which includes the
/// pseudo-header sum already in the field), complemented, into the field.
fn finish_checksum(hdr: &VnetHdr, packet: &mut [u8]) -> Result<(), Malformed> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > packet.len() {
        return Err(Malformed::ChecksumOutside {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
            len: packet.len(),
        });
    }
    let mut csum = !checksum::sum(&packet[start..]);
    // UDP (offset 6) sends a computed zero as all ones; zero means "no checksum" there.
    if csum == 0 && hdr.csum_offset == 6 {
        csum = 0xffff;
    }
    packet[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Where the headers of a TCP packet are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpLayout {
    pub v6: bool,
    /// Offset of the TCP header (the IP header's length).
    pub tcp: usize,
    /// Length of IP and TCP headers together.
    pub headers: usize,
}

impl TcpLayout {
    /// The layout of a TCP packet whose IP header has no options or extension headers.
    pub fn of(packet: &[u8]) -> Option<TcpLayout> {
        let v6 = match packet.first()? >> 4 {
            4 if packet.len() >= 20 && packet[0] & 0x0f == 5 && packet[9] == PROTO_TCP => false,
            6 if packet.len() >= 40 && packet[6] == PROTO_TCP => true,
            _ => return None,
        };
        let tcp = if v6 { 40 } else { 20 };
        let data_offset = usize::from(*packet.get(tcp + 12)? >> 4) * 4;
        let headers = tcp + data_offset;
        (data_offset >= 20 && headers <= packet.len()).then_some(TcpLayout { v6, tcp, headers })
    }

    pub fn addresses<'a>(&self, packet: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        if self.v6 {
            (&packet[8..24], &packet[24..40])
        } else {
            (&packet[12..16], &packet[16..20])
        }
    }

    /// Writes the IP length fields (and the IPv4 header checksum) for a packet of `total` bytes.
    pub fn set_ip_length(&self, packet: &mut [u8], total: usize) {
        if self.v6 {
            packet[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        } else {
            packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            packet[10..12].fill(0);
            let csum = !checksum::sum(&packet[..20]);
            packet[10..12].copy_from_slice(&csum.to_be_bytes());
        }
    }

    /// The pseudo-header sum for this packet's TCP segment of `tcp_len` bytes.
    pub fn pseudo_header(&self, packet: &[u8], tcp_len: usize) -> u16 {
        let (src, dst) = self.addresses(packet);
        checksum::pseudo_header(src, dst, PROTO_TCP, tcp_len)
    }
}

/// Cuts a TCP super-packet into segments of `gso_size` payload bytes: headers copied, IP
/// lengths and IDs, sequence numbers and checksums rewritten, FIN/PSH only on the last and
/// CWR only on the first segment (as the kernel's own segmentation does).
fn segment_tcp(hdr: &VnetHdr, packet: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), Malformed> {
    let layout = TcpLayout::of(packet).ok_or(Malformed::Headers)?;
    if layout.v6 != (hdr.gso_type == GSO_TCPV6) || usize::from(hdr.csum_start) != layout.tcp {
        return Err(Malformed::Headers);
    }
    let gso = usize::from(hdr.gso_size);
    if gso == 0 {
        return Err(Malformed::SegmentSize);
    }
    let (headers, payload) = packet.split_at(layout.headers);
    let tcp = layout.tcp;
    let seq0 = u32::from_be_bytes(headers[tcp + 4..tcp + 8].try_into().expect("4 bytes"));
    let id0 = u16::from_be_bytes([headers[4], headers[5]]);
    let count = payload.len().div_ceil(gso).max(1);
    out.reserve(count);
    for i in 0..count {
        let chunk = &payload[(i * gso).min(payload.len())..((i + 1) * gso).min(payload.len())];
        let mut seg = Vec::with_capacity(headers.len() + chunk.len());
        seg.extend_from_slice(headers);
        seg.extend_from_slice(chunk);
        if !layout.v6 {
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        }
        layout.set_ip_length(&mut seg, headers.len() + chunk.len());
        let seq = seq0.wrapping_add((i * gso) as u32);
        seg[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        if i + 1 < count {
            seg[tcp + 13] &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            seg[tcp + 13] &= !TCP_CWR;
        }
        seg[tcp + 16..tcp + 18].fill(0);
        let tcp_len = seg.len() - tcp;
        let csum = !checksum::add(&[layout.pseudo_header(&seg, tcp_len), checksum::sum(&seg[tcp..])]);
        seg[tcp + 16..tcp + 18].copy_from_slice(&csum.to_be_bytes());
        out.push(seg);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP packet with timestamp options and `payload` bytes of data.
    pub fn tcp_packet(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let ip_len = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; ip_len + 32];
        if v6 {
            p[0] = 0x60;
            p[6] = PROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 64;
            p[9] = PROTO_TCP;
            p[12..16].copy_from_slice(&[10, 77, 0, 1]);
            p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40_000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
        p[t + 12] = 8 << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        // NOP NOP timestamps(10)
        p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        p.extend_from_slice(payload);
        let layout = TcpLayout::of(&p).unwrap();
        let total = p.len();
        layout.set_ip_length(&mut p, total);
        let csum = !checksum::add(&[layout.pseudo_header(&p, total - t), checksum::sum(&p[t..])]);
        p[t + 16..t + 18].copy_from_slice(&csum.to_be_bytes());
        p
    }

    /// Whether the IPv4 header and TCP checksums of `p` verify.
    pub fn checksums_verify(p: &[u8]) -> bool {
        let layout = TcpLayout::of(p).unwrap();
        let ip_ok = layout.v6 || checksum::sum(&p[..20]) == 0xffff;
        let tcp_ok = checksum::add(&[
            layout.pseudo_header(p, p.len() - layout.tcp),
            checksum::sum(&p[layout.tcp..]),
        ]) == 0xffff;
        ip_ok && tcp_ok
    }

    pub fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The kernel's form of a TSO super-packet: pseudo-header sum in the checksum field.
    pub fn tso_frame(v6: bool, payload: &[u8], gso: u16) -> Vec<u8> {
        let mut p = tcp_packet(v6, 1_000, 0x18, payload);
        let layout = TcpLayout::of(&p).unwrap();
        let partial = layout.pseudo_header(&p, p.len() - layout.tcp);
        p[layout.tcp + 16..layout.tcp + 18].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: layout.headers as u16,
            gso_size: gso,
            csum_start: layout.tcp as u16,
            csum_offset: 16,
        };
        [hdr.encode().as_slice(), &p].concat()
    }

    #[test]
    fn a_tcp_super_packet_splits_into_valid_segments() {
        for v6 in [false, true] {
            let payload = data(10_000);
            let mut out = Vec::new();
            split(&tso_frame(v6, &payload, 1_247), &mut out).unwrap();
            assert_eq!(out.len(), 9, "v6 {v6}");
            let mut joined = Vec::new();
            for (i, seg) in out.iter().enumerate() {
                let layout = TcpLayout::of(seg).unwrap();
                assert!(checksums_verify(seg), "segment {i} v6 {v6}");
                let seq = u32::from_be_bytes(seg[layout.tcp + 4..layout.tcp + 8].try_into().unwrap());
                assert_eq!(seq, 1_000 + 1_247 * i as u32);
                let psh = seg[layout.tcp + 13] & TCP_PSH != 0;
                assert_eq!(psh, i == 8, "PSH only on the last");
                assert!(seg.len() - layout.headers <= 1_247);
                if !v6 {
                    assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 0x1234 + i as u16);
                }
                joined.extend_from_slice(&seg[layout.headers..]);
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn a_partial_udp_checksum_is_finished() {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 77, 0, 1, 224, 0, 0, 251,
        ];
        p.extend_from_slice(&[0x14, 0xe9, 0x14, 0xe9, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o']);
        let partial = checksum::pseudo_header(&p[12..16], &p[16..20], 17, 13);
        p[26..28].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        split(&[hdr.encode().as_slice(), &p].concat(), &mut out).unwrap();
        let q = &out[0];
        let verify = checksum::add(&[
            checksum::pseudo_header(&q[12..16], &q[16..20], 17, 13),
            checksum::sum(&q[20..]),
        ]);
        assert_eq!(verify, 0xffff);
        assert_eq!(&q[..26], &p[..26]);
    }

    #[test]
    fn malformed_frames_are_refused_and_produce_nothing() {
        let mut out = Vec::new();
        assert_eq!(split(&[0; 5], &mut out), Err(Malformed::NoHeader));
        let good = tso_frame(false, &data(3_000), 1_000);
        let mut bad_size = good.clone();
        bad_size[4..6].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(split(&bad_size, &mut out), Err(Malformed::SegmentSize));
        let mut udp_gso = good.clone();
        udp_gso[1] = 5;
        assert_eq!(split(&udp_gso, &mut out), Err(Malformed::GsoType(5)));
        assert_eq!(
            split(&good[..VNET_HDR_LEN + 30], &mut out),
            Err(Malformed::Headers)
        );
        let mut wrong_start = good.clone();
        wrong_start[6..8].copy_from_slice(&24u16.to_ne_bytes());
        assert_eq!(split(&wrong_start, &mut out), Err(Malformed::Headers));
        let short = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let frame = [short.encode().as_slice(), &[0x45; 30]].concat();
        assert!(matches!(
            split(&frame, &mut out),
            Err(Malformed::ChecksumOutside { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn super_packets_travel_whole_only_in_the_shape_a_writer_takes_back() {
        for v6 in [false, true] {
            let frame = tso_frame(v6, &data(10_000), 1_247);
            let whole = super_packet(&frame).expect("a TSO frame");
            assert_eq!(whole.gso_size, 1_247);
            assert_eq!(whole.packet, &frame[VNET_HDR_LEN..]);
            // Cut at the far end, it gives what cutting it here gives.
            let (mut here, mut there) = (Vec::new(), Vec::new());
            split(&frame, &mut here).unwrap();
            split_super(whole.packet, whole.gso_size, &mut there).unwrap();
            assert_eq!(here, there, "v6 {v6}");
        }
        let layout_of = |f: &[u8]| TcpLayout::of(&f[VNET_HDR_LEN..]).unwrap();
        let with_flags = |flags: u8| {
            let mut f = tso_frame(false, &data(10_000), 1_247);
            let t = VNET_HDR_LEN + layout_of(&f).tcp;
            f[t + 13] = flags;
            f
        };
        let one_segment = tso_frame(false, &data(1_000), 1_247);
        let too_many = tso_frame(false, &data(65 * 100), 100);
        let mut plain = tso_frame(false, &data(10_000), 1_247);
        plain[..VNET_HDR_LEN].copy_from_slice(&VnetHdr::default().encode());
        let mut may_fragment = tso_frame(false, &data(10_000), 1_247);
        may_fragment[VNET_HDR_LEN + 6] = 0;
        let mut short_ip_length = tso_frame(false, &data(10_000), 1_247);
        short_ip_length[VNET_HDR_LEN + 2..VNET_HDR_LEN + 4].copy_from_slice(&1_500u16.to_be_bytes());
        for (why, frame) in [
            ("FIN", with_flags(0x11)),
            ("CWR", with_flags(0x90)),
            ("one segment", one_segment),
            ("more than 64 segments", too_many),
            ("no GSO header", plain),
            ("IPv4 without DF", may_fragment),
            ("IP length is not the packet's", short_ip_length),
        ] {
            assert_eq!(super_packet(&frame), None, "{why}");
            let (hdr, packet) = frame.split_first_chunk::<VNET_HDR_LEN>().unwrap();
            assert_eq!(
                split_super(packet, VnetHdr::decode(hdr).gso_size, &mut Vec::new()),
                Err(Malformed::Headers),
                "{why}"
            );
        }
    }
}
