// The united-hub web client. HTTP JSON for login, keys, conversations,
// history and the offline queue; one binary protobuf WebSocket for sends and
// live pushes. Messages are sealed and opened in this page with
// `united-hub dm v2` (dm.js); the hub only ever sees ciphertext.
import * as dm from './dm.js';
import { decodeEnvelope, encodeEnvelope } from './proto.js';

const $ = (id) => document.getElementById(id);
const text = new TextDecoder();
const utf8 = new TextEncoder();
const store = window.localStorage;
const KEY_SEED = 'united.seed';
const KEY_NAME = 'united.name';
const KEY_OPEN = 'united.open';
const KEY_PENDING = 'united.pending';
const KEY_PEERS = 'united.peers'; // conversation id -> the peer key it was opened with
const PAGE = 50;

const state = {
  me: null, // dm.identity
  name: '',
  access: null,
  refresh: null,
  refreshTimer: null,
  ws: null,
  wsReady: false,
  reconnectDelay: 500,
  nextRequest: 1,
  conversations: new Map(), // id -> DmConversation (JSON)
  open: null, // { id, peer, peerName, messages: Map(seq -> el), oldest, newest, hasMore, keyOk }
  // client id -> { conversation_id, payload, nonce, ephemeral, timestamp }: the
  // sealed request only, as kept in localStorage (never the plaintext).
  pending: new Map(),
  // conversation id -> peer key, remembered the first time the page saw it:
  // the hub may never change who a conversation is with.
  peers: new Map(),
  peerKeys: new Map(), // peer pubkey -> { ok, x }
};

// ---------- storage and identity ----------

function loadIdentity() {
  let seedHex = store.getItem(KEY_SEED);
  if (!seedHex || !/^[0-9a-f]{64}$/.test(seedHex)) {
    seedHex = dm.toHex(dm.randomBytes(32));
    store.setItem(KEY_SEED, seedHex);
  }
  state.me = dm.identity(dm.fromHex(seedHex));
  state.name = store.getItem(KEY_NAME) || '';
  try {
    for (const [id, p] of JSON.parse(store.getItem(KEY_PENDING) || '[]')) {
      // Older pages kept the text too: drop it.
      delete p.text;
      state.pending.set(id, p);
    }
    savePending();
  } catch {
    store.removeItem(KEY_PENDING);
  }
  try {
    for (const [id, key] of JSON.parse(store.getItem(KEY_PEERS) || '[]')) state.peers.set(id, key);
  } catch {
    store.removeItem(KEY_PEERS);
  }
}

/// Only what a resend needs: the sealed request under its id.
function savePending() {
  store.setItem(KEY_PENDING, JSON.stringify([...state.pending]));
}

function savePeers() {
  store.setItem(KEY_PEERS, JSON.stringify([...state.peers]));
}

function importSeed(input) {
  const value = input.value.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(value)) {
    showError('A seed is 64 hexadecimal characters.');
    return;
  }
  store.setItem(KEY_SEED, value);
  store.removeItem(KEY_PENDING);
  store.removeItem(KEY_OPEN);
  store.removeItem(KEY_PEERS);
  window.location.reload();
}

function showError(message) {
  const el = $('error');
  el.textContent = message;
  el.hidden = !message;
}

// ---------- HTTP ----------

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (state.access) headers.Authorization = `Bearer ${state.access}`;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(json.error?.message || `HTTP ${res.status}`);
    err.status = res.status;
    err.code = json.error?.code;
    throw err;
  }
  return json;
}

function takeTokens(t) {
  state.access = t.access_token;
  state.refresh = t.refresh_token;
  clearTimeout(state.refreshTimer);
  // Refresh well before expiry, then tell the open socket (AuthRequest).
  const ms = Math.max(1000, t.expires_in * 600);
  state.refreshTimer = setTimeout(refreshTokens, ms);
}

async function login() {
  const ch = await api('POST', '/api/auth/challenge');
  const signature = dm.signLogin(state.me, dm.fromHex(ch.challenge));
  const tokens = await api('POST', '/api/auth/verify', {
    public_key: state.me.pubkey,
    challenge_id: ch.challenge_id,
    signature: dm.toHex(signature),
    display_name: state.name,
  });
  takeTokens(tokens);
  await api('POST', '/api/dm/keys', { x25519_pubkey: dm.toHex(state.me.xPk) });
}

