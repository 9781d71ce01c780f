//! The XMPP session: one task owns `tokio-xmpp`'s `StanzaStream` (never the split `Client`,
//! which loses wakeups) and moves stanzas between it and the node through bounded channels.
//!
//! - [`Session::connect`] returns once the first session is bound ([`Session::jid`]); it is
//!   bounded by `first_login_timeout`, and a wrong password, an untrusted certificate or a
//!   server without STARTTLS end it at once with a distinct [`LoginError`].
//! - Afterwards the stream reconnects by itself and reports every new session as
//!   [`SessionEvent::Online`]; presence and rendezvous state must then be re-established.
//!   Stream management is not used (see [`crate::connect`]), so every reconnect is a new
//!   session. Fatal errors stop the session with [`SessionEvent::Failed`].
//! - Attempts are spaced by a jittered exponential backoff from `backoff_min` to
//!   `backoff_max`. The backoff outlives single reconnects: a stream that dies within
//!   `stable_after` of being established makes the next attempt wait, so no failure mode can
//!   spin in a hot loop.
#![allow(clippy::disallowed_methods)] // I/O runtime: reads the clock for the backoff

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ClientConfig;
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
    /// A connection that lived this long resets the backoff.
    pub stable_after: Duration,
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
            stable_after: Duration::from_secs(10),
            queue_depth: 256,
            seed,
        }
    }
}

/// What the session reports.
#[derive(Debug)]
pub enum SessionEvent {
    /// A new session (after a reconnect) is bound to `jid`.
    Online {
        jid: FullJid,
    },
    /// The connection broke; reconnecting.
    Suspended,
    Stanza(Box<Stanza>),
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
    #[allow(clippy::result_large_err)] // handing the stanza back by value keeps backlogs simple
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
        let tls = connect::tls_config_for(&cfg.login)?;
        let (report_tx, mut reports) = mpsc::channel(16);
        let backoff = Arc::new(Mutex::new(Backoff::new(cfg.seed)));
        let reconnect_cfg = cfg.clone();
        let connector = move |_: Option<String>, slot: oneshot::Sender<Connection>| {
            let job = reconnect(
                reconnect_cfg.clone(),
                tls.clone(),
                slot,
                report_tx.clone(),
                backoff.clone(),
            );
            tokio::spawn(job);
        };
        let mut stream = StanzaStream::new(Box::new(connector), cfg.queue_depth);
        let server = cfg.login.server_name();
        let deadline = tokio::time::sleep(cfg.first_login_timeout);
        tokio::pin!(deadline);
        let mut last_error = None;
        let jid = loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(StreamEvent::Stream(StreamState::Reset { bound_jid, .. })) => match bound_jid.try_into_full() {
                        Ok(jid) => break jid,
                        Err(bare) => {
                            let reason = format!("server bound a bare JID {bare}");
                            return Err(LoginError::Protocol { server, reason });
                        }
                    },
                    Some(_) => {}
                    None => {
                        let reason = "stream ended during login".into();
                        return Err(LoginError::Protocol { server, reason });
                    }
                },
                report = reports.recv() => match report {
                    Some(Report::Failed(e)) => return Err(e),
                    Some(Report::Retrying(e, _)) => last_error = Some(e),
                    None => {}
                },
                _ = &mut deadline => {
                    let secs = cfg.first_login_timeout.as_secs();
                    return Err(last_error.unwrap_or(LoginError::Timeout { server, secs }));
                }
            }
        };
        let (event_tx, events) = mpsc::channel(cfg.queue_depth);
        let (cmd_tx, commands) = mpsc::channel(cfg.queue_depth);
        let task = tokio::spawn(run(stream, commands, reports, event_tx));
        Ok(Session {
            jid,
            events,
            sender: SessionSender(cmd_tx),
            task,
        })
    }

    /// The JID the first session was bound to.
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
    /// task to end, at most `grace` for each step.
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
                Some(StreamEvent::Stanza(s)) => SessionEvent::Stanza(Box::new(s)),
                Some(StreamEvent::Stream(StreamState::Suspended)) => SessionEvent::Suspended,
                Some(StreamEvent::Stream(StreamState::Reset { bound_jid, .. })) => match bound_jid.try_into_full() {
                    Ok(jid) => SessionEvent::Online { jid },
                    Err(bare) => {
                        tracing::error!("the server bound a bare JID, not a resource; ignoring this session");
                        tracing::debug!(%bare, "bound bare JID");
                        continue;
                    }
                },
                // Never happens without stream management, which is not negotiated.
                Some(StreamEvent::Stream(StreamState::Resumed)) => continue,
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

