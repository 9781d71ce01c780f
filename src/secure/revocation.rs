//! Revocations and the revocation list (CRL). A revocation, signed by the group's CA, names a
//! user (all their nodes), one certificate (by serial) or one node key. A node keeps the ones
//! it knows in its CRL file (one `ringlet-revocation <base64>` line each) and refuses links
//! to what they name; the count of revocations held is the CRL version peers compare.
//!
//! Wire format (version 0, big-endian), signed as a whole but for the signature:
//! ```text
//! "RR" 0x00 kind            kind: 1 user, 2 certificate serial, 3 node key
//! [32]                      CA public key
//! u8 + UTF-8 (1–64)         group name
//! target                    user: u8 + UTF-8 bare JID; serial: u64; node key: [32]
//! u64 issued (unix seconds)
//! [64]                      Ed25519 signature over CONTEXT ‖ every byte before it
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine;

use super::cert::{read_group, read_header, read_user, verify_bytes, Ca, CertError, MemberCert};
use super::files::{self, FileError};
use crate::codec::Reader;

const MAGIC: [u8; 2] = *b"RR";
const VERSION: u8 = 0;
const CONTEXT: &[u8] = b"ringlet revocation v0\0";
const LINE_TAG: &str = "ringlet-revocation ";
/// Most revocations a CRL file may hold.
pub const MAX_REVOCATIONS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    User(String),
    Serial(u64),
    NodeKey([u8; 32]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub ca: [u8; 32],
    pub group: String,
    pub target: Target,
    pub issued: u64,
    pub signature: [u8; 64],
}

impl Revocation {
    /// The CA revokes `target`.
    pub fn sign(ca: &Ca, target: Target, issued: u64) -> Self {
        let mut r = Revocation {
            ca: ca.public(),
            group: ca.group().to_owned(),
            target,
            issued,
            signature: [0; 64],
        };
        r.signature = ca.sign_bytes(CONTEXT, &r.signed_part());
        r
    }

