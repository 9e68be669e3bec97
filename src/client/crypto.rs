//! End-to-end encryption for clients. The hub never runs this: it only sees
//! the three opaque fields of a [`Sealed`] message. `docs/encryption.md` gives
//! the exact scheme; libsodium-made vectors in `tests/vectors/` keep it honest.
//!
//! Clients send `united-hub dm v2`, the authenticated mode of HPKE (RFC 9180
//! `AuthEncap`) with one addition: the ephemeral secret is derived from the
//! sender's own secret and the nonce, so every device holding the sender's
//! identity can open what it sent. From Alice (X25519 secret `a`, public `S`,
//! both derived from her Ed25519 seed) to Bob's published X25519 key `R`
//! (checked first with [`check_published_key`]) in conversation `C`:
//! 1. a random 24-byte nonce;
//! 2. `e = HKDF(ikm = a, salt = nonce, info = "united-hub dm v2 ephemeral")`, `E = X25519(e, 9)`;
//! 3. `dh1 = X25519(e, R)`, `dh2 = X25519(a, R)`;
//! 4. `key = HKDF(ikm = dh1 || dh2, salt = E || R || S, info = "united-hub dm v2")`;
//! 5. `ct = XChaCha20-Poly1305(key, nonce, plaintext, aad)` with
//!    `aad = "united-hub dm v2" || C (36 ASCII bytes) || Alice's Ed25519 key (32 bytes)`;
//! 6. `encrypted_payload = 0x02 || R || ct`, `ephemeral_pubkey = E`.
//!
//! Bob opens with `dh1 = X25519(b, E)`, `dh2 = X25519(b, S)`. Alice re-derives
//! `e` from `a` and the nonce, refuses unless `X25519(e, 9) == E`, and takes `R`
//! from the payload (Bob may have published another key since). Only Alice's or
//! Bob's secret makes a message that opens for Bob as "from Alice". HKDF is
//! HKDF-SHA256 with 32 bytes of output; an all-zero X25519 output (a
//! small-order key) stops the operation.
//!
//! `united-hub dm v1` (one ephemeral-static exchange, no version byte) is
//! read-only: [`open`] falls back to it and reports [`Scheme::V1`], which is
//! unauthenticated, since anyone (the hub included) can make a v1 message
//! "from" anyone.
//!
//! Why it is this long: the end-to-end scheme (v1 and v2) is one unit, with
//! its specification vectors as tests (172 lines).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256, Sha512};
use x25519_dalek::{PublicKey, StaticSecret};

/// v1's name: HKDF info and the first bytes of its associated data.
pub const SCHEME_V1: &[u8] = b"united-hub dm v1";
/// v2's name: HKDF info for the message key and the first bytes of its
/// associated data.
pub const SCHEME_V2: &[u8] = b"united-hub dm v2";
/// HKDF info for v2's per-message ephemeral secret.
const V2_EPHEMERAL_INFO: &[u8] = b"united-hub dm v2 ephemeral";
/// The first byte of a v2 `encrypted_payload`; v1 has no version byte.
const V2_VERSION: u8 = 0x02;
/// The Poly1305 tag that ends every ciphertext.
const TAG_LEN: usize = 16;

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
    #[error(
        "the hub's key for this identity is not derived from it: refusing to send \
         (possible key substitution)"
    )]
    KeyMismatch,
    #[error(
        "the message's ephemeral key is not derived from this identity and its nonce: \
         refusing to open it as our own"
    )]
    EphemeralMismatch,
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

/// The key check before sealing: the X25519 key the hub hands out for an
/// identity must be the one derived from that identity. The identity is what
/// the sender addresses, so a hub that substitutes a key of its own is caught
/// here instead of reading the message.
pub fn check_published_key(
    identity_pubkey: &[u8; 32],
    published_x25519: &[u8; 32],
) -> Result<(), CryptoError> {
    if ed25519_pk_to_x25519(identity_pubkey)? == *published_x25519 {
        Ok(())
    } else {
        Err(CryptoError::KeyMismatch)
    }
}

/// A sealed message: the three fields the hub stores. For v2, `ciphertext`
/// is the whole `encrypted_payload` (`0x02 || R || ct`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: [u8; 24],
    pub ephemeral_pubkey: [u8; 32],
}

/// Which scheme a message opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `united-hub dm v2`: the sender is authenticated.
    V2,
    /// `united-hub dm v1`: unauthenticated; the sender is only the hub's word.
    V1,
}

