// The one vendored bundle of the web client: `npm run vendor` rebuilds
// web/vendor/crypto.js from these audited, pure-JS libraries (no wasm, no eval).
export { ed25519, x25519 } from '@noble/curves/ed25519.js';
export { xchacha20poly1305 } from '@noble/ciphers/chacha.js';
export { sha256, sha512 } from '@noble/hashes/sha2.js';
export { hkdf } from '@noble/hashes/hkdf.js';