async function refreshTokens() {
  try {
    takeTokens(await api('POST', '/api/auth/refresh', { refresh_token: state.refresh }));
  } catch {
    try {
      await login();
    } catch {
      state.refreshTimer = setTimeout(refreshTokens, 2000);
      return;
    }
  }
  if (state.wsReady) {
    request({ auth_request: { access_token: state.access } });
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  }
}

// ---------- WebSocket ----------

function request(payload) {
  if (!state.wsReady) return false;
  const request_id = String(state.nextRequest++);
  state.ws.send(encodeEnvelope({ request_id, ...payload }));
  return true;
}

function setStatus(s) {
  $('status').textContent = s;
  $('status').dataset.state = s;
  document.body.dataset.connection = s;
}

/// Opens the socket with a single-use ticket (contract §8): the access token
/// never goes into a URL, which proxies and load balancers log.
async function connect() {
  let ticket;
  try {
    ({ ticket } = await api('POST', '/api/auth/ws-ticket'));
  } catch {
    setStatus('offline');
    const delay = state.reconnectDelay;
    state.reconnectDelay = Math.min(5000, delay * 2);
    setTimeout(reconnect, delay);
    return;
  }
  const url = new URL('/ws', window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('ticket', ticket);
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  setStatus('connecting');
  ws.onopen = async () => {
    state.wsReady = true;
    state.reconnectDelay = 500;
    document.body.dataset.connects = String(Number(document.body.dataset.connects || 0) + 1);
    setStatus('online');
    // The first request makes the session receive every later push; then
    // resend what was never acknowledged (same ids: the hub dedupes), and
    // catch up on what arrived while the socket was down.
    request({ dm_conversation_list_request: {} });
    for (const [id, p] of state.pending) sendPending(id, p);
    await catchUp().catch((e) => showError(e.message));
  };
  ws.onmessage = (ev) => {
    let env;
    try {
      env = decodeEnvelope(new Uint8Array(ev.data));
    } catch {
      return;
    }
    onEnvelope(env);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.wsReady = false;
    setStatus('offline');
    const delay = state.reconnectDelay;
    state.reconnectDelay = Math.min(5000, delay * 2);
    setTimeout(reconnect, delay);
  };
}

// The browser knows first when the network goes: drop the socket at once
// (one still opening may otherwise hang without ever closing); its onclose
// shows 'offline' and keeps retrying, with backoff, until the network is back.
window.addEventListener('offline', () => {
  if (state.ws && state.ws.readyState !== WebSocket.CLOSED) state.ws.close();
});
// Back online: the backoff starts again from its shortest.
window.addEventListener('online', () => {
  state.reconnectDelay = 500;
});

async function reconnect() {
  try {
    // A closed socket may mean an expired token: refresh first.
    takeTokens(await api('POST', '/api/auth/refresh', { refresh_token: state.refresh }));
  } catch {
    try {
      await login();
    } catch {
      setTimeout(reconnect, state.reconnectDelay);
      return;
    }
  }
  await connect();
}

function onEnvelope(env) {
  if (env.dm_message_event?.message) {
    onMessage(env.dm_message_event.message);
  } else if (env.dm_send_response?.message) {
    onMessage(env.dm_send_response.message);
  } else if (env.dm_conversation_created_event?.conversation) {
    upsertConversation(env.dm_conversation_created_event.conversation);
  } else if (env.dm_conversation_list_response) {
    for (const c of env.dm_conversation_list_response.conversations) upsertConversation(c);
  } else if (env.dm_key_rotated_event) {
    state.peerKeys.delete(env.dm_key_rotated_event.user_pubkey);
  } else if (env.error) {
    if (env.error.error_code !== 'conflict') showError(env.error.message);
  }
}

// ---------- conversations ----------

function peerOf(c) {
  const me = state.me.pubkey;
  return c.participant_a_pubkey === me
    ? { key: c.participant_b_pubkey, name: c.participant_b_display_name }
    : { key: c.participant_a_pubkey, name: c.participant_a_display_name };
}

/// Whether the hub's conversation `c` is one of mine, with the peer this page
/// first saw it with. A conversation that is not mine is dropped; one whose
/// peer changed is kept, marked, and shown with a warning.
function checkConversation(c) {
  const me = state.me.pubkey;
  if (c.participant_a_pubkey !== me && c.participant_b_pubkey !== me) return false;
  const peer = peerOf(c).key;
  const known = state.peers.get(c.id);
  if (known === undefined) {
    state.peers.set(c.id, peer);
    savePeers();
  } else if (known !== peer) {
    c.peerChanged = known;
  }
  return true;
}

function upsertConversation(c) {
  if (!checkConversation(c)) return;
  const old = state.conversations.get(c.id);
  // Once the hub changed a conversation's peer, the page keeps saying so.
  if (old?.peerChanged) c.peerChanged = old.peerChanged;
  if (old && old.last_message_at > c.last_message_at) c.last_message_at = old.last_message_at;
  state.conversations.set(c.id, c);
  renderConversations();
}

function renderConversations() {
  const list = $('conversations');
  const sorted = [...state.conversations.values()].sort(
    (a, b) =>
      (b.last_message_at || 0) - (a.last_message_at || 0) || (b.created_at || 0) - (a.created_at || 0),
  );
  list.replaceChildren(
    ...sorted.map((c) => {
      const peer = peerOf(c);
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'conversation';
      button.dataset.testid = 'conversation';
      button.dataset.peer = peer.key;
      if (state.open?.id === c.id) button.setAttribute('aria-current', 'true');
      if (c.unread) button.dataset.unread = 'true';
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = peer.name || groupKey(peer.key);
      if (c.peerChanged) button.dataset.peerChanged = 'true';
      const meta = document.createElement('span');
      meta.className = 'when';
      meta.textContent = c.last_message_at ? formatTime(c.last_message_at) : 'new';
      button.append(name, meta);
      button.addEventListener('click', () => openConversation(c));
      li.append(button);
      return li;
    }),
  );
}

async function loadConversations() {
  const { conversations } = await api('GET', '/api/dm/conversations');
  for (const c of conversations) upsertConversation(c);
}

async function openByPubkey(value) {
  const pubkey = value.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(pubkey)) {
    showError('A public key is 64 hexadecimal characters.');
    return;
  }
  if (pubkey === state.me.pubkey) {
    showError('That is your own key.');
    return;
  }
  try {
    const c = await api('POST', '/api/dm/conversations', { recipient_pubkey: pubkey });
    // The hub must answer with exactly {me, the key typed}: never trust its
    // choice of peer.
    const pair = [c.participant_a_pubkey, c.participant_b_pubkey].sort();
    const want = [state.me.pubkey, pubkey].sort();
    if (pair[0] !== want[0] || pair[1] !== want[1]) {
      showError(
        'The hub answered with a conversation with someone other than the key you typed. It was not opened.',
      );
      document.body.dataset.refused = String(Number(document.body.dataset.refused || 0) + 1);
      return;
    }
    upsertConversation(c);
    $('peer-input').value = '';
    showError('');
    await openConversation(c);
  } catch (e) {
    showError(e.status === 404 ? 'Nobody with that key has joined this hub.' : e.message);
  }
}

