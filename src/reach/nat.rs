//! What we know about our own NAT, as `status` shows it under `"nat"`.

use serde::{Deserialize, Serialize};

/// How the NAT maps our socket to public addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One public address for all destinations (cone NATs, or no NAT).
    EndpointIndependent,
    /// A different public address per destination (symmetric NATs).
    EndpointDependent,
}

/// How the NAT picks public ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ports {
    /// The public port equals the local port.
    Preserving,
    /// New mappings take the next port (the step between the last two observed).
    Sequential {
        step: i32,
    },
    Random,
}

/// Which inbound packets the NAT lets through to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// From anyone (full cone, or no NAT).
    EndpointIndependent,
    /// Only from IP addresses we sent to.
    AddressDependent,
    /// Only from exact endpoints we sent to.
    AddressAndPortDependent,
}

/// Whether UDP reaches the STUN servers at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Udp {
    Ok,
    Blocked,
}

/// Everything observed so far; `None` means not (yet) known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatInfo {
    pub mapping: Option<Mapping>,
    pub ports: Option<Ports>,
    pub filtering: Option<Filtering>,
    pub udp: Option<Udp>,
}

impl NatInfo {
    /// Endpoint-dependent mapping: peers cannot use our server-reflexive address.
    pub fn is_hard(&self) -> bool {
        self.mapping == Some(Mapping::EndpointDependent)
    }

    pub fn udp_blocked(&self) -> bool {
        self.udp == Some(Udp::Blocked)
    }

    /// One word for tables: `blocked`, `symmetric`, `open` (endpoint-independent filtering),
    /// `cone`, or `?` while unknown.
    pub fn label(&self) -> &'static str {
        match (self.udp, self.mapping, self.filtering) {
            (Some(Udp::Blocked), ..) => "blocked",
            (_, Some(Mapping::EndpointDependent), _) => "symmetric",
            (_, Some(Mapping::EndpointIndependent), Some(Filtering::EndpointIndependent)) => "open",
            (_, Some(Mapping::EndpointIndependent), Some(_)) => "cone",
            _ => "?",
        }
    }
}
