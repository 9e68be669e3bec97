// A small hand-written protobuf codec for the frames of /ws (proto/ws.proto,
// proto/dm.proto): every binary WebSocket message is one `united.ws.Envelope`.
// No eval, no code generation; golden bytes made by the Rust side (prost) pin
// it in tests/browser (see tests/browser/unit.test.mjs).
//
// A message is a plain object with the .proto's snake_case field names.
// uint64 fields are JS numbers (Unix milliseconds and sequences stay far below
// 2^53). An Envelope is `{ request_id, <payload_name>: {...} }` with exactly
// one payload field set. Encoding follows proto3 and prost: fields in
// field-number order, default values (0, "", empty bytes, false, []) left out,
// a set oneof member always written, even when it is empty.

// [field number, name, type, repeated?, message type]
const DmConversation = [
  [1, 'id', 'string'],
  [2, 'participant_a_pubkey', 'string'],
  [3, 'participant_b_pubkey', 'string'],
  [4, 'participant_a_display_name', 'string'],
  [5, 'participant_b_display_name', 'string'],
  [6, 'created_at', 'uint64'],
  [7, 'last_message_at', 'uint64'],
  [8, 'last_message_preview', 'string'],
];
const EncryptedDmMessage = [
  [1, 'id', 'string'],
  [2, 'conversation_id', 'string'],
  [3, 'sender_pubkey', 'string'],
  [4, 'encrypted_payload', 'bytes'],
  [5, 'nonce', 'bytes'],
  [6, 'ephemeral_pubkey', 'bytes'],
  [7, 'timestamp', 'uint64'],
  [8, 'server_sequence', 'uint64'],
  [9, 'sender_display_name', 'string'],
];

export const schema = {
  DmConversation,
  EncryptedDmMessage,
  DmMessageEvent: [[1, 'message', 'msg', false, 'EncryptedDmMessage']],
  DmConversationCreatedEvent: [[1, 'conversation', 'msg', false, 'DmConversation']],
  DmKeyRotatedEvent: [
    [1, 'user_pubkey', 'string'],
    [2, 'new_x25519_pubkey', 'bytes'],
    [3, 'timestamp', 'uint64'],
  ],
  DmHistoryRequest: [
    [1, 'conversation_id', 'string'],
    [2, 'before_sequence', 'uint64'],
    [3, 'limit', 'uint32'],
    [4, 'after_sequence', 'uint64'],
  ],
  DmHistoryResponse: [
    [1, 'messages', 'msg', true, 'EncryptedDmMessage'],
    [2, 'has_more', 'bool'],
  ],
  DmConversationListRequest: [],
  DmConversationListResponse: [[1, 'conversations', 'msg', true, 'DmConversation']],
  DmOfflineMessagesResponse: [
    [1, 'messages', 'msg', true, 'EncryptedDmMessage'],
    [2, 'has_more', 'bool'],
  ],
  DmSendRequest: [
    [1, 'id', 'string'],
    [2, 'conversation_id', 'string'],
    [3, 'encrypted_payload', 'bytes'],
    [4, 'nonce', 'bytes'],
    [5, 'ephemeral_pubkey', 'bytes'],
    [6, 'timestamp', 'uint64'],
  ],
  DmSendResponse: [[1, 'message', 'msg', false, 'EncryptedDmMessage']],
  DmOfflineRequest: [[1, 'limit', 'uint32']],
  DmOfflineAckRequest: [[1, 'message_ids', 'string', true]],
  DmOfflineAckResponse: [[1, 'acked', 'uint32']],
  DmConversationCreateRequest: [[1, 'recipient_pubkey', 'string']],
  DmConversationCreateResponse: [
    [1, 'conversation', 'msg', false, 'DmConversation'],
    [2, 'created', 'bool'],
  ],
  AuthRequest: [[1, 'access_token', 'string']],
  AuthResponse: [[1, 'expires_at', 'uint64']],
  ErrorResponse: [
    [1, 'code', 'uint32'],
    [2, 'message', 'string'],
    [3, 'request_id', 'string'],
    [4, 'error_code', 'string'],
    [5, 'retry_after', 'uint32'],
  ],
};

/// The Envelope's oneof `payload`: [field number, name, message type].
export const PAYLOADS = [
  [99, 'error', 'ErrorResponse'],
  [100, 'auth_request', 'AuthRequest'],
  [101, 'auth_response', 'AuthResponse'],
  [150, 'dm_message_event', 'DmMessageEvent'],
  [151, 'dm_conversation_created_event', 'DmConversationCreatedEvent'],
  [152, 'dm_key_rotated_event', 'DmKeyRotatedEvent'],
  [153, 'dm_history_request', 'DmHistoryRequest'],
  [154, 'dm_history_response', 'DmHistoryResponse'],
  [155, 'dm_conversation_list_request', 'DmConversationListRequest'],
  [156, 'dm_conversation_list_response', 'DmConversationListResponse'],
  [157, 'dm_offline_messages_response', 'DmOfflineMessagesResponse'],
  [158, 'dm_send_request', 'DmSendRequest'],
  [159, 'dm_send_response', 'DmSendResponse'],
  [160, 'dm_offline_request', 'DmOfflineRequest'],
  [161, 'dm_offline_ack_request', 'DmOfflineAckRequest'],
  [162, 'dm_offline_ack_response', 'DmOfflineAckResponse'],
  [163, 'dm_conversation_create_request', 'DmConversationCreateRequest'],
  [164, 'dm_conversation_create_response', 'DmConversationCreateResponse'],
];

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