async function openConversation(c) {
  const peer = peerOf(c);
  c.unread = false;
  state.open = {
    id: c.id,
    peer: peer.key,
    peerName: peer.name,
    peerChanged: c.peerChanged,
    messages: new Map(), // seq -> { id, el }
    ids: new Set(),
    oldest: 0,
    newest: 0,
    hasMore: false,
  };
  store.setItem(KEY_OPEN, c.id);
  document.body.dataset.view = 'chat';
  $('chat').hidden = false;
  $('empty').hidden = true;
  $('peer-name').textContent = peer.name || 'Unnamed';
  $('peer-key').textContent = groupKey(peer.key);
  $('message-list').replaceChildren();
  $('key-warning').replaceChildren();
  if (c.peerChanged) {
    keyWarning(
      'peer',
      'The hub now says this conversation is with someone else than when you first opened it. Compare the key above with the person, out loud, before you trust it.',
    );
  }
  renderConversations();
  for (const [id, p] of state.pending) if (p.conversation_id === c.id) renderPending(id, pendingText(p));
  checkPeerKey(peer.key).catch(() => {});
  const open = state.open;
  const page = await api('GET', `/api/dm/messages/${c.id}?limit=${PAGE}`);
  if (state.open !== open) return;
  for (const m of page.messages) onMessage(fromJson(m));
  open.hasMore = page.has_more;
  $('load-older').hidden = !open.hasMore;
  scrollToBottom();
  // Anything that arrived between the page and now.
  await catchUpOpen();
}

