//! XEP-0215 external service discovery: `<services xmlns="urn:xmpp:extdisco:2"/>` asks the
//! account's server which STUN/TURN services it offers.

use super::{ncname, required, WireError, NS_EXTDISCO};
use crate::Element;

/// At most this many services are read from one answer.
pub const MAX_SERVICES: usize = 32;

/// One external service as advertised (TURN credentials included when the server has them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `stun`, `stuns`, `turn`, `turns`, or anything else the server names.
    pub kind: String,
    pub host: String,
    pub port: Option<u16>,
    /// `udp` or `tcp` when given.
    pub transport: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// ISO 8601 expiry of the credentials, verbatim.
    pub expires: Option<String>,
}

/// The request payload.
pub fn request() -> Element {
    Element::bare("services", NS_EXTDISCO)
}

/// Parses the `<services/>` payload of a result. Malformed `<service/>` entries are skipped.
pub fn parse(elem: &Element) -> Result<Vec<Service>, WireError> {
    if !elem.is("services", NS_EXTDISCO) {
        return Err(WireError::WrongElement {
            name: "services",
            ns: NS_EXTDISCO,
        });
    }
    let services = elem
        .children()
        .filter(|c| c.is("service", NS_EXTDISCO))
        .filter_map(|c| parse_service(c).ok())
        .take(MAX_SERVICES)
        .collect();
    Ok(services)
}

fn parse_service(elem: &Element) -> Result<Service, WireError> {
    let port = match elem.attr("port") {
        None => None,
        Some(p) => Some(p.parse().map_err(|_| WireError::BadAttr("port"))?),
    };
    let owned = |name: &str| elem.attr(name).map(str::to_owned);
    Ok(Service {
        kind: required(elem, "type")?.to_owned(),
        host: required(elem, "host")?.to_owned(),
        port,
        transport: owned("transport"),
        username: owned("username"),
        password: owned("password"),
        expires: owned("expires"),
    })
}

/// Emits a `<services/>` answer; used by tests that play the server.
pub fn emit(services: &[Service]) -> Element {
    let mut builder = Element::builder("services", NS_EXTDISCO);
    for s in services {
        let mut b = Element::builder("service", NS_EXTDISCO)
            .attr(ncname!("type"), s.kind.as_str())
            .attr(ncname!("host"), s.host.as_str());
        if let Some(port) = s.port {
            b = b.attr(ncname!("port"), port.to_string());
        }
        if let Some(t) = &s.transport {
            b = b.attr(ncname!("transport"), t.as_str());
        }
        builder = builder.append(b.build());
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prosody_style_answer_and_skips_bad_entries() {
        let xml = format!(
            "<services xmlns='{NS_EXTDISCO}'>\
               <service type='stun' host='127.0.0.1' port='3478' transport='udp'/>\
               <service type='turn' host='turn.test' port='3478' transport='udp' username='u' password='p' expires='2026-01-01T00:00:00Z' restricted='1'/>\
               <service type='stun' host='bad.test' port='99999'/>\
               <service host='no-type.test'/>\
             </services>"
        );
        let services = parse(&xml.parse().unwrap()).unwrap();
        assert_eq!(services.len(), 2);
        assert_eq!(services[0].kind, "stun");
        assert_eq!(services[0].port, Some(3478));
        assert_eq!(services[1].username.as_deref(), Some("u"));
    }
}
