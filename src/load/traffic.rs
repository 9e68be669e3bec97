//! The traffic of a load run: senders that keep a window of sends in flight
//! (optionally paced to a total rate), and one receiver per session that
//! checks every push as it arrives.
//!
//! Every message carries its send time (µs since the run began, little
//! endian, taken when the generator builds the message, after the pacer's
//! slot), so a receiver measures end-to-end latency without any lookup. How
//! it is carried is `--payload`:
//!
//! - **sealed** (the default): the plaintext is the send time and random
//!   padding, sealed with `united-hub dm v2` from the pair's sender to the
//!   recipient's X25519 key (derived here from the recipient's identity: the
//!   generator made both). Every session of both sides opens every message it
//!   gets (the recipient's as recipient, the sender's own devices as sender)
//!   and reads the time from the plaintext; a message that does not open as
//!   v2, in the expected role, from the pair's sender, is an anomaly that
//!   fails the run. The run thus pays, and reports, what real clients pay:
//!   one seal per message and one open per push. The ciphertext is still
//!   `--payload-bytes` long (v2 adds [`V2_OVERHEAD`] bytes to the plaintext).
//! - **random**: the payload is the send time followed by the same random
//!   bytes every time, with random nonce and ephemeral key fields; nothing is
//!   sealed or opened. The hub cannot tell them from ciphertext, so this is
//!   for hub-only benchmarks: on a small machine the generator's crypto (about
//!   three X25519 operations per seal and per open) takes CPU from the hub,
//!   or becomes the bottleneck, and `random` removes it. It is also the only
//!   mode for payloads below [`MIN_SEALED_BYTES`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand_core::{OsRng, RngCore};
use tokio::sync::Semaphore;

use crate::client::crypto::{self, CryptoError, Identity, Role, Scheme, Sealed};
use crate::client::{send_body, ClientError, Events, HubClient, Incoming, WsClient};
use crate::proto::{dm, Payload};

/// How a sender sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Ws,
    Http,
}

/// What a message's payload is (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// Sealed with v2 by the sender, opened by every receiving session.
    Sealed,
    /// Random bytes, never sealed or opened: for hub-only benchmarks.
    Random,
}

impl PayloadMode {
    pub fn describe(self) -> &'static str {
        match self {
            PayloadMode::Sealed => "sealed with united-hub dm v2, opened by every session",
            PayloadMode::Random => "random bytes, not sealed (hub-only benchmark)",
        }
    }
}

/// The send time at the start of every plaintext (sealed) or payload (random).
const STAMP: usize = 8;
/// Bytes `united-hub dm v2` adds to a plaintext: the version byte, the
/// recipient's X25519 key and the Poly1305 tag.
pub const V2_OVERHEAD: usize = 1 + 32 + 16;
/// The smallest `--payload-bytes` a sealed message fits in.
pub const MIN_SEALED_BYTES: usize = STAMP + V2_OVERHEAD;

/// Most anomaly or error descriptions kept for the report.
const SAMPLES: usize = 10;

/// Counters shared by every task of the run (one thread, so `Cell`s).
pub struct Stats {
    pub started: Instant,
    pub sending: Cell<bool>,
    measure_from: Cell<Option<Instant>>,
    measure_until: Cell<Option<Instant>>,
    pub in_flight: Cell<u64>,
    pub accepted: Cell<u64>,
    pub accepted_measured: Cell<u64>,
    pub refused: Cell<u64>,
    pub errors: Cell<u64>,
    pub delivered: Cell<u64>,
    pub delivered_measured: Cell<u64>,
    pub anomalies: Cell<u64>,
    /// Sessions a node closed that moved to another (`--rolling-restart`).
    pub reconnects: Cell<u64>,
    /// Client crypto (sealed mode): messages sealed and the time it took.
    pub sealed: Cell<u64>,
    pub seal_time: Cell<Duration>,
    /// Pushes opened (and read) and the time every open took, failed ones too.
    pub opened: Cell<u64>,
    pub open_time: Cell<Duration>,
    /// Pushes that did not open as v2 from their sender (each one an anomaly too).
    pub open_failures: Cell<u64>,
    /// Send → recipient's push, from each send's scheduled time.
    pub latency_us: RefCell<Histogram<u64>>,
    /// Send → the hub's answer to the sender, from the same time.
    pub answer_us: RefCell<Histogram<u64>>,
    /// How late each send left against its schedule (the generator's own
    /// lag: large values mean the figures measure the generator).
    pub send_lag_us: RefCell<Histogram<u64>>,
    /// Send → push latency per second of the measurement (by send time).
    pub per_second_us: RefCell<Vec<Histogram<u64>>>,
    pub samples: RefCell<Vec<String>>,
}

