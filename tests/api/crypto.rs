//! The reference client's encryption against libsodium: the committed vectors
//! (`tests/vectors/dm_v2.json` from `scripts/gen_vectors_v2.py`, and v1's
//! `dm_v1.json` from `scripts/gen_vectors.py`), and fresh messages handed to
//! the scripts and back.
//!
//! The live cross-checks need python3 with PyNaCl (`pip install pynacl`).
//! Without it they fail if `UNITED_REQUIRE_PYNACL` is set (CI sets it) and are
//! skipped with a message otherwise.

use std::path::Path;
use std::process::Command;

use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use united_hub::client::crypto::{self, CryptoError, Identity, Role, Scheme, Sealed};

fn vectors(file: &str, scheme: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(file);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["scheme"], scheme);
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

fn identity(v: &Value, who: &str) -> Identity {
    Identity::from_seed(&bytes(v, &format!("{who}_seed")))
}

/// Whether python3 can `import nacl` for a libsodium cross-check. If not, the
/// test fails when `UNITED_REQUIRE_PYNACL` is set (to anything but "" or "0"),
/// and otherwise says it is skipped.
fn pynacl(test: &str) -> bool {
    let available = Command::new("python3")
        .args(["-c", "import nacl"])
        .status()
        .is_ok_and(|s| s.success());
    if available {
        return true;
    }
    let required =
        std::env::var_os("UNITED_REQUIRE_PYNACL").is_some_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{test}: python3 cannot `import nacl` and UNITED_REQUIRE_PYNACL is set (pip install pynacl)"
    );
    eprintln!(
        "{test}: SKIPPED: python3 cannot `import nacl`, so libsodium does not cross-check \
         (pip install pynacl; UNITED_REQUIRE_PYNACL=1 makes this a failure)"
    );
    false
}

