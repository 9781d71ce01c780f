//! A Linux TUN device (layer 3, no packet-info header) for ringlet's VPN: created through
//! `/dev/net/tun`, configured with ioctls (IPv4 address, netmask and broadcast, an IPv6
//! address, MTU, up), read and written without blocking through tokio's `AsyncFd`.
//!
//! The device is not persistent: the kernel removes it when the last descriptor closes, so it
//! goes with the process, also when the process crashes. [`Tun::create`] also takes over a
//! persistent device of the same name that some earlier run left behind and clears its
//! persist flag, so that it too goes when this process ends.
//!
//! Where the kernel allows, the device is opened with TCP segmentation offload: a read may
//! return a TCP super-packet of up to 64 KB, which [`Tun::unpack`] cuts into MTU-sized
//! packets, and [`Tun::write_batch`] merges in-order TCP segments back into super-packets.
//! Either way one kernel pass carries up to 64 KB instead of one MTU.

mod checksum;
mod coalesce;
mod ioctl;
mod offload;

pub use coalesce::Batch;
pub use offload::{split_super, Malformed, SuperPacket};

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// Longest interface name Linux accepts (IFNAMSIZ − 1).
pub const NAME_MAX: usize = 15;

/// Room for the longest frame a read returns: a virtio header and an IPv6 super-packet.
pub const FRAME_MAX: usize = offload::VNET_HDR_LEN + 40 + 65_535;

/// An open TUN device.
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    name: String,
    /// Opened with virtio headers and TCP offloads.
    offload: bool,
}

/// What [`Tun::write_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Packets the device took.
    pub packets: u64,
    /// System calls that took them.
    pub writes: u64,
    /// Packets dropped (the device refused their write).
    pub dropped: u64,
}

impl Tun {
    /// Opens (creating) the TUN device `name`. Fails with `AlreadyExists`-like errors when the
    /// name is held by a running process or by a device that is not a TUN.
    /// Offloads are on where the kernel takes them.
    pub fn create(name: &str) -> io::Result<Tun> {
        Self::open(name, true)
    }

    /// [`Tun::create`] with offloads off: one IP packet per read and write.
    pub fn create_without_offload(name: &str) -> io::Result<Tun> {
        Self::open(name, false)
    }

    fn open(name: &str, try_offload: bool) -> io::Result<Tun> {
        validate_name(name)?;
        let with_offload = || ioctl::open_tun(name, true).and_then(|fd| ioctl::set_offload(&fd).map(|()| fd));
        let (fd, offload) = match try_offload.then(with_offload) {
            Some(Ok(fd)) => (fd, true),
            refused => {
                if let Some(Err(e)) = refused {
                    tracing::debug!(error = %e, "TUN without offloads");
                }
                (ioctl::open_tun(name, false)?, false)
            }
        };
        // A leftover persistent device: make it go with us.
        ioctl::set_persist(&fd, false)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it (and so keeps the same
        // open descriptor) for its whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Tun {
            fd,
            name: name.to_owned(),
            offload,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device runs with TCP segmentation offload.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Sets the IPv4 address with its prefix length (and the subnet's broadcast address, so
    /// that broadcasts written to the device are delivered locally).
    pub fn set_ipv4(&self, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        if prefix > 32 {
            return Err(invalid(format!("IPv4 prefix /{prefix} is longer than 32")));
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        let broadcast = Ipv4Addr::from(u32::from(addr) | !mask);
        ioctl::set_ipv4(&self.name, addr, Ipv4Addr::from(mask), broadcast)
    }

    /// Adds an IPv6 address with its prefix length.
    pub fn add_ipv6(&self, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
        if prefix > 128 {
            return Err(invalid(format!("IPv6 prefix /{prefix} is longer than 128")));
        }
        ioctl::add_ipv6(&self.name, addr, prefix)
    }

    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        ioctl::set_mtu(&self.name, mtu)
    }

    /// The device's MTU as the kernel has it.
    pub fn mtu(&self) -> io::Result<u32> {
        ioctl::mtu(&self.name)
    }

    /// Brings the device up (and lets it carry multicast).
    pub fn up(&self) -> io::Result<()> {
        ioctl::set_up(&self.name)
    }

    /// Reads one frame (give it [`FRAME_MAX`] bytes); waits until there is one. The frame
    /// holds one packet or, with offloads, a TCP super-packet: [`Tun::unpack`] it.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| ioctl::read(fd.get_ref().as_raw_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one frame if one is waiting now; an empty queue is `WouldBlock`. Lets a
    /// caller that was woken by [`Tun::recv`] take the rest of a burst in the same turn.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        ioctl::read(self.fd.get_ref().as_raw_fd(), buf)
    }

    /// The IP packets in a frame read from the device, appended to `out`: the packet, or the
    /// segments of a TCP super-packet (with their checksums). A frame the kernel should never
    /// give is refused and adds nothing.
    pub fn unpack(&self, frame: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), Malformed> {
        if self.offload {
            offload::split(frame, out)
        } else {
            out.push(frame.to_vec());
            Ok(())
        }
    }

    /// The frame as a TCP super-packet that may travel whole to another host's device, if it
    /// is one (never without offloads); other frames are for [`Tun::unpack`].
    pub fn super_packet<'a>(&self, frame: &'a [u8]) -> Option<SuperPacket<'a>> {
        self.offload.then(|| offload::super_packet(frame)).flatten()
    }