/// Whose side of the message we opened it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It was addressed to us.
    Recipient,
    /// We sent it (from this device or another with the same identity).
    Sender,
}

/// An opened message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub plaintext: Vec<u8>,
    pub scheme: Scheme,
    pub role: Role,
}

impl Opened {
    /// Whether the message provably comes from its `sender_pubkey` (or from
    /// the recipient, who could have made it too). False for v1, which a
    /// client should show as unverified.
    pub fn authenticated(&self) -> bool {
        self.scheme == Scheme::V2
    }
}

/// HKDF-SHA256 with 32 bytes of output.
fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        .expect("HKDF output length is valid");
    out
}

/// `crypto_scalarmult(scalar, point)`, refusing an all-zero (small-order) output.
fn x25519(scalar: &[u8; 32], point: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    let out = StaticSecret::from(*scalar)
        .diffie_hellman(&PublicKey::from(*point))
        .to_bytes();
    if out == [0u8; 32] {
        return Err(CryptoError::WeakKey);
    }
    Ok(out)
}

/// `crypto_scalarmult_base(scalar)`, checked like [`x25519`].
fn x25519_base(scalar: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    let out = PublicKey::from(&StaticSecret::from(*scalar)).to_bytes();
    if out == [0u8; 32] {
        return Err(CryptoError::WeakKey);
    }
    Ok(out)
}

/// The associated data that binds a ciphertext to its scheme, conversation
/// and sender.
fn associated_data(scheme: &[u8], conversation_id: &str, sender_pubkey: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(scheme.len() + conversation_id.len() + 32);
    aad.extend_from_slice(scheme);
    aad.extend_from_slice(conversation_id.as_bytes());
    aad.extend_from_slice(sender_pubkey);
    aad
}

fn aead_seal(
    key: &[u8; 32],
    nonce: &[u8; 24],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Only a plaintext over 256 GiB fails here.
        .map_err(|_| CryptoError::Decrypt)
}

fn aead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

/// v2's ephemeral secret: a function of the sender's X25519 secret and the
/// nonce, so any device with the identity can re-derive it.
fn v2_ephemeral_secret(x25519_secret: &[u8; 32], nonce: &[u8; 24]) -> [u8; 32] {
    hkdf32(x25519_secret, nonce, V2_EPHEMERAL_INFO)
}

/// v2's message key from both exchanges, bound to all three public keys.
fn v2_message_key(
    dh1: &[u8; 32],
    dh2: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    sender: &[u8; 32],
) -> [u8; 32] {
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(dh1);
    ikm[32..].copy_from_slice(dh2);
    let mut salt = [0u8; 96];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..64].copy_from_slice(recipient);
    salt[64..].copy_from_slice(sender);
    hkdf32(&ikm, &salt, SCHEME_V2)
}

/// Seals `plaintext` from `sender` to the holder of `recipient_x25519` in
/// `conversation_id` (`united-hub dm v2`, a random nonce). Check the
/// recipient's key with [`check_published_key`] first.
pub fn seal(
    sender: &Identity,
    recipient_x25519: &[u8; 32],
    conversation_id: &str,
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(sender, recipient_x25519, conversation_id, plaintext, nonce)
}

/// [`seal`] with a caller-chosen nonce, for test vectors. The nonce also
/// fixes the ephemeral key, so a nonce used twice with the same recipient
/// reuses the message key: never reuse one outside tests.
pub fn seal_with_nonce(
    sender: &Identity,
    recipient_x25519: &[u8; 32],
    conversation_id: &str,
    plaintext: &[u8],
    nonce: [u8; 24],
) -> Result<Sealed, CryptoError> {
    let secret = sender.x25519_secret();
    let ephemeral_secret = v2_ephemeral_secret(&secret, &nonce);
    let ephemeral_pubkey = x25519_base(&ephemeral_secret)?;
    let dh1 = x25519(&ephemeral_secret, recipient_x25519)?;
    let dh2 = x25519(&secret, recipient_x25519)?;
    let key = v2_message_key(
        &dh1,
        &dh2,
        &ephemeral_pubkey,
        recipient_x25519,
        &sender.x25519_public(),
    );
    let aad = associated_data(SCHEME_V2, conversation_id, &sender.public_key());
    let ct = aead_seal(&key, &nonce, plaintext, &aad)?;
    let mut ciphertext = Vec::with_capacity(1 + 32 + ct.len());
    ciphertext.push(V2_VERSION);
    ciphertext.extend_from_slice(recipient_x25519);
    ciphertext.extend_from_slice(&ct);
    Ok(Sealed {
        ciphertext,
        nonce,
        ephemeral_pubkey,
    })
}

