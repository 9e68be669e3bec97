//! The reference client's encryption against libsodium-made vectors
//! (`tests/vectors/dm_v1.json`, from `scripts/gen_vectors.py`).

use serde_json::Value;
use united_hub::client::crypto::{self, Identity, Sealed};

fn vectors() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/dm_v1.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["scheme"], "united-hub dm v1");
    doc["vectors"].as_array().unwrap().clone()
}

fn bytes<const N: usize>(v: &Value, key: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(v[key].as_str().unwrap(), &mut out).unwrap();
    out
}

fn vec(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap()).unwrap()
}

#[test]
fn key_conversion_matches_libsodium() {
    for v in vectors() {
        for who in ["sender", "recipient"] {
            let id = Identity::from_seed(&bytes(&v, &format!("{who}_seed")));
            assert_eq!(
                id.public_key(),
                bytes::<32>(&v, &format!("{who}_ed25519_pk"))
            );
            assert_eq!(
                id.x25519_public(),
                bytes::<32>(&v, &format!("{who}_x25519_pk"))
            );
        }
        let recipient = Identity::from_seed(&bytes(&v, "recipient_seed"));
        assert_eq!(
            recipient.x25519_secret(),
            bytes::<32>(&v, "recipient_x25519_sk")
        );
    }
}

#[test]
fn rust_seals_the_same_bytes_as_libsodium() {
    for v in vectors() {
        let sealed = crypto::seal_with(
            &vec(&v, "plaintext"),
            &bytes(&v, "recipient_x25519_pk"),
            v["conversation_id"].as_str().unwrap(),
            &bytes(&v, "sender_ed25519_pk"),
            bytes(&v, "ephemeral_sk"),
            bytes(&v, "nonce"),
        )
        .unwrap();
        assert_eq!(sealed.ephemeral_pubkey, bytes::<32>(&v, "ephemeral_pk"));
        assert_eq!(
            sealed.ciphertext,
            vec(&v, "ciphertext"),
            "sealed bytes differ from libsodium's"
        );
    }
}

#[test]
fn rust_opens_what_libsodium_sealed_and_refuses_tampering() {
    for v in vectors() {
        let sealed = Sealed {
            ciphertext: vec(&v, "ciphertext"),
            nonce: bytes(&v, "nonce"),
            ephemeral_pubkey: bytes(&v, "ephemeral_pk"),
        };
        let conversation = v["conversation_id"].as_str().unwrap();
        let sender = bytes::<32>(&v, "sender_ed25519_pk");
        let secret = bytes::<32>(&v, "recipient_x25519_sk");
        assert_eq!(
            crypto::open(&sealed, &secret, conversation, &sender).unwrap(),
            vec(&v, "plaintext")
        );

        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(crypto::open(&flipped, &secret, conversation, &sender).is_err());
        let mut other_nonce = sealed.clone();
        other_nonce.nonce[0] ^= 1;
        assert!(crypto::open(&other_nonce, &secret, conversation, &sender).is_err());
        assert!(crypto::open(
            &sealed,
            &secret,
            "00000000-0000-4000-8000-000000000001",
            &sender
        )
        .is_err());
    }
}

/// Fresh messages sealed by Rust, opened by libsodium itself. Needs python3
/// with PyNaCl (`pip install pynacl`; CI installs it). Without it the test
/// says so and checks only that Rust opens its own output.
#[test]
fn libsodium_opens_fresh_rust_messages() {
    let sender = Identity::generate();
    let recipient = Identity::generate();
    let conversation = uuid::Uuid::new_v4().to_string();
    let mut vectors = Vec::new();
    for text in ["", "short", &"long ".repeat(2000)] {
        let sealed = crypto::seal(
            text.as_bytes(),
            &recipient.x25519_public(),
            &conversation,
            &sender.public_key(),
        )
        .unwrap();
        let opened = crypto::open(
            &sealed,
            &recipient.x25519_secret(),
            &conversation,
            &sender.public_key(),
        )
        .unwrap();
        assert_eq!(opened, text.as_bytes());
        vectors.push(serde_json::json!({
            "ciphertext": hex::encode(&sealed.ciphertext),
            "recipient_x25519_sk": hex::encode(recipient.x25519_secret()),
            "ephemeral_pk": hex::encode(sealed.ephemeral_pubkey),
            "conversation_id": conversation,
            "sender_ed25519_pk": hex::encode(sender.public_key()),
            "nonce": hex::encode(sealed.nonce),
            "plaintext": hex::encode(text.as_bytes()),
        }));
    }
    let has_nacl = std::process::Command::new("python3")
        .args(["-c", "import nacl"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_nacl {
        eprintln!(
            "PyNaCl is not installed: libsodium cross-check skipped (the fixed vectors still ran)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rust_sealed.json");
    std::fs::write(&file, serde_json::json!({ "vectors": vectors }).to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen_vectors.py");
    let out = std::process::Command::new("python3")
        .args([script, "--check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "libsodium refused a Rust-sealed message: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
