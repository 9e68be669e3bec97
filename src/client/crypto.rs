//! End-to-end encryption for clients. The hub never runs this: it only sees
//! the ciphertext, nonce and ephemeral key. `docs/encryption.md` gives the
//! exact scheme; libsodium-made vectors in `tests/vectors/` keep it honest.
//!
//! Scheme `united-hub dm v1`, for a message to a recipient whose published
//! X25519 key is `R`:
//! 1. a fresh ephemeral X25519 key pair `(e, E)` per message;
//! 2. `shared = X25519(e, R)` (refused if all zero);
//! 3. `key = HKDF-SHA256(ikm = shared, salt = E || R, info = "united-hub dm v1")`, 32 bytes;
//! 4. a random 24-byte nonce;
//! 5. `ciphertext = XChaCha20-Poly1305(key, nonce, plaintext, aad)` with
//!    `aad = "united-hub dm v1" || conversation_id (36 ASCII bytes) || sender Ed25519 pubkey (32 bytes)`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256, Sha512};
use x25519_dalek::{PublicKey, StaticSecret};

/// The scheme's name: HKDF info and the first bytes of the associated data.
pub const SCHEME: &[u8] = b"united-hub dm v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("not a valid Ed25519 public key")]
    BadPublicKey,
    #[error("the shared secret is all zero (small-order key)")]
    WeakKey,
    #[error("the message does not decrypt (wrong key, or tampered)")]
    Decrypt,
    #[error("the message has no ephemeral key")]
    NoEphemeralKey,
}

/// An Ed25519 identity.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", &self.public_key_hex()[..8])
    }
}

impl Identity {
    pub fn generate() -> Self {
        Identity {
            signing: SigningKey::generate(&mut OsRng),
        }
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Identity {
            signing: SigningKey::from_bytes(seed),
        }
    }

    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The identity as the hub names it: 64 lower-case hex characters.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// Signs `united-hub auth v1\n || challenge` for login.
    pub fn sign_login(&self, challenge: &[u8; 32]) -> [u8; 64] {
        self.signing
            .sign(&crate::auth::login_message(challenge))
            .to_bytes()
    }

    /// libsodium's `crypto_sign_ed25519_sk_to_curve25519`: the clamped first
    /// half of SHA-512(seed).
    pub fn x25519_secret(&self) -> [u8; 32] {
        ed25519_seed_to_x25519(&self.seed())
    }

    /// The X25519 key to publish: libsodium's `crypto_sign_ed25519_pk_to_curve25519`.
    pub fn x25519_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_montgomery().to_bytes()
    }
}

/// libsodium's `crypto_sign_ed25519_sk_to_curve25519`, from the 32-byte seed.
pub fn ed25519_seed_to_x25519(seed: &[u8; 32]) -> [u8; 32] {
    let hash = Sha512::digest(seed);
    let mut out = [0u8; 32];
    out.copy_from_slice(&hash[..32]);
    out[0] &= 248;
    out[31] &= 127;
    out[31] |= 64;
    out
}

/// libsodium's `crypto_sign_ed25519_pk_to_curve25519`.
pub fn ed25519_pk_to_x25519(pk: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    let key = VerifyingKey::from_bytes(pk).map_err(|_| CryptoError::BadPublicKey)?;
    Ok(key.to_montgomery().to_bytes())
}

/// A sealed message: the three fields the hub stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: [u8; 24],
    pub ephemeral_pubkey: [u8; 32],
}

fn message_key(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<[u8; 32], CryptoError> {
    if shared.iter().all(|b| *b == 0) {
        return Err(CryptoError::WeakKey);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand(SCHEME, &mut key)
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        .expect("HKDF output length is valid");
    Ok(key)
}

/// The associated data that binds a ciphertext to its conversation and sender.
pub fn associated_data(conversation_id: &str, sender_pubkey: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SCHEME.len() + conversation_id.len() + 32);
    aad.extend_from_slice(SCHEME);
    aad.extend_from_slice(conversation_id.as_bytes());
    aad.extend_from_slice(sender_pubkey);
    aad
}

/// Seals with caller-chosen randomness (for test vectors).
pub fn seal_with(
    plaintext: &[u8],
    recipient_x25519: &[u8; 32],
    conversation_id: &str,
    sender_pubkey: &[u8; 32],
    ephemeral_secret: [u8; 32],
    nonce: [u8; 24],
) -> Result<Sealed, CryptoError> {
    let secret = StaticSecret::from(ephemeral_secret);
    let ephemeral_pubkey = PublicKey::from(&secret).to_bytes();
    let shared = secret
        .diffie_hellman(&PublicKey::from(*recipient_x25519))
        .to_bytes();
    let key = message_key(&shared, &ephemeral_pubkey, recipient_x25519)?;
    let aad = associated_data(conversation_id, sender_pubkey);
    let ciphertext = XChaCha20Poly1305::new(&key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(Sealed {
        ciphertext,
        nonce,
        ephemeral_pubkey,
    })
}

/// Seals `plaintext` for the holder of `recipient_x25519`, with a fresh
/// ephemeral key and a random nonce.
pub fn seal(
    plaintext: &[u8],
    recipient_x25519: &[u8; 32],
    conversation_id: &str,
    sender_pubkey: &[u8; 32],
) -> Result<Sealed, CryptoError> {
    let mut ephemeral = [0u8; 32];
    OsRng.fill_bytes(&mut ephemeral);
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    seal_with(
        plaintext,
        recipient_x25519,
        conversation_id,
        sender_pubkey,
        ephemeral,
        nonce,
    )
}

/// Opens a message sealed for `recipient_x25519_secret`.
pub fn open(
    sealed: &Sealed,
    recipient_x25519_secret: &[u8; 32],
    conversation_id: &str,
    sender_pubkey: &[u8; 32],
) -> Result<Vec<u8>, CryptoError> {
    let secret = StaticSecret::from(*recipient_x25519_secret);
    let recipient = PublicKey::from(&secret).to_bytes();
    let shared = secret
        .diffie_hellman(&PublicKey::from(sealed.ephemeral_pubkey))
        .to_bytes();
    let key = message_key(&shared, &sealed.ephemeral_pubkey, &recipient)?;
    let aad = associated_data(conversation_id, sender_pubkey);
    XChaCha20Poly1305::new(&key.into())
        .decrypt(
            XNonce::from_slice(&sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let conv = "6f1c1f34-3b39-4a36-9d55-0d8c64d6f0a1";
        let sealed = seal(b"hi bob", &bob.x25519_public(), conv, &alice.public_key()).unwrap();
        let opened = open(&sealed, &bob.x25519_secret(), conv, &alice.public_key()).unwrap();
        assert_eq!(opened, b"hi bob");
        // Bound to the conversation and the sender.
        let other = "00000000-0000-4000-8000-000000000000";
        assert_eq!(
            open(&sealed, &bob.x25519_secret(), other, &alice.public_key()),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            open(&sealed, &bob.x25519_secret(), conv, &bob.public_key()),
            Err(CryptoError::Decrypt)
        );
        // Only Bob opens it.
        assert!(open(&sealed, &alice.x25519_secret(), conv, &alice.public_key()).is_err());
    }

    #[test]
    fn converted_keys_agree() {
        let id = Identity::generate();
        let public = PublicKey::from(&StaticSecret::from(id.x25519_secret())).to_bytes();
        assert_eq!(public, id.x25519_public());
        assert_eq!(ed25519_pk_to_x25519(&id.public_key()).unwrap(), public);
    }
}
