//! A Linux TUN device (layer 3, no packet-info header) for ringlet's VPN: created through
//! `/dev/net/tun`, configured with ioctls (IPv4 address, netmask and broadcast, an IPv6
//! address, MTU, up), read and written without blocking through tokio's `AsyncFd`.
//!
//! The device is not persistent: the kernel removes it when the last descriptor closes, so it
//! goes with the process, also when the process crashes. [`Tun::create`] also takes over a
//! persistent device of the same name that some earlier run left behind and clears its
//! persist flag, so that it too goes when this process ends.

mod ioctl;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Longest interface name Linux accepts (IFNAMSIZ − 1).
pub const NAME_MAX: usize = 15;

/// An open TUN device.
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

impl Tun {
    /// Opens (creating) the TUN device `name`. Fails with `AlreadyExists`-like errors when the
    /// name is held by a running process or by a device that is not a TUN.
    pub fn create(name: &str) -> io::Result<Tun> {
        validate_name(name)?;
        let fd = ioctl::open_tun(name)?;
        // A leftover persistent device: make it go with us.
        ioctl::set_persist(&fd, false)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it (and so keeps the same
        // open descriptor) for its whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Tun {
            fd,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
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

    /// Reads one IP packet; waits until there is one.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| ioctl::read(fd.get_ref().as_raw_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one IP packet if one is waiting now; an empty queue is `WouldBlock`. Lets a
    /// caller that was woken by [`Tun::recv`] take the rest of a burst in the same turn.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        ioctl::read(self.fd.get_ref().as_raw_fd(), buf)
    }

    /// Writes one IP packet if the device takes it now; a full device queue is
    /// `WouldBlock` (the packet is dropped, as a router would).
    pub fn try_send(&self, packet: &[u8]) -> io::Result<usize> {
        ioctl::write(self.fd.get_ref().as_raw_fd(), packet)
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