async function loadOlder() {
  const open = state.open;
  if (!open || !open.hasMore || open.loadingOlder) return;
  open.loadingOlder = true;
  const box = $('messages');
  const before = box.scrollHeight - box.scrollTop;
  try {
    const page = await api('GET', `/api/dm/messages/${open.id}?before=${open.oldest}&limit=${PAGE}`);
    if (state.open !== open) return;
    for (const m of page.messages) onMessage(fromJson(m));
    open.hasMore = page.has_more;
    $('load-older').hidden = !open.hasMore;
    box.scrollTop = box.scrollHeight - before;
  } finally {
    open.loadingOlder = false;
  }
}

/// `after=` catch-up of the open conversation, page by page.
async function catchUpOpen() {
  const open = state.open;
  if (!open) return;
  for (;;) {
    const page = await api('GET', `/api/dm/messages/${open.id}?after=${open.newest}&limit=100`);
    if (state.open !== open) return;
    for (const m of page.messages) onMessage(fromJson(m));
    if (!page.has_more || page.messages.length === 0) return;
  }
}

/// After (re)connecting: the offline queue (marks it delivered), the list,
/// and the open conversation's missed messages.
async function catchUp() {
  for (;;) {
    const page = await api('GET', '/api/dm/offline');
    for (const m of page.messages) onMessage(fromJson(m));
    if (!page.has_more) break;
  }
  await loadConversations();
  await catchUpOpen();
}

// ---------- keys ----------

/// A key in groups of four, in full, to read out and compare.
function groupKey(key) {
  return key.match(/.{1,4}/g).join(' ');
}

function keyWarning(kind, message) {
  const w = document.createElement('p');
  w.className = 'warning';
  w.dataset.testid = 'warning';
  w.dataset.kind = kind;
  w.textContent = message;
  $('key-warning').append(w);
}

/// The key check (ENCRYPTION.md): the hub's X25519 key for `peer` must be
/// the one derived from their identity. `fresh` asks the hub again (before
/// every send); offline, the last checked key serves.
async function checkPeerKey(peer, fresh = false) {
  let known = state.peerKeys.get(peer);
  if (!known || fresh) {
    try {
      const key = await api('GET', `/api/dm/keys/${peer}`);
      const x = dm.fromHex(key.x25519_pubkey);
      let ok = false;
      try {
        ok = dm.checkPublishedKey(dm.fromHex(peer), x);
      } catch {
        ok = false;
      }
      known = { ok, x };
      state.peerKeys.set(peer, known);
    } catch (e) {
      if (!known || e.status) throw e;
    }
  }
  if (state.open?.peer === peer) {
    for (const old of $('key-warning').querySelectorAll('[data-kind="key"]')) old.remove();
    if (!known.ok) {
      keyWarning(
        'key',
        'The hub gave a key for this person that does not belong to their identity. Nothing is sent: someone may be trying to read your messages.',
      );
    }
  }
  return known;
}

// ---------- messages ----------

function fromJson(m) {
  return {
    id: m.id,
    conversation_id: m.conversation_id,
    sender_pubkey: m.sender_pubkey,
    encrypted_payload: dm.fromB64(m.encrypted_payload),
    nonce: dm.fromB64(m.nonce),
    ephemeral_pubkey: m.ephemeral_pubkey ? dm.fromB64(m.ephemeral_pubkey) : new Uint8Array(0),
    timestamp: m.timestamp,
    server_sequence: m.server_sequence,
    sender_display_name: m.sender_display_name,
  };
}

