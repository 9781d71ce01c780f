//! The write side of TCP offload: packets bound for the device are collected in a [`Batch`],
//! and consecutive in-order segments of one TCP flow are merged into one super-packet that the
//! kernel's TCP stack takes in a single pass — what its GRO does for a NIC. The merge is
//! planned here on bytes; `Tun::write_batch` writes each run with one `writev`, the first
//! packet's headers (rewritten) followed by the other packets' payloads, without copying.
//!
//! Segments merge only when the kernel's GRO would merge them: same flow, next sequence
//! number, flags ACK (PSH only on the last), identical IP and TCP headers otherwise (TTL, TOS,
//! DF, ack, window, options), every segment but the last as long as the first.

use crate::offload::{Malformed, TcpLayout, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Segments merged into one write at most, and in a super-packet written whole (the
/// kernel's GRO merges no more either).
pub const MAX_SEGMENTS: usize = 64;
/// IP length a super-packet may reach (its length fields are 16 bits).
const MAX_IP_LEN: usize = 65_535;
/// Open runs looked through for a segment's flow (a few bulk flows at once is the case
/// worth merging; more only costs time).
const OPEN_RUNS_SCANNED: usize = 8;

/// Packets to write to the device in one go, in the order they were pushed per flow.
#[derive(Default)]
pub struct Batch {
    packets: Vec<Vec<u8>>,
    runs: Vec<Run>,
}

struct Run {
    /// Indices into `Batch::packets`, in sequence order.
    members: Vec<usize>,
    /// Set when the run started with a segment others may join, or is a whole super-packet.
    tcp: Option<TcpRun>,
    /// A super-packet pushed whole: written with its GSO header although it is one member.
    whole: bool,
}

#[derive(Clone, Copy)]
struct TcpRun {
    /// Whether later segments may still join.
    open: bool,
    layout: TcpLayout,
    next_seq: u32,
    /// Payload length of the first segment (the GSO size).
    segment: usize,
    last_payload: usize,
    /// IP length of the merged packet so far.
    ip_len: usize,
}

/// One write the batch plans: a virtio header and the byte ranges that follow it.
pub struct Write<'a> {
    pub hdr: VnetHdr,
    pub parts: Vec<&'a [u8]>,
    /// Packets it carries.
    pub packets: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn push(&mut self, packet: Vec<u8>) {
        let index = self.packets.len();
        let layout = TcpLayout::of(&packet);
        let open = layout.and_then(|l| self.open_run_of(&packet, l));
        match (layout, open) {
            (Some(layout), Some(run)) if self.runs[run].extend(index, &packet, layout, &self.packets) => {}
            (layout, open) => {
                // This packet goes after the run: the run takes no more.
                self.close(open);
                let tcp = layout.and_then(|l| TcpRun::start(&packet, l));
                self.runs.push(Run {
                    members: vec![index],
                    tcp,
                    whole: false,
                });
            }
        }
        self.packets.push(packet);
    }

    /// Adds a TCP super-packet that another host's device gave whole (see
    /// `offload::super_packet`), to be written as one GSO frame of `gso_size`-byte segments.
    /// Refused, adding nothing, unless it has the shape [`whole_shape`] asks.
    pub fn push_super(&mut self, packet: Vec<u8>, gso_size: u16) -> Result<(), Malformed> {
        let layout = TcpLayout::of(&packet).ok_or(Malformed::Headers)?;
        if !whole_shape(&packet, layout, gso_size) {
            return Err(Malformed::Headers);
        }
        // What this flow sends later goes after the super-packet.
        self.close(self.open_run_of(&packet, layout));
        let payload = packet.len() - layout.headers;
        let segment = usize::from(gso_size);
        self.runs.push(Run {
            members: vec![self.packets.len()],
            tcp: Some(TcpRun {
                open: false,
                layout,
                next_seq: seq(&packet, layout).wrapping_add(payload as u32),
                segment,
                last_payload: (payload - 1) % segment + 1,
                ip_len: packet.len(),
            }),
            whole: true,
        });
        self.packets.push(packet);
        Ok(())
    }

    /// Lets `run` take no more segments.
    fn close(&mut self, run: Option<usize>) {
        if let Some(tcp) = run.and_then(|r| self.runs[r].tcp.as_mut()) {
            tcp.open = false;
        }
    }

    /// The open run of `packet`'s flow, if one of the last few is.
    fn open_run_of(&self, packet: &[u8], layout: TcpLayout) -> Option<usize> {
        self.runs
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, r)| r.tcp.is_some_and(|t| t.open))
            .take(OPEN_RUNS_SCANNED)
            .find(|(_, r)| same_flow(&self.packets[r.members[0]], packet, layout))
            .map(|(i, _)| i)
    }

    /// The writes for everything pushed, in order, and empties the batch. A merged run's first
    /// packet gets its headers rewritten for the whole run.
    pub fn drain(&mut self, mut write: impl FnMut(Write<'_>)) {
        for run in &self.runs {
            if let Some(tcp) = run.merged() {
                let psh =
                    self.packets[*run.members.last().expect("not empty")][tcp.layout.tcp + 13] & TCP_PSH;
                prepare_merged(&mut self.packets[run.members[0]], tcp.layout, tcp.ip_len, psh);
            }
        }
        for run in &self.runs {
            let first = &self.packets[run.members[0]];
            let Some(TcpRun {
                layout: tcp, segment, ..
            }) = run.merged()
            else {
                write(Write {
                    hdr: VnetHdr::default(),
                    parts: vec![first],
                    packets: 1,
                });
                continue;
            };
            let mut parts = Vec::with_capacity(run.members.len());
            parts.push(first.as_slice());
            parts.extend(run.members[1..].iter().map(|&i| &self.packets[i][tcp.headers..]));
            write(Write {
                hdr: VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: if tcp.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                    hdr_len: tcp.headers as u16,
                    gso_size: segment as u16,
                    csum_start: tcp.tcp as u16,
                    csum_offset: 16,
                },
                parts,
                packets: run.members.len(),
            });
        }
        self.packets.clear();
        self.runs.clear();
    }

    /// The packets pushed, unmerged, and empties the batch (for a device without offloads).
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.runs.clear();
        std::mem::take(&mut self.packets)
    }
}

