//! The XMPP doors of the group service: the administrator's side answers join queries at
//! `admin@domain/ringlet-groups`; the requester's side (`ringlet group request`) asks, waits
//! for the decision, and installs the certificate.
//!
//! Both are thin I/O loops around [`super::join`]: every IQ gets an answer, every wait is
//! bounded, and a malformed query is refused with `bad-request` and counted in the log.

#![allow(clippy::disallowed_methods)] // the doors wait on real time (IQ timeouts, polling)

use std::sync::Arc;
use std::time::Duration;

use ringlet_xmpp::session::{Session, SessionConfig, SessionEvent};
use ringlet_xmpp::wire::join::{Answer, Query, NS_JOIN, SERVICE_RESOURCE};
use ringlet_xmpp::xmpp_parsers::iq::Iq;
use ringlet_xmpp::xmpp_parsers::presence::{Presence, Type as PresenceType};
use ringlet_xmpp::xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use ringlet_xmpp::{BareJid, Element, FullJid, Jid, Stanza};

use super::join::{self, Refusal};
use super::web::Web;
use crate::config::Config;
use crate::identity::NodeKey;
use crate::node::membership::unix_now;
use crate::secure::admin;
use crate::secure::cert::MemberCert;

/// Pause between polls of a pending request, and between tries while the service is offline.
pub const POLL: Duration = Duration::from_secs(2);
/// How long one IQ may wait for its answer.
const IQ_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before the service logs in again after its session failed.
const RELOGIN: Duration = Duration::from_secs(5);

/// Answers join queries for as long as it runs (log in again after failures).
pub async fn serve(node: Config, key: NodeKey, web: Arc<Web>) {
    loop {
        match serve_once(&node, &key, &web).await {
            Ok(()) => tracing::warn!("group service: XMPP session ended; logging in again"),
            Err(e) => tracing::warn!(error = %e, "group service: XMPP login failed; retrying"),
        }
        tokio::time::sleep(RELOGIN).await;
    }
}

async fn serve_once(
    node: &Config,
    key: &NodeKey,
    web: &Web,
) -> Result<(), ringlet_xmpp::connect::LoginError> {
    let login = crate::node::login_config(node, SERVICE_RESOURCE)?;
    let mut session = Session::connect(SessionConfig::new(login, unix_now())).await?;
    tracing::info!(jid = %session.jid(), "group service takes join requests over XMPP");
    let sender = session.sender();
    while let Some(event) = session.next_event().await {
        let stanza = match event {
            SessionEvent::Online { .. } => {
                // Negative priority: chat messages to the bare JID never land here.
                let mut p = Presence::new(PresenceType::None);
                p.priority = ringlet_xmpp::xmpp_parsers::presence::Priority(-1);
                let _ = sender.try_send(p.into());
                continue;
            }
            SessionEvent::Stanza(s) => *s,
            SessionEvent::Failed(e) => return Err(e),
            SessionEvent::Suspended | SessionEvent::Retrying { .. } => continue,
        };
        if let Some(reply) = answer_stanza(stanza, key, web) {
            if sender.try_send(reply).is_err() {
                tracing::warn!("group service: outgoing queue full, an answer was dropped");
            }
        }
    }
    Ok(())
}

/// The reply to one incoming stanza, if it needs one.
fn answer_stanza(stanza: Stanza, key: &NodeKey, web: &Web) -> Option<Stanza> {
    let Stanza::Iq(iq) = stanza else { return None };
    let (from, id, payload) = match iq {
        Iq::Get {
            from, id, payload, ..
        }
        | Iq::Set {
            from, id, payload, ..
        } => (from?, id, payload),
        _ => return None,
    };
    let reply = |result: Result<Answer, Refusal>| -> Stanza {
        match result {
            Ok(answer) => Iq::Result {
                from: None,
                to: Some(from.clone()),
                id: id.clone(),
                payload: Some(answer.emit()),
            }
            .into(),
            Err(r) => error_iq(from.clone(), &id, r.condition, &r.text).into(),
        }
    };
    if payload.is("ping", "urn:xmpp:ping") {
        return Some(
            Iq::Result {
                from: None,
                to: Some(from),
                id,
                payload: None,
            }
            .into(),
        );
    }
    if payload.ns() != NS_JOIN {
        return Some(error_iq(from, &id, "service-unavailable", "").into());
    }
    let query = match Query::parse(&payload) {
        Ok(q) => q,
        Err(e) => {
            tracing::info!(error = %e, "group service: malformed join query refused");
            return Some(reply(Err(Refusal {
                condition: "bad-request",
                text: e.to_string(),
            })));
        }
    };
    let bare = from.to_bare();
    let now = unix_now();
    let result = web
        .with(|s| Ok(join::answer(s, key, &bare, query, now)))
        .unwrap_or_else(|e| {
            Err(Refusal {
                condition: "internal-server-error",
                text: e.message,
            })
        });
    if let Err(r) = &result {
        tracing::info!(from = %bare, condition = r.condition, reason = %r.text, "join query refused");
    }
    Some(reply(result))
}

