//! The XMPP session: one task owns `tokio-xmpp`'s `StanzaStream` (never the split `Client`,
//! which loses wakeups) and moves stanzas between it and the node through bounded channels.
//!
//! - The first login is bounded by `first_login_timeout`; a wrong password, an untrusted
//!   certificate or a server without STARTTLS end it at once with a distinct [`LoginError`].
//! - Afterwards the stream reconnects by itself: attempts are spaced by a jittered exponential
//!   backoff from `backoff_min` to `backoff_max`; fatal errors stop the session with
//!   [`SessionEvent::Failed`] instead of retrying forever.
//! - [`SessionEvent::Online`] with `resumed: false` means a new session (XEP-0198 could not
//!   resume): presence and rendezvous state must be re-established by the caller.

use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_xmpp::stanzastream::{Connection, Event as StreamEvent, StanzaStream, StreamEvent as StreamState};

use crate::connect::{self, LoginConfig, LoginError};
use crate::{FullJid, Stanza};

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub login: LoginConfig,
    /// Bound on the first login, retries of transient errors included.
    pub first_login_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Depth of the outgoing and incoming stanza queues.
    pub queue_depth: usize,
    /// Seed for the backoff jitter.
    pub seed: u64,
}

impl SessionConfig {
    pub fn new(login: LoginConfig, seed: u64) -> Self {
        Self {
            login,
            first_login_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(4),
            queue_depth: 256,
            seed,
        }
    }
}

/// What the session reports.
#[derive(Debug)]
pub enum SessionEvent {
    /// Bound to `jid`; `resumed` means no state was lost.
    Online {
        jid: FullJid,
        resumed: bool,
    },
    /// The connection broke; reconnecting.
    Suspended,
    Stanza(Stanza),
    /// A reconnect attempt failed and will be retried after `retry_in`.
    Retrying {
        error: LoginError,
        retry_in: Duration,
    },
    /// The session stopped for good.
    Failed(LoginError),
}

/// What the reconnect task tells the session task.
#[derive(Debug)]
enum Report {
    Retrying(LoginError, Duration),
    Failed(LoginError),
}

enum Command {
    Send(Box<Stanza>),
    Close,
}

/// Handle to send stanzas from the node.
#[derive(Clone)]
pub struct SessionSender(mpsc::Sender<Command>);

/// A reserved place in the outgoing queue.
pub struct SendPermit<'a>(mpsc::Permit<'a, Command>);

impl SendPermit<'_> {
    pub fn send(self, stanza: Stanza) {
        self.0.send(Command::Send(Box::new(stanza)));
    }
}

impl SessionSender {
    /// Queues a stanza if there is room; gives it back otherwise.
    pub fn try_send(&self, stanza: Stanza) -> Result<(), Stanza> {
        self.0
            .try_send(Command::Send(Box::new(stanza)))
            .map_err(|e| match e.into_inner() {
                Command::Send(s) => *s,
                Command::Close => unreachable!("only stanzas are sent through try_send"),
            })
    }

    /// Waits for room in the outgoing queue; `None` once the session has ended.
    pub async fn reserve(&self) -> Option<SendPermit<'_>> {
        self.0.reserve().await.ok().map(SendPermit)
    }
}

/// A running session.
pub struct Session {
    jid: FullJid,
    events: mpsc::Receiver<SessionEvent>,
    sender: SessionSender,
    task: JoinHandle<()>,
}

