//! The WebSocket connection to Crown: connect with the bearer token, perform the handshake
//! within the configured timeout (retrying with backoff), then — during a boot — stream
//! `status` messages and pass on what Crown sends, reconnecting when the connection drops.
//!
//! Nothing Crown does can crash razar or hold it past the timeout: every wait has a deadline,
//! frames over 1 MiB are refused by the WebSocket layer, and frames that are not valid
//! messages are logged and skipped. The token is only ever placed in the `Authorization`
//! header: it is never formatted into a message, a log line or an error. This module does no
//! file I/O; callers record the exchanges it reports through `state`.

use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Brief, HandshakeAck, Incoming, MAX_FRAME_BYTES, Outgoing};
use crate::exec::{Event, EventKind, Sink};
use crate::plan::suggest::Suggestion;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// First pause between connection attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts during a boot.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Status messages queued for the link before new ones are dropped (the boot never waits).
pub const STATUS_QUEUE: usize = 1024;
/// What Crown sent, queued for the caller.
const NOTICE_QUEUE: usize = 256;

/// A bearer token. Formatting it never shows its value.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Everything needed to reach Crown, resolved from the `crown:` config section, the command
/// line and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    token: Option<Token>,
    /// Budget for the whole handshake, retries included, and for each later exchange.
    pub timeout: Duration,
    /// Attempts after the first one.
    pub retries: u32,
    pub required: bool,
    /// Set when `token_env` names a variable that is unset or empty.
    pub token_missing: Option<String>,
}

/// Why the link settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("no Crown URL: set `crown.url` in the config, CROWN_WS_URL, or pass --crown URL")]
    NoUrl,
    #[error("Crown URL `{url}` is not a WebSocket URL: {why}")]
    BadUrl { url: String, why: String },
    #[error("the token in `{0}` contains characters an HTTP header cannot carry")]
    BadToken(String),
}

impl Settings {
    /// Resolves the settings: `url` (from `--crown`) wins over the config's `url`, which wins
    /// over `CROWN_WS_URL`. Without a config section the defaults apply (5 s, 3 retries,
    /// not required).
    pub fn resolve(
        crown: Option<&crate::config::Crown>,
        url: Option<&str>,
    ) -> Result<Settings, SettingsError> {
        let env_url = std::env::var("CROWN_WS_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        let url = url
            .map(str::to_owned)
            .or_else(|| crown.and_then(|c| c.url.clone()))
            .or(env_url)
            .ok_or(SettingsError::NoUrl)?;
        let url = url.trim().to_owned();
        check_url(&url)?;
        let (token, token_missing) = match crown.and_then(|c| c.token_env.as_deref()) {
            Some(var) => match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => {
                    if http::HeaderValue::from_str(&format!("Bearer {}", value.trim())).is_err() {
                        return Err(SettingsError::BadToken(var.to_owned()));
                    }
                    (Some(Token(value.trim().to_owned())), None)
                }
                _ => (None, Some(var.to_owned())),
            },
            None => (None, None),
        };
        Ok(Settings {
            url,
            token,
            timeout: crown.map_or(Duration::from_secs(5), |c| c.timeout),
            retries: crown.map_or(3, |c| c.retries),
            required: crown.is_some_and(|c| c.required),
            token_missing,
        })
    }

    /// The URL as it may be shown or written: user info and query removed.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    fn request(&self) -> Result<http::Request<()>, String> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|err| err.to_string())?;
        if let Some(Token(token)) = &self.token {
            let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token cannot be sent in a header".to_owned())?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        Ok(request)
    }
}

