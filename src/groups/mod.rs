//! The group service: group management for people, run by an administrator next to their own
//! node (`ringlet group serve`).
//!
//! - [`store`]: the SQLite file (groups with their CA keys, requests, certificates,
//!   revocations, admin sessions), refused when foreign or damaged;
//! - [`service`]: what the service does, whichever door a request came through;
//! - [`web`] and [`pages`]: the HTTP front (admin login, CSRF, server-rendered pages);
//! - [`publish`]: hands revocations to the administrator's node, which spreads them through
//!   the ring (broadcast + DHT + CRL).
//!
//! [`serve`] binds localhost at once and the node's VPN address as soon as the node reports
//! one, so members reach the pages over the overlay and nobody needs a public web server.

pub mod join;
pub mod pages;
mod publish;
pub mod service;
pub mod store;
pub mod web;
pub mod xmpp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use publish::{publish, PublishError, Published};

use crate::config::Config;

/// How often the VPN address is asked of the node until it has one.
const VPN_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub db: PathBuf,
    pub port: u16,
    /// The administrator's node: its VPN address is bound, revocations go to it.
    pub node: Option<Config>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{}", .0.message)]
    Web(web::WebError),
    #[error("node key: {0}")]
    Key(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where the service listens and the secret to show when the database is new.
pub struct Started {
    pub local: SocketAddr,
    pub first_secret: Option<String>,
    pub secret_file: PathBuf,
    pub web: Arc<web::Web>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Started {
    /// Runs until `shutdown` resolves, then stops serving.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens the database and starts serving (within a tokio runtime): HTTP on localhost and,
/// with a node, on its VPN address, and join requests over XMPP at the node's account.
pub async fn serve(
    opts: ServeOptions,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
) -> Result<Started, ServeError> {
    let store = store::Store::open(&opts.db)?;
    let secret_file = opts.db.with_file_name("groups-admin.secret");
    let (web, first_secret) = web::Web::new(
        service::Service::new(store),
        &secret_file,
        opts.node.clone(),
        clock,
    )
    .map_err(ServeError::Web)?;
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), opts.port);
    let listener = tokio::net::TcpListener::bind(local)
        .await
        .map_err(|source| ServeError::Bind { addr: local, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr: local, source })?;
    let app = web::router(Arc::clone(&web));
    let mut tasks = vec![];
    if let Some(node) = opts.node {
        let key = crate::identity::NodeKey::load_or_create(&node.key_file)
            .map_err(|e| ServeError::Key(e.to_string()))?
            .0;
        tasks.push(tokio::spawn(xmpp::serve(node.clone(), key, Arc::clone(&web))));
        tasks.push(tokio::spawn(serve_on_vpn(node, local.port(), app.clone())));
    }
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "group service stopped");
        }
    }));
    Ok(Started {
        local,
        first_secret,
        secret_file,
        web,
        tasks,
    })
}

/// Binds the node's VPN address once the node reports one, and serves there too.
async fn serve_on_vpn(node: Config, port: u16, app: axum::Router) {
    loop {
        if let Some(ip) = vpn_address(&node).await {
            let addr = SocketAddr::new(IpAddr::V4(ip), port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%addr, "group service on the VPN address");
                    eprintln!("group service also on http://{addr}/ (the VPN address)");
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::warn!(error = %e, "group service on the VPN stopped");
                    }
                    return;
                }
                Err(e) => tracing::debug!(%addr, error = %e, "VPN address not bindable yet"),
            }
        }
        tokio::time::sleep(VPN_POLL).await;
    }
}

async fn vpn_address(node: &Config) -> Option<Ipv4Addr> {
    let status = crate::control::request(&node.control_socket, "status")
        .await
        .ok()?;
    let cidr = status["vpn"]["address"].as_str()?;
    cidr.split('/').next()?.parse().ok()
}

/// Compares secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
