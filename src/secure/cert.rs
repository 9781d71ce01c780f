//! Group certificates. A group is an Ed25519 CA key; a member certificate binds one node's
//! static X25519 key (and so its NodeId), the user's bare JID, the group's name and a validity
//! window, signed by the CA. One certificate serves one node key: a second node of the same
//! user needs its own.
//!
//! Wire format (version 0, integers big-endian), signed as a whole but for the signature:
//! ```text
//! "RC" 0x00 0x01            magic, version, kind (1 member certificate)
//! [32]                      CA public key (Ed25519): names the group
//! u8 + UTF-8 (1–64)         group name
//! [32]                      node public key (X25519)
//! u8 + UTF-8 (3–255)        user's bare JID
//! u64 serial · u64 not_before · u64 expires (unix seconds)
//! [64]                      Ed25519 signature over CONTEXT ‖ every byte before it
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ringlet_xmpp::BareJid;

use crate::codec::{Reader, Truncated};
use crate::identity::NodeId;

pub const MAGIC: [u8; 2] = *b"RC";
pub const VERSION: u8 = 0;
pub const KIND_MEMBER: u8 = 1;
pub const MAX_GROUP_NAME: usize = 64;
/// Domain separation: a signature over a certificate is never valid for anything else.
const CONTEXT: &[u8] = b"ringlet member certificate v0\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate truncated")]
    Truncated,
    #[error("not a ringlet certificate")]
    Magic,
    #[error("unsupported certificate version {0}")]
    Version(u8),
    #[error("unexpected certificate kind {0}")]
    Kind(u8),
    #[error("group name must be 1 to {MAX_GROUP_NAME} bytes of UTF-8")]
    GroupName,
    #[error("the user is not a bare JID")]
    User,
    #[error("bytes after the certificate's signature")]
    Trailing,
    #[error("invalid CA public key")]
    CaKey,
    #[error("signature does not verify")]
    Signature,
    #[error("certificate of another group")]
    OtherGroup,
    #[error("certificate not valid yet")]
    NotYetValid,
    #[error("certificate expired")]
    Expired,
    #[error("certificate is for another node key")]
    OtherNode,
    #[error("certificate is for {cert}, the peer speaks as {seen}")]
    OtherUser { cert: String, seen: String },
    #[error("certificate revoked")]
    Revoked,
}

impl From<Truncated> for CertError {
    fn from(_: Truncated) -> Self {
        CertError::Truncated
    }
}

/// The group's certificate authority: signs member certificates and revocations.
pub struct Ca {
    key: SigningKey,
    group: String,
}

impl Ca {
    pub fn from_seed(group: &str, seed: [u8; 32]) -> Result<Self, CertError> {
        check_group_name(group)?;
        Ok(Ca {
            key: SigningKey::from_bytes(&seed),
            group: group.to_owned(),
        })
    }

    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Issues a certificate for `node_key` held by `user`, valid [not_before, expires].
    pub fn sign(
        &self,
        node_key: [u8; 32],
        user: &BareJid,
        serial: u64,
        not_before: u64,
        expires: u64,
    ) -> MemberCert {
        let mut cert = MemberCert {
            ca: self.public(),
            group: self.group.clone(),
            node_key,
            user: user.to_string(),
            serial,
            not_before,
            expires,
            signature: [0; 64],
        };
        cert.signature = self.sign_bytes(CONTEXT, &cert.signed_part());
        cert
    }

    pub(super) fn sign_bytes(&self, context: &[u8], body: &[u8]) -> [u8; 64] {
        let mut msg = Vec::with_capacity(context.len() + body.len());
        msg.extend_from_slice(context);
        msg.extend_from_slice(body);
        self.key.sign(&msg).to_bytes()
    }
}

