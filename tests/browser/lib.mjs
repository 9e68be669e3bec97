// What the browser scripts share: Chromium as this machine runs it, the
// stdin signals from the Rust test, and the page's own gestures (join, open a
// conversation, send, read what is shown).
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const T = 20_000; // every wait polls, at most this long

const stdin = createInterface({ input: process.stdin });
const signals = [];
let wake = null;
stdin.on('line', (line) => {
  signals.push(line.trim());
  if (wake) wake();
});

/// Waits for a stdin line starting with `prefix`; returns the rest of it.
export async function waitLine(prefix) {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const i = signals.findIndex((l) => l.startsWith(prefix));
    if (i >= 0) return signals.splice(i, 1)[0].slice(prefix.length).trim();
    if (Date.now() > deadline) throw new Error(`no ${prefix} from the test`);
    await new Promise((r) => {
      wake = r;
      setTimeout(r, 200);
    });
  }
}

/// Waits for the stdin line `want`.
export async function waitSignal(want) {
  for (;;) {
    if ((await waitLine(want)) === '') return;
  }
}

/// Headless Debian Chromium with a fresh profile, and `extra` flags:
/// `{ browser, profile }`.
export async function launch(extra = []) {
  const executablePath = process.env.UNITED_CHROMIUM || '/usr/bin/chromium';
  const profile = mkdtempSync(join(tmpdir(), 'united-chromium-'));
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--disk-cache-dir=${join(profile, 'cache')}`,
      ...extra,
    ],
  });
  return { browser, profile };
}

export async function join_(page, name) {
  await page.getByTestId('display-name').fill(name);
  await page.getByTestId('save-name').click();
  await page.getByTestId('my-pubkey').filter({ hasText: /^[0-9a-f]{64}$/ }).waitFor({ timeout: T });
  return (await page.getByTestId('my-pubkey').textContent()).trim();
}

export async function openWith(page, pubkey) {
  await page.getByTestId('peer-input').fill(pubkey);
  await page.getByTestId('open-conversation').click();
  await page.getByTestId('compose').waitFor({ state: 'visible', timeout: T });
}

export async function send(page, text) {
  await page.getByTestId('compose').fill(text);
  await page.getByTestId('send').click();
  // "sending…" until acknowledged, then the server sequence.
  const sent = page.locator('[data-testid="message"][data-direction="out"]', { hasText: text }).last();
  await sent.and(page.locator('[data-seq]:not([data-seq=""])')).waitFor({ timeout: T });
  return Number(await sent.getAttribute('data-seq'));
}

/// The shown messages: [seq, direction, text], in page order.
export async function shown(page) {
  return page.$$eval('[data-testid="message"]', (els) =>
    els.map((e) => [Number(e.dataset.seq), e.dataset.direction, e.textContent]),
  );
}

export async function waitShown(page, expected, what) {
  const deadline = Date.now() + T;
  let last;
  for (;;) {
    last = await shown(page);
    try {
      assert.deepEqual(last, expected);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${what}: ${JSON.stringify(last)} != ${JSON.stringify(expected)}`);
    }
    await page.waitForTimeout(50);
  }
}

