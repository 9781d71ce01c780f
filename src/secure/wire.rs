//! Secure packets (version 0): what the link layer sends once links are encrypted. Integers
//! big-endian; a session index is chosen by its owner so packets find their session without
//! trusting addresses, which NATs rewrite.
//!
//! ```text
//! byte 0   type
//! 1 init       pattern u8 (1 IK, 2 XX; | 0x80: a cookie follows) · sender u32 ·
//!              [cookie 16] · Noise message (IK: e, es, s, ss + payload; XX: e)
//! 2 response   sender u32 · receiver u32 · Noise message (IK: e, ee, se; XX: e, ee, s, es)
//! 3 final      receiver u32 · Noise message (XX: s, se + payload)
//! 4 data       receiver u32 · counter u64 · ciphertext + 16-byte tag
//! 5 cookie     receiver u32 (the init's sender) · cookie 16: a busy responder's answer to an
//!              init without a valid cookie; the init is sent again carrying it
//! ```
//! Bytes 0..13 of a data packet (type, receiver, counter) are its AEAD associated data.

use crate::codec::{Reader, Truncated};

pub const INIT: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const FINAL: u8 = 3;
pub const DATA: u8 = 4;
pub const COOKIE: u8 = 5;
pub const COOKIE_LEN: usize = 16;
const HAS_COOKIE: u8 = 0x80;
pub const PATTERN_IK: u8 = 1;
pub const PATTERN_XX: u8 = 2;
pub const DATA_HEADER_LEN: usize = 13;
/// Noise messages are at most 65,535 bytes.
pub const MAX_NOISE: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("secure packet truncated")]
    Truncated,
    #[error("unknown secure packet type {0}")]
    Type(u8),
    #[error("unknown handshake pattern {0}")]
    Pattern(u8),
    #[error("handshake message too long")]
    TooLong,
}

impl From<Truncated> for WireError {
    fn from(_: Truncated) -> Self {
        WireError::Truncated
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Init {
        pattern: u8,
        sender: u32,
        cookie: Option<[u8; COOKIE_LEN]>,
        noise: &'a [u8],
    },
    Response {
        sender: u32,
        receiver: u32,
        noise: &'a [u8],
    },
    Final {
        receiver: u32,
        noise: &'a [u8],
    },
    Cookie {
        receiver: u32,
        cookie: [u8; COOKIE_LEN],
    },
    /// `header` is the associated data the ciphertext is bound to.
    Data {
        receiver: u32,
        counter: u64,
        header: &'a [u8],
        sealed: &'a [u8],
    },
}

impl<'a> Packet<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let packet = match r.u8()? {
            INIT => {
                let byte = r.u8()?;
                let pattern = match byte & !HAS_COOKIE {
                    p @ (PATTERN_IK | PATTERN_XX) => p,
                    _ => return Err(WireError::Pattern(byte)),
                };
                let sender = r.u32()?;
                let cookie = if byte & HAS_COOKIE != 0 {
                    Some(r.array()?)
                } else {
                    None
                };
                Packet::Init {
                    pattern,
                    sender,
                    cookie,
                    noise: noise(&mut r)?,
                }
            }
            COOKIE => {
                let p = Packet::Cookie {
                    receiver: r.u32()?,
                    cookie: r.array()?,
                };
                if !r.is_empty() {
                    return Err(WireError::Truncated);
                }
                p
            }
            RESPONSE => Packet::Response {
                sender: r.u32()?,
                receiver: r.u32()?,
                noise: noise(&mut r)?,
            },
            FINAL => Packet::Final {
                receiver: r.u32()?,
                noise: noise(&mut r)?,
            },
            DATA => {
                let receiver = r.u32()?;
                let counter = r.u64()?;
                let sealed = r.rest();
                if sealed.len() < super::transport::TAG_LEN {
                    return Err(WireError::Truncated);
                }
                Packet::Data {
                    receiver,
                    counter,
                    header: &bytes[..DATA_HEADER_LEN],
                    sealed,
                }
            }
            t => return Err(WireError::Type(t)),
        };
        Ok(packet)
    }
}