impl Run {
    /// Adds segment `index` if it continues this run; says whether it did.
    fn extend(&mut self, index: usize, packet: &[u8], layout: TcpLayout, packets: &[Vec<u8>]) -> bool {
        let Some(tcp) = self.tcp.as_mut().filter(|t| t.open) else {
            return false;
        };
        let first = &packets[self.members[0]];
        let payload = packet.len() - layout.headers;
        let last = &packets[*self.members.last().expect("not empty")];
        let fits = layout.headers == tcp.layout.headers
            && ip_length(packet, layout) == packet.len()
            && seq(packet, layout) == tcp.next_seq
            && merge_flags(packet, layout)
            && last[layout.tcp + 13] & TCP_PSH == 0
            && tcp.last_payload == tcp.segment
            && (1..=tcp.segment).contains(&payload)
            && tcp.ip_len + payload <= MAX_IP_LEN
            && self.members.len() < MAX_SEGMENTS
            && same_headers(first, packet, layout);
        if fits {
            tcp.next_seq = tcp.next_seq.wrapping_add(payload as u32);
            tcp.last_payload = payload;
            tcp.ip_len += payload;
            self.members.push(index);
        }
        fits
    }

    /// The TCP run, if segments were merged into it or it is a whole super-packet.
    fn merged(&self) -> Option<TcpRun> {
        self.tcp.filter(|_| self.members.len() > 1 || self.whole)
    }
}

impl TcpRun {
    /// A run that later segments may join, if `packet` could start one.
    fn start(packet: &[u8], layout: TcpLayout) -> Option<TcpRun> {
        let payload = packet.len() - layout.headers;
        let whole = ip_length(packet, layout) == packet.len();
        (whole && payload > 0 && merge_flags(packet, layout) && (layout.v6 || dont_fragment(packet))).then(
            || TcpRun {
                open: true,
                layout,
                next_seq: seq(packet, layout).wrapping_add(payload as u32),
                segment: payload,
                last_payload: payload,
                ip_len: packet.len(),
            },
        )
    }
}