/// Backoff shared by all reconnects of one session.
struct Backoff {
    rng: StdRng,
    /// Wait before the next attempt (zero: attempt at once).
    delay: Duration,
    /// When the current connection was established.
    connected_at: Option<Instant>,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            delay: Duration::ZERO,
            connected_at: None,
        }
    }

    /// The wait before the first attempt of a reconnect: none after a stable connection (and
    /// before the very first one), the growing backoff after one that died young.
    fn on_disconnect(&mut self, cfg: &SessionConfig) -> Duration {
        let young = self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() < cfg.stable_after);
        if young {
            self.next(cfg)
        } else {
            self.delay = Duration::ZERO;
            Duration::ZERO
        }
    }

    /// Doubles the delay (within `backoff_min..=backoff_max`) and returns it jittered ±20 %.
    fn next(&mut self, cfg: &SessionConfig) -> Duration {
        self.delay = (self.delay * 2).clamp(cfg.backoff_min, cfg.backoff_max);
        self.delay.mul_f64(self.rng.random_range(0.8..1.2))
    }
}

/// One reconnect: attempts spaced by the backoff until a stream is up, a fatal error is
/// reported, or the stanza stream is gone.
async fn reconnect(
    cfg: SessionConfig,
    tls: Option<Arc<ClientConfig>>,
    mut slot: oneshot::Sender<Connection>,
    reports: mpsc::Sender<Report>,
    backoff: Arc<Mutex<Backoff>>,
) {
    // The lock is only held for arithmetic, never across an await.
    let lock = || backoff.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut wait = lock().on_disconnect(&cfg);
    loop {
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = slot.closed() => return,
            }
        }
        let attempt = tokio::select! {
            result = connect::login(&cfg.login, tls.as_ref()) => result,
            _ = slot.closed() => return,
        };
        match attempt {
            Ok(conn) => {
                lock().connected_at = Some(Instant::now());
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
                wait = lock().next(&cfg);
                tracing::debug!(%error, retry_in = ?wait, "XMPP connection attempt failed");
                let _ = reports.try_send(Report::Retrying(error, wait));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{Timeouts, TlsMode};

    fn cfg() -> SessionConfig {
        let login = LoginConfig {
            jid: FullJid::new("a@b.test/r").unwrap(),
            password: "p".into(),
            server: None,
            tls: TlsMode::Plain,
            ca_file: None,
            attempt_timeout: Duration::from_secs(1),
            timeouts: Timeouts::tight(),
        };
        SessionConfig::new(login, 1)
    }

    #[test]
    fn failed_attempts_back_off_exponentially_within_bounds() {
        let cfg = cfg();
        let mut b = Backoff::new(1);
        assert_eq!(
            b.on_disconnect(&cfg),
            Duration::ZERO,
            "first attempt is immediate"
        );
        let waits: Vec<Duration> = (0..8).map(|_| b.next(&cfg)).collect();
        assert!(waits[0] >= cfg.backoff_min.mul_f64(0.8) && waits[0] <= cfg.backoff_min.mul_f64(1.2));
        assert!(waits[2] > waits[0]);
        assert!(waits.iter().all(|w| *w <= cfg.backoff_max.mul_f64(1.2)));
    }

    #[test]
    fn a_connection_that_dies_young_does_not_reconnect_at_once() {
        let cfg = cfg();
        let mut b = Backoff::new(1);
        b.connected_at = Some(Instant::now());
        let first = b.on_disconnect(&cfg);
        assert!(first >= cfg.backoff_min.mul_f64(0.8), "waited {first:?}");
        b.connected_at = Some(Instant::now());
        assert!(
            b.on_disconnect(&cfg) > first,
            "keeps growing while connections die young"
        );
        b.connected_at = Some(Instant::now() - cfg.stable_after);
        assert_eq!(
            b.on_disconnect(&cfg),
            Duration::ZERO,
            "a stable connection resets the backoff"
        );
    }
}
