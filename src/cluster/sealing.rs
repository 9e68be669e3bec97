//! The bus's trust boundary (contract §8): every message a node publishes on
//! NATS is sealed with a key derived from the cluster's shared secret (the
//! `--jwt-secret-file` every node is given), and a node acts on no message
//! that fails the check.
//!
//! A sealed message is a `BusFrame` (`proto/cluster.proto`): the payload
//! (`ClusterEvents` or `Presence`), the sending node's id (random at each
//! start), a counter that rises with every message the node publishes, the
//! time it was sent, and an HMAC-SHA256 over the subject and all of those.
//! The key is HKDF-SHA256 of the shared secret with its own label, so it is
//! never the JWT key itself.
//!
//! Replays are refused two ways. A frame older than [`FRESHNESS`] (by the
//! receiver's clock, so nodes' clocks must agree to within it) is stale.
//! Within that window, NATS delivers one publisher's messages on one
//! subscription in the order they were published, and the counter rises
//! with each: a frame whose counter is not above the last one seen from its
//! node on its subject is a replay. What is left: a frame replayed within
//! [`FRESHNESS`] on a (node, subject) pair the receiver had not heard from
//! before, that is within its first seconds of hearing that node (after
//! either of them started); see docs/security.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;

use crate::proto::cluster::BusFrame;

/// The HKDF label of the bus key: never the JWT key, never another key.
const LABEL: &[u8] = b"united-hub bus v1";

/// How old a frame may be when it arrives.
pub const FRESHNESS: Duration = Duration::from_secs(30);

/// How long a receiver remembers a (node, subject) pair it has not heard
/// from since: past [`FRESHNESS`], any replay of it would be stale anyway.
const FORGET_AFTER: Duration = Duration::from_secs(120);

type HmacSha256 = Hmac<Sha256>;

/// Why a frame was dropped: the label of `united_cluster_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Not a `BusFrame` at all.
    Malformed,
    /// The MAC does not match: not sealed with this cluster's secret, or
    /// changed on the way (subject included).
    BadMac,
    /// Sent more than [`FRESHNESS`] ago (or claims to come from the future).
    Stale,
    /// Its counter is not above the last one seen from its node on its
    /// subject.
    Replayed,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::BadMac => "bad_mac",
            Rejected::Stale => "stale",
            Rejected::Replayed => "replayed",
        }
    }
}

/// Seals what this node publishes and opens what it receives.
pub struct BusSeal {
    key: [u8; 32],
    node: String,
    /// The last counter this node used (the publisher task is the only
    /// caller of [`BusSeal::seal`], so frames leave in counter order).
    sent: Mutex<u64>,
    /// (node, subject) → the last counter accepted and when.
    seen: Mutex<HashMap<(String, String), (u64, Instant)>>,
    /// When `seen` was last pruned.
    pruned: Mutex<Instant>,
}

impl BusSeal {
    /// The seal of node `node` for the cluster whose shared secret is `secret`.
    pub fn new(secret: &[u8], node: String) -> Self {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, secret)
            .expand(LABEL, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        BusSeal {
            key,
            node,
            sent: Mutex::new(0),
            seen: Mutex::default(),
            pruned: Mutex::new(Instant::now()),
        }
    }