function onMessage(m) {
  // Acknowledged: no longer pending (from this device or a resend).
  if (state.pending.has(m.id)) {
    state.pending.delete(m.id);
    savePending();
  }
  const c = state.conversations.get(m.conversation_id);
  if (c) {
    if (m.timestamp > (c.last_message_at || 0)) c.last_message_at = Math.max(m.timestamp, c.last_message_at || 0);
    if (state.open?.id !== m.conversation_id && m.sender_pubkey !== state.me.pubkey) c.unread = true;
    renderConversations();
  } else {
    loadConversations().catch(() => {});
  }
  const open = state.open;
  if (!open || open.id !== m.conversation_id) return;
  // The same message twice (a push and a page) is shown once, by id; a
  // different message under a sequence already shown is the hub lying.
  if (open.ids.has(m.id)) return;
  open.ids.add(m.id);
  const seq = m.server_sequence;
  if (open.messages.has(seq)) {
    const clash = renderMessage(m, 'The hub sent two different messages under this number. This one is not shown.');
    placeMessage(clash, m.id);
    return;
  }
  const el = renderMessage(m);
  open.messages.set(seq, { id: m.id, el });
  open.newest = Math.max(open.newest, seq);
  open.oldest = open.oldest ? Math.min(open.oldest, seq) : seq;
  placeMessage(el, m.id);
}

function placeMessage(row, id) {
  const list = $('message-list');
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const pendingRow = list.querySelector(`[data-client-id="${CSS.escape(id)}"]`);
  if (pendingRow) pendingRow.remove();
  const seq = Number(row.dataset.seq);
  const after = [...list.children].find((r) => r.dataset.seq && Number(r.dataset.seq) > seq);
  if (after) list.insertBefore(row, after);
  else {
    const firstPending = list.querySelector('[data-client-id]');
    list.insertBefore(row, firstPending);
  }
  if (atBottom || pendingRow) scrollToBottom();
}

function scrollToBottom() {
  const box = $('messages');
  box.scrollTop = box.scrollHeight;
}

