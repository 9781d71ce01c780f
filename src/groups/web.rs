//! The HTTP front of the group service (axum): pages for people, two plain-text endpoints for
//! machines (`GET /groups/{g}/crl`, `POST /groups/{g}/renew`).
//!
//! Who may do what:
//! - the administrator is whoever logs in with the secret the service printed at first start
//!   (kept in `groups-admin.secret`, mode 0600, beside the database; only its SHA-256 is
//!   stored); the session cookie is HttpOnly and SameSite=Strict, 12 hours;
//! - every state-changing form carries the session's CSRF token, compared in constant time;
//!   a POST without it, or without a session, is refused with 403 and changes nothing;
//! - everyone else (members, over the VPN address or localhost) sees group pages without
//!   pending requests, bundles or buttons.

use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::constant_time_eq;
use super::pages::{self, AdminView};
use super::service::{token, Policy, Service, ServiceError};
use crate::config::Config;
use crate::secure::files;
use crate::secure::revocation::Target;

const COOKIE: &str = "ringlet_admin";
const SESSION_S: u64 = 12 * 3600;
const SECRET_HASH: &str = "admin_secret_sha256";

/// The service as the web handlers share it.
pub struct Web {
    service: Mutex<Service>,
    /// The administrator's node, told about revocations of its own group.
    node: Option<Config>,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Web {
    /// `clock` gives unix seconds (tests move it). Returns the login secret when this is the
    /// database's first start, so the caller can show it once.
    pub fn new(
        service: Service,
        secret_file: &std::path::Path,
        node: Option<Config>,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<(Arc<Self>, Option<String>), WebError> {
        let mut fresh = None;
        if service
            .store()
            .setting(SECRET_HASH)
            .map_err(ServiceError::from)?
            .is_none()
        {
            let secret = token::<16>()?;
            let _ = std::fs::remove_file(secret_file); // one of an earlier, deleted database
            files::write_new_private(secret_file, &format!("{secret}\n"))
                .map_err(|e| WebError::internal(e.to_string()))?;
            service
                .store()
                .set_setting(SECRET_HASH, &sha256_hex(&secret))
                .map_err(ServiceError::from)?;
            fresh = Some(secret);
        }
        let web = Web {
            service: Mutex::new(service),
            node,
            clock,
        };
        Ok((Arc::new(web), fresh))
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Runs `f` on the service (the XMPP door and tests use this).
    pub fn with<T>(&self, f: impl FnOnce(&Service) -> Result<T, ServiceError>) -> Result<T, WebError> {
        let service = self.service.lock().unwrap_or_else(|p| p.into_inner());
        f(&service).map_err(WebError::from)
    }

    /// The CSRF token of the visitor's admin session, if they have one.
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let token = cookie(headers, COOKIE)?;
        let not_before = self.now().saturating_sub(SESSION_S) as i64;
        self.with(|s| Ok(s.store().session(&token, not_before)?))
            .ok()
            .flatten()
    }

    /// Admits a state-changing request: an admin session and its CSRF token.
    fn admin_post(&self, headers: &HeaderMap, csrf: &str) -> Result<String, WebError> {
        let expected = self
            .session(headers)
            .ok_or_else(|| WebError::forbidden("only the administrator may do this; log in first"))?;
        if !constant_time_eq(expected.as_bytes(), csrf.as_bytes()) {
            return Err(WebError::forbidden(
                "missing or wrong CSRF token; reload the page and try again",
            ));
        }
        Ok(expected)
    }
}

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/groups", post(create_group))
        .route("/groups/{group}", get(group_page))
        .route("/groups/{group}/requests/{id}/{decision}", post(decide))
        .route("/groups/{group}/revoke", post(revoke))
        .route("/groups/{group}/bundle/{serial}", get(bundle))
        .route("/groups/{group}/crl", get(crl))
        .route("/groups/{group}/renew", post(renew))
        .with_state(web)
}

/// A refused request: its status and the reason shown to the visitor.
#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    fn forbidden(message: &str) -> Self {
        WebError {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }

    fn internal(message: String) -> Self {
        WebError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }

