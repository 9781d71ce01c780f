//! Connecting and logging in to an XMPP server, with errors a person can act on.
//!
//! ringlet does its own connection setup instead of `tokio-xmpp`'s connectors so that it can
//! (a) trust an extra CA file next to the system roots, (b) set `TCP_NODELAY` (removes 40 ms
//! Nagle stalls on small stanzas), and (c) tell a wrong password, an unreachable server and an
//! untrusted certificate apart. The authenticated stream is handed to `tokio-xmpp`'s
//! `StanzaStream`, which binds the resource and keeps the session alive.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::stanzastream::Connection;
pub use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::xmlstream::{initiate_stream, ReadError, StreamHeader, XmppStreamElement};
use xmpp_parsers::starttls;

use crate::{FullJid, Jid};

/// How the client stream is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP, then STARTTLS; refuses servers that do not offer it (the default).
    StartTls,
    /// TLS from the first byte (XEP-0368, usually port 5223).
    Direct,
    /// No encryption at all. Only for tests on loopback.
    Plain,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::StartTls => "starttls",
            TlsMode::Direct => "direct",
            TlsMode::Plain => "plain",
        })
    }
}

/// Everything needed to log in.
#[derive(Clone)]
pub struct LoginConfig {
    /// The account with the resource to request.
    pub jid: FullJid,
    pub password: String,
    /// `host:port`; `None` looks up the JID domain's SRV record.
    pub server: Option<String>,
    pub tls: TlsMode,
    /// Extra trust anchor (PEM) besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Bound on one connection attempt (TCP, TLS, SASL, stream restart).
    pub attempt_timeout: Duration,
    pub timeouts: Timeouts,
}

impl fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginConfig")
            .field("jid", &self.jid)
            .field("server", &self.server)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl LoginConfig {
    /// The server as shown in messages.
    pub fn server_name(&self) -> String {
        self.server
            .clone()
            .unwrap_or_else(|| format!("{} (SRV)", self.jid.domain()))
    }
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("login refused for {jid}: wrong password or unknown account (server said {condition})")]
    Auth { jid: String, condition: String },
    #[error("cannot reach XMPP server {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("TLS certificate of {server} is not trusted: {reason} (set xmpp.ca_file to trust a private CA)")]
    Certificate { server: String, reason: String },
    #[error("TLS handshake with {server} failed: {reason}")]
    Tls { server: String, reason: String },
    #[error("{server} does not offer STARTTLS; refusing to log in without encryption")]
    NoStartTls { server: String },
    #[error("login to {server} did not finish within {secs} s")]
    Timeout { server: String, secs: u64 },
    #[error("XMPP stream with {server} failed: {reason}")]
    Protocol { server: String, reason: String },
    #[error("cannot use CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

impl LoginError {
    /// Errors that retrying cannot fix: a wrong password, an untrusted certificate, a server
    /// without STARTTLS, an unusable CA file.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            LoginError::Auth { .. }
                | LoginError::Certificate { .. }
                | LoginError::NoStartTls { .. }
                | LoginError::CaFile { .. }
        )
    }
}