    /// Writes one IP packet if the device takes it now; a full device queue is
    /// `WouldBlock` (the packet is dropped, as a router would).
    pub fn try_send(&self, packet: &[u8]) -> io::Result<usize> {
        let fd = self.fd.get_ref().as_raw_fd();
        if self.offload {
            let hdr = offload::VnetHdr::default().encode();
            ioctl::writev(fd, &[&hdr, packet]).map(|n| n.saturating_sub(hdr.len()))
        } else {
            ioctl::write(fd, packet)
        }
    }

    /// Writes every packet of `batch` and empties it: with offloads, consecutive segments of a
    /// TCP flow as one super-packet. A write the device refuses drops its packets (counted;
    /// the first error is logged at debug level).
    pub fn write_batch(&self, batch: &mut Batch) -> Written {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut done = Written::default();
        let mut count = |result: io::Result<usize>, packets: usize| match result {
            Ok(_) => {
                done.packets += packets as u64;
                done.writes += 1;
            }
            Err(e) => {
                if done.dropped == 0 {
                    tracing::debug!(error = %e, packets, "VPN device write failed");
                }
                done.dropped += packets as u64;
            }
        };
        if self.offload {
            batch.drain(|w| {
                let hdr = w.hdr.encode();
                let mut parts = Vec::with_capacity(w.parts.len() + 1);
                parts.push(hdr.as_slice());
                parts.extend(w.parts);
                count(ioctl::writev(fd, &parts), w.packets);
            });
        } else {
            for packet in batch.take() {
                count(ioctl::write(fd, &packet), 1);
            }
        }
        done
    }
}

/// The device's descriptor, for a caller that does its own I/O (a benchmark's baseline
/// forwarder): non-blocking, and with [`Tun::offload`] every frame carries a virtio-net header.
impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

/// Whether a network interface called `name` exists now.
pub fn exists(name: &str) -> bool {
    validate_name(name).is_ok() && ioctl::index_of(name).is_some()
}

/// Checks an interface name the way the kernel will (length, characters).
pub fn validate_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name:?} is not a valid interface name (1–{NAME_MAX} of A–Z a–z 0–9 - _ .)"
        )))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_any_syscall() {
        for bad in [
            "",
            "a-name-that-is-too-long",
            "../etc",
            "ring let",
            "ringlet0\n",
            "..",
        ] {
            let err = Tun::create(bad).err().expect(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(validate_name("ringlet0").is_ok());
    }
}