    fn bad(message: String) -> Self {
        WebError {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl From<ServiceError> for WebError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::UnknownGroup(_) | ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Duplicate(_) => StatusCode::CONFLICT,
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::Refused(_) => StatusCode::FORBIDDEN,
            ServiceError::Store(_) | ServiceError::Random(_) => {
                tracing::warn!(error = %e, "group service failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        WebError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        (
            self.status,
            Html(pages::error(self.status.as_u16(), &self.message)),
        )
            .into_response()
    }
}

type Page = Result<Response, WebError>;

async fn index(State(web): State<Arc<Web>>, headers: HeaderMap) -> Page {
    let csrf = web.session(&headers);
    let admin = csrf.as_deref().map(|csrf| AdminView { csrf });
    let groups = web.with(|s| s.groups())?;
    Ok(Html(pages::index(&groups, admin.as_ref())).into_response())
}

async fn login_page() -> Html<String> {
    Html(pages::login(false))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    secret: String,
}

async fn login(State(web): State<Arc<Web>>, Form(form): Form<LoginForm>) -> Page {
    let stored = web
        .with(|s| Ok(s.store().setting(SECRET_HASH)?))?
        .unwrap_or_default();
    let given = sha256_hex(form.secret.trim());
    if stored.is_empty() || !constant_time_eq(stored.as_bytes(), given.as_bytes()) {
        tracing::warn!("group service: failed administrator login");
        // Slows guessing; the secret has 128 bits anyway.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        return Ok((StatusCode::FORBIDDEN, Html(pages::login(true))).into_response());
    }
    let (session, csrf) = (token::<32>()?, token::<32>()?);
    let now = web.now() as i64;
    web.with(|s| Ok(s.store().add_session(&session, &csrf, now)?))?;
    let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_S}");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Page {
    web.admin_post(&headers, &form.csrf)?;
    if let Some(token) = cookie(&headers, COOKIE) {
        web.with(|s| Ok(s.store().end_session(&token)?))?;
    }
    let expire = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok(([(header::SET_COOKIE, expire)], Redirect::to("/")).into_response())
}

#[derive(Deserialize)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    limit: String,
}

async fn create_group(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<CreateForm>) -> Page {
    web.admin_post(&headers, &form.csrf)?;
    let policy = if form.policy == "auto-up-to" {
        Policy::parse(&format!("auto-up-to:{}", form.limit.trim()))?
    } else {
        Policy::parse(&form.policy)?
    };
    let now = web.now();
    let group = web.with(|s| s.create_group(&form.name, &form.description, policy, now))?;
    let notice = match web.node.as_ref().filter(|n| !n.group_cert.exists()) {
        Some(node) => match enroll_own_node(&web, node, &group.name, now) {
            Ok(()) => format!(
                "group created; this node is its first member (certificate in {}); start it with `ringlet up`",
                node.group_cert.display()
            ),
            Err(e) => format!("group created, but this node could not be enrolled: {}", e.message),
        },
        None => "group created".to_owned(),
    };
    Ok(back_to(&group.name, &notice))
}

/// Gives the administrator's node, which has no certificate yet, one of the new group.
fn enroll_own_node(web: &Web, node: &Config, group: &str, now: u64) -> Result<(), WebError> {
    let (key, _) = crate::identity::NodeKey::load_or_create(&node.key_file)
        .map_err(|e| WebError::internal(e.to_string()))?;
    let text = web.with(|s| s.enroll(group, &node.jid, &key.public_bytes(), now))?;
    crate::secure::admin::join(&text, &key.public_bytes(), &node.jid, &node.group_cert, now)
        .map_err(|e| WebError::internal(e.to_string()))?;
    Ok(())
}

#[derive(Deserialize)]
struct Notice {
    notice: Option<String>,
}

async fn group_page(
    State(web): State<Arc<Web>>,
    Path(group): Path<String>,
    Query(q): Query<Notice>,
    headers: HeaderMap,
) -> Page {
    let csrf = web.session(&headers);
    let admin = csrf.as_deref().map(|csrf| AdminView { csrf });
    let overview = web.with(|s| s.overview(&group))?;
    Ok(Html(pages::group(&overview, admin.as_ref(), q.notice.as_deref())).into_response())
}

