//! Node identity: a persistent X25519 static key (the key type of a Noise handshake) and the
//! `NodeId` derived from it, the first 160 bits of SHA-256 of the public key.
//!
//! The key file is one line, `ringlet-node-key x25519 <64 hex digits>`, created with mode 0600
//! on first start. A key file that others can read is refused, as ssh does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use x25519_dalek::{PublicKey, StaticSecret};

use crate::secure::files::{self, FileError};

const KEY_FILE_TAG: &str = "ringlet-node-key x25519 ";

/// 160-bit node identifier, shown as 40 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 20]);

impl NodeId {
    pub fn of_public_key(key: &[u8; 32]) -> Self {
        NodeId(ringlet_xmpp::node_id_of(key))
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &hex::encode(self.0)[..12])
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 20];
        hex::decode_to_slice(s, &mut id).map_err(|_| IdentityError::BadNodeId(s.to_owned()))?;
        Ok(NodeId(id))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create key file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is not a ringlet node key")]
    Malformed { path: PathBuf },
    #[error("key file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("'{0}' is not a node id (40 hex digits)")]
    BadNodeId(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The node's static key pair.
pub struct NodeKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

impl NodeKey {
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// Generates a fresh key from the operating system's randomness.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_secret(bytes))
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The private key, for the link handshake.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    pub fn node_id(&self) -> NodeId {
        NodeId::of_public_key(&self.public_bytes())
    }

    /// Loads the key at `path`, creating it (mode 0600, parent directories 0700) if missing.
    /// Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), IdentityError> {
        if !path.exists() {
            let key = Self::generate()?;
            key.write_new(path)?;
            return Ok((key, true));
        }
        let text = files::read_private(path).map_err(|e| match e {
            FileError::Permissions { path, mode } => IdentityError::Permissions { path, mode },
            FileError::Read { path, source } => IdentityError::Read { path, source },
            other => IdentityError::Read {
                path: path.into(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        let key = Self::parse(&text).ok_or_else(|| IdentityError::Malformed { path: path.into() })?;
        Ok((key, false))
    }

    fn parse(text: &str) -> Option<Self> {
        let hex_part = text.trim_end().strip_prefix(KEY_FILE_TAG)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).ok()?;
        Some(Self::from_secret(bytes))
    }

    /// Writes the key to a new file `path` (mode 0600; refuses to overwrite).
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let line = format!("{KEY_FILE_TAG}{}\n", hex::encode(self.secret.to_bytes()));
        files::write_new_private(path, &line).map_err(|e| IdentityError::Create {
            path: path.into(),
            source: match e {
                FileError::Write { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn node_id_is_first_160_bits_of_sha256_of_public_key() {
        let key = NodeKey::from_secret([7; 32]);
        let digest = Sha256::digest(key.public_bytes());
        assert_eq!(&key.node_id().0[..], &digest[..20]);
        let shown = key.node_id().to_string();
        assert_eq!(shown.len(), 40);
        assert_eq!(shown.parse::<NodeId>().unwrap(), key.node_id());
    }

    #[test]
    fn key_file_is_created_0600_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let (created, fresh) = NodeKey::load_or_create(&path).unwrap();
        assert!(fresh);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (loaded, fresh) = NodeKey::load_or_create(&path).unwrap();
        assert!(!fresh);
        assert_eq!(loaded.node_id(), created.node_id());
    }

    #[test]
    fn readable_or_malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            NodeKey::load_or_create(&path),
            Err(IdentityError::Permissions { mode: 0o644, .. })
        ));
        fs::write(&path, "garbage").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            NodeKey::load_or_create(&path),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