    fn mac(&self, subject: &str, frame: &BusFrame) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in [subject.as_bytes(), frame.node.as_bytes(), &frame.payload] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&frame.counter.to_be_bytes());
        mac.update(&frame.sent_at.to_be_bytes());
        mac
    }

    /// `payload` sealed for `subject`, ready to publish.
    pub fn seal(&self, subject: &str, payload: bytes::Bytes) -> bytes::Bytes {
        let counter = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            *sent += 1;
            *sent
        };
        let mut frame = BusFrame {
            payload,
            node: self.node.clone(),
            counter,
            sent_at: crate::model::now_ms(),
            mac: bytes::Bytes::new(),
        };
        frame.mac = self
            .mac(subject, &frame)
            .finalize()
            .into_bytes()
            .to_vec()
            .into();
        frame.encode_to_vec().into()
    }

    /// Opens a frame received on `subject`: its sender's node id and its
    /// payload, or why it must be dropped.
    /// Given `Bytes` (what NATS hands over), the payload returned shares
    /// them instead of being copied.
    pub fn open(
        &self,
        subject: &str,
        data: impl bytes::Buf,
    ) -> Result<(String, bytes::Bytes), Rejected> {
        let frame = BusFrame::decode(data).map_err(|_| Rejected::Malformed)?;
        self.mac(subject, &frame)
            .verify_slice(&frame.mac)
            .map_err(|_| Rejected::BadMac)?;
        let now = crate::model::now_ms();
        let fresh = FRESHNESS.as_millis() as u64;
        if frame.sent_at + fresh < now || frame.sent_at > now + fresh {
            return Err(Rejected::Stale);
        }
        self.prune();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (frame.node.clone(), subject.to_owned());
        match seen.get_mut(&key) {
            Some((last, _)) if frame.counter <= *last => return Err(Rejected::Replayed),
            Some(entry) => *entry = (frame.counter, Instant::now()),
            None => {
                seen.insert(key, (frame.counter, Instant::now()));
            }
        }
        Ok((frame.node, frame.payload))
    }

    /// Forgets pairs not heard from in [`FORGET_AFTER`], at most every 10 s.
    fn prune(&self) {
        let mut pruned = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
        if pruned.elapsed() < Duration::from_secs(10) {
            return;
        }
        *pruned = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-shared";

    #[test]
    fn a_sealed_frame_opens_once_on_its_subject_only() {
        let alice = BusSeal::new(SECRET, "node-a".into());
        let bob = BusSeal::new(SECRET, "node-b".into());
        let frame = alice.seal("united.user.x", bytes::Bytes::from_static(b"events"));
        let (node, payload) = bob.open("united.user.x", frame.clone()).unwrap();
        assert_eq!((node.as_str(), &payload[..]), ("node-a", &b"events"[..]));
        assert_eq!(
            bob.open("united.user.x", frame.clone()),
            Err(Rejected::Replayed)
        );
        // The subject is covered: the same frame on another subject is refused.
        let frame = alice.seal("united.user.x", bytes::Bytes::from_static(b"more"));
        assert_eq!(
            bob.open("united.user.y", frame.clone()),
            Err(Rejected::BadMac)
        );
        // Later frames of the same node and subject go through.
        let next = alice.seal("united.user.x", bytes::Bytes::from_static(b"next"));
        assert!(bob.open("united.user.x", next.clone()).is_ok());
    }

    #[test]
    fn frames_without_the_secret_or_changed_on_the_way_are_refused() {
        let mallory = BusSeal::new(b"another secret of at least 32 bytes!!", "node-a".into());
        let bob = BusSeal::new(SECRET, "node-b".into());
        let forged = mallory.seal("united.presence", bytes::Bytes::from_static(b"online"));
        assert_eq!(
            bob.open("united.presence", forged.clone()),
            Err(Rejected::BadMac)
        );
        assert_eq!(
            bob.open("united.presence", &b"\xff\xff"[..]),
            Err(Rejected::Malformed)
        );
        let alice = BusSeal::new(SECRET, "node-a".into());
        let mut frame =
            BusFrame::decode(&alice.seal("s", bytes::Bytes::from_static(b"p"))[..]).unwrap();
        frame.payload = bytes::Bytes::from_static(b"q");
        assert_eq!(
            bob.open("s", &frame.encode_to_vec()[..]),
            Err(Rejected::BadMac)
        );
    }

    #[test]
    fn an_old_frame_is_stale() {
        let alice = BusSeal::new(SECRET, "node-a".into());
        let bob = BusSeal::new(SECRET, "node-b".into());
        let mut frame = BusFrame {
            payload: bytes::Bytes::from_static(b"old"),
            node: "node-a".into(),
            counter: 1,
            sent_at: crate::model::now_ms() - FRESHNESS.as_millis() as u64 - 1000,
            mac: bytes::Bytes::new(),
        };
        frame.mac = alice
            .mac("s", &frame)
            .finalize()
            .into_bytes()
            .to_vec()
            .into();
        assert_eq!(
            bob.open("s", &frame.encode_to_vec()[..]),
            Err(Rejected::Stale)
        );
    }
}