/// Builds the TLS client configuration: system roots plus the optional CA file.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, LoginError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let ca_error = |reason: String| LoginError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ca_error(format!("not a PEM certificate file ({e})")))?;
        if certs.is_empty() {
            return Err(ca_error("no certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LoginError::Tls {
            server: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS configuration a login needs: `None` for plaintext (loading the system trust store
/// costs ~3.5 ms, a third of a plaintext login).
pub fn tls_config_for(cfg: &LoginConfig) -> Result<Option<Arc<ClientConfig>>, LoginError> {
    match cfg.tls {
        TlsMode::Plain => Ok(None),
        TlsMode::StartTls | TlsMode::Direct => tls_config(cfg.ca_file.as_deref()).map(Some),
    }
}

/// Connects, secures and authenticates one stream, bounded by `attempt_timeout`. `tls` comes
/// from [`tls_config_for`].
pub async fn login(cfg: &LoginConfig, tls: Option<&Arc<ClientConfig>>) -> Result<Connection, LoginError> {
    let server = cfg.server_name();
    match tokio::time::timeout(cfg.attempt_timeout, login_unbounded(cfg, tls, &server)).await {
        Ok(result) => result,
        Err(_) => Err(LoginError::Timeout {
            server,
            secs: cfg.attempt_timeout.as_secs().max(1),
        }),
    }
}

async fn login_unbounded(
    cfg: &LoginConfig,
    tls: Option<&Arc<ClientConfig>>,
    server: &str,
) -> Result<Connection, LoginError> {
    let tcp = connect_tcp(cfg, server).await?;
    let domain = cfg.jid.domain().as_str().to_owned();
    let tls = match (cfg.tls, tls) {
        (TlsMode::Plain, _) => return authenticate(BufStream::new(tcp), cfg, server).await,
        (_, Some(tls)) => tls,
        (_, None) => {
            let reason = "no TLS configuration".to_owned();
            return Err(LoginError::Tls {
                server: server.to_owned(),
                reason,
            });
        }
    };
    match cfg.tls {
        TlsMode::Plain => unreachable!("handled above"),
        TlsMode::Direct => {
            let stream = handshake(tcp, tls, &domain, server).await?;
            authenticate(BufStream::new(stream), cfg, server).await
        }
        TlsMode::StartTls => {
            let tcp = starttls(tcp, cfg, server).await?;
            let stream = handshake(tcp, tls, &domain, server).await?;
            authenticate(BufStream::new(stream), cfg, server).await
        }
    }
}

async fn connect_tcp(cfg: &LoginConfig, server: &str) -> Result<TcpStream, LoginError> {
    let domain = cfg.jid.domain().as_str();
    let dns = match &cfg.server {
        Some(hostport) => match hostport.parse::<std::net::SocketAddr>() {
            Ok(_) => DnsConfig::addr(hostport),
            Err(_) => {
                let (host, port) = hostport.rsplit_once(':').ok_or_else(|| LoginError::Unreachable {
                    server: server.to_owned(),
                    reason: "server must be host:port".into(),
                })?;
                let port = port.parse().map_err(|_| LoginError::Unreachable {
                    server: server.to_owned(),
                    reason: format!("bad port '{port}'"),
                })?;
                DnsConfig::no_srv(host, port)
            }
        },
        None if cfg.tls == TlsMode::Direct => DnsConfig::srv_xmpps(domain),
        None => DnsConfig::srv_default_client(domain),
    };
    let tcp = dns.resolve().await.map_err(|e| LoginError::Unreachable {
        server: server.to_owned(),
        reason: e.to_string(),
    })?;
    // Small stanzas (acks, presence) must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

fn header(domain: &str) -> StreamHeader<'_> {
    StreamHeader {
        to: Some(Cow::Borrowed(domain)),
        from: None,
        id: None,
    }
}

fn protocol(server: &str, e: impl fmt::Display) -> LoginError {
    LoginError::Protocol {
        server: server.to_owned(),
        reason: e.to_string(),
    }
}

/// Negotiates STARTTLS on a fresh stream and returns the TCP stream ready for the handshake.
async fn starttls(tcp: TcpStream, cfg: &LoginConfig, server: &str) -> Result<TcpStream, LoginError> {
    let domain = cfg.jid.domain().as_str();
    let pending = initiate_stream(
        BufStream::new(tcp),
        xmpp_parsers::ns::JABBER_CLIENT,
        header(domain),
        cfg.timeouts,
    )
    .await
    .map_err(|e| protocol(server, e))?;
    let (features, mut stream) = pending
        .recv_features::<tokio_xmpp::xmlstream::FallibleStreamElement>()
        .await
        .map_err(|e| protocol(server, format!("{e:?}")))?;
    if !features.can_starttls() {
        return Err(LoginError::NoStartTls {
            server: server.to_owned(),
        });
    }
    stream
        .send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
            starttls::Request,
        )))
        .await
        .map_err(|e| protocol(server, e))?;
    loop {
        match stream.next().await.map(|v| v.and_then(|v| v.into_read_error())) {
            Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => break,
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(e)) => return Err(protocol(server, format!("during STARTTLS: {e:?}"))),
            None => return Err(protocol(server, "stream closed during STARTTLS")),
        }
    }
    Ok(stream.into_inner().into_inner())
}

async fn handshake(
    tcp: TcpStream,
    tls: &Arc<ClientConfig>,
    domain: &str,
    server: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, LoginError> {
    let name = ServerName::try_from(domain.to_owned()).map_err(|e| LoginError::Tls {
        server: server.to_owned(),
        reason: e.to_string(),
    })?;
    TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| classify_tls(server, e))
}

fn classify_tls(server: &str, e: io::Error) -> LoginError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(reason)) => LoginError::Certificate {
            server: server.to_owned(),
            reason: format!("{reason:?}"),
        },
        Some(other) => LoginError::Tls {
            server: server.to_owned(),
            reason: other.to_string(),
        },
        None => LoginError::Tls {
            server: server.to_owned(),
            reason: e.to_string(),
        },
    }
}

/// SASL authentication and the stream restart after it.
async fn authenticate<Io>(io: Io, cfg: &LoginConfig, server: &str) -> Result<Connection, LoginError>
where
    Io: AsyncBufRead + AsyncWrite + Unpin + Send + 'static,
{
    let domain = cfg.jid.domain().as_str();
    let pending = initiate_stream(io, xmpp_parsers::ns::JABBER_CLIENT, header(domain), cfg.timeouts)
        .await
        .map_err(|e| protocol(server, e))?;
    let (features, stream) = pending
        .recv_features()
        .await
        .map_err(|e| protocol(server, format!("{e:?}")))?;
    let username = cfg.jid.node().map(|n| n.as_str().to_owned()).unwrap_or_default();
    let creds = sasl::common::Credentials::default()
        .with_username(username)
        .with_password(cfg.password.clone())
        .with_channel_binding(sasl::common::ChannelBinding::None);
    let restarted = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
        .await
        .map_err(|e| match e {
            tokio_xmpp::Error::Auth(tokio_xmpp::error::AuthError::Fail(condition)) => LoginError::Auth {
                jid: cfg.jid.to_bare().to_string(),
                condition: format!("{condition:?}"),
            },
            other => protocol(server, other),
        })?;
    let pending = restarted
        .send_header(header(domain))
        .await
        .map_err(|e| protocol(server, e))?;
    let (mut features, stream) = pending
        .recv_features()
        .await
        .map_err(|e| protocol(server, format!("{e:?}")))?;
    // XEP-0198 is hidden from tokio-xmpp: when resumption fails, Prosody 0.12 answers
    // `<failed/>` without the optional `h` attribute, xmpp-parsers 0.23 rejects that, and
    // tokio-xmpp then retries the same resumption forever. Every reconnect is therefore a
    // fresh session, which the node handles by re-announcing presence and resending relay data.
    features.stream_management = None;
    let identity: Jid = cfg.jid.clone().into();
    Ok(Connection {
        stream: stream.box_stream(),
        features,
        identity,
    })
}