fn check_url(url: &str) -> Result<(), SettingsError> {
    let bad = |why: &str| SettingsError::BadUrl {
        url: redact_url(url),
        why: why.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("cannot parse it"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(bad(
                "this build of razar has no TLS: use ws:// (for example through a local TLS-terminating proxy)",
            ));
        }
        _ => return Err(bad("it must start with ws://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    Ok(())
}

/// `ws://user:secret@host:1/path?token=x` → `ws://host:1/path`: never write credentials.
pub fn redact_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("ws"),
            uri.host().unwrap_or(""),
            match (uri.port_u16(), uri.path()) {
                (Some(port), path) => format!(":{port}{path}"),
                (None, path) => path.to_owned(),
            }
        ),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .max_message_size(Some(MAX_FRAME_BYTES))
}

/// The wall clock as RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// A successful handshake: Crown's reply, and the open connection.
#[derive(Debug)]
pub struct Connected {
    pub ack: HandshakeAck,
    /// The reply as received (archived verbatim).
    pub raw: Value,
    /// The handshake message as sent.
    pub sent: Value,
    pub at: String,
    pub attempts: u32,
    pub elapsed: Duration,
    /// Suggestions Crown sent on the connection before its reply.
    pub early_suggestions: Vec<Suggestion>,
    /// Frames skipped while waiting for the reply, with why.
    pub rejected: Vec<String>,
    ws: Ws,
}

impl Connected {
    /// Closes the connection politely (bounded by one second).
    pub async fn close(mut self) {
        close_politely(&mut self.ws, Duration::from_secs(1)).await;
    }
}

/// A handshake that did not succeed within the budget.
#[derive(Debug, Clone)]
pub struct Failed {
    pub sent: Value,
    pub at: String,
    pub attempts: u32,
    pub elapsed: Duration,
    /// One line per failed attempt, first to last.
    pub errors: Vec<String>,
    /// Crown answered, but refused the brief: its reply.
    pub refused: Option<(HandshakeAck, Value)>,
    pub rejected: Vec<String>,
}

impl Failed {
    /// One line for the operator: why razar is offline.
    pub fn summary(&self) -> String {
        match &self.refused {
            Some((ack, _)) => format!(
                "Crown refused the handshake (ack `{}`{})",
                ack.ack,
                ack.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            None => format!(
                "Crown unreachable after {} attempt(s) in {}: {}",
                self.attempts,
                crate::duration::display(self.elapsed),
                self.errors.last().map_or("no attempt made", |e| e
                    .split_once(": ")
                    .map_or(e.as_str(), |(_, why)| why))
            ),
        }
    }
}

/// Sends a close frame and waits (within `limit`) for Crown's, so neither side sees the
/// connection vanish mid-stream.
async fn close_politely(ws: &mut Ws, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

enum AttemptError {
    /// Try again after a pause.
    Retry(String),
    /// Crown answered and said no: retrying would not change its mind.
    Refused(HandshakeAck, Value),
}

/// Connects and exchanges the brief for Crown's reply, retrying with backoff until the
/// attempts or the timeout run out.
pub async fn handshake(settings: &Settings, brief: &Brief) -> Result<Connected, Failed> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let message = Outgoing::handshake(brief.clone());
    let text = message.to_text();
    let sent: Value = serde_json::from_str(&text).expect("razar's own messages are JSON");
    let at = now_rfc3339();
    let mut errors = Vec::new();
    let mut rejected = Vec::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match tokio::time::timeout_at(deadline, attempt_handshake(settings, &text, &mut rejected))
            .await
        {
            Ok(Ok((ws, ack, raw, early_suggestions))) => {
                return Ok(Connected {
                    ack,
                    raw,
                    sent,
                    at,
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    early_suggestions,
                    rejected,
                    ws,
                });
            }
            Ok(Err(AttemptError::Refused(ack, raw))) => {
                return Err(Failed {
                    sent,
                    at,
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    errors,
                    refused: Some((ack, raw)),
                    rejected,
                });
            }
            Ok(Err(AttemptError::Retry(why))) => {
                tracing::info!(target: "razar::crown", attempt, "handshake attempt failed: {why}");
                errors.push(format!("attempt {attempt}: {why}"));
            }
            Err(_) => {
                errors.push(format!(
                    "attempt {attempt}: no reply within the {} timeout",
                    crate::duration::display(settings.timeout)
                ));
                break;
            }
        }
        let pause = backoff(attempt);
        if attempt > settings.retries || tokio::time::Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Err(Failed {
        sent,
        at,
        attempts: attempt,
        elapsed: started.elapsed(),
        errors,
        refused: None,
        rejected,
    })
}

async fn attempt_handshake(
    settings: &Settings,
    text: &str,
    rejected: &mut Vec<String>,
) -> Result<(Ws, HandshakeAck, Value, Vec<Suggestion>), AttemptError> {
    let request = settings.request().map_err(AttemptError::Retry)?;
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true)
            .await
            .map_err(|err| AttemptError::Retry(describe(&err)))?;
    ws.send(Message::text(text))
        .await
        .map_err(|err| AttemptError::Retry(describe(&err)))?;
    let mut early = Vec::new();
    loop {
        let frame = match ws.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Err(AttemptError::Retry(describe(&err))),
            None => {
                return Err(AttemptError::Retry(
                    "Crown closed the connection before replying".to_owned(),
                ));
            }
        };
        match read_frame(frame) {
            Frame::Message(Incoming::HandshakeAck(ack), raw) => {
                if ack.accepted() {
                    return Ok((ws, ack, raw, early));
                }
                close_politely(&mut ws, Duration::from_secs(1)).await;
                return Err(AttemptError::Refused(ack, raw));
            }
            Frame::Message(Incoming::Suggestions(items), _) => early.extend(items),
            Frame::Message(other, _) => {
                let why = format!("`{}` before the handshake reply: ignored", other.kind());
                tracing::warn!(target: "razar::crown", "{why}");
                rejected.push(why);
            }
            Frame::Rejected(why) => {
                tracing::warn!(target: "razar::crown", "frame rejected: {why}");
                rejected.push(why);
            }
            Frame::Control => {}
            Frame::Closed(why) => return Err(AttemptError::Retry(why)),
        }
    }
}