fn noise<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], WireError> {
    let rest = r.rest();
    if rest.is_empty() {
        return Err(WireError::Truncated);
    }
    if rest.len() > MAX_NOISE {
        return Err(WireError::TooLong);
    }
    Ok(rest)
}

pub fn init(pattern: u8, sender: u32, noise: &[u8]) -> Vec<u8> {
    let mut out = vec![INIT, pattern];
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(noise);
    out
}

/// The same init, carrying `cookie` (an init without one, as [`init`] builds it).
pub fn with_cookie(init: &[u8], cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
    let mut out = init.to_vec();
    if out.len() >= 6 && out[0] == INIT && out[1] & HAS_COOKIE == 0 {
        out[1] |= HAS_COOKIE;
        out.splice(6..6, cookie.iter().copied());
    }
    out
}

pub fn cookie(receiver: u32, cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
    let mut out = vec![COOKIE];
    out.extend_from_slice(&receiver.to_be_bytes());
    out.extend_from_slice(cookie);
    out
}

pub fn response(sender: u32, receiver: u32, noise: &[u8]) -> Vec<u8> {
    let mut out = vec![RESPONSE];
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&receiver.to_be_bytes());
    out.extend_from_slice(noise);
    out
}

pub fn final_message(receiver: u32, noise: &[u8]) -> Vec<u8> {
    let mut out = vec![FINAL];
    out.extend_from_slice(&receiver.to_be_bytes());
    out.extend_from_slice(noise);
    out
}

pub fn data_header(receiver: u32, counter: u64) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[0] = DATA;
    h[1..5].copy_from_slice(&receiver.to_be_bytes());
    h[5..].copy_from_slice(&counter.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_bad_ones_are_named() {
        let i = init(PATTERN_XX, 7, b"noise");
        assert_eq!(
            Packet::parse(&i),
            Ok(Packet::Init {
                pattern: PATTERN_XX,
                sender: 7,
                cookie: None,
                noise: b"noise"
            })
        );
        let c = with_cookie(&i, &[3; COOKIE_LEN]);
        assert_eq!(
            Packet::parse(&c),
            Ok(Packet::Init {
                pattern: PATTERN_XX,
                sender: 7,
                cookie: Some([3; COOKIE_LEN]),
                noise: b"noise"
            })
        );
        assert_eq!(with_cookie(&c, &[4; COOKIE_LEN]), c, "a second cookie");
        assert_eq!(
            Packet::parse(&cookie(7, &[5; COOKIE_LEN])),
            Ok(Packet::Cookie {
                receiver: 7,
                cookie: [5; COOKIE_LEN]
            })
        );
        assert_eq!(
            Packet::parse(&cookie(7, &[5; COOKIE_LEN])[..20]),
            Err(WireError::Truncated)
        );
        assert_eq!(Packet::parse(&init(3, 7, b"n")), Err(WireError::Pattern(3)));
        let r = response(1, 2, b"n");
        assert_eq!(
            Packet::parse(&r),
            Ok(Packet::Response {
                sender: 1,
                receiver: 2,
                noise: b"n"
            })
        );
        let f = final_message(3, b"x");
        assert_eq!(
            Packet::parse(&f),
            Ok(Packet::Final {
                receiver: 3,
                noise: b"x"
            })
        );
        let mut d = data_header(9, 42).to_vec();
        d.extend_from_slice(&[0; 16]);
        assert!(matches!(
            Packet::parse(&d),
            Ok(Packet::Data {
                receiver: 9,
                counter: 42,
                ..
            })
        ));
        assert_eq!(Packet::parse(&d[..20]), Err(WireError::Truncated));
        assert_eq!(
            Packet::parse(&init(PATTERN_IK, 7, b"")),
            Err(WireError::Truncated)
        );
        assert_eq!(Packet::parse(&[9]), Err(WireError::Type(9)));
        assert_eq!(Packet::parse(&[]), Err(WireError::Truncated));
    }
}
