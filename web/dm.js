// `united-hub dm v2` (docs: ../shared/design/ENCRYPTION.md), byte for byte as
// the Rust reference client (src/client/crypto.rs) does it, plus login
// signatures and hex/base64 helpers. Pure functions, no DOM: node runs them
// in the unit checks (tests/browser/unit.test.mjs).
import { ed25519, x25519, xchacha20poly1305, sha512, sha256, hkdf } from './vendor/crypto.js';

const enc = new TextEncoder();
const SCHEME_V1 = enc.encode('united-hub dm v1');
const SCHEME_V2 = enc.encode('united-hub dm v2');
const V2_EPHEMERAL_INFO = enc.encode('united-hub dm v2 ephemeral');
const LOGIN_PREFIX = enc.encode('united-hub auth v1\n');

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function fromHex(hex) {
  const clean = String(hex).trim().toLowerCase();
  if (!/^([0-9a-f]{2})*$/.test(clean)) throw new Error('not hex');
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toB64(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function fromB64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

export function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

/// A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.
/// Message ids that grow with time keep the hub's unique index append-only.
export function uuidv7(now = Date.now()) {
  const b = randomBytes(16);
  for (let i = 0; i < 6; i++) b[i] = Math.floor(now / 2 ** (8 * (5 - i))) & 0xff;
  b[6] = 0x70 | (b[6] & 0x0f);
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = toHex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/// X25519 with the all-zero (small-order) output refused.
function dh(secret, pub) {
  const out = x25519.getSharedSecret(secret, pub);
  if (out.every((b) => b === 0)) throw new Error('the shared secret is all zero (small-order key)');
  return out;
}

const hkdf32 = (ikm, salt, info) => hkdf(sha256, ikm, salt, info, 32);

/// An identity from its 32-byte Ed25519 seed.
export function identity(seed) {
  if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new Error('a seed is 32 bytes');
  const edPk = ed25519.getPublicKey(seed);
  // libsodium's crypto_sign_ed25519_sk_to_curve25519: clamped SHA-512(seed)[..32].
  const xSk = sha512(seed).slice(0, 32);
  xSk[0] &= 248;
  xSk[31] &= 127;
  xSk[31] |= 64;
  return { seed, edPk, pubkey: toHex(edPk), xSk, xPk: edPkToX25519(edPk) };
}

/// libsodium's crypto_sign_ed25519_pk_to_curve25519 (throws on a bad point).
export function edPkToX25519(edPk) {
  return ed25519.utils.toMontgomery(edPk);
}

/// The login signature: Ed25519 over "united-hub auth v1\n" || challenge.
export function signLogin(id, challenge) {
  return ed25519.sign(concat(LOGIN_PREFIX, challenge), id.seed);
}

/// The key check: the hub's X25519 key for `peerEdPk` must be derived from it.
export function checkPublishedKey(peerEdPk, publishedX) {
  return equal(edPkToX25519(peerEdPk), publishedX);
}

function ephemeralSecret(xSk, nonce) {
  return hkdf32(xSk, nonce, V2_EPHEMERAL_INFO);
}

function v2Key(dh1, dh2, E, R, S) {
  return hkdf32(concat(dh1, dh2), concat(E, R, S), SCHEME_V2);
}

function v2Aad(conversationId, senderEdPk) {
  return concat(SCHEME_V2, enc.encode(conversationId), senderEdPk);
}

/// Seals `plaintext` (bytes) from `me` to the X25519 key `R` in conversation
/// `conversationId`. Returns { payload, nonce, ephemeral }.
export function seal(me, R, conversationId, plaintext, nonce = randomBytes(24)) {
  const e = ephemeralSecret(me.xSk, nonce);
  const E = x25519.getPublicKey(e);
  const key = v2Key(dh(e, R), dh(me.xSk, R), E, R, me.xPk);
  const ct = xchacha20poly1305(key, nonce, v2Aad(conversationId, me.edPk)).encrypt(plaintext);
  return { payload: concat(Uint8Array.of(2), R, ct), nonce, ephemeral: E };
}

/// Opens a message as its recipient or its sender. Returns
/// { plaintext, scheme: 'v2' | 'v1', role: 'recipient' | 'sender' } or throws.
export function open(me, msg) {
  const { payload, nonce, ephemeral, conversationId, senderPubkey } = msg;
  const senderEdPk = fromHex(senderPubkey);
  let v2Error = null;
  if (payload.length > 1 + 32 + 16 && payload[0] === 2 && nonce.length === 24) {
    const R = payload.slice(1, 33);
    const ct = payload.slice(33);
    const aad = v2Aad(conversationId, senderEdPk);
    try {
      if (senderPubkey === me.pubkey) {
        const e = ephemeralSecret(me.xSk, nonce);
        const E = x25519.getPublicKey(e);
        if (!equal(E, ephemeral)) throw new Error('the ephemeral key is not ours');
        const key = v2Key(dh(e, R), dh(me.xSk, R), E, R, me.xPk);
        return { plaintext: xchacha20poly1305(key, nonce, aad).decrypt(ct), scheme: 'v2', role: 'sender' };
      }
      if (!equal(R, me.xPk)) throw new Error('not addressed to this identity');
      const S = edPkToX25519(senderEdPk);
      const key = v2Key(dh(me.xSk, ephemeral), dh(me.xSk, S), ephemeral, R, S);
      return { plaintext: xchacha20poly1305(key, nonce, aad).decrypt(ct), scheme: 'v2', role: 'recipient' };
    } catch (err) {
      v2Error = err;
    }
  }
  // v1, read-only and unauthenticated: ephemeral-static to the recipient.
  if (ephemeral && ephemeral.length === 32 && senderPubkey !== me.pubkey) {
    try {
      const shared = dh(me.xSk, ephemeral);
      const key = hkdf32(shared, concat(ephemeral, me.xPk), SCHEME_V1);
      const aad = concat(SCHEME_V1, enc.encode(conversationId), senderEdPk);
      return { plaintext: xchacha20poly1305(key, nonce, aad).decrypt(payload), scheme: 'v1', role: 'recipient' };
    } catch {
      // fall through to the v2 error
    }
  }
  throw v2Error || new Error('the message does not decrypt');
}
