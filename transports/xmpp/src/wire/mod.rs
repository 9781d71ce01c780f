//! Wire formats of ringlet's XMPP payloads, one module per format (`parse` / `emit`).
//!
//! Every parser takes an untrusted [`Element`](crate::Element) and returns a typed value or a
//! [`WireError`] naming what was wrong; nothing here panics on input.

pub mod addresses;
pub mod extdisco;
pub mod join;
pub mod overlay;
pub mod relay;

/// Namespace of the presence tag that marks a resource as a member of an overlay.
pub const NS_OVERLAY: &str = "urn:ringlet:overlay:0";
/// Namespace of the address exchange.
pub const NS_RENDEZVOUS: &str = "urn:ringlet:rendezvous:0";
/// Namespace of relayed datagrams.
pub const NS_RELAY: &str = "urn:ringlet:relay:0";
/// XEP-0215 external service discovery.
pub const NS_EXTDISCO: &str = "urn:xmpp:extdisco:2";

/// Why an element was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("expected <{name} xmlns='{ns}'/>")]
    WrongElement { name: &'static str, ns: &'static str },
    #[error("attribute '{0}' is missing")]
    MissingAttr(&'static str),
    #[error("attribute '{0}' is malformed")]
    BadAttr(&'static str),
    #[error("payload is not valid base64")]
    BadBase64,
    #[error("payload of {len} bytes exceeds the limit of {limit}")]
    Oversized { len: usize, limit: usize },
    #[error("too many <{0}/> children")]
    TooManyChildren(&'static str),
}

/// The optional `cert` attribute (base64, at most [`addresses::MAX_CERT_LEN`] bytes decoded):
/// a group certificate, opaque to this crate.
pub(crate) fn optional_cert(elem: &crate::Element) -> Result<Option<Vec<u8>>, WireError> {
    use base64::Engine;
    let Some(b64) = elem.attr("cert") else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| WireError::BadBase64)?;
    if bytes.len() > addresses::MAX_CERT_LEN {
        return Err(WireError::Oversized {
            len: bytes.len(),
            limit: addresses::MAX_CERT_LEN,
        });
    }
    Ok(Some(bytes))
}

/// Builds an attribute name; every name used here is a valid XML NCName literal.
macro_rules! ncname {
    ($name:literal) => {
        ::rxml::xml_ncname!($name).into()
    };
}
pub(crate) use ncname;

/// Reads a required attribute.
pub(crate) fn required<'a>(elem: &'a crate::Element, name: &'static str) -> Result<&'a str, WireError> {
    elem.attr(name).ok_or(WireError::MissingAttr(name))
}

/// Parses 40 lowercase or uppercase hex digits into NodeId bytes.
pub(crate) fn parse_node_id(s: &str, attr: &'static str) -> Result<crate::NodeIdBytes, WireError> {
    let mut out = [0u8; 20];
    hex::decode_to_slice(s, &mut out).map_err(|_| WireError::BadAttr(attr))?;
    Ok(out)
}
