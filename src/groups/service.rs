//! What the group service does, whichever door a request came through (web page, XMPP IQ,
//! machine endpoint): create groups with their own CA, take join requests under the group's
//! policy, approve and deny them, issue and renew certificates, revoke users and nodes, and
//! publish the revocation list. Time comes in as an argument; nothing here does network I/O.

use ringlet_xmpp::BareJid;

use super::store::{CertRow, GroupRow, RequestRow, RevocationRow, Store, StoreError};
use crate::identity::NodeId;
use crate::secure::cert::{Ca, MemberCert};
use crate::secure::files;
use crate::secure::revocation::{Crl, Revocation, Target};

/// Validity of the certificates the service issues.
pub const CERT_DAYS: u64 = 365;
const DAY: u64 = 86_400;
/// Longest group description kept.
pub const MAX_DESCRIPTION: usize = 1_000;
/// Most pending requests a group holds; more are refused until some are decided.
pub const MAX_PENDING: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no group named '{0}'")]
    UnknownGroup(String),
    #[error("{0}")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

fn invalid(msg: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(msg.into())
}

/// Who signs without asking: everyone, no one, or the first N requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Auto,
    Manual,
    AutoUpTo(u32),
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, ServiceError> {
        match text.trim() {
            "auto" => Ok(Policy::Auto),
            "manual" => Ok(Policy::Manual),
            other => other
                .strip_prefix("auto-up-to:")
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=100_000).contains(n))
                .map(Policy::AutoUpTo)
                .ok_or_else(|| invalid(format!("policy '{other}': expected auto, manual or auto-up-to:N"))),
        }
    }

    pub fn to_text(self) -> String {
        match self {
            Policy::Auto => "auto".into(),
            Policy::Manual => "manual".into(),
            Policy::AutoUpTo(n) => format!("auto-up-to:{n}"),
        }
    }

    fn signs_automatically(self, signed_so_far: i64) -> bool {
        match self {
            Policy::Auto => true,
            Policy::Manual => false,
            Policy::AutoUpTo(n) => signed_so_far < i64::from(n),
        }
    }
}

/// Where a join request stands, as the requester is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinState {
    Pending {
        request: i64,
    },
    Denied,
    /// Approved; the certificate's text form.
    Approved {
        cert: String,
    },
}

/// A member certificate as the overview shows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub cert: CertRow,
    pub node: NodeId,
    pub revoked: bool,
}

/// Everything a group page shows (the page decides what a visitor may see).
#[derive(Debug, Clone)]
pub struct Overview {
    pub group: GroupRow,
    pub ca_public: [u8; 32],
    pub policy: Policy,
    pub members: Vec<Member>,
    pub pending: Vec<RequestRow>,
    pub revocations: Vec<RevocationRow>,
}

pub struct Service {
    store: Store,
}

impl Service {
    pub fn new(store: Store) -> Self {
        Service { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn groups(&self) -> Result<Vec<GroupRow>, ServiceError> {
        Ok(self.store.groups()?)
    }

    /// Creates a group with a fresh CA.
    pub fn create_group(
        &self,
        name: &str,
        description: &str,
        policy: Policy,
        now: u64,
    ) -> Result<GroupRow, ServiceError> {
        let name = name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid("group name: 1 to 64 letters, digits, '.', '_' or '-'"));
        }
        if description.len() > MAX_DESCRIPTION {
            return Err(invalid(format!("description: at most {MAX_DESCRIPTION} bytes")));
        }
        let seed = random::<32>()?;
        let id = self
            .store
            .add_group(name, description.trim(), &policy.to_text(), &seed, now as i64)?
            .ok_or_else(|| ServiceError::Duplicate(format!("a group named '{name}' exists")))?;
        tracing::info!(group = name, id, "group created");
        self.group(name)
    }

    pub fn group(&self, name: &str) -> Result<GroupRow, ServiceError> {
        self.store
            .group(name)?
            .ok_or_else(|| ServiceError::UnknownGroup(name.to_owned()))
    }

    pub fn ca(&self, group: &GroupRow) -> Result<Ca, ServiceError> {
        Ca::from_seed(&group.name, group.ca_seed).map_err(|e| invalid(e.to_string()))
    }

    pub fn overview(&self, name: &str) -> Result<Overview, ServiceError> {
        let group = self.group(name)?;
        let ca = self.ca(&group)?;
        let crl = self.crl(&group, &ca)?;
        let members = self
            .store
            .certs(group.id)?
            .into_iter()
            .map(|cert| {
                let parsed = files::cert_from_text(&cert.text).ok();
                Member {
                    node: NodeId::of_public_key(&cert.node_key),
                    revoked: parsed.is_some_and(|c| crl.revokes(&c)),
                    cert,
                }
            })
            .collect();
        Ok(Overview {
            policy: Policy::parse(&group.policy)?,
            ca_public: ca.public(),
            pending: self.store.requests(group.id, "pending")?,
            revocations: self.store.revocations(group.id)?,
            members,
            group,
        })
    }

