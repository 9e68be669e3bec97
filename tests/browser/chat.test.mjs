// The web client in headless Debian chromium, driven by playwright-core.
// Run by tests/browser/main.rs, which starts the hub (UNITED_HUB_URL) and a
// Rust reference user (UNITED_RUST_PUBKEY) and talks to this script through
// stdout lines (ALICE, SENT, DONE) and stdin lines (READY, GO).
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { join_, launch, openWith, send, shown, T, waitShown, waitSignal } from './lib.mjs';

const hub = process.env.UNITED_HUB_URL;
const rustPubkey = process.env.UNITED_RUST_PUBKEY;
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const { browser, profile } = await launch();

const problems = [];
const pages = {}; // the latest page of each person, for a screenshot on failure
function watch(page, who) {
  page.on('pageerror', (e) => problems.push(`${who}: page error: ${e.message}`));
  // Console errors are expected while a context is offline (failed fetches
  // and sockets); they are logged, uncaught exceptions fail the test.
  page.on('console', (m) => {
    if (m.type() === 'error') console.error(`${who}: console error: ${m.text()}`);
  });
}

async function newPage(context, who) {
  const page = await context.newPage();
  pages[who] = page;
  watch(page, who);
  await page.goto(hub);
  return page;
}

try {
  const aliceCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const bobCtx = await browser.newContext({ viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  let alice = await newPage(aliceCtx, 'alice');
  let bob = await newPage(bobCtx, 'bob');
  const alicePk = await join_(alice, 'Alice');
  const bobPk = await join_(bob, 'Bob');
  console.log(`alice ${alicePk} bob ${bobPk}`);

  // The page refuses to show anything not from the hub itself.
  const res = await alice.request.get(hub);
  assert.match(res.headers()['content-security-policy'], /default-src 'self'/);

  // Bob is on the conversation; Alice starts it by his key and sends.
  await openWith(bob, alicePk);
  await openWith(alice, bobPk);
  assert.equal(await send(alice, 'Hi Bob, it’s Alice — ça va?'), 1);
  await waitShown(bob, [[1, 'in', 'Hi Bob, it’s Alice — ça va?']], 'Bob sees it live');
  assert.equal(await send(bob, 'Hello Alice! Très bien. <b>not bold</b>'), 2);
  const both = [
    [1, 'out', 'Hi Bob, it’s Alice — ça va?'],
    [2, 'in', 'Hello Alice! Très bien. <b>not bold</b>'],
  ];
  await waitShown(alice, both, 'Alice sees the answer');
  assert.equal(await alice.locator('b').count(), 0, 'plaintext is text, never HTML');
  // The list names the other person.
  await alice.getByTestId('conversation').filter({ hasText: 'Bob' }).waitFor({ timeout: T });

  // Both reload: both sides come from history, in order, right directions.
  await alice.reload();
  await bob.reload();
  await waitShown(alice, both, 'Alice after reload');
  await waitShown(
    bob,
    both.map(([s, d, t]) => [s, d === 'out' ? 'in' : 'out', t]),
    'Bob after reload',
  );

  // Bob closes his page; Alice sends three; Bob comes back and gets them.
  await bob.close();
  for (const [i, t] of ['one', 'two', 'three'].entries()) assert.equal(await send(alice, t), 3 + i);
  bob = await newPage(bobCtx, 'bob');
  const all = [...both, [3, 'out', 'one'], [4, 'out', 'two'], [5, 'out', 'three']];
  await waitShown(bob, all.map(([s, d, t]) => [s, d === 'out' ? 'in' : 'out', t]), 'Bob catches up');
  await waitShown(alice, all, 'Alice still sees all');
  // The narrow screen shows the chat without horizontal scrolling.
  assert.ok(await bob.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'fits 375px');

  // Bob's own socket drops and comes back: a message sent meanwhile by Alice
  // arrives by the after= catch-up, and one Bob typed while offline is resent.
  await bobCtx.setOffline(true);
  await bob.waitForFunction(() => document.body.dataset.connection === 'offline', null, { timeout: T });
  assert.equal(await send(alice, 'while you were away'), 6);
  await bob.getByTestId('compose').fill('typed offline');
  await bob.getByTestId('send').click();
  await bob.locator('[data-status="sending"]', { hasText: 'typed offline' }).waitFor({ timeout: T });
  await bobCtx.setOffline(false);
  await waitShown(
    bob,
    [...all.map(([s, d, t]) => [s, d === 'out' ? 'in' : 'out', t]), [6, 'in', 'while you were away'], [7, 'out', 'typed offline']],
    'Bob reconnects',
  );
  await waitShown(alice, [...all, [6, 'out', 'while you were away'], [7, 'in', 'typed offline']], 'Alice gets the resend');

  if (process.env.UNITED_SCREENSHOT) {
    await alice.bringToFront();
    await alice.screenshot({ path: join(root, 'docs', 'screenshot-chat.png') });
    console.log('screenshot docs/screenshot-chat.png');
  }

  // Tokens are short here: the page refreshes and re-authenticates its
  // socket in-band, and the socket stays up.
  const connects = await alice.evaluate(() => document.body.dataset.connects);
  await alice.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1, null, { timeout: T });
  assert.equal(await alice.evaluate(() => document.body.dataset.connects), connects, 'the socket was not replaced');

  // Interop with the Rust reference client.
  await alice.locator('details.identity summary').click();
  await alice.getByTestId('export-seed').click();
  const seed = (await alice.getByTestId('seed-export').textContent()).trim();
  assert.match(seed, /^[0-9a-f]{64}$/);

  // Alice's second browser device: a fresh context imports her seed on the
  // welcome screen (the page reloads), she gives her name, and the page is
  // hers: her conversation with Bob from history, her messages as "out".
  const phoneCtx = await browser.newContext({ viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  const phone = await newPage(phoneCtx, 'alice-phone');
  await phone.locator('details.import summary').click();
  await phone.getByTestId('seed-import-welcome').fill(seed);
  const reloaded = phone.waitForEvent('load', { timeout: T });
  await phone.getByTestId('import-seed-welcome').click();
  await reloaded;
  assert.equal(await join_(phone, 'Alice'), alicePk, 'the imported seed is the identity');
  await phone.getByTestId('conversation').filter({ hasText: 'Bob' }).click({ timeout: T });
  const withBob = [...all, [6, 'out', 'while you were away'], [7, 'in', 'typed offline']];
  await waitShown(phone, withBob, 'the second device reads the history');
  // What Alice sends from her first device shows up live on the second.
  await phone.waitForFunction(() => document.body.dataset.connection === 'online', null, { timeout: T });
  assert.equal(await send(alice, 'from my laptop'), 8);
  await waitShown(phone, [...withBob, [8, 'out', 'from my laptop']], 'the second device gets her own message live');
  await phoneCtx.close();
  delete pages['alice-phone'];

  console.log(`ALICE ${alicePk} ${seed}`);
  await waitSignal('READY');
  await openWith(alice, rustPubkey);
  const text = 'hello from the browser';
  assert.equal(await send(alice, text), 1);
  console.log(`SENT ${text}`);
  await waitSignal('GO');
  const fillers = Number(process.env.UNITED_FILLERS || 0);
  const withRust = [
    [1, 'out', text],
    ...Array.from({ length: fillers }, (_, i) => [2 + i, 'in', `filler ${i}`]),
    [2 + fillers, 'in', 'hello from rust'],
  ];
  await waitShown(alice, withRust, 'the Rust messages open in the browser');
  await alice.locator(`[data-testid="warning"][data-seq="${3 + fillers}"]`).waitFor({ timeout: T });
  assert.ok(!(await alice.content()).includes('FORGED'), 'a forged message is never shown as text');
  // A v1 message opens, but it is unauthenticated (the hub could have
  // written it): a warning, never its text. So is the forgery.
  const v1Plaintext = process.env.UNITED_V1_PLAINTEXT;
  assert.match(v1Plaintext, /V1-PLAINTEXT-MARKER/);
  const v1Warning = `[data-testid="warning"][data-seq="${4 + fillers}"]`;
  async function checkWarnings(page) {
    const forged = `[data-testid="warning"][data-seq="${3 + fillers}"]`;
    await page.locator(`${forged}[data-kind="unverified"][data-direction="in"]`).waitFor({ timeout: T });
    await page.locator(`${v1Warning}[data-kind="v1"][data-direction="in"]`).waitFor({ timeout: T });
    const html = await page.content();
    const visible = await page.evaluate(() => document.body.innerText);
    for (const secret of ['FORGED', v1Plaintext, 'V1-PLAINTEXT-MARKER']) {
      assert.ok(!html.includes(secret), `"${secret}" is nowhere in the page`);
      assert.ok(!visible.includes(secret), `"${secret}" is nowhere in the page's text`);
    }
  }
  await checkWarnings(alice);

  // Scroll-back: after a reload the newest page shows; scrolling up loads
  // the older ones, until the first.
  await alice.reload();
  await alice.locator(v1Warning).waitFor({ timeout: T });
  const deadline = Date.now() + T;
  while (JSON.stringify(await shown(alice)) !== JSON.stringify(withRust)) {
    if (Date.now() > deadline) throw new Error(`scroll-back: ${JSON.stringify((await shown(alice)).slice(0, 3))}…`);
    await alice.locator('#messages').evaluate((el) => {
      el.scrollTop = 0;
    });
    await alice.waitForTimeout(100);
  }
  await checkWarnings(alice);
  // The list names the other person, newest conversation first.
  const list = await alice.getByTestId('conversation').allTextContents();
  assert.equal(list.length, 2);
  assert.match(list[0], /^Rusty/);
  assert.match(list[1], /^Bob/);
  // The hub hands out a key that is not Rusty's: the page refuses to seal
  // to it and says why.
  console.log('CHECKED');
  await waitSignal('SUBSTITUTED');
  const before = (await shown(alice)).length;
  await alice.getByTestId('compose').fill('for Rusty only');
  await alice.getByTestId('send').click();
  await alice.locator('[data-testid="warning"][data-kind="key"]').waitFor({ timeout: T });
  assert.equal((await shown(alice)).length, before, 'nothing was sent');
  assert.equal(await alice.getByTestId('compose').inputValue(), 'for Rusty only');

  assert.deepEqual(problems, []);
  console.log('DONE');
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.message.split('\n')[0]}`);
  console.error(e);
  if (problems.length) console.error(problems.join('\n'));
  for (const [who, page] of Object.entries(pages)) {
    const path = join(tmpdir(), `united-browser-failure-${who}.png`);
    if (await page.screenshot({ path }).then(() => true, () => false)) console.error(`screenshot: ${path}`);
  }
  await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
