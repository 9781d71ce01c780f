//! "bare", the userspace ceiling: an unencrypted forwarder between a TUN device and a UDP
//! socket with every kernel offload ringlet's VPN uses (TCP super-packets read from the device,
//! UDP segmentation on send, UDP GRO on receive, super-packets written back whole) and nothing
//! else: no crypto, no protocol, no copy in user space (a frame is cut into datagrams by the
//! send's iovecs and put back together by the receive's), a thread per direction. Its
//! throughput bounds what any VPN with a userspace TUN data path can reach on this machine;
//! ringlet's distance to it is ringlet's own cost.
//!
//! Variants ([`VARIANTS`]), to take ringlet's distance apart: `bare` (a thread per direction),
//! `bare-1t` (one thread for both, as an event loop), `bare-1t-aead` (one thread, and every
//! frame sealed with AES-256-GCM as ringlet's links do: the least a single-threaded encrypted
//! VPN must spend) and `bare-aead` (a thread per direction, sealed: the bound for any
//! encrypted userspace VPN here). Each variant has its own device `bare<v>`, port and subnet 10.80.<v>.0/24,
//! so all run side by side.
//!
//! A datagram is a 4-byte header (piece index, piece count, 0, 0; index [`PUNCH`] marks a
//! keepalive) and one piece of one device frame, virtio header included: the receiver writes
//! the frame back verbatim (it trusts the sender, which no real VPN may do). Both ends bind
//! the variant's port and send to the other's NAT at that port; the lab's cone NATs keep it.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ringlet_tun::{Tun, FRAME_MAX};

/// The variants, by name; the index is the variant's number.
pub const VARIANTS: [&str; 4] = ["bare", "bare-1t", "bare-1t-aead", "bare-aead"];
/// The UDP port of both ends of variant 0 (variant v: + v).
const PORT: u16 = 47_001;

/// Variant `v`'s device.
pub fn device(v: usize) -> String {
    format!("bare{v}")
}

/// Member `i`'s address in variant `v`.
pub fn address(v: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 80, v as u8, i as u8 + 1)
}

/// The device MTU: ringlet's on the lab's direct path, so TCP picks the same segment size.
const MTU: u32 = 1_299;
/// A full datagram: the size of ringlet's fragments (its datagram for a full-size packet).
const SEGMENT: usize = 1_349;
const HEADER: usize = 4;
const PIECE: usize = SEGMENT - HEADER;
/// Pieces of the longest frame; super-packets are kept under 60,000 bytes (one UDP send).
const MAX_PIECES: usize = 48;
const GSO_MAX_SIZE: &str = "60000";
/// The header index of a keepalive datagram.
const PUNCH: u8 = 255;

/// Runs variant `name`'s forwarder until killed: its device with `address`/24, datagrams to
/// `peer`.
pub fn run(name: &str, address: Ipv4Addr, peer: Ipv4Addr) -> anyhow::Result<()> {
    let v = VARIANTS
        .iter()
        .position(|n| *n == name)
        .with_context(|| format!("no bare variant {name}"))?;
    let (threaded, sealed) = (v == 0 || v == 3, v >= 2);
    let aead = || sealed.then(Aead::new);
    let dev_name = device(v);
    let port = PORT + v as u16;
    let tun = Tun::create(&dev_name)?;
    anyhow::ensure!(tun.offload(), "the TUN device took no offloads");
    tun.set_ipv4(address, 24)?;
    tun.set_mtu(MTU)?;
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", &dev_name, "gso_max_size", GSO_MAX_SIZE])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip link set gso_max_size: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tun.up()?;
    let device = tun.as_raw_fd();
    if threaded {
        set_blocking(device)?;
    }
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    socket.connect((peer, port))?;
    let fd = socket.as_raw_fd();
    for (level, option, value) in [
        (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20),
        (libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20),
        (libc::SOL_UDP, libc::UDP_GRO, 1),
    ] {
        setsockopt(fd, level, option, value).with_context(|| format!("setsockopt {option}"))?;
    }
    let heard = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| punch(fd, &heard));
        if !threaded {
            return one_thread(device, fd, &heard, aead());
        }
        // A direction that fails ends the forwarder, loudly, rather than half of it.
        s.spawn(|| {
            if let Err(e) = device_to_udp(device, fd, aead()) {
                eprintln!("bare: {e:#}");
                std::process::exit(1);
            }
        });
        udp_to_device(fd, device, &heard, aead().as_ref())
    })
}

