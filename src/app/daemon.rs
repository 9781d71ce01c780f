//! An application attached to a running `ringlet up` through its control socket
//! (`crate::control::attach`): requests go out as lines, and one reader task sorts what comes
//! back into answers (by request id) and events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::AppError;
use crate::control::attach::{self, WireEvent};
use crate::control::ControlError;
use crate::node::AppEvent;
use crate::NodeId;

/// How long the daemon may take to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

pub(super) struct Attached {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: mpsc::UnboundedReceiver<AppEvent>,
    reader: JoinHandle<()>,
}

impl Attached {
    /// Connects and attaches; returns the connection and the daemon's NodeId and JID.
    pub async fn connect(path: &Path) -> Result<(Self, NodeId, String), AppError> {
        let protocol = |reason: String| ControlError::Protocol {
            path: path.into(),
            reason,
        };
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| ControlError::NotRunning {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write_line(&mut write, &json!({"id": 0, "cmd": "attach"}))
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let mut first = String::new();
        tokio::time::timeout(ANSWER_TIMEOUT, read.read_line(&mut first))
            .await
            .map_err(|_| protocol(format!("no answer within {ANSWER_TIMEOUT:?}")))?
            .map_err(|e| protocol(e.to_string()))?;
        let answer: Value = serde_json::from_str(&first).map_err(|e| protocol(format!("bad answer: {e}")))?;
        if answer["ok"] != Value::Bool(true) {
            let why = answer["error"].as_str().unwrap_or("attach refused");
            return Err(ControlError::Refused(why.into()).into());
        }
        let node: NodeId = answer["result"]["node_id"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| protocol("attach answer without a node_id".into()))?;
        let jid = answer["result"]["jid"].as_str().unwrap_or_default().to_owned();
        let pending = Pending::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(read, pending.clone(), events_tx));
        let attached = Self {
            path: path.into(),
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            reader,
        };
        Ok((attached, node, jid))
    }

    pub async fn send(&self, to: NodeId, data: &[u8]) -> Result<(), AppError> {
        let args = json!({"node": to.to_string(), "value": attach::encode(data)});
        match self.request("send", args).await? {
            Ok(_) => Ok(()),
            Err(reason) => Err(AppError::Send { to, reason }),
        }
    }

    /// Sends a request and waits for its answer: `Ok(Err(…))` is the daemon's refusal.
    async fn request(&self, cmd: &str, mut args: Value) -> Result<Result<Value, String>, AppError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        args["id"] = id.into();
        args["cmd"] = cmd.into();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let written = write_line(&mut *self.writer.lock().await, &args).await;
        if written.is_err() {
            lock(&self.pending).remove(&id);
            return Err(AppError::Stopped);
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(AppError::Stopped),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ControlError::Protocol {
                    path: self.path.clone(),
                    reason: format!("no answer to {cmd} within {ANSWER_TIMEOUT:?}"),
                }
                .into())
            }
        }
    }

    pub async fn recv(&mut self) -> Option<AppEvent> {
        self.events.recv().await
    }

    pub fn close(self) {
        self.reader.abort();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Value, String>>>> {
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn write_line(write: &mut OwnedWriteHalf, value: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    write.write_all(&line).await
}

/// Sorts the daemon's lines into answers and events until the connection ends; then the
/// event stream ends and waiting requests fail.
async fn read_loop(
    mut read: BufReader<OwnedReadHalf>,
    pending: Pending,
    events: mpsc::UnboundedSender<AppEvent>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!("control socket: unreadable line from the daemon");
            continue;
        };
        if value.get("event").is_some() {
            match serde_json::from_value::<WireEvent>(value) {
                Ok(WireEvent::Lagged { missed }) => {
                    tracing::warn!(missed, "the application read too slowly; events were dropped")
                }
                Ok(wire) => match wire.to_app() {
                    Some(ev) => {
                        let _ = events.send(ev);
                    }
                    None => tracing::warn!(?wire, "control socket: malformed event"),
                },
                Err(e) => tracing::warn!(error = %e, "control socket: unknown event"),
            }
            continue;
        }
        let id = value["id"].as_u64().unwrap_or(0);
        let answer = if value["ok"] == Value::Bool(true) {
            Ok(value["result"].clone())
        } else {
            Err(value["error"].as_str().unwrap_or("refused").to_owned())
        };
        if let Some(tx) = lock(&pending).remove(&id) {
            let _ = tx.send(answer);
        }
    }
    lock(&pending).clear();
}