    /// A join request from `user` (whose XMPP server vouched for the JID) for `node_key`.
    pub fn request(
        &self,
        group: &str,
        user: &BareJid,
        node_key: &[u8; 32],
        now: u64,
    ) -> Result<JoinState, ServiceError> {
        let group = self.group(group)?;
        let ca = self.ca(&group)?;
        let crl = self.crl(&group, &ca)?;
        if user.node().is_none() {
            return Err(invalid(format!("'{user}' is not a user's JID")));
        }
        if crl.names(user.as_str(), Some(node_key)) {
            return Err(ServiceError::Refused(format!(
                "{user} or this node was revoked from '{}'",
                group.name
            )));
        }
        if let Some(previous) = self.store.request_of(group.id, node_key)? {
            let live_cert = self
                .store
                .cert_for_request(previous.id)?
                .is_some_and(|c| c.expires as u64 > now);
            if previous.state == "pending" || (previous.state == "approved" && live_cert) {
                return Err(ServiceError::Duplicate(format!(
                    "this node already has a {} request in '{}' (#{})",
                    previous.state, group.name, previous.id
                )));
            }
        }
        if self.store.requests(group.id, "pending")?.len() >= MAX_PENDING {
            return Err(ServiceError::Refused(format!(
                "'{}' has {MAX_PENDING} pending requests; try again later",
                group.name
            )));
        }
        let id = self
            .store
            .add_request(group.id, user.as_str(), node_key, now as i64)?;
        tracing::info!(group = group.name, request = id, "join request");
        if Policy::parse(&group.policy)?.signs_automatically(group.auto_signed) {
            self.store.count_auto_signed(group.id)?;
            return self.approve(&group.name, id, now);
        }
        Ok(JoinState::Pending { request: id })
    }

    /// Admits a node without asking (the administrator's own): an approved request and its
    /// certificate.
    pub fn enroll(
        &self,
        group: &str,
        user: &BareJid,
        node_key: &[u8; 32],
        now: u64,
    ) -> Result<String, ServiceError> {
        let row = self.group(group)?;
        let id = self
            .store
            .add_request(row.id, user.as_str(), node_key, now as i64)?;
        match self.approve(group, id, now)? {
            JoinState::Approved { cert } => Ok(cert),
            _ => Err(invalid("enrolled without a certificate")),
        }
    }

    /// Where the newest request of `node_key` stands.
    pub fn join_state(&self, group: &str, node_key: &[u8; 32]) -> Result<JoinState, ServiceError> {
        let group = self.group(group)?;
        let request = self
            .store
            .request_of(group.id, node_key)?
            .ok_or_else(|| ServiceError::NotFound("no request from this node".into()))?;
        self.state_of(&request)
    }

    fn state_of(&self, request: &RequestRow) -> Result<JoinState, ServiceError> {
        Ok(match request.state.as_str() {
            "pending" => JoinState::Pending { request: request.id },
            "denied" => JoinState::Denied,
            _ => JoinState::Approved {
                cert: self
                    .store
                    .cert_for_request(request.id)?
                    .map(|c| c.text)
                    .ok_or_else(|| ServiceError::NotFound("approved, but no certificate".into()))?,
            },
        })
    }

    /// Approves a pending request: signs its certificate.
    pub fn approve(&self, group: &str, request: i64, now: u64) -> Result<JoinState, ServiceError> {
        let group = self.group(group)?;
        let row = self.pending(&group, request)?;
        let user: BareJid = row.user.parse().map_err(|_| invalid("stored JID unreadable"))?;
        let cert = self.issue(&group, &self.ca(&group)?, row.node_key, &user, Some(row.id), now)?;
        self.store.decide(group.id, row.id, "approved", now as i64)?;
        tracing::info!(
            group = group.name,
            request,
            serial = format!("{:016x}", cert.serial),
            "approved"
        );
        Ok(JoinState::Approved {
            cert: files::cert_to_text(&cert),
        })
    }

    pub fn deny(&self, group: &str, request: i64, now: u64) -> Result<(), ServiceError> {
        let group = self.group(group)?;
        self.pending(&group, request)?;
        self.store.decide(group.id, request, "denied", now as i64)?;
        tracing::info!(group = group.name, request, "denied");
        Ok(())
    }

    fn pending(&self, group: &GroupRow, request: i64) -> Result<RequestRow, ServiceError> {
        let row = self
            .store
            .request(group.id, request)?
            .ok_or_else(|| ServiceError::NotFound(format!("no request #{request} in '{}'", group.name)))?;
        if row.state != "pending" {
            return Err(ServiceError::Duplicate(format!(
                "request #{request} is already {}",
                row.state
            )));
        }
        Ok(row)
    }