impl Session {
    /// Logs in (bounded by `first_login_timeout`) and starts the session task.
    pub async fn connect(cfg: SessionConfig) -> Result<Session, LoginError> {
        let tls = connect::tls_config(cfg.login.ca_file.as_deref())?;
        let (report_tx, mut reports) = mpsc::channel(16);
        let reconnect_cfg = cfg.clone();
        let mut attempt_seed = cfg.seed;
        let connector = move |_: Option<String>, slot: oneshot::Sender<Connection>| {
            attempt_seed = attempt_seed.wrapping_add(1);
            tokio::spawn(reconnect(
                reconnect_cfg.clone(),
                tls.clone(),
                slot,
                report_tx.clone(),
                attempt_seed,
            ));
        };
        let mut stream = StanzaStream::new(Box::new(connector), cfg.queue_depth);
        let server = cfg.login.server_name();
        let deadline = tokio::time::sleep(cfg.first_login_timeout);
        tokio::pin!(deadline);
        let mut last_error = None;
        let jid = loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(StreamEvent::Stream(StreamState::Reset { bound_jid, .. })) => {
                        match bound_jid.try_into_full() {
                            Ok(jid) => break jid,
                            Err(bare) => return Err(LoginError::Protocol { server, reason: format!("server bound a bare JID {bare}") }),
                        }
                    }
                    Some(_) => {}
                    None => return Err(LoginError::Protocol { server, reason: "stream ended during login".into() }),
                },
                report = reports.recv() => match report {
                    Some(Report::Failed(e)) => return Err(e),
                    Some(Report::Retrying(e, _)) => last_error = Some(e),
                    None => {}
                },
                _ = &mut deadline => {
                    return Err(last_error.unwrap_or(LoginError::Timeout { server, secs: cfg.first_login_timeout.as_secs() }));
                }
            }
        };
        let (event_tx, events) = mpsc::channel(cfg.queue_depth);
        let (cmd_tx, commands) = mpsc::channel(cfg.queue_depth);
        let _ = event_tx.try_send(SessionEvent::Online {
            jid: jid.clone(),
            resumed: false,
        });
        let task = tokio::spawn(run(stream, jid.clone(), commands, reports, event_tx));
        Ok(Session {
            jid,
            events,
            sender: SessionSender(cmd_tx),
            task,
        })
    }

    /// The JID the first login was bound to.
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    pub fn sender(&self) -> SessionSender {
        self.sender.clone()
    }

    /// The next event; `None` once the session task has ended.
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }

    /// Sends `last` (e.g. unavailable presence), closes the stream cleanly and waits for the
    /// task to end, at most `grace`.
    pub async fn close(self, last: Option<Stanza>, grace: Duration) {
        let Session {
            events, sender, task, ..
        } = self;
        drop(events);
        let _ = tokio::time::timeout(grace, async {
            if let Some(stanza) = last {
                let _ = sender.0.send(Command::Send(Box::new(stanza))).await;
            }
            let _ = sender.0.send(Command::Close).await;
        })
        .await;
        let _ = tokio::time::timeout(grace, task).await;
    }
}

/// The session task: the single owner of the stanza stream.
async fn run(
    mut stream: StanzaStream,
    mut jid: FullJid,
    mut commands: mpsc::Receiver<Command>,
    mut reports: mpsc::Receiver<Report>,
    events: mpsc::Sender<SessionEvent>,
) {
    loop {
        let event = tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Send(stanza)) => {
                    // Waits only when tokio-xmpp's own queue is full (server not reading).
                    let _token = stream.send(stanza).await;
                    continue;
                }
                Some(Command::Close) | None => break,
            },
            ev = stream.next() => match ev {
                Some(StreamEvent::Stanza(s)) => SessionEvent::Stanza(s),
                Some(StreamEvent::Stream(StreamState::Suspended)) => SessionEvent::Suspended,
                Some(StreamEvent::Stream(StreamState::Resumed)) => SessionEvent::Online { jid: jid.clone(), resumed: true },
                Some(StreamEvent::Stream(StreamState::Reset { bound_jid, .. })) => {
                    if let Ok(full) = bound_jid.try_into_full() {
                        jid = full;
                    }
                    SessionEvent::Online { jid: jid.clone(), resumed: false }
                }
                None => return,
            },
            report = reports.recv() => match report {
                Some(Report::Retrying(error, retry_in)) => SessionEvent::Retrying { error, retry_in },
                Some(Report::Failed(error)) => {
                    let _ = events.send(SessionEvent::Failed(error)).await;
                    break;
                }
                None => continue,
            },
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.close()).await;
}

/// One reconnect: attempts spaced by jittered exponential backoff until a stream is up, a
/// fatal error is reported, or the stanza stream is gone.
async fn reconnect(
    cfg: SessionConfig,
    tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    mut slot: oneshot::Sender<Connection>,
    reports: mpsc::Sender<Report>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut delay = cfg.backoff_min;
    loop {
        let attempt = tokio::select! {
            result = connect::login(&cfg.login, &tls) => result,
            _ = slot.closed() => return,
        };
        match attempt {
            Ok(conn) => {
                let _ = slot.send(conn);
                return;
            }
            Err(error) if error.is_fatal() => {
                tracing::error!(%error, "XMPP login failed");
                let _ = reports.send(Report::Failed(error)).await;
                // Keep the slot open until the stream is dropped: closing it would make the
                // stanza stream treat the reconnector as broken.
                slot.closed().await;
                return;
            }
            Err(error) => {
                let jittered = delay.mul_f64(rng.random_range(0.8..1.2));
                tracing::debug!(%error, retry_in = ?jittered, "XMPP connection attempt failed");
                let _ = reports.try_send(Report::Retrying(error, jittered));
                tokio::select! {
                    _ = tokio::time::sleep(jittered) => {}
                    _ = slot.closed() => return,
                }
                delay = (delay * 2).min(cfg.backoff_max);
            }
        }
    }
}
