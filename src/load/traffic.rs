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
//!
//! Why it is this long: the senders, the pacer and both payload modes, with
//! their tests.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand_core::{OsRng, RngCore};
use tokio::sync::Semaphore;

use crate::client::crypto::{self, CryptoError, Identity};
use crate::client::{send_body, ClientError, HubClient, WsClient};
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
pub(crate) const STAMP: usize = 8;
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
    /// When the measurement began, on the wall clock (ms since the epoch),
    /// to line its seconds up with events outside the run.
    pub measure_from_unix_ms: Cell<Option<u64>>,
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
            measure_from_unix_ms: Cell::new(None),
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

    pub(crate) fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_micros() as u64
    }

    pub fn start_measuring(&self) {
        self.measure_from.set(Some(Instant::now()));
        self.measure_from_unix_ms.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64),
        );
    }

    pub fn stop_measuring(&self) {
        self.measure_until.set(Some(Instant::now()));
    }

    /// True while the measurement window is open.
    pub(crate) fn measuring(&self) -> bool {
        self.measure_from.get().is_some() && self.measure_until.get().is_none()
    }

    /// True if a message sent at `sent_us` was sent inside the window.
    pub(crate) fn sent_in_window(&self, sent_us: u64) -> bool {
        let from = self.measure_from.get().map(|t| self.micros(t));
        let until = self.measure_until.get().map(|t| self.micros(t));
        from.is_some_and(|f| sent_us >= f) && until.is_none_or(|u| sent_us < u)
    }

    /// Records a push's latency, overall and in its second of the run.
    pub(crate) fn record_push(&self, sent_us: u64, latency_us: u64) {
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

    pub(crate) fn anomaly(&self, what: String) {
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
    pub(crate) recipient_x25519: [u8; 32],
    pub(crate) sender_pubkey: [u8; 32],
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
    pub(crate) fn request(
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
                let tried = at.get();
                let attempt = client.borrow().clone();
                match Sender::Http(attempt).send(request.clone()).await {
                    Err(e)
                        if !done.get()
                            && (matches!(e, ClientError::Transport(_))
                                || e.status() == Some(503)) =>
                    {
                        // The sends in flight fail together: the first to
                        // fail moves everyone on, once, not back round to
                        // the node that is down.
                        if at.get() == tried {
                            at.set((tried + 1) % urls.len());
                            client.borrow_mut().switch_to(urls[at.get()].clone());
                        }
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
}