class Writer {
  constructor() {
    this.bytes = [];
  }
  varint(n) {
    let v = BigInt(n);
    if (v < 0n) throw new Error('negative varint');
    while (v >= 0x80n) {
      this.bytes.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.bytes.push(Number(v));
  }
  tag(field, wire) {
    this.varint(field * 8 + wire);
  }
  lengthDelimited(field, data) {
    this.tag(field, 2);
    this.varint(data.length);
    for (const b of data) this.bytes.push(b);
  }
  finish() {
    return Uint8Array.from(this.bytes);
  }
}

function encodeField(w, [no, , type, , msgType], value) {
  switch (type) {
    case 'string':
      w.lengthDelimited(no, utf8.encode(value));
      break;
    case 'bytes':
      w.lengthDelimited(no, value);
      break;
    case 'uint64':
    case 'uint32':
      w.tag(no, 0);
      w.varint(value);
      break;
    case 'bool':
      w.tag(no, 0);
      w.varint(value ? 1 : 0);
      break;
    case 'msg':
      w.lengthDelimited(no, encodeMessage(msgType, value));
      break;
    default:
      throw new Error(`unknown type ${type}`);
  }
}

function isDefault(type, value) {
  if (value === undefined || value === null) return true;
  switch (type) {
    case 'string':
    case 'bytes':
      return value.length === 0;
    case 'uint64':
    case 'uint32':
      return Number(value) === 0;
    case 'bool':
      return !value;
    default:
      return false;
  }
}

/// Encodes `obj` as the message `typeName` of the schema.
export function encodeMessage(typeName, obj) {
  const w = new Writer();
  for (const field of schema[typeName]) {
    const [, name, type, repeated] = field;
    const value = obj[name];
    if (repeated) {
      for (const item of value || []) encodeField(w, field, item);
    } else if (!isDefault(type, value)) {
      encodeField(w, field, value);
    }
  }
  return w.finish();
}

class Reader {
  constructor(bytes) {
    this.buf = bytes;
    this.pos = 0;
  }
  varint() {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.pos >= this.buf.length) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return result;
      shift += 7n;
      if (shift > 63n) throw new Error('varint too long');
    }
  }
  bytes() {
    const len = Number(this.varint());
    if (this.pos + len > this.buf.length) throw new Error('truncated field');
    const out = this.buf.slice(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }
  skip(wire) {
    switch (wire) {
      case 0:
        this.varint();
        break;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.bytes();
        break;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new Error(`unsupported wire type ${wire}`);
    }
    if (this.pos > this.buf.length) throw new Error('truncated field');
  }
}

function defaultValue(type, repeated) {
  if (repeated) return [];
  switch (type) {
    case 'string':
      return '';
    case 'bytes':
      return new Uint8Array(0);
    case 'uint64':
    case 'uint32':
      return 0;
    case 'bool':
      return false;
    default:
      return null;
  }
}

function readValue(r, wire, type, msgType) {
  const want = type === 'string' || type === 'bytes' || type === 'msg' ? 2 : 0;
  if (wire !== want) throw new Error(`wire type ${wire} for a ${type} field`);
  switch (type) {
    case 'string':
      return fromUtf8.decode(r.bytes());
    case 'bytes':
      return r.bytes();
    case 'uint64':
      return Number(BigInt.asUintN(64, r.varint()));
    case 'uint32':
      return Number(BigInt.asUintN(32, r.varint()));
    case 'bool':
      return r.varint() !== 0n;
    case 'msg':
      return decodeMessage(msgType, r.bytes());
    default:
      throw new Error(`unknown type ${type}`);
  }
}

/// Decodes the message `typeName`; every field is present, defaults included
/// (a sub-message that is absent is `null`). Unknown fields are skipped.
export function decodeMessage(typeName, bytes) {
  const fields = schema[typeName];
  const out = {};
  for (const [, name, type, repeated] of fields) out[name] = defaultValue(type, repeated);
  const r = new Reader(bytes);
  while (r.pos < bytes.length) {
    const key = Number(r.varint());
    const no = key >>> 3;
    const wire = key & 7;
    const field = fields.find((f) => f[0] === no);
    if (!field) {
      r.skip(wire);
      continue;
    }
    const [, name, type, repeated, msgType] = field;
    const value = readValue(r, wire, type, msgType);
    if (repeated) out[name].push(value);
    else out[name] = value;
  }
  return out;
}

/// Encodes an Envelope: `{ request_id, <payload name>: {...} }`.
export function encodeEnvelope(env) {
  const w = new Writer();
  if (env.request_id) w.lengthDelimited(1, utf8.encode(env.request_id));
  const set = PAYLOADS.filter(([, name]) => env[name] !== undefined && env[name] !== null);
  if (set.length > 1) throw new Error('an Envelope holds one payload');
  for (const [no, name, type] of set) w.lengthDelimited(no, encodeMessage(type, env[name]));
  return w.finish();
}

/// Decodes an Envelope into `{ request_id, <payload name>: {...} }` (no
/// payload key when the payload is absent or unknown to this page).
export function decodeEnvelope(bytes) {
  const out = { request_id: '' };
  const r = new Reader(bytes);
  while (r.pos < bytes.length) {
    const key = Number(r.varint());
    const no = key >>> 3;
    const wire = key & 7;
    const payload = PAYLOADS.find(([n]) => n === no);
    if (no === 1 && wire === 2) {
      out.request_id = fromUtf8.decode(r.bytes());
    } else if (payload && wire === 2) {
      for (const [, name] of PAYLOADS) delete out[name];
      out[payload[1]] = decodeMessage(payload[2], r.bytes());
    } else {
      r.skip(wire);
    }
  }
  return out;
}
