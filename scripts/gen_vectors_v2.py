#!/usr/bin/env python3
"""Generates tests/vectors/dm_v2.json with libsodium (through PyNaCl).

The vectors pin the `united-hub dm v2` scheme (docs/encryption.md) to
libsodium: the Ed25519 -> X25519 conversions are libsodium's own, every X25519
is crypto_scalarmult(_base), and the AEAD is
crypto_aead_xchacha20poly1305_ietf_encrypt. HKDF-SHA256 is the standard
library version of scripts/gen_vectors.py (v1's generator).

    pip install pynacl
    python3 scripts/gen_vectors_v2.py                # rewrites the file
    python3 scripts/gen_vectors_v2.py --check [FILE] # opens every vector of FILE
                                                     # as recipient and as sender
    python3 scripts/gen_vectors_v2.py --seal         # prints fresh messages (random
                                                     # identities and nonces) as JSON

A vector needs sender_seed, recipient_seed, conversation_id, plaintext, nonce,
ephemeral_pk and encrypted_payload (hex, except the conversation id); the
generated file adds every intermediate value for client authors.

The Rust tests (tests/api/crypto.rs) seal the same bytes and open every vector
from both sides, hand freshly Rust-sealed messages to `--check FILE`, and open
what `--seal` prints.
"""
import json
import os
import sys
import uuid
from pathlib import Path

from nacl import bindings as sodium

sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
from gen_vectors import hkdf_sha256, seed_bytes  # noqa: E402 (v1's script, next to this one)

SCHEME = b"united-hub dm v2"
EPHEMERAL_INFO = b"united-hub dm v2 ephemeral"
VERSION = 2
OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "dm_v2.json"


def x25519(scalar: bytes, point: bytes) -> bytes:
    # libsodium itself refuses an all-zero result; the check says so here too.
    out = sodium.crypto_scalarmult(scalar, point)
    assert out != bytes(32), "small-order key"
    return out


def x25519_base(scalar: bytes) -> bytes:
    out = sodium.crypto_scalarmult_base(scalar)
    assert out != bytes(32), "small-order key"
    return out


def keys(seed: bytes):
    ed_pk, ed_sk = sodium.crypto_sign_seed_keypair(seed)
    return {
        "seed": seed,
        "ed25519_pk": ed_pk,
        "x25519_pk": sodium.crypto_sign_ed25519_pk_to_curve25519(ed_pk),
        "x25519_sk": sodium.crypto_sign_ed25519_sk_to_curve25519(ed_sk),
    }


def ephemeral_secret(x_sk: bytes, nonce: bytes) -> bytes:
    return hkdf_sha256(x_sk, nonce, EPHEMERAL_INFO)


def message_key(dh1, dh2, eph_pk, recipient_x_pk, sender_x_pk):
    return hkdf_sha256(dh1 + dh2, eph_pk + recipient_x_pk + sender_x_pk, SCHEME)


def aad(conversation_id: str, sender_ed_pk: bytes) -> bytes:
    return SCHEME + conversation_id.encode() + sender_ed_pk


def seal(sender, recipient_x_pk, conversation_id, plaintext, nonce):
    """Returns every intermediate value, for the vector file."""
    e = ephemeral_secret(sender["x25519_sk"], nonce)
    eph_pk = x25519_base(e)
    dh1 = x25519(e, recipient_x_pk)
    dh2 = x25519(sender["x25519_sk"], recipient_x_pk)
    key = message_key(dh1, dh2, eph_pk, recipient_x_pk, sender["x25519_pk"])
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, aad(conversation_id, sender["ed25519_pk"]), nonce, key
    )
    return {
        "ephemeral_sk": e,
        "ephemeral_pk": eph_pk,
        "dh1": dh1,
        "dh2": dh2,
        "message_key": key,
        "encrypted_payload": bytes([VERSION]) + recipient_x_pk + ct,
    }


def open_(me, role, payload, nonce, eph_pk, conversation_id, sender_ed_pk):
    """Opens as `role` ("recipient" or "sender"); raises if it does not open."""
    assert len(payload) >= 1 + 32 + 16 and payload[0] == VERSION, "not a v2 payload"
    recipient_x_pk, ct = payload[1:33], payload[33:]
    sender_x_pk = sodium.crypto_sign_ed25519_pk_to_curve25519(sender_ed_pk)
    if role == "recipient":
        assert recipient_x_pk == me["x25519_pk"], "not sealed to this identity"
        dh1 = x25519(me["x25519_sk"], eph_pk)
        dh2 = x25519(me["x25519_sk"], sender_x_pk)
    else:
        assert sender_ed_pk == me["ed25519_pk"], "not sent by this identity"
        e = ephemeral_secret(me["x25519_sk"], nonce)
        assert x25519_base(e) == eph_pk, "ephemeral key not derived from this identity"
        dh1 = x25519(e, recipient_x_pk)
        dh2 = x25519(me["x25519_sk"], recipient_x_pk)
    key = message_key(dh1, dh2, eph_pk, recipient_x_pk, sender_x_pk)
    return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        ct, aad(conversation_id, sender_ed_pk), nonce, key
    )


def refused(*args) -> bool:
    try:
        open_(*args)
    except Exception:
        return True
    return False


