//! `<overlay xmlns="urn:ringlet:overlay:0" ns="<16 hex>" node="<40 hex>"/>`, carried in
//! presence so membership survives servers that rewrite resources.

use super::{ncname, parse_node_id, required, WireError, NS_OVERLAY};
use crate::{names, Element, NodeIdBytes};

/// The overlay tag of one presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayTag {
    pub ns: String,
    pub node: NodeIdBytes,
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
        Ok(Self {
            ns: ns.to_owned(),
            node,
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
        Element::builder("overlay", NS_OVERLAY)
            .attr(ncname!("ns"), self.ns.as_str())
            .attr(ncname!("node"), hex::encode(self.node))
            .build()
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
        };
        assert_eq!(OverlayTag::parse(&tag.emit()), Ok(tag));
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
