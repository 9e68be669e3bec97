#!/usr/bin/env python3
"""Generates tests/vectors/dm_v1.json with libsodium (through PyNaCl).

The vectors pin the `united-hub dm v1` scheme (docs/encryption.md) to
libsodium: the Ed25519 -> X25519 conversions are libsodium's own, the X25519
exchange is crypto_scalarmult, and the AEAD is
crypto_aead_xchacha20poly1305_ietf_encrypt. HKDF-SHA256 (RFC 5869) is written
out with the standard library's hmac, since libsodium has no HKDF-SHA256 in
PyNaCl.

    pip install pynacl
    python3 scripts/gen_vectors.py            # rewrites the file
    python3 scripts/gen_vectors.py --check [FILE]   # opens every vector of FILE with libsodium

The Rust tests also hand freshly sealed messages (random ephemeral keys and
nonces) to `--check FILE`, when PyNaCl is installed, so libsodium opens what
Rust sealed.

The Rust tests (tests/api/crypto.rs) check that the reference client
derives the same keys, seals to the same bytes and opens every vector. Clients
only read v1 now; scripts/gen_vectors_v2.py makes the vectors of v2, the
scheme they send.
"""
import hashlib
import hmac
import json
import sys
from pathlib import Path

from nacl import bindings as sodium

SCHEME = b"united-hub dm v1"
OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "dm_v1.json"


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def seed_bytes(label: str) -> bytes:
    """Deterministic test randomness, so the file is reproducible."""
    return hashlib.sha256(b"united-hub vectors " + label.encode()).digest()


def identity(label: str):
    seed = seed_bytes(label)
    pk, sk = sodium.crypto_sign_seed_keypair(seed)
    return {
        "seed": seed,
        "ed25519_pk": pk,
        "x25519_pk": sodium.crypto_sign_ed25519_pk_to_curve25519(pk),
        "x25519_sk": sodium.crypto_sign_ed25519_sk_to_curve25519(sk),
    }


def seal(plaintext, recipient_x_pk, conversation_id, sender_pk, eph_sk, nonce):
    eph_pk = sodium.crypto_scalarmult_base(eph_sk)
    shared = sodium.crypto_scalarmult(eph_sk, recipient_x_pk)
    key = hkdf_sha256(shared, eph_pk + recipient_x_pk, SCHEME)
    aad = SCHEME + conversation_id.encode() + sender_pk
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)
    return eph_pk, key, ct


def open_(ct, recipient_x_sk, eph_pk, conversation_id, sender_pk, nonce):
    recipient_x_pk = sodium.crypto_scalarmult_base(recipient_x_sk)
    shared = sodium.crypto_scalarmult(recipient_x_sk, eph_pk)
    key = hkdf_sha256(shared, eph_pk + recipient_x_pk, SCHEME)
    aad = SCHEME + conversation_id.encode() + sender_pk
    return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, aad, nonce, key)


CASES = [
    ("alice", "bob", "6f1c1f34-3b39-4a36-9d55-0d8c64d6f0a1", b"hello bob"),
    ("bob", "alice", "6f1c1f34-3b39-4a36-9d55-0d8c64d6f0a1", b""),
    ("carol", "dave", "00000000-0000-4000-8000-000000000000", "h\u00e9llo \U0001f510 w\u00f6rld".encode()),
    ("erin", "frank", "9b2e7d7a-1c44-4d0f-8a3e-5f7c2b1d9e60", bytes(range(256)) * 4),
]


def build():
    vectors = []
    for i, (sender, recipient, conv, plaintext) in enumerate(CASES):
        s, r = identity(sender), identity(recipient)
        eph_sk = seed_bytes(f"ephemeral {i}")
        nonce = seed_bytes(f"nonce {i}")[:24]
        eph_pk, key, ct = seal(plaintext, r["x25519_pk"], conv, s["ed25519_pk"], eph_sk, nonce)
        vectors.append({
            "sender_seed": s["seed"].hex(),
            "sender_ed25519_pk": s["ed25519_pk"].hex(),
            "sender_x25519_pk": s["x25519_pk"].hex(),
            "recipient_seed": r["seed"].hex(),
            "recipient_ed25519_pk": r["ed25519_pk"].hex(),
            "recipient_x25519_pk": r["x25519_pk"].hex(),
            "recipient_x25519_sk": r["x25519_sk"].hex(),
            "conversation_id": conv,
            "plaintext": plaintext.hex(),
            "ephemeral_sk": eph_sk.hex(),
            "ephemeral_pk": eph_pk.hex(),
            "nonce": nonce.hex(),
            "message_key": key.hex(),
            "ciphertext": ct.hex(),
        })
    return {
        "scheme": SCHEME.decode(),
        "generator": f"scripts/gen_vectors.py with PyNaCl (libsodium {sodium.sodium_version_string() if hasattr(sodium, 'sodium_version_string') else 'bundled'})",
        "vectors": vectors,
    }


def check(doc):
    for v in doc["vectors"]:
        pt = open_(
            bytes.fromhex(v["ciphertext"]),
            bytes.fromhex(v["recipient_x25519_sk"]),
            bytes.fromhex(v["ephemeral_pk"]),
            v["conversation_id"],
            bytes.fromhex(v["sender_ed25519_pk"]),
            bytes.fromhex(v["nonce"]),
        )
        assert pt.hex() == v["plaintext"], "libsodium could not open a vector"
    print(f"libsodium opened all {len(doc['vectors'])} vectors")


if __name__ == "__main__":
    if "--check" in sys.argv:
        rest = sys.argv[sys.argv.index("--check") + 1:]
        check(json.loads(Path(rest[0]).read_text() if rest else OUT.read_text()))
    else:
        doc = build()
        check(doc)
        OUT.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {OUT}")