/// Keepalives: every 100 ms until the peer was heard (opening both NATs), then every 2 s.
fn punch(socket: RawFd, heard: &AtomicBool) {
    loop {
        // A refused send (nothing listening yet) is retried by the next round.
        let _ = send_frame(socket, &[], true);
        let pause = if heard.load(Ordering::Relaxed) { 2_000 } else { 100 };
        std::thread::sleep(Duration::from_millis(pause));
    }
}

fn device_to_udp(device: RawFd, socket: RawFd, mut aead: Option<Aead>) -> anyhow::Result<()> {
    let mut frame = vec![0u8; FRAME_MAX + SEALED_OVERHEAD];
    loop {
        let n = read_and_seal(device, &mut frame, aead.as_mut());
        anyhow::ensure!(n >= 0, "device read: {}", io::Error::last_os_error());
        // A full socket buffer or an ICMP error drops the frame, as a congested link would.
        let _ = send_frame(socket, &frame[..n as usize], false);
    }
}

/// Reads one frame (sealed in place with `aead`); the bytes to send, or −1 (see errno).
fn read_and_seal(device: RawFd, frame: &mut [u8], aead: Option<&mut Aead>) -> isize {
    let at = if aead.is_some() { NONCE_LEN } else { 0 };
    let end = frame.len() - SEALED_OVERHEAD + at;
    let room = &mut frame[at..end];
    // SAFETY: `room` is writable for its whole length.
    let n = unsafe { libc::read(device, room.as_mut_ptr().cast(), room.len()) };
    match aead {
        Some(aead) if n > 0 => aead.seal(frame, n as usize) as isize,
        _ => n,
    }
}

/// `bare-1t-aead`: each frame sealed with AES-256-GCM (ring, as ringlet's links), in place,
/// behind an 8-byte counter that makes its nonce; what crypto alone costs.
struct Aead {
    key: LessSafeKey,
    next: u64,
}

const NONCE_LEN: usize = 8;
const SEALED_OVERHEAD: usize = NONCE_LEN + 16;

impl Aead {
    fn new() -> Aead {
        Aead {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).expect("a 32-byte key")),
            next: 0,
        }
    }

    fn nonce(counter: [u8; NONCE_LEN]) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter);
        Nonce::assume_unique_for_key(n)
    }

    /// Seals `buf[NONCE_LEN..NONCE_LEN + len]`: counter in front, tag behind; the sealed length.
    fn seal(&mut self, buf: &mut [u8], len: usize) -> usize {
        let counter = self.next.to_be_bytes();
        self.next += 1;
        buf[..NONCE_LEN].copy_from_slice(&counter);
        let body = NONCE_LEN..NONCE_LEN + len;
        let tag = self
            .key
            .seal_in_place_separate_tag(Self::nonce(counter), Aad::empty(), &mut buf[body.clone()])
            .expect("a frame is far below GCM's limit");
        buf[body.end..body.end + 16].copy_from_slice(tag.as_ref());
        body.end + 16
    }

    /// The plaintext of a sealed record, opened in place; `None` if it does not authenticate.
    fn open<'a>(&self, record: &'a mut [u8]) -> Option<&'a mut [u8]> {
        let counter: [u8; NONCE_LEN] = record.get(..NONCE_LEN)?.try_into().ok()?;
        self.key
            .open_in_place(Self::nonce(counter), Aad::empty(), &mut record[NONCE_LEN..])
            .ok()
    }
}