function formatTime(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/// One row: the bubble (`message`, text = the plaintext, or `warning`) and
/// its meta line outside it. Only a v2 message sealed by me or by this
/// conversation's peer is shown; anything else is a warning.
function renderMessage(m, forced = null) {
  const out = m.sender_pubkey === state.me.pubkey;
  // The peer this page first saw the conversation with (pinned), even if
  // the hub names another since.
  const peer =
    state.peers.get(m.conversation_id) ?? (state.open?.id === m.conversation_id ? state.open.peer : null);
  const row = document.createElement('div');
  row.className = `row ${out ? 'out' : 'in'}`;
  row.dataset.seq = String(m.server_sequence);
  let opened = null;
  let problem = null;
  try {
    opened = dm.open(state.me, {
      payload: m.encrypted_payload,
      nonce: m.nonce,
      ephemeral: m.ephemeral_pubkey,
      conversationId: m.conversation_id,
      senderPubkey: m.sender_pubkey,
    });
  } catch {
    problem = 'This message could not be verified: it was not sealed by its sender, or it was altered. Its content is not shown.';
  }
  if (!forced && opened && !out && m.sender_pubkey !== peer) {
    forced = 'This message was sealed by someone who is not in this conversation. Its content is not shown.';
  }
  let bubble;
  if (forced) {
    bubble = document.createElement('p');
    bubble.className = 'bubble warning';
    bubble.dataset.testid = 'warning';
    bubble.dataset.kind = 'sender';
    bubble.textContent = forced;
  } else if (opened && opened.scheme === 'v2') {
    bubble = document.createElement('p');
    bubble.className = 'bubble';
    bubble.dataset.testid = 'message';
    bubble.textContent = text.decode(opened.plaintext);
  } else {
    bubble = document.createElement('p');
    bubble.className = 'bubble warning';
    bubble.dataset.testid = 'warning';
    bubble.dataset.kind = opened ? 'v1' : 'unverified';
    bubble.textContent =
      problem || 'Unverified message (old v1 scheme): the hub could have written it, so it is not shown.';
  }
  bubble.dataset.seq = String(m.server_sequence);
  bubble.dataset.direction = out ? 'out' : 'in';
  bubble.dataset.id = m.id;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = `#${m.server_sequence} · ${formatTime(m.timestamp)}`;
  row.append(bubble, meta);
  return row;
}

/// The text of a message of mine waiting to be sent: opened again from its
/// sealed form (v2 lets the sender open what it sealed), so no plaintext is
/// ever stored.
function pendingText(p) {
  try {
    const opened = dm.open(state.me, {
      payload: dm.fromB64(p.payload),
      nonce: dm.fromB64(p.nonce),
      ephemeral: dm.fromB64(p.ephemeral),
      conversationId: p.conversation_id,
      senderPubkey: state.me.pubkey,
    });
    return text.decode(opened.plaintext);
  } catch {
    return '(a message waiting to be sent)';
  }
}

function renderPending(id, body) {
  const row = document.createElement('div');
  row.className = 'row out pending';
  row.dataset.clientId = id;
  const bubble = document.createElement('p');
  bubble.className = 'bubble';
  bubble.dataset.testid = 'message';
  bubble.dataset.seq = '';
  bubble.dataset.direction = 'out';
  bubble.dataset.status = 'sending';
  bubble.textContent = body;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = 'sending…';
  row.append(bubble, meta);
  $('message-list').append(row);
  scrollToBottom();
}

function sendPending(id, p) {
  request({
    dm_send_request: {
      id,
      conversation_id: p.conversation_id,
      encrypted_payload: dm.fromB64(p.payload),
      nonce: dm.fromB64(p.nonce),
      ephemeral_pubkey: dm.fromB64(p.ephemeral),
      timestamp: p.timestamp,
    },
  });
}

async function send() {
  const open = state.open;
  const input = $('compose');
  const body = input.value;
  if (!open || !body.trim()) return;
  let key;
  try {
    key = await checkPeerKey(open.peer, true);
  } catch (e) {
    showError(e.status === 404 ? 'This person has not published a key yet.' : e.message);
    return;
  }
  if (!key.ok || open.peerChanged) return;
  const sealed = dm.seal(state.me, key.x, open.id, utf8.encode(body));
  const id = dm.uuidv7();
  const p = {
    conversation_id: open.id,
    payload: dm.toB64(sealed.payload),
    nonce: dm.toB64(sealed.nonce),
    ephemeral: dm.toB64(sealed.ephemeral),
    timestamp: Date.now(),
  };
  state.pending.set(id, p);
  savePending();
  input.value = '';
  renderPending(id, body);
  sendPending(id, p); // when offline, the reconnect resends it
}

// ---------- wiring ----------

function showApp() {
  $('welcome').hidden = true;
  $('sidebar').hidden = false;
  $('empty').hidden = false;
  $('my-name').textContent = state.name;
  $('my-pubkey').textContent = state.me.pubkey;
}

async function start() {
  setStatus('connecting');
  try {
    await login();
  } catch (e) {
    showError(`Could not log in: ${e.message}`);
    setTimeout(start, 2000);
    return;
  }
  showApp();
  await loadConversations().catch(() => {});
  await connect();
  const last = store.getItem(KEY_OPEN);
  const c = last && state.conversations.get(last);
  if (c) await openConversation(c);
  document.body.dataset.ready = 'true';
}

function wire() {
  $('name-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('display-name').value.trim();
    if (!name) {
      showError('Please enter a name.');
      return;
    }
    state.name = name;
    store.setItem(KEY_NAME, name);
    showError('');
    start();
  });
  for (const button of document.querySelectorAll('.import-seed')) {
    button.addEventListener('click', () => importSeed(button.parentElement.querySelector('.seed-import')));
  }
  $('export-seed').addEventListener('click', () => {
    const el = $('seed-export');
    el.textContent = dm.toHex(state.me.seed);
    el.hidden = !el.hidden;
  });
  $('copy-pubkey').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(state.me.pubkey);
      $('copy-pubkey').textContent = 'Copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents($('my-pubkey'));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
    }
  });
  $('new-conversation').addEventListener('submit', (ev) => {
    ev.preventDefault();
    openByPubkey($('peer-input').value);
  });
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    send().catch((e) => showError(e.message));
  });
  $('compose').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      send().catch((e) => showError(e.message));
    }
  });
  $('load-older').addEventListener('click', () => loadOlder().catch((e) => showError(e.message)));
  $('messages').addEventListener('scroll', () => {
    if ($('messages').scrollTop < 40) loadOlder().catch(() => {});
  });
  $('back').addEventListener('click', () => {
    document.body.dataset.view = 'list';
    state.open = null;
    store.removeItem(KEY_OPEN);
    $('chat').hidden = true;
    $('empty').hidden = false;
    renderConversations();
  });
}

loadIdentity();
wire();
if (state.name) {
  start();
} else {
  $('welcome').hidden = false;
  $('display-name').focus();
}