/// Runs a vector script with `args`; returns its stdout, failing on error.
fn script(name: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let out = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A v2 vector's message as the hub would relay it.
fn sealed_v2(v: &Value) -> Sealed {
    Sealed {
        ciphertext: vec(v, "encrypted_payload"),
        nonce: bytes(v, "nonce"),
        ephemeral_pubkey: bytes(v, "ephemeral_pk"),
    }
}

/// Opens a v2 message as its recipient and as its sender, and checks that a
/// third identity, another conversation and another sender are refused.
fn assert_opens_both_ways(v: &Value) {
    let sender = identity(v, "sender");
    let recipient = identity(v, "recipient");
    let sealed = sealed_v2(v);
    let conversation = v["conversation_id"].as_str().unwrap();
    let from = sender.public_key();
    let plaintext = vec(v, "plaintext");
    let self_note = sender.public_key() == recipient.public_key();

    let as_recipient = crypto::open(&recipient, &sealed, conversation, &from).unwrap();
    assert_eq!(as_recipient.plaintext, plaintext);
    assert_eq!(as_recipient.scheme, Scheme::V2);
    assert!(as_recipient.authenticated());
    // A note to oneself opens as its sender first.
    if !self_note {
        assert_eq!(as_recipient.role, Role::Recipient);
    }
    let as_sender = crypto::open(&sender, &sealed, conversation, &from).unwrap();
    assert_eq!(as_sender.plaintext, plaintext);
    assert_eq!(
        (as_sender.scheme, as_sender.role),
        (Scheme::V2, Role::Sender)
    );

    let third = Identity::generate();
    assert!(crypto::open(&third, &sealed, conversation, &from).is_err());
    let other = "00000000-0000-4000-8000-000000000001";
    for me in [&sender, &recipient] {
        assert!(crypto::open(me, &sealed, other, &from).is_err());
        assert!(crypto::open(me, &sealed, conversation, &third.public_key()).is_err());
        let mut flipped = sealed.clone();
        *flipped.ciphertext.last_mut().unwrap() ^= 1;
        assert!(crypto::open(me, &flipped, conversation, &from).is_err());
    }
    // Re-attributed to the recipient: neither side opens it.
    if !self_note {
        let to = recipient.public_key();
        assert!(crypto::open(&recipient, &sealed, conversation, &to).is_err());
        assert!(crypto::open(&sender, &sealed, conversation, &to).is_err());
    }
}

// ---- v2 ----

#[test]
fn v2_keys_match_libsodium() {
    for v in vectors("dm_v2.json", "united-hub dm v2") {
        for who in ["sender", "recipient"] {
            let id = identity(&v, who);
            assert_eq!(
                id.public_key(),
                bytes::<32>(&v, &format!("{who}_ed25519_pk"))
            );
            assert_eq!(
                id.x25519_public(),
                bytes::<32>(&v, &format!("{who}_x25519_pk"))
            );
            assert_eq!(
                id.x25519_secret(),
                bytes::<32>(&v, &format!("{who}_x25519_sk"))
            );
        }
    }
}

#[test]
fn v2_rust_seals_the_same_bytes_as_libsodium() {
    let all = vectors("dm_v2.json", "united-hub dm v2");
    assert!(all.len() >= 5);
    for v in &all {
        let sealed = crypto::seal_with_nonce(
            &identity(v, "sender"),
            &bytes(v, "recipient_x25519_pk"),
            v["conversation_id"].as_str().unwrap(),
            &vec(v, "plaintext"),
            bytes(v, "nonce"),
        )
        .unwrap();
        assert_eq!(
            sealed,
            sealed_v2(v),
            "{}: differs from libsodium",
            v["name"]
        );
    }
    // The design note's vector is one of them, unchanged.
    let spec = all.iter().find(|v| v["name"] == "spec").unwrap();
    assert_eq!(
        spec["ephemeral_pk"],
        "9f74eab8743718b99a356af07d69b634b125dfeedd529ac5776a99f653cf413d"
    );
    assert_eq!(
        spec["encrypted_payload"],
        concat!(
            "025730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e",
            "3aad61712ea942e32f4c8892cbd9a0c60d7a0941af75bd9cff4e145be2e34aed3692",
            "cbcd5ae0e280c870f0ff"
        )
    );
}

#[test]
fn v2_rust_opens_libsodium_vectors_from_both_sides() {
    for v in vectors("dm_v2.json", "united-hub dm v2") {
        assert_opens_both_ways(&v);
    }
}

#[test]
fn v2_published_keys_are_checked() {
    for v in vectors("dm_v2.json", "united-hub dm v2") {
        let identity = bytes::<32>(&v, "recipient_ed25519_pk");
        assert_eq!(
            crypto::check_published_key(&identity, &bytes(&v, "recipient_x25519_pk")),
            Ok(())
        );
        let substituted = Identity::generate().x25519_public();
        assert_eq!(
            crypto::check_published_key(&identity, &substituted),
            Err(CryptoError::KeyMismatch)
        );
    }
}

/// Fresh Rust-sealed messages (random nonces), opened by libsodium as their
/// recipient and as their sender.
#[test]
fn v2_libsodium_opens_fresh_rust_messages() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let conversation = uuid::Uuid::new_v4().to_string();
    let long = "long ".repeat(2000);
    let cases = [
        (&alice, &bob, ""),
        (&alice, &bob, "short"),
        (&bob, &alice, "h\u{e9}llo \u{1f510}"),
        (&alice, &bob, long.as_str()),
        (&alice, &alice, "a note to myself"),
    ];
    let mut messages = Vec::new();
    for (sender, recipient, text) in cases {
        let sealed = crypto::seal(
            sender,
            &recipient.x25519_public(),
            &conversation,
            text.as_bytes(),
        )
        .unwrap();
        let v = json!({
            "sender_seed": hex::encode(sender.seed()),
            "recipient_seed": hex::encode(recipient.seed()),
            "conversation_id": conversation,
            "plaintext": hex::encode(text.as_bytes()),
            "nonce": hex::encode(sealed.nonce),
            "ephemeral_pk": hex::encode(sealed.ephemeral_pubkey),
            "encrypted_payload": hex::encode(&sealed.ciphertext),
        });
        assert_opens_both_ways(&v);
        messages.push(v);
    }
    if !pynacl("v2_libsodium_opens_fresh_rust_messages") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rust_sealed_v2.json");
    std::fs::write(&file, json!({ "vectors": messages }).to_string()).unwrap();
    let out = script("gen_vectors_v2.py", &["--check".as_ref(), file.as_os_str()]);
    assert!(out.contains("opened all 5 vectors"), "{out}");
}

