//! `<overlay xmlns="urn:ringlet:overlay:0" ns="<16 hex>" node="<40 hex>" key="<64 hex>"
//! cert="<base64>"/>`, carried in presence so membership survives servers that rewrite
//! resources. `key` (whose hash must be `node`) and `cert` are optional: with them a peer can
//! open a link handshake, and send what waits with its first message, as soon as it sees us.

use base64::Engine;

use super::{ncname, parse_node_id, required, WireError, NS_OVERLAY};
use crate::{names, node_id_of, Element, NodeIdBytes, PublicKeyBytes};

/// The overlay tag of one presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayTag {
    pub ns: String,
    pub node: NodeIdBytes,
    pub key: Option<PublicKeyBytes>,
    pub cert: Option<Vec<u8>>,
}

impl OverlayTag {
    pub fn parse(elem: &Element) -> Result<Self, WireError> {
        if !elem.is("overlay", NS_OVERLAY) {
            return Err(WireError::WrongElement {
                name: "overlay",
                ns: NS_OVERLAY,
            });
        }
        let ns = required(elem, "ns")?;
        if !names::is_overlay_ns(ns) {
            return Err(WireError::BadAttr("ns"));
        }
        let node = parse_node_id(required(elem, "node")?, "node")?;
        let key = match elem.attr("key") {
            None => None,
            Some(hex_key) => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(hex_key, &mut key).map_err(|_| WireError::BadAttr("key"))?;
                if node_id_of(&key) != node {
                    return Err(WireError::BadAttr("key"));
                }
                Some(key)
            }
        };
        let cert = super::optional_cert(elem)?;
        Ok(Self {
            ns: ns.to_owned(),
            node,
            key,
            cert,
        })
    }

    /// Finds and parses the overlay tag among presence payloads; `None` when there is none.
    pub fn find(payloads: &[Element]) -> Option<Result<Self, WireError>> {
        payloads
            .iter()
            .find(|p| p.is("overlay", NS_OVERLAY))
            .map(Self::parse)
    }

    pub fn emit(&self) -> Element {
        let mut b = Element::builder("overlay", NS_OVERLAY)
            .attr(ncname!("ns"), self.ns.as_str())
            .attr(ncname!("node"), hex::encode(self.node));
        if let Some(key) = &self.key {
            b = b.attr(ncname!("key"), hex::encode(key));
        }
        if let Some(cert) = &self.cert {
            b = b.attr(
                ncname!("cert"),
                base64::engine::general_purpose::STANDARD.encode(cert),
            );
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let tag = OverlayTag {
            ns: names::overlay_ns("alpha"),
            node: [7; 20],
            key: None,
            cert: None,
        };
        assert_eq!(OverlayTag::parse(&tag.emit()), Ok(tag));
        let key = [9; 32];
        let full = OverlayTag {
            ns: names::overlay_ns("alpha"),
            node: node_id_of(&key),
            key: Some(key),
            cert: Some(vec![1; 300]),
        };
        assert_eq!(OverlayTag::parse(&full.emit()), Ok(full.clone()));
        // A key that is not the node's is refused: the NodeId is the key's hash.
        let lying = OverlayTag {
            node: [7; 20],
            ..full
        };
        assert_eq!(OverlayTag::parse(&lying.emit()), Err(WireError::BadAttr("key")));
    }

    #[test]
    fn rejects_bad_ns_and_node() {
        let bad_ns: Element = format!(
            "<overlay xmlns='{NS_OVERLAY}' ns='xyz' node='{}'/>",
            "00".repeat(20)
        )
        .parse()
        .unwrap();
        assert_eq!(OverlayTag::parse(&bad_ns), Err(WireError::BadAttr("ns")));
        let bad_node: Element = format!("<overlay xmlns='{NS_OVERLAY}' ns='0123456789abcdef' node='12'/>")
            .parse()
            .unwrap();
        assert_eq!(OverlayTag::parse(&bad_node), Err(WireError::BadAttr("node")));
        let missing: Element = format!("<overlay xmlns='{NS_OVERLAY}' ns='0123456789abcdef'/>")
            .parse()
            .unwrap();
        assert_eq!(OverlayTag::parse(&missing), Err(WireError::MissingAttr("node")));
    }
}
