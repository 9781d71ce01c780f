//! The system calls behind [`crate::Tun`]: `/dev/net/tun` and interface ioctls. Every
//! `unsafe` block of the crate is here, each passing a zeroed, fully initialised `repr(C)`
//! request of the size the kernel expects.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`: the kernel may leave L4 checksums to us and hand
/// over TCP super-packets.
const TUN_OFFLOADS: libc::c_uint = 0x01 | 0x02 | 0x04;

/// Linux's `struct in6_ifreq`.
#[repr(C)]
struct In6Ifreq {
    addr: libc::in6_addr,
    prefixlen: u32,
    ifindex: libc::c_int,
}

fn request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens the device; with `vnet_hdr`, every read and write carries a virtio-net header.
pub fn open_tun(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    let path = CString::new("/dev/net/tun").expect("no NUL in a literal");
    // SAFETY: path is a valid C string; the returned descriptor is owned below.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(context(
            e,
            "cannot open /dev/net/tun (needs root or CAP_NET_ADMIN, and the tun module)",
        ));
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = request(name);
    req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
    // SAFETY: TUNSETIFF reads and writes one ifreq.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) }).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EBUSY) => context(e, &format!("device {name} is in use by another process")),
            Some(libc::EINVAL) => context(e, &format!("an interface {name} exists and is not a TUN device")),
            _ => context(e, &format!("cannot create TUN device {name}")),
        }
    })?;
    Ok(fd)
}

pub fn set_persist(fd: &OwnedFd, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, libc::c_ulong::from(persist)) })
        .map_err(|e| context(e, "cannot clear the device's persist flag"))
}

/// Offers the kernel checksum and TCP segmentation offload (needs a virtio-net header).
pub fn set_offload(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes an integer argument by value.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            TUNSETOFFLOAD as _,
            libc::c_ulong::from(TUN_OFFLOADS),
        )
    })
    .map_err(|e| context(e, "cannot enable TUN offloads"))
}

/// A datagram socket of `family` to carry interface ioctls.
fn control_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is how the ioctl
    // interface passes an IPv4 address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq_ioctl(sock: &OwnedFd, op: libc::c_ulong, req: &mut libc::ifreq, what: &str) -> io::Result<()> {
    // SAFETY: every SIOC*IF* request used here reads or writes one ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), op as _, req as *mut libc::ifreq) })
        .map_err(|e| context(e, what))
}

pub fn set_ipv4(name: &str, addr: Ipv4Addr, mask: Ipv4Addr, broadcast: Ipv4Addr) -> io::Result<()> {
    let sock = control_socket(libc::AF_INET)?;
    let mut req = request(name);
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    ifreq_ioctl(&sock, libc::SIOCSIFADDR, &mut req, "cannot set the IPv4 address")?;
    let mut req = request(name);
    req.ifr_ifru.ifru_netmask = sockaddr_v4(mask);
    ifreq_ioctl(&sock, libc::SIOCSIFNETMASK, &mut req, "cannot set the netmask")?;
    let mut req = request(name);
    req.ifr_ifru.ifru_broadaddr = sockaddr_v4(broadcast);
    ifreq_ioctl(
        &sock,
        libc::SIOCSIFBRDADDR,
        &mut req,
        "cannot set the broadcast address",
    )
}

fn index(sock: &OwnedFd, name: &str) -> io::Result<libc::c_int> {
    let mut req = request(name);
    ifreq_ioctl(sock, libc::SIOCGIFINDEX, &mut req, "no such interface")?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

pub fn add_ipv6(name: &str, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
    let sock = control_socket(libc::AF_INET6).map_err(|e| context(e, "IPv6 is not available"))?;
    let mut req = In6Ifreq {
        addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        prefixlen: u32::from(prefix),
        ifindex: index(&sock, name)?,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one in6_ifreq.
    check(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            &mut req as *mut In6Ifreq,
        )
    })
    .map_err(|e| context(e, "cannot add the IPv6 address"))
}

pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = control_socket(libc::AF_INET)?;
    let mut req = request(name);
    req.ifr_ifru.ifru_mtu = libc::c_int::try_from(mtu).map_err(|_| io::ErrorKind::InvalidInput)?;
    ifreq_ioctl(
        &sock,
        libc::SIOCSIFMTU,
        &mut req,
        &format!("cannot set MTU {mtu}"),
    )
}

pub fn mtu(name: &str) -> io::Result<u32> {
    let sock = control_socket(libc::AF_INET)?;
    let mut req = request(name);
    ifreq_ioctl(&sock, libc::SIOCGIFMTU, &mut req, "cannot read the MTU")?;
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu }.max(0) as u32)
}

/// The interface index of `name` in this thread's network namespace.
pub fn index_of(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

pub fn set_up(name: &str) -> io::Result<()> {
    let sock = control_socket(libc::AF_INET)?;
    let mut req = request(name);
    ifreq_ioctl(
        &sock,
        libc::SIOCGIFFLAGS,
        &mut req,
        "cannot read the interface flags",
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags =
        flags | (libc::IFF_UP | libc::IFF_RUNNING | libc::IFF_MULTICAST) as libc::c_short;
    ifreq_ioctl(
        &sock,
        libc::SIOCSIFFLAGS,
        &mut req,
        "cannot bring the interface up",
    )
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of writes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn write(fd: RawFd, packet: &[u8]) -> io::Result<usize> {
    // SAFETY: packet is valid for packet.len() bytes of reads.
    let n = unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes `parts` as one packet (gathered by the kernel, not copied here first).
pub fn writev(fd: RawFd, parts: &[&[u8]]) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let count = libc::c_int::try_from(iov.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: every iovec points into a live slice of its length; writev only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
