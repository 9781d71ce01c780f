//! Hands a revocation to a node: a running node publishes it to the group at once (broadcast,
//! DHT, its CRL file, and it closes links to the revoked); a stopped node gets it in its CRL
//! file, and peers learn it when the node next shakes hands with them.

use crate::config::Config;
use crate::control::{self, ControlError};
use crate::secure::files::FileError;
use crate::secure::revocation::{Crl, Revocation};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// What became of a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The running node took it; `outcome` is its answer (e.g. "published", "known").
    ByNode { outcome: String },
    /// No node runs: written to the CRL file (`added` false when it was there already).
    ToFile { added: bool, revocations: u64 },
}

pub async fn publish(config: &Config, rev: &Revocation) -> Result<Published, PublishError> {
    let args = control::Args {
        value: Some(rev.to_line().trim_end().to_owned()),
        ..control::Args::default()
    };
    match control::request_with(&config.control_socket, "revoke", args).await {
        Ok(result) => Ok(Published::ByNode {
            outcome: result["outcome"].as_str().unwrap_or("?").to_owned(),
        }),
        Err(ControlError::NotRunning { .. }) => {
            let mut crl = Crl::load(&config.group_crl, &rev.ca)?;
            let added = crl.add(&rev.ca, rev.clone());
            crl.save(&config.group_crl)?;
            Ok(Published::ToFile {
                added,
                revocations: crl.version(),
            })
        }
        Err(e) => Err(e.into()),
    }
}
