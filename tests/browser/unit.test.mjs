// JS unit checks of the web client, run by tests/browser/main.rs with node:
// the ENCRYPTION.md test vector byte for byte, and the protobuf codec against
// golden Envelopes that prost encoded (a JSON file named by UNITED_GOLDEN).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as dm from '../../web/dm.js';
import { decodeEnvelope, encodeEnvelope } from '../../web/proto.js';

const seq = (start, n) => Uint8Array.from({ length: n }, (_, i) => start + i);
const enc = new TextEncoder();
let checks = 0;
function check(name, fn) {
  fn();
  checks++;
  console.log(`ok ${name}`);
}

check('message ids are UUIDv7 carrying the time', () => {
  const at = 1_764_000_123_456;
  const id = dm.uuidv7(at);
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(parseInt(id.replace(/-/g, '').slice(0, 12), 16), at);
  assert.ok(dm.uuidv7(at) < dm.uuidv7(at + 1), 'later ids sort later');
  assert.notEqual(dm.uuidv7(at), dm.uuidv7(at));
});

check('the ENCRYPTION.md vector is reproduced and opens as Bob and as Alice only', () => {
  const alice = dm.identity(seq(0x00, 32));
  const bob = dm.identity(seq(0x20, 32));
  const carol = dm.identity(seq(0x40, 32));
  const conv = '0b1e9a7e-5d1c-4a55-9a3e-1c2d3e4f5a6b';
  const plaintext = enc.encode('united-hub dm v2 test vector');
  assert.equal(alice.pubkey, '03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8');
  assert.equal(dm.toHex(bob.xPk), '5730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e');
  assert.ok(dm.checkPublishedKey(bob.edPk, bob.xPk));
  assert.ok(!dm.checkPublishedKey(bob.edPk, carol.xPk));
  const sealed = dm.seal(alice, bob.xPk, conv, plaintext, seq(0x64, 24));
  assert.equal(dm.toHex(sealed.ephemeral), '9f74eab8743718b99a356af07d69b634b125dfeedd529ac5776a99f653cf413d');
  assert.equal(
    dm.toHex(sealed.payload),
    '025730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e3aad61712ea942e32f4c' +
      '8892cbd9a0c60d7a0941af75bd9cff4e145be2e34aed3692cbcd5ae0e280c870f0ff',
  );
  const msg = { payload: sealed.payload, nonce: sealed.nonce, ephemeral: sealed.ephemeral, conversationId: conv, senderPubkey: alice.pubkey };
  const asBob = dm.open(bob, msg);
  assert.deepEqual([asBob.scheme, asBob.role], ['v2', 'recipient']);
  assert.equal(new TextDecoder().decode(asBob.plaintext), 'united-hub dm v2 test vector');
  const asAlice = dm.open(alice, msg);
  assert.deepEqual([asAlice.scheme, asAlice.role], ['v2', 'sender']);
  assert.equal(new TextDecoder().decode(asAlice.plaintext), 'united-hub dm v2 test vector');
  assert.throws(() => dm.open(carol, msg));
  assert.throws(() => dm.open(bob, { ...msg, conversationId: '0b1e9a7e-5d1c-4a55-9a3e-1c2d3e4f5a6c' }));
  assert.throws(() => dm.open(bob, { ...msg, senderPubkey: carol.pubkey }));
  const tampered = sealed.payload.slice();
  tampered[40] ^= 1;
  assert.throws(() => dm.open(bob, { ...msg, payload: tampered }));
  assert.throws(() => dm.open(alice, { ...msg, ephemeral: carol.xPk }));
});

check('a random-nonce seal round-trips and login signatures verify', () => {
  const a = dm.identity(dm.randomBytes(32));
  const b = dm.identity(dm.randomBytes(32));
  const conv = '6f1c1f34-3b39-4a36-9d55-0d8c64d6f0a1';
  const s = dm.seal(a, b.xPk, conv, enc.encode('héllo 👋'));
  const m = { payload: s.payload, nonce: s.nonce, ephemeral: s.ephemeral, conversationId: conv, senderPubkey: a.pubkey };
  assert.equal(new TextDecoder().decode(dm.open(b, m).plaintext), 'héllo 👋');
  assert.equal(new TextDecoder().decode(dm.open(a, m).plaintext), 'héllo 👋');
  assert.equal(dm.signLogin(a, seq(1, 32)).length, 64);
  assert.deepEqual(dm.fromB64(dm.toB64(seq(0, 200))), seq(0, 200));
  assert.deepEqual(dm.fromHex(dm.toHex(seq(0, 200))), seq(0, 200));
});

/// Golden values: bytes are written as {"hex": "..."} in the JSON.
function revive(v) {
  if (Array.isArray(v)) return v.map(revive);
  if (v && typeof v === 'object') {
    if (Object.keys(v).length === 1 && typeof v.hex === 'string') return dm.fromHex(v.hex);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, revive(x)]));
  }
  return v;
}

if (process.env.UNITED_GOLDEN) {
  const golden = JSON.parse(readFileSync(process.env.UNITED_GOLDEN, 'utf8'));
  assert.ok(golden.length >= 5, 'golden envelopes');
  for (const { name, hex, envelope } of golden) {
    check(`protobuf golden: ${name}`, () => {
      const expected = revive(envelope);
      const decoded = decodeEnvelope(dm.fromHex(hex));
      assert.deepEqual(decoded, expected);
      assert.equal(dm.toHex(encodeEnvelope(expected)), hex);
    });
  }
} else {
  throw new Error('UNITED_GOLDEN (the golden Envelopes from the Rust side) is not set');
}
console.log(`unit checks passed: ${checks}`);