enum Frame {
    Message(Incoming, Value),
    Rejected(String),
    /// Ping, pong: handled by the WebSocket layer.
    Control,
    Closed(String),
}

fn read_frame(frame: Message) -> Frame {
    match frame {
        Message::Text(text) => {
            let text = text.as_str();
            if text.len() > MAX_FRAME_BYTES {
                return Frame::Rejected(protocol::Rejected::TooLarge(text.len()).to_string());
            }
            match serde_json::from_str::<Value>(text) {
                Err(err) => {
                    Frame::Rejected(protocol::Rejected::InvalidJson(err.to_string()).to_string())
                }
                Ok(value) => match protocol::parse_value(value.clone()) {
                    Ok(message) => Frame::Message(message, value),
                    Err(why) => Frame::Rejected(why.to_string()),
                },
            }
        }
        Message::Binary(_) => Frame::Rejected(protocol::Rejected::Binary.to_string()),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Frame::Control,
        Message::Close(frame) => Frame::Closed(match frame {
            Some(close) if !close.reason.is_empty() => {
                format!("Crown closed the connection ({})", close.reason.as_str())
            }
            _ => "Crown closed the connection".to_owned(),
        }),
    }
}

/// A connection error in words; never includes request headers (the token).
fn describe(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Capacity(cap) => {
            format!("Crown sent more than the 1 MiB frame limit allows ({cap})")
        }
        tungstenite::Error::Http(response) => format!(
            "Crown refused the WebSocket upgrade: HTTP {}",
            response.status()
        ),
        tungstenite::Error::Io(io) => format!("cannot connect: {io}"),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "Crown closed the connection".to_owned()
        }
        tungstenite::Error::Protocol(p) => format!("WebSocket protocol error: {p}"),
        other => other.to_string(),
    }
}

/// Exponential backoff with ±20 % jitter: 100 ms, 200 ms, 400 ms … capped at `MAX_BACKOFF` (10 s).
pub fn backoff(attempt: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(MAX_BACKOFF);
    let jitter = 0.8 + 0.4 * unit_random();
    capped.mul_f64(jitter)
}

