//! Domain types shared by storage, actors and both transports.
//!
//! They are plain data: parsing from the wire lives in `http` and
//! `actors::session`, conversion to protobuf in `proto` (`From` impls and
//! the event encoders), next to the protobuf types.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

/// Why client input was refused. The domain's own error: the boundary turns
/// it into `HubError` (400 `invalid_request` or 413 `payload_too_large`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
}

impl InputError {
    fn invalid(msg: impl Into<String>) -> Self {
        InputError::Invalid(msg.into())
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An identity: an Ed25519 public key as 64 lower-case hex characters.
///
/// Shared, not copied: a session, its registry entries and every message
/// of a send hold the same key, so a clone is a reference count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pubkey(std::sync::Arc<str>);

impl Pubkey {
    /// Parses hex of 32 bytes, accepting upper case and normalising to lower.
    pub fn parse(s: &str) -> Result<Self, InputError> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InputError::invalid("a public key is 64 hex characters"));
        }
        Ok(Pubkey(s.to_ascii_lowercase().into()))
    }

    /// Wraps a value read back from our own database.
    pub fn from_db(s: String) -> Self {
        Pubkey(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // The string was validated as 64 hex characters on construction.
        hex::decode_to_slice(self.0.as_bytes(), &mut out).expect("pubkey is valid hex");
        out
    }
}

/// Lets maps keyed by `Pubkey` be asked with the key's text (its hash is
/// the text's), without parsing it into a `Pubkey` first.
impl std::borrow::Borrow<str> for Pubkey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Pubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form: enough to tell users apart in logs.
        write!(f, "Pubkey({}…)", &self.0[..8.min(self.0.len())])
    }
}

/// Parses a UUID, with a 400 that names the field.
pub fn parse_uuid(s: &str, field: &str) -> Result<Uuid, InputError> {
    Uuid::parse_str(s).map_err(|_| InputError::invalid(format!("{field} is not a UUID")))
}

/// Validates a display name: 1 to 64 characters after trimming, no controls.
pub fn parse_display_name(s: &str) -> Result<String, InputError> {
    let name = s.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 64 {
        return Err(InputError::invalid(
            "display_name must be 1 to 64 characters after trimming",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(InputError::invalid(
            "display_name must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub public_key: Pubkey,
    pub display_name: String,
}

/// A published X25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmKey {
    pub ed25519_pubkey: Pubkey,
    pub x25519_pubkey: [u8; 32],
    pub published_at: u64,
}

/// A conversation as clients see it, display names included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub id: Uuid,
    pub participant_a: Pubkey,
    pub participant_b: Pubkey,
    pub participant_a_display_name: String,
    pub participant_b_display_name: String,
    pub created_at: u64,
    /// 0 when the conversation has no message yet.
    pub last_message_at: u64,
}

impl Conversation {
    pub fn has_participant(&self, user: &Pubkey) -> bool {
        &self.participant_a == user || &self.participant_b == user
    }
}

/// A message as stored: ciphertext the hub never reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub sender: Pubkey,
    pub encrypted_payload: Bytes,
    pub nonce: [u8; 24],
    pub ephemeral_pubkey: Option<[u8; 32]>,
    pub timestamp: u64,
    pub server_sequence: u64,
    pub sender_display_name: String,
    /// Server time of acceptance, Unix ms.
    pub created_at: u64,
}

impl StoredMessage {
    /// True when `new` is a resend of this message (same id): the rule of the
    /// contract's idempotency section.
    pub fn same_content(&self, new: &NewMessage, sender: &Pubkey) -> bool {
        &self.sender == sender
            && self.conversation_id == new.conversation_id
            && self.encrypted_payload == new.encrypted_payload
            && self.nonce == new.nonce
            && self.ephemeral_pubkey == new.ephemeral_pubkey
            && self.timestamp == new.timestamp
    }

    /// The same rule between two stored forms (a resend met at commit).
    pub fn same_as(&self, other: &StoredMessage) -> bool {
        self.sender == other.sender
            && self.conversation_id == other.conversation_id
            && self.encrypted_payload == other.encrypted_payload
            && self.nonce == other.nonce
            && self.ephemeral_pubkey == other.ephemeral_pubkey
            && self.timestamp == other.timestamp
    }
}

/// A validated send request, the same for HTTP and WebSocket.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: Option<Uuid>,
    pub conversation_id: Uuid,
    pub encrypted_payload: Bytes,
    pub nonce: [u8; 24],
    pub ephemeral_pubkey: Option<[u8; 32]>,
    pub timestamp: u64,
}

impl NewMessage {
    /// Checks the contract's shape rules on already-decoded bytes.
    pub fn validate(
        id: Option<&str>,
        conversation_id: &str,
        encrypted_payload: Bytes,
        nonce: &[u8],
        ephemeral_pubkey: Option<&[u8]>,
        timestamp: u64,
        max_payload_bytes: usize,
    ) -> Result<Self, InputError> {
        let id = match id {
            Some(id) => Some(parse_uuid(id, "id")?),
            None => None,
        };
        let conversation_id = parse_uuid(conversation_id, "conversation_id")?;
        if encrypted_payload.is_empty() {
            return Err(InputError::invalid("encrypted_payload is empty"));
        }
        if encrypted_payload.len() > max_payload_bytes {
            return Err(InputError::TooLarge(format!(
                "encrypted_payload is over {max_payload_bytes} bytes"
            )));
        }
        let nonce: [u8; 24] = nonce
            .try_into()
            .map_err(|_| InputError::invalid("nonce must be 24 bytes"))?;
        let ephemeral_pubkey = match ephemeral_pubkey {
            Some(k) => Some(
                <[u8; 32]>::try_from(k)
                    .map_err(|_| InputError::invalid("ephemeral_pubkey must be 32 bytes"))?,
            ),
            None => None,
        };
        if timestamp == 0 || timestamp > i64::MAX as u64 {
            return Err(InputError::invalid(
                "timestamp must be a positive Unix time in milliseconds",
            ));
        }
        Ok(NewMessage {
            id,
            conversation_id,
            encrypted_payload,
            nonce,
            ephemeral_pubkey,
            timestamp,
        })
    }
}

/// Which page of a conversation's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryPage {
    /// Newest first, `server_sequence < before` (`None`: from the newest).
    Before(Option<u64>),
    /// Oldest first, `server_sequence > after`.
    After(u64),
}

pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
pub const MAX_HISTORY_LIMIT: u32 = 100;

#[derive(Clone, Debug)]
pub struct History {
    pub messages: Vec<StoredMessage>,
    pub has_more: bool,
}

/// Most offline entries one fetch returns, and its default.
pub const MAX_OFFLINE_LIMIT: u32 = 1000;

/// What one message may take in an answer page besides its ciphertext's
/// base64: ids, keys, nonce, name, numbers and JSON field names (about 600
/// bytes at most), generously. Protobuf takes less than JSON for the same
/// message, so one estimate bounds both transports.
pub const PAGE_MESSAGE_OVERHEAD: usize = 1024;

/// The most bytes one history or offline page may encode to (contract §8).
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The most a page's messages may add up to by [`page_bytes`]: a page's
/// encoded body stays below [`MAX_PAGE_BYTES`] with room for its envelope.
pub const PAGE_BODY_BYTES: usize = MAX_PAGE_BYTES - 4096;

/// The most bytes a message with `payload_len` bytes of ciphertext takes in
/// a JSON or protobuf page.
pub fn page_bytes(payload_len: usize) -> usize {
    payload_len.div_ceil(3) * 4 + PAGE_MESSAGE_OVERHEAD
}

/// Takes rows for a page, in page order, until `limit` rows or
/// [`PAGE_BODY_BYTES`] (the first row always fits); says whether a row was
/// left over. Give it one row more than `limit` so `has_more` is exact.
pub fn take_page<T, E>(
    rows: impl IntoIterator<Item = Result<T, E>>,
    limit: u32,
    payload_len: impl Fn(&T) -> usize,
) -> Result<(Vec<T>, bool), E> {
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let row = row?;
        let size = page_bytes(payload_len(&row));
        if page.len() >= limit as usize || (!page.is_empty() && bytes + size > PAGE_BODY_BYTES) {
            return Ok((page, true));
        }
        bytes += size;
        page.push(row);
    }
    Ok((page, false))
}

/// One page of a user's offline queue, now marked delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfflinePage {
    /// Oldest first, in the order the hub accepted them.
    pub messages: Vec<StoredMessage>,
    /// Undelivered entries remain after this page.
    pub has_more: bool,
}

/// X25519 points of small order (libsodium's blocklist). A key equal to any
/// of them, with the top bit clear or set, gives a predictable shared secret.
const SMALL_ORDER_POINTS: [[u8; 32]; 7] = [
    // 0 (order 4)
    [0; 32],
    // 1 (order 1)
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    // 325606250916557431795983626356110631294008115727848805560023387167927233504 (order 8)
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    // 39382357235489614581723060781553021112529911719440698176882885853963445705823 (order 8)
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    // p - 1 (order 2)
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // p (=0, order 4)
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // p + 1 (=1, order 1)
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// True for the zero key and every other small-order X25519 point, in both
/// settings of the top bit (which X25519 ignores).
pub fn is_small_order_x25519(key: &[u8; 32]) -> bool {
    let mut masked = *key;
    masked[31] &= 0x7f;
    SMALL_ORDER_POINTS.contains(&masked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubkey_is_normalised_to_lower_case() {
        let upper = "AB".repeat(32);
        assert_eq!(Pubkey::parse(&upper).unwrap().as_str(), "ab".repeat(32));
        assert!(Pubkey::parse("abc").is_err());
        assert!(Pubkey::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_map_of_pubkeys_answers_to_the_key_text() {
        let key = Pubkey::parse(&"ab".repeat(32)).unwrap();
        let map: std::collections::HashMap<Pubkey, u8> = [(key.clone(), 1)].into();
        assert_eq!(map.get(key.as_str()), Some(&1));
        assert_eq!(map.get("cd".repeat(32).as_str()), None);
    }

    #[test]
    fn display_names_are_trimmed_and_counted_in_characters() {
        assert_eq!(parse_display_name("  Ada ").unwrap(), "Ada");
        assert!(parse_display_name("   ").is_err());
        assert!(parse_display_name("a\u{7}b").is_err());
        assert!(parse_display_name(&"é".repeat(64)).is_ok());
        assert!(parse_display_name(&"é".repeat(65)).is_err());
    }

    #[test]
    fn small_order_points_are_refused_with_either_top_bit() {
        for p in SMALL_ORDER_POINTS {
            assert!(is_small_order_x25519(&p));
            let mut high = p;
            high[31] |= 0x80;
            assert!(is_small_order_x25519(&high));
        }
        let mut ok = [9u8; 32];
        ok[0] = 9;
        assert!(!is_small_order_x25519(&ok));
    }
}