/// Opens a message of `conversation_id` that the hub attributes to
/// `sender_pubkey`, whether `me` received it or sent it (from any device).
///
/// v2 first: as the sender when `sender_pubkey` is `me` (then as the
/// recipient too, for a message to oneself), otherwise as the recipient only,
/// since a message attributed to someone else cannot be ours to open as its
/// sender. If v2 does not open, v1 as the recipient, reported as
/// [`Scheme::V1`]. On failure, the first v2 error if the payload has v2's
/// shape, else v1's; show the message as unverifiable, never its bytes.
pub fn open(
    me: &Identity,
    sealed: &Sealed,
    conversation_id: &str,
    sender_pubkey: &[u8; 32],
) -> Result<Opened, CryptoError> {
    let mut v2_error = None;
    if let Some((recipient, ct)) = parse_v2(&sealed.ciphertext) {
        let roles: &[Role] = if *sender_pubkey == me.public_key() {
            &[Role::Sender, Role::Recipient]
        } else {
            &[Role::Recipient]
        };
        for &role in roles {
            match open_v2(
                me,
                role,
                sealed,
                recipient,
                ct,
                conversation_id,
                sender_pubkey,
            ) {
                Ok(plaintext) => {
                    return Ok(Opened {
                        plaintext,
                        scheme: Scheme::V2,
                        role,
                    })
                }
                Err(e) => {
                    v2_error.get_or_insert(e);
                }
            }
        }
    }
    match open_v1(sealed, &me.x25519_secret(), conversation_id, sender_pubkey) {
        Ok(plaintext) => Ok(Opened {
            plaintext,
            scheme: Scheme::V1,
            role: Role::Recipient,
        }),
        Err(e) => Err(v2_error.unwrap_or(e)),
    }
}

/// Splits a v2 payload into the recipient's key `R` and `ct`, or `None` if
/// it does not have v2's shape.
fn parse_v2(payload: &[u8]) -> Option<(&[u8; 32], &[u8])> {
    if payload.len() < 1 + 32 + TAG_LEN || payload[0] != V2_VERSION {
        return None;
    }
    let recipient = payload[1..33].try_into().ok()?;
    Some((recipient, &payload[33..]))
}

/// One v2 attempt, from one side.
fn open_v2(
    me: &Identity,
    role: Role,
    sealed: &Sealed,
    recipient: &[u8; 32],
    ct: &[u8],
    conversation_id: &str,
    sender_pubkey: &[u8; 32],
) -> Result<Vec<u8>, CryptoError> {
    let secret = me.x25519_secret();
    let sender = ed25519_pk_to_x25519(sender_pubkey)?;
    let ephemeral = &sealed.ephemeral_pubkey;
    let (dh1, dh2) = match role {
        Role::Recipient => {
            // Sealed to another key (another identity's): not ours to open.
            if *recipient != me.x25519_public() {
                return Err(CryptoError::Decrypt);
            }
            (x25519(&secret, ephemeral)?, x25519(&secret, &sender)?)
        }
        Role::Sender => {
            let ephemeral_secret = v2_ephemeral_secret(&secret, &sealed.nonce);
            if x25519_base(&ephemeral_secret)? != *ephemeral {
                return Err(CryptoError::EphemeralMismatch);
            }
            (
                x25519(&ephemeral_secret, recipient)?,
                x25519(&secret, recipient)?,
            )
        }
    };
    let key = v2_message_key(&dh1, &dh2, ephemeral, recipient, &sender);
    let aad = associated_data(SCHEME_V2, conversation_id, sender_pubkey);
    aead_open(&key, &sealed.nonce, ct, &aad)
}

/// v1's message key.
fn v1_message_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> [u8; 32] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    hkdf32(shared, &salt, SCHEME_V1)
}