/// Whether a TCP super-packet may be carried and written whole: its IP length is its length,
/// it is more than one segment of `gso_size` but at most [`MAX_SEGMENTS`], its flags are ACK
/// (and PSH), and an IPv4 one may not be fragmented — what the kernel's GRO would build from
/// segments. The sending end (`offload::super_packet`) and the writing end judge by this rule.
pub(crate) fn whole_shape(packet: &[u8], layout: TcpLayout, gso_size: u16) -> bool {
    let gso = usize::from(gso_size);
    let payload = packet.len() - layout.headers;
    gso > 0
        && ip_length(packet, layout) == packet.len()
        && payload > gso
        && payload.div_ceil(gso) <= MAX_SEGMENTS
        && merge_flags(packet, layout)
        && (layout.v6 || dont_fragment(packet))
}

fn seq(packet: &[u8], layout: TcpLayout) -> u32 {
    u32::from_be_bytes(
        packet[layout.tcp + 4..layout.tcp + 8]
            .try_into()
            .expect("4 bytes"),
    )
}

/// ACK, optionally PSH, nothing else (no SYN, FIN, RST, URG, ECE, CWR).
fn merge_flags(packet: &[u8], layout: TcpLayout) -> bool {
    packet[layout.tcp + 13] & !TCP_PSH == TCP_ACK
}

fn dont_fragment(packet: &[u8]) -> bool {
    packet[6] & 0x40 != 0 && packet[6] & 0x3f == 0 && packet[7] == 0
}

/// The packet length its IP header states.
fn ip_length(packet: &[u8], layout: TcpLayout) -> usize {
    if layout.v6 {
        usize::from(u16::from_be_bytes([packet[4], packet[5]])) + 40
    } else {
        usize::from(u16::from_be_bytes([packet[2], packet[3]]))
    }
}

fn same_flow(a: &[u8], b: &[u8], layout: TcpLayout) -> bool {
    let Some(la) = TcpLayout::of(a) else { return false };
    let (sa, da) = la.addresses(a);
    let (sb, db) = layout.addresses(b);
    la.v6 == layout.v6 && sa == sb && da == db && a[la.tcp..la.tcp + 4] == b[layout.tcp..layout.tcp + 4]
}

/// Whether two segments' headers agree everywhere but in the fields a merge rewrites (IP
/// length, ID and checksum; TCP sequence number, PSH and checksum).
fn same_headers(a: &[u8], b: &[u8], layout: TcpLayout) -> bool {
    let t = layout.tcp;
    let ip_same = if layout.v6 {
        a[..4] == b[..4] && a[6..40] == b[6..40]
    } else {
        a[..2] == b[..2] && a[6..10] == b[6..10] && a[12..20] == b[12..20]
    };
    ip_same
        && a[t..t + 4] == b[t..t + 4]
        && a[t + 8..t + 13] == b[t + 8..t + 13]
        && a[t + 14..t + 16] == b[t + 14..t + 16]
        && a[t + 18..layout.headers] == b[t + 18..layout.headers]
}