/// 1 µs to 60 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            started: Instant::now(),
            sending: Cell::new(false),
            measure_from: Cell::new(None),
            measure_until: Cell::new(None),
            in_flight: Cell::new(0),
            accepted: Cell::new(0),
            accepted_measured: Cell::new(0),
            refused: Cell::new(0),
            errors: Cell::new(0),
            delivered: Cell::new(0),
            delivered_measured: Cell::new(0),
            anomalies: Cell::new(0),
            reconnects: Cell::new(0),
            sealed: Cell::new(0),
            seal_time: Cell::new(Duration::ZERO),
            opened: Cell::new(0),
            open_time: Cell::new(Duration::ZERO),
            open_failures: Cell::new(0),
            latency_us: RefCell::new(latency_histogram()),
            answer_us: RefCell::new(latency_histogram()),
            send_lag_us: RefCell::new(latency_histogram()),
            per_second_us: RefCell::new(Vec::new()),
            samples: RefCell::new(Vec::new()),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_micros() as u64
    }

    pub fn start_measuring(&self) {
        self.measure_from.set(Some(Instant::now()));
    }

    pub fn stop_measuring(&self) {
        self.measure_until.set(Some(Instant::now()));
    }

    /// True while the measurement window is open.
    fn measuring(&self) -> bool {
        self.measure_from.get().is_some() && self.measure_until.get().is_none()
    }

    /// True if a message sent at `sent_us` was sent inside the window.
    fn sent_in_window(&self, sent_us: u64) -> bool {
        let from = self.measure_from.get().map(|t| self.micros(t));
        let until = self.measure_until.get().map(|t| self.micros(t));
        from.is_some_and(|f| sent_us >= f) && until.is_none_or(|u| sent_us < u)
    }

    /// Records a push's latency, overall and in its second of the run.
    fn record_push(&self, sent_us: u64, latency_us: u64) {
        let _ = self.latency_us.borrow_mut().record(latency_us);
        let from = self.measure_from.get().map_or(0, |t| self.micros(t));
        let second = (sent_us.saturating_sub(from) / 1_000_000) as usize;
        let mut seconds = self.per_second_us.borrow_mut();
        while seconds.len() <= second {
            seconds.push(latency_histogram());
        }
        let _ = seconds[second].record(latency_us);
    }

    pub fn note(&self, what: String) {
        let mut samples = self.samples.borrow_mut();
        if samples.len() < SAMPLES {
            samples.push(what);
        }
    }

    fn anomaly(&self, what: String) {
        self.anomalies.set(self.anomalies.get() + 1);
        self.note(what);
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// A pair's two identities, as the generator made them.
pub struct PairKeys {
    pub sender: Identity,
    pub recipient: Identity,
    /// Derived here from the recipient's identity: the key the hub publishes
    /// for it is the same derivation, so there is nothing to fetch or check.
    recipient_x25519: [u8; 32],
    sender_pubkey: [u8; 32],
}

impl PairKeys {
    pub fn new(sender: Identity, recipient: Identity) -> Self {
        PairKeys {
            recipient_x25519: recipient.x25519_public(),
            sender_pubkey: sender.public_key(),
            sender,
            recipient,
        }
    }
}

/// One active conversation and what its sender had accepted.
pub struct Pair {
    pub index: usize,
    pub conversation: String,
    pub keys: PairKeys,
    /// `accepted[seq]` is set once the hub answered that sequence.
    accepted: RefCell<Vec<bool>>,
    pub accepted_count: Cell<u64>,
    pub duplicate_answers: Cell<u64>,
}

impl Pair {
    pub fn new(index: usize, conversation: String, keys: PairKeys) -> Self {
        Pair {
            index,
            conversation,
            keys,
            accepted: RefCell::new(Vec::new()),
            accepted_count: Cell::new(0),
            duplicate_answers: Cell::new(0),
        }
    }

    fn record_accepted(&self, seq: u64) {
        let mut accepted = self.accepted.borrow_mut();
        let i = seq as usize;
        if accepted.len() <= i {
            accepted.resize(i + 1, false);
        }
        if accepted[i] {
            self.duplicate_answers.set(self.duplicate_answers.get() + 1);
        } else {
            accepted[i] = true;
            self.accepted_count.set(self.accepted_count.get() + 1);
        }
    }

    /// Whether the accepted sequences are exactly 1..=n.
    pub fn accepted_gap_free(&self) -> bool {
        self.accepted.borrow().iter().skip(1).all(|a| *a)
    }
}

/// What one session has received.
pub struct SessionCheck {
    /// The conversation it belongs to (`None` for idle sessions).
    pub pair: Option<Rc<Pair>>,
    /// It belongs to the recipient (latency is measured there).
    pub recipient: bool,
    pub last_seq: Cell<u64>,
    pub received: Cell<u64>,
}

/// Where a session goes when its node closes it (`--rolling-restart`):
/// the nodes, its user's token, and an HTTP client for the catch-up.
pub struct Failover {
    /// The nodes' base URLs.
    pub urls: Vec<String>,
    pub http: awc::Client,
    pub token: String,
}

impl Failover {
    /// A live socket on some node other than `after`'s, trying each in turn
    /// until the run ends; `None` then. Returns the socket and the node.
    async fn reconnect(&self, after: usize, done: &Cell<bool>) -> Option<(WsClient, usize)> {
        let mut node = after;
        while !done.get() {
            node = (node + 1) % self.urls.len();
            let client = HubClient::with_http(&self.urls[node], self.http.clone());
            if let Ok(ws) = WsClient::connect(&client.ws_url(), &self.token).await {
                let live = ws
                    .call(Payload::DmConversationListRequest(
                        dm::DmConversationListRequest {},
                    ))
                    .await;
                if live.is_ok() {
                    return Some((ws, node));
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The conversation's messages after `after`, from `node`'s history.
    async fn catch_up(
        &self,
        node: usize,
        conversation: &str,
        after: u64,
    ) -> Result<Vec<dm::EncryptedDmMessage>, ClientError> {
        let mut client = HubClient::with_http(&self.urls[node], self.http.clone());
        client.set_access_token(self.token.clone());
        let page = client.history_after(conversation, after).await?;
        Ok(page
            .iter()
            .map(crate::json::MessageJson::to_proto)
            .collect())
    }
}

/// Reads one session's events until the run ends; with sealed payloads it
/// opens every message to read its send time. A close from the hub is an
/// anomaly, unless `failover` is given: then the session moves to another
/// node, catches up from history, and goes on (what the catch-up brought
/// and a push repeats is not counted twice).
pub async fn receive(
    mut events: Events,
    check: Rc<SessionCheck>,
    stats: Rc<Stats>,
    done: Rc<Cell<bool>>,
    payload: PayloadMode,
    failover: Option<(Rc<Failover>, usize)>,
) {
    // The socket of the latest reconnect, kept open while it is read.
    let mut _socket: Option<WsClient> = None;
    // Pushes up to this sequence came with a catch-up already.
    let mut caught_up_to = 0;
    // No short per-wait timer: with 10,000 idle sessions one of 250 ms was
    // 40,000 timers a second in the generator. The loop ends on the close the
    // hub sends when the run drops its sessions.
    while !done.get() {
        let Some(incoming) = events.next(Duration::from_secs(3600)).await else {
            continue;
        };
        let envelope = match incoming {
            Incoming::Envelope(e) => e,
            Incoming::Closed(code) => {
                if done.get() {
                    return;
                }
                let Some((failover, node)) = &failover else {
                    stats.anomaly(format!("a session was closed by the hub ({code:?})"));
                    return;
                };
                stats.reconnects.set(stats.reconnects.get() + 1);
                let Some((mut ws, at)) = failover.reconnect(*node, &done).await else {
                    return;
                };
                let Some(new_events) = ws.take_events() else {
                    return;
                };
                events = new_events;
                _socket = Some(ws);
                if let Some(pair) = &check.pair {
                    match failover
                        .catch_up(at, &pair.conversation, check.last_seq.get())
                        .await
                    {
                        Ok(missed) => {
                            for m in &missed {
                                take(&check, &stats, payload, m, None);
                                caught_up_to = caught_up_to.max(m.server_sequence);
                            }
                        }
                        Err(e) => {
                            stats.anomaly(format!("pair {}: catch-up failed: {e}", pair.index))
                        }
                    }
                }
                continue;
            }
        };
        let Some(Payload::DmMessageEvent(event)) = envelope.payload else {
            continue;
        };
        let Some(m) = event.message else { continue };
        if m.server_sequence <= caught_up_to && check.pair.is_some() {
            continue;
        }
        take(&check, &stats, payload, &m, Some(Instant::now()));
    }
}

/// Checks one message a session got (pushed at `pushed_at`, or caught up
/// from history without it) and counts it.
fn take(
    check: &SessionCheck,
    stats: &Stats,
    payload: PayloadMode,
    m: &dm::EncryptedDmMessage,
    pushed_at: Option<Instant>,
) {
    let Some(pair) = &check.pair else {
        stats.anomaly("an idle session received a message".into());
        return;
    };
    if m.conversation_id != pair.conversation {
        stats.anomaly(format!(
            "pair {} received another conversation's message",
            pair.index
        ));
        return;
    }
    let last = check.last_seq.get();
    if m.server_sequence != last + 1 {
        let kind = if m.server_sequence <= last {
            "duplicate or reorder"
        } else {
            "gap"
        };
        stats.anomaly(format!(
            "pair {}: {kind}: got #{} after #{last}",
            pair.index, m.server_sequence
        ));
    }
    check.last_seq.set(last.max(m.server_sequence));
    check.received.set(check.received.get() + 1);
    stats.delivered.set(stats.delivered.get() + 1);
    if stats.measuring() {
        stats
            .delivered_measured
            .set(stats.delivered_measured.get() + 1);
    }
    let sent_us = match payload {
        PayloadMode::Random => stamp(&m.encrypted_payload),
        PayloadMode::Sealed => match open_stamp(&pair.keys, check.recipient, m, stats) {
            Ok(sent_us) => sent_us,
            Err(why) => {
                stats.open_failures.set(stats.open_failures.get() + 1);
                stats.anomaly(format!(
                    "pair {}: #{} did not open on a {} session: {why}",
                    pair.index,
                    m.server_sequence,
                    if check.recipient {
                        "recipient"
                    } else {
                        "sender"
                    }
                ));
                return;
            }
        },
    };
    // Latency is a push's: a caught-up message has none.
    if let Some(now) = pushed_at {
        if check.recipient && stats.sent_in_window(sent_us) {
            let latency = stats.micros(now).saturating_sub(sent_us).max(1);
            stats.record_push(sent_us, latency);
        }
    }
}

/// The send time at the start of `bytes` (0 if it is too short).
fn stamp(bytes: &[u8]) -> u64 {
    bytes
        .get(..STAMP)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Opens a pushed message as the session's user would (the recipient's
/// sessions as recipient, the sender's own as sender) and returns its send
/// time, or why it is not the message the pair's sender sealed.
fn open_stamp(
    keys: &PairKeys,
    recipient: bool,
    m: &dm::EncryptedDmMessage,
    stats: &Stats,
) -> Result<u64, String> {
    let mut sender_pubkey = [0u8; 32];
    hex::decode_to_slice(&m.sender_pubkey, &mut sender_pubkey)
        .map_err(|_| format!("sender_pubkey {:?} is not a key", m.sender_pubkey))?;
    if sender_pubkey != keys.sender_pubkey {
        return Err(format!(
            "attributed to {} instead of the pair's sender",
            m.sender_pubkey
        ));
    }
    let sealed = Sealed {
        ciphertext: m.encrypted_payload.to_vec(),
        nonce: m.nonce[..]
            .try_into()
            .map_err(|_| format!("a {}-byte nonce", m.nonce.len()))?,
        ephemeral_pubkey: m.ephemeral_pubkey[..]
            .try_into()
            .map_err(|_| format!("a {}-byte ephemeral key", m.ephemeral_pubkey.len()))?,
    };
    let (me, role) = if recipient {
        (&keys.recipient, Role::Recipient)
    } else {
        (&keys.sender, Role::Sender)
    };
    let started = Instant::now();
    let opened = crypto::open(me, &sealed, &m.conversation_id, &sender_pubkey);
    stats
        .open_time
        .set(stats.open_time.get() + started.elapsed());
    let opened = opened.map_err(|e| e.to_string())?;
    if opened.scheme != Scheme::V2 {
        return Err("it opened only as v1 (unauthenticated)".into());
    }
    if opened.role != role {
        return Err(format!("it opened as {:?}, not {role:?}", opened.role));
    }
    if opened.plaintext.len() < STAMP {
        return Err(format!(
            "its plaintext has {} bytes, no send time",
            opened.plaintext.len()
        ));
    }
    stats.opened.set(stats.opened.get() + 1);
    Ok(stamp(&opened.plaintext))
}

/// Spaces sends evenly to reach a total rate, on a fixed schedule: a send
/// that leaves late keeps its scheduled time, so its wait counts in the
/// latency (no coordinated omission) and the sends after it catch up.
///
/// The runtime's timer fires on whole milliseconds and rounds every wait up,
/// so a send that waited for its slot left about a millisecond after it
/// (median), and that millisecond counted in every latency the run
/// reported. So the pacer wakes up to [`TIMER_TICK`] before the slot, and a
/// send's latency counts from the earlier of its slot and the moment it
/// left ([`Pacer::slot`]): from its departure when it leaves early, which is
/// then its true latency, and from its slot when it leaves late.
pub struct Pacer {
    interval: Duration,
    /// The next slot; the schedule starts at the first send.
    next: Cell<Option<Instant>>,
}

/// The granularity of the runtime's timer.
pub const TIMER_TICK: Duration = Duration::from_millis(1);

impl Pacer {
    pub fn new(rate_per_sec: u64) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rate_per_sec as f64),
            next: Cell::new(None),
        }
    }

    /// Waits for the next slot, waking at most [`TIMER_TICK`] before it.
    /// Returns the slot, and when the send leaves: the earlier of the slot
    /// and now, which its latency counts from.
    async fn slot(&self) -> (Instant, Instant) {
        let at = self.next.get().unwrap_or_else(Instant::now);
        self.next.set(Some(at + self.interval));
        let wake = at.checked_sub(TIMER_TICK).unwrap_or(at);
        if wake > Instant::now() {
            actix_web::rt::time::sleep_until(wake.into()).await;
        }
        (at, at.min(Instant::now()))
    }
}

/// What every message of a run is made from (only the send time changes).
#[derive(Clone)]
pub enum Template {
    /// The plaintext: a slot for the send time, then random padding, so the
    /// sealed ciphertext is `--payload-bytes` long.
    Sealed { plaintext: Vec<u8> },
    /// The whole payload (a slot for the send time, then random bytes) and
    /// random nonce and ephemeral key fields.
    Random {
        payload: Vec<u8>,
        nonce: Bytes,
        ephemeral: Bytes,
    },
}

impl Template {
    /// A template whose messages carry `payload_bytes` of ciphertext (random
    /// mode: at least 16, as it always was).
    pub fn new(mode: PayloadMode, payload_bytes: usize) -> anyhow::Result<Self> {
        Ok(match mode {
            PayloadMode::Sealed => {
                anyhow::ensure!(
                    payload_bytes >= MIN_SEALED_BYTES,
                    "--payload-bytes {payload_bytes} is too small for a sealed message: it needs \
                     at least {MIN_SEALED_BYTES} ({STAMP} bytes of send time + {V2_OVERHEAD} \
                     bytes that v2 adds); give more, or --payload random"
                );
                let mut plaintext = vec![0u8; payload_bytes - V2_OVERHEAD];
                OsRng.fill_bytes(&mut plaintext);
                Template::Sealed { plaintext }
            }
            PayloadMode::Random => {
                let mut payload = vec![0u8; payload_bytes.max(16)];
                OsRng.fill_bytes(&mut payload);
                let mut nonce = [0u8; 24];
                OsRng.fill_bytes(&mut nonce);
                let mut ephemeral = [0u8; 32];
                OsRng.fill_bytes(&mut ephemeral);
                Template::Random {
                    payload,
                    nonce: Bytes::copy_from_slice(&nonce),
                    ephemeral: Bytes::copy_from_slice(&ephemeral),
                }
            }
        })
    }

    /// The next message of `pair`, stamped with `at`: its scheduled time at a
    /// fixed rate, else the time it is built (sealed mode: before sealing, so
    /// latency includes it).
    fn request(
        &self,
        stats: &Stats,
        pair: &Pair,
        at: Instant,
    ) -> Result<dm::DmSendRequest, CryptoError> {
        let sent_us = stats.micros(at).to_le_bytes();
        let (encrypted_payload, nonce, ephemeral_pubkey) = match self {
            Template::Sealed { plaintext } => {
                let mut plaintext = plaintext.clone();
                plaintext[..STAMP].copy_from_slice(&sent_us);
                let keys = &pair.keys;
                let sealing = Instant::now();
                let sealed = crypto::seal(
                    &keys.sender,
                    &keys.recipient_x25519,
                    &pair.conversation,
                    &plaintext,
                );
                stats
                    .seal_time
                    .set(stats.seal_time.get() + sealing.elapsed());
                let sealed = sealed?;
                stats.sealed.set(stats.sealed.get() + 1);
                (
                    sealed.ciphertext.into(),
                    Bytes::copy_from_slice(&sealed.nonce),
                    Bytes::copy_from_slice(&sealed.ephemeral_pubkey),
                )
            }
            Template::Random {
                payload,
                nonce,
                ephemeral,
            } => {
                let mut payload = payload.clone();
                payload[..STAMP].copy_from_slice(&sent_us);
                (payload.into(), nonce.clone(), ephemeral.clone())
            }
        };
        Ok(dm::DmSendRequest {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: pair.conversation.clone(),
            encrypted_payload,
            nonce,
            ephemeral_pubkey,
            timestamp: crate::model::now_ms(),
        })
    }
}

/// The transport of one sender.
pub enum Sender {
    Ws(Rc<WsClient>),
    Http(HubClient),
    /// Over HTTP to any node: a send that meets a node going away (no
    /// answer, 503) goes to the next node with the same id, which the hub
    /// takes as the same message (`--rolling-restart`).
    HttpFailover {
        client: RefCell<HubClient>,
        urls: Vec<String>,
        at: Cell<usize>,
        done: Rc<Cell<bool>>,
    },
}

impl Sender {
    async fn send(&self, request: dm::DmSendRequest) -> Result<u64, ClientError> {
        Box::pin(self.send_once(request)).await
    }

    async fn send_once(&self, request: dm::DmSendRequest) -> Result<u64, ClientError> {
        match self {
            Sender::Ws(ws) => match ws.call(Payload::DmSendRequest(request)).await? {
                Payload::DmSendResponse(r) => Ok(r.message.map_or(0, |m| m.server_sequence)),
                other => Err(ClientError::Decode(format!("unexpected answer {other:?}"))),
            },
            Sender::HttpFailover {
                client,
                urls,
                at,
                done,
            } => loop {
                let attempt = client.borrow().clone();
                match Sender::Http(attempt).send(request.clone()).await {
                    Err(e)
                        if !done.get()
                            && (matches!(e, ClientError::Transport(_))
                                || e.status() == Some(503)) =>
                    {
                        at.set((at.get() + 1) % urls.len());
                        client.borrow_mut().switch_to(urls[at.get()].clone());
                        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
                    }
                    answer => return answer,
                }
            },
            Sender::Http(client) => {
                let sealed = crate::client::crypto::Sealed {
                    ciphertext: request.encrypted_payload.to_vec(),
                    nonce: request.nonce[..].try_into().expect("24-byte nonce"),
                    ephemeral_pubkey: request.ephemeral_pubkey[..]
                        .try_into()
                        .expect("32-byte key"),
                };
                let body = send_body(
                    Some(request.id),
                    &request.conversation_id,
                    &sealed,
                    request.timestamp,
                );
                Ok(client.send(&body).await?.0.server_sequence)
            }
        }
    }
}

/// Keeps `window` sends in flight for one pair while `stats.sending` holds.
pub async fn send_loop(
    pair: Rc<Pair>,
    sender: Rc<Sender>,
    template: Rc<Template>,
    stats: Rc<Stats>,
    window: usize,
    pacer: Option<Rc<Pacer>>,
) {
    let permits = std::sync::Arc::new(Semaphore::new(window.max(1)));
    while stats.sending.get() {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // `scheduled`: what the latency counts from (see `Pacer`).
        let (slot, scheduled) = match &pacer {
            Some(pacer) => pacer.slot().await,
            None => {
                let now = Instant::now();
                (now, now)
            }
        };
        if !stats.sending.get() {
            return;
        }
        if stats.measuring() {
            let lag = slot.elapsed().as_micros() as u64;
            let _ = stats.send_lag_us.borrow_mut().record(lag.max(1));
        }
        let request = match template.request(&stats, &pair, scheduled) {
            Ok(request) => request,
            Err(e) => {
                // Only a key of small order fails here, and it would fail
                // every time: count it once and stop this sender.
                stats.errors.set(stats.errors.get() + 1);
                stats.note(format!("pair {}: sealing failed: {e}", pair.index));
                return;
            }
        };
        let (pair, sender, stats) = (pair.clone(), sender.clone(), stats.clone());
        stats.in_flight.set(stats.in_flight.get() + 1);
        actix_web::rt::spawn(async move {
            let measuring = stats.measuring();
            let sent_us = stats.micros(scheduled);
            match sender.send(request).await {
                Ok(seq) => {
                    if stats.sent_in_window(sent_us) {
                        let latency = stats.micros(Instant::now()).saturating_sub(sent_us);
                        let _ = stats.answer_us.borrow_mut().record(latency.max(1));
                    }
                    pair.record_accepted(seq);
                    stats.accepted.set(stats.accepted.get() + 1);
                    if measuring {
                        stats
                            .accepted_measured
                            .set(stats.accepted_measured.get() + 1);
                    }
                }
                Err(e) if matches!(e.status(), Some(429) | Some(503)) => {
                    stats.refused.set(stats.refused.get() + 1);
                }
                Err(e) => {
                    stats.errors.set(stats.errors.get() + 1);
                    stats.note(format!("send failed: {e}"));
                }
            }
            stats.in_flight.set(stats.in_flight.get() - 1);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONVERSATION: &str = "7d0f8d0e-5b4a-4c1e-9a43-0f6f1a2b3c4d";

    fn pair() -> Pair {
        Pair::new(
            0,
            CONVERSATION.to_owned(),
            PairKeys::new(Identity::generate(), Identity::generate()),
        )
    }

    /// The push the hub would make of `request` from the pair's sender.
    fn pushed(pair: &Pair, request: &dm::DmSendRequest) -> dm::EncryptedDmMessage {
        dm::EncryptedDmMessage {
            id: request.id.clone(),
            conversation_id: request.conversation_id.clone(),
            sender_pubkey: pair.keys.sender.public_key_hex(),
            encrypted_payload: request.encrypted_payload.clone(),
            nonce: request.nonce.clone(),
            ephemeral_pubkey: request.ephemeral_pubkey.clone(),
            timestamp: request.timestamp,
            server_sequence: 1,
            sender_display_name: "load-0".into(),
        }
    }

    #[actix_web::test]
    async fn the_pacer_keeps_its_schedule_when_a_send_is_late() {
        let pacer = Pacer::new(1000);
        let (first, _) = pacer.slot().await;
        // The sender falls 5 ms behind: the next slots keep their times, so
        // the lag counts in the latency and the sends catch up at once.
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        let (second, second_from) = pacer.slot().await;
        let (third, third_from) = pacer.slot().await;
        assert_eq!(second - first, Duration::from_millis(1));
        assert_eq!(third - second, Duration::from_millis(1));
        assert!(third < Instant::now());
        assert_eq!((second_from, third_from), (second, third));
    }

    #[actix_web::test]
    async fn a_send_leaves_at_most_a_tick_early_and_counts_from_when_it_left() {
        let pacer = Pacer::new(200);
        for _ in 0..20 {
            let (slot, from) = pacer.slot().await;
            let left = Instant::now();
            assert!(left + TIMER_TICK >= slot, "left over a tick early");
            assert!(from <= slot, "counted from after its slot");
            assert!(from <= left, "counted from after it left");
        }
    }

    #[test]
    fn v2_adds_the_overhead_the_generator_counts_on() {
        let keys = PairKeys::new(Identity::generate(), Identity::generate());
        let sealed = crypto::seal(
            &keys.sender,
            &keys.recipient_x25519,
            CONVERSATION,
            &[7; 100],
        )
        .unwrap();
        assert_eq!(sealed.ciphertext.len(), 100 + V2_OVERHEAD);
    }

    #[test]
    fn a_sealed_message_has_the_requested_size_and_opens_on_both_sides_with_its_send_time() {
        let stats = Stats::new();
        let pair = pair();
        for bytes in [MIN_SEALED_BYTES, 256, 4096] {
            let template = Template::new(PayloadMode::Sealed, bytes).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            let before = stats.micros(Instant::now());
            let request = template.request(&stats, &pair, Instant::now()).unwrap();
            assert_eq!(request.encrypted_payload.len(), bytes);
            assert_eq!(request.nonce.len(), 24);
            assert_eq!(request.ephemeral_pubkey.len(), 32);
            let m = pushed(&pair, &request);
            for recipient in [true, false] {
                let sent_us = open_stamp(&pair.keys, recipient, &m, &stats).unwrap();
                assert!(sent_us >= before && sent_us <= stats.micros(Instant::now()));
            }
        }
        assert_eq!(stats.sealed.get(), 3);
        assert_eq!(stats.opened.get(), 6);
        assert!(stats.seal_time.get() > Duration::ZERO);
        assert!(stats.open_time.get() > Duration::ZERO);
    }

    #[test]
    fn a_payload_too_small_to_seal_is_refused_naming_the_minimum() {
        let e = Template::new(PayloadMode::Sealed, MIN_SEALED_BYTES - 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--payload-bytes 56") && e.contains("57"), "{e}");
        assert!(e.contains("--payload random"), "{e}");
        // Random payloads keep their old floor.
        assert!(Template::new(PayloadMode::Random, 1).is_ok());
    }

    #[test]
    fn what_was_not_sealed_by_the_pairs_sender_for_this_conversation_does_not_open() {
        let stats = Stats::new();
        let pair = pair();
        let template = Template::new(PayloadMode::Sealed, 256).unwrap();
        let good = pushed(
            &pair,
            &template.request(&stats, &pair, Instant::now()).unwrap(),
        );

        let mut flipped = good.clone();
        let mut bytes = flipped.encrypted_payload.to_vec();
        bytes[100] ^= 1;
        flipped.encrypted_payload = bytes.into();

        let mut moved = good.clone();
        moved.conversation_id = "00000000-0000-4000-8000-000000000000".into();

        let mut misattributed = good.clone();
        misattributed.sender_pubkey = pair.keys.recipient.public_key_hex();

        // Sealed by a third identity but attributed to the sender: a forgery.
        let forger = Identity::generate();
        let forged =
            crypto::seal(&forger, &pair.keys.recipient_x25519, CONVERSATION, &[0; 64]).unwrap();
        let mut forgery = good.clone();
        forgery.encrypted_payload = forged.ciphertext.into();
        forgery.nonce = Bytes::copy_from_slice(&forged.nonce);
        forgery.ephemeral_pubkey = Bytes::copy_from_slice(&forged.ephemeral_pubkey);

        let random = Template::new(PayloadMode::Random, 256).unwrap();
        let noise = pushed(
            &pair,
            &random.request(&stats, &pair, Instant::now()).unwrap(),
        );

        for (what, m) in [
            ("a flipped bit", &flipped),
            ("another conversation", &moved),
            ("another sender", &misattributed),
            ("a forgery", &forgery),
            ("random bytes", &noise),
        ] {
            for recipient in [true, false] {
                assert!(
                    open_stamp(&pair.keys, recipient, m, &stats).is_err(),
                    "{what} opened (recipient: {recipient})"
                );
            }
        }
        assert_eq!(stats.opened.get(), 0);
    }

    #[test]
    fn a_random_payload_is_the_requested_size_and_starts_with_the_send_time() {
        let stats = Stats::new();
        let pair = pair();
        std::thread::sleep(Duration::from_millis(2));
        let template = Template::new(PayloadMode::Random, 300).unwrap();
        let before = stats.micros(Instant::now());
        let request = template.request(&stats, &pair, Instant::now()).unwrap();
        assert_eq!(request.encrypted_payload.len(), 300);
        let sent_us = stamp(&request.encrypted_payload);
        assert!(sent_us >= before && sent_us <= stats.micros(Instant::now()));
        assert_eq!(stats.sealed.get(), 0);
    }
}
