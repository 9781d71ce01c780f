//! Stanza builders shared by the cores.

use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::{BareJid, Element, FullJid, Jid};

pub(crate) fn subscription(kind: PresenceType, to: &BareJid) -> Presence {
    let mut p = Presence::new(kind);
    p.to = Some(to.clone().into());
    p
}

pub(crate) fn get(to: &FullJid, id: &str, payload: Element) -> Iq {
    Iq::Get {
        from: None,
        to: Some(to.clone().into()),
        id: id.to_owned(),
        payload,
    }
}

pub(crate) fn set(to: &FullJid, id: &str, payload: Element) -> Iq {
    Iq::Set {
        from: None,
        to: Some(to.clone().into()),
        id: id.to_owned(),
        payload,
    }
}

pub(crate) fn empty_result(to: Option<Jid>, id: &str) -> Iq {
    Iq::Result {
        from: None,
        to,
        id: id.to_owned(),
        payload: None,
    }
}

pub(crate) fn result_with(to: &FullJid, id: &str, payload: Element) -> Iq {
    Iq::Result {
        from: None,
        to: Some(to.clone().into()),
        id: id.to_owned(),
        payload: Some(payload),
    }
}

pub(crate) fn error(to: Jid, id: &str, type_: ErrorType, condition: DefinedCondition) -> Iq {
    Iq::Error {
        from: None,
        to: Some(to),
        id: id.to_owned(),
        error: StanzaError::new(type_, condition, "en", ""),
        payload: None,
    }
}

pub(crate) fn not_authorized(to: &FullJid, id: &str) -> Iq {
    error(
        to.clone().into(),
        id,
        ErrorType::Auth,
        DefinedCondition::NotAuthorized,
    )
}

/// The element name of a stanza error condition, e.g. `service-unavailable`.
pub fn condition_name(condition: &DefinedCondition) -> &'static str {
    use DefinedCondition::*;
    match condition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone { .. } => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect { .. } => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}