/// Rewrites a run's first packet as the head of the merged one: IP length (and IPv4 header
/// checksum), PSH from the last segment, and in the TCP checksum field the pseudo-header sum
/// the kernel expects of a packet whose checksum is left to finish (`F_NEEDS_CSUM`).
fn prepare_merged(first: &mut [u8], layout: TcpLayout, ip_len: usize, psh: u8) {
    layout.set_ip_length(first, ip_len);
    first[layout.tcp + 13] |= psh;
    let partial = layout.pseudo_header(first, ip_len - layout.tcp);
    first[layout.tcp + 16..layout.tcp + 18].copy_from_slice(&partial.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::tests::{checksums_verify, data, tcp_packet, tso_frame};
    use crate::offload::{split, F_NEEDS_CSUM};
    use crate::offload::{super_packet, VNET_HDR_LEN};

    const ACK: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;

    fn segments(v6: bool, seq0: u32, sizes: &[usize]) -> Vec<Vec<u8>> {
        let mut seq = seq0;
        let last = sizes.len() - 1;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = tcp_packet(v6, seq, if i == last { PSH_ACK } else { ACK }, &data(n));
                seq = seq.wrapping_add(n as u32);
                p
            })
            .collect()
    }

    /// The frames the batch would write: virtio header and bytes, joined.
    fn written(batch: &mut Batch) -> Vec<(VnetHdr, Vec<u8>, usize)> {
        let mut out = Vec::new();
        batch.drain(|w| out.push((w.hdr, w.parts.concat(), w.packets)));
        out
    }

    #[test]
    fn consecutive_segments_merge_and_split_back_into_the_same_packets() {
        for v6 in [false, true] {
            let segs = segments(v6, 5_000, &[1_247, 1_247, 1_247, 600]);
            let mut batch = Batch::default();
            for s in &segs {
                batch.push(s.clone());
            }
            let frames = written(&mut batch);
            assert_eq!(frames.len(), 1, "v6 {v6}");
            let (hdr, bytes, packets) = &frames[0];
            assert_eq!(*packets, 4);
            assert_eq!(hdr.flags, F_NEEDS_CSUM);
            assert_eq!(hdr.gso_size, 1_247);
            assert_eq!(hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            // The kernel would take it as it takes its own TSO output: split it as we split
            // those, and the original segments come back.
            let mut again = Vec::new();
            split(&[hdr.encode().as_slice(), bytes].concat(), &mut again).unwrap();
            assert_eq!(again.len(), 4);
            for (a, s) in again.iter().zip(&segs) {
                assert!(checksums_verify(a));
                let layout = TcpLayout::of(a).unwrap();
                // IPv4 IDs are renumbered; everything else is as it was.
                assert_eq!(a[layout.tcp..], s[layout.tcp..]);
                assert_eq!(a[..4], s[..4]);
            }
            assert!(batch.is_empty());
        }
    }

    /// What is pushed, and how many packets each write should carry.
    type Case = (&'static str, Vec<Vec<u8>>, Vec<usize>);

    #[test]
    fn segments_that_would_not_merge_in_the_kernel_are_written_alone_in_order() {
        let segs = segments(false, 0, &[1_000, 1_000, 1_000, 1_000, 1_000]);
        // The first two segments, the second changed by `change`.
        let pair_with = |change: fn(&mut Vec<u8>)| {
            let mut s = segs[..2].to_vec();
            change(&mut s[1]);
            s
        };
        let cases: Vec<Case> = vec![
            (
                "a gap in the sequence",
                vec![segs[0].clone(), segs[2].clone()],
                vec![1, 1],
            ),
            ("out of order", vec![segs[1].clone(), segs[0].clone()], vec![1, 1]),
            (
                "PSH in the middle ends the run",
                {
                    let mut s = segs.clone();
                    s[1][33] = PSH_ACK;
                    s
                },
                vec![2, 3],
            ),
            (
                "a short segment ends the run",
                {
                    let mut s = segments(false, 0, &[1_000, 500, 1_000]);
                    s[1][33] = ACK;
                    s
                },
                vec![2, 1],
            ),
            ("a FIN is never merged", pair_with(|p| p[33] = 0x11), vec![1, 1]),
            ("another ack number", pair_with(|p| p[28] ^= 1), vec![1, 1]),
            (
                "an IP length that is not the packet's",
                pair_with(|p| p.extend_from_slice(b"trailing")),
                vec![1, 1],
            ),
            ("another window", pair_with(|p| p[34] ^= 1), vec![1, 1]),
            (
                "other options (timestamps)",
                pair_with(|p| p[47] ^= 1),
                vec![1, 1],
            ),
        ];
        for (what, packets, expected) in cases {
            let mut batch = Batch::default();
            for p in &packets {
                batch.push(p.clone());
            }
            let frames = written(&mut batch);
            let counts: Vec<usize> = frames.iter().map(|f| f.2).collect();
            assert_eq!(counts, expected, "{what}");
            // Unmerged packets go out byte for byte; the bytes of all frames are the packets'.
            let total: usize = frames.iter().map(|f| f.1.len()).sum();
            let merged_headers: usize = expected.iter().map(|&n| (n - 1) * 52).sum();
            assert_eq!(
                total + merged_headers,
                packets.iter().map(Vec::len).sum::<usize>(),
                "{what}"
            );
            for (hdr, bytes, n) in &frames {
                if *n == 1 {
                    assert_eq!(*hdr, VnetHdr::default());
                    assert!(packets.contains(bytes), "{what}");
                }
            }
        }
    }

    #[test]
    fn interleaved_flows_merge_separately_and_keep_their_order() {
        let a = segments(false, 0, &[1_000, 1_000, 1_000]);
        let mut b = segments(false, 90_000, &[1_000, 1_000]);
        for p in &mut b {
            p[21] ^= 1; // another source port (a checksum mismatch is not looked at)
        }
        let not_tcp = vec![
            0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2,
        ];
        let mut batch = Batch::default();
        for p in [&a[0], &b[0], &a[1], &not_tcp, &b[1], &a[2]] {
            batch.push(p.clone());
        }
        let frames = written(&mut batch);
        let counts: Vec<usize> = frames.iter().map(|f| f.2).collect();
        assert_eq!(counts, vec![3, 2, 1]);
        assert_eq!(frames[2].1, not_tcp);
    }

    #[test]
    fn a_run_stops_before_the_ip_length_overflows() {
        let segs = segments(false, 0, &[1_400; 60]);
        let mut batch = Batch::default();
        for s in segs {
            batch.push(s);
        }
        let frames = written(&mut batch);
        assert!(frames.len() >= 2);
        for (_, bytes, _) in &frames {
            assert!(bytes.len() <= MAX_IP_LEN, "{}", bytes.len());
        }
        assert_eq!(frames.iter().map(|f| f.2).sum::<usize>(), 60);
    }

    #[test]
    fn a_super_packet_from_another_device_is_written_whole_after_what_came_before() {
        for v6 in [false, true] {
            let frame = tso_frame(v6, &data(10_000), 1_247);
            let whole = super_packet(&frame).unwrap();
            let layout = TcpLayout::of(whole.packet).unwrap();
            // Two segments of the same flow before it: they must not take later segments.
            let before = segments(v6, 1_000u32.wrapping_sub(2 * 1_247), &[1_247, 1_247]);
            let mut batch = Batch::default();
            for s in &before {
                batch.push(s.clone());
            }
            let mut packet = whole.packet.to_vec();
            // The sender's partial checksum is not trusted: the writer puts its own.
            packet[layout.tcp + 16] ^= 0xff;
            batch.push_super(packet, whole.gso_size).unwrap();
            let after = segments(v6, 11_000, &[1_247]);
            batch.push(after[0].clone());
            let frames = written(&mut batch);
            let counts: Vec<usize> = frames.iter().map(|f| f.2).collect();
            assert_eq!(counts, vec![2, 1, 1], "v6 {v6}");
            let (hdr, bytes, _) = &frames[1];
            assert_eq!(hdr.gso_size, 1_247);
            assert_eq!(hdr.hdr_len as usize, layout.headers);
            // What the kernel makes of it: the segments the sending device's frame holds.
            let (mut written_segs, mut sent_segs) = (Vec::new(), Vec::new());
            split(&[hdr.encode().as_slice(), bytes].concat(), &mut written_segs).unwrap();
            split(&frame, &mut sent_segs).unwrap();
            assert_eq!(written_segs, sent_segs, "v6 {v6}");
            assert!(written_segs.iter().all(|s| checksums_verify(s)));
        }
    }

    #[test]
    fn a_super_packet_of_the_wrong_shape_is_refused_and_changes_nothing() {
        let frame = tso_frame(false, &data(10_000), 1_247);
        let packet = frame[VNET_HDR_LEN..].to_vec();
        let mut batch = Batch::default();
        assert_eq!(batch.push_super(packet.clone(), 0), Err(Malformed::Headers));
        assert_eq!(batch.push_super(packet.clone(), 20_000), Err(Malformed::Headers));
        assert_eq!(
            batch.push_super(packet[..30].to_vec(), 1_247),
            Err(Malformed::Headers)
        );
        assert!(batch.is_empty());
    }
}
