//! The traffic of a load run: senders that keep a window of sends in flight
//! (optionally paced to a total rate), and one receiver per session that
//! checks every push as it arrives.
//!
//! Every payload starts with the send time (µs since the run began, little
//! endian), so a receiver measures end-to-end latency without any lookup.
//! The rest of the payload is random bytes: the hub cannot tell them from
//! ciphertext, and sealing each message would make the generator, not the
//! hub, the bottleneck.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand_core::{OsRng, RngCore};
use tokio::sync::Semaphore;

use crate::client::{send_body, ClientError, Events, HubClient, Incoming, WsClient};
use crate::proto::{dm, Payload};

/// How a sender sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Ws,
    Http,
}

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
    pub latency_us: RefCell<Histogram<u64>>,
    pub samples: RefCell<Vec<String>>,
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
            // 1 µs to 60 s, 3 significant digits.
            latency_us: RefCell::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ),
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

/// One active conversation and what its sender had accepted.
pub struct Pair {
    pub index: usize,
    pub conversation: String,
    /// `accepted[seq]` is set once the hub answered that sequence.
    accepted: RefCell<Vec<bool>>,
    pub accepted_count: Cell<u64>,
    pub duplicate_answers: Cell<u64>,
}

impl Pair {
    pub fn new(index: usize, conversation: String) -> Self {
        Pair {
            index,
            conversation,
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

/// Reads one session's events until the socket closes or the run ends.
pub async fn receive(
    mut events: Events,
    check: Rc<SessionCheck>,
    stats: Rc<Stats>,
    done: Rc<Cell<bool>>,
) {
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
                if !done.get() {
                    stats.anomaly(format!("a session was closed by the hub ({code:?})"));
                }
                return;
            }
        };
        let Some(Payload::DmMessageEvent(event)) = envelope.payload else {
            continue;
        };
        let Some(m) = event.message else { continue };
        let now = Instant::now();
        let Some(pair) = &check.pair else {
            stats.anomaly("an idle session received a message".into());
            continue;
        };
        if m.conversation_id != pair.conversation {
            stats.anomaly(format!(
                "pair {} received another conversation's message",
                pair.index
            ));
            continue;
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
        let sent_us = m
            .encrypted_payload
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .unwrap_or(0);
        if stats.measuring() {
            stats
                .delivered_measured
                .set(stats.delivered_measured.get() + 1);
        }
        if check.recipient && stats.sent_in_window(sent_us) {
            let latency = stats.micros(now).saturating_sub(sent_us).max(1);
            let _ = stats.latency_us.borrow_mut().record(latency);
        }
    }
}

/// Spaces sends evenly to reach a total rate.
pub struct Pacer {
    interval: Duration,
    next: Cell<Instant>,
}

impl Pacer {
    pub fn new(rate_per_sec: u64) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rate_per_sec as f64),
            next: Cell::new(Instant::now()),
        }
    }

    async fn slot(&self) {
        let now = Instant::now();
        let at = self.next.get().max(now);
        self.next.set(at + self.interval);
        if at > now {
            actix_web::rt::time::sleep_until(at.into()).await;
        }
    }
}

/// The bytes every message shares (only the time prefix changes).
#[derive(Clone)]
pub struct Template {
    payload: Vec<u8>,
    nonce: Bytes,
    ephemeral: Bytes,
}

impl Template {
    pub fn new(payload_bytes: usize) -> Self {
        let mut payload = vec![0u8; payload_bytes.max(16)];
        OsRng.fill_bytes(&mut payload);
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let mut ephemeral = [0u8; 32];
        OsRng.fill_bytes(&mut ephemeral);
        Template {
            payload,
            nonce: Bytes::copy_from_slice(&nonce),
            ephemeral: Bytes::copy_from_slice(&ephemeral),
        }
    }

    fn request(&self, stats: &Stats, conversation: &str) -> dm::DmSendRequest {
        let mut payload = self.payload.clone();
        payload[..8].copy_from_slice(&stats.micros(Instant::now()).to_le_bytes());
        dm::DmSendRequest {
            id: uuid::Uuid::new_v4().to_string(),
            conversation_id: conversation.to_owned(),
            encrypted_payload: payload.into(),
            nonce: self.nonce.clone(),
            ephemeral_pubkey: self.ephemeral.clone(),
            timestamp: crate::model::now_ms(),
        }
    }
}

/// The transport of one sender.
pub enum Sender {
    Ws(Rc<WsClient>),
    Http(HubClient),
}

impl Sender {
    async fn send(&self, request: dm::DmSendRequest) -> Result<u64, ClientError> {
        match self {
            Sender::Ws(ws) => match ws.call(Payload::DmSendRequest(request)).await? {
                Payload::DmSendResponse(r) => Ok(r.message.map_or(0, |m| m.server_sequence)),
                other => Err(ClientError::Decode(format!("unexpected answer {other:?}"))),
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
        if let Some(pacer) = &pacer {
            pacer.slot().await;
        }
        if !stats.sending.get() {
            return;
        }
        let request = template.request(&stats, &pair.conversation);
        let (pair, sender, stats) = (pair.clone(), sender.clone(), stats.clone());
        stats.in_flight.set(stats.in_flight.get() + 1);
        actix_web::rt::spawn(async move {
            let measuring = stats.measuring();
            match sender.send(request).await {
                Ok(seq) => {
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
