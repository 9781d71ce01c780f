//! The local control socket: a Unix socket (mode 0600) speaking newline-delimited JSON.
//!
//! Requests: `{"id":1,"cmd":"status"}`, `{"id":2,"cmd":"ping","node":"<40 hex>"}`,
//! `{"id":3,"cmd":"dht-put","key":"…","value":"…","lease_s":3600}` (lease optional),
//! `{"id":4,"cmd":"dht-get","key":"…"}` (result `{"values":["…"]}`) and
//! `{"id":5,"cmd":"dht-remove","key":"…","value":"…"}`; DHT values are UTF-8 text here.
//! `{"id":6,"cmd":"revoke","value":"ringlet-revocation …"}` publishes a revocation (result
//! `{"outcome":"added"|"known"}`).
//! `{"id":7,"cmd":"send","node":"<40 hex>","value":"<base64>"}` sends an application datagram;
//! `{"id":8,"cmd":"attach"}` turns the connection into an event stream ([`attach`]);
//! `{"id":9,"cmd":"shutdown"}` stops the daemon (`ringlet down`).
//! Response: `{"id":1,"ok":true,"result":{…}}` or
//! `{"id":1,"ok":false,"error":"…"}`. Lines are limited to 64 KiB, connections to 32 at a time,
//! and an idle connection is closed after 60 s.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinHandle;

use crate::node::{AppEvent, Controller};

pub mod attach;

pub use attach::Hooks;

const MAX_LINE: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 32;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A DHT get can take the ring's tries: up to 3 adaptive timeouts of at most 5 s each.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another ringlet node is already running with control socket {0}")]
    InUse(PathBuf),
    #[error("cannot create control socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("no ringlet node is running (control socket {path}: {reason})")]
    NotRunning { path: PathBuf, reason: String },
    #[error("control socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
    #[error("the node refused the request: {0}")]
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    cmd: String,
    #[serde(flatten)]
    args: Args,
}

/// What a command is about, besides its name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Args {
    /// The target of `ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// DHT key name and value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_s: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    id: u64,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The listening control socket; the socket file is removed when it is dropped.
pub struct ControlServer {
    path: PathBuf,
    listener: Option<UnixListener>,
    task: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Claims `path` (mode 0600). A stale socket file (nobody listening) is replaced; a live one
    /// means another node runs there, which is an error. Call this before logging in.
    pub async fn bind(path: &Path) -> Result<Self, ControlError> {
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse(path.into()));
            }
            let _ = fs::remove_file(path);
        }
        let bind_err = |source| ControlError::Bind {
            path: path.into(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(Self {
            path: path.into(),
            listener: Some(listener),
            task: None,
        })
    }

    /// Starts answering requests for the node behind `controller`.
    pub fn serve(&mut self, controller: Controller, hooks: Hooks) {
        if let Some(listener) = self.listener.take() {
            self.task = Some(tokio::spawn(accept_loop(listener, controller, hooks)));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        let _ = fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, controller: Controller, hooks: Hooks) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("control socket: too many connections; closing one");
            continue;
        };
        let controller = controller.clone();
        let hooks = hooks.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(stream, controller, hooks).await {
                tracing::debug!(error = %e, "control connection closed");
            }
        });
    }
}

async fn serve_connection(stream: UnixStream, controller: Controller, hooks: Hooks) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(u64::MAX);
    let mut line = String::new();
    // Set once the connection is attached: events are written while waiting for requests.
    let mut events: Option<broadcast::Receiver<AppEvent>> = None;
    loop {
        line.clear();
        reader.set_limit(MAX_LINE as u64 + 1);
        let read = reader.read_line(&mut line);
        let n = match &mut events {
            None => match tokio::time::timeout(IDLE_TIMEOUT, read).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
            Some(events) => {
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        r = &mut read => break r?,
                        ev = events.recv() => {
                            let wire = match ev {
                                Ok(ev) => attach::WireEvent::from(&ev),
                                Err(broadcast::error::RecvError::Lagged(missed)) => {
                                    attach::WireEvent::Lagged { missed }
                                }
                                Err(broadcast::error::RecvError::Closed) => return Ok(()),
                            };
                            write_line(&mut write, &wire).await?;
                        }
                    }
                }
            }
        };
        if n == 0 {
            return Ok(());
        }
        if n > MAX_LINE {
            let resp = Response {
                id: 0,
                ok: false,
                result: None,
                error: Some("request line too long".into()),
            };
            write_line(&mut write, &resp).await?;
            return Ok(());
        }
        match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => {
                let resp = Response {
                    id: 0,
                    ok: false,
                    result: None,
                    error: Some(format!("bad request: {e}")),
                };
                write_line(&mut write, &resp).await?;
            }
            Ok(req) if req.cmd == "attach" => {
                let (resp, online) = attach(&req, &controller, &hooks, &mut events).await;
                write_line(&mut write, &resp).await?;
                for ev in online {
                    write_line(&mut write, &attach::WireEvent::from(&ev)).await?;
                }
            }
            Ok(req) => write_line(&mut write, &handle(req, &controller, &hooks).await).await?,
        }
    }
}

/// Subscribes the connection to the node's events; returns the answer and a `PeerUp` for
/// every member already online.
async fn attach(
    req: &Request,
    controller: &Controller,
    hooks: &Hooks,
    events: &mut Option<broadcast::Receiver<AppEvent>>,
) -> (Response, Vec<AppEvent>) {
    let fail = |error: &str| Response {
        id: req.id,
        ok: false,
        result: None,
        error: Some(error.into()),
    };
    if events.is_some() {
        return (fail("already attached"), Vec::new());
    }
    let Some(sender) = &hooks.events else {
        return (fail("this node does not serve attached applications"), Vec::new());
    };
    // Subscribed before the snapshot: a member that comes up in between is announced twice
    // rather than never.
    *events = Some(sender.subscribe());
    let Some(status) = controller.status().await else {
        return (fail("the node is stopping"), Vec::new());
    };
    let online = status
        .peers
        .iter()
        .filter_map(|p| {
            Some(AppEvent::PeerUp {
                node: p.node_id.parse().ok()?,
                jid: p.jid.clone(),
            })
        })
        .collect();
    let resp = Response {
        id: req.id,
        ok: true,
        result: Some(serde_json::json!({ "node_id": status.node_id, "jid": status.jid })),
        error: None,
    };
    (resp, online)
}

