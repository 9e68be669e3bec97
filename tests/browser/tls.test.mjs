// The web page served over HTTPS, its socket over wss:// (issue 25, item 3):
// run by tests/browser/main.rs, which starts the hub with a certificate its
// own CA signed and gives Chromium that certificate's key to trust
// (--ignore-certificate-errors-spki-list pins exactly it; no other error is
// ignored). Tess joins, writes to Rusty (a Rust client), and sees his
// answer.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join_, launch, openWith, send, T, waitLine, waitShown } from './lib.mjs';

const hub = process.env.UNITED_HUB_URL;
const rusty = process.env.UNITED_RUST_PUBKEY;
assert.ok(hub.startsWith('https://'), hub);

const { browser, profile } = await launch([
  `--ignore-certificate-errors-spki-list=${process.env.UNITED_SPKI}`,
]);
const problems = [];
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(hub);
  const me = await join_(page, 'Tess');
  console.log(`TESS ${me}`);
  await openWith(page, rusty);
  const seq = await send(page, 'hello over wss');
  assert.equal(seq, 1);
  console.log('SENT');
  await waitLine('ANSWERED');
  await waitShown(
    page,
    [
      [1, 'out', 'hello over wss'],
      [2, 'in', 'hi back, over TLS'],
    ],
    'both messages over TLS',
  );
  assert.ok(sockets.length > 0 && sockets.every((u) => u.startsWith('wss://')), JSON.stringify(sockets));
  assert.deepEqual(problems, []);
  console.log('DONE');
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
