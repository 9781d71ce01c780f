//! The address exchange: `<addresses xmlns="urn:ringlet:rendezvous:0" ns="…"/>` asks a member
//! for its addresses; the reply carries its NodeId, static public key and endpoint URIs:
//!
//! ```xml
//! <addresses xmlns="urn:ringlet:rendezvous:0" ns="…" node="<40 hex>" key="<64 hex>"
//!            cert="<base64>">
//!   <endpoint uri="xmpp://alice@example.org/ringlet.…" priority="1"/>
//! </addresses>
//! ```
//! `cert` (optional) is the member's group certificate, opaque here: a peer that checks it
//! before the link handshake can send what waits with the handshake's first message.

use super::{ncname, parse_node_id, required, WireError, NS_RENDEZVOUS};
use crate::{names, Element, NodeIdBytes, PublicKeyBytes};

/// At most this many endpoints are accepted in one reply.
pub const MAX_ENDPOINTS: usize = 32;
/// Longest accepted endpoint URI (`xmpp://` plus a full JID of up to 3071 bytes).
pub const MAX_URI_LEN: usize = 3200;
/// Largest accepted certificate (decoded).
pub const MAX_CERT_LEN: usize = 1024;

/// One way to reach a node, e.g. `udp://203.0.113.7:4000` or `xmpp://alice@example.org/r`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub uri: String,
    /// Higher is preferred.
    pub priority: u32,
}

/// A request for a member's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRequest {
    pub ns: String,
}

/// A member's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressReply {
    pub ns: String,
    pub node: NodeIdBytes,
    pub key: PublicKeyBytes,
    pub endpoints: Vec<Endpoint>,
    pub cert: Option<Vec<u8>>,
}

fn check_root(elem: &Element) -> Result<String, WireError> {
    if !elem.is("addresses", NS_RENDEZVOUS) {
        return Err(WireError::WrongElement {
            name: "addresses",
            ns: NS_RENDEZVOUS,
        });
    }
    let ns = required(elem, "ns")?;
    if !names::is_overlay_ns(ns) {
        return Err(WireError::BadAttr("ns"));
    }
    Ok(ns.to_owned())
}

impl AddressRequest {
    pub fn parse(elem: &Element) -> Result<Self, WireError> {
        Ok(Self {
            ns: check_root(elem)?,
        })
    }

    pub fn emit(&self) -> Element {
        Element::builder("addresses", NS_RENDEZVOUS)
            .attr(ncname!("ns"), self.ns.as_str())
            .build()
    }
}

impl AddressReply {
    pub fn parse(elem: &Element) -> Result<Self, WireError> {
        let ns = check_root(elem)?;
        let node = parse_node_id(required(elem, "node")?, "node")?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(required(elem, "key")?, &mut key).map_err(|_| WireError::BadAttr("key"))?;
        let mut endpoints = Vec::new();
        for child in elem.children().filter(|c| c.is("endpoint", NS_RENDEZVOUS)) {
            if endpoints.len() == MAX_ENDPOINTS {
                return Err(WireError::TooManyChildren("endpoint"));
            }
            let uri = required(child, "uri")?;
            if uri.is_empty() || uri.len() > MAX_URI_LEN || !uri.contains("://") {
                return Err(WireError::BadAttr("uri"));
            }
            let priority = required(child, "priority")?
                .parse()
                .map_err(|_| WireError::BadAttr("priority"))?;
            endpoints.push(Endpoint {
                uri: uri.to_owned(),
                priority,
            });
        }
        let cert = super::optional_cert(elem)?;
        Ok(Self {
            ns,
            node,
            key,
            endpoints,
            cert,
        })
    }

    pub fn emit(&self) -> Element {
        let mut builder = Element::builder("addresses", NS_RENDEZVOUS)
            .attr(ncname!("ns"), self.ns.as_str())
            .attr(ncname!("node"), hex::encode(self.node))
            .attr(ncname!("key"), hex::encode(self.key));
        if let Some(cert) = &self.cert {
            use base64::Engine;
            builder = builder.attr(
                ncname!("cert"),
                base64::engine::general_purpose::STANDARD.encode(cert),
            );
        }
        for ep in &self.endpoints {
            builder = builder.append(
                Element::builder("endpoint", NS_RENDEZVOUS)
                    .attr(ncname!("uri"), ep.uri.as_str())
                    .attr(ncname!("priority"), ep.priority.to_string())
                    .build(),
            );
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> AddressReply {
        AddressReply {
            ns: names::overlay_ns("alpha"),
            node: [1; 20],
            key: [2; 32],
            endpoints: vec![
                Endpoint {
                    uri: "xmpp://a@b.test/ringlet.x".into(),
                    priority: 1,
                },
                Endpoint {
                    uri: "udp://203.0.113.5:4000".into(),
                    priority: 100,
                },
            ],
            cert: Some(vec![7; 200]),
        }
    }

    #[test]
    fn round_trips() {
        let r = reply();
        assert_eq!(AddressReply::parse(&r.emit()), Ok(r.clone()));
        let without = AddressReply { cert: None, ..r };
        assert_eq!(AddressReply::parse(&without.emit()), Ok(without));
        let big = AddressReply {
            cert: Some(vec![0; MAX_CERT_LEN + 1]),
            ..reply()
        };
        assert!(matches!(
            AddressReply::parse(&big.emit()),
            Err(WireError::Oversized { .. })
        ));
        let q = AddressRequest {
            ns: names::overlay_ns("alpha"),
        };
        assert_eq!(AddressRequest::parse(&q.emit()), Ok(q));
    }

    #[test]
    fn rejects_bad_key_and_too_many_endpoints() {
        let mut bad = reply().emit();
        bad.attrs_mut().clear();
        assert_eq!(AddressReply::parse(&bad), Err(WireError::MissingAttr("ns")));
        let elem: Element = format!(
            "<addresses xmlns='{NS_RENDEZVOUS}' ns='{}' node='{}' key='zz'/>",
            names::overlay_ns("alpha"),
            "ab".repeat(20)
        )
        .parse()
        .unwrap();
        assert_eq!(AddressReply::parse(&elem), Err(WireError::BadAttr("key")));

        let mut many = reply();
        many.endpoints = (0..=MAX_ENDPOINTS as u32)
            .map(|i| Endpoint {
                uri: format!("udp://203.0.113.1:{i}"),
                priority: i,
            })
            .collect();
        assert_eq!(
            AddressReply::parse(&many.emit()),
            Err(WireError::TooManyChildren("endpoint"))
        );
    }
}