    /// Signs and records a revocation; the caller publishes it to the ring.
    pub fn revoke(&self, group: &str, target: Target, now: u64) -> Result<Revocation, ServiceError> {
        let group = self.group(group)?;
        let ca = self.ca(&group)?;
        let what = match &target {
            Target::User(u) => format!("user {u}"),
            Target::Serial(s) => format!("certificate {s:016x}"),
            Target::NodeKey(k) => format!("node {}", NodeId::of_public_key(k)),
        };
        if self
            .crl(&group, &ca)?
            .revocations()
            .iter()
            .any(|r| r.target == target)
        {
            return Err(ServiceError::Duplicate(format!("{what} is already revoked")));
        }
        let rev = Revocation::sign(&ca, target, now);
        self.store
            .add_revocation(group.id, rev.to_line().trim_end(), &what, now as i64)?;
        tracing::info!(group = group.name, what, "revoked");
        Ok(rev)
    }

    /// The group's revocation list, each entry signed by its CA.
    pub fn crl(&self, group: &GroupRow, ca: &Ca) -> Result<Crl, ServiceError> {
        let mut crl = Crl::default();
        for row in self.store.revocations(group.id)? {
            let rev = Revocation::from_line(&row.line).map_err(|e| invalid(e.to_string()))?;
            crl.add(&ca.public(), rev);
        }
        Ok(crl)
    }

    /// A fresh certificate for a member whose current one is still valid and not revoked.
    pub fn renew(&self, group: &str, cert_text: &str, now: u64) -> Result<String, ServiceError> {
        let group = self.group(group)?;
        let ca = self.ca(&group)?;
        let cert: MemberCert = files::cert_from_text(cert_text).map_err(|e| invalid(e.to_string()))?;
        if cert.ca != ca.public() {
            return Err(ServiceError::Refused(format!(
                "not a certificate of '{}'",
                group.name
            )));
        }
        if cert.expires <= now {
            return Err(ServiceError::Refused(
                "this certificate has expired; ask to join again".into(),
            ));
        }
        cert.verify(&ca.public(), now)
            .map_err(|e| ServiceError::Refused(format!("certificate refused: {e}")))?;
        if self.crl(&group, &ca)?.revokes(&cert) {
            return Err(ServiceError::Refused("this certificate is revoked".into()));
        }
        let user = cert.user_jid().map_err(|e| invalid(e.to_string()))?;
        let renewed = self.issue(&group, &ca, cert.node_key, &user, None, now)?;
        Ok(files::cert_to_text(&renewed))
    }

    /// Signs a certificate valid [`CERT_DAYS`] from now and records it.
    fn issue(
        &self,
        group: &GroupRow,
        ca: &Ca,
        node_key: [u8; 32],
        user: &BareJid,
        request_id: Option<i64>,
        now: u64,
    ) -> Result<MemberCert, ServiceError> {
        let serial = u64::from_be_bytes(random::<8>()?) >> 1; // fits SQLite's signed integer
        let expires = now + CERT_DAYS * DAY;
        // Valid from a minute ago: clocks of friends' machines are rarely exact.
        let cert = ca.sign(node_key, user, serial, now.saturating_sub(60), expires);
        self.store.add_cert(
            group.id,
            &CertRow {
                serial,
                user: user.to_string(),
                node_key,
                expires: expires as i64,
                text: files::cert_to_text(&cert),
                request_id,
            },
        )?;
        Ok(cert)
    }

    /// What an approved member needs: the certificate and the group's settings for the config.
    pub fn bundle(&self, group: &str, serial: u64) -> Result<String, ServiceError> {
        let overview = self.overview(group)?;
        let member = overview
            .members
            .iter()
            .find(|m| m.cert.serial == serial)
            .ok_or_else(|| ServiceError::NotFound(format!("no certificate {serial:016x} in '{group}'")))?;
        let mut friends: Vec<&str> = overview
            .members
            .iter()
            .filter(|m| !m.revoked)
            .map(|m| m.cert.user.as_str())
            .collect();
        friends.sort_unstable();
        friends.dedup();
        let friends: Vec<String> = friends.iter().map(|f| format!("\"{f}\"")).collect();
        Ok(format!(
            "# ringlet member bundle: group '{group}' for {user} (node {node})\n\
             # Install the certificate with `ringlet group join FILE`, then add to ringlet.toml:\n\
             #   overlay = \"{group}\"\n\
             #   friends = [{friends}]\n\
             # group CA key: {ca}\n\
             {cert}",
            user = member.cert.user,
            node = member.node,
            friends = friends.join(", "),
            ca = hex::encode(overview.ca_public),
            cert = member.cert.text,
        ))
    }
}

fn random<const N: usize>() -> Result<[u8; N], ServiceError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| ServiceError::Random(e.to_string()))?;
    Ok(out)
}

/// A random token of `N` bytes as hex (sessions, CSRF, login secret).
pub fn token<const N: usize>() -> Result<String, ServiceError> {
    Ok(hex::encode(random::<N>()?))
}