/// Sends `frame` as pieces in one segmented send, each behind its header; a `punch` is one
/// empty piece whose header index is [`PUNCH`].
fn send_frame(socket: RawFd, frame: &[u8], punch: bool) -> io::Result<()> {
    let count = frame.len().div_ceil(PIECE).max(1);
    if count > MAX_PIECES {
        return Err(io::Error::other("frame longer than the send limit"));
    }
    let headers: [[u8; HEADER]; MAX_PIECES] =
        std::array::from_fn(|i| [if punch { PUNCH } else { i as u8 }, count as u8, 0, 0]);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2 * MAX_PIECES];
    let pieces = frame.chunks(PIECE).chain((frame.is_empty()).then_some(&[][..]));
    for (i, piece) in pieces.enumerate() {
        iov[2 * i] = slice_iov(&headers[i]);
        iov[2 * i + 1] = slice_iov(piece);
    }
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2 * count;
    let mut control = Control([0; 32]);
    if count > 1 {
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control_len(std::mem::size_of::<u16>());
        // SAFETY: msg_control points at `control`, large enough for one u16 message.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), SEGMENT as u16);
        }
    }
    // SAFETY: every iovec points into `headers` or `frame`, both alive across the call.
    let sent = unsafe { libc::sendmsg(socket, &msg, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives coalesced datagrams straight into place (headers apart, pieces end to end) and
/// writes every whole frame to the device.
fn udp_to_device(
    socket: RawFd,
    device: RawFd,
    heard: &AtomicBool,
    aead: Option<&Aead>,
) -> anyhow::Result<()> {
    let mut receiver = Receiver::new();
    loop {
        match receiver.receive(socket, 0, |frame| write_frame(device, frame, aead)) {
            Ok(()) => heard.store(true, Ordering::Relaxed),
            // ICMP errors (the peer not up yet) surface here; they end nothing.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => anyhow::bail!("recvmsg: {e}"),
        }
    }
}

/// Both directions in one thread (`bare-1t*`), as an event loop does: wait for
/// either descriptor, then drain what it has.
fn one_thread(
    device: RawFd,
    socket: RawFd,
    heard: &AtomicBool,
    mut aead: Option<Aead>,
) -> anyhow::Result<()> {
    let mut receiver = Receiver::new();
    let mut frame = vec![0u8; FRAME_MAX + SEALED_OVERHEAD];
    loop {
        let mut fds = [device, socket].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is a valid array of two pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, 1_000) } < 0 {
            anyhow::bail!("poll: {}", io::Error::last_os_error());
        }
        if fds[0].revents != 0 {
            loop {
                let n = read_and_seal(device, &mut frame, aead.as_mut());
                if n <= 0 {
                    break;
                }
                let _ = send_frame(socket, &frame[..n as usize], false);
            }
        }
        if fds[1].revents != 0 {
            loop {
                match receiver.receive(socket, libc::MSG_DONTWAIT, |frame| {
                    write_frame(device, frame, aead.as_ref())
                }) {
                    Ok(()) => heard.store(true, Ordering::Relaxed),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(_would_block) => break,
                }
            }
        }
    }
}

/// Writes a received frame (opened first with `aead`; one that does not open is dropped).
fn write_frame(device: RawFd, frame: &mut [u8], aead: Option<&Aead>) {
    let frame = match aead {
        Some(aead) => match aead.open(frame) {
            Some(plain) => plain,
            None => return,
        },
        None => frame,
    };
    // SAFETY: `frame` is readable for its length. A refused write drops the frame.
    unsafe { libc::write(device, frame.as_ptr().cast(), frame.len()) };
}