# The design note's test vector: seeds 0x00..0x1f and 0x20..0x3f, nonce 0x64..0x7b.
SPEC = {
    "sender_seed": bytes(range(0x00, 0x20)),
    "recipient_seed": bytes(range(0x20, 0x40)),
    "conversation_id": "0b1e9a7e-5d1c-4a55-9a3e-1c2d3e4f5a6b",
    "nonce": bytes(range(0x64, 0x7C)),
    "plaintext": b"united-hub dm v2 test vector",
}
SPEC_EXPECTED = {
    "sender_ed25519_pk": "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
    "recipient_x25519_pk": "5730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e",
    "ephemeral_pk": "9f74eab8743718b99a356af07d69b634b125dfeedd529ac5776a99f653cf413d",
    "encrypted_payload": "025730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e"
    "3aad61712ea942e32f4c8892cbd9a0c60d7a0941af75bd9cff4e145be2e34aed3692cbcd5ae0e280c870f0ff",
}

# (sender, recipient, conversation id, plaintext); seeds and nonces from
# seed_bytes, like v1's (the same people have the same keys in both files).
CASES = [
    ("alice", "bob", "6f1c1f34-3b39-4a36-9d55-0d8c64d6f0a1", b"hello bob"),
    ("bob", "alice", "6f1c1f34-3b39-4a36-9d55-0d8c64d6f0a1", b""),
    ("carol", "dave", "00000000-0000-4000-8000-000000000000", "h\u00e9llo \U0001f510 w\u00f6rld".encode()),
    ("erin", "frank", "9b2e7d7a-1c44-4d0f-8a3e-5f7c2b1d9e60", bytes(range(256)) * 4 + b"!"),
    ("grace", "grace", "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f", b"a note to myself"),
]


def vector(sender_seed, recipient_seed, conversation_id, plaintext, nonce):
    s, r = keys(sender_seed), keys(recipient_seed)
    sealed = seal(s, r["x25519_pk"], conversation_id, plaintext, nonce)
    return {
        "sender_seed": s["seed"].hex(),
        "sender_ed25519_pk": s["ed25519_pk"].hex(),
        "sender_x25519_pk": s["x25519_pk"].hex(),
        "sender_x25519_sk": s["x25519_sk"].hex(),
        "recipient_seed": r["seed"].hex(),
        "recipient_ed25519_pk": r["ed25519_pk"].hex(),
        "recipient_x25519_pk": r["x25519_pk"].hex(),
        "recipient_x25519_sk": r["x25519_sk"].hex(),
        "conversation_id": conversation_id,
        "plaintext": plaintext.hex(),
        "nonce": nonce.hex(),
        **{k: v.hex() for k, v in sealed.items()},
    }


def build():
    spec = vector(**SPEC)
    for field, expected in SPEC_EXPECTED.items():
        assert spec[field] == expected, f"the spec's test vector differs in {field}"
    vectors = [dict(spec, name="spec")]
    for i, (sender, recipient, conv, plaintext) in enumerate(CASES):
        nonce = seed_bytes(f"v2 nonce {i}")[:24]
        v = vector(seed_bytes(sender), seed_bytes(recipient), conv, plaintext, nonce)
        vectors.append(dict(v, name=f"{sender} to {recipient}"))
    return {
        "scheme": SCHEME.decode(),
        "generator": "scripts/gen_vectors_v2.py with PyNaCl (libsodium)",
        "vectors": vectors,
    }


def check(doc):
    """Opens every vector as its recipient and as its sender, and checks that
    a third identity, another conversation and another sender are refused."""
    third = keys(seed_bytes("v2 third party"))
    for v in doc["vectors"]:
        s = keys(bytes.fromhex(v["sender_seed"]))
        r = keys(bytes.fromhex(v["recipient_seed"]))
        payload = bytes.fromhex(v["encrypted_payload"])
        nonce = bytes.fromhex(v["nonce"])
        eph_pk = bytes.fromhex(v["ephemeral_pk"])
        conv = v["conversation_id"]
        plaintext = bytes.fromhex(v["plaintext"])
        for me, role in [(r, "recipient"), (s, "sender")]:
            got = open_(me, role, payload, nonce, eph_pk, conv, s["ed25519_pk"])
            assert got == plaintext, f"libsodium opened a wrong plaintext as {role}"
        other_conv = conv[:-1] + ("1" if conv[-1] != "1" else "2")
        for me, role in [(r, "recipient"), (s, "sender")]:
            assert refused(me, role, payload, nonce, eph_pk, other_conv, s["ed25519_pk"])
            assert refused(me, role, payload, nonce, eph_pk, conv, third["ed25519_pk"])
            assert refused(third, role, payload, nonce, eph_pk, conv, s["ed25519_pk"])
    return f"libsodium opened all {len(doc['vectors'])} vectors as recipient and as sender"


def fresh():
    """Messages with random identities and nonces, for Rust to open."""
    vectors = []
    for plaintext in [b"", b"fresh from libsodium", "\u00e9\u00e8 \U0001f510".encode(), os.urandom(3000)]:
        conv = str(uuid.uuid4())
        vectors.append(vector(os.urandom(32), os.urandom(32), conv, plaintext, os.urandom(24)))
    return {"scheme": SCHEME.decode(), "vectors": vectors}


if __name__ == "__main__":
    if "--check" in sys.argv:
        rest = sys.argv[sys.argv.index("--check") + 1:]
        print(check(json.loads(Path(rest[0]).read_text() if rest else OUT.read_text())))
    elif "--seal" in sys.argv:
        doc = fresh()
        print(check(doc), file=sys.stderr)
        print(json.dumps(doc))
    else:
        doc = build()
        print(check(doc))
        OUT.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {OUT}")