/// A number in [0, 1) from the standard library's per-process random hasher keys: enough
/// to keep several razar instances from reconnecting in lockstep.
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What the link reports while it runs during a boot.
#[derive(Debug, Clone)]
pub enum Notice {
    /// Crown sent suggestions: apply them to the steps not yet started.
    Suggestions { at: String, items: Vec<Suggestion> },
    RepairSuggestion {
        at: String,
        suggestion: protocol::RepairSuggestion,
    },
    /// A frame was skipped.
    Rejected { at: String, why: String },
    /// The connection dropped; the link reconnects with backoff.
    Disconnected { at: String, why: String },
    /// A reconnection succeeded: a new handshake was exchanged.
    Reconnected {
        at: String,
        sent: Value,
        raw: Value,
        ack: HandshakeAck,
        attempts: u32,
    },
}

/// Counts reported when the link closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    /// Status messages dropped because the queue was full.
    pub dropped: u64,
    /// Status messages not sent because Crown was disconnected at the time.
    pub unsent: u64,
    pub reconnects: u64,
}

/// The running link: a task that owns the connection.
pub struct Live {
    statuses: mpsc::Sender<Outgoing>,
    notices: mpsc::Receiver<Notice>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Stats>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Live {
    /// Starts the link on an open connection (or, with `None`, starts disconnected and keeps
    /// trying to connect). `brief` is re-sent, with the current status, on every reconnect.
    pub fn spawn(settings: Settings, connection: Option<Connected>, brief: Brief) -> Live {
        Self::spawn_with(settings, connection, brief, true)
    }

    /// [`Live::spawn`] for a Crown that refused the brief: the link never connects (no retry:
    /// offline for the run) and counts the status messages it could not send.
    pub fn refused(settings: Settings, brief: Brief) -> Live {
        Self::spawn_with(settings, None, brief, false)
    }

    fn spawn_with(
        settings: Settings,
        connection: Option<Connected>,
        brief: Brief,
        reconnect: bool,
    ) -> Live {
        let (statuses, status_rx) = mpsc::channel(STATUS_QUEUE);
        let (notice_tx, notices) = mpsc::channel(NOTICE_QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            settings,
            connection.map(|c| c.ws),
            brief,
            Channels {
                statuses: status_rx,
                notices: notice_tx,
            },
            stop.clone(),
            reconnect,
        ));
        Live {
            statuses,
            notices,
            stop,
            task,
            dropped: Default::default(),
        }
    }

    /// A [`Sink`] that forwards every state change to the link without ever blocking.
    pub fn sink(&self) -> StatusSink {
        StatusSink {
            tx: self.statuses.clone(),
            dropped: self.dropped.clone(),
        }
    }

    /// The next thing Crown said (`None` once the link has stopped).
    pub async fn notice(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }

    /// Sends what is queued (within `grace`), closes the connection and returns the counts.
    pub async fn close(self, grace: Duration) -> Stats {
        drop(self.statuses);
        let mut task = self.task;
        let stats = match tokio::time::timeout(grace, &mut task).await {
            Ok(result) => result.unwrap_or_default(),
            Err(_) => {
                self.stop.cancel();
                match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
                    Ok(result) => result.unwrap_or_default(),
                    Err(_) => {
                        task.abort();
                        Stats::default()
                    }
                }
            }
        };
        Stats {
            dropped: stats.dropped + self.dropped.load(std::sync::atomic::Ordering::Relaxed),
            ..stats
        }
    }
}

