//! Join requests to a group service, sent as IQs to the administrator's account at the fixed
//! resource [`SERVICE_RESOURCE`] by people who are not yet members:
//!
//! ```xml
//! <service xmlns="urn:ringlet:join:0"/>                               (get: the service's key)
//! <service xmlns="urn:ringlet:join:0" key="<64 hex>"/>                (result)
//! <request xmlns="urn:ringlet:join:0" group="friends" node-key="<64 hex>" ts="<unix s>"
//!          proof="<64 hex>"/>                                          (set: ask to join)
//! <state xmlns="urn:ringlet:join:0" group="…" node-key="…" ts="…" proof="…"/>   (get: poll)
//! <state xmlns="urn:ringlet:join:0" value="pending" request="7"/>      (result of both)
//! <state xmlns="urn:ringlet:join:0" value="approved">ringlet-cert …</state>
//! <state xmlns="urn:ringlet:join:0" value="denied"/>
//! ```
//! `proof` is opaque here (the root crate computes and checks it: it shows the requester holds
//! the node key's secret). Refusals are stanza errors.

use super::{ncname, required, WireError};
use crate::Element;

pub const NS_JOIN: &str = "urn:ringlet:join:0";
/// The resource a group service logs in with, so requesters can address it without presence.
pub const SERVICE_RESOURCE: &str = "ringlet-groups";
/// Longest group name and certificate text accepted.
pub const MAX_GROUP: usize = 64;
pub const MAX_CERT_TEXT: usize = 2048;

/// What a requester signs: which group, which node key, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub group: String,
    pub node_key: [u8; 32],
    pub ts: u64,
    pub proof: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Service,
    Request(Signed),
    State(Signed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Service { key: [u8; 32] },
    Pending { request: u64 },
    Approved { cert: String },
    Denied,
}

fn hex32(elem: &Element, name: &'static str) -> Result<[u8; 32], WireError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(required(elem, name)?, &mut out).map_err(|_| WireError::BadAttr(name))?;
    Ok(out)
}

impl Signed {
    fn parse(elem: &Element) -> Result<Self, WireError> {
        let group = required(elem, "group")?;
        if group.is_empty() || group.len() > MAX_GROUP {
            return Err(WireError::BadAttr("group"));
        }
        Ok(Signed {
            group: group.to_owned(),
            node_key: hex32(elem, "node-key")?,
            ts: required(elem, "ts")?
                .parse()
                .map_err(|_| WireError::BadAttr("ts"))?,
            proof: hex32(elem, "proof")?,
        })
    }

    fn emit(&self, name: &str) -> Element {
        Element::builder(name, NS_JOIN)
            .attr(ncname!("group"), self.group.as_str())
            .attr(ncname!("node-key"), hex::encode(self.node_key))
            .attr(ncname!("ts"), self.ts.to_string())
            .attr(ncname!("proof"), hex::encode(self.proof))
            .build()
    }
}

impl Query {
    pub fn parse(elem: &Element) -> Result<Self, WireError> {
        if elem.is("service", NS_JOIN) {
            Ok(Query::Service)
        } else if elem.is("request", NS_JOIN) {
            Ok(Query::Request(Signed::parse(elem)?))
        } else if elem.is("state", NS_JOIN) {
            Ok(Query::State(Signed::parse(elem)?))
        } else {
            Err(WireError::WrongElement {
                name: "request",
                ns: NS_JOIN,
            })
        }
    }

    pub fn emit(&self) -> Element {
        match self {
            Query::Service => Element::builder("service", NS_JOIN).build(),
            Query::Request(s) => s.emit("request"),
            Query::State(s) => s.emit("state"),
        }
    }
}

impl Answer {
    pub fn parse(elem: &Element) -> Result<Self, WireError> {
        if elem.is("service", NS_JOIN) {
            return Ok(Answer::Service {
                key: hex32(elem, "key")?,
            });
        }
        if !elem.is("state", NS_JOIN) {
            return Err(WireError::WrongElement {
                name: "state",
                ns: NS_JOIN,
            });
        }
        match required(elem, "value")? {
            "pending" => Ok(Answer::Pending {
                request: required(elem, "request")?
                    .parse()
                    .map_err(|_| WireError::BadAttr("request"))?,
            }),
            "denied" => Ok(Answer::Denied),
            "approved" => {
                let cert = elem.text();
                if cert.len() > MAX_CERT_TEXT {
                    return Err(WireError::Oversized {
                        len: cert.len(),
                        limit: MAX_CERT_TEXT,
                    });
                }
                Ok(Answer::Approved { cert })
            }
            _ => Err(WireError::BadAttr("value")),
        }
    }

    pub fn emit(&self) -> Element {
        let state = Element::builder("state", NS_JOIN);
        match self {
            Answer::Service { key } => Element::builder("service", NS_JOIN)
                .attr(ncname!("key"), hex::encode(key))
                .build(),
            Answer::Pending { request } => state
                .attr(ncname!("value"), "pending")
                .attr(ncname!("request"), request.to_string())
                .build(),
            Answer::Approved { cert } => state
                .attr(ncname!("value"), "approved")
                .append(cert.as_str())
                .build(),
            Answer::Denied => state.attr(ncname!("value"), "denied").build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> Signed {
        Signed {
            group: "friends".into(),
            node_key: [7; 32],
            ts: 1_800_000_000,
            proof: [9; 32],
        }
    }

    #[test]
    fn queries_and_answers_round_trip() {
        for q in [Query::Service, Query::Request(signed()), Query::State(signed())] {
            assert_eq!(Query::parse(&q.emit()), Ok(q));
        }
        for a in [
            Answer::Service { key: [3; 32] },
            Answer::Pending { request: 7 },
            Answer::Approved {
                cert: "ringlet-cert AAAA".into(),
            },
            Answer::Denied,
        ] {
            assert_eq!(Answer::parse(&a.emit()), Ok(a));
        }
    }

    #[test]
    fn malformed_elements_are_refused() {
        let bad = [
            r#"<request xmlns="urn:ringlet:join:0" node-key="00" ts="1" proof="00"/>"#,
            r#"<request xmlns="urn:ringlet:join:0" group="g" node-key="zz" ts="1" proof="00"/>"#,
            r#"<state xmlns="urn:ringlet:join:0" value="maybe"/>"#,
            r#"<state xmlns="urn:ringlet:join:0" value="pending" request="-1"/>"#,
            r#"<request xmlns="urn:ringlet:other:0"/>"#,
        ];
        for xml in bad {
            let elem: Element = xml.parse().unwrap();
            assert!(
                Query::parse(&elem).is_err() && Answer::parse(&elem).is_err(),
                "{xml} accepted"
            );
        }
    }
}