async fn decide(
    State(web): State<Arc<Web>>,
    Path((group, id, decision)): Path<(String, i64, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Page {
    web.admin_post(&headers, &form.csrf)?;
    let now = web.now();
    let notice = match decision.as_str() {
        "approve" => {
            web.with(|s| s.approve(&group, id, now))?;
            format!("request #{id} approved")
        }
        "deny" => {
            web.with(|s| s.deny(&group, id, now))?;
            format!("request #{id} denied")
        }
        other => return Err(WebError::bad(format!("'{other}' is neither approve nor deny"))),
    };
    Ok(back_to(&group, &notice))
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    csrf: String,
    user: Option<String>,
    serial: Option<String>,
    node_key: Option<String>,
}

async fn revoke(
    State(web): State<Arc<Web>>,
    Path(group): Path<String>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Page {
    web.admin_post(&headers, &form.csrf)?;
    let target = revocation_target(&form)?;
    let now = web.now();
    let rev = web.with(|s| s.revoke(&group, target, now))?;
    let mut notice = "revoked".to_owned();
    if let Some(node) = web.node.as_ref().filter(|n| node_is_in(n, &rev.ca)) {
        notice = match super::publish(node, &rev).await {
            Ok(super::Published::ByNode { outcome }) => {
                format!("revoked; this node published it ({outcome})")
            }
            Ok(super::Published::ToFile { .. }) => {
                "revoked; this node is not running, it will publish it when it starts".into()
            }
            Err(e) => format!("revoked, but this node could not publish it: {e}"),
        };
    }
    Ok(back_to(&group, &notice))
}

/// Whether the administrator's node is a member of the group whose CA key is `ca`.
fn node_is_in(node: &Config, ca: &[u8; 32]) -> bool {
    files::read_cert(&node.group_cert).is_ok_and(|c| &c.ca == ca)
}

fn revocation_target(form: &RevokeForm) -> Result<Target, WebError> {
    let nonempty = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    match (
        nonempty(&form.user),
        nonempty(&form.serial),
        nonempty(&form.node_key),
    ) {
        (Some(user), None, None) => {
            let jid: ringlet_xmpp::BareJid = user
                .parse()
                .map_err(|_| WebError::bad(format!("'{user}' is not a bare JID")))?;
            Ok(Target::User(jid.to_string()))
        }
        (None, Some(serial), None) => u64::from_str_radix(&serial, 16)
            .map(Target::Serial)
            .map_err(|_| WebError::bad("serial: 16 hex digits".into())),
        (None, None, Some(key)) => {
            let mut k = [0u8; 32];
            hex::decode_to_slice(&key, &mut k)
                .map_err(|_| WebError::bad("node key: 64 hex digits".into()))?;
            Ok(Target::NodeKey(k))
        }
        _ => Err(WebError::bad("name exactly one of user, serial, node key".into())),
    }
}

async fn bundle(
    State(web): State<Arc<Web>>,
    Path((group, serial)): Path<(String, String)>,
    headers: HeaderMap,
) -> Page {
    if web.session(&headers).is_none() {
        return Err(WebError::forbidden(
            "only the administrator may download member bundles",
        ));
    }
    let serial =
        u64::from_str_radix(&serial, 16).map_err(|_| WebError::bad("serial: 16 hex digits".into()))?;
    let text = web.with(|s| s.bundle(&group, serial))?;
    let disposition = format!("attachment; filename=\"{group}-{serial:016x}.ringlet\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response())
}

/// The signed revocation list, one `ringlet-revocation …` line each: what a node's
/// `group.crl` holds, so a member can fetch it with curl over the VPN.
async fn crl(State(web): State<Arc<Web>>, Path(group): Path<String>) -> Page {
    let lines = web.with(|s| {
        let g = s.group(&group)?;
        Ok(s.store().revocations(g.id)?)
    })?;
    let body: String = lines.iter().map(|r| format!("{}\n", r.line)).collect();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// A member posts its current certificate (text form) and gets a renewed one.
async fn renew(State(web): State<Arc<Web>>, Path(group): Path<String>, body: String) -> Response {
    let now = web.now();
    match web.with(|s| s.renew(&group, &body, now)) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => (e.status, format!("{}\n", e.message)).into_response(),
    }
}

fn back_to(group: &str, notice: &str) -> Response {
    let query: String = url_encode(notice);
    Redirect::to(&format!("/groups/{group}?notice={query}")).into_response()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