/// Turns executor events into `status` messages for the link. `try_send` only: a slow or
/// absent Crown costs the boot nothing; what does not fit in the queue is counted and dropped.
#[derive(Clone)]
pub struct StatusSink {
    tx: mpsc::Sender<Outgoing>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Sink for StatusSink {
    fn emit(&mut self, event: &Event) {
        let Some(message) = status_of(event) else {
            return;
        };
        if self.tx.try_send(message).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The `status` message for an event that changes a component's state; `None` for the rest.
pub fn status_of(event: &Event) -> Option<Outgoing> {
    let (component, state, detail) = match &event.kind {
        EventKind::Adopted { component, pid, .. } => {
            (component, "running", Some(format!("adopted pid {pid}")))
        }
        EventKind::Skipped { component, reason } => (component, "skipped", Some(reason.clone())),
        EventKind::Blocked { component, reason } => (component, "blocked", Some(reason.clone())),
        EventKind::Spawned {
            component, attempt, ..
        } => (component, "starting", Some(format!("attempt {attempt}"))),
        EventKind::Ready { component, .. } => (component, "ready", None),
        EventKind::Completed { component, .. } => (component, "completed", None),
        EventKind::AttemptFailed {
            component, reason, ..
        } => (component, "failed", Some(reason.clone())),
        EventKind::RestartScheduled {
            component,
            delay_ms,
            ..
        } => (
            component,
            "restarting",
            Some(format!(
                "in {}",
                crate::duration::display(Duration::from_millis(*delay_ms))
            )),
        ),
        EventKind::Quarantined {
            component, reason, ..
        } => (component, "quarantined", Some(reason.clone())),
        EventKind::Exited {
            component, exit, ..
        } => (component, "exited", Some(exit.to_string())),
        EventKind::Stopping { component, .. } => (component, "stopping", None),
        EventKind::Stopped { component, .. } => (component, "stopped", None),
        EventKind::Probe { .. }
        | EventKind::RunStarted { .. }
        | EventKind::BootFinished { .. }
        | EventKind::RunFinished { .. } => return None,
    };
    Some(Outgoing::Status {
        component: component.clone(),
        state: state.to_owned(),
        at: event.time.clone(),
        detail,
    })
}

/// The link's ends toward the boot: status messages in, notices out.
struct Channels {
    statuses: mpsc::Receiver<Outgoing>,
    notices: mpsc::Sender<Notice>,
}

/// The link: sends status messages and passes on what Crown says; with `reconnect`, a dropped
/// connection is reconnected with backoff, until a reconnect's handshake is refused (Crown
/// said no: offline for the rest of the run, as at the start).
async fn run(
    settings: Settings,
    mut ws: Option<Ws>,
    mut brief: Brief,
    channels: Channels,
    stop: CancellationToken,
    mut reconnect: bool,
) -> Stats {
    let Channels {
        mut statuses,
        notices,
    } = channels;
    let mut stats = Stats::default();
    let mut failures = 0u32;
    let notify = |notice: Notice| {
        if notices.try_send(notice).is_err() {
            tracing::warn!(target: "razar::crown", "notice queue full: a Crown message was dropped");
        }
    };
    // Status updates keep the brief current, so a reconnect tells Crown where the boot is.
    let track = |brief: &mut Brief, message: &Outgoing| {
        if let Outgoing::Status {
            component, state, ..
        } = message
        {
            brief
                .current_status
                .insert(component.clone(), state.clone());
        }
    };
    loop {
        match ws.as_mut() {
            Some(conn) => {
                tokio::select! {
                    message = statuses.recv() => {
                        let Some(message) = message else {
                            // The boot is over: everything queued was sent.
                            close_politely(conn, settings.timeout).await;
                            return stats;
                        };
                        track(&mut brief, &message);
                        let send = tokio::time::timeout(settings.timeout, conn.send(Message::text(message.to_text())));
                        match send.await {
                            Ok(Ok(())) => stats.sent += 1,
                            Ok(Err(err)) => {
                                stats.unsent += 1;
                                notify(Notice::Disconnected { at: now_rfc3339(), why: describe(&err) });
                                ws = None;
                            }
                            Err(_) => {
                                stats.unsent += 1;
                                notify(Notice::Disconnected {
                                    at: now_rfc3339(),
                                    why: format!("sending took longer than {}", crate::duration::display(settings.timeout)),
                                });
                                ws = None;
                            }
                        }
                    }
                    frame = conn.next() => {
                        let at = now_rfc3339();
                        let frame = match frame {
                            Some(Ok(frame)) => read_frame(frame),
                            Some(Err(err)) => Frame::Closed(describe(&err)),
                            None => Frame::Closed("Crown closed the connection".to_owned()),
                        };
                        match frame {
                            Frame::Message(Incoming::Suggestions(items), _) => notify(Notice::Suggestions { at, items }),
                            Frame::Message(Incoming::RepairSuggestion(suggestion), _) => {
                                notify(Notice::RepairSuggestion { at, suggestion });
                            }
                            Frame::Message(Incoming::HandshakeAck(_), _) => {
                                let why = "`handshake_ack` outside a handshake: ignored".to_owned();
                                tracing::warn!(target: "razar::crown", "{why}");
                                notify(Notice::Rejected { at, why });
                            }
                            Frame::Rejected(why) => {
                                tracing::warn!(target: "razar::crown", "frame rejected: {why}");
                                notify(Notice::Rejected { at, why });
                            }
                            Frame::Control => {}
                            Frame::Closed(why) => {
                                tracing::warn!(target: "razar::crown", "connection lost: {why}; reconnecting");
                                notify(Notice::Disconnected { at, why });
                                ws = None;
                            }
                        }
                    }
                    () = stop.cancelled() => {
                        close_politely(conn, Duration::from_secs(1)).await;
                        return stats;
                    }
                }
            }
            None if !reconnect => {
                // Offline for the run: drain the statuses so the boot never blocks.
                tokio::select! {
                    message = statuses.recv() => match message {
                        Some(_) => stats.unsent += 1,
                        None => return stats,
                    },
                    () = stop.cancelled() => return stats,
                }
            }
            None => {
                failures += 1;
                let pause = tokio::time::sleep(backoff(failures));
                tokio::pin!(pause);
                // Wait out the pause, still draining statuses so the boot never blocks.
                loop {
                    tokio::select! {
                        () = &mut pause => break,
                        message = statuses.recv() => match message {
                            Some(message) => {
                                track(&mut brief, &message);
                                stats.unsent += 1;
                            }
                            None => return stats,
                        },
                        () = stop.cancelled() => return stats,
                    }
                }
                // One attempt per pause: the pauses above are the backoff.
                let once = Settings {
                    retries: 0,
                    ..settings.clone()
                };
                let attempt = tokio::select! {
                    result = handshake(&once, &brief) => result,
                    () = stop.cancelled() => return stats,
                };
                match attempt {
                    Ok(connected) => {
                        failures = 0;
                        stats.reconnects += 1;
                        if !connected.early_suggestions.is_empty() {
                            notify(Notice::Suggestions {
                                at: connected.at.clone(),
                                items: connected.early_suggestions.clone(),
                            });
                        }
                        notify(Notice::Reconnected {
                            at: connected.at.clone(),
                            sent: connected.sent.clone(),
                            raw: connected.raw.clone(),
                            ack: connected.ack.clone(),
                            attempts: connected.attempts,
                        });
                        ws = Some(connected.ws);
                    }
                    Err(failed) if failed.refused.is_some() => {
                        tracing::warn!(target: "razar::crown", "reconnect refused: {}; offline for the rest of the run", failed.summary());
                        notify(Notice::Rejected {
                            at: now_rfc3339(),
                            why: format!(
                                "reconnect refused: {}; offline for the rest of the run",
                                failed.summary()
                            ),
                        });
                        reconnect = false;
                    }
                    Err(failed) => {
                        tracing::info!(target: "razar::crown", "reconnect failed: {}", failed.summary());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(check_url("ws://127.0.0.1:8765/crown").is_ok());
        assert!(matches!(
            check_url("http://x/"),
            Err(SettingsError::BadUrl { .. })
        ));
        let err = check_url("wss://x/").unwrap_err().to_string();
        assert!(err.contains("no TLS"), "{err}");
        assert_eq!(
            redact_url("ws://user:secret@host:9/crown?token=abc"),
            "ws://host:9/crown"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) <= Duration::from_millis(120));
        assert!(backoff(4) >= Duration::from_millis(640));
        assert!(backoff(40) <= MAX_BACKOFF.mul_f64(1.2));
    }

    /// A Crown on port 0 that acks every handshake, records every message, and drops the
    /// first connection right after the first `status` it receives.
    async fn flaky_crown() -> (String, mpsc::UnboundedReceiver<(usize, Value)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/crown", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                n += 1;
                let connection = n;
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                    while let Some(Ok(Message::Text(text))) = ws.next().await {
                        let value: Value = serde_json::from_str(text.as_str()).unwrap();
                        let kind = value["type"].as_str().unwrap_or_default().to_owned();
                        let _ = tx.send((connection, value));
                        if kind == "handshake" {
                            let ack = r#"{"type":"handshake_ack","ack":"ok"}"#;
                            ws.send(Message::text(ack)).await.unwrap();
                            if connection == 2 {
                                let advice = r#"{"type":"suggestions","items":[{"action":"defer","component":"b"}]}"#;
                                ws.send(Message::text(advice)).await.unwrap();
                            }
                        } else if connection == 1 {
                            // Vanish without a close frame, as a crashed Crown would.
                            return;
                        }
                    }
                });
            }
        });
        (url, rx)
    }

    fn status(component: &str, state: &str) -> Outgoing {
        Outgoing::Status {
            component: component.to_owned(),
            state: state.to_owned(),
            at: now_rfc3339(),
            detail: None,
        }
    }

    #[tokio::test]
    async fn a_dropped_link_reconnects_with_the_current_status_and_passes_on_suggestions() {
        let (url, mut seen) = flaky_crown().await;
        let settings = Settings::resolve(None, Some(&url)).unwrap();
        let brief = Brief {
            current_status: [("a".to_owned(), "unknown".to_owned())].into(),
            ..Brief::default()
        };
        let connected = handshake(&settings, &brief).await.expect("Crown answers");
        let mut live = Live::spawn(settings, Some(connected), brief);
        let sink = live.statuses.clone();
        sink.try_send(status("a", "starting")).unwrap();
        // Connection 1 receives the status and drops: the link reports it and reconnects.
        let mut disconnected = false;
        let reconnected = loop {
            match tokio::time::timeout(Duration::from_secs(10), live.notice()).await {
                Ok(Some(Notice::Disconnected { .. })) => disconnected = true,
                Ok(Some(Notice::Reconnected { sent, .. })) => break sent,
                Ok(Some(_)) => {}
                other => panic!("no reconnect: {other:?}"),
            }
        };
        assert!(disconnected);
        assert_eq!(reconnected["brief"]["current_status"]["a"], "starting");
        let Some(Notice::Suggestions { items, .. }) =
            tokio::time::timeout(Duration::from_secs(10), live.notice())
                .await
                .unwrap()
        else {
            panic!("the suggestion sent after the reconnect arrives")
        };
        assert_eq!(items[0].action, "defer");
        sink.try_send(status("a", "ready")).unwrap();
        drop(sink);
        let stats = live.close(Duration::from_secs(5)).await;
        assert_eq!(stats.reconnects, 1);
        let mut messages = Vec::new();
        while let Ok(m) = seen.try_recv() {
            messages.push(m);
        }
        let after: Vec<&str> = messages
            .iter()
            .filter(|(c, _)| *c == 2)
            .map(|(_, v)| v["type"].as_str().unwrap())
            .collect();
        assert_eq!(after, ["handshake", "status"], "{messages:?}");
    }

    #[tokio::test]
    async fn a_full_status_queue_drops_instead_of_blocking() {
        // Nothing listens: the link stays disconnected while the sink keeps emitting.
        let settings = Settings::resolve(None, Some("ws://127.0.0.1:9/crown")).unwrap();
        let live = Live::spawn(settings, None, Brief::default());
        let mut sink = live.sink();
        let event = Event {
            at_ms: 0,
            time: now_rfc3339(),
            kind: EventKind::Ready {
                component: "a".to_owned(),
                attempt: 1,
                after_ms: 1,
            },
        };
        let started = Instant::now();
        for _ in 0..(STATUS_QUEUE * 3) {
            sink.emit(&event);
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "emit never waits"
        );
        let stats = live.close(Duration::from_millis(200)).await;
        assert!(stats.dropped + stats.unsent > 0, "{stats:?}");
    }

    #[test]
    fn tokens_never_print() {
        let token = Token("hunter2".to_owned());
        assert!(!format!("{token:?}").contains("hunter2"));
    }
}
