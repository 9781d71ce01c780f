//! Names ringlet derives for XMPP: the overlay namespace id and the session resource.

use sha2::{Digest, Sha256};

/// Version of ringlet's XMPP protocols; it is hashed into every overlay namespace id so that
/// incompatible versions never see each other as members.
pub const PROTOCOL_VERSION: &str = "0";

/// Prefix of every ringlet resource.
pub const RESOURCE_PREFIX: &str = "ringlet";

/// The 16-hex-digit overlay namespace id: SHA-256(name ‖ 0x00 ‖ protocol version), first 8 bytes.
pub fn overlay_ns(overlay_name: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(overlay_name.as_bytes());
    hasher.update([0u8]);
    hasher.update(PROTOCOL_VERSION.as_bytes());
    hex::encode(&hasher.finalize()[..8])
}

/// The resource of one ringlet instance: `ringlet.<ns>.<8 hex>`; `instance` is 4 random bytes.
pub fn resource(ns: &str, instance: [u8; 4]) -> String {
    format!("{RESOURCE_PREFIX}.{ns}.{}", hex::encode(instance))
}

/// True when `s` is a well-formed overlay namespace id (16 lowercase hex digits).
pub fn is_overlay_ns(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_is_16_hex_and_depends_on_name() {
        let a = overlay_ns("alpha");
        assert!(is_overlay_ns(&a));
        assert_ne!(a, overlay_ns("beta"));
        assert_eq!(a, overlay_ns("alpha"));
    }

    #[test]
    fn ns_matches_its_definition() {
        let mut input = b"friends".to_vec();
        input.push(0);
        input.extend_from_slice(b"0");
        let expected = hex::encode(&Sha256::digest(&input)[..8]);
        assert_eq!(overlay_ns("friends"), expected);
    }

    #[test]
    fn resource_layout() {
        let ns = overlay_ns("alpha");
        let r = resource(&ns, [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(r, format!("ringlet.{ns}.deadbeef"));
        assert!(r.len() <= 1023);
    }
}
