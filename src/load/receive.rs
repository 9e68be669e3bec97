//! The receiving side of a load run: one reader per session that checks
//! every message it gets (its conversation, the next sequence, that it opens
//! from the pair's sender) and measures send → push from the time the
//! message carries; and, with `--rolling-restart`, the move of a session
//! its node closed to another node, with a catch-up from history.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::traffic::{Pair, PairKeys, PayloadMode, Stats, STAMP};
use crate::client::crypto::{self, Role, Scheme, Sealed};
use crate::client::{ClientError, Events, HubClient, Incoming, WsClient};
use crate::proto::{dm, Payload};

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
    mut failover: Option<(Rc<Failover>, usize)>,
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
                let Some((failover, node)) = &mut failover else {
                    stats.anomaly(format!("a session was closed by the hub ({code:?})"));
                    return;
                };
                stats.reconnects.set(stats.reconnects.get() + 1);
                let Some((mut ws, at)) = failover.reconnect(*node, &done).await else {
                    return;
                };
                // Where the session is now: the next close starts from here.
                *node = at;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::crypto::Identity;
    use bytes::Bytes;

    use crate::load::traffic::{Template, MIN_SEALED_BYTES};

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