async fn write_line(write: &mut (impl AsyncWriteExt + Unpin), line: &impl Serialize) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

async fn handle(req: Request, controller: &Controller, hooks: &Hooks) -> Response {
    let fail = |error: String| Response {
        id: req.id,
        ok: false,
        result: None,
        error: Some(error),
    };
    let done = |result: Value| Response {
        id: req.id,
        ok: true,
        result: Some(result),
        error: None,
    };
    let serialized = |result: Result<Value, serde_json::Error>| match result {
        Ok(v) => done(v),
        Err(e) => fail(e.to_string()),
    };
    let key = req.args.key.clone().unwrap_or_default();
    let value = req.args.value.clone().unwrap_or_default().into_bytes();
    let node = || {
        req.args
            .node
            .as_deref()
            .unwrap_or_default()
            .parse::<crate::NodeId>()
    };
    match req.cmd.as_str() {
        "dht-put" | "dht-remove" | "dht-get" if key.is_empty() => fail("a DHT command needs a key".into()),
        "dht-put" | "dht-remove" if req.args.value.is_none() => fail(format!("{} needs a value", req.cmd)),
        "dht-put" => {
            let lease = req.args.lease_s.unwrap_or(crate::node::dht::DEFAULT_LEASE_S);
            match controller.dht_put(&key, value, Some(lease)).await {
                Ok(()) => done(serde_json::json!({ "lease_s": lease })),
                Err(e) => fail(e.to_string()),
            }
        }
        "dht-remove" => match controller.dht_put(&key, value, None).await {
            Ok(()) => done(serde_json::json!({})),
            Err(e) => fail(e.to_string()),
        },
        "dht-get" => match controller.dht_get(&key).await {
            Ok(values) => {
                let values: Vec<String> = values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                done(serde_json::json!({ "values": values }))
            }
            Err(e) => fail(e.to_string()),
        },
        "revoke" => match crate::secure::revocation::Revocation::from_line(
            &req.args.value.clone().unwrap_or_default(),
        ) {
            Err(e) => fail(format!("revoke needs a revocation line: {e}")),
            Ok(rev) => match controller.revoke(rev).await {
                Ok(outcome) => {
                    let outcome = match outcome {
                        crate::link::Revoked::Added => "added",
                        _ => "known",
                    };
                    done(serde_json::json!({ "outcome": outcome }))
                }
                Err(e) => fail(e),
            },
        },
        "status" => match controller.status().await {
            Some(status) => serialized(serde_json::to_value(status)),
            None => fail("the node is stopping".into()),
        },
        "ping" => match node() {
            Err(e) => fail(e.to_string()),
            Ok(node) => match controller.ping(node).await {
                Ok(reply) => serialized(serde_json::to_value(reply)),
                Err(e) => fail(e.to_string()),
            },
        },
        "send" => {
            let to = node();
            let data = req.args.value.as_deref().and_then(attach::decode);
            match (to, data) {
                (Err(e), _) => fail(e.to_string()),
                (_, None) => fail("send needs a base64 value".into()),
                (Ok(to), Some(data)) => match controller.send(to, data).await {
                    Ok(()) => done(serde_json::json!({})),
                    Err(e) => fail(e.to_string()),
                },
            }
        }
        "shutdown" => match &hooks.stop {
            Some(stop) => {
                let _ = stop.try_send(());
                done(serde_json::json!({}))
            }
            None => fail("this node cannot be stopped from the control socket".into()),
        },
        other => fail(format!("unknown command '{other}'")),
    }
}

/// Sends one command to the node behind `path` and returns its result.
pub async fn request(path: &Path, cmd: &str) -> Result<Value, ControlError> {
    request_for(path, cmd, None).await
}

/// Sends a command about one node (`ping`) and returns its result.
pub async fn request_for(path: &Path, cmd: &str, node: Option<&str>) -> Result<Value, ControlError> {
    let args = Args {
        node: node.map(Into::into),
        ..Args::default()
    };
    request_with(path, cmd, args).await
}

/// Sends a command with its arguments and returns its result. A DHT get may take a few
/// seconds when replicas are slow (the ring retries silent ones).
pub async fn request_with(path: &Path, cmd: &str, args: Args) -> Result<Value, ControlError> {
    let not_running = |reason: String| ControlError::NotRunning {
        path: path.into(),
        reason,
    };
    let protocol = |reason: String| ControlError::Protocol {
        path: path.into(),
        reason,
    };
    let exchange = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| not_running(e.to_string()))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(&Request {
            id: 1,
            cmd: cmd.into(),
            args,
        })
        .map_err(|e| protocol(e.to_string()))?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let mut reply = String::new();
        BufReader::new(read)
            .read_line(&mut reply)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let resp: Response =
            serde_json::from_str(&reply).map_err(|e| protocol(format!("bad response: {e}")))?;
        match (resp.ok, resp.result, resp.error) {
            (true, Some(result), _) => Ok(result),
            (_, _, Some(error)) => Err(ControlError::Refused(error)),
            _ => Err(protocol("empty response".into())),
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(protocol(format!("no answer within {CLIENT_TIMEOUT:?}"))))
}