    fn signed_part(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        let (kind, target): (u8, Vec<u8>) = match &self.target {
            Target::User(u) => (1, [&[u.len() as u8][..], u.as_bytes()].concat()),
            Target::Serial(s) => (2, s.to_be_bytes().to_vec()),
            Target::NodeKey(k) => (3, k.to_vec()),
        };
        out.push(kind);
        out.extend_from_slice(&self.ca);
        out.push(self.group.len() as u8);
        out.extend_from_slice(self.group.as_bytes());
        out.extend_from_slice(&target);
        out.extend_from_slice(&self.issued.to_be_bytes());
        out
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut out = self.signed_part();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes a revocation; checks its form only (see [`Revocation::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, CertError> {
        let mut r = Reader::new(bytes);
        let kind = read_header(&mut r, MAGIC, VERSION)?;
        let ca = r.array()?;
        let group = read_group(&mut r)?;
        let target = match kind {
            1 => Target::User(read_user(&mut r)?),
            2 => Target::Serial(r.u64()?),
            3 => Target::NodeKey(r.array()?),
            k => return Err(CertError::Kind(k)),
        };
        let rev = Revocation {
            ca,
            group,
            target,
            issued: r.u64()?,
            signature: r.array()?,
        };
        if !r.is_empty() {
            return Err(CertError::Trailing);
        }
        Ok(rev)
    }

    /// Checks that our group's CA signed it.
    pub fn verify(&self, group_ca: &[u8; 32]) -> Result<(), CertError> {
        if &self.ca != group_ca {
            return Err(CertError::OtherGroup);
        }
        verify_bytes(&self.ca, CONTEXT, &self.signed_part(), &self.signature)
    }

    /// Whether it revokes this certificate.
    pub fn covers(&self, cert: &MemberCert) -> bool {
        match &self.target {
            Target::User(u) => *u == cert.user,
            Target::Serial(s) => *s == cert.serial,
            Target::NodeKey(k) => *k == cert.node_key,
        }
    }

    pub fn to_line(&self) -> String {
        format!(
            "{LINE_TAG}{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.emit())
        )
    }

    pub fn from_line(line: &str) -> Result<Self, CertError> {
        let b64 = line.trim().strip_prefix(LINE_TAG).ok_or(CertError::Magic)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| CertError::Magic)?;
        Revocation::parse(&bytes)
    }
}

/// The revocations a node knows, all verified against its group's CA.
#[derive(Debug, Clone, Default)]
pub struct Crl {
    targets: BTreeSet<Target>,
    revocations: Vec<Revocation>,
}

impl Crl {
    /// Adds a revocation our CA signed; false if it is not, or already known.
    pub fn add(&mut self, group_ca: &[u8; 32], rev: Revocation) -> bool {
        self.add_checked(group_ca, rev).unwrap_or(false)
    }

    /// Adds a revocation after checking its signature (once): why it is not our CA's, or
    /// whether it was new (false: known already, or the list is full).
    pub fn add_checked(&mut self, group_ca: &[u8; 32], rev: Revocation) -> Result<bool, CertError> {
        rev.verify(group_ca)?;
        if self.revocations.len() >= MAX_REVOCATIONS || !self.targets.insert(rev.target.clone()) {
            return Ok(false);
        }
        self.revocations.push(rev);
        Ok(true)
    }

    /// The CRL version peers compare: how many revocations it holds.
    pub fn version(&self) -> u64 {
        self.revocations.len() as u64
    }

    pub fn revokes(&self, cert: &MemberCert) -> bool {
        self.revocations.iter().any(|r| r.covers(cert))
    }

    /// Whether a revocation names this user (bare JID) or this node key: what can be judged
    /// before a handshake shows the certificate.
    pub fn names(&self, user: &str, key: Option<&[u8; 32]>) -> bool {
        self.targets.contains(&Target::User(user.to_owned()))
            || key.is_some_and(|k| self.targets.contains(&Target::NodeKey(*k)))
    }

    pub fn revocations(&self) -> &[Revocation] {
        &self.revocations
    }

    /// Reads a CRL file (a missing one is empty); lines that are not revocations of our
    /// group are refused with an error naming the line.
    pub fn load(path: &Path, group_ca: &[u8; 32]) -> Result<Self, FileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Crl::default()),
            Err(source) => {
                return Err(FileError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let mut crl = Crl::default();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            Revocation::from_line(line)
                .and_then(|rev| crl.add_checked(group_ca, rev))
                .map_err(|e| FileError::BadLine {
                    path: path.into(),
                    line: n + 1,
                    reason: e.to_string(),
                })?;
        }
        Ok(crl)
    }

    /// Writes the whole list (atomically).
    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        let text: String = self.revocations.iter().map(Revocation::to_line).collect();
        files::replace_file(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Ca {
        Ca::from_seed("friends", [3; 32]).unwrap()
    }

    #[test]
    fn revocations_round_trip_verify_and_cover_what_they_name() {
        let ca = ca();
        let cert = ca.sign([9; 32], &"alice@example.org".parse().unwrap(), 7, 0, 100);
        for (target, covers) in [
            (Target::User("alice@example.org".into()), true),
            (Target::User("bob@example.org".into()), false),
            (Target::Serial(7), true),
            (Target::Serial(8), false),
            (Target::NodeKey([9; 32]), true),
        ] {
            let r = Revocation::sign(&ca, target, 50);
            let back = Revocation::parse(&r.emit()).unwrap();
            assert_eq!(back, r);
            assert_eq!(back.verify(&ca.public()), Ok(()));
            assert_eq!(back.covers(&cert), covers);
            assert_eq!(Revocation::from_line(&r.to_line()).unwrap(), r);
        }
    }

    #[test]
    fn forged_or_foreign_revocations_are_refused() {
        let ca = ca();
        let bytes = Revocation::sign(&ca, Target::Serial(7), 50).emit();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let ok = Revocation::parse(&b).and_then(|r| r.verify(&ca.public()));
            assert!(ok.is_err(), "bit {i} flipped and the revocation still verifies");
        }
        let other = Ca::from_seed("friends", [4; 32]).unwrap();
        let foreign = Revocation::sign(&other, Target::Serial(7), 50);
        let mut crl = Crl::default();
        assert!(!crl.add(&ca.public(), foreign));
        assert_eq!(crl.version(), 0);
    }

    #[test]
    fn a_crl_file_keeps_what_it_was_given_and_refuses_garbage() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("group.crl");
        assert_eq!(Crl::load(&path, &ca.public()).unwrap().version(), 0);
        let mut crl = Crl::default();
        assert!(crl.add(&ca.public(), Revocation::sign(&ca, Target::Serial(1), 5)));
        assert!(
            !crl.add(&ca.public(), Revocation::sign(&ca, Target::Serial(1), 6)),
            "twice"
        );
        assert!(crl.add(
            &ca.public(),
            Revocation::sign(&ca, Target::User("x@y.z".into()), 5)
        ));
        crl.save(&path).unwrap();
        let back = Crl::load(&path, &ca.public()).unwrap();
        assert_eq!(back.version(), 2);
        std::fs::write(&path, "ringlet-revocation AAAA\n").unwrap();
        assert!(matches!(
            Crl::load(&path, &ca.public()),
            Err(FileError::BadLine { line: 1, .. })
        ));
    }
}
