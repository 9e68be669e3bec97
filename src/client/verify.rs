//! What a client may trust: the key check before sealing, and what to show
//! of a message it received.
//!
//! [`crypto::open`](super::crypto::open) says whether a message opened and
//! how; [`read_json`] and [`read_proto`] turn that into the three things a
//! client shows differently, so that no caller can print the bytes of a
//! message that did not verify by accident.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::crypto::{self, CryptoError, Identity, Role, Scheme, Sealed};
use super::ClientError;
use crate::json::MessageJson;
use crate::model::Pubkey;
use crate::proto::dm::EncryptedDmMessage;

/// The key check: `published_x25519`, the key the hub hands out for
/// `peer_pubkey`, must be derived from that identity. The identity is what
/// the sender addresses, so a key the hub substituted is refused here,
/// before anything is sealed to it ([`ClientError::KeySubstituted`]).
pub fn check_peer_key(peer_pubkey: &str, published_x25519: &[u8; 32]) -> Result<(), ClientError> {
    let peer = Pubkey::parse(peer_pubkey).map_err(|_| CryptoError::BadPublicKey)?;
    match crypto::check_published_key(&peer.to_bytes(), published_x25519) {
        Ok(()) => Ok(()),
        Err(CryptoError::KeyMismatch) => Err(ClientError::KeySubstituted {
            peer: peer.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// What a client shows for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// `united-hub dm v2`: written by its `sender_pubkey` (or by us, its
    /// recipient, who could have made it too). [`Role::Sender`] means ours,
    /// from this device or another holding our identity.
    Verified { text: String, role: Role },
    /// `united-hub dm v1`: it decrypts, but only the hub says who wrote it.
    /// Show it marked as unauthenticated.
    Unauthenticated { text: String },
    /// It does not open: forged, tampered with, moved to another
    /// conversation or sender, or malformed. Show that it could not be
    /// verified, and nothing of its bytes.
    Unverifiable { reason: String },
}

impl Reading {
    /// The text, if the message verified (v2).
    pub fn verified_text(&self) -> Option<&str> {
        match self {
            Reading::Verified { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// Reads a message to or from `me`, in its JSON form (HTTP).
pub fn read_json(me: &Identity, m: &MessageJson) -> Reading {
    let fields = (|| {
        let ciphertext = B64.decode(&m.encrypted_payload).ok()?;
        let nonce = B64.decode(&m.nonce).ok()?;
        let ephemeral = B64.decode(m.ephemeral_pubkey.as_deref()?).ok()?;
        Some((ciphertext, nonce, ephemeral))
    })();
    match fields {
        Some((ciphertext, nonce, ephemeral)) => read_parts(
            me,
            ciphertext,
            &nonce,
            &ephemeral,
            &m.conversation_id,
            &m.sender_pubkey,
        ),
        None => malformed("bad base64 or no ephemeral key"),
    }
}

/// Reads a message of the conversation between `me` and `peer_pubkey`. One
/// sealed by anyone else (which only the hub could have put there) is
/// [`Reading::Unverifiable`], whether or not it opens: a third identity can
/// seal a v2 message to us that verifies as its own.
pub fn read_json_in(me: &Identity, m: &MessageJson, peer_pubkey: &str) -> Reading {
    if m.sender_pubkey != me.public_key_hex() && m.sender_pubkey != peer_pubkey {
        return Reading::Unverifiable {
            reason: "sealed by someone who is not in this conversation".into(),
        };
    }
    read_json(me, m)
}

/// Reads a message to or from `me`, in its protobuf form (WebSocket).
pub fn read_proto(me: &Identity, m: &EncryptedDmMessage) -> Reading {
    read_parts(
        me,
        m.encrypted_payload.to_vec(),
        &m.nonce,
        &m.ephemeral_pubkey,
        &m.conversation_id,
        &m.sender_pubkey,
    )
}

fn read_parts(
    me: &Identity,
    ciphertext: Vec<u8>,
    nonce: &[u8],
    ephemeral: &[u8],
    conversation_id: &str,
    sender_pubkey: &str,
) -> Reading {
    let (Ok(nonce), Ok(ephemeral_pubkey)) = (nonce.try_into(), ephemeral.try_into()) else {
        return malformed("the nonce or the ephemeral key has the wrong length");
    };
    let Ok(sender) = Pubkey::parse(sender_pubkey) else {
        return malformed("the sender is not a public key");
    };
    let sealed = Sealed {
        ciphertext,
        nonce,
        ephemeral_pubkey,
    };
    match crypto::open(me, &sealed, conversation_id, &sender.to_bytes()) {
        Ok(opened) => {
            let text = String::from_utf8_lossy(&opened.plaintext).into_owned();
            match opened.scheme {
                Scheme::V2 => Reading::Verified {
                    text,
                    role: opened.role,
                },
                Scheme::V1 => Reading::Unauthenticated { text },
            }
        }
        Err(e) => Reading::Unverifiable {
            reason: e.to_string(),
        },
    }
}

fn malformed(why: &str) -> Reading {
    Reading::Unverifiable {
        reason: format!("malformed: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_sealed_by_a_third_identity_is_not_shown_as_the_peers() {
        let (alice, bob, mallory) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let conversation = uuid::Uuid::new_v4().to_string();
        let sealed =
            crypto::seal(&mallory, &alice.x25519_public(), &conversation, b"trust me").unwrap();
        let m = MessageJson {
            id: uuid::Uuid::new_v4().to_string(),
            conversation_id: conversation.clone(),
            sender_pubkey: mallory.public_key_hex(),
            encrypted_payload: B64.encode(&sealed.ciphertext),
            nonce: B64.encode(sealed.nonce),
            ephemeral_pubkey: Some(B64.encode(sealed.ephemeral_pubkey)),
            timestamp: 1,
            server_sequence: 1,
            sender_display_name: "Bob".into(),
        };
        // It verifies as Mallory's own message...
        assert!(read_json(&alice, &m).verified_text().is_some());
        // ...so in Alice's conversation with Bob it is refused.
        let reading = read_json_in(&alice, &m, &bob.public_key_hex());
        assert!(
            matches!(reading, Reading::Unverifiable { .. }),
            "{reading:?}"
        );
        assert!(read_json_in(&alice, &m, &mallory.public_key_hex())
            .verified_text()
            .is_some());
    }
}