/// Fresh libsodium-sealed messages (random identities and nonces), opened by
/// Rust as their recipient and as their sender.
#[test]
fn v2_rust_opens_fresh_libsodium_messages() {
    if !pynacl("v2_rust_opens_fresh_libsodium_messages") {
        return;
    }
    let out = script("gen_vectors_v2.py", &["--seal".as_ref()]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["scheme"], "united-hub dm v2");
    let messages = doc["vectors"].as_array().unwrap();
    assert!(messages.len() >= 4);
    for v in messages {
        assert_opens_both_ways(v);
    }
}

// ---- v1: read-only, unauthenticated ----

#[test]
fn v1_keys_match_libsodium() {
    for v in vectors("dm_v1.json", "united-hub dm v1") {
        for who in ["sender", "recipient"] {
            let id = identity(&v, who);
            assert_eq!(
                id.public_key(),
                bytes::<32>(&v, &format!("{who}_ed25519_pk"))
            );
            assert_eq!(
                id.x25519_public(),
                bytes::<32>(&v, &format!("{who}_x25519_pk"))
            );
        }
        assert_eq!(
            identity(&v, "recipient").x25519_secret(),
            bytes::<32>(&v, "recipient_x25519_sk")
        );
    }
}

#[test]
fn v1_rust_seals_the_same_bytes_as_libsodium() {
    for v in vectors("dm_v1.json", "united-hub dm v1") {
        let sealed = crypto::seal_v1_with(
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
fn v1_messages_still_open_as_unauthenticated() {
    for v in vectors("dm_v1.json", "united-hub dm v1") {
        let sealed = Sealed {
            ciphertext: vec(&v, "ciphertext"),
            nonce: bytes(&v, "nonce"),
            ephemeral_pubkey: bytes(&v, "ephemeral_pk"),
        };
        let conversation = v["conversation_id"].as_str().unwrap();
        let sender = bytes::<32>(&v, "sender_ed25519_pk");
        let recipient = identity(&v, "recipient");
        let opened = crypto::open(&recipient, &sealed, conversation, &sender).unwrap();
        assert_eq!(opened.plaintext, vec(&v, "plaintext"));
        assert_eq!((opened.scheme, opened.role), (Scheme::V1, Role::Recipient));
        assert!(!opened.authenticated());

        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(crypto::open(&recipient, &flipped, conversation, &sender).is_err());
        let mut other_nonce = sealed.clone();
        other_nonce.nonce[0] ^= 1;
        assert!(crypto::open(&recipient, &other_nonce, conversation, &sender).is_err());
        let other = "00000000-0000-4000-8000-000000000001";
        assert!(crypto::open(&recipient, &sealed, other, &sender).is_err());
        // v1 never let its sender read it back.
        assert!(crypto::open(&identity(&v, "sender"), &sealed, conversation, &sender).is_err());
    }
}

/// Fresh Rust-sealed v1 messages (random ephemeral keys and nonces), opened by
/// libsodium: the v1 reader and `seal_v1_with` stay honest.
#[test]
fn v1_libsodium_opens_fresh_rust_messages() {
    let sender = Identity::generate();
    let recipient = Identity::generate();
    let conversation = uuid::Uuid::new_v4().to_string();
    let mut messages = Vec::new();
    for text in ["", "short", &"long ".repeat(2000)] {
        let mut ephemeral = [0u8; 32];
        OsRng.fill_bytes(&mut ephemeral);
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let sealed = crypto::seal_v1_with(
            text.as_bytes(),
            &recipient.x25519_public(),
            &conversation,
            &sender.public_key(),
            ephemeral,
            nonce,
        )
        .unwrap();
        let opened =
            crypto::open(&recipient, &sealed, &conversation, &sender.public_key()).unwrap();
        assert_eq!(
            (opened.plaintext.as_slice(), opened.scheme),
            (text.as_bytes(), Scheme::V1)
        );
        messages.push(json!({
            "ciphertext": hex::encode(&sealed.ciphertext),
            "recipient_x25519_sk": hex::encode(recipient.x25519_secret()),
            "ephemeral_pk": hex::encode(sealed.ephemeral_pubkey),
            "conversation_id": conversation,
            "sender_ed25519_pk": hex::encode(sender.public_key()),
            "nonce": hex::encode(sealed.nonce),
            "plaintext": hex::encode(text.as_bytes()),
        }));
    }
    if !pynacl("v1_libsodium_opens_fresh_rust_messages") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rust_sealed_v1.json");
    std::fs::write(&file, json!({ "vectors": messages }).to_string()).unwrap();
    script("gen_vectors.py", &["--check".as_ref(), file.as_os_str()]);
}
