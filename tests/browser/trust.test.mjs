// The web client does not trust the hub (issue 23, item 7): run by
// tests/browser/main.rs, which starts the hub and two Rust users, Rusty (the
// peer) and Mallory (a third identity). The script stands in for a hub that
// lies by rewriting its answers with playwright's routing:
// - an answer to "open a conversation with Rusty" that names Mallory;
// - a history page carrying a message Mallory sealed (FORGED, from the test);
// - a conversation list that says Rusty's conversation is now with Mallory.
// Then the honest parts: the socket opens with a ticket, never the access
// token, and a message typed offline is kept sealed, never as plaintext.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { launch, openWith, shown, T, waitLine, waitShown } from './lib.mjs';

const hub = process.env.UNITED_HUB_URL;
const rusty = process.env.UNITED_RUST_PUBKEY;
const mallory = process.env.UNITED_MALLORY_PUBKEY;

const { browser, profile } = await launch();
const problems = [];

/// `c` with Rusty's place given to Mallory (a and b kept in order).
function swapPeer(c) {
  const keys = [c.participant_a_pubkey, c.participant_b_pubkey].map((k) => (k === rusty ? mallory : k));
  const names = [c.participant_a_display_name, c.participant_b_display_name];
  const [a, b] = keys[0] < keys[1] ? [0, 1] : [1, 0];
  return {
    ...c,
    participant_a_pubkey: keys[a],
    participant_b_pubkey: keys[b],
    participant_a_display_name: names[a],
    participant_b_display_name: names[b],
  };
}

try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(hub);
  await page.getByTestId('display-name').fill('Alice');
  await page.getByTestId('save-name').click();
  await page.getByTestId('my-pubkey').filter({ hasText: /^[0-9a-f]{64}$/ }).waitFor({ timeout: T });
  const me = (await page.getByTestId('my-pubkey').textContent()).trim();
  console.log(`ALICE ${me}`);

  // 1. The hub answers "a conversation with Rusty" with one with Mallory.
  await page.route('**/api/dm/conversations', async (route) => {
    if (route.request().method() !== 'POST') return route.continue();
    const response = await route.fetch();
    return route.fulfill({ response, json: swapPeer(await response.json()) });
  });
  await page.getByTestId('peer-input').fill(rusty);
  await page.getByTestId('open-conversation').click();
  await page.waitForFunction(() => document.body.dataset.refused === '1', null, { timeout: T });
  assert.ok(await page.getByTestId('error').isVisible(), 'the refusal is shown');
  assert.match(await page.getByTestId('error').textContent(), /someone other than the key you typed/);
  assert.ok(await page.locator('#chat').isHidden(), 'no conversation was opened');
  await page.unroute('**/api/dm/conversations');

  // 2. The real conversation, with Rusty's first message.
  const forged = JSON.parse(await waitLine('FORGED'));
  await openWith(page, rusty);
  await waitShown(page, [[1, 'in', 'hello from rusty']], 'the real conversation');
  // The peer's full key is shown, to compare aloud.
  const shownKey = (await page.getByTestId('peer-key').textContent()).replaceAll(' ', '');
  assert.equal(shownKey, rusty, 'the whole key, never cut off');

  // 3. A history page carrying Mallory's message: a warning, not its text.
  const history = `**/api/dm/messages/${forged.conversation_id}**`;
  await page.route(history, async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    if (route.request().url().includes('after=')) body.messages.push(forged);
    else body.messages.unshift(forged);
    return route.fulfill({ response, json: body });
  });
  await page.reload();
  await page.locator('[data-testid="warning"][data-kind="sender"][data-seq="2"]').waitFor({ timeout: T });
  await waitShown(page, [[1, 'in', 'hello from rusty']], 'only Rusty’s message is shown');
  const marker = 'MALLORY-MARKER';
  assert.ok(!(await page.content()).includes(marker), 'the forgery is nowhere in the page');
  await page.unroute(history);

  // 4. The hub's list now says the conversation is with Mallory: the page
  // remembers who it was with, warns, and sends nothing.
  await page.route('**/api/dm/conversations', async (route) => {
    if (route.request().method() !== 'GET') return route.continue();
    const response = await route.fetch();
    const body = await response.json();
    body.conversations = body.conversations.map((c) => (c.id === forged.conversation_id ? swapPeer(c) : c));
    return route.fulfill({ response, json: body });
  });
  await page.reload();
  await page.locator('[data-testid="warning"][data-kind="peer"]').waitFor({ timeout: T });
  await page.getByTestId('compose').fill('SHOULD-NOT-BE-SENT');
  await page.getByTestId('send').click();
  await page.waitForTimeout(500);
  assert.ok(!(await page.content()).includes('sending…'), 'nothing is queued');
  assert.deepEqual(await shown(page), [[1, 'in', 'hello from rusty']], 'nothing was sent');
  await page.unroute('**/api/dm/conversations');

  // 5. Typed while offline: kept sealed for the resend, never as plaintext.
  await page.reload();
  await waitShown(page, [[1, 'in', 'hello from rusty']], 'back to normal');
  await page.waitForFunction(() => document.body.dataset.connection === 'online', null, { timeout: T });
  await ctx.setOffline(true);
  await page.waitForFunction(() => document.body.dataset.connection === 'offline', null, { timeout: T });
  const secret = 'PENDING-PLAINTEXT-MARKER';
  await page.getByTestId('compose').fill(secret);
  await page.getByTestId('send').click();
  await page.locator('[data-status="sending"]', { hasText: secret }).waitFor({ timeout: T });
  const stored = await page.evaluate(() => JSON.stringify({ ...window.localStorage }));
  assert.ok(!stored.includes(secret), 'no plaintext in localStorage');
  const pending = await page.evaluate(() => JSON.parse(window.localStorage.getItem('united.pending')));
  assert.equal(pending.length, 1, 'the sealed request is kept');
  assert.ok(pending[0][1].payload && pending[0][1].nonce, 'as its sealed fields');
  await ctx.setOffline(false);
  await waitShown(page, [[1, 'in', 'hello from rusty'], [2, 'out', secret]], 'resent after reconnecting');

  // 6. Every socket the page opened carried a ticket, never the token.
  assert.ok(sockets.length >= 2, `sockets: ${sockets.length}`);
  for (const url of sockets) {
    assert.ok(url.includes('ticket='), `a ticket in ${url.split('?')[0]}`);
    assert.ok(!url.includes('access_token'), 'no access token in a WebSocket URL');
    assert.ok(!/eyJ[A-Za-z0-9_-]{10,}/.test(url), 'no JWT in a WebSocket URL');
  }

  assert.deepEqual(problems, []);
  console.log('DONE');
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${e.message.split('\n')[0]}`);
  console.error(e);
  if (problems.length) console.error(problems.join('\n'));
  await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