/// Verifies `signature` by `ca` over `context ‖ body`.
pub(super) fn verify_bytes(
    ca: &[u8; 32],
    context: &[u8],
    body: &[u8],
    signature: &[u8; 64],
) -> Result<(), CertError> {
    let key = VerifyingKey::from_bytes(ca).map_err(|_| CertError::CaKey)?;
    let mut msg = Vec::with_capacity(context.len() + body.len());
    msg.extend_from_slice(context);
    msg.extend_from_slice(body);
    key.verify_strict(&msg, &Signature::from_bytes(signature))
        .map_err(|_| CertError::Signature)
}

pub(super) fn check_group_name(name: &str) -> Result<(), CertError> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME || name.chars().any(char::is_control) {
        return Err(CertError::GroupName);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCert {
    pub ca: [u8; 32],
    pub group: String,
    pub node_key: [u8; 32],
    pub user: String,
    pub serial: u64,
    pub not_before: u64,
    pub expires: u64,
    pub signature: [u8; 64],
}

impl MemberCert {
    pub fn node_id(&self) -> NodeId {
        NodeId::of_public_key(&self.node_key)
    }

    fn signed_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.user.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, KIND_MEMBER]);
        out.extend_from_slice(&self.ca);
        out.push(self.group.len() as u8);
        out.extend_from_slice(self.group.as_bytes());
        out.extend_from_slice(&self.node_key);
        out.push(self.user.len() as u8);
        out.extend_from_slice(self.user.as_bytes());
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut out = self.signed_part();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes a certificate; checks its form only (see [`MemberCert::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, CertError> {
        let mut r = Reader::new(bytes);
        match read_header(&mut r, MAGIC, VERSION)? {
            KIND_MEMBER => {}
            k => return Err(CertError::Kind(k)),
        }
        let cert = MemberCert {
            ca: r.array()?,
            group: read_group(&mut r)?,
            node_key: r.array()?,
            user: read_user(&mut r)?,
            serial: r.u64()?,
            not_before: r.u64()?,
            expires: r.u64()?,
            signature: r.array()?,
        };
        if !r.is_empty() {
            return Err(CertError::Trailing);
        }
        Ok(cert)
    }

    pub fn user_jid(&self) -> Result<BareJid, CertError> {
        parse_bare_jid(&self.user)
    }

    /// Checks the signature against the group's CA and the validity window at `unix_now`.
    pub fn verify(&self, group_ca: &[u8; 32], unix_now: u64) -> Result<(), CertError> {
        if &self.ca != group_ca {
            return Err(CertError::OtherGroup);
        }
        verify_bytes(&self.ca, CONTEXT, &self.signed_part(), &self.signature)?;
        if unix_now < self.not_before {
            return Err(CertError::NotYetValid);
        }
        if unix_now > self.expires {
            return Err(CertError::Expired);
        }
        Ok(())
    }

    /// [`MemberCert::verify`], and that the certificate belongs to the peer in front of us:
    /// the static key it proved in the handshake and, when known, the JID it uses on XMPP.
    pub fn verify_peer(
        &self,
        group_ca: &[u8; 32],
        unix_now: u64,
        proven_key: &[u8; 32],
        seen_jid: Option<&BareJid>,
    ) -> Result<(), CertError> {
        self.verify(group_ca, unix_now)?;
        if &self.node_key != proven_key {
            return Err(CertError::OtherNode);
        }
        if let Some(seen) = seen_jid {
            if seen.to_string() != self.user {
                return Err(CertError::OtherUser {
                    cert: self.user.clone(),
                    seen: seen.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Reads a signed object's magic and version; returns its kind byte.
pub(super) fn read_header(r: &mut Reader, magic: [u8; 2], version: u8) -> Result<u8, CertError> {
    if r.array::<2>()? != magic {
        return Err(CertError::Magic);
    }
    match r.u8()? {
        v if v == version => Ok(r.u8()?),
        v => Err(CertError::Version(v)),
    }
}

pub(super) fn read_group(r: &mut Reader) -> Result<String, CertError> {
    let group = std::str::from_utf8(r.short_bytes()?).map_err(|_| CertError::GroupName)?;
    check_group_name(group)?;
    Ok(group.to_owned())
}

/// A u8-length bare JID, in its canonical spelling only: what was signed is what we read.
pub(super) fn read_user(r: &mut Reader) -> Result<String, CertError> {
    let user = std::str::from_utf8(r.short_bytes()?).map_err(|_| CertError::User)?;
    if parse_bare_jid(user)?.to_string() != user {
        return Err(CertError::User);
    }
    Ok(user.to_owned())
}

fn parse_bare_jid(s: &str) -> Result<BareJid, CertError> {
    let jid: BareJid = s.parse().map_err(|_| CertError::User)?;
    if jid.node().is_none() {
        return Err(CertError::User);
    }
    Ok(jid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Ca {
        Ca::from_seed("friends", [3; 32]).unwrap()
    }

    fn alice() -> BareJid {
        "alice@example.org".parse().unwrap()
    }

    #[test]
    fn a_signed_certificate_round_trips_and_verifies_within_its_window() {
        let ca = ca();
        let cert = ca.sign([9; 32], &alice(), 7, 100, 200);
        let back = MemberCert::parse(&cert.emit()).unwrap();
        assert_eq!(back, cert);
        assert_eq!(back.verify(&ca.public(), 150), Ok(()));
        assert_eq!(back.verify(&ca.public(), 99), Err(CertError::NotYetValid));
        assert_eq!(back.verify(&ca.public(), 201), Err(CertError::Expired));
        assert_eq!(back.node_id(), NodeId::of_public_key(&[9; 32]));
    }

    #[test]
    fn every_flipped_bit_breaks_the_certificate() {
        let ca = ca();
        let bytes = ca.sign([9; 32], &alice(), 7, 100, 200).emit();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let ok = MemberCert::parse(&b).and_then(|c| c.verify(&ca.public(), 150));
            assert!(ok.is_err(), "bit {i} flipped and the certificate still verifies");
        }
    }

    #[test]
    fn another_group_another_key_or_another_user_is_refused() {
        let ca = ca();
        let other = Ca::from_seed("friends", [4; 32]).unwrap();
        let cert = ca.sign([9; 32], &alice(), 1, 0, 10);
        assert_eq!(cert.verify(&other.public(), 5), Err(CertError::OtherGroup));
        assert_eq!(
            cert.verify_peer(&ca.public(), 5, &[8; 32], None),
            Err(CertError::OtherNode)
        );
        let bob: BareJid = "bob@example.org".parse().unwrap();
        assert!(matches!(
            cert.verify_peer(&ca.public(), 5, &[9; 32], Some(&bob)),
            Err(CertError::OtherUser { .. })
        ));
        assert_eq!(
            cert.verify_peer(&ca.public(), 5, &[9; 32], Some(&alice())),
            Ok(())
        );
        // A forged certificate that names our CA but is signed by another key.
        let mut forged = other.sign([9; 32], &alice(), 1, 0, 10);
        forged.ca = ca.public();
        assert_eq!(forged.verify(&ca.public(), 5), Err(CertError::Signature));
    }

    #[test]
    fn malformed_certificates_get_clear_errors() {
        let good = ca().sign([9; 32], &alice(), 1, 0, 10).emit();
        assert_eq!(
            MemberCert::parse(&good[..good.len() - 1]),
            Err(CertError::Truncated)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(MemberCert::parse(&long), Err(CertError::Trailing));
        let mut v = good.clone();
        v[2] = 9;
        assert_eq!(MemberCert::parse(&v), Err(CertError::Version(9)));
        assert_eq!(MemberCert::parse(b"XX"), Err(CertError::Magic));
        assert!(Ca::from_seed("", [0; 32]).is_err());
        assert!(Ca::from_seed(&"x".repeat(65), [0; 32]).is_err());
    }
}
