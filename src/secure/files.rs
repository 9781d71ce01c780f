//! Files of the group: the CA key (one line, `ringlet-group-ca ed25519 <group> <64 hex>`,
//! mode 0600, refused when others can read it) and a certificate's text form (one line,
//! `ringlet-cert <base64>`), which is what `group sign` prints and `group join` installs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::cert::{Ca, CertError, MemberCert};

const CA_TAG: &str = "ringlet-group-ca ed25519 ";
const CERT_TAG: &str = "ringlet-cert ";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a ringlet group CA key")]
    NotCa { path: PathBuf },
    #[error("not a ringlet certificate (expected one line starting with '{CERT_TAG}', comment lines aside)")]
    NotCertText,
    #[error("bad certificate: {0}")]
    Cert(#[from] CertError),
    #[error("{path} line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

pub fn ca_to_text(ca: &Ca) -> String {
    format!("{CA_TAG}{} {}\n", ca.group(), hex::encode(ca.seed()))
}

pub fn ca_from_text(text: &str) -> Option<Ca> {
    let rest = text.trim_end().strip_prefix(CA_TAG)?;
    let (group, seed_hex) = rest.rsplit_once(' ')?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(seed_hex, &mut seed).ok()?;
    Ca::from_seed(group, seed).ok()
}

/// Writes a new CA key file (mode 0600); refuses to overwrite one.
pub fn write_ca(path: &Path, ca: &Ca) -> Result<(), FileError> {
    write_new_private(path, &ca_to_text(ca))
}

pub fn read_ca(path: &Path) -> Result<Ca, FileError> {
    let text = read_private(path)?;
    ca_from_text(&text).ok_or_else(|| FileError::NotCa { path: path.into() })
}

pub fn cert_to_text(cert: &MemberCert) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.emit());
    format!("{CERT_TAG}{b64}\n")
}

/// Reads a certificate's text form; `#` comment lines and blank lines around it (a member
/// bundle has them) are skipped, anything else is refused.
pub fn cert_from_text(text: &str) -> Result<MemberCert, FileError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return Err(FileError::NotCertText);
    };
    let b64 = line.strip_prefix(CERT_TAG).ok_or(FileError::NotCertText)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| FileError::NotCertText)?;
    Ok(MemberCert::parse(&bytes)?)
}

pub fn read_cert(path: &Path) -> Result<MemberCert, FileError> {
    let text = fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    cert_from_text(&text)
}

/// Replaces `path` with `text` atomically (a temporary file renamed over it), mode 0644.
pub fn replace_file(path: &Path, text: &str) -> Result<(), FileError> {
    let write = |source| FileError::Write {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(write)?;
    fs::rename(&tmp, path).map_err(write)
}

/// Reads a secret file, refusing one that group or others may read (as ssh does).
pub fn read_private(path: &Path) -> Result<String, FileError> {
    let read = |source| FileError::Read {
        path: path.into(),
        source,
    };
    let mode = fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::Permissions {
            path: path.into(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(read)
}

/// Creates `path` with mode 0600 (parents 0700) holding `text`; refuses to overwrite.
pub fn write_new_private(path: &Path, text: &str) -> Result<(), FileError> {
    let write = |source| FileError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write)?;
    file.write_all(text.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_private_round_trip_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("friends.ca.key");
        let ca = Ca::from_seed("friends of mine", [5; 32]).unwrap();
        write_ca(&path, &ca).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = read_ca(&path).unwrap();
        assert_eq!((back.group(), back.public()), (ca.group(), ca.public()));
        assert!(matches!(write_ca(&path, &ca), Err(FileError::Write { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_ca(&path),
            Err(FileError::Permissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn certificates_round_trip_as_text_and_garbage_is_named() {
        let ca = Ca::from_seed("g", [5; 32]).unwrap();
        let cert = ca.sign([1; 32], &"a@b.c".parse().unwrap(), 1, 0, 9);
        assert_eq!(cert_from_text(&cert_to_text(&cert)).unwrap(), cert);
        assert!(matches!(cert_from_text("hello"), Err(FileError::NotCertText)));
        assert!(matches!(
            cert_from_text("ringlet-cert !!"),
            Err(FileError::NotCertText)
        ));
        assert!(matches!(
            cert_from_text("ringlet-cert AAAA"),
            Err(FileError::Cert(_))
        ));
    }
}