fn error_iq(to: Jid, id: &str, condition: &str, text: &str) -> Iq {
    let (type_, defined) = match condition {
        "item-not-found" => (ErrorType::Cancel, DefinedCondition::ItemNotFound),
        "conflict" => (ErrorType::Cancel, DefinedCondition::Conflict),
        "forbidden" => (ErrorType::Auth, DefinedCondition::Forbidden),
        "not-acceptable" => (ErrorType::Modify, DefinedCondition::NotAcceptable),
        "bad-request" => (ErrorType::Modify, DefinedCondition::BadRequest),
        "resource-constraint" => (ErrorType::Wait, DefinedCondition::ResourceConstraint),
        "service-unavailable" => (ErrorType::Cancel, DefinedCondition::ServiceUnavailable),
        _ => (ErrorType::Wait, DefinedCondition::InternalServerError),
    };
    Iq::Error {
        from: None,
        to: Some(to),
        id: id.to_owned(),
        error: StanzaError::new(type_, defined, "en", text),
        payload: None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot log in as {jid}: {source}")]
    Login {
        jid: BareJid,
        source: ringlet_xmpp::connect::LoginError,
    },
    #[error(transparent)]
    Key(#[from] crate::identity::IdentityError),
    #[error("{admin}'s group service refused: {condition}{}", if .text.is_empty() { String::new() } else { format!(" ({})", .text) })]
    Refused {
        admin: BareJid,
        condition: String,
        text: String,
    },
    #[error("the administrator denied this node's request to join '{group}'")]
    Denied { group: String },
    #[error("no decision within {waited_s} s (last: {last}); run the same command again to keep waiting")]
    Timeout { waited_s: u64, last: String },
    #[error("the certificate that came back cannot be installed: {0}")]
    Install(#[from] admin::AdminError),
    #[error("the XMPP session ended")]
    SessionEnded,
}

/// Asks `admin`'s group service to admit this node to `group`, waits up to `wait` for the
/// decision and installs the certificate at `config.group_cert`.
pub async fn request(
    config: &Config,
    admin_jid: &BareJid,
    group: &str,
    wait: Duration,
    progress: impl Fn(&str),
) -> Result<MemberCert, RequestError> {
    let (key, _) = NodeKey::load_or_create(&config.key_file)?;
    let mut instance = [0u8; 4];
    getrandom::fill(&mut instance).map_err(|e| crate::identity::IdentityError::Random(e.to_string()))?;
    let resource = format!("ringlet-join.{}", hex::encode(instance));
    let login_err = |source| RequestError::Login {
        jid: config.jid.clone(),
        source,
    };
    let login = crate::node::login_config(config, &resource).map_err(login_err)?;
    progress(&format!("logging in as {}", config.jid));
    let session = Session::connect(SessionConfig::new(login, unix_now()))
        .await
        .map_err(login_err)?;
    let service = admin_jid
        .with_resource_str(SERVICE_RESOURCE)
        .map_err(|_| RequestError::SessionEnded)?;
    let mut asker = Asker {
        session,
        to: service,
        admin: admin_jid.clone(),
        next_id: 0,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let result = exchange(&mut asker, config, &key, group, deadline, &progress).await;
    asker.session.close(None, Duration::from_secs(1)).await;
    let cert_text = result.map_err(|e| match e {
        Waited::Failed(e) => e,
        Waited::Timeout(last) => RequestError::Timeout {
            waited_s: wait.as_secs(),
            last,
        },
    })?;
    let cert = admin::join(
        &cert_text,
        &key.public_bytes(),
        &config.jid,
        &config.group_cert,
        unix_now(),
    )?;
    Ok(cert)
}

enum Waited {
    Failed(RequestError),
    Timeout(String),
}

impl From<RequestError> for Waited {
    fn from(e: RequestError) -> Self {
        Waited::Failed(e)
    }
}

async fn exchange(
    asker: &mut Asker,
    config: &Config,
    key: &NodeKey,
    group: &str,
    deadline: tokio::time::Instant,
    progress: &impl Fn(&str),
) -> Result<String, Waited> {
    // 1. The service's key (retried while the service is offline).
    let service_key = loop {
        match asker.ask(Query::Service, deadline).await? {
            Ok(Answer::Service { key }) => break key,
            Ok(_) => return Err(refused(asker, "unexpected-answer", "")),
            Err((condition, _)) if offline(&condition) => {
                progress(&format!("{}'s group service is not online; waiting", asker.admin));
                sleep_until_or(deadline, &condition).await?;
            }
            Err((condition, text)) => return Err(refused(asker, &condition, &text)),
        }
    };
    let admin = asker.admin.clone();
    let sign = |now| {
        join::sign(key, &service_key, &config.jid, group, now)
            .map_err(|e| Waited::Failed(refused_by(&admin, "bad-key", &e.to_string())))
    };
    // 2. The request; a conflict means one is on file already, so we wait for its decision.
    progress(&format!("asking {} to admit this node to '{group}'", asker.admin));
    let mut answer = match asker.ask(Query::Request(sign(unix_now())?), deadline).await? {
        Err((condition, _)) if condition == "conflict" => None,
        Err((condition, text)) => return Err(refused(asker, &condition, &text)),
        Ok(a) => Some(a),
    };
    // 3. Poll until decided.
    let mut told = false;
    loop {
        match answer {
            Some(Answer::Approved { cert }) => return Ok(cert),
            Some(Answer::Denied) => {
                return Err(Waited::Failed(RequestError::Denied {
                    group: group.to_owned(),
                }));
            }
            Some(Answer::Pending { request }) if !told => {
                progress(&format!(
                    "request #{request} is pending; waiting for the administrator's decision"
                ));
                told = true;
            }
            _ => {}
        }
        sleep_until_or(deadline, "pending").await?;
        answer = match asker.ask(Query::State(sign(unix_now())?), deadline).await? {
            Ok(a) => Some(a),
            Err((condition, _)) if offline(&condition) => None,
            Err((condition, text)) => return Err(refused(asker, &condition, &text)),
        };
    }
}

fn refused(asker: &Asker, condition: &str, text: &str) -> Waited {
    Waited::Failed(refused_by(&asker.admin, condition, text))
}

fn refused_by(admin: &BareJid, condition: &str, text: &str) -> RequestError {
    RequestError::Refused {
        admin: admin.clone(),
        condition: condition.to_owned(),
        text: text.to_owned(),
    }
}

/// Conditions that mean "nobody answers at that resource right now".
fn offline(condition: &str) -> bool {
    matches!(
        condition,
        "service-unavailable" | "recipient-unavailable" | "item-not-found" | "timeout"
    )
}

async fn sleep_until_or(deadline: tokio::time::Instant, last: &str) -> Result<(), Waited> {
    let wake = tokio::time::Instant::now() + POLL;
    if wake >= deadline {
        return Err(Waited::Timeout(last.to_owned()));
    }
    tokio::time::sleep_until(wake).await;
    Ok(())
}

/// Sends IQs to the service and waits for their answers.
struct Asker {
    session: Session,
    to: FullJid,
    admin: BareJid,
    next_id: u64,
}

type Asked = Result<Answer, (String, String)>;

impl Asker {
    /// One IQ round trip: the answer, or the error condition and text (`timeout` when none came).
    async fn ask(&mut self, query: Query, deadline: tokio::time::Instant) -> Result<Asked, RequestError> {
        self.next_id += 1;
        let id = format!("join{}", self.next_id);
        let payload: Element = query.emit();
        let iq = if matches!(query, Query::Request(_)) {
            Iq::Set {
                from: None,
                to: Some(self.to.clone().into()),
                id: id.clone(),
                payload,
            }
        } else {
            Iq::Get {
                from: None,
                to: Some(self.to.clone().into()),
                id: id.clone(),
                payload,
            }
        };
        let sender = self.session.sender();
        let permit = sender.reserve().await.ok_or(RequestError::SessionEnded)?;
        permit.send(iq.into());
        let until = deadline.min(tokio::time::Instant::now() + IQ_TIMEOUT);
        loop {
            let event = match tokio::time::timeout_at(until, self.session.next_event()).await {
                Err(_) => return Ok(Err(("timeout".into(), String::new()))),
                Ok(None) => return Err(RequestError::SessionEnded),
                Ok(Some(e)) => e,
            };
            let iq = match event {
                SessionEvent::Stanza(s) => match *s {
                    Stanza::Iq(iq) => iq,
                    _ => continue,
                },
                SessionEvent::Failed(source) => {
                    return Err(RequestError::Login {
                        jid: self.admin.clone(),
                        source,
                    })
                }
                _ => continue,
            };
            match iq {
                Iq::Result { id: rid, payload, .. } if rid == id => {
                    let parsed = payload
                        .as_ref()
                        .map(Answer::parse)
                        .transpose()
                        .map_err(|e| e.to_string());
                    return Ok(match parsed {
                        Ok(Some(a)) => Ok(a),
                        Ok(None) => Err(("empty-answer".into(), String::new())),
                        Err(e) => Err(("malformed-answer".into(), e)),
                    });
                }
                Iq::Error { id: rid, error, .. } if rid == id => {
                    let text = error.texts.values().next().cloned().unwrap_or_default();
                    let condition = ringlet_xmpp::stanzas::condition_name(&error.defined_condition);
                    return Ok(Err((condition.to_owned(), text)));
                }
                _ => {}
            }
        }
    }
}