/// The buffers one receive scatters into.
struct Receiver {
    headers: [[u8; HEADER]; MAX_PIECES],
    data: Vec<u8>,
    control: Control,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            headers: [[0u8; HEADER]; MAX_PIECES],
            data: vec![0u8; MAX_PIECES * PIECE],
            control: Control([0; 32]),
        }
    }

    /// One `recvmsg` (with `flags`); every whole frame in it goes to `write`.
    fn receive(&mut self, socket: RawFd, flags: libc::c_int, write: impl FnMut(&mut [u8])) -> io::Result<()> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2 * MAX_PIECES];
        for (i, (h, piece)) in self
            .headers
            .iter_mut()
            .zip(self.data.chunks_mut(PIECE))
            .enumerate()
        {
            iov[2 * i] = slice_iov_mut(h);
            iov[2 * i + 1] = slice_iov_mut(piece);
        }
        // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        msg.msg_control = self.control.0.as_mut_ptr().cast();
        msg.msg_controllen = self.control.0.len();
        // SAFETY: as above; the kernel writes at most the lengths given.
        let n = unsafe { libc::recvmsg(socket, &mut msg, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut received = Received {
            headers: &self.headers,
            data: &mut self.data,
            len: n as usize,
            stride: gro_size(&msg).unwrap_or(n as usize),
        };
        received.frames(write);
        Ok(())
    }
}

/// One receive, scattered as if every datagram were [`SEGMENT`] bytes long.
struct Received<'a> {
    headers: &'a [[u8; HEADER]; MAX_PIECES],
    data: &'a mut [u8],
    /// Bytes received.
    len: usize,
    /// Size of each coalesced datagram (the last may be shorter).
    stride: usize,
}

impl Received<'_> {
    /// Calls `write` with each whole frame; punches and broken frames are skipped.
    fn frames(&mut self, mut write: impl FnMut(&mut [u8])) {
        if self.stride != SEGMENT && self.len > self.stride {
            return self.small_datagrams(write);
        }
        let segments = self.len.div_ceil(SEGMENT);
        // Data bytes of segment j: all are full but the last.
        let data_end = |j: usize| {
            j * PIECE
                + if j + 1 == segments {
                    self.len - j * SEGMENT - HEADER
                } else {
                    PIECE
                }
        };
        let mut k = 0;
        while k < segments {
            let [index, count, ..] = self.headers[k];
            let count = usize::from(count);
            if index != 0 || count == 0 || k + count > segments || self.len - k * SEGMENT < HEADER {
                k += 1;
                continue;
            }
            write(&mut self.data[k * PIECE..data_end(k + count - 1)]);
            k += count;
        }
    }

    /// Coalesced datagrams of another size (small frames, keepalives): each is one frame.
    fn small_datagrams(&self, mut write: impl FnMut(&mut [u8])) {
        let mut stream = Vec::with_capacity(self.len);
        for (j, header) in self.headers.iter().enumerate().take(self.len.div_ceil(SEGMENT)) {
            let left = self.len - j * SEGMENT;
            stream.extend_from_slice(&header[..left.min(HEADER)]);
            let data = left.saturating_sub(HEADER).min(PIECE);
            stream.extend_from_slice(&self.data[j * PIECE..j * PIECE + data]);
        }
        for datagram in stream.chunks_mut(self.stride.max(1)) {
            if datagram.len() > HEADER && datagram[..2] == [0, 1] {
                write(&mut datagram[HEADER..]);
            }
        }
    }
}

/// A cmsg buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 32]);

fn control_len(data: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic.
    unsafe { libc::CMSG_SPACE(data as u32) as usize }
}

/// The GRO segment size the kernel reported, if it coalesced.
fn gro_size(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: walks the control messages the kernel wrote within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).ok();
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

fn slice_iov(s: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: s.as_ptr().cast_mut().cast(),
        iov_len: s.len(),
    }
}

fn slice_iov_mut(s: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: s.as_mut_ptr().cast(),
        iov_len: s.len(),
    }
}

fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn setsockopt(fd: RawFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
