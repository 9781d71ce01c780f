//! What `ringlet group init | sign | join` do, as functions the CLI calls and tests drive:
//! create a group CA, issue a member certificate, install one on a node after checking it is
//! really for that node and user.

use std::path::Path;

use ringlet_xmpp::BareJid;

use super::cert::{Ca, MemberCert};
use super::files::{self, FileError};
use crate::identity::NodeId;

/// The longest validity `group sign` issues (10 years).
pub const MAX_DAYS: u64 = 3650;
const DAY: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}")]
    Invalid(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

fn invalid(msg: impl Into<String>) -> AdminError {
    AdminError::Invalid(msg.into())
}

/// Creates a new group CA in `path` (refuses to overwrite one); returns it.
pub fn init(group: &str, path: &Path) -> Result<Ca, AdminError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| AdminError::Random(e.to_string()))?;
    let ca = Ca::from_seed(group, seed).map_err(|e| invalid(e.to_string()))?;
    files::write_ca(path, &ca)?;
    Ok(ca)
}

/// Parses `--expires`: a number of days (`90`, `90d`) or a date (`2027-06-30`, end of day
/// UTC); returns unix seconds.
pub fn parse_expiry(text: &str, unix_now: u64) -> Result<u64, AdminError> {
    let t = text.trim();
    if let Ok(days) = t.trim_end_matches('d').parse::<u64>() {
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(invalid(format!(
                "--expires: {days} days is not between 1 and {MAX_DAYS}"
            )));
        }
        return Ok(unix_now + days * DAY);
    }
    let parts: Vec<&str> = t.split('-').collect();
    let nums: Option<Vec<i64>> = parts.iter().map(|p| p.parse().ok()).collect();
    match nums.as_deref() {
        Some(&[y, m, d]) if (1..=12).contains(&m) && (1..=31).contains(&d) && y >= 1970 => {
            let at = u64::try_from(days_from_civil(y, m, d)).unwrap_or(0) * DAY + DAY - 1;
            if at <= unix_now {
                return Err(invalid(format!("--expires: {t} is in the past")));
            }
            if at > unix_now + MAX_DAYS * DAY {
                return Err(invalid(format!(
                    "--expires: {t} is more than {MAX_DAYS} days away"
                )));
            }
            Ok(at)
        }
        _ => Err(invalid(format!(
            "--expires: '{t}' is neither a number of days nor YYYY-MM-DD"
        ))),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Issues a certificate for the node whose public key is `node_key_hex`, held by `user`.
pub fn sign(
    ca: &Ca,
    node_key_hex: &str,
    user: &str,
    expires: u64,
    unix_now: u64,
) -> Result<MemberCert, AdminError> {
    let mut node_key = [0u8; 32];
    hex::decode_to_slice(node_key_hex.trim(), &mut node_key).map_err(|_| {
        invalid("--node-key: expected the node's public key, 64 hex digits (`ringlet id` prints it)")
    })?;
    let user: BareJid = user
        .parse()
        .map_err(|_| invalid(format!("--user: '{user}' is not a bare JID")))?;
    if user.node().is_none() {
        return Err(invalid(format!("--user: '{user}' has no local part")));
    }
    let mut serial = [0u8; 8];
    getrandom::fill(&mut serial).map_err(|e| AdminError::Random(e.to_string()))?;
    // Valid from a minute ago: clocks of friends' machines are rarely exact.
    Ok(ca.sign(
        node_key,
        &user,
        u64::from_be_bytes(serial),
        unix_now.saturating_sub(60),
        expires,
    ))
}

/// Checks that `text` is a certificate for this node (`node_key`) and user (`jid`), valid
/// now, then installs it at `dest` (replacing an older one).
pub fn join(
    text: &str,
    node_key: &[u8; 32],
    jid: &BareJid,
    dest: &Path,
    unix_now: u64,
) -> Result<MemberCert, AdminError> {
    let cert = files::cert_from_text(text)?;
    if &cert.node_key != node_key {
        return Err(invalid(format!(
            "this certificate is for node {}, this node is {}",
            cert.node_id(),
            NodeId::of_public_key(node_key)
        )));
    }
    if cert.user != jid.to_string() {
        return Err(invalid(format!(
            "this certificate is for {}, this node logs in as {jid}",
            cert.user
        )));
    }
    cert.verify(&cert.ca, unix_now)
        .map_err(|e| invalid(format!("certificate refused: {e}")))?;
    files::replace_file(dest, &files::cert_to_text(&cert))?;
    Ok(cert)
}

/// Gives the node whose key is at `key_file` (created if missing) a certificate of `ca` for
/// `user`, valid a year, installed at `cert_file`: `id`, `sign` and `join` in one step, for
/// labs, demos and tests that play every role on one machine.
pub fn provision(
    ca: &Ca,
    key_file: &Path,
    cert_file: &Path,
    user: &BareJid,
    unix_now: u64,
) -> Result<MemberCert, AdminError> {
    let (key, _) = crate::identity::NodeKey::load_or_create(key_file).map_err(|e| invalid(e.to_string()))?;
    let cert = sign(
        ca,
        &hex::encode(key.public_bytes()),
        &user.to_string(),
        unix_now + 365 * DAY,
        unix_now,
    )?;
    files::replace_file(cert_file, &files::cert_to_text(&cert))?;
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn expiry_takes_days_or_dates_and_refuses_the_rest() {
        assert_eq!(parse_expiry("30", NOW).unwrap(), NOW + 30 * DAY);
        assert_eq!(parse_expiry("30d", NOW).unwrap(), NOW + 30 * DAY);
        // 2027-01-15 is day 20833 since the epoch.
        assert_eq!(parse_expiry("2027-01-15", NOW).unwrap(), 20_833 * DAY + DAY - 1);
        for bad in ["0", "99999", "2020-01-01", "2027-13-01", "tomorrow", ""] {
            assert!(parse_expiry(bad, NOW).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn init_sign_join_installs_only_a_certificate_for_this_node_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init("friends", &dir.path().join("friends.ca.key")).unwrap();
        assert!(init("friends", &dir.path().join("friends.ca.key")).is_err());
        let key = crate::identity::NodeKey::from_secret([8; 32]);
        let jid: BareJid = "alice@example.org".parse().unwrap();
        let cert = sign(
            &ca,
            &hex::encode(key.public_bytes()),
            "alice@example.org",
            NOW + DAY,
            NOW,
        )
        .unwrap();
        let text = files::cert_to_text(&cert);
        let dest = dir.path().join("group.cert");
        let other = crate::identity::NodeKey::from_secret([9; 32]);
        assert!(join(&text, &other.public_bytes(), &jid, &dest, NOW).is_err());
        let bob: BareJid = "bob@example.org".parse().unwrap();
        assert!(join(&text, &key.public_bytes(), &bob, &dest, NOW).is_err());
        assert!(join(&text, &key.public_bytes(), &jid, &dest, NOW + 2 * DAY).is_err());
        assert!(!dest.exists(), "a refused certificate was installed");
        join(&text, &key.public_bytes(), &jid, &dest, NOW).unwrap();
        assert_eq!(files::read_cert(&dest).unwrap(), cert);
        assert!(sign(&ca, "zz", "alice@example.org", NOW + DAY, NOW).is_err());
        assert!(sign(&ca, &hex::encode([1; 32]), "example.org", NOW + DAY, NOW).is_err());
    }
}