/// Seals a `united-hub dm v1` message with caller-chosen randomness. Only
/// for tests that need v1 messages: clients never send v1, which does not
/// authenticate the sender and cannot be read back by it.
pub fn seal_v1_with(
    plaintext: &[u8],
    recipient_x25519: &[u8; 32],
    conversation_id: &str,
    sender_pubkey: &[u8; 32],
    ephemeral_secret: [u8; 32],
    nonce: [u8; 24],
) -> Result<Sealed, CryptoError> {
    let ephemeral_pubkey = PublicKey::from(&StaticSecret::from(ephemeral_secret)).to_bytes();
    let shared = x25519(&ephemeral_secret, recipient_x25519)?;
    let key = v1_message_key(&shared, &ephemeral_pubkey, recipient_x25519);
    let aad = associated_data(SCHEME_V1, conversation_id, sender_pubkey);
    Ok(Sealed {
        ciphertext: aead_seal(&key, &nonce, plaintext, &aad)?,
        nonce,
        ephemeral_pubkey,
    })
}

/// Opens a v1 message sealed for `recipient_x25519_secret`.
fn open_v1(
    sealed: &Sealed,
    recipient_x25519_secret: &[u8; 32],
    conversation_id: &str,
    sender_pubkey: &[u8; 32],
) -> Result<Vec<u8>, CryptoError> {
    let recipient = PublicKey::from(&StaticSecret::from(*recipient_x25519_secret)).to_bytes();
    let shared = x25519(recipient_x25519_secret, &sealed.ephemeral_pubkey)?;
    let key = v1_message_key(&shared, &sealed.ephemeral_pubkey, &recipient);
    let aad = associated_data(SCHEME_V1, conversation_id, sender_pubkey);
    aead_open(&key, &sealed.nonce, &sealed.ciphertext, &aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONV: &str = "6f1c1f34-3b39-4a36-9d55-0d8c64d6f0a1";

    fn seq<const N: usize>(start: u8) -> [u8; N] {
        std::array::from_fn(|i| start + i as u8)
    }

    /// The test vector of the design note (ENCRYPTION.md), byte for byte.
    #[test]
    fn spec_vector() {
        let alice = Identity::from_seed(&seq(0x00));
        let bob = Identity::from_seed(&seq(0x20));
        let carol = Identity::from_seed(&seq(0x40));
        let conv = "0b1e9a7e-5d1c-4a55-9a3e-1c2d3e4f5a6b";
        let plaintext = b"united-hub dm v2 test vector";
        assert_eq!(
            hex::encode(alice.public_key()),
            "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        );
        assert_eq!(
            hex::encode(bob.x25519_public()),
            "5730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e"
        );
        let sealed =
            seal_with_nonce(&alice, &bob.x25519_public(), conv, plaintext, seq(0x64)).unwrap();
        assert_eq!(
            hex::encode(sealed.ephemeral_pubkey),
            "9f74eab8743718b99a356af07d69b634b125dfeedd529ac5776a99f653cf413d"
        );
        assert_eq!(
            hex::encode(&sealed.ciphertext),
            concat!(
                "025730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e3aad61712ea942e32f4c",
                "8892cbd9a0c60d7a0941af75bd9cff4e145be2e34aed3692cbcd5ae0e280c870f0ff"
            )
        );

        let a = alice.public_key();
        let as_bob = open(&bob, &sealed, conv, &a).unwrap();
        assert_eq!(
            (as_bob.plaintext.as_slice(), as_bob.scheme, as_bob.role),
            (&plaintext[..], Scheme::V2, Role::Recipient)
        );
        assert!(as_bob.authenticated());
        let as_alice = open(&alice, &sealed, conv, &a).unwrap();
        assert_eq!(
            (
                as_alice.plaintext.as_slice(),
                as_alice.scheme,
                as_alice.role
            ),
            (&plaintext[..], Scheme::V2, Role::Sender)
        );
        // Anyone else, another conversation, another sender: refused.
        assert_eq!(open(&carol, &sealed, conv, &a), Err(CryptoError::Decrypt));
        let other = "0b1e9a7e-5d1c-4a55-9a3e-1c2d3e4f5a6c";
        assert_eq!(open(&bob, &sealed, other, &a), Err(CryptoError::Decrypt));
        assert_eq!(open(&alice, &sealed, other, &a), Err(CryptoError::Decrypt));
        let c = carol.public_key();
        assert_eq!(open(&bob, &sealed, conv, &c), Err(CryptoError::Decrypt));
        // Re-attributed to Bob himself: not his ephemeral key, nor his message.
        let b = bob.public_key();
        assert_eq!(
            open(&bob, &sealed, conv, &b),
            Err(CryptoError::EphemeralMismatch)
        );
    }

    #[test]
    fn both_sides_open_and_tampering_is_refused() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let a = alice.public_key();
        let sealed = seal(&alice, &bob.x25519_public(), CONV, b"hi bob").unwrap();
        assert_eq!(sealed.ciphertext.len(), 1 + 32 + 6 + TAG_LEN);
        assert_eq!(open(&bob, &sealed, CONV, &a).unwrap().role, Role::Recipient);
        assert_eq!(open(&alice, &sealed, CONV, &a).unwrap().role, Role::Sender);
        // Every byte of every field matters, to both sides.
        for i in 0..sealed.ciphertext.len() {
            let mut t = sealed.clone();
            t.ciphertext[i] ^= 1;
            assert!(open(&bob, &t, CONV, &a).is_err(), "payload byte {i}");
            assert!(open(&alice, &t, CONV, &a).is_err(), "payload byte {i}");
        }
        let mut t = sealed.clone();
        t.nonce[5] ^= 1;
        assert!(open(&bob, &t, CONV, &a).is_err());
        assert_eq!(
            open(&alice, &t, CONV, &a),
            Err(CryptoError::EphemeralMismatch)
        );
        let mut t = sealed.clone();
        t.ephemeral_pubkey = [0; 32];
        assert_eq!(open(&bob, &t, CONV, &a), Err(CryptoError::WeakKey));
        let mut t = sealed.clone();
        t.ephemeral_pubkey[5] ^= 1;
        assert!(open(&bob, &t, CONV, &a).is_err());
        assert_eq!(
            open(&alice, &t, CONV, &a),
            Err(CryptoError::EphemeralMismatch)
        );
    }

    #[test]
    fn a_message_to_oneself_opens() {
        let alice = Identity::generate();
        let sealed = seal(&alice, &alice.x25519_public(), CONV, b"note").unwrap();
        let opened = open(&alice, &sealed, CONV, &alice.public_key()).unwrap();
        assert_eq!((opened.scheme, opened.role), (Scheme::V2, Role::Sender));
    }

    #[test]
    fn v1_still_opens_unauthenticated() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let a = alice.public_key();
        let sealed =
            seal_v1_with(b"old", &bob.x25519_public(), CONV, &a, [7; 32], [9; 24]).unwrap();
        let opened = open(&bob, &sealed, CONV, &a).unwrap();
        assert_eq!(opened.plaintext, b"old");
        assert_eq!((opened.scheme, opened.role), (Scheme::V1, Role::Recipient));
        assert!(!opened.authenticated());
        // v1 never let the sender read it back, and is still bound to C.
        assert_eq!(open(&alice, &sealed, CONV, &a), Err(CryptoError::Decrypt));
        let other = "00000000-0000-4000-8000-000000000000";
        assert_eq!(open(&bob, &sealed, other, &a), Err(CryptoError::Decrypt));
    }

    #[test]
    fn small_order_keys_are_refused() {
        let alice = Identity::generate();
        // 0 and 1 are small-order points: every exchange with them is zero.
        let mut one = [0u8; 32];
        one[0] = 1;
        for point in [[0u8; 32], one] {
            assert_eq!(seal(&alice, &point, CONV, b"x"), Err(CryptoError::WeakKey));
        }
    }

    #[test]
    fn published_keys_are_checked() {
        let bob = Identity::generate();
        let mallory = Identity::generate();
        assert_eq!(
            check_published_key(&bob.public_key(), &bob.x25519_public()),
            Ok(())
        );
        assert_eq!(
            check_published_key(&bob.public_key(), &mallory.x25519_public()),
            Err(CryptoError::KeyMismatch)
        );
        let invalid = (0..=255u8)
            .map(|b| [b; 32])
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .unwrap();
        assert_eq!(
            check_published_key(&invalid, &bob.x25519_public()),
            Err(CryptoError::BadPublicKey)
        );
    }

    #[test]
    fn converted_keys_agree() {
        let id = Identity::generate();
        let public = PublicKey::from(&StaticSecret::from(id.x25519_secret())).to_bytes();
        assert_eq!(public, id.x25519_public());
        assert_eq!(ed25519_pk_to_x25519(&id.public_key()).unwrap(), public);
    }
}
